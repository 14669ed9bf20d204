// GPT read/write against sgdisk: tables sgdisk writes for both Flatcar layouts are read back field by
// field, rewritten byte-identically, grown, and corrupted.
import { strict as assert } from 'node:assert';
import { mkdtemp, open, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { findPartition, growImage, partitionBytes, PartitionType, readGpt, writeGpt, type Gpt } from '../images/gpt.ts';
import { guidFromBytes, guidToBytes } from '../images/guid.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

// Flatcar's `base` layout (disk_layout.json; base-images.md §2.1-2.2): sectors per partition, placed in
// number order at 4096-sector alignment from sector 4096.
const FLATCAR_LAYOUTS = {
  old: { esp: 262144, usr: 2097152, oem: 262144, root: 4427776, totalSectors: 9289728 },
  current: { esp: 2097152, usr: 4194304, oem: 2097152, root: 3653632, totalSectors: 16515072 },
} as const;
const USR_A_GUID = '7130C94A-213A-4E5A-8E26-6CCE9662F132';
const USR_B_GUID = 'E03DD35C-7C2D-4A47-B3FE-27F15780A57C';
/** cgpt's gptprio attribute bits: priority 1 at bit 48, successful at bit 56. */
const USR_A_ATTRIBUTES = (1n << 48n) | (1n << 56n);

interface Expected {
  number: number;
  name: string;
  type: string;
  sectors: number;
  guid: string;
  attributes?: bigint;
}

function expectedPartitions(layout: keyof typeof FLATCAR_LAYOUTS): Array<Expected & { first: number }> {
  const s = FLATCAR_LAYOUTS[layout];
  const parts: Expected[] = [
    { number: 1, name: 'EFI-SYSTEM', type: PartitionType.efiSystem, sectors: s.esp, guid: 'A1A1A1A1-0000-4000-8000-000000000001' },
    { number: 2, name: 'BIOS-BOOT', type: PartitionType.biosBoot, sectors: 4096, guid: 'A1A1A1A1-0000-4000-8000-000000000002' },
    { number: 3, name: 'USR-A', type: PartitionType.flatcarUsr, sectors: s.usr, guid: USR_A_GUID, attributes: USR_A_ATTRIBUTES },
    { number: 4, name: 'USR-B', type: PartitionType.flatcarUsr, sectors: s.usr, guid: USR_B_GUID },
    { number: 6, name: 'OEM', type: PartitionType.linuxData, sectors: s.oem, guid: 'A1A1A1A1-0000-4000-8000-000000000006' },
    { number: 7, name: 'OEM-CONFIG', type: PartitionType.flatcarReserved, sectors: 131072, guid: 'A1A1A1A1-0000-4000-8000-000000000007' },
    { number: 9, name: 'ROOT', type: PartitionType.flatcarResize, sectors: s.root, guid: 'A1A1A1A1-0000-4000-8000-000000000009' },
  ];
  let next = 4096;
  return parts.map((p) => {
    const first = next;
    next = Math.ceil((first + p.sectors) / 4096) * 4096;
    return { ...p, first };
  });
}

async function sgdiskFlatcar(path: string, layout: keyof typeof FLATCAR_LAYOUTS): Promise<void> {
  await (await open(path, 'w')).close();
  await truncate(path, FLATCAR_LAYOUTS[layout].totalSectors * 512);
  const args = ['-o', '-U', '00000000-0000-0000-0000-000000000001'];
  for (const p of expectedPartitions(layout)) {
    args.push('-n', `${p.number}:${p.first}:${p.first + p.sectors - 1}`, '-t', `${p.number}:${p.type}`, '-c', `${p.number}:${p.name}`, '-u', `${p.number}:${p.guid}`);
    if (p.attributes) args.push('-A', `${p.number}:set:48`, '-A', `${p.number}:set:56`);
  }
  await run('sgdisk', [...args, path]);
}

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'gpt');

async function readRange(path: string, start: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, start);
    return buf;
  } finally {
    await fh.close();
  }
}

async function zeroRange(path: string, start: number, length: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(Buffer.alloc(length), 0, length, start);
  } finally {
    await fh.close();
  }
}

const sgdiskPrint = async (path: string) => (await run('sgdisk', ['-p', path])).stdout.replace(/^Disk .*?:/m, 'Disk:');
const sgdiskVerify = async (path: string) => (await run('sgdisk', ['-v', path])).stdout;

test('GUIDs use the mixed-endian EFI_GUID encoding', () => {
  const bytes = guidToBytes(PartitionType.efiSystem);
  assert.equal(bytes.toString('hex'), '28732ac11ff8d211ba4b00a0c93ec93b');
  assert.equal(guidFromBytes(bytes), PartitionType.efiSystem);
});

