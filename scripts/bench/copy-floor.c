/* qcow-export's copy loop (native/src/copy-range.c) against the ways tried to make it faster: each variant
 * copies the first MIB MiB of SRC into a fresh file in OUTDIR (tmpfs in the bench), leaving all-zero 4 KiB
 * blocks as holes, and the variants run in turn, REPS rounds, with PAUSE seconds between runs (freed pages
 * go back to the host after ~2 s here, so a pause makes the next run's pages cold). Prints each variant's
 * seconds per GiB, median [min-max]. Measured in bench/NOTES.md ("qcow-export: the copy loop", issue 10).
 *   gcc -O2 -o /tmp/copy-floor scripts/bench/copy-floor.c -lpthread
 *   /tmp/copy-floor bench-work/images/full.qcow2 /dev/shm 1024 7 0 pread write mapped reader two
 * Variants:
 *   pread    today's loop: pread a 256 KiB window, find the zero blocks, pwrite the rest from the window
 *   write    pwrite from one hot buffer, nothing read: the write floor
 *   mapped   pwrite straight from a MAP_SHARED mapping of SRC, populated before the clock starts (one copy)
 *   chunks   the same from 8 MiB MAP_POPULATE mappings made (and unmapped) as the copy goes
 *   reader   a second thread preads and scans 1 MiB slots (a ring of 8, mutex and condition variable)
 *            while this one pwrites
 *   spin     the same ring handed over by spinning on two counters instead
 *   two      two threads taking alternate 1 MiB chunks, each pread, scan and pwrite
 *   populate two threads, alternate chunks: pread, scan, MADV_POPULATE_WRITE of the data blocks in a shared
 *            mapping of the output, memcpy into it (no write syscall, no inode lock)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

#define BLOCK 4096
#define WINDOW (256u << 10)
#define SLOT (1u << 20)
#define SLOTS 8
#define MAX_RUNS (2 * (SLOT / BLOCK / 2 + 1))

static int in_fd, out_fd;
static size_t total;
static unsigned char *out_map;

static void fail(const char *what) { perror(what); exit(1); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int all_zero(const unsigned char *p) {
  const uint64_t *q = (const uint64_t *)p;
  for (size_t i = 0; i < BLOCK / 8; i++) if (q[i]) return 0;
  return 1;
}
/* Non-zero runs of buf[0, n) as (start, length) pairs; n is a multiple of BLOCK here. */
static size_t runs_of(const unsigned char *buf, size_t n, int64_t *runs) {
  size_t c = 0; int64_t run = -1;
  for (size_t b = 0; b < n; b += BLOCK) {
    int z = all_zero(buf + b);
    if (!z && run < 0) run = (int64_t)b;
    if (z && run >= 0) { runs[2 * c] = run; runs[2 * c + 1] = (int64_t)b - run; c++; run = -1; }
  }
  if (run >= 0) { runs[2 * c] = run; runs[2 * c + 1] = (int64_t)n - run; c++; }
  return c;
}
static void pwrite_all(const unsigned char *b, size_t n, size_t pos) {
  while (n) { ssize_t k = pwrite(out_fd, b, n, (off_t)pos); if (k <= 0) fail("pwrite"); b += k; n -= (size_t)k; pos += (size_t)k; }
}
static void pread_all(unsigned char *b, size_t n, size_t pos) { if (pread(in_fd, b, n, (off_t)pos) != (ssize_t)n) fail("pread"); }
static void write_runs(const unsigned char *b, const int64_t *runs, size_t c, size_t pos) {
  for (size_t r = 0; r < c; r++) pwrite_all(b + runs[2 * r], (size_t)runs[2 * r + 1], pos + (size_t)runs[2 * r]);
}

static void v_pread(void) {
  static unsigned char win[WINDOW] __attribute__((aligned(4096)));
  static int64_t runs[MAX_RUNS];
  for (size_t o = 0; o < total; o += WINDOW) { pread_all(win, WINDOW, o); write_runs(win, runs, runs_of(win, WINDOW, runs), o); }
}
static void v_write(void) {
  static unsigned char hot[WINDOW]; memset(hot, 1, sizeof hot);
  for (size_t o = 0; o < total; o += WINDOW) pwrite_all(hot, WINDOW, o);
}
static unsigned char *premapped;
static void v_mapped(void) {
  static int64_t runs[MAX_RUNS];
  for (size_t o = 0; o < total; o += WINDOW) write_runs(premapped + o, runs, runs_of(premapped + o, WINDOW, runs), o);
}
static void v_chunks(void) {
  static int64_t runs[MAX_RUNS];
  const size_t chunk = 8u << 20;
  for (size_t c = 0; c < total; c += chunk) {
    unsigned char *m = mmap(NULL, chunk, PROT_READ, MAP_SHARED | MAP_POPULATE, in_fd, (off_t)c);
    if (m == MAP_FAILED) fail("mmap");
    for (size_t o = 0; o < chunk; o += WINDOW) write_runs(m + o, runs, runs_of(m + o, WINDOW, runs), c + o);
    munmap(m, chunk);
  }
}

