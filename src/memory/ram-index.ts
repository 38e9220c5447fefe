import { QcowError, hex } from '../errors.js';
import type { Disk } from '../disk/disk.js';
import {
  type Configuration,
  MIN_PAGE_RECORD_BYTES,
  RAM_SECTION_VERSION,
  RamRecord,
  SectionType,
  type StreamContext,
  decodeConfiguration,
  decodeRamRecord,
  decodeSectionFooter,
  decodeSectionHeader,
  decodeStreamHeader,
} from '../format/migration-stream.js';
import { BlockPages } from './block-pages.js';

/** What indexing a VM state found: the machine, the RAM blocks and where each page is. */
export interface RamIndex {
  configuration: Configuration | undefined;
  pageSize: number;
  /** Every RAM block, in the stream's order. */
  blocks: BlockPages[];
  /** Where the RAM ended in the stream (device state follows; it is never read). */
  ramEnd: number;
}

/** Bytes read from the VM state at a time while indexing. */
export const INDEX_CHUNK_BYTES = 4 * 1024 * 1024;
/** x86's TARGET_PAGE_SIZE: the stream says nothing else for targets without variable page size. */
const DEFAULT_PAGE_SIZE = 4096;

/**
 * Reads a VM state once, front to back in big chunks, and keeps where each RAM page is. Stops when the
 * `ram` section's END has been read: the device state that follows is never parsed. A malformed or
 * unsupported stream throws one QcowError naming the stream offset.
 */
