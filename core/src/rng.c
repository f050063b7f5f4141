/* xoshiro256** seeded by splitmix64 (Vigna's public-domain reference
 * algorithms). Small, fast, and its whole state is four words, which is what
 * makes exact resume possible. */
#include "trainbus/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

void tb_rng_seed(tb_rng_t *r, uint64_t seed) {
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&seed);
}

uint64_t tb_rng_u64(tb_rng_t *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

float tb_rng_uniform(tb_rng_t *r) {
  return (float)(tb_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

double tb_rng_uniform_d(tb_rng_t *r) {
  return (double)(tb_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

uint32_t tb_rng_below(tb_rng_t *r, uint32_t n) {
  /* Lemire's multiply-and-reject: unbiased without a division per draw. */
  uint64_t m = (uint64_t)(uint32_t)(tb_rng_u64(r) >> 32) * n;
  uint32_t low = (uint32_t)m;
  if (low < n) {
    uint32_t threshold = -n % n;
    while (low < threshold) {
      m = (uint64_t)(uint32_t)(tb_rng_u64(r) >> 32) * n;
      low = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

double tb_rng_normal(tb_rng_t *r) {
  double u1 = tb_rng_uniform_d(r), u2 = tb_rng_uniform_d(r);
  if (u1 < 1e-300)
    u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void tb_rng_shuffle(tb_rng_t *r, int *idx, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)tb_rng_below(r, (uint32_t)i + 1);
    int t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}
