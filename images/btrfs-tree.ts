// B-trees of btrfs built in one pass from sorted items: leaves packed greedily, then node levels
// above them until one root remains. The block count depends only on the items' sizes, so space can
// be planned before addresses are known.
import {
  compareKeys, HEADER_SIZE, ITEM_DATA_OFFSET, ITEM_DATA_SIZE, ITEM_HEADER_SIZE, KEY_PTR_BLOCKPTR, KEY_PTR_GENERATION, KEY_PTR_SIZE, LEAF_DATA_SIZE,
  NODE_MAX_PTRS, NODESIZE, sealTreeBlock, writeDiskKey, type HeaderFields, type Item, type Key,
} from './btrfs-format.ts';

export interface TreeBlock {
  bytenr: number;
  level: number;
  data: Buffer;
}

export interface BuiltTree {
  root: { bytenr: number; level: number };
  blocks: TreeBlock[];
}

/** Item indexes per leaf: as many items as fit, in key order. An empty tree is one empty leaf. */
function packLeaves(items: readonly Item[]): Item[][] {
  const leaves: Item[][] = [[]];
  let used = 0;
  for (const item of items) {
    const need = ITEM_HEADER_SIZE + item.data.length;
    if (need > LEAF_DATA_SIZE) throw new Error(`btrfs item of ${item.data.length} bytes does not fit a ${NODESIZE}-byte leaf`);
    if (used + need > LEAF_DATA_SIZE) {
      leaves.push([]);
      used = 0;
    }
    leaves[leaves.length - 1]!.push(item);
    used += need;
  }
  return leaves;
}

/** Blocks per level, leaves first. */
function levelSizes(leafCount: number): number[] {
  const sizes = [leafCount];
  while (sizes[sizes.length - 1]! > 1) sizes.push(Math.ceil(sizes[sizes.length - 1]! / NODE_MAX_PTRS));
  return sizes;
}

export function sortItems(items: Item[]): Item[] {
  items.sort((a, b) => compareKeys(a.key, b.key));
  for (let i = 1; i < items.length; i++) {
    if (compareKeys(items[i - 1]!.key, items[i]!.key) === 0) throw new Error('duplicate btrfs key');
  }
  return items;
}

/** How many tree blocks these (sorted) items need on each level, leaves first. */
export function treeShape(items: readonly Item[]): number[] {
  return levelSizes(packLeaves(items).length);
}

/** Lay out a tree at the given block addresses (leaves first, then each node level). */
export function buildTree(items: readonly Item[], addresses: readonly number[], header: HeaderFields): BuiltTree {
  const leaves = packLeaves(items);
  const sizes = levelSizes(leaves.length);
  if (addresses.length !== sizes.reduce((a, b) => a + b, 0)) throw new Error('btrfs tree: address count does not match the plan');
  const blocks: TreeBlock[] = [];
  let next = 0;
  // Each level hands its blocks' first keys and addresses to the level above.
  let children: Array<{ key: Key; bytenr: number }> = [];
  for (const leafItems of leaves) {
    const bytenr = addresses[next++]!;
    const data = Buffer.alloc(NODESIZE);
    let end = LEAF_DATA_SIZE;
    leafItems.forEach((item, i) => {
      end -= item.data.length;
      const at = HEADER_SIZE + i * ITEM_HEADER_SIZE;
      writeDiskKey(data, at, item.key);
      data.writeUInt32LE(end, at + ITEM_DATA_OFFSET);
      data.writeUInt32LE(item.data.length, at + ITEM_DATA_SIZE);
      item.data.copy(data, HEADER_SIZE + end);
    });
    sealTreeBlock(data, bytenr, leafItems.length, 0, header);
    blocks.push({ bytenr, level: 0, data });
    children.push({ key: leafItems[0]?.key ?? { objectid: 0n, type: 0, offset: 0n }, bytenr });
  }
  for (let level = 1; level < sizes.length; level++) {
    const parents: typeof children = [];
    for (let i = 0; i < children.length; i += NODE_MAX_PTRS) {
      const group = children.slice(i, i + NODE_MAX_PTRS);
      const bytenr = addresses[next++]!;
      const data = Buffer.alloc(NODESIZE);
      group.forEach((c, j) => {
        const at = HEADER_SIZE + j * KEY_PTR_SIZE;
        writeDiskKey(data, at, c.key);
        data.writeBigUInt64LE(BigInt(c.bytenr), at + KEY_PTR_BLOCKPTR);
        data.writeBigUInt64LE(header.generation, at + KEY_PTR_GENERATION);
      });
      sealTreeBlock(data, bytenr, group.length, level, header);
      blocks.push({ bytenr, level, data });
      parents.push({ key: group[0]!.key, bytenr });
    }
    children = parents;
  }
  return { root: { bytenr: children[0]!.bytenr, level: sizes.length - 1 }, blocks };
}
