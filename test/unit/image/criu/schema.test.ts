import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { COMPILED_SCHEMA } from '../../../../src/image/criu/schema/compiled.js';
import { lookupMessage, type MessageInfo } from '../../../../src/image/criu/schema/index.js';
import { compiledSource, compileSchema, root } from '../../../../src/image/criu/schema/protobuf.js';

describe('the compiled schema', () => {
  it('is what protobufjs makes of task.ts and files.ts (else regenerate it: node dist/scripts/gen-criu-schema.js)', () => {
    expect(COMPILED_SCHEMA).toEqual(compileSchema());
    expect(Object.keys(COMPILED_SCHEMA.messages).length).toBeGreaterThan(90);
  });

  it('compiled.ts is the generator\'s text, byte for byte', async () => {
    const { readFile } = await import('node:fs/promises');
    const text = await readFile(new URL('../../../../src/image/criu/schema/compiled.ts', import.meta.url), 'utf8');
    expect(text).toBe(compiledSource());
  });

  it('every message reads as protobufjs resolves it: fields, kinds, rules, enums, nested messages', () => {
    const seen = new Set<MessageInfo>();
    const check = (t: protobuf.Type, info: MessageInfo | undefined): void => {
      expect(info, t.name).toBeDefined();
      if (!info || seen.has(info)) return;
      seen.add(info);
      expect(info.name).toBe(t.name);
      const fields = [...t.fieldsArray].sort((a, b) => a.id - b.id);
      expect(info.fields.map((f) => [f.name, f.id, f.repeated, f.required, f.packed])).toEqual(fields.map((f) => [f.name, f.id, f.repeated, f.required, f.packed]));
      for (const [i, f] of fields.entries()) {
        const mine = info.fields[i]!;
        expect(info.byId.get(f.id)).toBe(mine);
        if (f.resolvedType instanceof protobuf.Enum) {
          expect(mine.kind).toBe('enum');
          expect(Object.fromEntries(mine.enumInfo!.byName)).toEqual(f.resolvedType.values);
        } else if (f.resolvedType instanceof protobuf.Type) {
          expect(mine.kind).toBe('message');
          check(f.resolvedType, mine.message);
        } else expect(mine.kind).toBe(f.type);
      }
    };
    let n = 0;
    for (const t of root.nestedArray) {
      if (!(t instanceof protobuf.Type)) continue;
      n++;
      check(t, lookupMessage(t.name));
    }
    expect(n).toBeGreaterThan(90);
    expect(lookupMessage('no_such_entry')).toBeUndefined();
    expect(lookupMessage('toString')).toBeUndefined();
  });
});
