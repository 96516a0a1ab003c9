/**
 * Decides which Redis, PostgreSQL and Mosquitto the tests talk to, and says so:
 * testcontainers where a Docker engine answers and has the images (or TEST_USE_CONTAINERS=true), otherwise the URLs in the environment,
 * otherwise the services this machine runs on their default ports.
 */
import 'vitest';
import type { TestProject } from 'vitest/node';
import { resolveServices, type ServiceUrls } from './services.js';

declare module 'vitest' {
  export interface ProvidedContext {
    services: ServiceUrls;
  }
}

export default async function setup(project: TestProject) {
  const { urls, source, stop } = await resolveServices();
  process.stdout.write(`\n[test services] ${source}\n  redis: ${urls.redis}\n  postgres: ${urls.postgres}\n  mqtt: ${urls.mqtt}\n\n`);
  project.provide('services', urls);
  return stop;
}
