/*
 * qcow-mount's native FUSE back-end: a libfuse 3 low-level session owned by worker threads.
 *
 * The bytes in C, the format in TypeScript. TypeScript gives the file tree at mount (immutable while
 * mounted) and publishes, per view and per L2 table, what it has translated: guest cluster -> host
 * offset in one of the host files, or zeros. A worker serves a read whose clusters are all published
 * by itself (host runs merged, spliced from the host file into /dev/fuse; zeros from a static page
 * run); anything else goes to JavaScript through a thread-safe function and is answered there.
 *
 * The map only ever goes from "unknown" to known (the image is immutable), so readers need no locks:
 * an entry or a table pointer seen is complete (release stores, acquire loads); one not seen yet
 * sends the read to JavaScript, which is always right.
 */
#define FUSE_USE_VERSION 314 /* >= 312: fuse_loop_cfg_* (with 34, max_idle_threads reads as 0) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuse-uring.h"
/* FUSE_DIRECT_IO_ALLOW_MMAP (protocol 7.39, kernel 6.6): bit 36 of the INIT flags = bit 4 of flags2. */
#define DIRECT_IO_ALLOW_MMAP_FLAG2 (1u << (36 - 32))
#include "inflate-cluster.h"
#include "sector-crypt.h"

/* Largest request. libfuse splices a reply only when its pipe holds the data plus one page per
 * segment and two more; a pipe cannot grow past pipe-max-size (1 MiB) without CAP_SYS_RESOURCE, and
 * libfuse's fallback then mallocs and copies per request (a quarter of the speed). 248 pages leave
 * room for replies of up to 5 segments (host runs and zero runs); longer ones are copied here. */
#define DEFAULT_MAX_WRITE (248u * 4096u)
#define ZERO_BYTES (1024u * 1024u)
#define MAX_FDS 64

/* Map entries: 0 unknown; else kind in bits 0-1, host file slot in bits 2-7, host offset (cluster
 * aligned, clusters are >= 512 bytes) above. A zlib-compressed cluster: the 512-byte sectors its
 * stream spans in bits 8-21 (at most 2^13), the stream's host offset in bits 22-63 (below 4 TiB). */
#define KIND_DATA 1u
#define KIND_ZERO 2u
#define KIND_ZLIB 3u
#define SLOT_SHIFT 2
#define SLOT_MASK 0x3fu
#define HOST_MASK (~(uint64_t)0x1ff)
#define ZSECT_SHIFT 8
#define ZSECT_MASK 0x3fffu
#define ZHOST_SHIFT 22
#define ZHOST_LIMIT ((uint64_t)1 << 42)

/* Zeros for replies: an anonymous read-only mapping nobody writes, so its pages (the kernel's zero
 * page) can be passed into a pipe by reference (vmsplice) and never change under a reply. */
static const char *zeros;

typedef struct {
  uint64_t size;
  uint32_t cluster_bits;
  uint32_t table_bits; /* clusters per published table: 1 << table_bits */
  uint64_t ntables;
  _Atomic(_Atomic uint64_t *) *tables;
  /* An encrypted view: its data clusters are decrypted here (IV from the host sector, or with
   * iv_guest from the sector in the view's L1 space, which starts iv_origin bytes before the view). */
  sector_crypt_t *crypt;
  int iv_guest;
  uint64_t iv_origin;
} view_t;

typedef struct {
  char *name;
  char *path; /* for -d log lines, in the compat back-end's words */
  uint64_t parent; /* ino */
  int is_dir;
  int view; /* -1: bytes or no map */
  uint64_t size;
  char *bytes; /* in-memory file (info.json), or NULL */
  uint64_t *children; /* inos */
  uint32_t nchildren;
  struct stat st;
} node_t;

typedef struct pending {
  fuse_req_t req;
  fuse_uring_ent_t *ent; /* the ring entry the request came in, or NULL (/dev/fuse) */
  uint64_t ino;
  uint64_t off;
  uint64_t size;
  uint32_t id;
} pending_t;

typedef struct session {
  struct fuse_session *se;
  char *mountpoint;
  pthread_t loop_thread;
  int loop_started;
  int loop_joined;
  _Atomic int loop_ended;
  int destroyed;
  unsigned threads;
  unsigned max_write;
  double cache_seconds;
  int debug;
  int splice;
  int direct_io; /* -o direct_io: files opened FOPEN_DIRECT_IO */
  /* -o fuse_uring: asked for; the hooks (when installed); what INIT settled. */
  int want_uring;
  unsigned uring_entries; /* per queue; 0: chosen from the CPU count */
  int uring_placement; /* FUSE_URING_ADAPTIVE, _PINNED, _FLOATING */
  fuse_uring_t *uring;
  const char *uring_problem; /* why the hooks could not be installed */

  node_t *nodes;
  uint64_t nnodes;
  view_t *views;
  uint32_t nviews;
  int fds[MAX_FDS];
  uint32_t nfds;
  struct statvfs stv;

  _Atomic uint64_t map_bytes;
  uint64_t map_limit;

  /* Reads waiting for JavaScript: slot table, guarded by the mutex (not on the native path). */
  pthread_mutex_t lock;
  pending_t **slots;
  uint32_t nslots;
  uint32_t *free_ids;
  uint32_t nfree;

  napi_threadsafe_function on_read;
  napi_threadsafe_function on_event;
  _Atomic uint64_t native_reads;
  _Atomic uint64_t js_reads;
  _Atomic uint64_t native_bytes;
  _Atomic uint64_t piped_reads; /* replies of many segments passed through a worker's own pipe */
} session_t;

/* ---------------------------------------------------------------- events to JavaScript */

typedef struct {
  char kind[8];
  char *text;
  int code;
  sem_t *done; /* posted once JavaScript has seen the event, when the sender waits for it */
} event_t;

static void emit_waiting(session_t *s, const char *kind, const char *text, int code, sem_t *done) {
  event_t *e = calloc(1, sizeof *e);
  if (!e) return;
  snprintf(e->kind, sizeof e->kind, "%s", kind);
  e->text = text ? strdup(text) : NULL;
  e->code = code;
  e->done = done;
  if (napi_call_threadsafe_function(s->on_event, e, napi_tsfn_nonblocking) != napi_ok) {
    free(e->text);
    free(e);
    if (done) sem_post(done);
  }
}

static void emit(session_t *s, const char *kind, const char *text, int code) {
  emit_waiting(s, kind, text, code, NULL);
}

