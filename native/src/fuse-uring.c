/*
 * FUSE over io_uring for the native back-end: see fuse-uring.h. The numbers behind each choice are in
 * bench/NOTES.md ("FUSE over io_uring, measured" and "..., built").
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "fuse-uring.h"
#include "fuse-init.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The uAPI of FUSE over io_uring (protocol 7.42, kernel 6.14+): Debian's <linux/fuse.h> is 7.38. */
#define URING_FLAG2 (1u << (41 - 32)) /* FUSE_OVER_IO_URING: bit 41 of the flags = bit 9 of flags2 */
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2
struct uring_ent_in_out { uint64_t flags, commit_id; uint32_t payload_sz, padding; uint64_t reserved; };
/* iov[0] of an entry: the request's fuse_in_header (the reply's fuse_out_header, in place), the
 * opcode's fixed argument, the entry's bookkeeping. The rest of a request, and a reply's body: iov[1]. */
struct uring_req_header { char in_out[128]; char op_in[128]; struct uring_ent_in_out ent; };
struct uring_cmd_req { uint64_t flags, commit_id; uint16_t qid; uint8_t padding[6]; }; /* in sqe->cmd */

/* Reads of this size or more are served from the next CPU, of this size or less from the queue's own
 * (minfuse-uring --adaptive): the kernel queues a request on the reader's CPU, so a sequential reader
 * and its queue's thread would take turns on one CPU, while random readers gain from staying local. */
#define BIG_READ (256u * 1024u)
#define SMALL_READ (16u * 1024u)
#define EVENTFD_TAG 1u /* user_data of the eventfd read; entries are pointers, never 1 */

struct fuse_uring_ent {
  struct uring_req_header hdr; /* iov[0] */
  char *payload;               /* iov[1] */
  struct iovec iov[2];
  uint64_t unique;
  struct queue *q;
  int replied, parked;
  fuse_uring_ent_t *next_back;
};

typedef struct queue {
  fuse_uring_t *u;
  int qid;
  struct io_uring ring;
  int ring_ok;
  int efd;
  uint64_t efd_val;
  fuse_uring_ent_t *ents;
  pthread_mutex_t mu;
  fuse_uring_ent_t *back; /* filled by another thread, to commit */
} queue_t;

struct fuse_uring {
  struct fuse_session *se;
  int fd;
  fuse_init_offer_t init;
  int offered, negotiated, started;
  uint32_t wanted2; /* other flags2 bits to ask for where offered */
  unsigned nq, entries;
  int placement, setup;
  size_t payload;
  queue_t *queues;
  _Atomic uint64_t requests;
  char why[160];
};

static fuse_uring_t *(*of_ud)(void *);
static _Thread_local fuse_uring_ent_t *tl_cur;

/* ---------------------------------------------------------------- custom I/O hooks */

static ssize_t hook_read(int fd, void *buf, size_t len, void *ud) {
  ssize_t n = read(fd, buf, len);
  fuse_uring_t *u = of_ud(ud);
  if (u) {
    fuse_init_note(&u->init, buf, n);
    /* The kernel offers it only while enable_uring is Y: the flag itself is the probe. */
    u->offered = (u->init.offered2 & URING_FLAG2) != 0;
  }
  return n;
}

/* A reply for ring entry `e`: header and body into the entry (a body already in its payload, as
 * serve_mapped makes it on a ring thread, stays where it is). */
static ssize_t fill_entry(fuse_uring_t *u, fuse_uring_ent_t *e, const struct iovec *iov, int count) {
  struct fuse_out_header oh;
  memcpy(&oh, iov[0].iov_base, sizeof oh);
  size_t body = iov[0].iov_len - sizeof oh; /* libfuse puts the header alone in iov[0]; be general */
  if (body) memmove(e->payload, (char *)iov[0].iov_base + sizeof oh, body);
  for (int i = 1; i < count; i++) {
    if (body + iov[i].iov_len > u->payload) { oh.error = -EIO; body = 0; break; }
    if ((char *)iov[i].iov_base != e->payload + body) memmove(e->payload + body, iov[i].iov_base, iov[i].iov_len);
    body += iov[i].iov_len;
  }
  oh.len = (uint32_t)(sizeof oh + body);
  memcpy(e->hdr.in_out, &oh, sizeof oh);
  e->hdr.ent.payload_sz = (uint32_t)body;
  e->replied = 1;
  return (ssize_t)oh.len;
}

