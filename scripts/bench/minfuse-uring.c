/* FUSE over io_uring against classic /dev/fuse reads, on the same minimal server (issue 14).
 *
 * A read-only FUSE server without libfuse: one file "f" whose reads are pread from a raw file, with
 * minfuse.c's choices (max_write and max_pages 248 pages, copy replies, bdi read_ahead_kb raised after
 * mounting). Two transports on the same request handler:
 *   --dev N    N threads, the first on the mount's fd, the others on clones of it (FUSE_DEV_IOC_CLONE),
 *              read() + writev().
 *   --uring    FUSE_OVER_IO_URING negotiated at INIT; one queue per possible CPU, served by a thread
 *              pinned to that CPU with its own io_uring (SQE128), --entries K buffers per queue,
 *              REGISTER then COMMIT_AND_FETCH. A thread still reads /dev/fuse: forgets and
 *              interrupts never go through the ring.
 * Needs root (mount(2) of "fuse" with fd=N) and, for --uring, /sys/module/fuse/parameters/enable_uring
 * set to Y before mounting. Stays in the foreground; prints "ready" on stderr once the mount answers;
 * `umount MOUNTPOINT` (or SIGTERM/SIGINT) ends it; SIGUSR1 prints the request counters on stderr.
 *   gcc -O2 -pthread -o /tmp/minfuse-uring scripts/bench/minfuse-uring.c -luring
 *   /tmp/minfuse-uring RAWFILE MOUNTPOINT --dev 2 | --uring [--entries K] [--defer] [--nopin] [--pin-offset N] [--dual] [--adaptive] [--ra KB]
 * liburing (Debian's 2.3, liburing-dev) only sets up the rings; the FUSE uAPI for io_uring is in
 * fuse-uring.h beside this file. */
#define _GNU_SOURCE
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuse-uring.h"

#define MAX_PAGES 248
#define MAX_WRITE (MAX_PAGES * 4096)
/* A /dev/fuse read must offer room for the biggest WRITE: header + fuse_write_in + max_write. */
#define DEV_BUF (MAX_WRITE + 8192)

static int img_fd, dev_fd;
static off_t img_size;
static const char *mnt;
static volatile int stopping;
static uint64_t n_req, n_ring, n_read, n_read_bytes; /* updated with relaxed atomics */

static void add(uint64_t *c, uint64_t v) { __atomic_fetch_add(c, v, __ATOMIC_RELAXED); }

static void die(const char *what) { fprintf(stderr, "minfuse-uring: %s: %s\n", what, strerror(errno)); exit(1); }

static void attr_of(uint64_t ino, struct fuse_attr *a) {
  memset(a, 0, sizeof *a);
  a->ino = ino;
  a->blksize = 4096;
  if (ino == FUSE_ROOT_ID) { a->mode = S_IFDIR | 0755; a->nlink = 2; }
  else { a->mode = S_IFREG | 0444; a->nlink = 1; a->size = img_size; a->blocks = (img_size + 511) / 512; }
}

/* Size of the fixed argument each opcode we serve sends first (what io_uring puts in op_in). LOOKUP
 * has none: its name is the payload. */
static size_t op_arg_size(uint32_t op) {
  switch (op) {
  case FUSE_GETATTR: return sizeof(struct fuse_getattr_in);
  case FUSE_OPEN: case FUSE_OPENDIR: return sizeof(struct fuse_open_in);
  case FUSE_READ: case FUSE_READDIR: return sizeof(struct fuse_read_in);
  case FUSE_FLUSH: return sizeof(struct fuse_flush_in);
  case FUSE_RELEASE: case FUSE_RELEASEDIR: return sizeof(struct fuse_release_in);
  case FUSE_FORGET: return sizeof(struct fuse_forget_in);
  case FUSE_BATCH_FORGET: return sizeof(struct fuse_batch_forget_in);
  case FUSE_INTERRUPT: return sizeof(struct fuse_interrupt_in);
  default: return 0;
  }
}

static size_t add_dirent(char *out, size_t room, uint64_t ino, uint64_t off, uint32_t type, const char *name) {
  size_t len = strlen(name), rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + len);
  if (rec > room) return 0;
  struct fuse_dirent *d = (struct fuse_dirent *)out;
  d->ino = ino; d->off = off; d->namelen = len; d->type = type;
  memcpy(d->name, name, len);
  memset(d->name + len, 0, rec - FUSE_NAME_OFFSET - len);
  return rec;
}

