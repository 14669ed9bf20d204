// The `bramble publish`, `bramble verify` and `bramble pull` verbs: arguments in, one summary out.
// The work is in publish.ts, verify-release.ts and pull-release.ts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Compression } from '../images/compress.ts';
import type { Command, CommandContext } from './commands.ts';
import { UsageError } from './errors.ts';
import type { BrambleEvent } from './events.ts';
import { describeDestination, parseDestination, publishRelease } from './publish.ts';
import { DEFAULT_GITHUB_API } from './publish-github.ts';
import { loadSigningKey, SIGNING_KEY_ENV } from './publish-sign.ts';
import { pullRelease } from './pull-release.ts';
import { verifyDirectory, type VerifyReport } from './verify-release.ts';

const compressions = ['zstd', 'xz'] as const;

/** out/<cluster>/ to publish: the positional OUTDIR, else `--out` (default out/) joined with the config's cluster name. */
async function clusterDirOf(ctx: CommandContext): Promise<string> {
  if (ctx.positionals.length > 1) throw new UsageError('bramble publish takes at most one OUTDIR', { hint: 'bramble publish [OUTDIR | -c cluster.toml] --to DEST' });
  if (ctx.positionals[0]) return resolve(ctx.positionals[0]);
  // Imported here: commands.ts imports this module to register the verbs.
  const { resolveSpec } = await import('./commands.ts');
  const spec = await resolveSpec(ctx.values);
  return join(resolve(ctx.values.out ?? 'out'), spec.name);
}

const publish: Command = async (ctx) => {
  const v = ctx.values;
  if (!v.to) throw new UsageError('bramble publish needs --to', { hint: 'use --to dir://PATH, oci://HOST/REPO:TAG or github://OWNER/REPO@TAG' });
  const destination = parseDestination(v.to);
  if (v.private && v['public-only']) throw new UsageError('--private and --public-only contradict each other', { hint: 'choose one' });
  const compression = (v.compress ?? 'zstd') as Compression;
  if (!compressions.includes(compression)) throw new UsageError(`--compress ${v.compress}: unknown`, { hint: `use one of: ${compressions.join(', ')}` });
  const signingKey = await loadSigningKey(v['sign-key']);
  if (signingKey && v.unsigned) throw new UsageError('--unsigned given together with a signing key', { hint: `drop --unsigned, or unset $${SIGNING_KEY_ENV} and --sign-key` });
  if (!signingKey && !v.unsigned) {
    throw new UsageError('no signing key: a release is signed unless you say otherwise', {
      hint: `pass --sign-key FILE or set $${SIGNING_KEY_ENV} (an armored OpenPGP private key), or --unsigned to publish without a signature`,
    });
  }
  const clusterDir = await clusterDirOf(ctx);
  const where = describeDestination(destination);
  const started = performance.now();
  ctx.events({ kind: 'stage-started', stage: 'publish', title: `Publish ${clusterDir} to ${where}` });
  const r = await publishRelease({
    clusterDir,
    destination,
    private: !!v.private,
    publicOnly: !!v['public-only'],
    compression,
    signingKey,
    githubApi: v['github-api'] ?? process.env.BRAMBLE_GITHUB_API ?? DEFAULT_GITHUB_API,
    githubToken: process.env.GITHUB_TOKEN,
    signal: ctx.signal,
    events: ctx.events,
  });
  ctx.events({ kind: 'stage-finished', stage: 'publish', title: `Publish ${clusterDir} to ${where}`, ms: Math.round(performance.now() - started) });
  if (v.json) {
    const e: BrambleEvent & Record<string, unknown> = { kind: 'info', message: `published to ${r.location}`, location: r.location, uploaded: r.uploaded, skipped: r.skipped };
    ctx.events(e);
  } else {
    const signed = r.manifest.signer ? `signed by ${r.manifest.signer}` : 'UNSIGNED';
    ctx.stdout(
      `published ${r.manifest.files.length} files of cluster ${r.manifest.cluster} to ${r.location} (${signed})\n` +
        `  sent ${r.uploaded.length}, already there ${r.skipped.length}\n`,
    );
  }
  return 0;
};

function summary(r: VerifyReport, what: string): string {
  const signature = r.signer
    ? `signature by ${r.signer}${r.keySource === 'release' ? " (key taken from the release's signing-key.asc: this proves the files are intact, not who made them; pin the key with --key)" : ''}`
    : r.kind === 'release'
      ? 'unsigned (--allow-unsigned)'
      : 'build output (not signed)';
  return `✓ ${what}: ${r.files} files of cluster ${r.cluster} match SHA256SUMS and manifest.json, nothing missing or extra; ${signature}`;
}

/**
 * The verify/pull outcome: a plain line on stdout, or with --json one info event carrying the report
 * as fields (`contents` is the report's kind, which would clash with the event's).
 */
function reportVerified(ctx: CommandContext, r: VerifyReport & { digest?: string }, target: string, what: string, out?: string): void {
  const message = summary(r, what);
  if (!ctx.values.json) {
    ctx.stdout(`${message}\n`);
    return;
  }
  const { kind: contents, ...fields } = r;
  const e: BrambleEvent & Record<string, unknown> = { kind: 'info', message, target, contents, ...fields, ...(out ? { out } : {}) };
  ctx.events(e);
}

const verify: Command = async (ctx) => {
  if (ctx.positionals.length !== 1) throw new UsageError('bramble verify takes one OUTDIR or oci://HOST/REPO:TAG', { hint: 'e.g. bramble verify ./release --key release-key.asc' });
  const target = ctx.positionals[0]!;
  const opts = { keyFile: ctx.values.key && resolve(ctx.values.key), allowUnsigned: !!ctx.values['allow-unsigned'], signal: ctx.signal, events: ctx.events };
  if (target.startsWith('oci://')) {
    const dir = await mkdtemp(join(tmpdir(), 'bramble-verify-'));
    try {
      const r = await pullRelease(target, { ...opts, outDir: join(dir, 'release') });
      reportVerified(ctx, r, target, `${target} (${r.digest})`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return 0;
  }
  reportVerified(ctx, await verifyDirectory(resolve(target), opts), target, target);
  return 0;
};

const pull: Command = async (ctx) => {
  if (ctx.positionals.length !== 1 || !ctx.values.out) throw new UsageError('bramble pull takes one oci://HOST/REPO:TAG and --out DIR', { hint: 'e.g. bramble pull oci://127.0.0.1:5000/clusters/demo:v1 --out ./release' });
  const target = ctx.positionals[0]!;
  const r = await pullRelease(target, {
    outDir: resolve(ctx.values.out),
    keyFile: ctx.values.key && resolve(ctx.values.key),
    allowUnsigned: !!ctx.values['allow-unsigned'],
    signal: ctx.signal,
    events: ctx.events,
  });
  const outDir = resolve(ctx.values.out);
  reportVerified(ctx, r, target, `${target} (${r.digest}) → ${outDir}`, outDir);
  return 0;
};

export const publishCommands: Record<string, Command> = { publish, verify, pull };
