/**
 * CRIU's image schemas parsed once with protobufjs (proto2, field names as in CRIU: keepCase) and
 * flattened into what the codec needs per message: its fields by number, in number order, with
 * their wire kind.
 */
import protobuf from 'protobufjs';
import { FILES_SCHEMA } from './files.js';
import { TASK_SCHEMA } from './task.js';

export type ScalarKind =
  | 'double' | 'float' | 'int32' | 'uint32' | 'sint32' | 'fixed32' | 'sfixed32'
  | 'int64' | 'uint64' | 'sint64' | 'fixed64' | 'sfixed64' | 'bool' | 'string' | 'bytes';

export interface EnumInfo {
  name: string;
  byName: ReadonlyMap<string, number>;
  byNumber: ReadonlyMap<number, string>;
}

export interface FieldInfo {
  name: string;
  id: number;
  kind: ScalarKind | 'enum' | 'message';
  repeated: boolean;
  required: boolean;
  /** Written packed. No CRIU field is; packed input is accepted for any repeated scalar all the same. */
  packed: boolean;
  enumInfo?: EnumInfo;
  message?: MessageInfo;
}

export interface MessageInfo {
  name: string;
  /** In field-number order, the order CRIU (protobuf-c) writes them. */
  fields: readonly FieldInfo[];
  byId: ReadonlyMap<number, FieldInfo>;
}

const SCALARS = new Set<string>([
  'double', 'float', 'int32', 'uint32', 'sint32', 'fixed32', 'sfixed32',
  'int64', 'uint64', 'sint64', 'fixed64', 'sfixed64', 'bool', 'string', 'bytes',
]);

export const root = protobuf.parse(`syntax = "proto2";\n${TASK_SCHEMA}\n${FILES_SCHEMA}`, { keepCase: true }).root;
root.resolveAll();

const messages = new Map<protobuf.Type, MessageInfo>();
const enums = new Map<protobuf.Enum, EnumInfo>();

function enumInfo(e: protobuf.Enum): EnumInfo {
  let info = enums.get(e);
  if (!info) {
    const byName = new Map(Object.entries(e.values));
    info = { name: e.name, byName, byNumber: new Map([...byName].map(([k, v]) => [v, k])) };
    enums.set(e, info);
  }
  return info;
}

function messageInfo(t: protobuf.Type): MessageInfo {
  const known = messages.get(t);
  if (known) return known;
  const fields: FieldInfo[] = [];
  const info: MessageInfo = { name: t.name, fields, byId: new Map() };
  messages.set(t, info); // before the fields: messages may contain themselves (cgroup_dir_entry)
  for (const f of [...t.fieldsArray].sort((a, b) => a.id - b.id)) {
    if (f.map) throw new Error(`schema: map field ${t.name}.${f.name} is not supported`);
    const field: FieldInfo = { name: f.name, id: f.id, kind: 'message', repeated: f.repeated, required: f.required, packed: f.packed };
    if (SCALARS.has(f.type)) field.kind = f.type as ScalarKind;
    else if (f.resolvedType instanceof protobuf.Enum) {
      field.kind = 'enum';
      field.enumInfo = enumInfo(f.resolvedType);
    } else if (f.resolvedType instanceof protobuf.Type) field.message = messageInfo(f.resolvedType);
    else throw new Error(`schema: cannot resolve ${t.name}.${f.name} (${f.type})`);
    fields.push(field);
  }
  info.byId = new Map(fields.map((f) => [f.id, f]));
  return info;
}

/** The message type of that name (a top-level CRIU message, e.g. 'core_entry'), or undefined. */
export function lookupMessage(name: string): MessageInfo | undefined {
  const t = root.lookup(name);
  return t instanceof protobuf.Type ? messageInfo(t) : undefined;
}
