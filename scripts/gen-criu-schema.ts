/**
 * Writes src/image/criu/schema/compiled.ts from the schemas in task.ts and files.ts (run after
 * changing either: `npm run build && node dist/scripts/gen-criu-schema.js`).
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { compiledSource } from '../src/image/criu/schema/protobuf.js';

const target = fileURLToPath(new URL('../../src/image/criu/schema/compiled.ts', import.meta.url));
writeFileSync(target, compiledSource());
process.stdout.write(`wrote ${target}\n`);
