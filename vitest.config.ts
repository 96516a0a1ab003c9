import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The chaos run is `npm run chaos -- --quick`. It flaked on a bridge-state ordering bug, now fixed
    // (bridge states retry in place); it stays out of `npm test` until it has been rerun against the grouped pipeline.
    exclude: ['test/chaos/chaos-quick.test.ts', 'node_modules/**'],
    globalSetup: ['test/support/global-setup.ts'],
    // Integration files share one broker and two cores: running them one at a time keeps
    // their timing honest and their MQTT traffic apart.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
