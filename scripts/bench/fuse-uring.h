/* FUSE over io_uring for the bench servers (minfuse-uring.c, minfuse-customio.c): the uAPI of protocol
 * 7.42 (kernel 6.14+), newer than Debian's <linux/fuse.h> (7.38), spelt out from the kernel's
 * include/uapi/linux/fuse.h and Documentation/filesystems/fuse-io-uring.rst, and the one SQE both
 * servers submit. Needs <liburing.h> (Debian's liburing-dev 2.3) and <sys/uio.h> first. */
#ifndef BENCH_FUSE_URING_H
#define BENCH_FUSE_URING_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URING_FLAG2 (1u << (41 - 32)) /* FUSE_OVER_IO_URING: bit 41 of the flags, i.e. bit 9 of flags2 */
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2
#define URING_PROTO_MINOR 42
struct uring_ent_in_out { uint64_t flags, commit_id; uint32_t payload_sz, padding; uint64_t reserved; };
/* iov[0] of REGISTER: fuse_in_header (request) / fuse_out_header (reply), then the opcode's fixed
 * argument (e.g. fuse_read_in), then the entry's bookkeeping. Everything else goes through iov[1]. */
struct uring_req_header { char in_out[128]; char op_in[128]; struct uring_ent_in_out ent; };
struct uring_cmd_req { uint64_t flags, commit_id; uint16_t qid; uint8_t padding[6]; }; /* in sqe->cmd */

/* Queues REGISTER (with the entry's two iovecs: header, payload) or COMMIT_AND_FETCH (the reply in the
 * entry's buffers, committed by the id the kernel gave it) for queue `qid` on an SQE128 ring. */
static inline void uring_prep_cmd(struct io_uring *ring, int dev_fd, uint32_t cmd, int qid,
                                  const struct uring_req_header *hdr, struct iovec *iov, void *user_data) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
  if (!sqe) { fprintf(stderr, "fuse-uring: submission queue full\n"); exit(1); }
  memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = dev_fd;
  sqe->cmd_op = cmd;
  sqe->user_data = (uintptr_t)user_data;
  if (cmd == URING_CMD_REGISTER) { sqe->addr = (uintptr_t)iov; sqe->len = 2; }
  struct uring_cmd_req *req = (void *)sqe->cmd;
  req->qid = qid;
  req->commit_id = cmd == URING_CMD_COMMIT_AND_FETCH ? hdr->ent.commit_id : 0;
}
#endif
