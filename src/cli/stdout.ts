/**
 * A writable for the image stream on stdout (`dump -o -`). process.stdout writes to pipes
 * synchronously on Linux: a reader that stops reading would then block the whole event loop with the
 * tree frozen, and not even Ctrl-C could resume it. A pipe or socket is opened as a non-blocking
 * socket instead; a file stays a file. GNU tar, where there is one, writes the stream into the
 * descriptor itself (blocking on a reader that stops is then its own, not Node's).
 */
import { createWriteStream, fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Writable } from 'node:stream';

export function imageStdout(fd = 1): Writable & { imageFd: number } {
  const st = fstatSync(fd);
  const w = st.isFIFO() || st.isSocket() ? new Socket({ fd, readable: false, writable: true }) : createWriteStream('', { fd, autoClose: false });
  // The descriptor itself, for a writer that is not Node (GNU tar writes the stream there directly).
  return Object.assign(w, { imageFd: fd });
}
