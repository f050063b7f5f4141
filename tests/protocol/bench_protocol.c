/* Micro-benchmark of the per-event and per-request costs of the protocol.
 *
 *   build-proto/tests/protocol/bench_protocol [runs] [iterations]
 *
 * Measures, single-threaded, on a realistic ~200-byte train_batch_end event
 * (loss, accuracy, lr, with run, seq, epoch, batch and time):
 *   - the hand encoder (tb_msg_event_to into a flat buffer): events/s;
 *   - the same event built as a cJSON tree and printed with
 *     cJSON_PrintPreallocated (the obvious alternative), events/s;
 *   - tb_req_decode on a set_lr and a subscribe request: requests/s;
 *   - tb_frame_next over a buffer of event lines: MB/s.
 * Each figure is the median of `runs` runs (default 7) of `iterations`
 * iterations (default 1,000,000; requests a quarter of that). The log values
 * change every iteration so no formatting result can be cached. --smoke runs
 * everything once with 100 iterations (ctest uses it so the file cannot rot). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "trainbus/protocol.h"

static volatile size_t sink;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static const char log_names[3][48] = {"loss", "accuracy", "lr"};

static void fill(tb_event_t *ev, double *v, long i) {
  v[0] = 0.6931471805599453 / (1.0 + (double)i * 1e-6); /* a typical loss: 17 digits */
  v[1] = 0.5 + (double)(i % 1000) / 3000.0;
  v[2] = 0.001;
  memset(ev, 0, sizeof *ev);
  ev->run = "20241127-183000-r1";
  ev->seq = 100000 + i;
  ev->name = "train_batch_end";
  ev->epoch = 3;
  ev->batch = i % 1875;
  ev->time_us = 1732730000123456LL + i * 1000;
  ev->n_logs = 3;
  ev->log_names = log_names;
  ev->log_values = v;
}

static double bench_hand(long iters, size_t *len_out) {
  char out[1024];
  double v[3];
  tb_event_t ev;
  double t0 = now_s();
  for (long i = 0; i < iters; i++) {
    fill(&ev, v, i);
    int n = tb_msg_event_to(out, sizeof out, &ev);
    sink += (size_t)n;
    *len_out = (size_t)n;
  }
  return (double)iters / (now_s() - t0);
}

static double bench_cjson(long iters) {
  char out[1024];
  double v[3];
  tb_event_t ev;
  double t0 = now_s();
  for (long i = 0; i < iters; i++) {
    fill(&ev, v, i);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "jsonrpc", "2.0");
    cJSON_AddStringToObject(root, "method", "event");
    cJSON *p = cJSON_AddObjectToObject(root, "params");
    cJSON_AddStringToObject(p, "run", ev.run);
    cJSON_AddNumberToObject(p, "seq", (double)ev.seq);
    cJSON_AddStringToObject(p, "event", ev.name);
    cJSON_AddNumberToObject(p, "epoch", (double)ev.epoch);
    cJSON_AddNumberToObject(p, "batch", (double)ev.batch);
    cJSON_AddNumberToObject(p, "time", (double)ev.time_us / 1e6);
    cJSON *logs = cJSON_AddObjectToObject(p, "logs");
    for (int k = 0; k < ev.n_logs; k++)
      cJSON_AddNumberToObject(logs, ev.log_names[k], ev.log_values[k]);
    if (!cJSON_PrintPreallocated(root, out, sizeof out, 0))
      abort();
    sink += strlen(out);
    cJSON_Delete(root);
  }
  return (double)iters / (now_s() - t0);
}

static double bench_decode(long iters) {
  static const char *const reqs[] = {
      "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"set_lr\",\"params\":{\"run\":\"r1\","
      "\"lr\":0.001}}",
      "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":{\"runs\":[\"r1\"],"
      "\"events\":[\"*_end\",\"train_batch_*\"],\"every\":10,\"since_seq\":5}}",
  };
  size_t lens[2] = {strlen(reqs[0]), strlen(reqs[1])};
  tb_req_t *r = malloc(sizeof *r);
  tb_proto_err_t err;
  double t0 = now_s();
  for (long i = 0; i < iters; i++) {
    if (tb_req_decode(reqs[i & 1], lens[i & 1], r, &err) != 0)
      abort();
    sink += (size_t)r->method;
    tb_req_free(r);
  }
  double rate = (double)iters / (now_s() - t0);
  free(r);
  return rate;
}

static double bench_frame(long iters) {
  /* A 1 MiB buffer of event lines, framed repeatedly. */
  size_t cap = 1 << 20, len = 0;
  char *buf = malloc(cap);
  double v[3];
  tb_event_t ev;
  for (long i = 0; len + 512 < cap; i++) {
    fill(&ev, v, i);
    len += (size_t)tb_msg_event_to(buf + len, cap - len, &ev);
  }
  long passes = iters / 5000 + 1;
  double t0 = now_s();
  for (long p = 0; p < passes; p++) {
    size_t off = 0, from = 0, line_len;
    int n;
    while ((n = tb_frame_next(buf + off, len - off, &from, TB_PROTO_MAX_LINE_DEFAULT, &line_len)) >
           0)
      off += (size_t)n;
    sink += off;
  }
  double mbps = (double)passes * (double)len / (now_s() - t0) / 1e6;
  free(buf);
  return mbps;
}

int main(int argc, char **argv) {
  int runs = 7;
  long iters = 1000000;
  if (argc > 1 && strcmp(argv[1], "--smoke") == 0) {
    runs = 1;
    iters = 100;
  } else {
    if (argc > 1)
      runs = atoi(argv[1]);
    if (argc > 2)
      iters = atol(argv[2]);
    if (runs < 1 || runs > 101 || iters < 1) {
      fprintf(stderr, "usage: %s [runs 1..101] [iterations] | --smoke\n", argv[0]);
      return 2;
    }
  }
  double hand[101], cj[101], dec[101], fr[101];
  size_t ev_len = 0;
  for (int r = 0; r < runs; r++) {
    hand[r] = bench_hand(iters, &ev_len);
    cj[r] = bench_cjson(iters);
    dec[r] = bench_decode(iters / 4 + 1);
    fr[r] = bench_frame(iters);
  }
  double h = median(hand, runs), c = median(cj, runs);
  printf("event line: %zu bytes; median of %d runs x %ld iterations\n", ev_len, runs, iters);
  printf("encode event, hand (tb_msg_event_to):   %12.0f events/s  (%6.1f ns/event)\n", h, 1e9 / h);
  printf("encode event, cJSON tree + print:       %12.0f events/s  (%6.1f ns/event)\n", c, 1e9 / c);
  printf("hand / cJSON speed ratio:               %12.2fx\n", h / c);
  double d = median(dec, runs);
  printf("decode request (set_lr, subscribe):     %12.0f requests/s (%6.1f ns/request)\n", d,
         1e9 / d);
  printf("frame event lines (tb_frame_next):      %12.0f MB/s\n", median(fr, runs));
  return 0;
}
