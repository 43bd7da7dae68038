import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * cedana's own package directory and version. Works both from src/ (tests) and from dist/src/ (the
 * built CLI), in a checkout and in an installed package: through npm's global bin symlink, Node
 * runs bin/cedana by its real path, so import.meta.url is inside the package.
 */
function findPackage(): { root: string; version: string } | undefined {
  for (const rel of ['../', '../../']) {
    const url = new URL(rel, import.meta.url);
    const file = new URL('package.json', url);
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'cedana') return { root: fileURLToPath(url), version: pkg.version };
    }
  }
  return undefined;
}

const found = findPackage();

export const CEDANA_VERSION: string = found?.version ?? '0.0.0';

/** The checkout or installed package (with a trailing slash); undefined if package.json is gone. */
export const PACKAGE_ROOT: string | undefined = found?.root;
