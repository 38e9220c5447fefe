import { describe, expect, it } from 'vitest';
import { MapTableBuilder, UNKNOWN, ZEROS } from '../src/mount/native-map-table.js';

const CS = 65536;

describe('MapTableBuilder', () => {
  it('publishes whole clusters of one kind and leaves mixed, partial and other clusters unknown', () => {
    // 8 clusters from guest 1 MiB; the view ends 100 bytes into cluster 7; the host file is 10 MiB.
    const b = new MapTableBuilder(1 << 20, 8, CS, 7 * CS + 100, 10 << 20);
    b.data(1 << 20, 2 * CS, 5 * CS); // clusters 0-1, host-contiguous
    b.zero((1 << 20) + 2 * CS, CS); // cluster 2
    b.data((1 << 20) + 3 * CS, CS / 2, 9 * CS); // cluster 3: half data ...
    b.zero((1 << 20) + 3 * CS + CS / 2, CS / 2); // ... half zeros: mixed
    b.data((1 << 20) + 4 * CS, CS / 2, 20 * CS); // cluster 4: two subcluster runs, host-contiguous
    b.data((1 << 20) + 4 * CS + CS / 2, CS / 2, 20 * CS + CS / 2);
    b.other((1 << 20) + 5 * CS, CS); // cluster 5: compressed or backing
    b.data((1 << 20) + 6 * CS, CS, (10 << 20) - CS / 2); // cluster 6: past the host file's end
    b.data((1 << 20) + 7 * CS, 100, 30 * CS); // cluster 7: the view's last 100 bytes
    expect([...b.finish()]).toEqual([5 * CS, 6 * CS, ZEROS, UNKNOWN, 20 * CS, UNKNOWN, UNKNOWN, 30 * CS]);
  });

  it('splits long runs over clusters and ignores what lies outside the table', () => {
    const b = new MapTableBuilder(0, 4, CS, 4 * CS, 1 << 30);
    b.zero(0, 100 * CS);
    expect([...b.finish()]).toEqual([ZEROS, ZEROS, ZEROS, ZEROS]);
    const c = new MapTableBuilder(4 * CS, 4, CS, 4 * CS, 1 << 30);
    c.data(0, 6 * CS, 0); // starts before the table: clusters 4-5 of the run land in entries 0-1
    expect([...c.finish()]).toEqual([4 * CS, 5 * CS, UNKNOWN, UNKNOWN]);
  });

  it('a cluster whose runs do not continue the same host run is unknown', () => {
    const b = new MapTableBuilder(0, 1, CS, CS, 1 << 30);
    b.data(0, CS / 2, 2 * CS);
    b.data(CS / 2, CS / 2, 7 * CS);
    expect([...b.finish()]).toEqual([UNKNOWN]);
  });

  it('zlib clusters carry their stream offset and length; past the host file or mixed, they stay unknown', () => {
    const b = new MapTableBuilder(0, 4, CS, 4 * CS, 1 << 20);
    b.zlib(0, CS, 3 * CS + 700, 2 * 512 - 700 % 512); // cluster 0: a stream of two sectors
    b.data(CS, CS, 8 * CS); // cluster 1: plain data
    b.zlib(2 * CS, CS / 2, 5 * CS, 512); // cluster 2: half compressed run ...
    b.data(2 * CS + CS / 2, CS / 2, 9 * CS); // ... half data: mixed
    b.zlib(3 * CS, CS, 1 << 20, 512); // cluster 3: its stream starts at the end of the host file
    expect([...b.finish()]).toEqual([3 * CS + 700, 8 * CS, UNKNOWN, UNKNOWN]);
    expect([...b.zlibLengths]).toEqual([1024 - 700 % 512, 0, 0, 0]);
  });
});