static void debug_log(session_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void debug_log(session_t *s, const char *fmt, ...) {
  if (!s->debug) return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* -d: the line is written before the request is answered, so the log is in request order. */
  sem_t done;
  sem_init(&done, 0, 0);
  emit_waiting(s, "log", line, 0, &done);
  while (sem_wait(&done) != 0 && errno == EINTR) {
  }
  sem_destroy(&done);
}

/* ---------------------------------------------------------------- the file tree */

static node_t *node_of(session_t *s, fuse_ino_t ino) {
  if (ino < 1 || ino > s->nnodes) return NULL;
  return &s->nodes[ino - 1];
}

static void fill_entry(session_t *s, node_t *n, struct fuse_entry_param *e) {
  memset(e, 0, sizeof *e);
  e->ino = n->st.st_ino;
  e->attr = n->st;
  e->attr_timeout = s->cache_seconds;
  e->entry_timeout = s->cache_seconds;
}

/* A ring entry's payload: the kernel wants room for max(max_write, max_pages pages, 8 KiB). */
static size_t uring_payload(session_t *s) {
  size_t p = ((size_t)s->max_write + 4095) & ~(size_t)4095;
  return p < 8192 ? 8192 : p;
}

/* Entries per queue: more than the hand-offs to JavaScript in flight from one CPU (a parked entry holds
 * its queue's capacity), 8 where that costs 16 MiB of address space (2 CPUs, 992 KiB each), fewer
 * on big hosts so that all queues together map about 128 MiB; never under 2. Only pages a request
 * touches count in RSS (a 4 KiB read: one). */
static unsigned uring_entries(session_t *s) {
  if (s->uring_entries) return s->uring_entries;
  const unsigned cpus = fuse_uring_possible_cpus();
  size_t k = (128u << 20) / ((size_t)cpus * uring_payload(s));
  return k < 2 ? 2 : k > 8 ? 8 : (unsigned)k;
}

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  session_t *s = userdata;
  if (s->splice && (conn->capable & FUSE_CAP_SPLICE_WRITE)) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (!s->splice) conn->want &= ~FUSE_CAP_SPLICE_WRITE;
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_MOVE); /* splice reads cost ~40% of random IOPS */
  conn->max_write = s->max_write; /* libfuse derives max_pages from it */
  /* The event's text names the transport: "io_uring", or "dev: why" when it was asked for but not
   * negotiated; NULL when it was not asked for. */
  char transport[200];
  const char *text = NULL;
  if (s->want_uring) {
    const char *why = s->uring_problem ? s->uring_problem : "";
    if (s->uring && fuse_uring_negotiate(s->uring, uring_payload(s), uring_entries(s), &why)) {
      snprintf(transport, sizeof transport, "io_uring: %u queues of %u entries of %zu KiB", fuse_uring_queues(s->uring),
               fuse_uring_entries(s->uring), uring_payload(s) / 1024);
    } else {
      snprintf(transport, sizeof transport, "dev: %s", why);
    }
    text = transport;
  }
  emit(s, "init", text, (int)conn->proto_minor);
}

static void op_destroy(void *userdata) {}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  session_t *s = fuse_req_userdata(req);
  node_t *p = node_of(s, parent);
  if (!p) { fuse_reply_err(req, ENOENT); return; }
  if (!p->is_dir) { fuse_reply_err(req, ENOTDIR); return; }
  struct fuse_entry_param e;
  for (uint32_t i = 0; i < p->nchildren; i++) {
    node_t *c = node_of(s, p->children[i]);
    if (c && strcmp(c->name, name) == 0) {
      fill_entry(s, c, &e);
      debug_log(s, "getattr(%s) -> 0 [lookup]", c->path);
      fuse_reply_entry(req, &e);
      return;
    }
  }
  /* Negative entry, cached as long as the rest: the tree never changes. */
  memset(&e, 0, sizeof e);
  e.entry_timeout = s->cache_seconds;
  debug_log(s, "getattr(%s%s%s) -> ENOENT [lookup]", strcmp(p->path, "/") ? p->path : "", "/", name);
  fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  session_t *s = fuse_req_userdata(req);
  node_t *n = node_of(s, ino);
  if (n) debug_log(s, "getattr(%s) -> 0", n->path);
  if (!n) { fuse_reply_err(req, ENOENT); return; }
  fuse_reply_attr(req, &n->st, s->cache_seconds);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  fuse_reply_err(req, EROFS);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  session_t *s = fuse_req_userdata(req);
  node_t *n = node_of(s, ino);
  int err = 0;
  if (!n) err = ENOENT;
  else if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) err = EROFS;
  else if (n->is_dir) err = EISDIR;
  if (err) {
    if (n) debug_log(s, "open(%s, %d) -> %s", n->path, fi->flags, err == EROFS ? "EROFS" : err == EISDIR ? "EISDIR" : "ENOENT");
    fuse_reply_err(req, err);
    return;
  }
  debug_log(s, "open(%s, %d) -> 0 fh=%llu", n->path, fi->flags, (unsigned long long)ino);
  fi->fh = ino;
  fi->keep_cache = 1; /* nothing changes while mounted: keep the page cache across opens */
  fi->direct_io = s->direct_io;
  fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  session_t *s = fuse_req_userdata(req);
  node_t *n = node_of(s, ino);
  if (!n) { fuse_reply_err(req, ENOENT); return; }
  if (!n->is_dir) { fuse_reply_err(req, ENOTDIR); return; }
  fi->fh = ino;
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  fuse_reply_err(req, 0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  session_t *s = fuse_req_userdata(req);
  node_t *n = node_of(s, ino);
  if (!n) { fuse_reply_err(req, ENOENT); return; }
  if (!n->is_dir) { fuse_reply_err(req, ENOTDIR); return; }
  char *buf = malloc(size);
  if (!buf) { fuse_reply_err(req, ENOMEM); return; }
  size_t used = 0;
  /* Entries: 0 ".", 1 "..", 2.. children; an entry's offset is the index of the next one. */
  for (uint64_t i = (uint64_t)off; i < 2 + (uint64_t)n->nchildren; i++) {
    const char *name;
    struct stat st;
    if (i == 0) { name = "."; st = n->st; }
    else if (i == 1) { node_t *p = node_of(s, n->parent); name = ".."; st = p ? p->st : n->st; }
    else { node_t *c = node_of(s, n->children[i - 2]); name = c->name; st = c->st; }
    size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(i + 1));
    if (need > size - used) break;
    used += need;
  }
  debug_log(s, "readdir(%s, offset %lld) -> 0 [%zu bytes]", n->path, (long long)off, used);
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  session_t *s = fuse_req_userdata(req);
  fuse_reply_statfs(req, &s->stv);
}

static void op_erofs_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, dev_t rdev) { fuse_reply_err(req, EROFS); }
static void op_erofs_mkdir(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode) { fuse_reply_err(req, EROFS); }
static void op_erofs_unlink(fuse_req_t req, fuse_ino_t p, const char *name) { fuse_reply_err(req, EROFS); }
static void op_erofs_symlink(fuse_req_t req, const char *link, fuse_ino_t p, const char *name) { fuse_reply_err(req, EROFS); }
static void op_erofs_rename(fuse_req_t req, fuse_ino_t p, const char *name, fuse_ino_t np, const char *nn, unsigned int flags) { fuse_reply_err(req, EROFS); }
static void op_erofs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t np, const char *nn) { fuse_reply_err(req, EROFS); }
static void op_erofs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) { fuse_reply_err(req, EROFS); }
static void op_erofs_create(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, struct fuse_file_info *fi) { fuse_reply_err(req, EROFS); }
static void op_erofs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) { fuse_reply_err(req, EROFS); }
static void op_erofs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) { fuse_reply_err(req, EROFS); }

/* ---------------------------------------------------------------- reads */

