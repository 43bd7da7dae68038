import { describe, expect, it } from 'vitest';
import type { ManifestSocket } from '../../../src/image/manifest.js';
import { criuLockRules } from '../../../src/migrate/netlock.js';

const conn = (local: string, remote: string): ManifestSocket => ({ state: 'ESTABLISHED', local, remote });

/** CRIU's per-connection lock, as `iptables -S` lists it (nft backend order: mark before tcp). */
const lockIn = (src: string, dst: string, sport: number, dport: number, mask = 32): string =>
  `-A INPUT -s ${src}/${mask} -d ${dst}/${mask} -p tcp -m mark ! --mark 0xc114 -m tcp --sport ${sport} --dport ${dport} -j DROP`;
const lockOut = (src: string, dst: string, sport: number, dport: number, mask = 32): string =>
  `-A OUTPUT -s ${src}/${mask} -d ${dst}/${mask} -p tcp -m mark ! --mark 0xc114 -m tcp --sport ${sport} --dport ${dport} -j DROP`;

const SERVICE = conn('10.231.250.1:7071', '10.231.16.2:41112');
const SERVICE_IN = lockIn('10.231.16.2', '10.231.250.1', 41112, 7071);
const SERVICE_OUT = lockOut('10.231.250.1', '10.231.16.2', 7071, 41112);

const LISTING = [
  '-P INPUT ACCEPT',
  '-P FORWARD ACCEPT',
  '-P OUTPUT ACCEPT',
  '-N CRIU',
  '-N DOCKER',
  '-A INPUT -j CRIU',
  // The connection we want.
  SERVICE_IN,
  // Another connection of the same service (another client port).
  lockIn('10.231.16.2', '10.231.250.1', 41113, 7071),
  lockOut('10.231.250.1', '10.231.16.2', 7071, 41113),
  // Another client address.
  lockIn('10.231.16.3', '10.231.250.1', 41112, 7071),
  // A port that has 7071 as a prefix.
  lockIn('10.231.16.2', '10.231.250.1', 41112, 70710),
  lockOut('10.231.250.1', '10.231.16.2', 70710, 41112),
  // An address that has 10.231.16.2 as a prefix.
  lockIn('10.231.16.25', '10.231.250.1', 41112, 7071),
  // The same 4-tuple, but not CRIU's: no mark, or not a DROP.
  '-A INPUT -s 10.231.16.2/32 -d 10.231.250.1/32 -p tcp -m tcp --sport 41112 --dport 7071 -j DROP',
  '-A INPUT -s 10.231.16.2/32 -d 10.231.250.1/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 41112 --dport 7071 -j ACCEPT',
  // CRIU's whole-netns lock chain.
  '-A CRIU -m mark --mark 0xc114 -j ACCEPT',
  '-A CRIU -j DROP',
  SERVICE_OUT,
  '-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 7071 -j ACCEPT',
  '',
].join('\n');

