#!/usr/bin/env node
// The package bin: registers tsx so the TypeScript sources run as they are, then hands over to the CLI.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../builders/cli.ts');
await main(process.argv.slice(2));
