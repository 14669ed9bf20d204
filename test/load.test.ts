// cluster.toml loading: the bad-config corpus (every file declares the errors it must produce, with key
// path and line), the examples, defaults, --sources merging and the docs covering every key.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultCluster } from '../builders/defaults.ts';
import { ConfigErrors, ExitCode, InputError } from '../builders/errors.ts';
import { applySourcesFile, loadClusterFile, parseCluster, parseSources } from '../builders/load.ts';
import { scanKeyLines } from '../builders/load/positions.ts';
import { parseToml } from '../builders/load/problems.ts';
import { allKeyPaths } from '../builders/load/schema.ts';
import { defaultSources, type Target } from '../builders/spec.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const corpus = join(root, 'test/fixtures/bad-configs');

interface Expectation {
  path: string;
  line: number;
}

function expectationsOf(text: string): Expectation[] {
  return [...text.matchAll(/^# expect: (\S+) @ (\d+)$/gm)].map((m) => ({ path: m[1] === '<syntax>' ? '' : m[1]!, line: Number(m[2]) }));
}

function errorsOf(fn: () => unknown): ConfigErrors {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigErrors, `expected ConfigErrors, got ${String(e)}`);
    return e;
  }
  assert.fail('expected the config to be rejected');
}

describe('bad-config corpus', () => {
  const files = readdirSync(corpus).filter((f) => f.endsWith('.toml')).sort();

  it('has at least 45 configs', () => {
    assert.ok(files.length >= 45, `only ${files.length} bad configs`);
  });

  for (const name of files) {
    it(name, () => {
      const file = join(corpus, name);
      const text = readFileSync(file, 'utf8');
      const expected = expectationsOf(text);
      assert.ok(expected.length > 0, `${name} declares no "# expect:" line`);
      const err = errorsOf(() => parseCluster(text, file));
      assert.equal(err.exitCode, ExitCode.badInput);
      const got = err.errors.map((e) => ({ path: e.keyPath, line: e.line }));
      assert.deepEqual(
        [...got].sort((a, b) => a.line! - b.line! || a.path.localeCompare(b.path)),
        [...expected].sort((a, b) => a.line - b.line || a.path.localeCompare(b.path)),
      );
      for (const e of err.errors) {
        const where = e.keyPath ? `${file}:${e.line}: ${e.keyPath}: ` : `${file}:${e.line}: `;
        assert.ok(e.message.startsWith(where), `message "${e.message}" should start with "${where}"`);
        assert.ok(e.hint && e.hint.length > 10, `${e.keyPath} has no hint`);
        assert.ok(err.message.includes(e.message) && err.message.includes(`hint: ${e.hint}`));
      }
    });
  }
});