static void start_queues(fuse_uring_t *u);

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *ud) {
  fuse_uring_t *u = of_ud(ud);
  const struct fuse_out_header *oh = iov[0].iov_base;
  fuse_uring_ent_t *e = tl_cur;
  if (u && e && iov[0].iov_len >= sizeof *oh && oh->unique == e->unique) return fill_entry(u, e, iov, count);
  const int ring = u && u->negotiated && !u->started;
  if (u && fuse_init_reply_add(&u->init, iov, count, u->wanted2 | (ring ? URING_FLAG2 : 0))) {
    ssize_t r = writev(fd, iov, count);
    if (r >= 0 && ring) start_queues(u);
    return r;
  }
  return writev(fd, iov, count);
}

/* libfuse splices nothing on a custom-io session without these; the classic path relies on spliced
 * replies (host data straight from the host file), so they are plain splice calls. */
static ssize_t hook_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *ud) {
  return splice(fdin, offin, fdout, offout, len, flags);
}

static ssize_t hook_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags, void *ud) {
  fuse_uring_t *u = of_ud(ud);
  fuse_uring_ent_t *e = tl_cur;
  if (!u || !e) return splice(fdin, offin, fdout, offout, len, flags);
  /* A ring request answered through libfuse's pipe (serve_mapped does not do that on a ring thread,
   * but nothing else must reach /dev/fuse with a ring request's unique): read it into the entry. */
  struct fuse_out_header oh;
  size_t got = 0;
  while (got < len) {
    char *dst = got < sizeof oh ? (char *)&oh + got : e->payload + (got - sizeof oh);
    size_t want = got < sizeof oh ? sizeof oh - got : len - got;
    if (got >= sizeof oh && len - sizeof oh > u->payload) { errno = EIO; return -1; }
    ssize_t r = read(fdin, dst, want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { if (r == 0) errno = EIO; return -1; }
    got += (size_t)r;
  }
  struct iovec iov = { &oh, sizeof oh };
  fill_entry(u, e, &iov, 1);
  e->hdr.ent.payload_sz = (uint32_t)(len - sizeof oh);
  oh.len = (uint32_t)len;
  memcpy(e->hdr.in_out, &oh, sizeof oh);
  return (ssize_t)len;
}

static const struct fuse_custom_io hooks = {
  .writev = hook_writev,
  .read = hook_read,
  .splice_receive = hook_splice_receive,
  .splice_send = hook_splice_send,
};

fuse_uring_t *fuse_uring_install(struct fuse_session *se, fuse_uring_t *(*of_userdata)(void *), const char **why) {
  fuse_uring_t *u = calloc(1, sizeof *u);
  if (!u) { *why = "out of memory"; return NULL; }
  u->se = se;
  u->fd = fuse_session_fd(se);
  of_ud = of_userdata;
  /* The session keeps the fd it mounted: the hooks only wrap what is done with it. */
  if (fuse_session_custom_io(se, &hooks, u->fd) != 0) {
    free(u);
    *why = "fuse_session_custom_io failed";
    return NULL;
  }
  return u;
}

void fuse_uring_want_flags2(fuse_uring_t *u, uint32_t bits) {
  u->wanted2 |= bits;
}

/* ---------------------------------------------------------------- rings */

/* The number of possible CPUs (the kernel's nr_cpu_ids): it makes one queue per possible CPU and
 * holds requests until every queue has an entry. "0-1" -> 2, "0-3,8-11" -> 12. */
unsigned fuse_uring_possible_cpus(void) {
  FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
  char s[256] = "";
  unsigned last = 0;
  if (f && fgets(s, sizeof s, f)) {
    char *c = strrchr(s, '-'), *comma = strrchr(s, ',');
    if (comma && (!c || comma > c)) c = comma;
    last = (unsigned)atoi(c ? c + 1 : s);
  }
  if (f) fclose(f);
  return last + 1;
}

static void free_queues(fuse_uring_t *u) {
  if (!u->queues) return;
  for (unsigned q = 0; q < u->nq; q++) {
    queue_t *qu = &u->queues[q];
    if (qu->ring_ok) io_uring_queue_exit(&qu->ring);
    if (qu->efd >= 0) close(qu->efd);
    for (unsigned i = 0; qu->ents && i < u->entries; i++)
      if (qu->ents[i].payload) munmap(qu->ents[i].payload, u->payload);
    free(qu->ents);
    pthread_mutex_destroy(&qu->mu);
  }
  free(u->queues);
  u->queues = NULL;
}

int fuse_uring_negotiate(fuse_uring_t *u, size_t payload, unsigned entries, const char **why) {
  if (!u->offered) {
    *why = "the kernel did not offer FUSE over io_uring";
    return 0;
  }
  u->nq = fuse_uring_possible_cpus();
  u->entries = entries < 1 ? 1 : entries;
  u->payload = (payload + 4095) & ~(size_t)4095;
  u->queues = calloc(u->nq, sizeof *u->queues);
  if (!u->queues) { *why = "out of memory"; return 0; }
  for (unsigned q = 0; q < u->nq; q++) {
    queue_t *qu = &u->queues[q];
    qu->u = u;
    qu->qid = (int)q;
    qu->efd = -1;
    pthread_mutex_init(&qu->mu, NULL);
  }
  for (unsigned q = 0; q < u->nq; q++) {
    queue_t *qu = &u->queues[q];
    struct io_uring_params prm = { .flags = IORING_SETUP_SQE128 };
    if (u->setup == 1) prm.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    /* Single issuer: the queue's thread, which enables the ring (it is made here, on another thread). */
    if (u->setup == 2) prm.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
    int rc = io_uring_queue_init_params(2 * u->entries + 4, &qu->ring, &prm);
    if (rc < 0) {
      snprintf(u->why, sizeof u->why, "cannot set up an io_uring: %s", strerror(-rc));
      goto fail;
    }
    qu->ring_ok = 1;
    if ((qu->efd = eventfd(0, EFD_CLOEXEC)) < 0) {
      snprintf(u->why, sizeof u->why, "eventfd: %s", strerror(errno));
      goto fail;
    }
    qu->ents = calloc(u->entries, sizeof *qu->ents);
    if (!qu->ents) { snprintf(u->why, sizeof u->why, "out of memory"); goto fail; }
    for (unsigned i = 0; i < u->entries; i++) {
      fuse_uring_ent_t *e = &qu->ents[i];
      /* Mapped, not malloc'd: RSS grows only by the pages requests touch (4 KiB reads: one). */
      void *p = mmap(NULL, u->payload, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) { snprintf(u->why, sizeof u->why, "cannot map ring buffers: %s", strerror(errno)); goto fail; }
      e->payload = p;
      e->q = qu;
      e->iov[0] = (struct iovec){ &e->hdr, sizeof e->hdr };
      e->iov[1] = (struct iovec){ e->payload, u->payload };
    }
  }
  u->negotiated = 1;
  return 1;
fail:
  free_queues(u);
  *why = u->why;
  return 0;
}

static struct io_uring_sqe *sqe_of(queue_t *qu) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&qu->ring);
  if (!sqe) {
    io_uring_submit(&qu->ring); /* cannot happen with 2 x entries + 4 slots; be safe */
    sqe = io_uring_get_sqe(&qu->ring);
  }
  return sqe;
}

