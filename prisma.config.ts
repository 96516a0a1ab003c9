import { defineConfig } from 'prisma/config';

// DATABASE_URL is read from the environment only when a command needs it:
// `prisma generate` must work without one (CI, Docker builds).
export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  ...(process.env.DATABASE_URL ? { datasource: { url: process.env.DATABASE_URL } } : {}),
});
