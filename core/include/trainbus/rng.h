/* A small seeded random number generator (xoshiro256**, seeded by splitmix64).
 *
 * Every random choice in core (weight init, shuffles, dropout masks, generated
 * data) draws from a tb_rng_t, so the same seed gives bitwise the same run. The
 * state is four plain words, so it can be saved in a checkpoint and restored. */
#ifndef TRAINBUS_RNG_H
#define TRAINBUS_RNG_H

#include <stdint.h>

typedef struct tb_rng_s {
  uint64_t s[4];
} tb_rng_t;

void tb_rng_seed(tb_rng_t *r, uint64_t seed);
uint64_t tb_rng_u64(tb_rng_t *r);
/* Uniform in [0, 1) with 24 bits (float) or 53 bits (double) of randomness. */
float tb_rng_uniform(tb_rng_t *r);
double tb_rng_uniform_d(tb_rng_t *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint32_t tb_rng_below(tb_rng_t *r, uint32_t n);
/* Standard normal (Box-Muller, double precision). */
double tb_rng_normal(tb_rng_t *r);
/* Fisher-Yates shuffle of idx[0..n). */
void tb_rng_shuffle(tb_rng_t *r, int *idx, int n);

#endif
