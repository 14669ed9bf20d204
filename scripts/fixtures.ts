// `npm run fixtures -- build`            build the fixture upstream (cached; prints where it is)
// `npm run fixtures -- serve [--port N]` build what is missing, print the [sources] block, serve on
//                                        127.0.0.1 until interrupted
import { ensureFixture } from './fixtures/build.ts';
import { startFixtureServer } from './fixtures/server.ts';
import { runMain } from './run-main.ts';

const usage = 'usage: npm run fixtures -- build | serve [--port N]';

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const controller = new AbortController();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  if (command === 'build') {
    const onSignal = () => controller.abort();
    process.once('SIGINT', onSignal);
    const t = Date.now();
    const f = await ensureFixture({ signal: controller.signal, log });
    log(`fixture ready in ${((Date.now() - t) / 1000).toFixed(1)} s (first build took ${f.buildSeconds} s)`);
    process.stdout.write(`${f.root}\n`);
    return 0;
  }
  if (command === 'serve') {
    let port = 0;
    for (let i = 0; i < rest.length; i++) {
      if (rest[i] === '--port') port = Number(rest[++i]);
      else if (rest[i].startsWith('--port=')) port = Number(rest[i].slice('--port='.length));
      else {
        log(usage);
        return 2;
      }
    }
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      log(`--port must be a port number (0-65535)\n${usage}`);
      return 2;
    }
    const f = await ensureFixture({ signal: controller.signal, log });
    const server = await startFixtureServer({ root: f.root, port });
    log(`serving ${f.root} at ${server.url} (Ctrl-C to stop)`);
    process.stdout.write(server.sourcesToml);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await server.close();
    return 0;
  }
  log(usage);
  return 2;
}

runMain('fixtures', () => main(process.argv.slice(2)));
