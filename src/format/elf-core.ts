/**
 * The header of an ELF64 core file of guest-physical memory, laid out as QEMU's dump-guest-memory
 * does (dump/dump.c): the ELF header, a PT_NOTE program header first (crash reads the loads from the
 * second header on), then one PT_LOAD per physical range with p_paddr = p_vaddr = the guest-physical
 * address and p_filesz = p_memsz (Volatility 3's Elf64Layer takes exactly those: PT_LOAD, equal sizes,
 * p_paddr, p_offset). The note is empty: CPU registers live in device state, which is not parsed.
 * Segment data starts on a 4 KiB boundary so that page-sized reads stay page-aligned in both forms.
 */

const EHDR_BYTES = 64;
const PHDR_BYTES = 56;
const PT_LOAD = 1;
const PT_NOTE = 4;
const ET_CORE = 4;
const EM_X86_64 = 62;
/** e_phnum is 16 bits; 0xffff means "see section 0" (PN_XNUM), which we never need. */
export const MAX_CORE_SEGMENTS = 0xfffe;
export const CORE_DATA_ALIGN = 4096;

export interface CoreSegment {
  /** Guest-physical address. */
  address: number;
  length: number;
}

export interface CoreLayout {
  /** The encoded headers: file bytes [0, header.length). */
  header: Buffer;
  /** Where each segment's bytes start in the file, in the order given. */
  offsets: number[];
  /** File size. */
  size: number;
}

export function encodeCoreHeader(segments: readonly CoreSegment[], machine = EM_X86_64): CoreLayout {
  if (segments.length > MAX_CORE_SEGMENTS) throw new RangeError(`an ELF core holds at most ${MAX_CORE_SEGMENTS} segments`);
  const phnum = segments.length + 1;
  const headersEnd = EHDR_BYTES + PHDR_BYTES * phnum;
  const dataStart = Math.ceil(headersEnd / CORE_DATA_ALIGN) * CORE_DATA_ALIGN;
  const header = Buffer.alloc(dataStart);

  header.write('\x7fELF', 0, 'latin1');
  header[4] = 2; // ELFCLASS64
  header[5] = 1; // ELFDATA2LSB
  header[6] = 1; // EV_CURRENT
  header.writeUInt16LE(ET_CORE, 16);
  header.writeUInt16LE(machine, 18);
  header.writeUInt32LE(1, 20); // e_version
  header.writeBigUInt64LE(BigInt(EHDR_BYTES), 32); // e_phoff
  header.writeUInt16LE(EHDR_BYTES, 52); // e_ehsize
  header.writeUInt16LE(PHDR_BYTES, 54); // e_phentsize
  header.writeUInt16LE(phnum, 56);

  const phdr = (i: number, type: number, offset: number, address: number, length: number) => {
    const at = EHDR_BYTES + i * PHDR_BYTES;
    header.writeUInt32LE(type, at);
    header.writeUInt32LE(0, at + 4); // p_flags, as QEMU writes them
    header.writeBigUInt64LE(BigInt(offset), at + 8);
    header.writeBigUInt64LE(BigInt(address), at + 16); // p_vaddr
    header.writeBigUInt64LE(BigInt(address), at + 24); // p_paddr
    header.writeBigUInt64LE(BigInt(length), at + 32); // p_filesz
    header.writeBigUInt64LE(BigInt(length), at + 40); // p_memsz
  };
  phdr(0, PT_NOTE, headersEnd, 0, 0);
  const offsets: number[] = [];
  let offset = dataStart;
  segments.forEach((s, i) => {
    phdr(i + 1, PT_LOAD, offset, s.address, s.length);
    offsets.push(offset);
    offset += s.length;
  });
  return { header, offsets, size: offset };
}