describe('good configs', () => {
  it('loads examples/cluster.toml with its nodes, addresses and defaults', async () => {
    const spec = await loadClusterFile(join(root, 'examples/cluster.toml'));
    assert.equal(spec.name, 'demo');
    assert.deepEqual(spec.os, { base: 'flatcar', channel: 'stable', version: 'current' });
    assert.deepEqual(spec.kubernetes, { version: 'v1.33.4', cni: 'flannel' });
    assert.deepEqual(
      spec.nodes.map((n) => [n.name, n.role, n.hardware, n.boot, n.arch, n.mac, n.ip, n.line]),
      [
        ['cp-1', 'control-plane', 'rpi4', 'disk', 'arm64', undefined, '192.168.50.10', 33],
        ['worker-1', 'worker', 'pc', 'disk', 'amd64', undefined, '192.168.50.11', 39],
        // Allocated: .1 is the gateway, .2 the lowest free address.
        ['worker-pxe-1', 'worker', 'pc', 'pxe', 'amd64', '52:54:00:50:00:12', '192.168.50.2', 45],
      ],
    );
    assert.equal(spec.ssh.authorizedKeys.length, 1);
    assert.deepEqual(spec.sources, defaultSources);
  });

  it('loads examples/hypriot-rpi3.toml: three 32-bit rpi3 nodes on DHCP', async () => {
    const spec = await loadClusterFile(join(root, 'examples/hypriot-rpi3.toml'));
    assert.deepEqual(spec.os, { base: 'hypriot', channel: 'stable', version: '1.12.3' });
    assert.deepEqual(spec.nodes.map((n) => [n.name, n.hardware, n.arch, n.ip]), [
      ['pi-1', 'rpi3', 'arm', undefined],
      ['pi-2', 'rpi3', 'arm', undefined],
      ['pi-3', 'rpi3', 'arm', undefined],
    ]);
  });

  it('normalises versions, MACs, addresses and sizes, and reads inline tables and dotted keys', () => {
    const spec = parseCluster(
      `name = "v6"
os = { base = "hypriot", version = "v1.12.3" }
kubernetes.version = "1.34.1"
[network]
node_cidr = "fd00:50::/64"
gateway = "FD00:50:0:0::FE"
pod_cidr = "fd00:244::/56"
service_cidr = "fd00:96::/108"
[[nodes]]
name = "a"
role = "control-plane"
hardware = "rpi4"
mac = "52-54-00-AB-CD-EF"
size = "8G"
[[nodes]]
name = "b"
role = "worker"
hardware = "rpi4"
ip = "fd00:50::0001"
size = 1073741824
`,
      'v6.toml',
    );
    assert.equal(spec.os.version, '1.12.3');
    assert.equal(spec.kubernetes.version, 'v1.34.1');
    assert.equal(spec.network.gateway, 'fd00:50::fe');
    assert.equal(spec.nodes[0]!.mac, '52:54:00:ab:cd:ef');
    assert.equal(spec.nodes[0]!.sizeBytes, 8 * 2 ** 30);
    assert.equal(spec.nodes[1]!.sizeBytes, 2 ** 30);
    assert.equal(spec.nodes[1]!.ip, 'fd00:50::1');
    // ::1 is taken by node b (explicit addresses are reserved wherever they appear), ::0 is the subnet-router anycast address.
    assert.equal(spec.nodes[0]!.ip, 'fd00:50::2');
  });

  it('accepts every OpenSSH key type bramble lists and image references of every shape', () => {
    const blob = (type: string) => {
      const t = Buffer.from(type);
      const len = Buffer.alloc(4);
      len.writeUInt32BE(t.length);
      return Buffer.concat([len, t, Buffer.alloc(32, 7)]).toString('base64');
    };
    const keys = ['ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'sk-ssh-ed25519@openssh.com'].map((t) => `${t} ${blob(t)} me@host`);
    const images = [
      'nginx',
      'nginx:1.27',
      'docker.io/library/nginx:1.27',
      'localhost:5000/team/app:v1.0.0-rc.1',
      `ghcr.io/org/app@sha256:${'a'.repeat(64)}`,
      `quay.io/org/app:1.0@sha256:${'b'.repeat(64)}`,
      'docker-daemon:myapp:1.0',
    ];
    const spec = parseCluster(
      `name = "c"\n[ssh]\nauthorized_keys = ${JSON.stringify(keys)}\n[registry]\nmirror = false\nextra_images = ${JSON.stringify(images)}\n` +
        '[[nodes]]\nname = "cp"\nrole = "control-plane"\nhardware = "pc"\n',
      'c.toml',
    );
    assert.deepEqual(spec.ssh.authorizedKeys, keys);
    assert.deepEqual(spec.registry, { mirror: false, extraImages: images });
  });

  it('rejects docker-daemon references without a tag and ssh-dss keys', () => {
    const err = errorsOf(() =>
      parseCluster(
        'name = "c"\n[ssh]\nauthorized_keys = ["ssh-dss AAAAB3NzaC1kc3M= old"]\n[registry]\nextra_images = ["docker-daemon:myapp"]\n' +
          '[[nodes]]\nname = "cp"\nrole = "control-plane"\nhardware = "pc"\n',
        'c.toml',
      ),
    );
    assert.deepEqual(err.errors.map((e) => [e.keyPath, e.line]), [['ssh.authorized_keys[0]', 3], ['registry.extra_images[0]', 5]]);
    assert.match(err.errors[0]!.hint!, /ssh-keygen -t ed25519/);
  });

  it('reads files with a byte-order mark and CRLF line ends, lines unchanged', () => {
    const text = '\uFEFFname = "c"\r\n[os]\r\nchannel = "lts"\r\n[[nodes]]\r\nname = "a"\r\nrole = "control-plane"\r\nhardware = "pc"\r\nmac = "nope"\r\n';
    const err = errorsOf(() => parseCluster(text, 'crlf.toml'));
    assert.deepEqual(err.errors.map((e) => [e.keyPath, e.line]), [['nodes[0].mac', 8]]);
    assert.equal(parseCluster(text.replace('"nope"', '"52:54:00:00:00:09"'), 'crlf.toml').os.channel, 'lts');
  });

  it('reports a missing cluster file as bad input', async () => {
    await assert.rejects(loadClusterFile(join(root, 'examples/nope.toml')), (e: unknown) => e instanceof InputError && e.exitCode === 2);
  });
});

describe('default cluster', () => {
  const targets: Target[] = ['pc', 'rpi4', 'rpi3', 'arm64-uefi', 'pxe'];
  for (const target of targets) {
    it(`has one control-plane node for --target ${target}`, () => {
      const spec = defaultCluster(target);
      assert.equal(spec.name, 'bramble');
      assert.equal(spec.nodes.length, 1);
      const [node] = spec.nodes;
      assert.equal(node!.role, 'control-plane');
      assert.equal(node!.ip, undefined);
      assert.equal(spec.network.nodeCidr, undefined);
      assert.equal(node!.boot, target === 'pxe' ? 'pxe' : 'disk');
      assert.equal(node!.hardware, target === 'pxe' ? 'pc' : target);
      assert.equal(spec.os.base, target === 'rpi3' ? 'hypriot' : 'flatcar');
      assert.equal(spec.os.version, target === 'rpi3' ? '1.12.3' : 'current');
      if (target === 'pxe') {
        // Locally administered, unicast (IEEE 802 bits 1 and 0 of the first octet).
        const first = parseInt(node!.mac!.slice(0, 2), 16);
        assert.equal(first & 0b11, 0b10);
      }
    });
  }

  it('is the same as writing it out in TOML', () => {
    const written = parseCluster(
      'name = "bramble"\n[[nodes]]\nname = "control-plane-1"\nrole = "control-plane"\nhardware = "pc"\nboot = "pxe"\nmac = "02:62:72:61:6d:01"\n',
      '<built-in default>',
    );
    const { line: _line, ...node } = written.nodes[0]!;
    assert.deepEqual({ ...written, nodes: [node] }, defaultCluster('pxe'));
  });
});

describe('--sources', () => {
  const tmp = () => mkdtempSync(join(tmpdir(), 'bramble-load-'));
  const key = readFileSync(join(root, 'images/keys/flatcar-image-signing-key.asc'), 'utf8');
  const cluster = (extra = '') =>
    `name = "c"\n[sources]\nkubernetes = "http://mirror.example/k8s/"\nregistries = { "docker.io" = "http://mirror.example:5000", "ghcr.io" = "http://mirror.example:5001" }\ntrusted_keys = ["cluster-key.asc"]\n${extra}` +
    '[[nodes]]\nname = "cp"\nrole = "control-plane"\nhardware = "pc"\n';

  it('merges a sources file over the cluster: keys replaced, registries merged, trusted keys appended', async () => {
    const dir = tmp();
    try {
      mkdirSync(join(dir, 'keys'));
      writeFileSync(join(dir, 'cluster-key.asc'), key);
      writeFileSync(join(dir, 'keys', 'mirror.asc'), key.replace('BLOCK-----\n', 'BLOCK-----\nComment: X-Mirror\n'));
      writeFileSync(join(dir, 'cluster.toml'), cluster());
      writeFileSync(
        join(dir, 'sources.toml'),
        '[sources]\nflatcar = "http://127.0.0.1:8080/flatcar/{channel}"\nkubernetes = "http://127.0.0.1:8080/k8s"\n' +
          'registries = { "docker.io" = "http://127.0.0.1:5000" }\ntrusted_keys = ["keys/mirror.asc"]\n',
      );
      const spec = await loadClusterFile(join(dir, 'cluster.toml'), { sourcesFile: join(dir, 'sources.toml') });
      assert.equal(spec.sources.flatcar, 'http://127.0.0.1:8080/flatcar/{channel}');
      assert.equal(spec.sources.kubernetes, 'http://127.0.0.1:8080/k8s');
      assert.equal(spec.sources.github, defaultSources.github);
      assert.deepEqual(spec.sources.registries, { 'docker.io': 'http://127.0.0.1:5000', 'ghcr.io': 'http://mirror.example:5001' });
      assert.equal(spec.sources.trustedKeys.length, 2);
      assert.equal(spec.sources.trustedKeys[0], key);
      assert.match(spec.sources.trustedKeys[1]!, /X-Mirror/);

      const plain = await loadClusterFile(join(dir, 'cluster.toml'));
      assert.equal(plain.sources.kubernetes, 'http://mirror.example/k8s');

      const onDefault = await applySourcesFile(defaultCluster('pc'), join(dir, 'sources.toml'));
      assert.equal(onDefault.sources.flatcar, 'http://127.0.0.1:8080/flatcar/{channel}');
      assert.equal(onDefault.sources.trustedKeys.length, 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports problems of both files together, each with its own file and line', () => {
    const dir = tmp();
    try {
      writeFileSync(join(dir, 'cluster-key.asc'), key);
      const err = errorsOf(() =>
        parseCluster(cluster('[os]\nchannel = "nightly"\n'), join(dir, 'cluster.toml'), {
          sourcesText: '# mirror\n[sources]\nipxe = "tftp://10.0.0.1/"\nflatcr = "http://x"\n[network]\n',
          sourcesFile: join(dir, 'sources.toml'),
        }),
      );
      assert.deepEqual(
        err.errors.map((e) => [e.file, e.keyPath, e.line]),
        [
          [join(dir, 'cluster.toml'), 'os.channel', 7],
          [join(dir, 'sources.toml'), 'sources.ipxe', 3],
          [join(dir, 'sources.toml'), 'sources.flatcr', 4],
          [join(dir, 'sources.toml'), 'network', 5],
        ],
      );
      assert.match(err.errors[2]!.hint!, /did you mean "flatcar"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('parseSources returns only what the file sets', () => {
    assert.deepEqual(parseSources('[sources]\ngithub = "https://gh.mirror/"\n', '/x/s.toml'), { github: 'https://gh.mirror' });
    assert.deepEqual(parseSources('', '/x/s.toml'), {});
  });
});

describe('docs/cluster-toml.md', () => {
  it('documents every key', () => {
    const doc = readFileSync(join(root, 'docs/cluster-toml.md'), 'utf8');
    const missing = allKeyPaths().filter((k) => !/^(os|kubernetes|network|ssh|registry|provision|sources|nodes)$/.test(k) && !doc.includes(`\`${k}\``));
    assert.deepEqual(missing, []);
  });
});

describe('key lines', () => {
  it('finds keys past comments, multi-line strings, quoted keys, nested arrays and arrays of tables', () => {
    const text = [
      '# [not a header] comment', // 1
      'name = "x" # trailing [comment]', // 2
      's = """', // 3
      '[fake]', // 4
      'key = "\\"""', // 5
      '"""', // 6
      "lit = '''a", // 7
      "b'''", // 8
      '[a."b.c".d]   # a header', // 9
      'k = 1', // 10
      '[[arr]]', // 11
      'x = [ [1, 2], [', // 12
      '  3,', // 13
      '  4 ]]', // 14
      't = { p = { q = 1 } }', // 15
      '[[arr]]', // 16
      '"quoted key" = "v\\"]"', // 17
      '[arr.sub]', // 18
      'y = 2', // 19
      '',
    ].join('\n');
    parseToml(text, 'k.toml'); // the scanner only ever sees valid TOML
    const lines = scanKeyLines(text);
    const cases: [(string | number)[], number][] = [
      [['name'], 2],
      [['s'], 3],
      [['lit'], 7],
      [['a', 'b.c', 'd'], 9],
      [['a', 'b.c', 'd', 'k'], 10],
      [['arr', 0], 11],
      [['arr', 0, 'x', 0, 1], 12],
      [['arr', 0, 'x', 1, 0], 13],
      [['arr', 0, 'x', 1, 1], 14],
      [['arr', 0, 't', 'p', 'q'], 15],
      [['arr', 1], 16],
      [['arr', 1, 'quoted key'], 17],
      [['arr', 1, 'sub'], 18],
      [['arr', 1, 'sub', 'y'], 19],
      // Missing keys fall back to their table; a missing top-level key to line 1.
      [['arr', 1, 'sub', 'missing'], 18],
      [['nothing'], 1],
    ];
    for (const [path, line] of cases) assert.equal(lines.lineOf(path), line, JSON.stringify(path));
    assert.equal(lines.exact(['fake']), undefined);
    assert.equal(lines.exact(['key']), undefined);
  });
});
