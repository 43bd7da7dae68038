/**
 * CRIU's image schemas (task.ts, files.ts) parsed by protobufjs, and compiled into the table the
 * codec reads at run time (compiled.ts). Only the generator (scripts/gen-criu-schema.ts) and the
 * tests load this module: loading protobufjs and parsing the schemas cost ~50-90 ms per command here,
 * paid before CRIU could start on every restore.
 */
import protobuf from 'protobufjs';
import { FILES_SCHEMA } from './files.js';
import { TASK_SCHEMA } from './task.js';
import type { CompiledField, CompiledSchema } from './index.js';

export const root = protobuf.parse(`syntax = "proto2";\n${TASK_SCHEMA}\n${FILES_SCHEMA}`, { keepCase: true }).root;
root.resolveAll();

const nameOf = (t: protobuf.ReflectionObject): string => t.fullName.replace(/^\./, '');

/** Every message and enum below `ns`, by full name (no leading dot), fields in number order. */
export function compileSchema(ns: protobuf.NamespaceBase = root): CompiledSchema {
  const out: CompiledSchema = { enums: {}, messages: {} };
  const walk = (n: protobuf.NamespaceBase): void => {
    for (const obj of n.nestedArray) {
      if (obj instanceof protobuf.Enum) out.enums[nameOf(obj)] = { ...obj.values };
      else if (obj instanceof protobuf.Type) {
        out.messages[nameOf(obj)] = [...obj.fieldsArray].sort((a, b) => a.id - b.id).map((f): CompiledField => {
          if (f.map) throw new Error(`schema: map field ${obj.name}.${f.name} is not supported`);
          const type = f.resolvedType ? nameOf(f.resolvedType) : f.type;
          const rule = f.repeated ? 'repeated' : f.required ? 'required' : 'optional';
          return f.packed ? [f.name, f.id, type, rule, 'packed'] : [f.name, f.id, type, rule];
        });
      }
      if (obj instanceof protobuf.Namespace) walk(obj);
    }
  };
  walk(ns);
  return out;
}

const key = (k: string): string => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? k : `'${k}'`);

/** compiled.ts's text for `schema`. */
export function compiledSource(schema: CompiledSchema = compileSchema()): string {
  const lines = [
    '/**',
    ' * GENERATED from task.ts and files.ts by scripts/gen-criu-schema.ts (`npm run build && node',
    ' * dist/scripts/gen-criu-schema.js`): do not edit. A unit test checks it against the schemas.',
    ' * Each field: [name, number, type (a scalar, or an enum or message of this table), rule, packed?].',
    ' */',
    "import type { CompiledSchema } from './index.js';",
    '',
    'export const COMPILED_SCHEMA: CompiledSchema = {',
    '  enums: {',
    ...Object.entries(schema.enums).map(([name, values]) => `    ${key(name)}: { ${Object.entries(values).map(([k, v]) => `${key(k)}: ${v}`).join(', ')} },`),
    '  },',
    '  messages: {',
    ...Object.entries(schema.messages).flatMap(([name, fields]) => [
      `    ${key(name)}: [`,
      ...fields.map((f) => `      [${f.map((x) => (typeof x === 'number' ? String(x) : `'${x}'`)).join(', ')}],`),
      '    ],',
    ]),
    '  },',
    '};',
    '',
  ];
  return lines.join('\n');
}
