// `--sources FILE` for commands that run without -c: merge a [sources] file over a spec in memory.
export { applySourcesFile as mergeSources } from './load.ts';
