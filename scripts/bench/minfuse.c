/* The FUSE ceiling for small reads: a minimal libfuse 3 low-level server with one file "f" whose reads
 * are pread from a raw file into a thread-local buffer and answered with fuse_reply_buf (the native
 * back-end's copy path for small reads, without any qcow2 work). Stays in the foreground; fusermount3 -u
 * ends it. Measured against qcow-mount and qcowmount in bench/NOTES.md (issue 14).
 *   gcc -O2 -o /tmp/minfuse scripts/bench/minfuse.c $(pkg-config --cflags --libs fuse3)
 *   /tmp/minfuse RAWFILE MOUNTPOINT THREADS & */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
static int fd; static off_t fsize; static _Thread_local char *buf;
static void st_of(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st); st->st_ino = ino;
  if (ino == 1) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; }
  else { st->st_mode = S_IFREG | 0444; st->st_nlink = 1; st->st_size = fsize; }
}
static void op_init(void *u, struct fuse_conn_info *c) { c->max_write = 248 * 4096; c->want &= ~(FUSE_CAP_SPLICE_READ|FUSE_CAP_SPLICE_MOVE|FUSE_CAP_SPLICE_WRITE); }
static void op_lookup(fuse_req_t req, fuse_ino_t p, const char *name) {
  if (p != 1 || strcmp(name, "f")) { fuse_reply_err(req, ENOENT); return; }
  struct fuse_entry_param e; memset(&e, 0, sizeof e); e.ino = 2; e.attr_timeout = e.entry_timeout = 86400; st_of(2, &e.attr);
  fuse_reply_entry(req, &e);
}
static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { struct stat st; st_of(ino, &st); fuse_reply_attr(req, &st, 86400); }
static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { fi->keep_cache = 1; fuse_reply_open(req, fi); }
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  if (!buf) buf = malloc(1 << 20);
  ssize_t r = pread(fd, buf, size, off);
  if (r < 0) { fuse_reply_err(req, errno); return; }
  fuse_reply_buf(req, buf, r);
}
static const struct fuse_lowlevel_ops ops = { .init = op_init, .lookup = op_lookup, .getattr = op_getattr, .open = op_open, .read = op_read };
int main(int argc, char **argv) {
  fd = open(argv[1], O_RDONLY); struct stat st; fstat(fd, &st); fsize = st.st_size;
  char *a[] = { argv[0], "-o", "ro,default_permissions,fsname=minfuse" };
  struct fuse_args args = FUSE_ARGS_INIT(3, a);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_session_mount(se, argv[2])) return 1;
  fuse_daemonize(1);
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 0); fuse_loop_cfg_set_max_threads(cfg, atoi(argv[3])); fuse_loop_cfg_set_idle_threads(cfg, atoi(argv[3]));
  int r = fuse_session_loop_mt(se, cfg);
  fuse_session_unmount(se); fuse_session_destroy(se); return r;
}