static void to_js(session_t *s, fuse_req_t req, fuse_ino_t ino, uint64_t off, uint64_t size) {
  pending_t *p = malloc(sizeof *p);
  if (!p) { fuse_reply_err(req, ENOMEM); return; }
  p->req = req;
  p->ent = fuse_uring_current();
  p->ino = ino;
  p->off = off;
  p->size = size;
  pthread_mutex_lock(&s->lock);
  if (s->nfree == 0) {
    uint32_t grow = s->nslots ? s->nslots : 64;
    pending_t **slots = realloc(s->slots, sizeof *slots * (s->nslots + grow));
    uint32_t *free_ids = realloc(s->free_ids, sizeof *free_ids * (s->nslots + grow));
    if (!slots || !free_ids) {
      if (slots) s->slots = slots;
      if (free_ids) s->free_ids = free_ids;
      pthread_mutex_unlock(&s->lock);
      free(p);
      fuse_reply_err(req, ENOMEM);
      return;
    }
    s->slots = slots;
    s->free_ids = free_ids;
    for (uint32_t i = 0; i < grow; i++) {
      s->slots[s->nslots + i] = NULL;
      s->free_ids[s->nfree++] = s->nslots + grow - 1 - i;
    }
    s->nslots += grow;
  }
  p->id = s->free_ids[--s->nfree];
  s->slots[p->id] = p;
  pthread_mutex_unlock(&s->lock);
  atomic_fetch_add_explicit(&s->js_reads, 1, memory_order_relaxed);
  /* Parked before JavaScript can see it: its reply may come before this thread returns. */
  if (p->ent) fuse_uring_park(p->ent);
  if (napi_call_threadsafe_function(s->on_read, p, napi_tsfn_nonblocking) != napi_ok) {
    if (p->ent) fuse_uring_unpark(p->ent);
    pthread_mutex_lock(&s->lock);
    s->slots[p->id] = NULL;
    s->free_ids[s->nfree++] = p->id;
    pthread_mutex_unlock(&s->lock);
    free(p);
    fuse_reply_err(req, EIO);
  }
}

static size_t pipe_max = 1024 * 1024; /* /proc/sys/fs/pipe-max-size, read at load */
#define PAGE 4096u

/* A compressed cluster's segment of a reply (a fuse_buf with neither an fd nor memory). */
typedef struct {
  uint64_t host;
  uint32_t hlen; /* stream bytes: to the end of its last sector */
  uint32_t in; /* the segment's first byte inside the inflated cluster */
} zseg_t;

static _Thread_local char *tl_copy;
static _Thread_local struct fuse_bufvec *tl_vec;
static _Thread_local zseg_t *tl_zseg;
static _Thread_local size_t tl_vec_cap;

static struct fuse_bufvec *vec_for(size_t segments) {
  if (segments > tl_vec_cap) {
    free(tl_vec);
    free(tl_zseg);
    tl_vec = calloc(1, sizeof(struct fuse_bufvec) + segments * sizeof(struct fuse_buf));
    tl_zseg = calloc(segments, sizeof *tl_zseg);
    if (!tl_vec || !tl_zseg) {
      free(tl_vec);
      free(tl_zseg);
      tl_vec = NULL;
      tl_zseg = NULL;
    }
    tl_vec_cap = tl_vec ? segments : 0;
  }
  return tl_vec;
}

/* Each worker's own pipe for replies of many segments (closed when the worker ends). */
typedef struct {
  int r, w;
  size_t slots; /* pipe buffers it holds: one page each */
} seg_pipe_t;

static pthread_key_t seg_pipe_key;

static void seg_pipe_free(void *p) {
  seg_pipe_t *sp = p;
  close(sp->r);
  close(sp->w);
  free(sp);
}

static seg_pipe_t *seg_pipe(void) {
  seg_pipe_t *sp = pthread_getspecific(seg_pipe_key);
  if (sp) return sp->r >= 0 ? sp : NULL;
  sp = malloc(sizeof *sp);
  if (!sp) return NULL;
  int fds[2];
  sp->r = sp->w = -1;
  sp->slots = 0;
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
    int got = fcntl(fds[0], F_SETPIPE_SZ, (int)pipe_max);
    if (got >= (int)(64 * PAGE)) {
      sp->r = fds[0];
      sp->w = fds[1];
      sp->slots = (size_t)got / PAGE;
    } else {
      close(fds[0]);
      close(fds[1]);
    }
  }
  /* Remembered even when it failed: no pipe() per request on a system that refuses. */
  if (pthread_setspecific(seg_pipe_key, sp) != 0) {
    if (sp->r >= 0) { close(sp->r); close(sp->w); }
    free(sp);
    return NULL;
  }
  return sp->r >= 0 ? sp : NULL;
}

/* Empties the pipe after a failed fill: the next reply must find it empty. */
static void seg_pipe_drain(seg_pipe_t *sp) {
  char sink[16384];
  while (read(sp->r, sink, sizeof sink) > 0) {
  }
}

/* Pages a segment occupies in a pipe: splice and vmsplice pass page references, one per buffer. */
static size_t pages_spanned(uint64_t start, uint64_t len) {
  return (size_t)(((start & (PAGE - 1)) + len + PAGE - 1) / PAGE);
}

/* A reply of many segments in one pipe buffer: host runs spliced and zero runs vmspliced into this
 * worker's pipe, then answered with fuse_reply_data() of that pipe, which libfuse splices whole into
 * its own pipe (its size heuristic counts one buffer). -1 when it does not fit a pipe (the caller
 * copies), 0 when a host file read failed (JavaScript serves it), 1 when answered. */
/* Counted before the reply goes: a reader that has its bytes sees them counted. */
static void count_native(session_t *s, uint64_t size, int piped) {
  atomic_fetch_add_explicit(&s->native_reads, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->native_bytes, size, memory_order_relaxed);
  if (piped) atomic_fetch_add_explicit(&s->piped_reads, 1, memory_order_relaxed);
}

static int reply_from_pipe(session_t *s, fuse_req_t req, struct fuse_bufvec *bv, uint64_t size) {
  size_t slots = 0;
  for (size_t i = 0; i < bv->count; i++) {
    struct fuse_buf *b = &bv->buf[i];
    slots += pages_spanned((b->flags & FUSE_BUF_IS_FD) ? (uint64_t)b->pos : 0, b->size);
  }
  /* libfuse's pipe holds at least the data's pages plus the header's and two more. */
  if (slots > (size + PAGE - 1) / PAGE + 2) return -1;
  seg_pipe_t *sp = seg_pipe();
  if (!sp || slots > sp->slots) return -1;
  for (size_t i = 0; i < bv->count; i++) {
    struct fuse_buf *b = &bv->buf[i];
    size_t done = 0;
    while (done < b->size) {
      ssize_t r;
      if (b->flags & FUSE_BUF_IS_FD) {
        loff_t pos = b->pos + (off_t)done;
        r = splice(b->fd, &pos, sp->w, NULL, b->size - done, SPLICE_F_NONBLOCK);
      } else {
        struct iovec iov = { .iov_base = (void *)(zeros + done), .iov_len = b->size - done };
        r = vmsplice(sp->w, &iov, 1, SPLICE_F_NONBLOCK);
      }
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        /* An I/O error or a short file (JavaScript reads it and reports), or a full pipe. */
        seg_pipe_drain(sp);
        return 0;
      }
      done += (size_t)r;
    }
  }
  struct fuse_bufvec one = FUSE_BUFVEC_INIT(size);
  one.buf[0].flags = FUSE_BUF_IS_FD;
  one.buf[0].fd = sp->r;
  count_native(s, size, 1);
  fuse_reply_data(req, &one, 0);
  int left = 0;
  if (ioctl(sp->r, FIONREAD, &left) == 0 && left > 0) seg_pipe_drain(sp);
  return 1;
}

