// [provision] and the per-node kernel_args / snippets keys: extra kernel arguments and Butane-style
// YAML snippets merged into first-boot configs. Snippet files are read and parsed here, at load time,
// so a malformed snippet is reported with the other config problems, naming its own file and line.
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { parseSnippet } from '../../ignition/snippets.ts';
import { ConfigError, ConfigErrors } from '../errors.ts';
import type { SnippetSource } from '../spec.ts';
import type { KeyPath } from './positions.ts';
import type { Problems } from './problems.ts';

/** Characters a kernel argument cannot carry through grub.cfg quoting or an iPXE kernel line. */
const BAD_KERNEL_ARG = /[\s"'$\\`#;]/;

export function readKernelArgs(list: unknown, at: KeyPath, p: Problems): string[] {
  const out: string[] = [];
  ((list as string[] | undefined) ?? []).forEach((arg, i) => {
    if (!arg || BAD_KERNEL_ARG.test(arg) || arg === '||' || arg === '&&') {
      p.add([...at, i], `${JSON.stringify(arg)} is not a kernel argument bramble can pass`, 'write one argument per string, without spaces, quotes, $, ;, # or backslashes');
    } else {
      out.push(arg);
    }
  });
  return out;
}

/** Read and check each snippet file; problems inside a snippet are appended to `foreign`. */
export function readSnippets(list: unknown, at: KeyPath, p: Problems, baseDir: string, foreign: ConfigError[]): SnippetSource[] {
  const out: SnippetSource[] = [];
  ((list as string[] | undefined) ?? []).forEach((file, i) => {
    const full = isAbsolute(file) ? file : resolve(baseDir, file);
    let text: string;
    try {
      text = readFileSync(full, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      p.add([...at, i], `cannot read snippet file ${full}${code ? ` (${code})` : ''}`, 'give the path of a Butane-style YAML file, relative to this file');
      return;
    }
    try {
      parseSnippet(text, full);
    } catch (e) {
      if (e instanceof ConfigErrors) foreign.push(...e.errors);
      else if (e instanceof ConfigError) foreign.push(e);
      else throw e;
      return;
    }
    out.push({ file: full, text });
  });
  return out;
}
