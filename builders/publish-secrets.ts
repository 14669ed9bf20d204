// The second guard against publishing secrets: every byte of a file about to go to a destination not
// declared private is scanned for private-key PEM blocks (as text, percent-encoded the way Ignition
// data URLs carry them, and base64-encoded at any alignment) and for kubeadm bootstrap tokens. The
// first guard is the manifest's `secret` flag; this one catches a file that holds a secret without
// being marked. Compressed containers (.gz, squashfs) are scanned as the bytes they are, not opened.
//
// Bootstrap tokens (`[a-z0-9]{6}.[a-z0-9]{16}`) look like many dotted names, so a match must stand
// alone (no letter, digit, `.`, `-` or `_` on either side). In binary files (a NUL in the first
// 8 KiB), where Go binaries keep strings back to back, the 16-character secret must also hold a
// digit: "comapi.iotdeviceadvisor" sits in the docker-registry binary. A random kubeadm token has no
// digit in its secret with probability (26/36)^16 ≈ 0.6 %, which this guard then misses in binaries.

export interface SecretFinding {
  /** What was found, for the message: never the secret itself. */
  what: 'private key (PEM)' | 'private key (PEM, percent-encoded)' | 'private key (PEM, base64)' | 'bootstrap token';
  /** Byte offset in the scanned stream. */
  offset: number;
}

/** Bytes kept from the end of one chunk so a match spanning two chunks is still seen. */
const OVERLAP = 256;
/** The first bytes decide whether a file is text or binary. */
const TEXT_PROBE = 8192;

const PEM = /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/;
const PEM_PERCENT = /-----BEGIN(?:%20[A-Z0-9]+)*%20PRIVATE%20KEY-----/;
const TOKEN_TEXT = /(?<![A-Za-z0-9._-])[a-z0-9]{6}\.[a-z0-9]{16}(?![A-Za-z0-9._-])/;
const TOKEN_BINARY = /(?<![A-Za-z0-9._-])[a-z0-9]{6}\.(?=[a-z]*[0-9])[a-z0-9]{16}(?![A-Za-z0-9._-])/;

/**
 * "PRIVATE KEY-----" base64-encoded at each of the three alignments, less the characters that
 * depend on the neighbouring bytes: any of these in a file means an encoded PEM private key.
 */
const PEM_BASE64 = [0, 1, 2].map((pad) => {
  const marker = Buffer.from('PRIVATE KEY-----');
  const enc = Buffer.concat([Buffer.alloc(pad), marker]).toString('base64');
  // Skip the characters covering the padding (and the one it shares), and the last partial group.
  const start = Math.ceil(((pad + 1) * 8) / 6);
  const end = Math.floor(((pad + marker.length) * 8) / 6);
  return enc.slice(start, end);
});

const ZERO = Buffer.alloc(4 * 1024 * 1024);

export class SecretScanner {
  private tail = '';
  private offset = 0;
  private binary: boolean | undefined;
  readonly findings: SecretFinding[] = [];

  /** Feed the stream in order. The first chunk decides text or binary (readers' chunks are ≥ 8 KiB or the whole file). */
  feed(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.binary ??= chunk.subarray(0, TEXT_PROBE).includes(0);
    const start = this.offset;
    this.offset += chunk.length;
    // Holes and zero runs hold nothing: one comparison clears a whole chunk.
    if (chunk.length <= ZERO.length && ZERO.compare(chunk, 0, chunk.length, 0, chunk.length) === 0) {
      this.tail = '';
      return;
    }
    const text = this.tail + chunk.toString('latin1');
    this.search(text, start - this.tail.length);
    this.tail = text.slice(-OVERLAP);
  }

  private search(text: string, base: number) {
    const add = (what: SecretFinding['what'], index: number) => {
      const offset = base + index;
      if (!this.findings.some((f) => f.what === what && f.offset === offset)) this.findings.push({ what, offset });
    };
    for (const [re, what] of [
      [PEM, 'private key (PEM)'],
      [PEM_PERCENT, 'private key (PEM, percent-encoded)'],
      [this.binary ? TOKEN_BINARY : TOKEN_TEXT, 'bootstrap token'],
    ] as const) {
      const m = re.exec(text);
      if (m) add(what, m.index);
    }
    for (const needle of PEM_BASE64) {
      const i = text.indexOf(needle);
      if (i >= 0) add('private key (PEM, base64)', i);
    }
  }
}
