/*
 * zlib-compressed clusters, inflated by the worker thread serving the read, with the rules the
 * JavaScript path applies (src/codec/decompress.ts), so both paths agree on every stream: raw deflate
 * with a 32 KiB window, input running to the end of the descriptor's last sector (zeros past the end
 * of the file, as QEMU reads them), output exactly one cluster; a stream cut short after filling the
 * cluster is fine, one holding more than a cluster is corrupt. zlib itself is Node's: the node binary
 * exports it, and the addon links against those symbols.
 */
#define _GNU_SOURCE
#include "inflate-cluster.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

typedef struct {
  z_stream strm;
  int ready;
  unsigned char *in;
  size_t in_cap;
  unsigned char *cluster; /* the last cluster inflated for a partial read */
  size_t cluster_cap;
  size_t cluster_size;
  int cluster_fd;
  uint64_t cluster_host; /* UINT64_MAX: none */
} zstate_t;

static pthread_key_t zstate_key;
static pthread_once_t zstate_once = PTHREAD_ONCE_INIT;

static void zstate_free(void *p) {
  zstate_t *z = p;
  if (z->ready) inflateEnd(&z->strm);
  free(z->in);
  free(z->cluster);
  free(z);
}

static void zstate_init(void) { pthread_key_create(&zstate_key, zstate_free); }

static zstate_t *zstate(void) {
  pthread_once(&zstate_once, zstate_init);
  zstate_t *z = pthread_getspecific(zstate_key);
  if (z) return z;
  z = calloc(1, sizeof *z);
  if (!z) return NULL;
  z->cluster_host = UINT64_MAX;
  if (pthread_setspecific(zstate_key, z) != 0) {
    free(z);
    return NULL;
  }
  return z;
}

static int inflate_with(zstate_t *z, int fd, uint64_t host, size_t hlen, unsigned char *out, size_t cs) {
  if (hlen == 0 || cs == 0) return -1;
  if (hlen > z->in_cap) {
    unsigned char *in = realloc(z->in, hlen);
    if (!in) return -1;
    z->in = in;
    z->in_cap = hlen;
  }
  size_t got = 0;
  while (got < hlen) {
    ssize_t r = pread(fd, z->in + got, hlen - got, (off_t)(host + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += (size_t)r;
  }
  if (got == 0) return -1; /* the stream starts past the end of the file */
  memset(z->in + got, 0, hlen - got);
  if (!z->ready) {
    memset(&z->strm, 0, sizeof z->strm);
    if (inflateInit2(&z->strm, -15) != Z_OK) return -1;
    z->ready = 1;
  } else if (inflateReset(&z->strm) != Z_OK) {
    return -1;
  }
  z->strm.next_in = z->in;
  z->strm.avail_in = (uInt)hlen;
  z->strm.next_out = out;
  z->strm.avail_out = (uInt)cs;
  int ret = inflate(&z->strm, Z_FINISH);
  if (z->strm.avail_out != 0) return -1; /* short of a cluster, or corrupt */
  if (ret == Z_STREAM_END) return 0;
  if (ret != Z_BUF_ERROR && ret != Z_OK) return -1;
  /* The cluster is full and the stream has not ended: it must not have another byte to give. */
  unsigned char extra;
  z->strm.next_out = &extra;
  z->strm.avail_out = 1;
  ret = inflate(&z->strm, Z_FINISH);
  if (z->strm.avail_out == 0) return -1;
  return ret == Z_BUF_ERROR || ret == Z_STREAM_END ? 0 : -1;
}

int inflate_cluster(int fd, uint64_t host, size_t hlen, unsigned char *out, size_t cs) {
  zstate_t *z = zstate();
  return z ? inflate_with(z, fd, host, hlen, out, cs) : -1;
}

const unsigned char *inflated_cluster(int fd, uint64_t host, size_t hlen, size_t cs) {
  zstate_t *z = zstate();
  if (!z) return NULL;
  if (z->cluster_host == host && z->cluster_fd == fd && z->cluster_size == cs) return z->cluster;
  if (cs > z->cluster_cap) {
    free(z->cluster);
    z->cluster = malloc(cs);
    z->cluster_cap = z->cluster ? cs : 0;
    if (!z->cluster) return NULL;
  }
  z->cluster_host = UINT64_MAX;
  if (inflate_with(z, fd, host, hlen, z->cluster, cs) != 0) return NULL;
  z->cluster_fd = fd;
  z->cluster_size = cs;
  z->cluster_host = host;
  return z->cluster;
}
