/*
 * fuse-uring.h for a build without liburing (binding.gyp picks this file when pkg-config finds no
 * liburing): the native back-end works as before; -o fuse_uring stays on /dev/fuse with its one
 * warning line saying why, and -o direct_io cannot ask for shared mappings (MAP_SHARED: ENODEV).
 */
#include "fuse-uring.h"

#include <stddef.h>

fuse_uring_t *fuse_uring_install(struct fuse_session *se, fuse_uring_t *(*of_userdata)(void *), const char **why) {
  (void)se;
  (void)of_userdata;
  *why = "qcow-mount's native addon was built without liburing (install liburing-dev, then rebuild it: npm rebuild qcow-mount)";
  return NULL;
}

/* Never reached: without an object from fuse_uring_install() the callers do not call these. */
void fuse_uring_want_flags2(fuse_uring_t *u, uint32_t bits) { (void)u; (void)bits; }
int fuse_uring_negotiate(fuse_uring_t *u, size_t payload, unsigned entries, const char **why) {
  (void)u; (void)payload; (void)entries;
  *why = "built without liburing";
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
