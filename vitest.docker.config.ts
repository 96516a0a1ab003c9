// `npm run test:docker`: the checks that need a Docker engine with Compose v2 (test/docker/), kept
// out of `npm test` because they take minutes and need dockerd. No global setup: they start every
// service they use with compose.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/docker/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 900_000,
    hookTimeout: 360_000,
    reporters: ['verbose'],
  },
});
