// Writes one .ts file per dashboard (gen/<name>.ts: `export const dashboard: Json<Dashboard> =
// <json>`) so that `tsc --noEmit` checks each deploy/grafana/dashboards/*.json against the
// Dashboard type of @grafana/schema: wrong types and unknown keys fail. `Json<T>` is the type as
// JSON spells it: a string enum (ThresholdsMode.Absolute) is its value ('absolute').
import { readdirSync, readFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const JSON_TYPE = `type Json<T> = T extends string ? \`\${T}\`
  : T extends number | boolean | null | undefined ? T
  : T extends Array<infer U> ? Array<Json<U>>
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
`;

const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, '..', 'dashboards');
const out = join(here, 'gen');
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
if (files.length === 0) {
  console.error(`no dashboards in ${dir}`);
  process.exit(1);
}
for (const f of files) {
  const json = JSON.stringify(JSON.parse(readFileSync(join(dir, f), 'utf8')), null, 2);
  writeFileSync(
    join(out, f.replace(/\.json$/, '.ts')),
    `import type { Dashboard } from '@grafana/schema';\n\n${JSON_TYPE}\nexport const dashboard: Json<Dashboard> = ${json};\n`,
  );
}
console.log(`${files.length} dashboards to type-check`);