/* Serves one request. `arg` is the opcode's fixed argument, `rest` what follows it (LOOKUP's name).
 * The reply body goes to `out` (room for MAX_WRITE bytes). Returns the body's length, -errno for an
 * error reply, or 1 << 30 when the request takes no reply (forgets, interrupts). */
#define NO_REPLY (1 << 30)
static long handle(const struct fuse_in_header *ih, const void *arg, const char *rest, char *out) {
  add(&n_req, 1);
  switch (ih->opcode) {
  case FUSE_READ: {
    const struct fuse_read_in *r = arg;
    size_t size = r->size > MAX_WRITE ? MAX_WRITE : r->size;
    ssize_t n = pread(img_fd, out, size, r->offset);
    if (n < 0) return -errno;
    add(&n_read, 1); add(&n_read_bytes, n);
    return n;
  }
  case FUSE_LOOKUP: {
    if (ih->nodeid != FUSE_ROOT_ID || strcmp(rest, "f")) return -ENOENT;
    struct fuse_entry_out *e = (void *)out;
    memset(e, 0, sizeof *e);
    e->nodeid = 2; e->entry_valid = e->attr_valid = 86400;
    attr_of(2, &e->attr);
    return sizeof *e;
  }
  case FUSE_GETATTR: {
    struct fuse_attr_out *a = (void *)out;
    memset(a, 0, sizeof *a);
    a->attr_valid = 86400;
    attr_of(ih->nodeid, &a->attr);
    return sizeof *a;
  }
  case FUSE_OPEN: case FUSE_OPENDIR: {
    struct fuse_open_out *o = (void *)out;
    memset(o, 0, sizeof *o);
    if (ih->opcode == FUSE_OPEN) o->open_flags = FOPEN_KEEP_CACHE; /* as minfuse.c's keep_cache */
    return sizeof *o;
  }
  case FUSE_READDIR: {
    const struct fuse_read_in *r = arg;
    size_t room = r->size > MAX_WRITE ? MAX_WRITE : r->size, len = 0, n;
    static const char *names[] = { ".", "..", "f" };
    for (uint64_t i = r->offset; i < 3; i++) {
      n = add_dirent(out + len, room - len, i == 2 ? 2 : 1, i + 1, i == 2 ? DT_REG : DT_DIR, names[i]);
      if (!n) break;
      len += n;
    }
    return len;
  }
  case FUSE_STATFS: {
    struct fuse_statfs_out *s = (void *)out;
    memset(s, 0, sizeof *s);
    s->st.blocks = (img_size + 4095) / 4096; s->st.bsize = s->st.frsize = 4096;
    s->st.files = 2; s->st.namelen = 255;
    return sizeof *s;
  }
  case FUSE_FLUSH: case FUSE_RELEASE: case FUSE_RELEASEDIR: case FUSE_DESTROY:
    return 0;
  case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_INTERRUPT:
    return NO_REPLY;
  default:
    return -ENOSYS;
  }
}

/* --- classic transport: read() a request, writev() the reply --- */
static void *dev_loop(void *p) {
  int fd = (int)(intptr_t)p;
  char *in = malloc(DEV_BUF), *out = malloc(MAX_WRITE);
  for (;;) {
    ssize_t n = read(fd, in, DEV_BUF);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue; /* ENOENT: interrupted request */
      if (errno != ENODEV) fprintf(stderr, "minfuse-uring: read /dev/fuse: %s\n", strerror(errno));
      return NULL; /* ENODEV: unmounted */
    }
    const struct fuse_in_header *ih = (void *)in;
    const char *arg = in + sizeof *ih;
    long r = handle(ih, arg, arg + op_arg_size(ih->opcode), out);
    if (r == NO_REPLY) continue;
    struct fuse_out_header oh = { .unique = ih->unique, .error = r < 0 ? r : 0 };
    oh.len = sizeof oh + (r > 0 ? r : 0);
    struct iovec iov[2] = { { &oh, sizeof oh }, { out, r > 0 ? r : 0 } };
    if (writev(fd, iov, r > 0 ? 2 : 1) < 0 && errno != ENOENT) /* ENOENT: the request was interrupted */
      fprintf(stderr, "minfuse-uring: reply to op %u: %s\n", ih->opcode, strerror(errno));
  }
}

