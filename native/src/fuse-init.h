/*
 * The FUSE INIT handshake as the custom I/O hooks (fuse_session_custom_io) see it, for what libfuse 3.14
 * cannot ask for itself: note the kernel's offer as its INIT request is read, and add flags2 bits
 * (protocol flags 32-63) to libfuse's INIT reply as it is written. Used by fuse-uring.c (FUSE over
 * io_uring, and -o direct_io's FUSE_DIRECT_IO_ALLOW_MMAP) and by fuse-uring-none.c (the latter only).
 */
#ifndef QCOW_FUSE_INIT_H
#define QCOW_FUSE_INIT_H
#include <linux/fuse.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct {
  uint64_t unique; /* the INIT request's, 0 before it came */
  uint32_t offered2; /* the flags2 the kernel offered */
} fuse_init_offer_t;

/* After a read of /dev/fuse: if `buf` (n bytes) is the INIT request, note its unique and flags2. */
static inline void fuse_init_note(fuse_init_offer_t *o, const void *buf, ssize_t n) {
  const struct fuse_in_header *ih = buf;
  if (n < (ssize_t)(sizeof *ih + sizeof(struct fuse_init_in)) || ih->opcode != FUSE_INIT) return;
  const struct fuse_init_in *ii = (const void *)(ih + 1);
  o->unique = ih->unique;
  o->offered2 = (ii->flags & FUSE_INIT_EXT) ? ii->flags2 : 0;
}

/* Before a writev to /dev/fuse: if it is the successful reply to INIT, add `bits` (flags2, those the
 * kernel offered only) to it. Returns 1 for the INIT reply, else 0. */
static inline int fuse_init_reply_add(const fuse_init_offer_t *o, struct iovec *iov, int count, uint32_t bits) {
  const struct fuse_out_header *oh = iov[0].iov_base;
  if (o->unique == 0 || iov[0].iov_len < sizeof *oh || oh->unique != o->unique || oh->error != 0 || count < 2 ||
      iov[1].iov_len < offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t))
    return 0;
  bits &= o->offered2;
  if (bits) {
    struct fuse_init_out *out = iov[1].iov_base;
    out->flags |= FUSE_INIT_EXT;
    out->flags2 |= bits;
  }
  return 1;
}
#endif
