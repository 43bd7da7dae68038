/** CRIU version parsing and comparison. Pure. */

export interface Version {
  major: number;
  minor: number;
  patch: number;
  text: string;
}

export const MIN_CRIU: Version = { major: 4, minor: 2, patch: 0, text: '4.2' };

/** Reads `criu --version` output ("Version: 4.2.1\nGitID: …"). */
export function parseCriuVersion(out: string): Version | undefined {
  const m = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(out);
  if (!m) return undefined;
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
  return { major, minor, patch, text: `${major}.${minor}${m[3] ? `.${patch}` : ''}` };
}

export function parseVersionText(text: string): Version | undefined {
  return parseCriuVersion(`Version: ${text}`);
}

export function compareVersions(a: Version, b: Version): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}