static int clone_dev(void) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("open /dev/fuse (clone)");
  uint32_t master = dev_fd;
  if (ioctl(fd, FUSE_DEV_IOC_CLONE, &master)) die("FUSE_DEV_IOC_CLONE");
  return fd;
}

/* --- io_uring transport --- */
struct ent {
  struct uring_req_header hdr; /* iov[0] */
  char *payload;               /* iov[1], MAX_WRITE bytes (the kernel asks max(max_write, max_pages pages)) */
  struct iovec iov[2];
};
static int n_entries = 2, defer_taskrun, pin = 1, pin_offset, dual, adaptive;
static int nq, ready_queues;
static pthread_mutex_t ready_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cv = PTHREAD_COND_INITIALIZER;

static void *uring_loop(void *p) {
  int t = (int)(intptr_t)p, qid = t % nq; /* with --dual, threads nq..2nq-1 serve the queues again */
  cpu_set_t cpus;
  int on_cpu = (qid + pin_offset + t / nq) % nq;
  CPU_ZERO(&cpus); CPU_SET(on_cpu, &cpus);
  /* The kernel picks the queue by the CPU the reading task runs on: serving it from that CPU keeps
   * the hand-off local (--nopin lets the scheduler move the thread, to see what locality costs a
   * single sequential reader, whose queue's server then shares its CPU; --pin-offset 1 serves each
   * queue from the next CPU instead, so that reader and server run side by side; --dual gives each
   * queue a second thread, pinned to the next CPU, with entries of its own; --adaptive moves the
   * thread to the next CPU while it serves big reads and back for small ones). */
  if (pin && pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus)) fprintf(stderr, "minfuse-uring: pin to CPU %d failed\n", qid);
  struct io_uring ring;
  struct io_uring_params prm = { .flags = IORING_SETUP_SQE128 };
  if (defer_taskrun) prm.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int rc = io_uring_queue_init_params(2 * n_entries, &ring, &prm);
  if (rc) { errno = -rc; die("io_uring_queue_init"); }
  struct ent *ents = calloc(n_entries, sizeof *ents);
  for (int i = 0; i < n_entries; i++) {
    struct ent *e = &ents[i];
    if (posix_memalign((void **)&e->payload, 4096, MAX_WRITE)) die("payload buffer");
    e->iov[0] = (struct iovec){ &e->hdr, sizeof e->hdr };
    e->iov[1] = (struct iovec){ e->payload, MAX_WRITE };
    uring_prep_cmd(&ring, dev_fd, URING_CMD_REGISTER, qid, &e->hdr, e->iov, e);
  }
  rc = io_uring_submit(&ring);
  if (rc != n_entries) { errno = rc < 0 ? -rc : EIO; die("REGISTER submit"); }
  /* A REGISTER completes only when a request arrives, so there is no completion to wait for: the
   * submission returning without error is as close to "registered" as userspace can see. */
  pthread_mutex_lock(&ready_mu); ready_queues++; pthread_cond_broadcast(&ready_cv); pthread_mutex_unlock(&ready_mu);
  for (;;) {
    struct io_uring_cqe *cqe;
    rc = io_uring_submit_and_wait(&ring, 1);
    if (rc < 0 && rc != -EINTR) { errno = -rc; die("io_uring_submit_and_wait"); }
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      struct ent *e = (void *)(uintptr_t)cqe->user_data;
      if (cqe->res < 0) {
        /* -ENOTCONN/-ECANCELED at unmount; anything else is a setup error worth showing. */
        if (cqe->res != -ENOTCONN && cqe->res != -ECANCELED && !stopping)
          fprintf(stderr, "minfuse-uring: queue %d: command failed: %s\n", qid, strerror(-cqe->res));
        io_uring_cq_advance(&ring, seen);
        io_uring_queue_exit(&ring);
        return NULL;
      }
      const struct fuse_in_header *ih = (void *)e->hdr.in_out;
      long r = handle(ih, e->hdr.op_in, e->payload, e->payload);
      add(&n_ring, 1);
      if (adaptive && ih->opcode == FUSE_READ) {
        /* Big reads (readahead of a sequential reader) are served from the other CPU, so the reader
         * and its server run side by side; small ones from the queue's own CPU. */
        uint32_t size = ((const struct fuse_read_in *)e->hdr.op_in)->size;
        int want = size >= 256 * 1024 ? (qid + 1) % nq : size <= 16 * 1024 ? qid : on_cpu;
        if (want != on_cpu) {
          CPU_ZERO(&cpus); CPU_SET(want, &cpus);
          if (!pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus)) on_cpu = want;
        }
      }
      struct fuse_out_header *oh = (void *)e->hdr.in_out;
      uint64_t unique = ih->unique;
      int body = r > 0 && r != NO_REPLY ? (int)r : 0;
      oh->unique = unique; /* the reply header overwrites the request's, in place */
      oh->error = r < 0 ? r : 0;
      oh->len = sizeof *oh + body;
      e->hdr.ent.payload_sz = body;
      uring_prep_cmd(&ring, dev_fd, URING_CMD_COMMIT_AND_FETCH, qid, &e->hdr, e->iov, e);
    }
    io_uring_cq_advance(&ring, seen);
  }
}