static int prep_cmd(queue_t *qu, uint32_t cmd, fuse_uring_ent_t *e) {
  struct io_uring_sqe *sqe = sqe_of(qu);
  if (!sqe) return -1;
  memset(sqe, 0, 128); /* SQE128: the command lives in the second half */
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = qu->u->fd;
  sqe->cmd_op = cmd;
  sqe->user_data = (uintptr_t)e;
  if (cmd == URING_CMD_REGISTER) {
    sqe->addr = (uintptr_t)e->iov;
    sqe->len = 2;
  }
  struct uring_cmd_req *req = (void *)sqe->cmd;
  req->qid = (uint16_t)qu->qid;
  req->commit_id = cmd == URING_CMD_COMMIT_AND_FETCH ? e->hdr.ent.commit_id : 0;
  return 0;
}

static int prep_eventfd_read(queue_t *qu) {
  struct io_uring_sqe *sqe = sqe_of(qu);
  if (!sqe) return -1;
  io_uring_prep_read(sqe, qu->efd, &qu->efd_val, sizeof qu->efd_val, 0);
  sqe->user_data = EVENTFD_TAG;
  return 0;
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set); /* refused (cpuset): the thread floats */
}

/* Serves one ring request through libfuse's dispatch; 1 when it was answered here. */
static int serve(fuse_uring_t *u, fuse_uring_ent_t *e, char *req_buf) {
  const struct fuse_in_header *ih = (const void *)e->hdr.in_out;
  uint32_t rest = e->hdr.ent.payload_sz;
  e->replied = 0;
  e->parked = 0;
  e->unique = ih->unique;
  if (ih->len < sizeof *ih + rest || ih->len - sizeof *ih - rest > sizeof e->hdr.op_in || rest > u->payload) {
    struct fuse_out_header oh = { .len = sizeof oh, .error = -EIO, .unique = ih->unique };
    memcpy(e->hdr.in_out, &oh, sizeof oh);
    e->hdr.ent.payload_sz = 0;
    return 1;
  }
  /* libfuse wants the request as /dev/fuse gives it: header, fixed argument, the rest. */
  uint32_t fixed = ih->len - (uint32_t)sizeof *ih - rest;
  memcpy(req_buf, ih, sizeof *ih);
  memcpy(req_buf + sizeof *ih, e->hdr.op_in, fixed);
  if (rest) memcpy(req_buf + sizeof *ih + fixed, e->payload, rest);
  struct fuse_buf fb = { .size = ih->len, .mem = req_buf };
  tl_cur = e;
  fuse_session_process_buf(u->se, &fb);
  tl_cur = NULL;
  atomic_fetch_add_explicit(&u->requests, 1, memory_order_relaxed);
  if (e->parked) return 0;
  if (!e->replied) {
    /* An op that sends no reply (none of ours through a ring): the entry must go back anyway. */
    struct fuse_out_header oh = { .len = sizeof oh, .error = -ENOSYS, .unique = e->unique };
    memcpy(e->hdr.in_out, &oh, sizeof oh);
    e->hdr.ent.payload_sz = 0;
  }
  return 1;
}

