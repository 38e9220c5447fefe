/**
 * What the native back-end may serve by itself: for a disk file whose top layer is a qcow2 file whose
 * data runs are plain bytes in a local host file, the map of each table of clusters the reads touch,
 * built with the same translation JavaScript reads with (data and zero runs, and zlib clusters, which
 * the worker threads inflate; zstd clusters, backing files and entries that fail to translate stay with
 * JavaScript). Data runs of an encrypted view are decrypted by the worker threads when its cipher is
 * AES and this Node's OpenSSL has it.
 */
import { Qcow2Disk } from '../disk/qcow2-disk.js';
import { HostFile } from '../io/host-file.js';
import { Run, RunKind } from '../translate/qcow2-map.js';
import type { DataDecryption } from '../encryption.js';
import { type NativeCrypt, type ViewMapper, nativeCipherAvailable } from './fuse3-native.js';
import { MapTableBuilder } from './native-map-table.js';
import type { DiskNode } from './tree.js';

/** Host files the maps point into, by slot; shared by every view of a mount. */
export class HostSlots {
  readonly fds: number[] = [];
  private readonly bySlot = new Map<HostFile, number>();

  slotOf(file: HostFile): number | undefined {
    let slot = this.bySlot.get(file);
    if (slot === undefined) {
      if (this.fds.length >= 64) return undefined;
      slot = this.fds.length;
      this.fds.push(file.fd);
      this.bySlot.set(file, slot);
    }
    return slot;
  }
}

/** The mapper for a disk file, or undefined when every read of it must go through JavaScript. */
export function qcow2Mapper(node: DiskNode, slots: HostSlots): ViewMapper | undefined {
  const disk = node.disk;
  if (!(disk instanceof Qcow2Disk)) return undefined;
  const { map, reader, origin } = disk;
  const dataFile = reader.dataFile;
  // Remote files and views not on a cluster boundary stay with JS; so do locked images and ciphers C lacks.
  if (!(dataFile instanceof HostFile) || origin % map.clusterSize !== 0) return undefined;
  const crypt = reader.decryption ? nativeCrypt(reader.decryption, origin) : undefined;
  if (!reader.servesHostBytes && !crypt) return undefined;
  const slot = slots.slotOf(dataFile);
  if (slot === undefined) return undefined;
  const span = map.l2Span;
  const cs = map.clusterSize;
  const run = new Run();
  const done = new Set<number>();
  const zlib = reader.compressionType === 'zlib' && !crypt; // encrypted images with compressed clusters: JS

  /** Maps [from, end) into `b`; false when an entry in it failed to translate. */
  const mapRange = (l1: Float64Array, b: MapTableBuilder, from: number, end: number): boolean => {
    for (let pos = from; pos < end; pos += run.length) {
      try {
        map.mapRun(l1, origin, pos, end - pos, run);
      } catch {
        return false;
      }
      if (run.kind === RunKind.Data) b.data(pos, run.length, run.host);
      else if (run.kind === RunKind.Compressed && zlib) b.zlib(pos, run.length, run.host, run.hostLength);
      else if (run.kind === RunKind.Zero || (run.kind === RunKind.Unallocated && !disk.backing)) b.zero(pos, run.length);
      else b.other(pos, run.length);
    }
    return true;
  };

  const build = (t: number): MapTableBuilder => {
    const start = t * span;
    const limit = Math.min(span, disk.size - start);
    const b = new MapTableBuilder(start, map.l2Entries, cs, limit, dataFile.size);
    const l1 = disk.l1();
    if (!mapRange(l1, b, start, start + limit)) {
      // A bad entry somewhere in the table: cluster by cluster, leaving the bad ones to JS (which
      // answers their reads with EIO and a log line).
      const fresh = new MapTableBuilder(start, map.l2Entries, cs, limit, dataFile.size);
      for (let at = start; at < start + limit; at += cs) {
        const end = Math.min(at + cs, start + limit);
        if (!mapRange(l1, fresh, at, end)) fresh.other(at, end - at);
      }
      fresh.finish();
      return fresh;
    }
    b.finish();
    return b;
  };

  return {
    crypt,
    clusterBits: map.clusterBits,
    tableBits: Math.log2(map.l2Entries),
    fill(position, length, publish) {
      const last = Math.floor((Math.min(position + length, disk.size) - 1) / span);
      for (let t = Math.floor(position / span); t <= last; t++) {
        if (done.has(t)) continue;
        done.add(t);
        const table = build(t);
        publish(t * map.l2Entries, table.entries, slot, zlib ? table.zlibLengths : undefined);
      }
    },
  };
}

/**
 * The cipher for the worker threads, or undefined: cast5 (OpenSSL's legacy provider, 8-byte blocks)
 * and anything this Node's OpenSSL lacks are decrypted in JavaScript.
 */
function nativeCrypt(d: DataDecryption, origin: number): NativeCrypt | undefined {
  if (d.cipher.spec.cipher !== 'aes') return undefined;
  const params = d.cipher.params();
  if (!nativeCipherAvailable(params.cipher) || (params.essivCipher && !nativeCipherAvailable(params.essivCipher))) {
    params.key.fill(0);
    params.essivKey?.fill(0);
    return undefined;
  }
  return { ...params, ivGuest: d.ivFrom === 'guest', ivOrigin: origin };
}
