/**
 * compose's one-shot `secrets-init`: makes sure every secret the deployment needs is a file in
 * SECRETS_DIR (src/secrets-init/secrets.ts), prints one line per secret saying where it came
 * from (never its value) and where to find the dashboard's login, makes the broker's TLS
 * certificates (scripts/make-tls-certs.sh) unless SECRETS_DIR/tls has them, and exits 0. Any
 * failure is one line on stderr and exit 1; nothing else starts, since every service waits for it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../shared/config.js';
import { ensureSecrets } from './secrets.js';
import { ConfigError } from '../shared/errors.js';

const NAME = 'secrets-init';
const MAKE_CERTS = path.resolve(import.meta.dirname, '../../scripts/make-tls-certs.sh');

try {
  const config = loadConfig(['common', 'mqtt', 'dashboard', 'secrets']);
  const dir = config.SECRETS_DIR;
  mkdirSync(dir, { recursive: true });
  const outcomes = ensureSecrets(dir, config);
  for (const { file, variable, source, changed } of outcomes) {
    const how = { environment: `set from ${variable}`, kept: 'kept from an earlier start', generated: 'generated' }[source];
    process.stdout.write(`${NAME}: ${path.join(dir, file)}: ${how}${changed ? ' (changed)' : ''}\n`);
    if (variable === 'POSTGRES_PASSWORD' && changed) {
      // The postgres image applies its password only when it creates the database folder.
      process.stdout.write(
        `${NAME}: POSTGRES_PASSWORD differs from the one used before, but PostgreSQL keeps the password of its first start: ` +
          'change it in the database too (README "Changing POSTGRES_PASSWORD")\n',
      );
    }
  }
  const tls = path.join(dir, 'tls');
  if (existsSync(path.join(tls, 'server.crt'))) {
    process.stdout.write(`${NAME}: ${tls}: TLS certificates kept from an earlier start (remove server.crt to make new ones)\n`);
  } else {
    const made = spawnSync('sh', [MAKE_CERTS, tls, ...config.TLS_SERVER_NAMES], { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`${MAKE_CERTS} failed: ${made.stderr || made.error?.message || `exit ${made.status}`}`);
  }
  const ca = path.join(tls, 'ca.crt');
  process.stdout.write(`${NAME}: lamps verify the broker with ${ca}: docker compose exec mosquitto cat ${ca}\n`);
  const user = config.DASHBOARD_USERNAME ?? 'admin';
  process.stdout.write(
    `${NAME}: dashboard login: user ${user}, password: docker compose exec dashboard cat ${path.join(dir, 'dashboard-password')}\n`,
  );
  process.exit(0);
} catch (err) {
  const line =
    err instanceof ConfigError
      ? err.message
      : `cannot write the secrets (${(err as Error).message}): check the secrets volume (SECRETS_DIR)`;
  process.stderr.write(`${NAME}: ${line.replace(/\s+/g, ' ')}\n`);
  process.exit(1);
}
