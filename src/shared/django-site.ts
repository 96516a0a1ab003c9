/**
 * What REGISTRY_SCHEMA=django needs of the LAMPI site's database: Django's own tables and
 * columns, and the check every process that uses the registry makes at start-up. The check only
 * reads the catalog; it names everything that is missing, so the user fixes it in one go.
 */

/** The columns we read or write, as Django 3.2's `manage.py migrate` creates them. */
export const DJANGO_TABLES = {
  auth_user: [
    'id',
    'password',
    'last_login',
    'is_superuser',
    'username',
    'first_name',
    'last_name',
    'email',
    'is_staff',
    'is_active',
    'date_joined',
  ],
  lampi_lampi: ['device_id', 'name', 'association_code', 'created_at', 'user_id'],
} as const;

/** Our own tables beside Django's, created by `npm run migrate` with REGISTRY_SCHEMA=django. */
export const DJANGO_MODE_OWN_TABLES = ['ingest_lamps'] as const;

export type DjangoTablesCheck = { ok: true } | { ok: false; missing: string[] };

/** Runs one query against the site's database; the caller owns the connection. */
export type CatalogQuery = (sql: string, values: unknown[]) => Promise<Array<{ table_name: string; column_name: string }>>;

/** Which of DJANGO_TABLES' tables and columns the database (its current schema) lacks. */
export async function checkDjangoTables(query: CatalogQuery): Promise<DjangoTablesCheck> {
  const rows = await query(
    `SELECT table_name::text AS table_name, column_name::text AS column_name FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = ANY($1::text[])`,
    [Object.keys(DJANGO_TABLES)],
  );
  const missing: string[] = [];
  for (const [table, columns] of Object.entries(DJANGO_TABLES)) {
    const present = new Set(rows.filter((row) => row.table_name === table).map((row) => row.column_name));
    if (present.size === 0) missing.push(`table ${table}`);
    else for (const column of columns) if (!present.has(column)) missing.push(`column ${table}.${column}`);
  }
  return missing.length === 0 ? { ok: true } : { ok: false, missing };
}

/** The start-up line for a failed check. */
export function djangoTablesProblem(missing: string[], where: string): string {
  return `REGISTRY_SCHEMA=django but the database at ${where} lacks ${missing.join(', ')}: run the LAMPI site's \`manage.py migrate\` against it first`;
}
