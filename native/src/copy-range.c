/*
 * qcow-export's kernel-side copy: host bytes of a data run go from the image file to the output file
 * inside the kernel (sendfile: page cache to page cache, one copy, none through user space). Cross file
 * system copy_file_range is refused by Linux (EXDEV), sendfile is not. Its own module, so that it loads
 * (and is built) apart from the FUSE back-end.
 *
 * All-zero blocks stay holes in the output, as `qemu-img convert -S 4k` leaves them: each window is first
 * read into a small buffer that stays in the CPU cache, only to find them; the copy itself is sendfile's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <unistd.h>

#define WINDOW (256u * 1024u)
static _Thread_local uint64_t window[WINDOW / 8];

static int all_zero(const uint64_t *p, size_t bytes) {
  for (size_t i = 0; i < bytes / 8; i++)
    if (p[i]) return 0;
  for (size_t i = bytes / 8 * 8; i < bytes; i++)
    if (((const unsigned char *)p)[i]) return 0;
  return 1;
}

/* sendfile of [from, from + length) of in_fd to out_fd at out_pos; returns the bytes copied or -errno. */
static int64_t send_all(int out_fd, int64_t out_pos, int in_fd, int64_t from, int64_t length) {
  if (lseek(out_fd, (off_t)out_pos, SEEK_SET) < 0) return -errno;
  off_t at = (off_t)from;
  int64_t done = 0;
  while (done < length) {
    ssize_t n = sendfile(out_fd, in_fd, &at, (size_t)(length - done > 0x40000000 ? 0x40000000 : length - done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -errno;
    }
    if (n == 0) break;
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
 * sendRange(outFd, outPos, inFd, inPos, length, sparseBlock): copies length bytes from inFd at inPos to
 * outFd at outPos, skipping all-zero blocks of sparseBlock bytes (the output is a fresh file: holes read
 * as zeros); returns { covered, written }: the bytes done (fewer only where the input file ends) and
 * those actually written. Throws an errno error.
 */
static napi_value js_send_range(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  uint32_t block = 4096;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6 || napi_get_value_uint32(env, argv[5], &block) != napi_ok || block == 0) {
    napi_throw_type_error(env, NULL, "sendRange(outFd, outPos, inFd, inPos, length, sparseBlock)");
    return NULL;
  }
  int32_t out_fd, in_fd;
  int64_t out_pos, in_pos, length;
  if (napi_get_value_int32(env, argv[0], &out_fd) != napi_ok || napi_get_value_int64(env, argv[1], &out_pos) != napi_ok ||
      napi_get_value_int32(env, argv[2], &in_fd) != napi_ok || napi_get_value_int64(env, argv[3], &in_pos) != napi_ok ||
      napi_get_value_int64(env, argv[4], &length) != napi_ok || out_pos < 0 || in_pos < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "sendRange: fds and non-negative positions expected");
    return NULL;
  }
  /* sendfile writes at the output's file position: the caller owns that fd. */
  int64_t done = 0, written = 0;
  while (done < length) {
    size_t want = (size_t)(length - done > WINDOW ? WINDOW : length - done);
    ssize_t got = pread(in_fd, window, want, (off_t)(in_pos + done));
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return throw_errno(env, errno, "pread");
    }
    if (got == 0) break; /* the input file ends */
    /* Runs of blocks (aligned to the output offset) that are not all zeros. */
    int64_t run = -1;
    for (int64_t b = 0; b <= got; ) {
      int64_t next = b;
      int zero = 1;
      if (b < got) {
        next = b + (int64_t)block - ((out_pos + done + b) % (int64_t)block);
        if (next > got) next = got;
        zero = all_zero((const uint64_t *)((const char *)window + b), (size_t)(next - b));
      }
      if (!zero && run < 0) run = b;
      if ((zero || b == got) && run >= 0) {
        int64_t n = send_all(out_fd, out_pos + done + run, in_fd, in_pos + done + run, b - run);
        if (n < 0) return throw_errno(env, (int)-n, "sendfile");
        written += n;
        if (n < b - run) break;
        run = -1;
      }
      if (b == got) break;
      b = next;
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

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "sendRange", NULL, js_send_range, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