/* reader / spin: a ring of slots filled (read and scanned) by a second thread. */
static unsigned char *slot[SLOTS];
static int64_t slot_runs[SLOTS][MAX_RUNS];
static size_t slot_count[SLOTS];
static size_t filled, drained;
static int spinning;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
/* Waits until cond(counter, i) holds: by spinning, or on the condition variable. */
static int slot_taken(size_t drained_now, size_t i) { return i - drained_now >= SLOTS; }
static int not_filled(size_t filled_now, size_t i) { return filled_now <= i; }
static void wait_while(size_t *counter, size_t i, int (*busy)(size_t, size_t)) {
  if (spinning) { while (busy(__atomic_load_n(counter, __ATOMIC_ACQUIRE), i)) __builtin_ia32_pause(); return; }
  pthread_mutex_lock(&mu);
  while (busy(*counter, i)) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
}
static void advance(size_t *counter, size_t to) {
  if (spinning) { __atomic_store_n(counter, to, __ATOMIC_RELEASE); return; }
  pthread_mutex_lock(&mu); *counter = to; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
}
static void *ring_reader(void *unused) {
  (void)unused;
  for (size_t i = 0; i < total / SLOT; i++) {
    wait_while(&drained, i, slot_taken);
    int s = (int)(i % SLOTS);
    pread_all(slot[s], SLOT, i * SLOT);
    slot_count[s] = runs_of(slot[s], SLOT, slot_runs[s]);
    advance(&filled, i + 1);
  }
  return NULL;
}
static void v_ring(int spin) {
  spinning = spin; filled = drained = 0;
  for (int s = 0; s < SLOTS; s++) if (!slot[s] && !(slot[s] = aligned_alloc(4096, SLOT))) fail("alloc");
  pthread_t t; pthread_create(&t, NULL, ring_reader, NULL);
  for (size_t i = 0; i < total / SLOT; i++) {
    wait_while(&filled, i, not_filled);
    int s = (int)(i % SLOTS);
    write_runs(slot[s], slot_runs[s], slot_count[s], i * SLOT);
    advance(&drained, i + 1);
  }
  pthread_join(t, NULL);
}

/* two / populate: two symmetric threads on alternate chunks. */
static int use_populate;
static void *half(void *which) {
  unsigned char *buf = aligned_alloc(4096, SLOT);
  static _Thread_local int64_t runs[MAX_RUNS];
  for (size_t o = (size_t)(intptr_t)which * SLOT; o < total; o += 2 * SLOT) {
    pread_all(buf, SLOT, o);
    size_t c = runs_of(buf, SLOT, runs);
    if (!use_populate) { write_runs(buf, runs, c, o); continue; }
    for (size_t r = 0; r < c; r++) {
      unsigned char *to = out_map + o + runs[2 * r];
      if (madvise(to, (size_t)runs[2 * r + 1], MADV_POPULATE_WRITE)) fail("MADV_POPULATE_WRITE");
      memcpy(to, buf + runs[2 * r], (size_t)runs[2 * r + 1]);
    }
  }
  free(buf);
  return NULL;
}
static void v_two(int populate) {
  use_populate = populate;
  if (populate && (out_map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, out_fd, 0)) == MAP_FAILED) fail("mmap output");
  pthread_t t[2];
  for (intptr_t i = 0; i < 2; i++) pthread_create(&t[i], NULL, half, (void *)i);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  if (populate) munmap(out_map, total);
}

static const char *const NAMES[] = { "pread", "write", "mapped", "chunks", "reader", "spin", "two", "populate" };
#define NVAR (sizeof NAMES / sizeof NAMES[0])
static void run_variant(int v) {
  switch (v) {
    case 0: v_pread(); break; case 1: v_write(); break; case 2: v_mapped(); break; case 3: v_chunks(); break;
    case 4: v_ring(0); break; case 5: v_ring(1); break; case 6: v_two(0); break; case 7: v_two(1); break;
  }
}
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
  if (argc < 7) { fprintf(stderr, "usage: %s SRC OUTDIR MIB REPS PAUSE_S VARIANT...\n", argv[0]); return 2; }
  total = (size_t)atol(argv[3]) << 20;
  total -= total % (2 * SLOT);
  int reps = atoi(argv[4]);
  double pause = atof(argv[5]);
  int nv = argc - 6, which[16];
  if (nv > 16) nv = 16;
  for (int i = 0; i < nv; i++) {
    which[i] = -1;
    for (size_t k = 0; k < NVAR; k++) if (!strcmp(argv[6 + i], NAMES[k])) which[i] = (int)k;
    if (which[i] < 0) { fprintf(stderr, "unknown variant %s\n", argv[6 + i]); return 2; }
  }
  if ((in_fd = open(argv[1], O_RDONLY)) < 0) fail(argv[1]);
  char out[4096];
  snprintf(out, sizeof out, "%s/copy-floor.%d.raw", argv[2], (int)getpid());
  double *secs = calloc((size_t)(nv * reps), sizeof *secs);
  for (int r = 0; r < reps; r++) {
    for (int i = 0; i < nv; i++) {
      if ((out_fd = open(out, O_CREAT | O_EXCL | O_RDWR, 0644)) < 0) fail(out);
      if (ftruncate(out_fd, (off_t)total)) fail("ftruncate");
      if (which[i] == 2) {
        premapped = mmap(NULL, total, PROT_READ, MAP_SHARED, in_fd, 0);
        if (premapped == MAP_FAILED || madvise(premapped, total, MADV_POPULATE_READ)) fail("mmap source");
      }
      double t = now();
      run_variant(which[i]);
      secs[i * reps + r] = (now() - t) / ((double)total / (1 << 30));
      if (which[i] == 2) munmap(premapped, total);
      close(out_fd);
      unlink(out);
      if (pause > 0) usleep((useconds_t)(pause * 1e6));
    }
  }
  for (int i = 0; i < nv; i++) {
    double *s = secs + i * reps;
    qsort(s, (size_t)reps, sizeof *s, cmp);
    printf("%-8s %.3f s/GiB [%.3f-%.3f]\n", NAMES[which[i]], reps % 2 ? s[reps / 2] : (s[reps / 2 - 1] + s[reps / 2]) / 2, s[0], s[reps - 1]);
  }
  return 0;
}
