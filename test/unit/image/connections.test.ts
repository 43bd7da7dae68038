import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { addressOf, canonicalAddress, decideConnections, isLoopback, parseIpAddr, type Connection } from '../../../src/image/connections.js';

const conn = (local: string, remote: string, ino = 1): Connection => ({ ino, local, remote });

describe('addresses', () => {
  it('takes the address of host:port forms, canonical', () => {
    expect(addressOf('10.0.0.1:80')).toBe('10.0.0.1');
    expect(addressOf('[::ffff:10.0.0.1]:80')).toBe('10.0.0.1');
    expect(addressOf('[fd00:0:0::1]:80')).toBe('fd00::1');
    expect(canonicalAddress('FD00:0000::0001/64')).toBe('fd00::1');
    expect(canonicalAddress('fe80::1%eth0')).toBe('fe80::1');
  });
  it('knows loopback', () => {
    expect(isLoopback('127.0.0.1')).toBe(true);
    expect(isLoopback('127.8.0.1')).toBe(true);
    expect(isLoopback('::1')).toBe(true);
    expect(isLoopback('10.0.0.1')).toBe(false);
  });
  it('parses ip -o addr show', () => {
    const text = [
      '1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever',
      '1: lo    inet6 ::1/128 scope host noprefixroute \\       valid_lft forever preferred_lft forever',
      '2: eth0    inet 10.231.11.2/24 scope global eth0\\       valid_lft forever preferred_lft forever',
      '2: eth0    inet6 fe80::a8c1:abff:fe12:3456/64 scope link \\       valid_lft forever',
    ].join('\n');
    expect(parseIpAddr(text)).toEqual(['127.0.0.1', '::1', '10.231.11.2', 'fe80::a8c1:abff:fe12:3456']);
  });
});

describe('decideConnections', () => {
  const here = new Set(['10.0.0.2', '127.0.0.1']);
  const out = conn('10.0.0.1:8000', '10.0.0.9:40000', 1);
  const ok = conn('10.0.0.2:8000', '10.0.0.9:40001', 2);
  const pairA = conn('127.0.0.1:7000', '127.0.0.1:50000', 3);
  const pairB = conn('127.0.0.1:50000', '127.0.0.1:7000', 4);
  const lonely = conn('127.0.0.1:50001', '127.0.0.1:5432', 5);

  it('keeps a connection whose address exists there, closes one whose address does not, saying why', () => {
    const p = decideConnections([out, ok], { mode: 'auto', addresses: here, moving: true, where: 'on b' });
    expect(p.keep).toEqual([ok]);
    expect(p.close).toEqual([out]);
    expect(p.notes).toEqual(['keeping 1 established connection(s), e.g. 10.0.0.2:8000 ↔ 10.0.0.9:40001', 'closing 10.0.0.1:8000 ↔ 10.0.0.9:40000: 10.0.0.1 does not exist on b']);
  });

  it('moving: keeps a loopback pair inside the tree, closes a loopback connection whose peer stays behind', () => {
    const p = decideConnections([pairA, pairB, lonely], { mode: 'auto', addresses: here, moving: true, where: 'on b' });
    expect(p.keep).toEqual([pairA, pairB]);
    expect(p.close).toEqual([lonely]);
    expect(p.notes[1]).toContain('its loopback peer stays behind');
    // Restoring on the same host, the peer is still there.
    expect(decideConnections([lonely], { mode: 'auto', addresses: here, moving: false, where: 'here' }).keep).toEqual([lonely]);
  });

  it('keeps everything when the addresses there are unknown', () => {
    expect(decideConnections([out], { mode: 'auto', moving: true, where: 'on b' }).keep).toEqual([out]);
  });

  it('--tcp-close closes all; --tcp-established keeps all when possible', () => {
    expect(decideConnections([ok, out], { mode: 'close', addresses: here, moving: true, where: 'on b' }).close).toEqual([ok, out]);
    const p = decideConnections([ok, lonely], { mode: 'established', addresses: here, moving: true, where: 'on b' });
    expect(p.keep).toEqual([ok, lonely]);
    expect(p.notes[0]).toBe('--tcp-established: keeping all 2 connection(s) as asked');
  });

  it('--tcp-established with an address missing there is TCP_KEEP_IMPOSSIBLE, unless a hook may bring it', () => {
    try {
      decideConnections([out, ok], { mode: 'established', addresses: here, moving: true, where: 'on b' });
      expect.unreachable();
    } catch (e) {
      expect((e as CedanaError).code).toBe('TCP_KEEP_IMPOSSIBLE');
      expect((e as CedanaError).message).toContain('10.0.0.1:8000 ↔ 10.0.0.9:40000 cannot be kept: 10.0.0.1 does not exist on b');
      expect((e as CedanaError).details.connections).toEqual([{ local: '10.0.0.1:8000', remote: '10.0.0.9:40000' }]);
    }
    const p = decideConnections([out], { mode: 'established', addresses: here, moving: true, where: 'on b', hook: true });
    expect(p.keep).toEqual([out]);
    expect(p.notes[0]).toMatch(/1 rely on --hook/);
  });

  it('has nothing to say without connections', () => {
    expect(decideConnections([], { mode: 'established', addresses: here, moving: true, where: 'on b' })).toEqual({ keep: [], close: [], notes: [] });
  });
});
