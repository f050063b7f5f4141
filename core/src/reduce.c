/* The reduction interface's single-participant implementation (the
 * identity), the control words' layout and the epoch checksum. */
#include "trainbus/reduce.h"

#include <string.h>

static int single_allreduce(tb_reduce_t *r, float *buf, long n_sum, tb_err_t *err) {
  (void)r, (void)buf, (void)n_sum, (void)err;
  return 0;
}

static int single_broadcast(tb_reduce_t *r, void *buf, size_t len, tb_err_t *err) {
  (void)r, (void)buf, (void)len, (void)err;
  return 0;
}

static int single_check(tb_reduce_t *r, uint64_t value, const char *what, tb_err_t *err) {
  (void)r, (void)value, (void)what, (void)err;
  return 0;
}

tb_reduce_t *tb_reduce_single(void) {
  /* Never written through: fit() only reads rank and size and calls. */
  static tb_reduce_t single = {.rank = 0,
                               .size = 1,
                               .allreduce = single_allreduce,
                               .broadcast = single_broadcast,
                               .check = single_check};
  return &single;
}

void tb_reduce_ctl_put(float *buf, long n_sum, const tb_reduce_ctl_t *ctl) {
  uint32_t w[TB_REDUCE_N_CTL];
  memcpy(&w[1], &ctl->lr, sizeof(float));
  w[0] = ctl->flags;
  w[2] = ctl->version;
  w[3] = ctl->reserved;
  memcpy(buf + n_sum, w, sizeof(w));
}

void tb_reduce_ctl_get(const float *buf, long n_sum, tb_reduce_ctl_t *ctl) {
  uint32_t w[TB_REDUCE_N_CTL];
  memcpy(w, buf + n_sum, sizeof(w));
  ctl->flags = w[0];
  memcpy(&ctl->lr, &w[1], sizeof(float));
  ctl->version = w[2];
  ctl->reserved = w[3];
}

uint64_t tb_reduce_checksum(uint64_t h, const float *v, long n) {
  const unsigned char *p = (const unsigned char *)v;
  size_t len = (size_t)n * sizeof(float);
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}