static void *queue_main(void *arg) {
  queue_t *qu = arg;
  fuse_uring_t *u = qu->u;
  char name[16];
  snprintf(name, sizeof name, "fuse-uring-%d", qu->qid);
  pthread_setname_np(pthread_self(), name);
  int home = qu->qid, other = (int)((unsigned)(qu->qid + 1) % u->nq), on = home;
  if (u->placement != FUSE_URING_FLOATING) pin(home);
  if (u->setup == 2) {
    /* io_uring_enable_rings() is declared by liburing 2.3's header but not exported by its library. */
    if (syscall(__NR_io_uring_register, qu->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
      fprintf(stderr, "qcow-mount: FUSE io_uring queue %d: enable: %s\n", qu->qid, strerror(errno));
  }
  char *req_buf = malloc(u->payload + 4096);
  if (!req_buf) { fprintf(stderr, "qcow-mount: FUSE io_uring queue %d: out of memory\n", qu->qid); return NULL; }
  for (unsigned i = 0; i < u->entries; i++) prep_cmd(qu, URING_CMD_REGISTER, &qu->ents[i]);
  prep_eventfd_read(qu);
  for (;;) {
    int rc = io_uring_submit_and_wait(&qu->ring, 1);
    if (rc < 0 && rc != -EINTR) { fprintf(stderr, "qcow-mount: FUSE io_uring queue %d: %s\n", qu->qid, strerror(-rc)); break; }
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int end = 0;
    io_uring_for_each_cqe(&qu->ring, head, cqe) {
      seen++;
      if (cqe->user_data == EVENTFD_TAG) {
        /* Entries answered on another thread (JavaScript): commit them from here, the ring's thread. */
        pthread_mutex_lock(&qu->mu);
        fuse_uring_ent_t *b = qu->back;
        qu->back = NULL;
        pthread_mutex_unlock(&qu->mu);
        for (; b; b = b->next_back) prep_cmd(qu, URING_CMD_COMMIT_AND_FETCH, b);
        if (cqe->res < 0 && cqe->res != -EINTR && cqe->res != -EAGAIN) { end = 1; continue; }
        prep_eventfd_read(qu);
        continue;
      }
      fuse_uring_ent_t *e = (void *)(uintptr_t)cqe->user_data;
      if (cqe->res < 0) {
        /* -ENOTCONN (unmounted, aborted) or -ECANCELED: the session is over. Anything else is a
         * setup problem worth a line. */
        if (cqe->res != -ENOTCONN && cqe->res != -ECANCELED && cqe->res != -ENODEV)
          fprintf(stderr, "qcow-mount: FUSE io_uring queue %d: %s\n", qu->qid, strerror(-cqe->res));
        end = 1;
        continue;
      }
      const struct fuse_in_header *ih = (const void *)e->hdr.in_out;
      if (ih->opcode == FUSE_READ && u->nq > 1 && u->placement == FUSE_URING_ADAPTIVE) {
        uint32_t size = ((const struct fuse_read_in *)e->hdr.op_in)->size;
        int want = size >= BIG_READ ? other : size <= SMALL_READ ? home : on;
        if (want != on) { pin(want); on = want; }
      }
      if (serve(u, e, req_buf)) prep_cmd(qu, URING_CMD_COMMIT_AND_FETCH, e);
    }
    io_uring_cq_advance(&qu->ring, seen);
    if (end) break;
  }
  /* The rings and buffers stay: a parked entry may still be answered (into the void) while the
   * daemon exits, which it does right after its session ends. */
  free(req_buf);
  return NULL;
}

static void start_queues(fuse_uring_t *u) {
  u->started = 1;
  for (unsigned q = 0; q < u->nq; q++) {
    pthread_t t;
    /* Created from a libfuse worker: the threads inherit its blocked signals. */
    if (pthread_create(&t, NULL, queue_main, &u->queues[q]) != 0) {
      fprintf(stderr, "qcow-mount: cannot start FUSE io_uring queue %u: requests will wait\n", q);
      continue;
    }
    pthread_detach(t);
  }
}

/* ---------------------------------------------------------------- for the op handlers */

void fuse_uring_set_placement(fuse_uring_t *u, int placement) { u->placement = placement; }
void fuse_uring_set_setup(fuse_uring_t *u, int setup) { u->setup = setup; }
fuse_uring_ent_t *fuse_uring_current(void) { return tl_cur; }
char *fuse_uring_payload(fuse_uring_ent_t *e) { return e->payload; }
void fuse_uring_park(fuse_uring_ent_t *e) { e->parked = 1; }
void fuse_uring_unpark(fuse_uring_ent_t *e) { e->parked = 0; }

static _Thread_local fuse_uring_ent_t *tl_saved;

void fuse_uring_reply_begin(fuse_uring_ent_t *e) {
  tl_saved = tl_cur;
  tl_cur = e;
}

void fuse_uring_reply_end(fuse_uring_ent_t *e) {
  tl_cur = tl_saved;
  tl_saved = NULL;
  queue_t *qu = e->q;
  pthread_mutex_lock(&qu->mu);
  e->next_back = qu->back;
  qu->back = e;
  pthread_mutex_unlock(&qu->mu);
  uint64_t one = 1;
  while (write(qu->efd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

uint64_t fuse_uring_requests(const fuse_uring_t *u) { return u ? atomic_load(&u->requests) : 0; }
unsigned fuse_uring_queues(const fuse_uring_t *u) { return u && u->negotiated ? u->nq : 0; }
unsigned fuse_uring_entries(const fuse_uring_t *u) { return u && u->negotiated ? u->entries : 0; }
