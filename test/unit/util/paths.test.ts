import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { syncDirEntry, syncTree } from '../../../src/util/paths.js';

describe('syncTree', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-sync-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('syncs nested files and never opens a FIFO or follows a link (either would hang or escape)', async () => {
    await mkdir(join(dir, 'shipped', 'a'), { recursive: true });
    await writeFile(join(dir, 'pages-1.img'), Buffer.alloc(8192, 1));
    await writeFile(join(dir, 'shipped', 'a', 'data'), 'x');
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    await symlink(join(dir, 'fifo'), join(dir, 'parent'));
    // Opening the FIFO for reading would block with no writer: the test would time out.
    await expect(syncTree(dir)).resolves.toBeUndefined();
    await expect(syncDirEntry(dir)).resolves.toBeUndefined();
  });

  it('fails on a path that does not exist', async () => {
    await expect(syncTree(join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