/* Serves [off, off + size) from the map; 0 when a cluster is not known (the caller hands it to JS). */
static int serve_mapped(session_t *s, fuse_req_t req, view_t *v, uint64_t off, uint64_t size) {
  const uint64_t cs = (uint64_t)1 << v->cluster_bits;
  const uint64_t tmask = ((uint64_t)1 << v->table_bits) - 1;
  size_t max_segments = (size_t)(size >> v->cluster_bits) + 2;
  struct fuse_bufvec *bv = vec_for(max_segments);
  if (!bv) return 0;
  size_t n = 0;
  int inflated = 0; /* a compressed cluster: the reply is built in memory */
  uint64_t pos = off, end = off + size;
  while (pos < end) {
    uint64_t c = pos >> v->cluster_bits;
    uint64_t t = c >> v->table_bits;
    if (t >= v->ntables) return 0;
    _Atomic uint64_t *table = atomic_load_explicit(&v->tables[t], memory_order_acquire);
    if (!table) return 0;
    uint64_t e = atomic_load_explicit(&table[c & tmask], memory_order_acquire);
    if (e == 0) return 0;
    uint64_t in = pos & (cs - 1);
    uint64_t len = cs - in < end - pos ? cs - in : end - pos;
    struct fuse_buf *last = n ? &bv->buf[n - 1] : NULL;
    if ((e & 3u) == KIND_ZLIB) {
      if (n == max_segments) return 0;
      uint64_t host = e >> ZHOST_SHIFT;
      tl_zseg[n] = (zseg_t){ .host = host, .hlen = (uint32_t)((((e >> ZSECT_SHIFT) & ZSECT_MASK) << 9) - (host & 511)), .in = (uint32_t)in };
      bv->buf[n++] = (struct fuse_buf){ .size = len, .fd = s->fds[(e >> SLOT_SHIFT) & SLOT_MASK] };
      inflated = 1;
    } else if ((e & 3u) == KIND_DATA) {
      int fd = s->fds[(e >> SLOT_SHIFT) & SLOT_MASK];
      uint64_t host = (e & HOST_MASK) + in;
      if (last && (last->flags & FUSE_BUF_IS_FD) && last->fd == fd && (uint64_t)last->pos + last->size == host) {
        last->size += len;
      } else {
        if (n == max_segments) return 0;
        bv->buf[n++] = (struct fuse_buf){ .size = len, .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, .fd = fd, .pos = (off_t)host };
      }
    } else {
      if (last && last->mem == zeros && last->size + len <= ZERO_BYTES) {
        last->size += len;
      } else {
        if (n == max_segments) return 0;
        bv->buf[n++] = (struct fuse_buf){ .size = len, .mem = (void *)zeros };
      }
    }
    pos += len;
  }
  bv->count = n;
  bv->idx = 0;
  bv->off = 0;
  /* Spliced replies (host data, two pages or more): a host file that shrank under the mount would
   * splice short (a silent EOF), so such a read goes to JavaScript, which reports it as EIO: one fstat
   * per host file the reply uses. Copied replies need none: a short pread sends them there too. */
  /* On a ring thread the reply is read straight into the ring entry's payload (a ring has no splice). */
  fuse_uring_ent_t *ring = fuse_uring_current();
  const int splices = !ring && !inflated && s->splice && size >= 2 * PAGE;
  int used_fd[MAX_FDS];
  uint64_t used_end[MAX_FDS];
  size_t used = 0;
  for (size_t i = 0; splices && i < n; i++) {
    if (!(bv->buf[i].flags & FUSE_BUF_IS_FD)) continue;
    uint64_t e = (uint64_t)bv->buf[i].pos + bv->buf[i].size;
    size_t k = 0;
    while (k < used && used_fd[k] != bv->buf[i].fd) k++;
    if (k == used) {
      used_fd[used] = bv->buf[i].fd;
      used_end[used++] = e;
    } else if (e > used_end[k]) used_end[k] = e;
  }
  for (size_t k = 0; k < used; k++) {
    struct stat st;
    if (fstat(used_fd[k], &st) != 0 || (uint64_t)st.st_size < used_end[k]) return 0;
  }
  /* libfuse's own test: a pipe of one page per segment plus two, and the data (and its header). */
  size_t pipe_need = PAGE * (n + 2) + 16 /* struct fuse_out_header */ + size;
  int piped = -1;
  if (splices && pipe_need <= pipe_max) {
    count_native(s, size, 0);
    fuse_reply_data(req, bv, 0);
  } else if (splices && (piped = reply_from_pipe(s, req, bv, size)) >= 0) {
    if (piped == 0) return 0;
  } else {
    /* Small replies, and replies of many segments: copy into this thread's buffer (libfuse's
     * fallback would malloc one per request). */
    if (!ring && !tl_copy) tl_copy = malloc(s->max_write);
    char *const out = ring ? fuse_uring_payload(ring) : tl_copy;
    if (!out || size > s->max_write) return 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
      struct fuse_buf *b = &bv->buf[i];
      if (b->flags & FUSE_BUF_IS_FD) {
        size_t got = 0;
        while (got < b->size) {
          ssize_t r = pread(b->fd, out + at + got, b->size - got, b->pos + (off_t)got);
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) return 0; /* an I/O error or a short file: JavaScript reads it and reports */
          got += (size_t)r;
        }
      } else if (b->mem == zeros) {
        memset(out + at, 0, b->size);
      } else {
        /* A whole cluster is inflated in place; part of one comes from this thread's last cluster. */
        zseg_t *z = &tl_zseg[i];
        if (z->in == 0 && b->size == cs) {
          if (inflate_cluster(b->fd, z->host, z->hlen, (unsigned char *)out + at, cs) != 0) return 0;
        } else {
          const unsigned char *cluster = inflated_cluster(b->fd, z->host, z->hlen, cs);
          if (!cluster) return 0; /* JavaScript inflates it again and reports what is wrong */
          memcpy(out + at, cluster + z->in, b->size);
        }
      }
      at += b->size;
    }
    count_native(s, size, 0);
    fuse_reply_buf(req, out, size);
  }
  return 1;
}

static _Thread_local unsigned char *tl_plain;

/* A read of an encrypted view: the whole sectors it touches are read from the host file and decrypted
 * on this thread, then copied out (never spliced: the host bytes are not the guest's). 0 when a cluster
 * is not known, or the host file or the cipher failed (JavaScript serves it and reports). */
