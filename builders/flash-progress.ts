// Progress of a flash as typed values handed to a callback (the library never draws anything):
// the phase, bytes done of how many, speed over the last seconds and the time left.

export type FlashPhase = 'mapping' | 'flashing' | 'syncing' | 'verifying';

export interface FlashProgress {
  phase: FlashPhase;
  /** Bytes done in this phase (verifying: summed over the targets). */
  bytes: number;
  /** Bytes this phase will do, when known (a stream without a bmap has no total). */
  total?: number;
  /** Bytes per second over the last SPEED_WINDOW_MS. */
  speed: number;
  /** Seconds left, when the total is known and something moved. */
  eta?: number;
  /** Targets still being written, and targets that failed. */
  active: number;
  failed: number;
}

/** Reports at most this often (etcher-sdk's rate: flashing-and-publishing.md §3.1). */
const PROGRESS_INTERVAL_MS = 250;
/** Speed is measured over this window, so it follows the drive without jumping. */
const SPEED_WINDOW_MS = 2000;

export class ProgressMeter {
  private phase: FlashPhase = 'mapping';
  private bytes = 0;
  private total?: number;
  private samples: Array<[ms: number, bytes: number]> = [];
  private last = 0;

  constructor(
    private readonly emit: ((p: FlashProgress) => void) | undefined,
    private readonly counts: () => { active: number; failed: number },
  ) {}

  start(phase: FlashPhase, total?: number): void {
    this.phase = phase;
    this.bytes = 0;
    this.total = total;
    this.samples = [[performance.now(), 0]];
    this.report(true);
  }

  add(n: number): void {
    this.bytes += n;
    this.report(false);
  }

  finish(): void {
    this.report(true);
  }

  private report(force: boolean): void {
    if (!this.emit) return;
    const now = performance.now();
    if (!force && now - this.last < PROGRESS_INTERVAL_MS) return;
    this.last = now;
    this.samples.push([now, this.bytes]);
    while (this.samples.length > 2 && now - this.samples[1]![0] > SPEED_WINDOW_MS) this.samples.shift();
    const [t0, b0] = this.samples[0]!;
    const speed = now > t0 ? ((this.bytes - b0) * 1000) / (now - t0) : 0;
    const eta = this.total !== undefined && speed > 0 ? Math.max(0, (this.total - this.bytes) / speed) : undefined;
    this.emit({ phase: this.phase, bytes: this.bytes, total: this.total, speed, eta, ...this.counts() });
  }
}

const mib = (n: number) => (n / 2 ** 20).toFixed(1);

/** One line for a terminal: "flashing  123.4 / 250.0 MiB  45.2 MiB/s  eta 0:03". */
export function formatProgress(p: FlashProgress): string {
  const amount = p.total !== undefined ? `${mib(p.bytes)} / ${mib(p.total)} MiB` : `${mib(p.bytes)} MiB`;
  const pct = p.total ? ` ${Math.min(100, Math.floor((100 * p.bytes) / p.total))}%` : '';
  const left = p.eta !== undefined ? Math.round(p.eta) : undefined;
  const eta = left !== undefined ? `  eta ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}` : '';
  const failed = p.failed ? `  (${p.failed} failed)` : '';
  return `${p.phase.padEnd(9)} ${amount}${pct}  ${mib(p.speed)} MiB/s${eta}${failed}`;
}