/* The number of possible CPUs (num_possible_cpus() in the kernel): "0-1" -> 2. */
static int possible_cpus(void) {
  FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
  int last = 0;
  char s[64] = "";
  if (f && fgets(s, sizeof s, f)) {
    char *c = strrchr(s, '-'), *comma = strrchr(s, ',');
    if (comma && (!c || comma > c)) c = comma;
    last = atoi(c ? c + 1 : s);
  }
  if (f) fclose(f);
  return last + 1;
}

static void raise_readahead(int kb) {
  struct stat st;
  if (stat(mnt, &st)) die("stat mount point");
  char path[96];
  snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev), minor(st.st_dev));
  FILE *f = fopen(path, "w");
  if (!f || fprintf(f, "%d\n", kb) < 0 || fclose(f)) fprintf(stderr, "minfuse-uring: cannot raise %s: %s\n", path, strerror(errno));
}

static void *signal_loop(void *p) {
  sigset_t *set = p;
  for (;;) {
    int sig;
    if (sigwait(set, &sig)) continue;
    if (sig == SIGUSR1) {
      fprintf(stderr, "stats requests=%llu via_ring=%llu reads=%llu read_bytes=%llu\n", (unsigned long long)__atomic_load_n(&n_req, __ATOMIC_RELAXED),
              (unsigned long long)__atomic_load_n(&n_ring, __ATOMIC_RELAXED),
              (unsigned long long)__atomic_load_n(&n_read, __ATOMIC_RELAXED), (unsigned long long)__atomic_load_n(&n_read_bytes, __ATOMIC_RELAXED));
      continue;
    }
    stopping = 1;
    if (umount2(mnt, MNT_DETACH)) fprintf(stderr, "minfuse-uring: umount %s: %s\n", mnt, strerror(errno));
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: %s RAWFILE MOUNTPOINT --dev N | --uring [--entries K] [--defer] [--nopin] [--pin-offset N] [--dual] [--adaptive] [--ra KB]\n", argv[0]); return 2; }
  int dev_threads = 0, uring = 0, ra_kb = 1024;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--dev") && i + 1 < argc) dev_threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--uring")) uring = 1;
    else if (!strcmp(argv[i], "--entries") && i + 1 < argc) n_entries = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--defer")) defer_taskrun = 1;
    else if (!strcmp(argv[i], "--nopin")) pin = 0;
    else if (!strcmp(argv[i], "--dual")) dual = 1;
    else if (!strcmp(argv[i], "--adaptive")) adaptive = 1;
    else if (!strcmp(argv[i], "--pin-offset") && i + 1 < argc) pin_offset = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--ra") && i + 1 < argc) ra_kb = atoi(argv[++i]);
    else { fprintf(stderr, "minfuse-uring: unknown argument %s\n", argv[i]); return 2; }
  }
  if (uring == !!dev_threads || n_entries < 1) { fprintf(stderr, "minfuse-uring: give one of --dev N (N >= 1) and --uring\n"); return 2; }
  mnt = argv[2];
  img_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (img_fd < 0 || fstat(img_fd, &st)) die(argv[1]);
  img_size = st.st_size;

  /* Signals go to one thread, so the workers' blocking calls are never interrupted. */
  static sigset_t set;
  sigemptyset(&set); sigaddset(&set, SIGINT); sigaddset(&set, SIGTERM); sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  dev_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (dev_fd < 0) die("open /dev/fuse");
  char opts[160];
  snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions", dev_fd);
  if (mount("minfuse-uring", mnt, "fuse.minfuse-uring", MS_RDONLY | MS_NOSUID | MS_NODEV, opts)) die("mount");

  /* INIT comes first on /dev/fuse, whatever the transport. */
  char *buf = malloc(DEV_BUF);
  ssize_t n = read(dev_fd, buf, DEV_BUF);
  if (n < 0) die("read INIT");
  const struct fuse_in_header *ih = (void *)buf;
  const struct fuse_init_in *ii = (void *)(buf + sizeof *ih);
  if (ih->opcode != FUSE_INIT || ii->major != 7) { fprintf(stderr, "minfuse-uring: expected INIT 7.x, got op %u\n", ih->opcode); return 1; }
  int kernel_has_uring = (ii->flags & FUSE_INIT_EXT) && (ii->flags2 & URING_FLAG2);
  fprintf(stderr, "kernel FUSE 7.%u, offers io_uring: %s\n", ii->minor, kernel_has_uring ? "yes" : "no (enable_uring=N, or too old)");
  if (uring && !kernel_has_uring) { umount2(mnt, MNT_DETACH); fprintf(stderr, "minfuse-uring: the kernel does not offer FUSE_OVER_IO_URING\n"); return 1; }
  struct { struct fuse_out_header oh; struct fuse_init_out io; } rep;
  memset(&rep, 0, sizeof rep);
  rep.oh.len = sizeof rep; rep.oh.unique = ih->unique;
  rep.io.major = 7;
  rep.io.minor = URING_PROTO_MINOR;
  rep.io.max_readahead = ii->max_readahead;
  /* What libfuse 3.14 asks for a read-only server like minfuse.c that matters for reads: async reads
   * (several readahead requests in flight), big requests. */
  uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS | FUSE_AUTO_INVAL_DATA | FUSE_INIT_EXT;
  rep.io.flags = ii->flags & want;
  rep.io.flags2 = uring ? URING_FLAG2 : 0;
  rep.io.max_write = MAX_WRITE;
  rep.io.max_pages = MAX_PAGES;
  rep.io.time_gran = 1;
  if (write(dev_fd, &rep, sizeof rep) != sizeof rep) die("reply INIT");

  pthread_t sig_t;
  pthread_create(&sig_t, NULL, signal_loop, &set);
  int nt = uring ? 1 : dev_threads;
  pthread_t *dev_t = calloc(nt, sizeof *dev_t);
  if (uring) {
    nq = possible_cpus(); /* the kernel makes one queue per possible CPU and waits for all */
    int nthreads = nq * (dual ? 2 : 1);
    for (int q = 0; q < nthreads; q++) {
      pthread_t t;
      pthread_create(&t, NULL, uring_loop, (void *)(intptr_t)q);
      pthread_detach(t);
    }
    pthread_mutex_lock(&ready_mu);
    while (ready_queues < nthreads) pthread_cond_wait(&ready_cv, &ready_mu);
    pthread_mutex_unlock(&ready_mu);
    pthread_create(&dev_t[0], NULL, dev_loop, (void *)(intptr_t)dev_fd);
  } else {
    for (int i = 0; i < nt; i++) pthread_create(&dev_t[i], NULL, dev_loop, (void *)(intptr_t)(i ? clone_dev() : dev_fd));
  }
  raise_readahead(ra_kb); /* stat() of the mount point is its first request: the transport must be up */
  fprintf(stderr, "ready %s pid %d\n", uring ? "uring" : "dev", getpid());
  for (int i = 0; i < nt; i++) pthread_join(dev_t[i], NULL); /* they end with ENODEV at unmount */
  return 0;
}
