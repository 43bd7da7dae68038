import { existsSync, readFileSync } from 'node:fs';

// Works both from src/ (tests) and from dist/src/ (the built CLI).
function findPackageJson(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    const url = new URL(rel, import.meta.url);
    if (existsSync(url)) {
      const pkg = JSON.parse(readFileSync(url, 'utf8')) as { name?: string; version: string };
      if (pkg.name === 'cedana') return pkg.version;
    }
  }
  return '0.0.0';
}

export const CEDANA_VERSION: string = findPackageJson();