static int serve_encrypted(session_t *s, fuse_req_t req, view_t *v, uint64_t off, uint64_t size) {
  const uint64_t cs = (uint64_t)1 << v->cluster_bits;
  const uint64_t tmask = ((uint64_t)1 << v->table_bits) - 1;
  const uint64_t start = off & ~(uint64_t)511, end = (off + size + 511) & ~(uint64_t)511;
  if (size > s->max_write) return 0;
  if (!tl_plain) tl_plain = malloc(s->max_write + 1024);
  if (!tl_plain) return 0;
  /* Whole sectors stay in the clusters the read touches: clusters are whole sectors. */
  for (uint64_t pos = start, len; pos < end; pos += len) {
    uint64_t e = 0, host = 0;
    len = 0;
    for (uint64_t at = pos; at < end; at = pos + len) {
      uint64_t c = at >> v->cluster_bits, t = c >> v->table_bits;
      _Atomic uint64_t *table = t < v->ntables ? atomic_load_explicit(&v->tables[t], memory_order_acquire) : NULL;
      uint64_t next = table ? atomic_load_explicit(&table[c & tmask], memory_order_acquire) : 0;
      if (next == 0 || (next & 3u) == KIND_ZLIB) return 0; /* compressed: never published here */
      uint64_t in = at & (cs - 1), n = cs - in < end - at ? cs - in : end - at;
      uint64_t next_host = (next & HOST_MASK) + in;
      /* One pread and one decrypt call for clusters that follow each other in the same host file. */
      if (len > 0 && !((next & 3u) == KIND_DATA && (e & 3u) == KIND_DATA && ((next ^ e) & (SLOT_MASK << SLOT_SHIFT)) == 0 && next_host == host + len)) break;
      if (len == 0) { e = next; host = next_host; }
      len += n;
      if ((e & 3u) != KIND_DATA) break;
    }
    unsigned char *dst = tl_plain + (pos - start);
    if ((e & 3u) != KIND_DATA) { memset(dst, 0, len); continue; }
    int fd = s->fds[(e >> SLOT_SHIFT) & SLOT_MASK];
    for (uint64_t got = 0; got < len;) {
      ssize_t r = pread(fd, dst + got, len - got, (off_t)(host + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return 0;
      got += (uint64_t)r;
    }
    if (sector_crypt_decrypt(v->crypt, dst, len, (v->iv_guest ? v->iv_origin + pos : host) / 512) != 0) return 0;
  }
  count_native(s, size, 0);
  fuse_reply_buf(req, (char *)tl_plain + (off - start), size);
  return 1;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  session_t *s = fuse_req_userdata(req);
  node_t *n = node_of(s, ino);
  if (!n || n->is_dir) { fuse_reply_err(req, n ? EISDIR : EBADF); return; }
  if (off < 0) { fuse_reply_err(req, EINVAL); return; }
  uint64_t len = (uint64_t)off >= n->size ? 0 : n->size - (uint64_t)off;
  if (len > size) len = size;
  if (len == 0) { fuse_reply_buf(req, NULL, 0); return; }
  if (s->debug) { to_js(s, req, ino, (uint64_t)off, len); return; } /* logged there, as in compat */
  if (n->bytes) { fuse_reply_buf(req, n->bytes + off, len); return; }
  if (n->view >= 0 && s->views[n->view].crypt && serve_encrypted(s, req, &s->views[n->view], (uint64_t)off, len)) return;
  if (n->view >= 0 && !s->views[n->view].crypt && serve_mapped(s, req, &s->views[n->view], (uint64_t)off, len)) return;
  to_js(s, req, ino, (uint64_t)off, len);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .destroy = op_destroy,
  .lookup = op_lookup,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .open = op_open,
  .read = op_read,
  .release = op_release,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .releasedir = op_releasedir,
  .statfs = op_statfs,
  .mknod = op_erofs_mknod,
  .mkdir = op_erofs_mkdir,
  .unlink = op_erofs_unlink,
  .rmdir = op_erofs_unlink,
  .symlink = op_erofs_symlink,
  .rename = op_erofs_rename,
  .link = op_erofs_link,
  .write = op_erofs_write,
  .create = op_erofs_create,
  .setxattr = op_erofs_setxattr,
  .removexattr = op_erofs_removexattr,
};

/* ---------------------------------------------------------------- the session thread */

static void *loop_main(void *arg) {
  session_t *s = arg;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  int res;
  if (!cfg) {
    res = -ENOMEM;
  } else {
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    fuse_loop_cfg_set_max_threads(cfg, s->threads);
    fuse_loop_cfg_set_idle_threads(cfg, s->threads); /* keep the workers: no thread per request */
    res = fuse_session_loop_mt(s->se, cfg);
    fuse_loop_cfg_destroy(cfg);
  }
  atomic_store(&s->loop_ended, 1);
  emit(s, "ended", NULL, res);
  return NULL;
}

/* ---------------------------------------------------------------- N-API glue */

static void module_once(void) {
  FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
  if (f) {
    unsigned long v;
    if (fscanf(f, "%lu", &v) == 1 && v >= 65536) pipe_max = v;
    fclose(f);
  }
  void *z = mmap(NULL, ZERO_BYTES, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  zeros = z == MAP_FAILED ? calloc(1, ZERO_BYTES) : z;
  pthread_key_create(&seg_pipe_key, seg_pipe_free);
}

#define CHECK(call)                                                              \
  do {                                                                           \
    if ((call) != napi_ok) {                                                     \
      napi_throw_error(env, NULL, "qcow_fuse3: " #call " failed");               \
      return NULL;                                                               \
    }                                                                            \
  } while (0)

static int get_prop(napi_env env, napi_value obj, const char *key, napi_value *out) {
  bool has = false;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has) return 0;
  if (napi_get_named_property(env, obj, key, out) != napi_ok) return 0;
  napi_valuetype t;
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
}

static double get_num(napi_env env, napi_value obj, const char *key, double dflt) {
  napi_value v;
  double d;
  if (!get_prop(env, obj, key, &v) || napi_get_value_double(env, v, &d) != napi_ok) return dflt;
  return d;
}

static char *get_str(napi_env env, napi_value obj, const char *key) {
  napi_value v;
  size_t len;
  if (!get_prop(env, obj, key, &v) || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (!s) return NULL;
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static void call_read(napi_env env, napi_value js_cb, void *context, void *data) {
  pending_t *p = data;
  if (!env) return; /* tearing down: the session is destroyed, the request dies with it */
  napi_value argv[4], undef;
  napi_create_uint32(env, p->id, &argv[0]);
  napi_create_double(env, (double)p->ino, &argv[1]);
  napi_create_double(env, (double)p->off, &argv[2]);
  napi_create_double(env, (double)p->size, &argv[3]);
  napi_get_undefined(env, &undef);
  napi_call_function(env, undef, js_cb, 4, argv, NULL);
}

static void call_event(napi_env env, napi_value js_cb, void *context, void *data) {
  event_t *e = data;
  if (env) {
    napi_value argv[3], undef;
    napi_create_string_utf8(env, e->kind, NAPI_AUTO_LENGTH, &argv[0]);
    if (e->text) napi_create_string_utf8(env, e->text, NAPI_AUTO_LENGTH, &argv[1]);
    else napi_get_null(env, &argv[1]);
    napi_create_int32(env, e->code, &argv[2]);
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, js_cb, 3, argv, NULL);
  }
  if (e->done) sem_post(e->done);
  free(e->text);
  free(e);
}

static void free_session(session_t *s) {
  if (!s) return;
  for (uint64_t i = 0; i < s->nnodes; i++) {
    free(s->nodes[i].name);
    free(s->nodes[i].path);
    free(s->nodes[i].bytes);
    free(s->nodes[i].children);
  }
  free(s->nodes);
  for (uint32_t i = 0; i < s->nviews; i++) {
    if (!s->views[i].tables) continue;
    for (uint64_t t = 0; t < s->views[i].ntables; t++) free((void *)atomic_load(&s->views[i].tables[t]));
    free((void *)s->views[i].tables);
    sector_crypt_free(s->views[i].crypt); /* zeroes the key */
  }
  free(s->views);
  for (uint32_t i = 0; i < s->nfds; i++) close(s->fds[i]);
  for (uint32_t i = 0; i < s->nslots; i++) free(s->slots[i]);
  free(s->slots);
  free(s->free_ids);
  free(s->mountpoint);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

static fuse_uring_t *uring_of(void *userdata) {
  return userdata ? ((session_t *)userdata)->uring : NULL;
}

static session_t *session_arg(napi_env env, napi_value v) {
  session_t *s = NULL;
  if (napi_get_value_external(env, v, (void **)&s) != napi_ok || !s) {
    napi_throw_type_error(env, NULL, "qcow_fuse3: not a session");
    return NULL;
  }
  if (s->destroyed) {
    napi_throw_error(env, NULL, "qcow_fuse3: session destroyed");
    return NULL;
  }
  return s;
}

static const char *load_tree(napi_env env, session_t *s, napi_value nodes, uint32_t uid, uint32_t gid) {
  uint32_t count;
  if (napi_get_array_length(env, nodes, &count) != napi_ok || count == 0) return "nodes must be a non-empty array";
  s->nodes = calloc(count, sizeof *s->nodes);
  if (!s->nodes) return "out of memory";
  s->nnodes = count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value o, v;
    node_t *n = &s->nodes[i];
    napi_get_element(env, nodes, i, &o);
    n->name = get_str(env, o, "name");
    n->path = get_str(env, o, "path");
    if (!n->name || !n->path) return "node without a name or path";
    n->parent = (uint64_t)get_num(env, o, "parent", 1);
    if (n->parent < 1 || n->parent > count) return "node parent out of range";
    n->is_dir = get_num(env, o, "dir", 0) != 0;
    n->view = (int)get_num(env, o, "view", -1);
    n->size = (uint64_t)get_num(env, o, "size", 0);
    double mtime_ms = get_num(env, o, "mtimeMs", 0);
    if (get_prop(env, o, "bytes", &v)) {
      void *data;
      size_t len;
      if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return "node bytes must be a Buffer";
      n->bytes = malloc(len ? len : 1);
      if (!n->bytes) return "out of memory";
      memcpy(n->bytes, data, len);
      n->size = len;
      n->view = -1;
    }
    struct stat *st = &n->st;
    st->st_ino = i + 1;
    st->st_mode = n->is_dir ? (S_IFDIR | 0555) : (S_IFREG | 0444);
    st->st_nlink = 1;
    st->st_uid = uid;
    st->st_gid = gid;
    st->st_size = n->is_dir ? 4096 : (off_t)n->size;
    /* What stdio, Python and coreutils size their reads by: without a page cache, each read is a request. */
    st->st_blksize = s->direct_io ? 1024 * 1024 : 128 * 1024;
    st->st_blocks = (st->st_size + 511) / 512;
    st->st_mtim.tv_sec = (time_t)(mtime_ms / 1000);
    st->st_mtim.tv_nsec = (long)((mtime_ms - (double)st->st_mtim.tv_sec * 1000) * 1e6);
    if (st->st_mtim.tv_nsec < 0) st->st_mtim.tv_nsec = 0;
    st->st_atim = st->st_mtim;
    st->st_ctim = st->st_mtim;
  }
  /* Children, in the order given; directory link counts as on disk: 2 + subfolders. */
  for (uint32_t i = 0; i < count; i++) if (s->nodes[i].is_dir) s->nodes[i].st.st_nlink = 2;
  for (uint32_t i = 1; i < count; i++) {
    node_t *p = &s->nodes[s->nodes[i].parent - 1];
    if (!p->is_dir) return "node parent is not a folder";
    uint64_t *ch = realloc(p->children, sizeof *ch * (p->nchildren + 1));
    if (!ch) return "out of memory";
    p->children = ch;
    p->children[p->nchildren++] = i + 1;
    if (s->nodes[i].is_dir) p->st.st_nlink++;
  }
  if (!s->nodes[0].is_dir) return "node 1 (the root) must be a folder";
  return NULL;
}

static const char *load_views(napi_env env, session_t *s, napi_value views) {
  uint32_t count;
  if (napi_get_array_length(env, views, &count) != napi_ok) return "views must be an array";
  s->views = calloc(count ? count : 1, sizeof *s->views);
  if (!s->views) return "out of memory";
  s->nviews = count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value o;
    view_t *v = &s->views[i];
    napi_get_element(env, views, i, &o);
    v->size = (uint64_t)get_num(env, o, "size", 0);
    v->cluster_bits = (uint32_t)get_num(env, o, "clusterBits", 16);
    v->table_bits = (uint32_t)get_num(env, o, "tableBits", 13);
    if (v->cluster_bits < 9 || v->cluster_bits > 21 || v->table_bits > 24) return "view geometry out of range";
    uint64_t span_bits = v->cluster_bits + v->table_bits;
    v->ntables = span_bits >= 63 ? 1 : (v->size + ((uint64_t)1 << span_bits) - 1) >> span_bits;
    /* A directory past 4M tables (a claimed size far beyond any L1 table) is not mapped at all. */
    if (v->ntables > (1u << 22)) v->ntables = 1u << 22;
    v->tables = calloc(v->ntables ? v->ntables : 1, sizeof *v->tables);
    if (!v->tables) return "out of memory";
    napi_value crypt;
    if (get_prop(env, o, "crypt", &crypt)) {
      const char *problem;
      if (!(v->crypt = sector_crypt_from_js(env, crypt, &problem))) return problem;
      napi_value guest;
      bool b = false;
      if (get_prop(env, crypt, "ivGuest", &guest) && napi_get_value_bool(env, guest, &b) != napi_ok) return "crypt ivGuest must be a boolean";
      v->iv_guest = b;
      v->iv_origin = (uint64_t)get_num(env, crypt, "ivOrigin", 0);
    }
  }
  return NULL;
}

/* mount(options) -> session. options: mountPoint, fuseOptions (the -o string), threads, maxWrite,
 * uid, gid, cacheSeconds, debug, mapLimitBytes, nodes [{name, parent, dir, size, mtimeMs, bytes?,
 * view?}] in inode order (the root first), views [{size, clusterBits, tableBits, crypt?}] (crypt:
 * sector-crypt.h, plus ivGuest and ivOrigin), fds [host files],
 * statfs {bsize, frsize, blocks, files, namemax}, onRead(id, ino, offset, length), onEvent(kind, text, code). */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) { napi_throw_type_error(env, NULL, "mount(options)"); return NULL; }
  napi_value o = argv[0];
  session_t *s = calloc(1, sizeof *s);
  if (!s) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  pthread_mutex_init(&s->lock, NULL);
  const char *problem = NULL;
  char *fuse_options = NULL;

  s->mountpoint = get_str(env, o, "mountPoint");
  fuse_options = get_str(env, o, "fuseOptions");
  s->threads = (unsigned)get_num(env, o, "threads", 3);
  if (s->threads < 1) s->threads = 1;
  if (s->threads > 16) s->threads = 16;
  s->max_write = (unsigned)get_num(env, o, "maxWrite", DEFAULT_MAX_WRITE);
  if (s->max_write < 4096) s->max_write = 4096;
  s->cache_seconds = get_num(env, o, "cacheSeconds", 3600);
  s->debug = get_num(env, o, "debug", 0) != 0;
  s->splice = get_num(env, o, "splice", 1) != 0;
  s->direct_io = get_num(env, o, "directIo", 0) != 0;
  s->want_uring = get_num(env, o, "fuseUring", 0) != 0;
  s->uring_entries = (unsigned)get_num(env, o, "uringEntries", 0);
  s->uring_placement = (int)get_num(env, o, "uringPlacement", FUSE_URING_ADAPTIVE);
  if (s->uring_entries > 64) s->uring_entries = 64;
  s->map_limit = (uint64_t)get_num(env, o, "mapLimitBytes", 64.0 * 1024 * 1024);
  uint32_t uid = (uint32_t)get_num(env, o, "uid", getuid());
  uint32_t gid = (uint32_t)get_num(env, o, "gid", getgid());

  if (!s->mountpoint || !fuse_options) problem = "mountPoint and fuseOptions are required";
  if (!problem) {
    if (!get_prop(env, o, "nodes", &v)) problem = "nodes are required";
    else problem = load_tree(env, s, v, uid, gid);
  }
  if (!problem) {
    if (!get_prop(env, o, "views", &v)) problem = "views are required";
    else problem = load_views(env, s, v);
  }
  if (!problem && get_prop(env, o, "fds", &v)) {
    uint32_t count;
    napi_get_array_length(env, v, &count);
    if (count > MAX_FDS) problem = "too many host files";
    for (uint32_t i = 0; !problem && i < count; i++) {
      napi_value e;
      int32_t fd;
      napi_get_element(env, v, i, &e);
      if (napi_get_value_int32(env, e, &fd) != napi_ok) { problem = "fds must be numbers"; break; }
      int own = fcntl(fd, F_DUPFD_CLOEXEC, 3); /* our own descriptor: JavaScript may close its copy */
      if (own < 0) { problem = "cannot duplicate a host file descriptor"; break; }
      s->fds[s->nfds++] = own;
    }
  }
  for (uint64_t i = 0; !problem && i < s->nnodes; i++) {
    if (s->nodes[i].view >= (int)s->nviews) problem = "node view out of range";
  }
  if (!problem && get_prop(env, o, "statfs", &v)) {
    s->stv.f_bsize = (unsigned long)get_num(env, v, "bsize", 4096);
    s->stv.f_frsize = (unsigned long)get_num(env, v, "frsize", 4096);
    s->stv.f_blocks = (fsblkcnt_t)get_num(env, v, "blocks", 0);
    s->stv.f_files = (fsfilcnt_t)get_num(env, v, "files", (double)s->nnodes);
    s->stv.f_namemax = (unsigned long)get_num(env, v, "namemax", 255);
  }
  napi_value on_read, on_event, name;
  if (!problem && (!get_prop(env, o, "onRead", &on_read) || !get_prop(env, o, "onEvent", &on_event))) problem = "onRead and onEvent are required";
  if (problem) {
    free(fuse_options);
    free_session(s);
    napi_throw_error(env, NULL, problem);
    return NULL;
  }
  napi_create_string_utf8(env, "qcow-fuse3-read", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, on_read, NULL, name, 0, 1, NULL, NULL, s, call_read, &s->on_read) != napi_ok ||
      napi_create_threadsafe_function(env, on_event, NULL, name, 0, 1, NULL, NULL, s, call_event, &s->on_event) != napi_ok) {
    free(fuse_options);
    free_session(s);
    napi_throw_error(env, NULL, "cannot create thread-safe functions");
    return NULL;
  }

  char *args_v[] = { "qcow-mount", "-o", fuse_options, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, args_v);
  s->se = fuse_session_new(&args, &ops, sizeof ops, s);
  free(fuse_options);
  if (!s->se) problem = "fuse_session_new failed (bad options?)";
  else if (fuse_session_mount(s->se, s->mountpoint) != 0) {
    problem = "fuse_session_mount failed";
    fuse_session_destroy(s->se);
    s->se = NULL;
  }
  if (!problem && (s->want_uring || s->direct_io)) {
    /* Hooks on the session's /dev/fuse I/O, before its loop reads INIT (they keep splice on). */
    s->uring = fuse_uring_install(s->se, uring_of, &s->uring_problem);
    if (s->uring) fuse_uring_set_placement(s->uring, s->uring_placement);
    if (s->uring) fuse_uring_set_setup(s->uring, (int)get_num(env, o, "uringSetup", 0));
    /* Direct-I/O files may still be mapped MAP_SHARED (the kernel keeps those pages coherent itself
     * when the server says so, in the INIT reply the hooks amend, with or without liburing); on a
     * kernel that does not offer it, ENODEV. */
    if (s->uring && s->direct_io) fuse_uring_want_flags2(s->uring, DIRECT_IO_ALLOW_MMAP_FLAG2);
  }
  if (!problem) {
    /* Signals stay with Node's main thread: the workers block them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (pthread_create(&s->loop_thread, NULL, loop_main, s) != 0) problem = "cannot start the FUSE thread";
    else s->loop_started = 1;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (problem) {
      fuse_session_unmount(s->se);
      fuse_session_destroy(s->se);
      s->se = NULL;
    }
  }
  if (problem) {
    napi_release_threadsafe_function(s->on_read, napi_tsfn_abort);
    napi_release_threadsafe_function(s->on_event, napi_tsfn_abort);
    free_session(s);
    napi_throw_error(env, NULL, problem);
    return NULL;
  }
  napi_value handle;
  CHECK(napi_create_external(env, s, NULL, NULL, &handle));
  return handle;
}

/* reply(session, id, buffer | null, result): result >= 0 bytes of buffer, < 0 a -errno. */
static napi_value js_reply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  uint32_t id;
  int64_t result;
  CHECK(napi_get_value_uint32(env, argv[1], &id));
  CHECK(napi_get_value_int64(env, argv[3], &result));
  pthread_mutex_lock(&s->lock);
  pending_t *p = id < s->nslots ? s->slots[id] : NULL;
  if (p) {
    s->slots[id] = NULL;
    s->free_ids[s->nfree++] = id;
  }
  pthread_mutex_unlock(&s->lock);
  if (!p) { napi_throw_error(env, NULL, "qcow_fuse3: no such pending read"); return NULL; }
  /* A request that came through a ring: the reply fills its entry, which goes back to its ring. */
  if (p->ent) fuse_uring_reply_begin(p->ent);
  if (result < 0) {
    fuse_reply_err(p->req, (int)-result);
  } else {
    void *data = NULL;
    size_t len = 0;
    napi_valuetype t;
    napi_typeof(env, argv[2], &t);
    if (t != napi_null && t != napi_undefined) napi_get_buffer_info(env, argv[2], &data, &len);
    if ((uint64_t)result > len) result = (int64_t)len;
    if ((uint64_t)result > p->size) result = (int64_t)p->size;
    fuse_reply_buf(p->req, data, (size_t)result);
  }
  if (p->ent) fuse_uring_reply_end(p->ent);
  free(p);
  return NULL;
}

/* publish(session, view, firstCluster, Float64Array entries, slot, zlibLengths?) -> bool: each entry
 * -1 unknown, -2 zeros, else the host offset (cluster aligned) of the cluster in host file `slot`; or,
 * where zlibLengths[i] > 0, the host offset of a zlib stream of that many bytes (to its last sector's end). */
static napi_value js_publish(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  uint32_t vi, slot;
  double first_d;
  CHECK(napi_get_value_uint32(env, argv[1], &vi));
  CHECK(napi_get_value_double(env, argv[2], &first_d));
  CHECK(napi_get_value_uint32(env, argv[4], &slot));
  napi_typedarray_type type;
  size_t count;
  void *data;
  CHECK(napi_get_typedarray_info(env, argv[3], &type, &count, &data, NULL, NULL));
  const double *zlens = NULL;
  napi_valuetype zt = napi_undefined;
  if (argc >= 6) napi_typeof(env, argv[5], &zt);
  if (zt == napi_object) {
    napi_typedarray_type ztype;
    size_t zcount;
    void *zdata;
    CHECK(napi_get_typedarray_info(env, argv[5], &ztype, &zcount, &zdata, NULL, NULL));
    if (ztype != napi_float64_array || zcount != count) {
      napi_throw_range_error(env, NULL, "qcow_fuse3: publish's zlib lengths do not match its entries");
      return NULL;
    }
    zlens = zdata;
  }
  if (type != napi_float64_array || vi >= s->nviews || slot >= s->nfds || first_d < 0) {
    napi_throw_range_error(env, NULL, "qcow_fuse3: publish arguments out of range");
    return NULL;
  }
  view_t *v = &s->views[vi];
  const double *entries = data;
  uint64_t first = (uint64_t)first_d;
  uint64_t per_table = (uint64_t)1 << v->table_bits;
  int ok = 1;
  for (size_t i = 0; i < count; i++) {
    double d = entries[i];
    if (d == -1) continue;
    uint64_t c = first + i;
    uint64_t t = c >> v->table_bits;
    if (t >= v->ntables) { ok = 0; break; }
    _Atomic uint64_t *table = atomic_load_explicit(&v->tables[t], memory_order_acquire);
    if (!table) {
      uint64_t bytes = per_table * sizeof(uint64_t);
      if (atomic_load(&s->map_bytes) + bytes > s->map_limit) { ok = 0; break; }
      _Atomic uint64_t *fresh = calloc(per_table, sizeof(uint64_t));
      if (!fresh) { ok = 0; break; }
      _Atomic uint64_t *expected = NULL;
      if (atomic_compare_exchange_strong_explicit(&v->tables[t], &expected, fresh, memory_order_acq_rel, memory_order_acquire)) {
        atomic_fetch_add(&s->map_bytes, bytes);
        table = fresh;
      } else {
        free((void *)fresh);
        table = expected;
      }
    }
    uint64_t e;
    double zlen = zlens ? zlens[i] : 0;
    if (zlen > 0) {
      /* zlib: d is the stream's host offset, zlen its bytes to the end of its last sector. */
      if (!(d >= 0 && d < (double)ZHOST_LIMIT && zlen <= 2.0 * (double)((uint64_t)1 << v->cluster_bits) + 512)) continue;
      uint64_t host = (uint64_t)d, sectors = ((host & 511) + (uint64_t)zlen + 511) >> 9;
      if (sectors == 0 || sectors > ZSECT_MASK || (sectors << 9) - (host & 511) != (uint64_t)zlen) continue;
      e = (host << ZHOST_SHIFT) | (sectors << ZSECT_SHIFT) | ((uint64_t)slot << SLOT_SHIFT) | KIND_ZLIB;
    } else if (d == -2) e = KIND_ZERO;
    else if (d >= 0 && d < 9007199254740992.0 && ((uint64_t)d & ~HOST_MASK) == 0) e = ((uint64_t)d & HOST_MASK) | ((uint64_t)slot << SLOT_SHIFT) | KIND_DATA;
    else continue;
    atomic_store_explicit(&table[c & (per_table - 1)], e, memory_order_release);
  }
  napi_get_boolean(env, ok, &out);
  return out;
}

/* stats(session) -> {nativeReads, jsReads, nativeBytes, mapBytes} */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  napi_create_object(env, &out);
  napi_create_double(env, (double)atomic_load(&s->native_reads), &v);
  napi_set_named_property(env, out, "nativeReads", v);
  napi_create_double(env, (double)atomic_load(&s->js_reads), &v);
  napi_set_named_property(env, out, "jsReads", v);
  napi_create_double(env, (double)atomic_load(&s->native_bytes), &v);
  napi_set_named_property(env, out, "nativeBytes", v);
  napi_create_double(env, (double)atomic_load(&s->piped_reads), &v);
  napi_set_named_property(env, out, "pipedReads", v);
  napi_create_double(env, (double)atomic_load(&s->map_bytes), &v);
  napi_set_named_property(env, out, "mapBytes", v);
  napi_create_double(env, (double)fuse_uring_requests(s->uring), &v);
  napi_set_named_property(env, out, "ringRequests", v);
  return out;
}

