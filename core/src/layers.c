/* Forward and backward passes of the layer kinds (Dense with a fused
 * activation, a standalone Activation, Dropout).
 *
 * Buffers are sized once for the largest batch and reused, so a training step
 * allocates nothing. Dense computes Z = X W + b by first copying b into every
 * row of Z and then accumulating X W with beta = 1 (one sgemm, no extra pass).
 * Backward walks the layers in reverse; the first layer skips dX, which nobody
 * needs. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tb__act_forward(tb_act_t act, float alpha, const float *restrict z, float *restrict a,
                     int rows, int cols) {
  long n = (long)rows * cols;
  switch (act) {
  case TB_ACT_LINEAR:
    if (a != z)
      memcpy(a, z, (size_t)n * sizeof(float));
    break;
  case TB_ACT_RELU:
    for (long i = 0; i < n; i++)
      a[i] = z[i] > 0.0f ? z[i] : 0.0f;
    break;
  case TB_ACT_LEAKY_RELU:
    for (long i = 0; i < n; i++)
      a[i] = z[i] > 0.0f ? z[i] : alpha * z[i];
    break;
  case TB_ACT_SIGMOID:
    for (long i = 0; i < n; i++)
      a[i] = 1.0f / (1.0f + expf(-z[i]));
    break;
  case TB_ACT_TANH:
    for (long i = 0; i < n; i++)
      a[i] = tanhf(z[i]);
    break;
  case TB_ACT_SOFTMAX:
    /* Subtract the row maximum so exp never overflows. */
    for (int r = 0; r < rows; r++) {
      const float *zr = z + (long)r * cols;
      float *ar = a + (long)r * cols;
      float mx = zr[0];
      for (int c = 1; c < cols; c++)
        mx = zr[c] > mx ? zr[c] : mx;
      float sum = 0.0f;
      for (int c = 0; c < cols; c++) {
        ar[c] = expf(zr[c] - mx);
        sum += ar[c];
      }
      float inv = 1.0f / sum;
      for (int c = 0; c < cols; c++)
        ar[c] *= inv;
    }
    break;
  }
}

void tb__act_backward(tb_act_t act, float alpha, const float *z, const float *a, float *g, int rows,
                      int cols) {
  long n = (long)rows * cols;
  switch (act) {
  case TB_ACT_LINEAR:
    break;
  case TB_ACT_RELU:
    for (long i = 0; i < n; i++)
      g[i] = z[i] > 0.0f ? g[i] : 0.0f;
    break;
  case TB_ACT_LEAKY_RELU:
    for (long i = 0; i < n; i++)
      g[i] = z[i] > 0.0f ? g[i] : alpha * g[i];
    break;
  case TB_ACT_SIGMOID:
    for (long i = 0; i < n; i++)
      g[i] *= a[i] * (1.0f - a[i]);
    break;
  case TB_ACT_TANH:
    for (long i = 0; i < n; i++)
      g[i] *= 1.0f - a[i] * a[i];
    break;
  case TB_ACT_SOFTMAX:
    /* dz_i = a_i * (g_i - sum_j g_j a_j) */
    for (int r = 0; r < rows; r++) {
      const float *ar = a + (long)r * cols;
      float *gr = g + (long)r * cols;
      float dot = 0.0f;
      for (int c = 0; c < cols; c++)
        dot += gr[c] * ar[c];
      for (int c = 0; c < cols; c++)
        gr[c] = ar[c] * (gr[c] - dot);
    }
    break;
  }
}

int tb__ensure_rows(tb_model_t *m, int rows) {
  if (rows <= m->cap_rows)
    return 0;
  for (int i = 0; i < m->n_layers; i++) {
    tb__layer_t *l = &m->layers[i];
    size_t out = (size_t)rows * (size_t)l->n_out * sizeof(float);
    float *z = realloc(l->z, out), *a, *g, *mask;
    if (z == NULL)
      return TB_ENOMEM;
    l->z = z;
    if ((a = realloc(l->a, out)) == NULL)
      return TB_ENOMEM;
    l->a = a;
    if ((g = realloc(l->g, out)) == NULL)
      return TB_ENOMEM;
    l->g = g;
    if (l->kind == TB__DROPOUT) {
      if ((mask = realloc(l->mask, out)) == NULL)
        return TB_ENOMEM;
      l->mask = mask;
    }
  }
  int n_out = tb_model_n_outputs(m);
  float *d = realloc(m->dout, (size_t)rows * (size_t)n_out * sizeof(float));
  if (d == NULL)
    return TB_ENOMEM;
  m->dout = d;
  float *x = realloc(m->xbuf, (size_t)rows * (size_t)m->n_inputs * sizeof(float));
  if (x == NULL)
    return TB_ENOMEM;
  m->xbuf = x;
  int yw = m->y_width > n_out ? m->y_width : n_out;
  float *y = realloc(m->ybuf, (size_t)rows * (size_t)yw * sizeof(float));
  if (y == NULL)
    return TB_ENOMEM;
  m->ybuf = y;
  m->cap_rows = rows;
  return 0;
}

