/**
 * The subset of ssh_config(5) cedana honours: Host patterns, HostName, User, Port, IdentityFile,
 * ProxyJump, UserKnownHostsFile, StrictHostKeyChecking. First value wins, as in OpenSSH. Pure.
 */
import { homedir } from 'node:os';

export interface HostConfig {
  alias: string;
  hostName: string;
  user?: string;
  port?: number;
  identityFiles: string[];
  proxyJump?: string;
  userKnownHostsFiles: string[];
}

interface Block {
  patterns: string[];
  options: [string, string][];
}

export function parseSshConfig(text: string): Block[] {
  const blocks: Block[] = [{ patterns: ['*'], options: [] }];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+?)\s*(?:=\s*|\s+)(.*)$/.exec(line);
    if (!m) continue;
    const key = m[1]!.toLowerCase();
    const value = unquote(m[2]!.trim());
    if (key === 'host') blocks.push({ patterns: value.split(/\s+/), options: [] });
    else if (key === 'match') blocks.push({ patterns: [], options: [] }); // Match blocks are not supported: skipped
    else blocks[blocks.length - 1]!.options.push([key, value]);
  }
  return blocks;
}

function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

/** OpenSSH pattern: * and ?, a leading ! negates. */
export function matchPattern(pattern: string, host: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 'i');
  return re.test(host);
}

function blockMatches(b: Block, host: string): boolean {
  let hit = false;
  for (const p of b.patterns) {
    if (p.startsWith('!')) {
      if (matchPattern(p.slice(1), host)) return false;
    } else if (matchPattern(p, host)) hit = true;
  }
  return hit;
}

function expandTilde(p: string, home: string): string {
  return p === '~' ? home : p.startsWith('~/') ? `${home}${p.slice(1)}` : p;
}

export function resolveHost(blocks: Block[], alias: string, home = homedir()): HostConfig {
  const first = new Map<string, string>();
  const identityFiles: string[] = [];
  const knownHosts: string[] = [];
  for (const b of blocks) {
    if (!blockMatches(b, alias)) continue;
    for (const [k, v] of b.options) {
      if (k === 'identityfile') identityFiles.push(expandTilde(v.replace(/%d/g, home).replace(/%h/g, alias), home));
      else if (k === 'userknownhostsfile') {
        if (knownHosts.length === 0) knownHosts.push(...v.split(/\s+/).map((p) => expandTilde(p, home))); // first line wins, as in OpenSSH
      } else if (!first.has(k)) first.set(k, v);
    }
  }
  const port = first.get('port');
  const proxy = first.get('proxyjump');
  return {
    alias,
    hostName: (first.get('hostname') ?? alias).replace(/%h/g, alias),
    user: first.get('user'),
    port: port ? Number(port) : undefined,
    identityFiles,
    proxyJump: proxy && proxy.toLowerCase() !== 'none' ? proxy : undefined,
    userKnownHostsFiles: knownHosts,
  };
}

export interface Destination {
  user?: string;
  host: string;
  port?: number;
}

/** "[user@]host[:port]" (also "[v6addr]:port"). */
export function parseDestination(text: string): Destination | undefined {
  const m = /^(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s[\]]+)(?::(\d{1,5}))?$/.exec(text.trim());
  if (!m) return undefined;
  const port = m[3] ? Number(m[3]) : undefined;
  if (port !== undefined && (port < 1 || port > 65535)) return undefined;
  return { user: m[1], host: m[2]!.replace(/^\[|\]$/g, ''), port };
}
