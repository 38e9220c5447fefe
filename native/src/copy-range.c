/*
 * qcow-export's copy of stored data runs: host bytes of a run go from the image file to the output file
 * through one small buffer that stays in the CPU cache (pread, then pwrite of what is not all zeros),
 * without JavaScript in between. Its own module, so that it loads (and is built) apart from the FUSE
 * back-end.
 *
 * All-zero blocks stay holes in the output, as `qemu-img convert -S 4k` leaves them. Writing into a
 * fresh tmpfs or ext4 file costs most (page allocation and the copy, under the output inode's lock, so
 * more writers do not help); the read and the zero scan are the rest. Measured here (bench/NOTES.md):
 * pwrite from the cache-resident window is about 10% faster than the earlier sendfile of the same runs
 * (page cache to page cache through a pipe, 64 KiB a turn), and a second thread reading ahead into a
 * ring of windows was slower still (the writer then copies from another core's cache).
 *
 * It also holds the one fcntl the library wants at every open (lockedByOthers: is QEMU's write
 * permission byte locked), since this module loads without libfuse.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WINDOW (256u * 1024u)
#define MIN_BLOCK 512u
static _Thread_local uint64_t window[WINDOW / 8];

static int all_zero(const uint64_t *p, size_t bytes) {
  for (size_t i = 0; i < bytes / 8; i++)
    if (p[i]) return 0;
  for (size_t i = bytes / 8 * 8; i < bytes; i++)
    if (((const unsigned char *)p)[i]) return 0;
  return 1;
}

/*
 * Runs of blocks in buf[0, got) that are not all zeros, as (start, length) pairs in `runs`; blocks are
 * aligned to the output offset `out_pos`, so the holes fall where the file system can make them.
 */
static size_t nonzero_runs(const unsigned char *buf, int64_t got, int64_t out_pos, int64_t block, int64_t *runs) {
  size_t count = 0;
  int64_t run = -1;
  for (int64_t b = 0; b < got; ) {
    int64_t next = b + block - ((out_pos + b) % block);
    if (next > got) next = got;
    int zero = all_zero((const uint64_t *)(buf + b), (size_t)(next - b));
    if (!zero && run < 0) run = b;
    if (zero && run >= 0) {
      runs[2 * count] = run;
      runs[2 * count + 1] = b - run;
      count++;
      run = -1;
    }
    b = next;
  }
  if (run >= 0) {
    runs[2 * count] = run;
    runs[2 * count + 1] = got - run;
    count++;
  }
  return count;
}

/* pwrite of all `length` bytes; returns them or -errno. */
static int64_t pwrite_all(int fd, const unsigned char *buf, int64_t length, int64_t pos) {
  int64_t done = 0;
  while (done < length) {
    ssize_t n = pwrite(fd, buf + done, (size_t)(length - done), (off_t)(pos + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    done += n;
  }
  return done;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_value msg, code, error, sc;
  char text[160];
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  const char *name = err == EIO ? "EIO" : err == ENOSPC ? "ENOSPC" : err == EDQUOT ? "EDQUOT" : err == EFBIG ? "EFBIG"
                   : err == EINVAL ? "EINVAL" : err == ENOSYS ? "ENOSYS" : err == EBADF ? "EBADF" : "EIO";
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_create_error(env, code, msg, &error);
  napi_set_named_property(env, error, "syscall", sc);
  napi_value errno_v;
  napi_create_int32(env, -err, &errno_v);
  napi_set_named_property(env, error, "errno", errno_v);
  napi_throw(env, error);
  return NULL;
}

/*
 * copyRange(outFd, outPos, inFd, inPos, length, sparseBlock): copies length bytes from inFd at inPos to
 * outFd at outPos, skipping all-zero blocks of sparseBlock bytes (>= 512; the output is a fresh file:
 * holes read as zeros); returns { covered, written }: the bytes done (fewer only where the input file
 * ends) and those actually written. Throws an errno error whose syscall says which side failed.
 */
static napi_value js_copy_range(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  uint32_t block = 4096;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 || napi_get_value_uint32(env, argv[5], &block) != napi_ok || block < MIN_BLOCK) {
    napi_throw_type_error(env, NULL, "copyRange(outFd, outPos, inFd, inPos, length, sparseBlock >= 512)");
    return NULL;
  }
  int32_t out_fd, in_fd;
  int64_t out_pos, in_pos, length;
  if (napi_get_value_int32(env, argv[0], &out_fd) != napi_ok || napi_get_value_int64(env, argv[1], &out_pos) != napi_ok ||
      napi_get_value_int32(env, argv[2], &in_fd) != napi_ok || napi_get_value_int64(env, argv[3], &in_pos) != napi_ok ||
      napi_get_value_int64(env, argv[4], &length) != napi_ok || out_pos < 0 || in_pos < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "copyRange: fds and non-negative positions expected");
    return NULL;
  }
  int64_t runs[2 * (WINDOW / MIN_BLOCK / 2 + 1)];
  int64_t done = 0, written = 0;
  while (done < length) {
    size_t want = (size_t)(length - done > WINDOW ? WINDOW : length - done);
    ssize_t got = pread(in_fd, window, want, (off_t)(in_pos + done));
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return throw_errno(env, errno, "pread");
    }
    if (got == 0) break; /* the input file ends */
    size_t count = nonzero_runs((const unsigned char *)window, got, out_pos + done, block, runs);
    for (size_t r = 0; r < count; r++) {
      int64_t n = pwrite_all(out_fd, (const unsigned char *)window + runs[2 * r], runs[2 * r + 1], out_pos + done + runs[2 * r]);
      if (n < 0) return throw_errno(env, (int)-n, "pwrite");
      written += n;
    }
    done += got;
  }
  napi_value result, v;
  napi_create_object(env, &result);
  napi_create_int64(env, done, &v);
  napi_set_named_property(env, result, "covered", v);
  napi_create_int64(env, written, &v);
  napi_set_named_property(env, result, "written", v);
  return result;
}

/*
 * lockedByOthers(fd, byte): whether another open file description holds a lock covering `byte` of the
 * file (F_OFD_GETLK, as QEMU's own check does): QEMU's write permission byte tells a running writer.
 * One fcntl, where reading /proc/locks makes the kernel wait for an RCU grace period (10-20 ms here).
 * Throws an errno error (EINVAL where the kernel has no OFD locks).
 */
static napi_value js_locked_by_others(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  int64_t byte;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &byte) != napi_ok || byte < 0) {
    napi_throw_type_error(env, NULL, "lockedByOthers(fd, byte)");
    return NULL;
  }
  struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)byte, .l_len = 1 };
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return throw_errno(env, errno, "fcntl");
  napi_value result;
  napi_get_boolean(env, fl.l_type != F_UNLCK, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "copyRange", NULL, js_copy_range, NULL, NULL, NULL, napi_default, NULL },
    { "lockedByOthers", NULL, js_locked_by_others, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
