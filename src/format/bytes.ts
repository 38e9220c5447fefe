/** Big-endian reads over a byte array, with 64-bit fields as bigint (the caller decides how to narrow). */
export class BigEndian {
  readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  u8(at: number): number {
    return this.view.getUint8(at);
  }
  u16(at: number): number {
    return this.view.getUint16(at);
  }
  u32(at: number): number {
    return this.view.getUint32(at);
  }
  u64(at: number): bigint {
    return this.view.getBigUint64(at);
  }
  /** A 64-bit field as a number when it fits in 2^53, else undefined. */
  u64n(at: number): number | undefined {
    const hi = this.view.getUint32(at);
    if (hi >= 0x200000) return undefined;
    return hi * 0x1_0000_0000 + this.view.getUint32(at + 4);
  }
  text(at: number, length: number): string {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset + at, length).toString('utf8');
  }
}
