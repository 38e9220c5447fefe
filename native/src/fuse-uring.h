/*
 * FUSE over io_uring for the native back-end (-o fuse_uring; bench/NOTES.md "FUSE over io_uring").
 *
 * libfuse 3.14 knows nothing of it, so it is done from the outside: custom I/O hooks on the mounted
 * session (fuse_session_custom_io) see the kernel's INIT (does it offer FUSE_OVER_IO_URING? only while
 * /sys/module/fuse/parameters/enable_uring is Y) and add the flag to libfuse's INIT reply; then one
 * thread per possible CPU serves that CPU's queue: each ring request is rebuilt as /dev/fuse would
 * give it and handed to fuse_session_process_buf(), so the op handlers stay as they are, and the
 * reply, which libfuse writes through the writev hook, lands in the ring entry instead of /dev/fuse.
 * Forgets and interrupts still come through /dev/fuse (libfuse's own loop).
 *
 * A request answered later (handed to JavaScript) parks its entry: fuse_uring_park() on the ring
 * thread; whoever replies wraps the fuse_reply_*() call in fuse_uring_reply_begin()/_end(), which fill
 * the entry and hand it back to its ring's thread (an eventfd read kept pending there) to commit.
 */
#ifndef QCOW_FUSE_URING_H
#define QCOW_FUSE_URING_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct fuse_session;
typedef struct fuse_uring fuse_uring_t;
typedef struct fuse_uring_ent fuse_uring_ent_t;

/* Installs the custom I/O hooks on a mounted session (call before its loop starts). The hooks get
 * the session's userdata; `of_userdata` finds this object from it. NULL with *why set on failure.
 * A build without liburing (fuse-uring-none.c) installs them too, for the INIT reply (fuse-init.h). */
fuse_uring_t *fuse_uring_install(struct fuse_session *se, fuse_uring_t *(*of_userdata)(void *), const char **why);

/* Also ask, in the INIT reply, for these flags2 bits (protocol flags 32-63) where the kernel offers them:
 * what libfuse 3.14 cannot ask for itself (-o direct_io: FUSE_DIRECT_IO_ALLOW_MMAP). Before INIT. */
void fuse_uring_want_flags2(fuse_uring_t *u, uint32_t bits);

/* In the init op: negotiate when the kernel offered it. Sets up the rings (nr_cpu_ids queues, `entries`
 * each of `payload` bytes) before the INIT reply asks for it: once asked, the kernel holds every request
 * until all queues are registered, so a ring that cannot be made must not be asked for.
 * Returns 1 (negotiated), 0 (classic /dev/fuse; *why says why). */
int fuse_uring_negotiate(fuse_uring_t *u, size_t payload, unsigned entries, const char **why);

/* Where the queue threads run (for measuring; bench/NOTES.md): ADAPTIVE (the default) pins each to its
 * queue's CPU and moves it to the next CPU while it serves big reads; PINNED never moves; FLOATING
 * leaves the thread to the scheduler. Before fuse_uring_negotiate(). */
enum { FUSE_URING_ADAPTIVE = 0, FUSE_URING_PINNED = 1, FUSE_URING_FLOATING = 2 };
void fuse_uring_set_placement(fuse_uring_t *u, int placement);
/* How the rings are set up (for measuring): 0 plain, 1 COOP_TASKRUN, 2 SINGLE_ISSUER + DEFER_TASKRUN. */
void fuse_uring_set_setup(fuse_uring_t *u, int setup);

/* The ring entry the calling thread is serving, or NULL (a /dev/fuse request, or not a worker). */
fuse_uring_ent_t *fuse_uring_current(void);
/* The current entry's payload buffer (reply bytes go there): pread into it, reply with it. */
char *fuse_uring_payload(fuse_uring_ent_t *e);

/* The current request will be answered later, from another thread. */
void fuse_uring_park(fuse_uring_ent_t *e);
/* Undo fuse_uring_park() when the hand-off failed and the reply is made here after all. */
void fuse_uring_unpark(fuse_uring_ent_t *e);
/* Around a late fuse_reply_*() for a parked entry (any thread): the reply fills the entry, then
 * _end hands it back to its ring's thread, which commits it. */
void fuse_uring_reply_begin(fuse_uring_ent_t *e);
void fuse_uring_reply_end(fuse_uring_ent_t *e);

/* The kernel's nr_cpu_ids (possible CPUs, not the online count): one queue each. */
unsigned fuse_uring_possible_cpus(void);

/* Requests served through the rings so far; queues and entries per queue. */
uint64_t fuse_uring_requests(const fuse_uring_t *u);
unsigned fuse_uring_queues(const fuse_uring_t *u);
unsigned fuse_uring_entries(const fuse_uring_t *u);
#endif
