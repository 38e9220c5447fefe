/* zlib-compressed qcow2 clusters inflated on the FUSE worker threads (inflate-cluster.c). */
#ifndef QCOW_INFLATE_CLUSTER_H
#define QCOW_INFLATE_CLUSTER_H
#include <stddef.h>
#include <stdint.h>

/* Inflates the cluster whose deflate stream starts at `host` in `fd` and runs `hlen` bytes (to the
 * end of its descriptor's last sector; zeros past the file's end) into `out`, exactly `cs` bytes.
 * 0 on success; -1 when the stream is corrupt, short of a cluster or longer than one, or unreadable
 * (the caller hands the read to JavaScript, which reports it with the cluster's name). */
int inflate_cluster(int fd, uint64_t host, size_t hlen, unsigned char *out, size_t cs);

/* The inflated cluster at `host` in `fd` from this thread's one-cluster cache, inflating it there
 * first when needed: a read that takes part of a cluster, then the next part, inflates it once.
 * NULL as inflate_cluster()'s -1. */
const unsigned char *inflated_cluster(int fd, uint64_t host, size_t hlen, size_t cs);

#endif
