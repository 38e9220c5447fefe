/* Can libfuse 3.14 (Debian's; it knows nothing of io_uring) serve FUSE over io_uring? A probe for
 * the integration plan in bench/NOTES.md ("FUSE over io_uring, measured (issue 14)").
 *
 * minfuse.c's file system (one file "f", reads pread from a raw file, fuse_reply_buf), with:
 * - fuse_session_custom_io() installed on the mounted session's fd: its read hook notes the kernel's
 *   INIT (does it offer FUSE_OVER_IO_URING?), its writev hook adds FUSE_OVER_IO_URING to libfuse's
 *   INIT reply and, for requests that came through a ring, copies the reply into the ring entry
 *   instead of writing /dev/fuse;
 * - one ring per possible CPU (a thread pinned there, SQE128, --entries K entries) whose requests are
 *   re-assembled into one buffer (header + fixed argument + payload) and handed to
 *   fuse_session_process_buf(), so libfuse's own dispatch and fuse_reply_*() serve them;
 * - libfuse's own loop (one thread) still reading /dev/fuse: INIT, forgets, interrupts.
 * Replies here are synchronous (made on the ring thread); an asynchronous reply (qcow-mount's hand-off
 * to JavaScript) would have to find its entry by `unique` and have the ring's thread commit it.
 *   gcc -O2 -pthread -o /tmp/minfuse-customio scripts/bench/minfuse-customio.c $(pkg-config --cflags --libs fuse3) -luring
 *   /tmp/minfuse-customio RAWFILE MOUNTPOINT [--entries K]   (root; enable_uring=Y before mounting) */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuse-uring.h"
#define PAYLOAD (1 << 20)

struct ent {
  struct uring_req_header hdr;
  char *payload;
  struct iovec iov[2];
  uint64_t unique;
  int replied;
};

static int img_fd, dev_fd, n_entries = 2;
static off_t img_size;
static struct fuse_session *se;
static uint64_t init_unique;
static int kernel_offers, init_done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static _Thread_local struct ent *cur; /* the ring entry this thread is serving */
static _Thread_local char *tl_buf;
static uint64_t n_ring;

/* --- the file system: minfuse.c's, except that a ring request's read lands in its entry's payload --- */
static void st_of(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st); st->st_ino = ino;
  if (ino == 1) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; }
  else { st->st_mode = S_IFREG | 0444; st->st_nlink = 1; st->st_size = img_size; }
}
static void op_init(void *u, struct fuse_conn_info *c) { c->max_write = 248 * 4096; c->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_MOVE | FUSE_CAP_SPLICE_WRITE); }
static void op_lookup(fuse_req_t req, fuse_ino_t p, const char *name) {
  if (p != 1 || strcmp(name, "f")) { fuse_reply_err(req, ENOENT); return; }
  struct fuse_entry_param e; memset(&e, 0, sizeof e); e.ino = 2; e.attr_timeout = e.entry_timeout = 86400; st_of(2, &e.attr);
  fuse_reply_entry(req, &e);
}
static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { struct stat st; st_of(ino, &st); fuse_reply_attr(req, &st, 86400); }
static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { fi->keep_cache = 1; fuse_reply_open(req, fi); }
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  if (!tl_buf) tl_buf = malloc(PAYLOAD);
  char *dst = cur ? cur->payload : tl_buf; /* straight into the ring's buffer: no copy in the hook */
  ssize_t r = pread(img_fd, dst, size, off);
  if (r < 0) { fuse_reply_err(req, errno); return; }
  fuse_reply_buf(req, dst, r);
}
static const struct fuse_lowlevel_ops ops = { .init = op_init, .lookup = op_lookup, .getattr = op_getattr, .open = op_open, .read = op_read };

/* --- the custom I/O hooks --- */
static ssize_t hook_read(int fd, void *buf, size_t len, void *ud) {
  ssize_t n = read(fd, buf, len);
  const struct fuse_in_header *ih = buf;
  if (n >= (ssize_t)(sizeof *ih + sizeof(struct fuse_init_in)) && ih->opcode == FUSE_INIT) {
    const struct fuse_init_in *ii = (const void *)(ih + 1);
    init_unique = ih->unique;
    kernel_offers = (ii->flags & FUSE_INIT_EXT) && (ii->flags2 & URING_FLAG2);
  }
  return n;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *ud) {
  struct fuse_out_header *oh = iov[0].iov_base; /* libfuse puts the header alone in iov[0] */
  if (cur && oh->unique == cur->unique) {
    size_t body = 0;
    for (int i = 1; i < count; i++) {
      if ((char *)iov[i].iov_base != cur->payload + body) memmove(cur->payload + body, iov[i].iov_base, iov[i].iov_len);
      body += iov[i].iov_len;
    }
    memcpy(cur->hdr.in_out, oh, sizeof *oh);
    cur->hdr.ent.payload_sz = body;
    cur->replied = 1;
    return sizeof *oh + body;
  }
  if (init_unique && oh->unique == init_unique && count > 1 && oh->error == 0) {
    struct fuse_init_out *o = iov[1].iov_base;
    if (kernel_offers) { o->flags |= FUSE_INIT_EXT; o->flags2 |= URING_FLAG2; }
    ssize_t r = writev(fd, iov, count);
    pthread_mutex_lock(&mu); init_done = r < 0 ? -1 : 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
    return r;
  }
  return writev(fd, iov, count);
}

