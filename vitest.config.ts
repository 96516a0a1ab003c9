import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // test/docker needs a Docker engine and takes minutes: `npm run test:docker` (vitest.docker.config.ts).
    exclude: [...configDefaults.exclude, 'test/docker/**'],
    globalSetup: ['test/support/global-setup.ts'],
    // Integration files share one broker and two cores: running them one at a time keeps
    // their timing honest and their MQTT traffic apart.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
