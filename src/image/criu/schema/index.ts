/**
 * CRIU's image schemas, flattened into what the codec needs per message: its fields by number, in
 * number order, with their wire kind. They are read from compiled.ts, a table generated from the
 * proto2 text in task.ts and files.ts (field names as in CRIU) by protobufjs (protobuf.ts); the
 * codec does not load protobufjs at run time.
 */
import { COMPILED_SCHEMA } from './compiled.js';

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

/** One field of the compiled table: name, number, type, rule, and 'packed' when written packed. */
export type CompiledField = [name: string, id: number, type: string, rule: 'optional' | 'required' | 'repeated', packed?: 'packed'];

export interface CompiledSchema {
  /** Each enum's values by name. */
  enums: Record<string, Record<string, number>>;
  /** Each message's fields, in number order. */
  messages: Record<string, CompiledField[]>;
}

const messages = new Map<string, MessageInfo>();
const enums = new Map<string, EnumInfo>();

function enumInfo(name: string, values: Record<string, number>): EnumInfo {
  let info = enums.get(name);
  if (!info) {
    const byName = new Map(Object.entries(values));
    info = { name: name.slice(name.lastIndexOf('.') + 1), byName, byNumber: new Map([...byName].map(([k, v]) => [v, k])) };
    enums.set(name, info);
  }
  return info;
}

function messageInfo(name: string, compiled: CompiledField[]): MessageInfo {
  const known = messages.get(name);
  if (known) return known;
  const fields: FieldInfo[] = [];
  const info: MessageInfo = { name: name.slice(name.lastIndexOf('.') + 1), fields, byId: new Map() };
  messages.set(name, info); // before the fields: messages may contain themselves (cgroup_dir_entry)
  for (const [fname, id, type, rule, packed] of compiled) {
    const field: FieldInfo = { name: fname, id, kind: 'message', repeated: rule === 'repeated', required: rule === 'required', packed: packed === 'packed' };
    const e = COMPILED_SCHEMA.enums[type];
    const m = COMPILED_SCHEMA.messages[type];
    if (SCALARS.has(type)) field.kind = type as ScalarKind;
    else if (e) {
      field.kind = 'enum';
      field.enumInfo = enumInfo(type, e);
    } else if (m) field.message = messageInfo(type, m);
    else throw new Error(`schema: cannot resolve ${name}.${fname} (${type})`);
    fields.push(field);
  }
  info.byId = new Map(fields.map((f) => [f.id, f]));
  return info;
}

/** The message type of that name (a top-level CRIU message, e.g. 'core_entry'), or undefined. */
export function lookupMessage(name: string): MessageInfo | undefined {
  const m = Object.hasOwn(COMPILED_SCHEMA.messages, name) ? COMPILED_SCHEMA.messages[name] : undefined;
  return m ? messageInfo(name, m) : undefined;
}
