/**
 * Where the page sink reads CRIU's stream from. Chunks are handed out one at a time and are valid only
 * during the call (the sink copies what it keeps); a handler that returns a promise pauses reading
 * until it settles.
 *
 * For a local dump the socket is read into one reused buffer (`onread`): a stream of a gibibyte then
 * allocates nothing per read, where Node's default read path allocates a fresh 64 KiB buffer for each
 * (measured: ~0.2–0.3 s of garbage collection per GiB, with the tree frozen, as CRIU waits on a full
 * socket meanwhile).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';

export type ChunkHandler = (chunk: Buffer) => void | Promise<void>;

/**
 * Calls `each` on the items from `from` on, in order: synchronously while it returns nothing, the
 * rest after a promise it returns has settled. A chunk's events are handled without a promise (and
 * so without pausing the source) unless one of them has to wait.
 */
export function inOrder<T>(items: T[], each: (item: T) => Promise<void> | undefined, from = 0): Promise<void> | undefined {
  for (let i = from; i < items.length; i++) {
    const r = each(items[i]!);
    if (r) {
      const next = i + 1;
      return r.then(() => inOrder(items, each, next));
    }
  }
  return undefined;
}

export interface PageSource {
  /** Feeds every chunk to `onChunk` until the stream ends (resolves) or fails (rejects). */
  run(onChunk: ChunkHandler): Promise<void>;
  /** Stops feeding: `run` resolves without waiting for the end of the stream. */
  stop(): void;
  write(b: Buffer): Promise<void>;
  destroy(): void;
}

/** A source over any duplex stream (its chunks are its own; tests, and anything not a local socket). */
export function duplexSource(d: Duplex): PageSource {
  let stopped = false;
  return {
    async run(onChunk) {
      for await (const chunk of d as AsyncIterable<Buffer>) {
        const r = onChunk(chunk);
        if (r) await r;
        if (stopped) return;
      }
    },
    stop: () => void (stopped = true),
    write: (b) => new Promise((resolve, reject) => d.write(b, (e) => (e ? reject(e) : resolve()))),
    destroy: () => d.destroy(),
  };
}

const READ_BUFFER = 1 << 20;

/**
 * A connected pair of unix sockets: `criuEnd` to hand to CRIU (spawn's stdio; close it here once CRIU
 * has it), `source` read with one reused buffer. The listening socket lives, only for the moment of
 * connecting, in a private directory under `dir`.
 */
export async function socketPair(dir: string): Promise<{ criuEnd: Socket; source: PageSource }> {
  const sockDir = await mkdtemp(join(dir, 'ps-'));
  const path = join(sockDir, 's');
  const server = createServer({ pauseOnConnect: true });
  let handler: ChunkHandler | undefined;
  let settle: { resolve: () => void; reject: (e: Error) => void } | undefined;
  let ours: Socket | undefined;
  let stopped = false;
  const fail = (e: Error): void => {
    const s = settle;
    settle = undefined;
    s?.reject(e);
  };
  const onread = (n: number, buf: Buffer): boolean => {
    if (stopped || !handler) return false;
    let r: void | Promise<void>;
    try {
      r = handler(buf.subarray(0, n));
    } catch (e) {
      fail(e as Error);
      return false;
    }
    if (stopped) {
      settle?.resolve();
      return false;
    }
    if (!r) return true;
    r.then(
      () => {
        if (stopped) settle?.resolve();
        else ours!.resume();
      },
      (e: Error) => fail(e),
    );
    return false; // paused until the handler's work is done
  };
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, resolve);
    });
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    ours = connect({ path, onread: { buffer: Buffer.allocUnsafe(READ_BUFFER), callback: onread } });
    ours.pause();
    await new Promise<void>((resolve, reject) => {
      ours!.once('connect', resolve);
      ours!.once('error', reject);
    });
    const criuEnd = await accepted;
    const sock = ours;
    const source: PageSource = {
      run(onChunk) {
        handler = onChunk;
        return new Promise<void>((resolve, reject) => {
          settle = { resolve, reject };
          // The end of the stream: the sink knows whether it came too early.
          const ended = (): void => {
            const s = settle;
            settle = undefined;
            s?.resolve();
          };
          sock.once('end', ended);
          sock.once('close', ended);
          sock.once('error', (e) => fail(e));
          sock.resume();
        });
      },
      stop: () => void (stopped = true),
      write: (b) => new Promise((resolve, reject) => sock.write(b, (e) => (e ? reject(e) : resolve()))),
      destroy: () => sock.destroy(),
    };
    return { criuEnd, source };
  } finally {
    server.close();
    await rm(sockDir, { recursive: true, force: true });
  }
}