const float *tb__forward(tb_model_t *m, const float *x, int n, bool training) {
  const float *in = x;
  for (int i = 0; i < m->n_layers; i++) {
    tb__layer_t *l = &m->layers[i];
    long sz = (long)n * l->n_out;
    switch (l->kind) {
    case TB__DENSE:
      for (int r = 0; r < n; r++)
        memcpy(l->z + (long)r * l->n_out, l->b, (size_t)l->n_out * sizeof(float));
      /* Z = X * W + Z, where Z holds b in every row */
      tb__sgemm(false, false, n, l->n_out, l->n_in, 1.0f, in, l->W, 1.0f, l->z);
      tb__act_forward(l->act, l->alpha, l->z, l->a, n, l->n_out);
      break;
    case TB__ACTIVATION:
      memcpy(l->z, in, (size_t)sz * sizeof(float));
      tb__act_forward(l->act, l->alpha, l->z, l->a, n, l->n_out);
      break;
    case TB__DROPOUT:
      if (training && l->rate > 0.0f) {
        /* Inverted dropout as Keras: keep with probability 1 - rate and scale
         * the kept units by 1 / (1 - rate), so inference needs no change. */
        float keep = 1.0f - l->rate, scale = 1.0f / keep;
        for (long k = 0; k < sz; k++) {
          l->mask[k] = tb_rng_uniform(&m->rng) < keep ? scale : 0.0f;
          l->a[k] = in[k] * l->mask[k];
        }
      } else {
        memcpy(l->a, in, (size_t)sz * sizeof(float));
      }
      break;
    }
    in = l->a;
  }
  return in;
}

/* Walks back from m->dout (dL/d output of the last layer, or dL/dz of the last
 * Dense when the softmax is fused into the loss) and fills m->grads. */
void tb__backward(tb_model_t *m, const float *x, int n) {
  const float *g_next = m->dout; /* gradient w.r.t. the current layer's output */
  for (int i = m->n_layers - 1; i >= 0; i--) {
    tb__layer_t *l = &m->layers[i];
    const float *in = i > 0 ? m->layers[i - 1].a : x;
    float *g_in = i > 0 ? m->layers[i - 1].g : NULL; /* dL/d input */
    long sz = (long)n * l->n_out;
    bool fused = m->fused_softmax_ce && i == m->n_layers - 1;
    if (g_next != l->g)
      memcpy(l->g, g_next, (size_t)sz * sizeof(float));
    switch (l->kind) {
    case TB__DENSE:
      if (!fused)
        tb__act_backward(l->act, l->alpha, l->z, l->a, l->g, n, l->n_out);
      /* dW = X^T * dZ */
      tb__sgemm(true, false, l->n_in, l->n_out, n, 1.0f, in, l->g, 0.0f, l->dW);
      /* db = column sums of dZ */
      memset(l->db, 0, (size_t)l->n_out * sizeof(float));
      for (int r = 0; r < n; r++) {
        const float *gr = l->g + (long)r * l->n_out;
        for (int c = 0; c < l->n_out; c++)
          l->db[c] += gr[c];
      }
      /* dX = dZ * W^T */
      if (g_in != NULL)
        tb__sgemm(false, true, n, l->n_in, l->n_out, 1.0f, l->g, l->W, 0.0f, g_in);
      break;
    case TB__ACTIVATION:
      if (!fused)
        tb__act_backward(l->act, l->alpha, l->z, l->a, l->g, n, l->n_out);
      if (g_in != NULL)
        memcpy(g_in, l->g, (size_t)sz * sizeof(float));
      break;
    case TB__DROPOUT:
      if (g_in != NULL)
        for (long k = 0; k < sz; k++)
          g_in[k] = l->g[k] * l->mask[k];
      break;
    }
    if (g_in == NULL)
      break;
    g_next = g_in;
  }
}
