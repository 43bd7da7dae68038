import { describe, expect, it } from 'vitest';
import { matchPattern, parseDestination, parseSshConfig, resolveHost } from '../../../src/transport/ssh-config.js';

const HOME = '/home/ann';
const resolve = (text: string, alias: string) => resolveHost(parseSshConfig(text), alias, HOME);

describe('matchPattern', () => {
  it.each([
    ['*', 'anything', true],
    ['web*', 'web1', true],
    ['web*', 'db1', false],
    ['web?', 'web1', true],
    ['web?', 'web12', false],
    ['*.example.com', 'a.example.com', true],
    ['*.example.com', 'aexample.com', false], // the dot is literal
    ['10.0.0.*', '10.0.0.7', true],
    ['10.0.0.*', '10.0.1.7', false],
    ['WEB1', 'web1', true],
    ['[::1]:2222', '[::1]:2222', true], // brackets are literal
    ['a+b', 'a+b', true],
    ['a+b', 'aab', false],
    ['host', 'host2', false],
  ])('%s vs %s → %s', (pattern, host, want) => {
    expect(matchPattern(pattern, host)).toBe(want);
  });
});

describe('parseSshConfig + resolveHost', () => {
  it('returns the alias itself when nothing matches', () => {
    const c = resolve('Host other\n  HostName 10.0.0.1\n  Port 2222\n', 'target');
    expect(c).toEqual({ alias: 'target', hostName: 'target', user: undefined, port: undefined, identityFiles: [], proxyJump: undefined, userKnownHostsFiles: [] });
  });

  it('an empty file resolves to the alias', () => {
    expect(resolve('', 'h').hostName).toBe('h');
    expect(parseSshConfig('')).toHaveLength(1);
  });

  it('reads HostName, User, Port from the matching block', () => {
    const c = resolve('Host target\n  HostName 10.0.0.5\n  User root\n  Port 2222\n', 'target');
    expect(c.hostName).toBe('10.0.0.5');
    expect(c.user).toBe('root');
    expect(c.port).toBe(2222);
  });

  it('first value wins, across blocks and within one', () => {
    const text = ['Host target', '  User first', '  User second', 'Host *', '  User third', '  Port 2200', '  HostName wild'].join('\n');
    const c = resolve(text, 'target');
    expect(c.user).toBe('first');
    expect(c.port).toBe(2200);
    expect(c.hostName).toBe('wild');
  });

  it('options before any Host line apply to every host, and win over later blocks', () => {
    const c = resolve('User global\nHost target\n  User specific\n  Port 3\n', 'target');
    expect(c.user).toBe('global');
    expect(c.port).toBe(3);
  });

  it('matches any of several patterns on a Host line, with * and ?', () => {
    const text = 'Host db? web-*\n  User ops\n';
    expect(resolve(text, 'db1').user).toBe('ops');
    expect(resolve(text, 'web-eu-1').user).toBe('ops');
    expect(resolve(text, 'db12').user).toBeUndefined();
    expect(resolve(text, 'mail').user).toBeUndefined();
  });

  it('a negated pattern excludes a host even when another pattern matches', () => {
    const text = 'Host *.corp !bastion.corp\n  ProxyJump bastion.corp\n';
    expect(resolve(text, 'db.corp').proxyJump).toBe('bastion.corp');
    expect(resolve(text, 'bastion.corp').proxyJump).toBeUndefined();
  });

  it('a Host line with only negations matches nothing', () => {
    expect(resolve('Host !foo\n  User x\n', 'bar').user).toBeUndefined();
    expect(resolve('Host !foo\n  User x\n', 'foo').user).toBeUndefined();
  });

  it('host patterns match case-insensitively', () => {
    expect(resolve('Host Target\n  User r\n', 'target').user).toBe('r');
  });

  it('IdentityFile accumulates across blocks, in order', () => {
    const text = 'Host target\n  IdentityFile /k/one\n  IdentityFile /k/two\nHost *\n  IdentityFile /k/three\n';
    expect(resolve(text, 'target').identityFiles).toEqual(['/k/one', '/k/two', '/k/three']);
    expect(resolve(text, 'other').identityFiles).toEqual(['/k/three']);
  });

  it('IdentityFile expands ~, %d (home) and %h (the alias)', () => {
    const text = 'Host *\n  IdentityFile ~/.ssh/id_%h\n  IdentityFile %d/keys/x\n  IdentityFile ~\n  IdentityFile ~other/k\n';
    expect(resolve(text, 'box').identityFiles).toEqual([`${HOME}/.ssh/id_box`, `${HOME}/keys/x`, HOME, '~other/k']);
  });

  it('HostName expands %h to the alias', () => {
    expect(resolve('Host *\n  HostName %h.example.com\n', 'box').hostName).toBe('box.example.com');
  });

  it('ProxyJump is read, and "none" means no jump (any case)', () => {
    expect(resolve('Host t\n  ProxyJump root@bastion:2200\n', 't').proxyJump).toBe('root@bastion:2200');
    expect(resolve('Host t\n  ProxyJump none\nHost *\n  ProxyJump bastion\n', 't').proxyJump).toBeUndefined();
    expect(resolve('Host t\n  ProxyJump NONE\n', 't').proxyJump).toBeUndefined();
  });

  it('UserKnownHostsFile takes several files and expands ~', () => {
    const c = resolve('Host t\n  UserKnownHostsFile ~/.ssh/kh /etc/ssh/kh2\n', 't');
    expect(c.userKnownHostsFiles).toEqual([`${HOME}/.ssh/kh`, '/etc/ssh/kh2']);
  });

  it('UserKnownHostsFile: the first one given wins, like other options', () => {
    const c = resolve('Host t\n  UserKnownHostsFile /a/kh\nHost *\n  UserKnownHostsFile /b/kh\n', 't');
    expect(c.userKnownHostsFiles).toEqual(['/a/kh']);
    expect(resolve('Host t\n  UserKnownHostsFile /a/kh\nHost *\n  UserKnownHostsFile /b/kh\n', 'u').userKnownHostsFiles).toEqual(['/b/kh']);
  });

  it('accepts Key=value and Key = value', () => {
    const c = resolve('Host=t\nHostName=10.1.1.1\nPort = 2022\nUser= admin\n', 't');
    expect(c.hostName).toBe('10.1.1.1');
    expect(c.port).toBe(2022);
    expect(c.user).toBe('admin');
  });

  it('keys are case-insensitive', () => {
    const c = resolve('HOST t\nhostname 10.2.2.2\nPORT 22\nuSeR bob\nidentityfile /k\n', 't');
    expect(c).toMatchObject({ hostName: '10.2.2.2', port: 22, user: 'bob', identityFiles: ['/k'] });
  });

  it('strips the quotes around a value, keeping its spaces', () => {
    const c = resolve('Host t\n  IdentityFile "/keys/my key"\n  User "root"\n', 't');
    expect(c.identityFiles).toEqual(['/keys/my key']);
    expect(c.user).toBe('root');
  });

  it('skips comments, blank lines, indentation and CRLF line ends', () => {
    const c = resolve('# comment\r\n\r\n   # indented comment\r\nHost t\r\n\tUser tab\r\n', 't');
    expect(c.user).toBe('tab');
  });

  it('skips Match blocks, up to the next Host line', () => {
    const text = ['Match host t', '  User frommatch', '  Port 1', 'Host t', '  User fromhost'].join('\n');
    const c = resolve(text, 't');
    expect(c.user).toBe('fromhost');
    expect(c.port).toBeUndefined();
  });

  it('a Match block after a Host block does not extend it', () => {
    const c = resolve('Host t\n  User a\nMatch all\n  Port 9\n', 't');
    expect(c.user).toBe('a');
    expect(c.port).toBeUndefined();
  });

  it('ignores lines with a key and no value', () => {
    const c = resolve('Host t\n  User\n  User real\n', 't');
    expect(c.user).toBe('real');
  });

  it('parses blocks: the implicit global one first', () => {
    const blocks = parseSshConfig('User g\nHost a b\n  Port 1\nMatch all\n  Port 2\n');
    expect(blocks).toEqual([
      { patterns: ['*'], options: [['user', 'g']] },
      { patterns: ['a', 'b'], options: [['port', '1']] },
      { patterns: [], options: [['port', '2']] },
    ]);
  });
});

