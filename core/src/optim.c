/* Optimizers, with Keras 3's update rules (keras/src/optimizers/{sgd,adam,
 * rmsprop}.py). All parameters live in one contiguous block, so a step is one
 * pass over three or four arrays that the compiler vectorises.
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

void tb__optim_step(tb_model_t *m) {
  const tb_optim_opts_t *o = &m->opts.optim;
  long n = m->n_params;
  float *restrict w = m->params;
  const float *restrict g = m->grads;
  float lr = (float)m->lr;
  switch (o->kind) {
  case TB_OPT_SGD: {
    float mu = (float)o->momentum;
    float *restrict v = m->slot1;
    if (v == NULL) {
      for (long i = 0; i < n; i++)
        w[i] -= lr * g[i];
    } else if (o->nesterov) {
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
    break;
  }
  case TB_OPT_ADAM: {
    float t = (float)(m->iterations + 1), eps = (float)o->epsilon;
    float b1_power = (float)pow((double)(float)o->beta_1, (double)t);
    float b2_power = (float)pow((double)(float)o->beta_2, (double)t);
    float alpha = lr * sqrtf(1.0f - b2_power) / (1.0f - b1_power);
    float one_b1 = (float)(1.0 - o->beta_1), one_b2 = (float)(1.0 - o->beta_2);
    float *restrict mm = m->slot1, *restrict vv = m->slot2;
    for (long i = 0; i < n; i++) {
      mm[i] += (g[i] - mm[i]) * one_b1;
      vv[i] += (g[i] * g[i] - vv[i]) * one_b2;
      w[i] -= mm[i] * alpha / (sqrtf(vv[i]) + eps);
    }
    break;
  }
  case TB_OPT_RMSPROP: {
    float rho = (float)o->rho, eps = (float)o->epsilon, mu = (float)o->momentum;
    float one_rho = (float)(1.0 - o->rho);
    float *restrict vv = m->slot1, *restrict mm = m->slot2;
    for (long i = 0; i < n; i++) {
      vv[i] = rho * vv[i] + one_rho * (g[i] * g[i]);
      float inc = lr * g[i] / sqrtf(vv[i] + eps);
      if (mm != NULL) {
        mm[i] = mu * mm[i] + inc;
        w[i] -= mm[i];
      } else {
        w[i] -= inc;
      }
    }
    break;
  }
  }
  m->iterations++;
}
