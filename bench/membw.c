/* Read bandwidth of this machine: T threads each sum their part of a 1 GiB buffer (larger than
 * any cache), best of 5 passes, in GB/s. Built and run by bench/compare_llamacpp.py:
 *   cc -O3 -march=native -pthread bench/membw.c -o membw && ./membw T */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { kBytes = 1 << 30 };
static uint64_t* buf;

struct part {
  size_t begin, end;
  uint64_t sum;
};

static void* reader(void* arg) {
  struct part* p = arg;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = p->begin; i < p->end; i += 4) {
    s0 += buf[i];
    s1 += buf[i + 1];
    s2 += buf[i + 2];
    s3 += buf[i + 3];
  }
  p->sum = s0 + s1 + s2 + s3;
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  if (threads < 1 || threads > 256) return 2;
  size_t n = kBytes / sizeof(uint64_t);
  buf = malloc(kBytes);
  if (!buf) return 1;
  memset(buf, 1, kBytes);
  pthread_t tid[256];
  struct part parts[256];
  double best = 0;
  uint64_t check = 0;
  for (int pass = 0; pass < 5; ++pass) {
    double t0 = now();
    for (int t = 0; t < threads; ++t) {
      parts[t].begin = n / threads * t / 4 * 4;
      parts[t].end = t + 1 == threads ? n : n / threads * (t + 1) / 4 * 4;
      pthread_create(&tid[t], NULL, reader, &parts[t]);
    }
    for (int t = 0; t < threads; ++t) {
      pthread_join(tid[t], NULL);
      check += parts[t].sum;
    }
    double gbs = kBytes / (now() - t0) / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("%.2f\n", best);
  return check == 0;  /* keeps the sums alive */
}
