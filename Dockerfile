# One image for every lampi-ingest process. docker-compose.yml picks the process with `command`:
#   node dist/<secrets-init|migrate|subscriber|worker|keen-sink|dashboard|dlq|devices>/main.mjs
# built by `npm run build` (esbuild; scripts/build.mjs).
#
# Two stages: `build` has every dependency (Prisma CLI, TypeScript, esbuild) and makes dist/; the
# runtime stage starts from a clean base (Debian slim and the node binary alone) and gets only
# dist/, the migrations' SQL, the TLS script and the production dependencies, so nothing of the
# build is left in a lower layer. Node 22 LTS
# (Node 20 ended in April 2026); the code still runs on Node 20 (package.json "engines").
FROM node:22-bookworm-slim AS build

WORKDIR /app

# Dependencies first, so a source change does not reinstall them. --ignore-scripts: dependencies'
# own install scripts do not run (as with npm 11, what the project is developed with; this
# image's npm 10 would run them), and nothing is downloaded at install time. Then our postinstall,
# `npm run generate`, explicitly: it writes the Prisma client to src/generated/ from
# prisma/schema.prisma, and needs the schema, prisma.config.ts and scripts/no-schema-engine
# (Prisma 7's generate wants *an* engine binary path offline; see that script).
COPY package.json package-lock.json prisma.config.ts ./
COPY prisma ./prisma
COPY scripts ./scripts
RUN npm ci --ignore-scripts --no-audit --no-fund \
 && npm run generate \
 && test -f src/generated/prisma/client.ts

# The generated client is bundled into dist/ with our code; only @prisma/client's runtime is
# needed beside it.
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

# Production dependencies only. npm ci --omit=dev still installs what the lockfile marks
# devOptional: our dev dependencies that are also optional peers of @prisma/client (the Prisma CLI
# with Studio, TypeScript, effect, PGlite: 125 packages; with them the node_modules layer was
# 293 MB, without 67 MB; --legacy-peer-deps does not change what npm ci installs). Nothing in
# dist/ imports them, so they are removed, by the lockfile's own list. tsx goes too (only
# `npm run dlq`/`devices` in a checkout use it; the image runs dist/), and so do the query
# compilers of databases other than PostgreSQL and the dependencies' source maps and TypeScript
# files (sources and declarations: 29 MB of the layer), which Node never loads from node_modules
# (no --enable-source-maps; Node runs no .ts there). Last, what packages publish beside their code
# and never require: the test, docs, example and benchmark folders at a package's top (next to its
# package.json) and Markdown files other than licences (9.9 MB of the layer when measured).
FROM node:22-bookworm-slim AS production-dependencies
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && node -e "for (const [dir, p] of Object.entries(require('./package-lock.json').packages)) \
      if (p.devOptional) require('fs').rmSync(dir, { recursive: true, force: true })" \
 && rm -rf node_modules/tsx node_modules/esbuild node_modules/@esbuild node_modules/@types node_modules/.bin \
 && find node_modules/@prisma/client/runtime -name 'query_compiler_*' ! -name 'query_compiler_small_bg.postgresql.*' -delete \
 && find node_modules -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' \) -delete \
 && find node_modules -type d \( -name test -o -name tests -o -name __tests__ -o -name docs -o -name doc -o -name example \
      -o -name examples -o -name benchmark -o -name benchmarks -o -name bench -o -name .github \) \
      -execdir test -f package.json \; -prune -exec rm -rf {} + \
 && find node_modules -type f \( -iname '*.md' -o -iname '*.markdown' \) ! -iname 'licen[cs]e*' ! -iname 'copying*' ! -iname 'notice*' -delete \
 && rm -rf /root/.npm

# The runtime stage is Debian slim plus the node binary of the build stage's image, not that image
# itself: node:22-bookworm-slim also carries npm, corepack, yarn and Node's headers, which no
# process here runs (227 MB on disk against Debian slim's 75 MB and node's 125 MB), and they would
# put the image over its 250 MB target. The binary needs only libc, libstdc++ and libgcc, which
# Debian slim has.
FROM debian:bookworm-slim

# openssl: secrets-init makes the broker's TLS certificates with scripts/make-tls-certs.sh. The
# `node` user (uid/gid 1000) is the node image's: secrets-init gives the secret files to 1000.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY --from=build /usr/local/bin/node /usr/local/bin/node

WORKDIR /app
ENV NODE_ENV=production
COPY --from=production-dependencies /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# migrate reads the SQL next to dist/ (prisma/migrations, prisma/django-migrations).
COPY prisma/migrations ./prisma/migrations
COPY prisma/django-migrations ./prisma/django-migrations
COPY scripts/make-tls-certs.sh ./scripts/

# Not root: the processes need no privileges (the dashboard and keen-sink ports are above 1024).
# compose runs only the one-shot secrets-init as root, to give each secret file its reader.
USER node

# Overridden per service in docker-compose.yml; on its own the image applies the migrations.
CMD ["node", "dist/migrate/main.mjs"]