describe('criuLockRules', () => {
  it('picks exactly the INPUT and OUTPUT rules of the connection, in listing order', () => {
    expect(criuLockRules(LISTING, [SERVICE])).toEqual([SERVICE_IN, SERVICE_OUT]);
  });

  it('finds nothing for a connection without rules, or no connections', () => {
    expect(criuLockRules(LISTING, [conn('10.231.250.1:7071', '10.231.16.9:5000')])).toEqual([]);
    expect(criuLockRules(LISTING, [])).toEqual([]);
    expect(criuLockRules('', [SERVICE])).toEqual([]);
  });

  it('does not take a rule whose port only starts with the connection’s (7071 vs 70710)', () => {
    const rules = criuLockRules(LISTING, [SERVICE]);
    expect(rules.some((r) => r.includes('70710'))).toBe(false);
    expect(criuLockRules(LISTING, [conn('10.231.250.1:70710', '10.231.16.2:41112')])).toEqual([
      lockIn('10.231.16.2', '10.231.250.1', 41112, 70710),
      lockOut('10.231.250.1', '10.231.16.2', 70710, 41112),
    ]);
    expect(criuLockRules(LISTING, [conn('10.231.250.1:707', '10.231.16.2:41112')])).toEqual([]);
    expect(criuLockRules(LISTING, [conn('10.231.250.1:7071', '10.231.16.2:4111')])).toEqual([]);
  });

  it('does not take a rule whose address only starts with the connection’s', () => {
    expect(criuLockRules(LISTING, [conn('10.231.250.1:7071', '10.231.16.2:41112')]).some((r) => r.includes('10.231.16.25'))).toBe(false);
    expect(criuLockRules(LISTING, [conn('10.231.250.1:7071', '10.231.16.25:41112')])).toEqual([lockIn('10.231.16.25', '10.231.250.1', 41112, 7071)]);
  });

  it('dots in addresses are literal', () => {
    const listing = lockIn('10x231x16x2', '10.231.250.1', 41112, 7071);
    expect(criuLockRules(listing, [SERVICE])).toEqual([]);
  });

  it('takes the rules of several connections, each once', () => {
    const other = conn('10.231.250.1:7071', '10.231.16.2:41113');
    expect(criuLockRules(LISTING, [SERVICE, other, SERVICE])).toEqual([
      SERVICE_IN,
      lockIn('10.231.16.2', '10.231.250.1', 41113, 7071),
      lockOut('10.231.250.1', '10.231.16.2', 7071, 41113),
      SERVICE_OUT,
    ]);
  });

  it('reads the legacy iptables order too (tcp before mark), and rules without a mask', () => {
    const legacyIn = '-A INPUT -s 10.231.16.2/32 -d 10.231.250.1/32 -p tcp -m tcp --sport 41112 --dport 7071 -m mark ! --mark 0xc114 -j DROP';
    const legacyOut = '-A OUTPUT -s 10.231.250.1 -d 10.231.16.2 -p tcp -m tcp --sport 7071 --dport 41112 -m mark ! --mark 0xc114 -j DROP';
    expect(criuLockRules(`${legacyIn}\n${legacyOut}\n`, [SERVICE])).toEqual([legacyIn, legacyOut]);
  });

  it('works for a connection on loopback, where both ends share the address', () => {
    const c = conn('127.0.0.1:8080', '127.0.0.1:50000');
    const rin = lockIn('127.0.0.1', '127.0.0.1', 50000, 8080);
    const rout = lockOut('127.0.0.1', '127.0.0.1', 8080, 50000);
    const unrelated = lockIn('127.0.0.1', '127.0.0.1', 50001, 8080);
    expect(criuLockRules([rin, unrelated, rout].join('\n'), [c])).toEqual([rin, rout]);
  });

  it('IPv6: [addr]:port endpoints against ip6tables -S rules', () => {
    const c = conn('[::1]:80', '[::1]:45000');
    const rin = lockIn('::1', '::1', 45000, 80, 128);
    const rout = lockOut('::1', '::1', 80, 45000, 128);
    const listing = [
      '-P INPUT ACCEPT',
      rin,
      lockIn('::10', '::1', 45000, 80, 128), // ::10 starts with ::1
      lockIn('::1', '::1', 45000, 8080, 128),
      rout,
    ].join('\n');
    expect(criuLockRules(listing, [c])).toEqual([rin, rout]);
  });

  it('IPv6: full addresses', () => {
    const c = conn('[2001:db8::a]:443', '[2001:db8:0:1::5]:51234');
    const rin = lockIn('2001:db8:0:1::5', '2001:db8::a', 51234, 443, 128);
    const rout = lockOut('2001:db8::a', '2001:db8:0:1::5', 443, 51234, 128);
    expect(criuLockRules(`${rin}\n${lockIn('2001:db8:0:1::5', '2001:db8::ab', 51234, 443, 128)}\n${rout}`, [c])).toEqual([rin, rout]);
  });

  it('skips connections whose endpoints cannot be read', () => {
    expect(criuLockRules(LISTING, [conn('garbage', '10.231.16.2:41112'), conn('10.231.250.1', '10.231.16.2:41112')])).toEqual([]);
    expect(criuLockRules(LISTING, [conn('garbage', 'x'), SERVICE])).toEqual([SERVICE_IN, SERVICE_OUT]);
  });
});
