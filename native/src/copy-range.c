/*
 * qcow-export's kernel-side copy: host bytes of a data run go from the image file to the output file
 * inside the kernel (sendfile: page cache to page cache, one copy, none through user space). Cross file
 * system copy_file_range is refused by Linux (EXDEV), sendfile is not. Its own module, so that it loads
 * (and is built) apart from the FUSE back-end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <unistd.h>

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
 * sendRange(outFd, outPos, inFd, inPos, length): copies length bytes from inFd at inPos to outFd at
 * outPos; returns the bytes copied (fewer only where the input file ends). Throws an errno error.
 */
static napi_value js_send_range(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, NULL, "sendRange(outFd, outPos, inFd, inPos, length)");
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
  if (lseek(out_fd, (off_t)out_pos, SEEK_SET) < 0) return throw_errno(env, errno, "lseek");
  off_t from = (off_t)in_pos;
  int64_t done = 0;
  while (done < length) {
    size_t want = (size_t)(length - done > 0x40000000 ? 0x40000000 : length - done);
    ssize_t n = sendfile(out_fd, in_fd, &from, want);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return throw_errno(env, errno, "sendfile");
    }
    if (n == 0) break; /* the input file ends */
    done += n;
  }
  napi_value result;
  napi_create_int64(env, done, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    { "sendRange", NULL, js_send_range, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