/* --- the rings --- */
static void *ring_loop(void *p) {
  int qid = (int)(intptr_t)p;
  cpu_set_t cpus; CPU_ZERO(&cpus); CPU_SET(qid, &cpus);
  pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
  struct io_uring ring;
  struct io_uring_params prm = { .flags = IORING_SETUP_SQE128 };
  if (io_uring_queue_init_params(2 * n_entries, &ring, &prm)) { perror("io_uring_queue_init"); exit(1); }
  struct ent *ents = calloc(n_entries, sizeof *ents);
  for (int i = 0; i < n_entries; i++) {
    if (posix_memalign((void **)&ents[i].payload, 4096, PAYLOAD)) exit(1);
    ents[i].iov[0] = (struct iovec){ &ents[i].hdr, sizeof ents[i].hdr };
    ents[i].iov[1] = (struct iovec){ ents[i].payload, PAYLOAD };
    uring_prep_cmd(&ring, dev_fd, URING_CMD_REGISTER, qid, &ents[i].hdr, ents[i].iov, &ents[i]);
  }
  char *req_buf = malloc(PAYLOAD + 4096);
  for (;;) {
    struct io_uring_cqe *cqe;
    if (io_uring_submit_and_wait(&ring, 1) < 0 && errno != EINTR) break;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      struct ent *e = (void *)(uintptr_t)cqe->user_data;
      if (cqe->res < 0) {
        if (cqe->res != -ENOTCONN && cqe->res != -ECANCELED) fprintf(stderr, "minfuse-customio: queue %d: %s\n", qid, strerror(-cqe->res));
        return NULL;
      }
      /* libfuse wants the request as /dev/fuse gives it: header, fixed argument, rest. */
      const struct fuse_in_header *ih = (const void *)e->hdr.in_out;
      uint32_t rest = e->hdr.ent.payload_sz, fixed = ih->len - sizeof *ih - rest;
      memcpy(req_buf, ih, sizeof *ih);
      memcpy(req_buf + sizeof *ih, e->hdr.op_in, fixed);
      memcpy(req_buf + sizeof *ih + fixed, e->payload, rest);
      struct fuse_buf fb = { .size = ih->len, .mem = req_buf };
      e->unique = ih->unique;
      e->replied = 0;
      cur = e;
      fuse_session_process_buf(se, &fb);
      cur = NULL;
      __atomic_fetch_add(&n_ring, 1, __ATOMIC_RELAXED);
      if (!e->replied) { fprintf(stderr, "minfuse-customio: op %u got no synchronous reply\n", ((struct fuse_in_header *)req_buf)->opcode); exit(1); }
      uring_prep_cmd(&ring, dev_fd, URING_CMD_COMMIT_AND_FETCH, qid, &e->hdr, e->iov, e);
    }
    io_uring_cq_advance(&ring, seen);
  }
  return NULL;
}

static void *dev_loop(void *p) {
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 0); fuse_loop_cfg_set_max_threads(cfg, 1); fuse_loop_cfg_set_idle_threads(cfg, 1);
  fuse_session_loop_mt(se, cfg);
  fprintf(stderr, "via ring: %llu requests\n", (unsigned long long)__atomic_load_n(&n_ring, __ATOMIC_RELAXED));
  exit(0);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s RAWFILE MOUNTPOINT [--entries K]\n", argv[0]); return 2; }
  if (argc > 4 && !strcmp(argv[3], "--entries")) n_entries = atoi(argv[4]);
  img_fd = open(argv[1], O_RDONLY); struct stat st; fstat(img_fd, &st); img_size = st.st_size;
  char *a[] = { argv[0], "-o", "ro,default_permissions,fsname=minfuse-customio" };
  struct fuse_args args = FUSE_ARGS_INIT(3, a);
  se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_session_mount(se, argv[2])) return 1;
  dev_fd = fuse_session_fd(se);
  static const struct fuse_custom_io io = { .read = hook_read, .writev = hook_writev };
  if (fuse_session_custom_io(se, &io, dev_fd)) { fprintf(stderr, "fuse_session_custom_io failed\n"); return 1; }
  pthread_t t;
  pthread_create(&t, NULL, dev_loop, NULL);
  pthread_mutex_lock(&mu);
  while (!init_done) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  fprintf(stderr, "kernel offers io_uring: %s\n", kernel_offers ? "yes" : "no");
  if (kernel_offers) {
    FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
    char s[64] = "0"; if (f) { if (!fgets(s, sizeof s, f)) strcpy(s, "0"); fclose(f); }
    char *dash = strrchr(s, '-');
    int nq = atoi(dash ? dash + 1 : s) + 1;
    for (int q = 0; q < nq; q++) { pthread_t r; pthread_create(&r, NULL, ring_loop, (void *)(intptr_t)q); pthread_detach(r); }
  }
  fprintf(stderr, "ready\n");
  pthread_join(t, NULL);
  return 0;
}
