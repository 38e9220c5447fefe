/** The part of fuse-native (CommonJS, untyped) that src/mount/ uses. */
declare module 'fuse-native' {
  interface FuseNativeOptions {
    /** Per-request timeout in ms, or false for none. */
    timeout?: number | false;
    force?: boolean;
    mkdir?: boolean;
    debug?: boolean;
    allowOther?: boolean;
    allowRoot?: boolean;
    autoUnmount?: boolean;
    defaultPermissions?: boolean;
    maxRead?: number;
    fsname?: string;
    subtype?: string;
    kernelCache?: boolean;
    autoCache?: boolean;
    entryTimeout?: number;
    attrTimeout?: number;
    acAttrTimeout?: number;
    uid?: number;
    gid?: number;
  }

  class Fuse {
    constructor(mnt: string, ops: object, opts?: FuseNativeOptions);
    readonly mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    /** Builds the `-o...` string handed to libfuse (internal; wrapped to add options fuse-native lacks). */
    _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
  }

  export = Fuse;
}
