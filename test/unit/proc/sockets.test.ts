import { describe, expect, it } from 'vitest';
import { decodeProcAddress, parseProcNetTcp, parseSsUnix, socketInode } from '../../../src/proc/sockets.js';

describe('decodeProcAddress', () => {
  it.each([
    ['0100007F:1F90', '127.0.0.1:8080'],
    ['00000000:0016', '0.0.0.0:22'],
    ['0101A8C0:C350', '192.168.1.1:50000'],
    ['FFFFFFFF:FFFF', '255.255.255.255:65535'],
    ['0A00020F:0035', '15.2.0.10:53'],
  ])('IPv4 %s → %s', (hex, want) => {
    expect(decodeProcAddress(hex)).toBe(want);
  });

  it.each([
    ['00000000000000000000000001000000:1F90', '[::1]:8080'],
    ['00000000000000000000000000000000:0000', '[::]:0'],
    ['000080FE00000000FF005002FEB5C3A8:0016', '[fe80::250:ff:a8c3:b5fe]:22'],
    ['B80D0120000000000000000001000000:01BB', '[2001:db8::1]:443'],
    ['B80D0120000000000000000000000000:01BB', '[2001:db8::]:443'],
    ['B80D01200000000000000100D4C3B2A1:0050', '[2001:db8::1:0:a1b2:c3d4]:80'],
    ['B80D01200A000000000001000000000B:0050', '[2001:db8:0:a:1:0:b00:0]:80'],
  ])('IPv6 %s → %s', (hex, want) => {
    expect(decodeProcAddress(hex)).toBe(want);
  });

  it.each([
    ['0000000000000000FFFF00000100007F:1F90', '[::ffff:127.0.0.1]:8080'],
    ['0000000000000000FFFF00000101A8C0:0016', '[::ffff:192.168.1.1]:22'],
    ['0000000000000000ffff00000a00020f:0035', '[::ffff:15.2.0.10]:53'],
  ])('v4-mapped IPv6 %s → %s', (hex, want) => {
    expect(decodeProcAddress(hex)).toBe(want);
  });
});

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 635 1 000000007675cbf3 100 0 0 10 0
   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 23541 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 23542 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00001772 00000000     0        0 0 3 0000000000000000
   4: 0100007F:9C42 0100007F:1F90 0D 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000
`;

const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
`;

describe('parseProcNetTcp', () => {
  it('parses /proc/net/tcp: addresses, states, inodes', () => {
    expect(parseProcNetTcp(TCP)).toEqual([
      { local: '0.0.0.0:8080', remote: '0.0.0.0:0', state: 'LISTEN', inode: 635 },
      { local: '127.0.0.1:8080', remote: '127.0.0.1:40000', state: 'ESTABLISHED', inode: 23541 },
      { local: '127.0.0.1:40000', remote: '127.0.0.1:8080', state: 'ESTABLISHED', inode: 23542 },
      { local: '127.0.0.1:40001', remote: '127.0.0.1:8080', state: 'TIME_WAIT', inode: 0 },
      { local: '127.0.0.1:40002', remote: '127.0.0.1:8080', state: 'UNKNOWN', inode: 99 },
    ]);
  });

  it('parses /proc/net/tcp6', () => {
    expect(parseProcNetTcp(TCP6)).toEqual([
      { local: '[::]:80', remote: '[::]:0', state: 'LISTEN', inode: 1001 },
      { local: '[::ffff:127.0.0.1]:80', remote: '[::ffff:127.0.0.1]:40960', state: 'ESTABLISHED', inode: 1002 },
    ]);
  });

  it('the header alone, an empty file and short lines give nothing', () => {
    expect(parseProcNetTcp(TCP.split('\n')[0]!)).toEqual([]);
    expect(parseProcNetTcp('')).toEqual([]);
    expect(parseProcNetTcp('header\n 0: 0100007F:1F90 0100007F:9C40 01\n')).toEqual([]);
  });

  it('never treats the header as a socket even without trailing data', () => {
    const sockets = parseProcNetTcp(TCP);
    expect(sockets.every((s) => Number.isInteger(s.inode))).toBe(true);
    expect(sockets).toHaveLength(5);
  });

  it('knows every TCP state number', () => {
    const names = ['ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV'];
    const lines = names.map((_, i) => `${i}: 0100007F:0001 0100007F:0002 ${(i + 1).toString(16).toUpperCase().padStart(2, '0')} 0:0 0:0 0 0 0 ${i + 10} 1`);
    expect(parseProcNetTcp(['hdr', ...lines].join('\n')).map((s) => s.state)).toEqual(names);
  });
});

describe('parseSsUnix', () => {
  it('parses `ss -xanH` lines (anonymous, named, with spaces in the path)', () => {
    const text = [
      'u_str ESTAB 0      0      * 23541 * 23540',
      'u_str LISTEN 0      4096   /run/dbus/system_bus_socket 1234 * 0',
      'u_dgr UNCONN 0      0      @/org/kernel/udev 999 * 0',
      'u_str ESTAB 0      0      /tmp/my sock.s 5000 * 5001',
      'u_seq ESTAB 0      0      /run/x.sock 6000 /run/x.sock 6001',
      '',
    ].join('\n');
    expect(parseSsUnix(text)).toEqual([
      { type: 'u_str', state: 'ESTAB', inode: 23541, peerInode: 23540, path: '*' },
      { type: 'u_str', state: 'LISTEN', inode: 1234, peerInode: 0, path: '/run/dbus/system_bus_socket' },
      { type: 'u_dgr', state: 'UNCONN', inode: 999, peerInode: 0, path: '@/org/kernel/udev' },
      { type: 'u_str', state: 'ESTAB', inode: 5000, peerInode: 5001, path: '/tmp/my sock.s' },
      { type: 'u_seq', state: 'ESTAB', inode: 6000, peerInode: 6001, path: '/run/x.sock' },
    ]);
  });

  it('skips a header, short lines and lines whose inodes are not numbers', () => {
    const text = [
      'Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process',
      'u_str ESTAB 0 0 * 1',
      'u_str ESTAB 0 0 * abc * 5',
      'u_str ESTAB 0 0 * 10 * 11',
    ].join('\n');
    expect(parseSsUnix(text)).toEqual([{ type: 'u_str', state: 'ESTAB', inode: 10, peerInode: 11, path: '*' }]);
  });

  it('empty output gives nothing', () => {
    expect(parseSsUnix('')).toEqual([]);
  });
});

describe('socketInode', () => {
  it('reads the inode of a socket fd link', () => {
    expect(socketInode('socket:[12345]')).toBe(12345);
    expect(socketInode('socket:[0]')).toBe(0);
  });

  it.each(['pipe:[12345]', 'anon_inode:[eventfd]', '/dev/null', 'socket:[]', 'socket:[12a]', ' socket:[1]', 'socket:[1] '])('%j is not a socket', (t) => {
    expect(socketInode(t)).toBeUndefined();
  });
});
