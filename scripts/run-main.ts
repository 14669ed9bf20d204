// The entry point of the project's scripts (demo, fixtures, benches): run `main`, take its exit
// code, and turn an error into one line — plus its hint — under the script's name, with the exit
// code a bramble error carries (1 otherwise), never a stack trace.
export function runMain(name: string, main: () => Promise<number>): void {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      const err = e as { message?: string; hint?: string; exitCode?: number };
      process.stderr.write(`${name}: ${err.message ?? String(e)}\n${err.hint ? `hint: ${err.hint}\n` : ''}`);
      process.exitCode = typeof err.exitCode === 'number' ? err.exitCode : 1;
    },
  );
}
