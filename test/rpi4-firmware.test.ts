// Lifting the Raspberry Pi 4 UEFI firmware's 3 GB RAM limit: the RamLimitTo3GB variable edited inside
// RPI_EFI.fd's EDK2 variable store, checked by parsing, in a built rpi4 image, and by real EDK2
// firmware (OVMF) reading the edited store and Linux seeing the value.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import { liftRamLimit, RAM_LIMIT_VARIABLE } from '../builders/rpi4-firmware.ts';
import { readFatFile } from '../images/fat.ts';
import { findPartition, partitionBytes, PartitionType, readGpt } from '../images/gpt.ts';
import { EFI_VARIABLE_NV_BS_RT, findVariableStore, readVariable, setVariable } from '../images/efivars.ts';
import { getFixture, flatcarRelease, type Fixture } from './helpers/fixture.ts';
import { BOOT_TIMEOUT_MS, bootTest, explainBoot } from './helpers/boot.ts';
import { bootAndCapture } from './helpers/qemu.ts';
import { explainCli, runBramble, warmBuildCache } from './helpers/build.ts';

const { name, guid } = RAM_LIMIT_VARIABLE;
let f: Fixture;
let tmp: string;
let firmware: Buffer;

before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-rpi4-fw-'));
  await run('unzip', ['-q', f.firmware.rpi4.zip, 'RPI_EFI.fd', '-d', tmp]);
  firmware = await readFile(join(tmp, 'RPI_EFI.fd'));
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('liftRamLimit sets RamLimitTo3GB from 1 to 0 in place, changing only its 4 data bytes', () => {
  assert.deepEqual(readVariable(firmware, name, guid), Buffer.from('01000000', 'hex'));
  const lifted = liftRamLimit(firmware, 'test');
  assert.deepEqual(readVariable(lifted, name, guid), Buffer.alloc(4));
  const changed = [...lifted.keys()].filter((i) => lifted[i] !== firmware[i]);
  assert.equal(changed.length, 1, 'one byte: 01 → 00');
  assert.deepEqual(readVariable(firmware, name, guid), Buffer.from('01000000', 'hex'), 'the input is not modified');
});

test('setVariable with another size retires the old record and appends a new one; a missing variable is appended', () => {
  const fd = Buffer.from(firmware);
  setVariable(fd, { name, guid, attributes: EFI_VARIABLE_NV_BS_RT, data: Buffer.from('0000000000000000', 'hex') });
  assert.deepEqual(readVariable(fd, name, guid), Buffer.alloc(8));
  setVariable(fd, { name: 'BrambleTest', guid, attributes: EFI_VARIABLE_NV_BS_RT, data: Buffer.from('hi') });
  assert.deepEqual(readVariable(fd, 'BrambleTest', guid), Buffer.from('hi'));
  assert.deepEqual(readVariable(fd, name, guid), Buffer.alloc(8));
  assert.equal(readVariable(fd, 'Missing', guid), undefined);
});

test('a firmware file without a variable store is refused with exit 3 and a hint', () => {
  assert.throws(() => liftRamLimit(Buffer.alloc(1 << 16, 0xff), 'http://x/RPi4_UEFI_Firmware_v1.50.zip'), (e: { exitCode?: number; hint?: string }) => {
    assert.equal(e.exitCode, 3);
    assert.match(e.hint ?? '', /ram_limit_3gb = true/);
    return true;
  });
});

/** Build one rpi4 node and return its RPI_EFI.fd as written to the image's ESP. */
async function builtFirmware(dir: string, keepLimit: boolean | undefined): Promise<Buffer> {
  await writeFile(join(dir, 'sources.toml'), f.sourcesToml);
  const node = ['[[nodes]]', 'name = "pi-1"', 'role = "control-plane"', 'hardware = "rpi4"', ...(keepLimit === undefined ? [] : [`ram_limit_3gb = ${keepLimit}`])];
  await writeFile(join(dir, 'cluster.toml'), ['name = "fw"', '', ...node, ''].join('\n'));
  const r = await runBramble(
    ['build', '-c', join(dir, 'cluster.toml'), '--sources', join(dir, 'sources.toml'), '--cache', warmBuildCache(), '--out', join(dir, 'out'), '--lock', join(dir, 'bramble.lock')],
    {},
  );
  assert.equal(r.code, 0, explainCli(r));
  const image = join(dir, 'out/fw/images/pi-1.img');
  const gpt = await readGpt(image);
  const esp = partitionBytes(gpt, findPartition(gpt, { label: 'EFI-SYSTEM', typeGuid: PartitionType.efiSystem }));
  return readFatFile(image, esp.offset, '/RPI_EFI.fd');
}

let lifted: Buffer;
test('an rpi4 image carries RPI_EFI.fd with the limit lifted by default, and kept with ram_limit_3gb = true', { timeout: 15 * 60_000 }, async () => {
  lifted = await builtFirmware(await mkdtemp(join(tmp, 'default-')), undefined);
  assert.deepEqual(readVariable(lifted, name, guid), Buffer.alloc(4));
  const kept = await builtFirmware(await mkdtemp(join(tmp, 'kept-')), true);
  assert.deepEqual(kept, firmware);
});

bootTest('boot: real EDK2 firmware (OVMF) reads the edited store and Linux sees RamLimitTo3GB = 0', async () => {
  assert.ok(lifted, 'the build test ran first');
  const loc = findVariableStore(lifted);
  const vars = join(tmp, 'vars.fd');
  await writeFile(vars, lifted.subarray(loc.fvOffset, loc.fvOffset + loc.fvLength));
  const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', firmwareVars: vars, disk: flatcarRelease(f, 'stable', 'amd64-usr').rawImage, timeoutMs: BOOT_TIMEOUT_MS });
  assert.ok(r.markers.done, explainBoot(r));
  assert.deepEqual(r.markers.efiVars, { [`${name}-${guid}`]: { attributes: 7, data: '00000000' } });
});
