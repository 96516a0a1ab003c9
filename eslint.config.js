// typescript-eslint's recommended rules over everything we ship and test; formatting is
// Prettier's (eslint-config-prettier turns off the rules that would fight it).
import eslint from '@eslint/js';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'src/generated/', 'bench/results/', 'test/django/', 'src/keen-sink/explorer/vendor/'] },
  eslint.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // An unused argument named _x is deliberate (a callback's shape); anything else unused is a slip.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  // Tests read Keen's JSON answers, whose shape is what they assert: typing each one first
  // would restate the assertion.
  { files: ['test/**/*.ts'], rules: { '@typescript-eslint/no-explicit-any': 'off' } },
  // The explorer runs in the browser; our build scripts run under Node.
  { files: ['src/keen-sink/explorer/**/*.js'], languageOptions: { globals: globals.browser } },
  { files: ['scripts/**/*.mjs'], languageOptions: { globals: globals.node } },
  prettier,
);
