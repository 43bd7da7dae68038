import { describe, expect, it } from 'vitest';
import { idName, nameForId } from '../../../src/util/users.js';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/bash',
  '# a comment: 7:7',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  'postgres:x:106:113:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash',
  'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
  '',
].join('\n');

describe('nameForId', () => {
  it('finds a user by its uid (the third field)', () => {
    expect(nameForId(PASSWD, 0)).toBe('root');
    expect(nameForId(PASSWD, 106)).toBe('postgres');
    expect(nameForId(PASSWD, 65534)).toBe('nobody');
  });

  it('never takes the gid field, a comment or a missing id for it', () => {
    expect(nameForId(PASSWD, 113)).toBeUndefined();
    expect(nameForId(PASSWD, 7)).toBeUndefined();
    expect(nameForId(PASSWD, 4242)).toBeUndefined();
    expect(nameForId('', 0)).toBeUndefined();
  });

  it('reads a group file the same way', () => {
    expect(nameForId('root:x:0:\nnogroup:x:65534:\nadm:x:4:syslog,admin\n', 4)).toBe('adm');
  });
});

describe('idName', () => {
  it("names root from this host's /etc/passwd and /etc/group", async () => {
    expect(await idName('user', 0)).toBe('root');
    expect(await idName('group', 0)).toBe('root');
  });
});