describe('parseDestination', () => {
  it.each([
    ['host', { user: undefined, host: 'host', port: undefined }],
    ['root@host', { user: 'root', host: 'host', port: undefined }],
    ['host:2222', { user: undefined, host: 'host', port: 2222 }],
    ['root@10.0.0.1:22', { user: 'root', host: '10.0.0.1', port: 22 }],
    ['[::1]:2222', { user: undefined, host: '::1', port: 2222 }],
    ['admin@[fe80::1%eth0]:22', { user: 'admin', host: 'fe80::1%eth0', port: 22 }],
    ['[2001:db8::1]', { user: undefined, host: '2001:db8::1', port: undefined }],
    ['  padded.example  ', { user: undefined, host: 'padded.example', port: undefined }],
    ['host:1', { user: undefined, host: 'host', port: 1 }],
    ['host:65535', { user: undefined, host: 'host', port: 65535 }],
  ])('%s', (text, want) => {
    expect(parseDestination(text)).toEqual(want);
  });

  it.each([
    [''],
    ['   '],
    ['host:0'],
    ['host:65536'],
    ['host:99999'],
    ['host:123456'],
    ['host:'],
    ['host:ssh'],
    ['host:-1'],
    ['@host'],
    ['a@b@c'],
    ['::1'],
    ['::1:22'],
    ['[::1'],
    ['host name'],
    ['user@'],
  ])('rejects %j', (text) => {
    expect(parseDestination(text)).toBeUndefined();
  });
});
