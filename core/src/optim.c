/* Optimizers, with Keras 3's update rules (keras/src/optimizers/{sgd,adam,
 * rmsprop}.py). All parameters live in one contiguous block, so a step is one
 * pass over three or four arrays that the compiler vectorises; step.c splits
 * that pass into slices, one per thread (every element's update depends on
 * that element alone, so the split changes no bit).
 *
 *   SGD:     m = momentum*m - lr*g;  w += nesterov ? momentum*m - lr*g : m
 *            (momentum 0: w -= lr*g)
 *   Adam:    t = iterations + 1; alpha = lr*sqrt(1-beta_2^t)/(1-beta_1^t)
 *            m += (g-m)*(1-beta_1); v += (g*g-v)*(1-beta_2)
 *            w -= m*alpha/(sqrt(v)+epsilon)
 *   RMSprop: v = rho*v + (1-rho)*(g*g); inc = lr*g/sqrt(v+epsilon)
 *            momentum > 0: m = momentum*m + inc; w -= m  (else w -= inc)
 *
 * In float32 as Keras computes them: the rate is the float32 variable; the
 * hyperparameters are Python floats, so (1 - beta_1) is computed in double
 * and then converted (float32(0.1), not 1 - float32(0.9)); the beta powers
 * and alpha are float32 operations (pow evaluated in double and rounded). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tb__optim_alloc(tb_model_t *m) {
  size_t bytes = (size_t)m->n_params * sizeof(float);
  free(m->slot1);
  free(m->slot2);
  m->slot1 = m->slot2 = NULL;
  const tb_optim_opts_t *o = &m->opts.optim;
  bool need1 = o->kind != TB_OPT_SGD || o->momentum != 0.0;
  bool need2 = o->kind == TB_OPT_ADAM || (o->kind == TB_OPT_RMSPROP && o->momentum != 0.0);
  if (need1 && (m->slot1 = calloc(1, bytes ? bytes : 1)) == NULL)
    return TB_ENOMEM;
  if (need2 && (m->slot2 = calloc(1, bytes ? bytes : 1)) == NULL)
    return TB_ENOMEM;
  m->iterations = 0;
  return 0;
}

void tb__optim_prepare(const tb_model_t *m, tb__optim_coef_t *c) {
  const tb_optim_opts_t *o = &m->opts.optim;
  memset(c, 0, sizeof(*c));
  c->lr = (float)m->lr;
  switch (o->kind) {
  case TB_OPT_SGD:
    c->mu = (float)o->momentum;
    break;
  case TB_OPT_ADAM: {
    float t = (float)(m->iterations + 1);
    float b1_power = (float)pow((double)(float)o->beta_1, (double)t);
    float b2_power = (float)pow((double)(float)o->beta_2, (double)t);
    c->alpha = c->lr * sqrtf(1.0f - b2_power) / (1.0f - b1_power);
    c->one_b1 = (float)(1.0 - o->beta_1);
    c->one_b2 = (float)(1.0 - o->beta_2);
    c->eps = (float)o->epsilon;
    break;
  }
  case TB_OPT_RMSPROP:
    c->rho = (float)o->rho;
    c->eps = (float)o->epsilon;
    c->mu = (float)o->momentum;
    c->one_rho = (float)(1.0 - o->rho);
    break;
  }
}

/* The update loops, one per rule, over [0, n) of pointers already offset to
 * the slice; TB_CLONES (internal.h) compiles each for AVX-512, AVX2 and the
 * baseline. */
TB_CLONES
static void sgd_plain(float *restrict w, const float *restrict g, long n, float lr) {
  for (long i = 0; i < n; i++)
    w[i] -= lr * g[i];
}

TB_CLONES
static void sgd_momentum(float *restrict w, float *restrict v, const float *restrict g, long n,
                         float lr, float mu, bool nesterov) {
  if (nesterov) {
    for (long i = 0; i < n; i++) {
      v[i] = mu * v[i] - lr * g[i];
      w[i] += mu * v[i] - lr * g[i];
    }
  } else {
    for (long i = 0; i < n; i++) {
      v[i] = mu * v[i] - lr * g[i];
      w[i] += v[i];
    }
  }
}

TB_CLONES
static void adam(float *restrict w, float *restrict mm, float *restrict vv, const float *restrict g,
                 long n, float alpha, float one_b1, float one_b2, float eps) {
  for (long i = 0; i < n; i++) {
    mm[i] += (g[i] - mm[i]) * one_b1;
    vv[i] += (g[i] * g[i] - vv[i]) * one_b2;
    w[i] -= mm[i] * alpha / (sqrtf(vv[i]) + eps);
  }
}

TB_CLONES
static void rmsprop(float *restrict w, float *restrict vv, float *restrict mm,
                    const float *restrict g, long n, float lr, float rho, float one_rho, float eps,
                    float mu) {
  if (mm != NULL) {
    for (long i = 0; i < n; i++) {
      vv[i] = rho * vv[i] + one_rho * (g[i] * g[i]);
      float inc = lr * g[i] / sqrtf(vv[i] + eps);
      mm[i] = mu * mm[i] + inc;
      w[i] -= mm[i];
    }
  } else {
    for (long i = 0; i < n; i++) {
      vv[i] = rho * vv[i] + one_rho * (g[i] * g[i]);
      w[i] -= lr * g[i] / sqrtf(vv[i] + eps);
    }
  }
}

void tb__optim_apply(tb_model_t *m, const tb__optim_coef_t *c, long lo, long hi) {
  const tb_optim_opts_t *o = &m->opts.optim;
  long n = hi - lo;
  float *w = m->params + lo;
  const float *g = m->grads + lo;
  if (n <= 0)
    return;
  switch (o->kind) {
  case TB_OPT_SGD:
    if (m->slot1 == NULL)
      sgd_plain(w, g, n, c->lr);
    else
      sgd_momentum(w, m->slot1 + lo, g, n, c->lr, c->mu, o->nesterov);
    break;
  case TB_OPT_ADAM:
    adam(w, m->slot1 + lo, m->slot2 + lo, g, n, c->alpha, c->one_b1, c->one_b2, c->eps);
    break;
  case TB_OPT_RMSPROP:
    rmsprop(w, m->slot1 + lo, m->slot2 != NULL ? m->slot2 + lo : NULL, g, n, c->lr, c->rho,
            c->one_rho, c->eps, c->mu);
    break;
  }
}