export function indexRam(vmState: Disk, ctx: StreamContext, chunkBytes = INDEX_CHUNK_BYTES): RamIndex {
  const size = vmState.size;
  const window = Buffer.allocUnsafe(Math.max(chunkBytes, 1024 * 1024));
  let base = 0; // stream offset of window[0]
  let at = 0; // next byte to decode, in the window
  let end = 0; // bytes valid in the window

  /** Keeps [at, end) and reads on; false at the end of the stream. */
  const more = (): boolean => {
    if (base + end >= size) return false;
    window.copy(window, 0, at, end);
    base += at;
    end -= at;
    at = 0;
    const want = Math.min(window.length - end, size - (base + end));
    if (want === 0) throw new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: an item at stream offset ${hex(base)} is larger than ${window.length} bytes`);
    const got = vmState.readSync(window.subarray(end, end + want), base + end);
    if (got !== want) throw new QcowError('EIO', ctx.file, `${ctx.what}: short read at ${hex(base + end)}`);
    end += want;
    return true;
  };
  const truncated = (what: string): QcowError =>
    new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: the stream ends (at ${hex(size)} bytes) inside ${what}`);
  /** Runs a decoder until it has the bytes it needs. */
  function take<T>(what: string, decode: () => { length: number; value: T } | undefined): T {
    for (;;) {
      const r = decode();
      if (r) {
        at += r.length;
        return r.value;
      }
      if (!more()) throw truncated(what);
    }
  }
  const peek = (what: string): number => {
    while (at >= end) if (!more()) throw truncated(what);
    return window[at];
  };

  take('the stream header', () => {
    const r = decodeStreamHeader(window, at, end, ctx);
    return r && { length: r.length, value: r.header };
  });
  let configuration: Configuration | undefined;
  if (peek('the first section') === SectionType.CONFIGURATION) {
    configuration = take('the configuration section', () => {
      const r = decodeConfiguration(window, at, end, ctx, base);
      return r && { length: r.length, value: r.configuration };
    });
  }
  if (configuration?.capabilities.includes('x-ignore-shared')) {
    throw new QcowError('EUNSUPPORTED', ctx.file, `${ctx.what}: saved with x-ignore-shared (RAM kept outside the stream)`);
  }
  const pageSize = configuration?.targetPageBits ? 2 ** configuration.targetPageBits : DEFAULT_PAGE_SIZE;

  const blocks: BlockPages[] = [];
  const byName = new Map<string, BlockPages>();
  let ramSection = -1;
  let current: BlockPages | undefined;
  const record = new RamRecord();

  for (;;) {
    // Between sections: a section header, a footer, or the end of the stream.
    const sectionAt = base + at;
    const type = peek('a section header');
    if (type === SectionType.FOOTER) {
      take('a section footer', () => {
        const r = decodeSectionFooter(window, at, end);
        return r && { length: r.length, value: r.sectionId };
      });
      continue;
    }
    if (type === SectionType.EOF || type === SectionType.VMDESCRIPTION) {
      throw new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: the stream ends (at ${hex(sectionAt)}) before its RAM section does`);
    }
    if (type < SectionType.START || type > SectionType.FULL) {
      throw new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: unexpected item type ${hex(type)} at stream offset ${hex(sectionAt)} before the end of RAM`);
    }
    const section = take('a section header', () => {
      const r = decodeSectionHeader(window, at, end);
      return r && { length: r.length, value: r.section };
    });
    if (section.type === 'start' || section.type === 'full') {
      if (section.idstr !== 'ram' || ramSection >= 0) {
        // Only iterable sections may come before RAM ends, and their payloads cannot be skipped.
        const why = section.idstr === 'ram' ? 'a second "ram" section' : `section "${section.idstr}" (${section.type}) before the end of RAM`;
        throw new QcowError('EUNSUPPORTED', ctx.file, `${ctx.what}: ${why} at stream offset ${hex(sectionAt)}: its length is not recorded, so RAM cannot be read past it`);
      }
      if (section.versionId !== RAM_SECTION_VERSION) {
        throw new QcowError('EUNSUPPORTED', ctx.file, `${ctx.what}: ram section version ${section.versionId} is not supported (only ${RAM_SECTION_VERSION})`);
      }
      ramSection = section.sectionId;
    } else if (section.sectionId !== ramSection) {
      throw new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: section ${section.sectionId} (${section.type}) at stream offset ${hex(sectionAt)} is not the ram section (${ramSection})`);
    }

    // The section's ram records, up to its end-of-section record.
    for (;;) {
      let n = decodeRamRecord(window, at, end, pageSize, record, ctx, base, size);
      while (n === 0) {
        if (!more()) throw truncated('a ram record');
        n = decodeRamRecord(window, at, end, pageSize, record, ctx, base, size);
      }
      const recordAt = base + at;
      at += n;
      const kind = record.kind;
      if (kind === 'eos') break;
      if (kind === 'flush') continue;
      if (kind === 'blocks') {
        if (blocks.length > 0) throw bad(ctx, recordAt, 'a second ram block list');
        const pages = record.blocks.reduce((s, b) => s + Math.ceil(b.length / pageSize), 0);
        // Every page costs at least a zero-page record: a list claiming more cannot be this stream's.
        if (pages * MIN_PAGE_RECORD_BYTES > size - (base + at)) {
          throw bad(ctx, recordAt, `ram block list claims ${hex(record.totalBytes)} bytes of RAM (${pages} pages), more than a VM state of ${size} bytes can hold`);
        }
        for (const b of record.blocks) {
          if (byName.has(b.name)) throw bad(ctx, recordAt, `ram block "${b.name}" is listed twice`);
          const block = new BlockPages(b.name, b.length, pageSize, ctx.file);
          blocks.push(block);
          byName.set(b.name, block);
        }
        continue;
      }
      if (record.blockName !== undefined) {
        current = byName.get(record.blockName);
        if (!current) throw bad(ctx, recordAt, `page record names ram block "${record.blockName}", which the block list does not have`);
      } else if (!current) {
        throw bad(ctx, recordAt, 'page record continues a block but no block was named before');
      }
      if (record.offset >= current.length) {
        throw bad(ctx, recordAt, `page at ${hex(record.offset)} is past the end of ram block "${current.name}" (${hex(current.length)} bytes)`);
      }
      const page = record.offset / pageSize;
      const ok = kind === 'page' ? current.addData(page, base + record.dataAt) : current.addFill(page, record.fill);
      if (!ok) throw bad(ctx, recordAt, `more than ${BlockPages.MAX_RESENT_PAGES} pages of ram block "${current.name}" are sent again out of order`, 'EUNSUPPORTED');
    }
    if (section.type === 'end') break;
  }
  if (blocks.length === 0) throw new QcowError('EBADIMAGE', ctx.file, `${ctx.what}: the ram section has no block list`);
  for (const b of blocks) b.finish();
  return { configuration, pageSize, blocks, ramEnd: base + at };
}

function bad(ctx: StreamContext, streamOffset: number, problem: string, code: 'EBADIMAGE' | 'EUNSUPPORTED' = 'EBADIMAGE'): QcowError {
  return new QcowError(code, ctx.file, `${ctx.what}: ${problem} (at stream offset ${hex(streamOffset)})`);
}
