/*
 * fuse-uring.h for a build without liburing (binding.gyp picks this file when pkg-config finds no
 * liburing): the native back-end works as before and -o fuse_uring stays on /dev/fuse with its one
 * warning line saying why. The custom I/O hooks are still installed, for the INIT reply only, so that
 * -o direct_io asks for shared mappings (FUSE_DIRECT_IO_ALLOW_MMAP) as the full build does.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "fuse-uring.h"
#include "fuse-init.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <unistd.h>

struct fuse_uring {
  fuse_init_offer_t init;
  uint32_t wanted2;
};

static fuse_uring_t *(*of_ud)(void *);

static ssize_t hook_read(int fd, void *buf, size_t len, void *ud) {
  ssize_t n = read(fd, buf, len);
  fuse_uring_t *u = of_ud(ud);
  if (u) fuse_init_note(&u->init, buf, n);
  return n;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *ud) {
  fuse_uring_t *u = of_ud(ud);
  if (u) fuse_init_reply_add(&u->init, iov, count, u->wanted2);
  return writev(fd, iov, count);
}

/* libfuse splices nothing on a custom-io session without these (spliced replies carry host data). */
static ssize_t hook_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *ud) {
  (void)ud;
  return splice(fdin, offin, fdout, offout, len, flags);
}

static const struct fuse_custom_io hooks = {
  .writev = hook_writev,
  .read = hook_read,
  .splice_receive = hook_splice,
  .splice_send = hook_splice,
};

fuse_uring_t *fuse_uring_install(struct fuse_session *se, fuse_uring_t *(*of_userdata)(void *), const char **why) {
  fuse_uring_t *u = calloc(1, sizeof *u);
  if (!u) { *why = "out of memory"; return NULL; }
  of_ud = of_userdata;
  if (fuse_session_custom_io(se, &hooks, fuse_session_fd(se)) != 0) {
    free(u);
    *why = "fuse_session_custom_io failed";
    return NULL;
  }
  return u;
}

void fuse_uring_want_flags2(fuse_uring_t *u, uint32_t bits) { u->wanted2 |= bits; }

int fuse_uring_negotiate(fuse_uring_t *u, size_t payload, unsigned entries, const char **why) {
  (void)u; (void)payload; (void)entries;
  *why = "qcow-mount's native addon was built without liburing (install liburing-dev, then rebuild it: npm rebuild qcow-mount)";
  return 0;
}
void fuse_uring_set_placement(fuse_uring_t *u, int placement) { (void)u; (void)placement; }
void fuse_uring_set_setup(fuse_uring_t *u, int setup) { (void)u; (void)setup; }
unsigned fuse_uring_possible_cpus(void) { return 1; }

/* No ring threads: no request is ever a ring entry. */
fuse_uring_ent_t *fuse_uring_current(void) { return NULL; }
char *fuse_uring_payload(fuse_uring_ent_t *e) { (void)e; return NULL; }
void fuse_uring_park(fuse_uring_ent_t *e) { (void)e; }
void fuse_uring_unpark(fuse_uring_ent_t *e) { (void)e; }
void fuse_uring_reply_begin(fuse_uring_ent_t *e) { (void)e; }
void fuse_uring_reply_end(fuse_uring_ent_t *e) { (void)e; }

uint64_t fuse_uring_requests(const fuse_uring_t *u) { (void)u; return 0; }
unsigned fuse_uring_queues(const fuse_uring_t *u) { (void)u; return 0; }
unsigned fuse_uring_entries(const fuse_uring_t *u) { (void)u; return 0; }