/* destroy(session): after the "ended" event (the kernel ended the session: unmounted), it joins the
 * FUSE thread and frees the session. Called while the session still runs, it detaches the mount and
 * answers nothing more, but leaves the threads (and the memory they use) to the exiting process. */
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  s->destroyed = 1;
  if (!atomic_load(&s->loop_ended)) {
    fuse_session_exit(s->se);
    fuse_session_unmount(s->se); /* lazy: the kernel ends the session once nothing is open there */
    napi_unref_threadsafe_function(env, s->on_read);
    napi_unref_threadsafe_function(env, s->on_event);
    return NULL;
  }
  pthread_join(s->loop_thread, NULL);
  s->loop_joined = 1;
  /* Reads still waiting for JavaScript are answered with EIO before the channel goes. */
  pthread_mutex_lock(&s->lock);
  for (uint32_t i = 0; i < s->nslots; i++) {
    if (s->slots[i]) {
      if (s->slots[i]->ent) fuse_uring_reply_begin(s->slots[i]->ent);
      fuse_reply_err(s->slots[i]->req, EIO);
      if (s->slots[i]->ent) fuse_uring_reply_end(s->slots[i]->ent);
      free(s->slots[i]);
      s->slots[i] = NULL;
    }
  }
  pthread_mutex_unlock(&s->lock);
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  /* No thread can call them any more: the workers are gone. */
  napi_release_threadsafe_function(s->on_read, napi_tsfn_abort);
  napi_release_threadsafe_function(s->on_event, napi_tsfn_abort);
  return NULL;
}

/* unref(session): the mount no longer keeps the event loop alive (the daemon keeps itself alive). */
static napi_value js_unref(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  napi_unref_threadsafe_function(env, s->on_read);
  napi_unref_threadsafe_function(env, s->on_event);
  return NULL;
}

NAPI_MODULE_INIT() {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, module_once);
  napi_property_descriptor props[] = {
    { "mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL },
    { "reply", NULL, js_reply, NULL, NULL, NULL, napi_default, NULL },
    { "publish", NULL, js_publish, NULL, NULL, NULL, napi_default, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL },
    { "destroy", NULL, js_destroy, NULL, NULL, NULL, napi_default, NULL },
    { "unref", NULL, js_unref, NULL, NULL, NULL, napi_default, NULL },
    { "cipherAvailable", NULL, sector_crypt_js_available, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_value v;
  napi_create_uint32(env, DEFAULT_MAX_WRITE, &v);
  napi_set_named_property(env, exports, "defaultMaxWrite", v);
  return exports;
}
