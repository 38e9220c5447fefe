import { describe, expect, it } from 'vitest';
import { MAX_PBKDF2_ITERATIONS, cipherLabel, decodeLuksHeader } from '../src/format/luks-header.js';

/** A LUKS1 header as QEMU lays it out for aes-256-xts-plain64/sha256 (64-byte key, one active slot). */
function header(patch: (b: Buffer) => void = () => {}): Buffer {
  const b = Buffer.alloc(592);
  Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]).copy(b, 0);
  b.writeUInt16BE(1, 6);
  b.write('aes', 8);
  b.write('xts-plain64', 40);
  b.write('sha256', 72);
  b.writeUInt32BE(4040, 104); // payload offset (sectors)
  b.writeUInt32BE(64, 108);
  b.writeUInt32BE(1000, 164);
  for (let i = 0; i < 8; i++) {
    const at = 208 + i * 48;
    b.writeUInt32BE(i === 0 ? 0x00ac71f3 : 0x0000dead, at);
    b.writeUInt32BE(i === 0 ? 2000 : 0, at + 4);
    b.writeUInt32BE(8 + i * 504, at + 40);
    b.writeUInt32BE(4000, at + 44);
  }
  patch(b);
  return b;
}
const AREA = 4040 * 512;
const decode = (b: Buffer, area = AREA) => () => decodeLuksHeader(b, 'disk.qcow2', area);

describe('LUKS header', () => {
  it('decodes QEMU\'s layout', () => {
    const h = decodeLuksHeader(header(), 'disk.qcow2', AREA);
    expect(cipherLabel(h.spec)).toBe('aes-256-xts-plain64');
    expect(h.slots.filter((s) => s.active).map((s) => s.index)).toEqual([0]);
    expect(h.slots[1]!.keyOffset).toBe(512 * 512);
    expect(h.payloadOffset).toBe(AREA);
  });

  it('refuses a huge iteration count before running it', () => {
    expect(decode(header((b) => b.writeUInt32BE(0xffffffff, 208 + 4)))).toThrow(
      new RegExp(`^disk\\.qcow2: LUKS header: key slot 0 asks for 4294967295 PBKDF2 iterations, more than the ${MAX_PBKDF2_ITERATIONS}`),
    );
    expect(decode(header((b) => b.writeUInt32BE(0xffffffff, 164)))).toThrow(/master key digest asks for 4294967295 PBKDF2 iterations/);
    expect(decode(header((b) => b.writeUInt32BE(0, 208 + 4)))).toThrow(/key slot 0 iteration count is zero/);
  });

  it('refuses key material past the end of the header area', () => {
    expect(decode(header(), 100_000)).toThrow(/^disk\.qcow2: LUKS header: key slot 0 key material at 0x1000\+256000 lies past the end of the encryption header area \(100000 bytes\)$/);
  });

  it('refuses a payload offset inside the header, and slots overlapping it', () => {
    expect(decode(header((b) => b.writeUInt32BE(1, 104)))).toThrow(/payload offset 0x200 lies inside the LUKS header/);
    expect(decode(header((b) => b.writeUInt32BE(100, 104)))).toThrow(/key slot 0 key material at 0x1000\+256000 overlaps the payload at 0xc800/);
  });

  it('refuses stripes = 0 (and any count but 4000)', () => {
    expect(decode(header((b) => b.writeUInt32BE(0, 208 + 44)))).toThrow(/^disk\.qcow2: LUKS header: key slot 0 has 0 stripes, not 4000$/);
    expect(decode(header((b) => b.writeUInt32BE(0xffffffff, 208 + 3 * 48 + 44)))).toThrow(/key slot 3 has 4294967295 stripes/);
  });

  it('refuses unknown cipher, mode, ivgen and hash names by name', () => {
    const name = (at: number, s: string) => header((b) => { b.fill(0, at, at + 32); b.write(s, at); });
    expect(decode(name(8, 'blowfish'))).toThrow(/^disk\.qcow2: LUKS cipher "blowfish" is not one QEMU supports/);
    expect(decode(name(40, 'gcm-plain64'))).toThrow(/cipher mode "gcm-plain64" is not one QEMU supports/);
    expect(decode(name(40, 'cbc-benbi'))).toThrow(/IV generator "benbi" is not one QEMU supports/);
    expect(decode(name(40, 'cbc-essiv:whirlpool'))).toThrow(/ESSIV hash in "cbc-essiv:whirlpool"/);
    expect(decode(name(72, 'whirlpool'))).toThrow(/LUKS hash "whirlpool" is not one QEMU supports/);
    expect(decode(name(40, 'cbc'))).toThrow(/names no IV generator/);
  });

  it('refuses a key length the cipher does not take, overlapping slots, bad magic and version 2', () => {
    expect(decode(header((b) => b.writeUInt32BE(40, 108)))).toThrow(/a 40-byte key does not fit aes in xts mode/);
    expect(decode(header((b) => b.writeUInt32BE(8, 208 + 48 + 40)))).toThrow(/key slots 0 and 1 overlap/);
    expect(decode(header((b) => b.writeUInt32BE(1, 208 + 40)))).toThrow(/key slot 0 key material at 0x200 overlaps the LUKS header/);
    expect(decode(header((b) => (b[0] = 0)))).toThrow(/no LUKS magic/);
    expect(decode(header((b) => b.writeUInt16BE(2, 6)))).toThrow(/LUKS version 2 is not supported/);
    expect(decode(header((b) => b.writeUInt32BE(0x12345678, 208 + 96)))).toThrow(/key slot 2 state 0x12345678 is corrupt/);
    expect(decode(header().subarray(0, 100))).toThrow(/shorter than a LUKS header/);
  });
});
