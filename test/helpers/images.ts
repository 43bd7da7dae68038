/**
 * Images as cedana wrote them before BLAKE3: format 1, whose checksums — every file's, and the
 * digest a child names its parent's manifest by — are sha256. Made from an image of this cedana by
 * rewriting its manifest the way the earlier version laid it out, with every digest computed here by
 * node's sha256 (nothing of cedana's own hashing).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Rewrites the manifest of the image directory img as format 1. A chain: rewrite the parent first. */
export function toFormat1(img: string): Record<string, any> {
  const path = join(img, 'cedana.json');
  const m = JSON.parse(readFileSync(path, 'utf8')) as Record<string, any>;
  if (m.formatVersion !== 2) throw new Error(`${img}: format ${m.formatVersion}, expected 2`);
  m.formatVersion = 1;
  for (const name of Object.keys(m.files)) m.files[name] = { size: m.files[name].size, sha256: sha256(readFileSync(join(img, name))) };
  if (m.parent) {
    const p = m.parent as { path: string; pagesInParent: number; pagesWritten: number };
    m.parent = { path: p.path, manifestSha256: sha256(readFileSync(join(resolve(img, p.path), 'cedana.json'))), pagesInParent: p.pagesInParent, pagesWritten: p.pagesWritten };
  }
  writeFileSync(path, `${JSON.stringify(m, null, 2)}\n`, { mode: 0o600 });
  return m;
}

/** The name of an image's (one) pages file: pages-1.img as CRIU writes it, pages-65537.img through the page sink. */
export function pagesImage(dir: string): string {
  const names = readdirSync(dir).filter((n) => /^pages-\d+\.img$/.test(n));
  if (names.length !== 1) throw new Error(`${dir} holds ${names.length} pages images: ${names.join(', ')}`);
  return names[0]!;
}