for (const layout of ['old', 'current'] as const) {
  test(`reads, rewrites and grows the ${layout} Flatcar layout written by sgdisk`, async (t) => {
    const dir = await tempDir(t);
    const img = join(dir, 'disk.img');
    await sgdiskFlatcar(img, layout);
    const printed = await sgdiskPrint(img);
    const totalSectors = FLATCAR_LAYOUTS[layout].totalSectors;

    const gpt = await readGpt(img);
    assert.equal(gpt.diskGuid, '00000000-0000-0000-0000-000000000001');
    assert.equal(gpt.backupHeaderLba, totalSectors - 1);
    assert.equal(gpt.firstUsableLba, 34);
    assert.equal(gpt.lastUsableLba, totalSectors - 34);
    assert.equal(gpt.entryCount, 128);
    assert.equal(gpt.entrySize, 128);
    assert.deepEqual(
      gpt.partitions.map((p) => [p.number, p.name, p.typeGuid, p.uniqueGuid, p.firstLba, p.lastLba, p.attributes]),
      expectedPartitions(layout).map((p) => [p.number, p.name, p.type, p.guid, p.first, p.first + p.sectors - 1, p.attributes ?? 0n]),
    );
    const oem = findPartition(gpt, { label: 'OEM' });
    assert.deepEqual(partitionBytes(gpt, oem), { offset: oem.firstLba * 512, size: FLATCAR_LAYOUTS[layout].oem * 512 });
    assert.equal(findPartition(gpt, { typeGuid: PartitionType.flatcarResize.toLowerCase() }).name, 'ROOT');
    assert.throws(() => findPartition(gpt, { typeGuid: PartitionType.flatcarUsr }), /2 GPT partitions have type/);
    assert.throws(() => findPartition(gpt, { label: 'NOPE' }), (e: unknown) => e instanceof InputError && /no GPT partition with name NOPE/.test(e.message));

    // Rewrite from the parsed table after wiping both tables: the bytes must equal sgdisk's.
    const head = await readRange(img, 0, 34 * 512);
    const tail = await readRange(img, (totalSectors - 33) * 512, 33 * 512);
    await zeroRange(img, 0, 34 * 512);
    await zeroRange(img, (totalSectors - 33) * 512, 33 * 512);
    await writeGpt(img, gpt);
    assert.ok((await readRange(img, 0, 34 * 512)).equals(head), 'MBR, primary header and entries equal what sgdisk wrote');
    assert.ok((await readRange(img, (totalSectors - 33) * 512, 33 * 512)).equals(tail), 'backup entries and header equal what sgdisk wrote');
    assert.match(await sgdiskVerify(img), /No problems found/);
    assert.equal(await sgdiskPrint(img), printed);

    // Grow by 1 GiB: backup table at the new end, ROOT to the new last usable sector.
    const grown = totalSectors + 2097152;
    const { gpt: after, written } = await growImage(img, grown * 512, { growPartition: 'ROOT' });
    assert.match(await sgdiskVerify(img), /No problems found/);
    const reread = await readGpt(img);
    assert.deepEqual(reread, after);
    assert.equal(reread.backupHeaderLba, grown - 1);
    assert.equal(findPartition(reread, { label: 'ROOT' }).lastLba, grown - 34);
    assert.equal(findPartition(reread, { label: 'OEM' }).lastLba, findPartition(gpt, { label: 'OEM' }).lastLba);
    assert.match(await sgdiskPrint(img), new RegExp(`last usable sector is ${grown - 34}`));
    assert.deepEqual(written[written.length - 1], [(grown - 33) * 512, grown * 512]);
    // The old backup table inside the grown ROOT is cleared.
    assert.ok((await readRange(img, (totalSectors - 33) * 512, 33 * 512)).equals(Buffer.alloc(33 * 512)));
    await assert.rejects(growImage(img, grown * 512, { growPartition: 'OEM' }), /OEM is not the last partition/);
  });
}

test('keeps MBR boot code when rewriting', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'disk.img');
  await sgdiskFlatcar(img, 'old');
  const bootCode = Buffer.alloc(440, 0x90);
  const fh = await open(img, 'r+');
  await fh.write(bootCode, 0, 440, 0);
  await fh.close();
  const gpt = await readGpt(img);
  await growImage(img, (FLATCAR_LAYOUTS.old.totalSectors + 4096) * 512, { growPartition: 'ROOT' });
  assert.ok((await readRange(img, 0, 440)).equals(bootCode));
  assert.match(await sgdiskVerify(img), /No problems found/);
  assert.equal(gpt.partitions.length, 7);
});

test('a corrupt table is a clear InputError', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'disk.img');
  await sgdiskFlatcar(img, 'old');
  const total = FLATCAR_LAYOUTS.old.totalSectors;
  const cases: Array<{ what: string; at: number; message: RegExp }> = [
    { what: 'primary header byte', at: 512 + 40, message: /primary GPT header at LBA 1: header CRC32 mismatch/ },
    { what: 'signature', at: 512, message: /primary GPT header at LBA 1: no "EFI PART" signature/ },
    { what: 'primary entry', at: 1024 + 60, message: /primary GPT entry array CRC32 mismatch/ },
    { what: 'backup header', at: (total - 1) * 512 + 40, message: /backup GPT header at LBA \d+: header CRC32 mismatch/ },
    { what: 'backup entry', at: (total - 33) * 512 + 60, message: /backup GPT entry array CRC32 mismatch/ },
  ];
  for (const c of cases) {
    const original = await readRange(img, c.at, 1);
    const fh = await open(img, 'r+');
    await fh.write(Buffer.from([original[0]! ^ 0x5a]), 0, 1, c.at);
    await fh.close();
    await assert.rejects(readGpt(img), (e: unknown) => e instanceof InputError && c.message.test(e.message) && !!e.hint, c.what);
    const fix = await open(img, 'r+');
    await fix.write(original, 0, 1, c.at);
    await fix.close();
  }
  await readGpt(img);
  await truncate(img, (total - 100) * 512);
  await assert.rejects(readGpt(img), /beyond the end of the file/);
});

test('writeGpt refuses overlapping partitions', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'disk.img');
  await sgdiskFlatcar(img, 'old');
  const gpt: Gpt = await readGpt(img);
  const bad = { ...gpt, partitions: gpt.partitions.map((p) => (p.number === 1 ? { ...p, lastLba: p.lastLba + 8192 } : p)) };
  await assert.rejects(writeGpt(img, bad), /overlaps partition 2/);
});
