// The `bramble` command line. The only module that prints, reads process.argv and sets process.exitCode.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BrambleError, ExitCode, InterruptedError, UsageError } from './errors.ts';
import type { EventSink } from './events.ts';
import { jsonSink, plainSink } from './report.ts';
import { commands, type CommandContext } from './commands.ts';

const usage = `bramble — build everything a bare-metal Kubernetes cluster needs to boot offline

Usage:
  bramble plan    [-c cluster.toml] [--sources FILE] [--target T]... [--node NAME]... [--cache DIR] [--json]
  bramble fetch   [-c cluster.toml] [--sources FILE] [--cache DIR] [--offline] [--json]
  bramble build   [-c cluster.toml] [--sources FILE] [--target T]... [--node NAME]... [--out DIR]
                  [--cache DIR] [--offline] [--json]
  bramble inspect PATH             an image file or an out/<cluster> directory
  bramble flash   IMAGE DEVICE...  [--bmap FILE] [--no-verify] [--yes] [--force-non-removable] [--json]
                  IMAGE: .img, .img.zst, .img.xz, .img.bz2 or an http(s) URL; DEVICE: drives or files
  bramble publish [OUTDIR | -c cluster.toml [--out DIR]] --to DEST [--private | --public-only]
                  [--sign-key FILE | --unsigned] [--compress zstd|xz] [--github-api URL] [--json]
                  DEST: dir://PATH, oci://HOST/REPO:TAG or github://OWNER/REPO@TAG
  bramble verify  OUTDIR | oci://HOST/REPO:TAG  [--key FILE] [--allow-unsigned] [--json]
  bramble pull    oci://HOST/REPO:TAG --out DIR [--key FILE] [--allow-unsigned] [--json]

Targets: rpi4 rpi3 pc arm64-uefi pxe. Without -c a built-in default cluster is used: one
control-plane node of the requested target (default pc) on DHCP.

Common options:
  -c, --config FILE   cluster description (TOML)
  --sources FILE      a file with a [sources] table merged over the config's (mirrors, fixtures)
  --lock FILE         lock file (default: bramble.lock beside the config, or ./bramble.lock)
  --cache DIR         download cache (default: $XDG_CACHE_HOME/bramble or ~/.cache/bramble)
  --offline           make no network request; everything must be in the cache
  --json              print one JSON event per line on stdout
  --debug             show stack traces
  -h, --help          this text

Flash options:
  --bmap FILE              the image's block map (default: IMAGE.bmap or beside it without suffixes)
  --no-verify              do not read the drives back after writing
  -y, --yes                do not ask before overwriting drives (needed without a terminal)
  --force-non-removable    allow drives that are not removable (internal disks, loop devices)

Publish, verify and pull options:
  --to DEST                where to publish (see above); OUTDIR defaults to --out/<cluster name>
  --private                the destination is private: secret artefacts (keys, tokens) may go there
  --public-only            publish only the artefacts not marked secret
  --sign-key FILE          armored OpenPGP private key signing SHA256SUMS (or $BRAMBLE_SIGNING_KEY;
                           passphrase in $BRAMBLE_SIGNING_KEY_PASSPHRASE)
  --unsigned               publish without a signature
  --compress FORMAT        disk images as zstd (default) or xz
  --github-api URL         GitHub API base (default $BRAMBLE_GITHUB_API or https://api.github.com);
                           the token comes from $GITHUB_TOKEN
  --key FILE               the armored public key a release must be signed with (default: the
                           release's own signing-key.asc, which proves integrity, not origin)
  --allow-unsigned         accept a release without SHA256SUMS.asc

Exit codes: 0 ok, 1 internal error, 2 bad input, 3 verification failed, 4 host environment, 130 interrupted.
`;

const options = {
  config: { type: 'string', short: 'c' },
  sources: { type: 'string' },
  lock: { type: 'string' },
  target: { type: 'string', multiple: true },
  node: { type: 'string', multiple: true },
  out: { type: 'string' },
  cache: { type: 'string' },
  offline: { type: 'boolean' },
  json: { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  bmap: { type: 'string' },
  'no-verify': { type: 'boolean' },
  yes: { type: 'boolean', short: 'y' },
  'force-non-removable': { type: 'boolean' },
  to: { type: 'string' },
  private: { type: 'boolean' },
  'public-only': { type: 'boolean' },
  'sign-key': { type: 'string' },
  unsigned: { type: 'boolean' },
  compress: { type: 'string' },
  'github-api': { type: 'string' },
  key: { type: 'string' },
  'allow-unsigned': { type: 'boolean' },
} satisfies ParseArgsConfig['options'];

export type CliValues = {
  config?: string;
  sources?: string;
  lock?: string;
  target?: string[];
  node?: string[];
  out?: string;
  cache?: string;
  offline?: boolean;
  json?: boolean;
  debug?: boolean;
  help?: boolean;
  bmap?: string;
  'no-verify'?: boolean;
  yes?: boolean;
  'force-non-removable'?: boolean;
  to?: string;
  private?: boolean;
  'public-only'?: boolean;
  'sign-key'?: string;
  unsigned?: boolean;
  compress?: string;
  'github-api'?: string;
  key?: string;
  'allow-unsigned'?: boolean;
};

export async function main(argv: string[]): Promise<void> {
  const out = (s: string) => process.stdout.write(s);
  const err = (s: string) => process.stderr.write(s);
  let debug = argv.includes('--debug');
  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    if (interrupts === 1) {
      err('\ninterrupted: stopping cleanly (press Ctrl-C again to quit at once)\n');
      controller.abort(new InterruptedError());
    } else {
      process.exit(ExitCode.interrupted);
    }
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
    } catch (e) {
      throw new UsageError((e as Error).message, { hint: 'run `bramble --help` for usage' });
    }
    const values = parsed.values as CliValues;
    debug = !!values.debug;
    const [name, ...positionals] = parsed.positionals;
    if (values.help || !name || name === 'help') {
      out(usage);
      process.exitCode = name || values.help ? 0 : ExitCode.badInput;
      return;
    }
    const command = commands[name];
    if (!command) {
      throw new UsageError(`unknown command "${name}"`, {
        hint: `commands: ${Object.keys(commands).join(', ')}; run \`bramble --help\``,
      });
    }
    const events: EventSink = values.json
      ? jsonSink(out)
      : plainSink(err, process.env.CI ? 10_000 : 3_000);
    const ctx: CommandContext = {
      values,
      positionals,
      signal: controller.signal,
      events,
      interactive: !values.json && !!process.stderr.isTTY && !process.env.CI,
      stdout: out,
      stderr: err,
    };
    process.exitCode = await command(ctx);
  } catch (e) {
    process.exitCode = report(e, debug, err);
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

/** Turn any failure into one clear message and an exit code. */
export function report(e: unknown, debug: boolean, err: (s: string) => void): number {
  if (e instanceof BrambleError) {
    err(`error: ${e.message}\n`);
    if (e.hint) err(`hint: ${e.hint}\n`);
    if (e.cause instanceof Error && !(e.cause instanceof BrambleError) && e.cause.message) {
      err(`cause: ${e.cause.message}\n`);
    }
    if (debug) err(`${e.stack}\n`);
    return e.exitCode;
  }
  const msg = e instanceof Error ? e.message : String(e);
  err(`internal error: ${msg}\n`);
  err(e instanceof Error && e.stack ? `${e.stack}\n` : '');
  err('This is a bug in bramble. Please report it with the command you ran, this output and `bramble --version`.\n');
  return ExitCode.internal;
}
