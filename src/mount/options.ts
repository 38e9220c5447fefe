/** What `-o` (and the long options) can set. */
export interface MountOptions {
  /** Let other users see the mount (FUSE `allow_other`; non-root users need user_allow_other in /etc/fuse.conf). */
  allowOther: boolean;
  /** Owner shown for every file and folder (default: the mounting user). */
  uid?: number;
  gid?: number;
  /** Bytes of L2 tables kept in memory. */
  l2CacheBytes?: number;
  /** Bytes of decompressed clusters kept in memory. */
  clusterCacheBytes?: number;
  /** Bytes of fetched blocks kept in memory, for an image read over HTTP(S). */
  remoteCacheBytes?: number;
  /** FUSE back-end: the native libfuse 3 addon, or fuse-native (default: native when built). */
  fuse?: 'native' | 'compat';
  /**
   * Files opened for direct I/O (FOPEN_DIRECT_IO): each read goes to the daemon as it is, with no page
   * cache in between (one copy instead of two; no readahead). Native back-end only.
   */
  directIo?: boolean;
  /** Ask for FUSE over io_uring (native back-end; used when the kernel offers it, else /dev/fuse). */
  fuseUring?: boolean;
  /** The VM's max-ram-below-4g (where guest RAM below 4 GiB ends, for .ram/.core); the stream does not say. */
  ramBelow4g?: number;
}
