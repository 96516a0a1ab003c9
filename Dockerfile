# One image for every lampi-ingest process. docker-compose.yml picks the process with `command`:
#   node dist/<migrate|subscriber|worker|keen-sink|dashboard|dlq|devices>/main.mjs
# built by `npm run build` (esbuild; scripts/build.mjs). `npm run dlq -- ...` and `npm run devices -- ...` also work (tsx).
FROM node:20-bookworm-slim

WORKDIR /app

# Dependencies first, so a source change does not reinstall them. `npm ci` runs our postinstall,
# `npm run generate`, which writes the Prisma client to src/generated/ from prisma/schema.prisma:
# that needs the schema, prisma.config.ts and scripts/no-schema-engine (Prisma 7's generate wants
# *an* engine binary path offline; see that script) before the install, not after.
#
# --ignore-scripts then `npm run generate`: dependencies' own install scripts do not run, as with
# npm 11 (what the project is developed and tested with; this image's npm 10 would run them), and
# nothing is downloaded at install time. The generate step is the postinstall, run explicitly.
COPY package.json package-lock.json prisma.config.ts ./
COPY prisma ./prisma
COPY scripts ./scripts
RUN npm ci --ignore-scripts --no-audit --no-fund \
 && npm run generate \
 && test -f src/generated/prisma/client.ts

# Then the build, and the dev dependencies go (prisma CLI, esbuild, vitest, typescript...):
# generate and build were their only use here; the generated client needs only @prisma/client.
COPY tsconfig.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# Not root: the processes need no privileges (the dashboard and keen-sink ports are above 1024).
# tsx keeps its compile cache in the system temp folder, which `node` can write.
USER node

ENV NODE_ENV=production
# Overridden per service in docker-compose.yml; on its own the image applies the migrations.
CMD ["node", "dist/migrate/main.mjs"]
