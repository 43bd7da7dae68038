/**
 * A writable for the image stream on stdout (`dump -o -`). process.stdout writes to pipes
 * synchronously on Linux: a reader that stops reading would then block the whole event loop with the
 * tree frozen, and not even Ctrl-C could resume it. A pipe or socket is opened as a non-blocking
 * socket instead; a file stays a file.
 */
import { createWriteStream, fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Writable } from 'node:stream';

export function imageStdout(fd = 1): Writable {
  const st = fstatSync(fd);
  if (st.isFIFO() || st.isSocket()) return new Socket({ fd, readable: false, writable: true });
  return createWriteStream('', { fd, autoClose: false });
}
