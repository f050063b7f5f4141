/* Forward and backward passes of the layer kinds (Dense with a fused
 * activation, a standalone Activation, Dropout), over one lane's rows.
 *
 * Buffers are sized once for the most rows a lane has had and reused, so a
 * training step allocates nothing. Dense computes Z = X W + b by first
 * copying b into every row of Z and then accumulating X W with beta = 1 (one
 * sgemm, no extra pass). Backward walks the layers in reverse; the first
 * layer skips dX, which nobody needs. Dropout masks cover the whole batch
 * and are drawn before the lanes start (tb__draw_masks), so each lane reads
 * its rows' part and the masks do not depend on the thread count. */
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

int tb__lane_reserve(tb_model_t *m, tb__lane_t *ln, int rows) {
  if (rows <= ln->cap)
    return 0;
  int L = m->n_layers;
  if (ln->z == NULL) {
    ln->z = calloc((size_t)L, sizeof(float *));
    ln->a = calloc((size_t)L, sizeof(float *));
    ln->g = calloc((size_t)L, sizeof(float *));
    if (ln->z == NULL || ln->a == NULL || ln->g == NULL)
      return TB_ENOMEM;
  }
  for (int i = 0; i < L; i++) {
    size_t out = (size_t)rows * (size_t)m->layers[i].n_out * sizeof(float);
    float *p;
    if ((p = realloc(ln->z[i], out)) == NULL)
      return TB_ENOMEM;
    ln->z[i] = p;
    if ((p = realloc(ln->a[i], out)) == NULL)
      return TB_ENOMEM;
    ln->a[i] = p;
    if ((p = realloc(ln->g[i], out)) == NULL)
      return TB_ENOMEM;
    ln->g[i] = p;
  }
  int n_out = tb_model_n_outputs(m);
  float *p = realloc(ln->dout, (size_t)rows * (size_t)n_out * sizeof(float));
  if (p == NULL)
    return TB_ENOMEM;
  ln->dout = p;
  if ((p = realloc(ln->x, (size_t)rows * (size_t)m->n_inputs * sizeof(float))) == NULL)
    return TB_ENOMEM;
  ln->x = p;
  int yw = m->y_width > n_out ? m->y_width : n_out;
  if ((p = realloc(ln->y, (size_t)rows * (size_t)yw * sizeof(float))) == NULL)
    return TB_ENOMEM;
  ln->y = p;
  ln->cap = rows;
  return 0;
}

void tb__lane_release(tb_model_t *m, tb__lane_t *ln) {
  for (int i = 0; ln->z != NULL && i < m->n_layers; i++) {
    free(ln->z[i]);
    free(ln->a[i]);
    free(ln->g[i]);
  }
  free(ln->z);
  free(ln->a);
  free(ln->g);
  free(ln->dout);
  free(ln->x);
  free(ln->y);
  free(ln->part);
  memset(ln, 0, sizeof(*ln));
}

int tb__draw_masks(tb_model_t *m, int rows) {
  for (int i = 0; i < m->n_layers; i++) {
    tb__layer_t *l = &m->layers[i];
    if (l->kind != TB__DROPOUT || l->rate <= 0.0f)
      continue;
    long sz = (long)rows * l->n_out;
    if (rows > m->cap_rows || l->mask == NULL) {
      float *p = realloc(l->mask, (size_t)(rows > m->cap_rows ? rows : m->cap_rows) *
                                      (size_t)l->n_out * sizeof(float));
      if (p == NULL)
        return TB_ENOMEM;
      l->mask = p;
    }
    /* Inverted dropout as Keras: keep with probability 1 - rate and scale
     * the kept units by 1 / (1 - rate), so inference needs no change. */
    float keep = 1.0f - l->rate, scale = 1.0f / keep;
    for (long k = 0; k < sz; k++)
      l->mask[k] = tb_rng_uniform(&m->rng) < keep ? scale : 0.0f;
  }
  if (rows > m->cap_rows)
    m->cap_rows = rows;
  return 0;
}

const float *tb__forward(tb_model_t *m, tb__lane_t *ln, const float *x, int n, int row0,
                         bool training) {
  const float *in = x;
  ln->row0 = row0;
  for (int i = 0; i < m->n_layers; i++) {
    tb__layer_t *l = &m->layers[i];
    float *z = ln->z[i], *a = ln->a[i];
    long sz = (long)n * l->n_out;
    switch (l->kind) {
    case TB__DENSE:
      for (int r = 0; r < n; r++)
        memcpy(z + (long)r * l->n_out, l->b, (size_t)l->n_out * sizeof(float));
      /* Z = X * W + Z, where Z holds b in every row */
      tb__sgemm(false, false, n, l->n_out, l->n_in, 1.0f, in, l->W, 1.0f, z);
      tb__act_forward(l->act, l->alpha, z, a, n, l->n_out);
      break;
    case TB__ACTIVATION:
      memcpy(z, in, (size_t)sz * sizeof(float));
      tb__act_forward(l->act, l->alpha, z, a, n, l->n_out);
      break;
    case TB__DROPOUT:
      if (training && l->rate > 0.0f) {
        const float *mask = l->mask + (long)row0 * l->n_out;
        for (long k = 0; k < sz; k++)
          a[k] = in[k] * mask[k];
      } else {
        memcpy(a, in, (size_t)sz * sizeof(float));
      }
      break;
    }
    in = a;
  }
  return in;
}

/* Walks back from ln->dout (dL/d output of the last layer, or dL/dz of the
 * last Dense when the softmax is fused into the loss). */
void tb__backward(tb_model_t *m, tb__lane_t *ln, const float *x, int n, float *grads) {
  const float *g_next = ln->dout; /* gradient w.r.t. the current layer's output */
  for (int i = m->n_layers - 1; i >= 0; i--) {
    tb__layer_t *l = &m->layers[i];
    const float *in = i > 0 ? ln->a[i - 1] : x;
    float *g = ln->g[i];
    float *g_in = i > 0 ? ln->g[i - 1] : NULL; /* dL/d input */
    long sz = (long)n * l->n_out;
    bool fused = m->fused_softmax_ce && i == m->n_layers - 1;
    if (g_next != g)
      memcpy(g, g_next, (size_t)sz * sizeof(float));
    switch (l->kind) {
    case TB__DENSE: {
      float *dW = grads + l->off, *db = dW + (long)l->n_in * l->n_out;
      if (!fused)
        tb__act_backward(l->act, l->alpha, ln->z[i], ln->a[i], g, n, l->n_out);
      /* dW = X^T * dZ */
      tb__sgemm(true, false, l->n_in, l->n_out, n, 1.0f, in, g, 0.0f, dW);
      /* db = column sums of dZ */
      memset(db, 0, (size_t)l->n_out * sizeof(float));
      for (int r = 0; r < n; r++) {
        const float *gr = g + (long)r * l->n_out;
        for (int c = 0; c < l->n_out; c++)
          db[c] += gr[c];
      }
      /* dX = dZ * W^T */
      if (g_in != NULL)
        tb__sgemm(false, true, n, l->n_in, l->n_out, 1.0f, g, l->W, 0.0f, g_in);
      break;
    }
    case TB__ACTIVATION:
      if (!fused)
        tb__act_backward(l->act, l->alpha, ln->z[i], ln->a[i], g, n, l->n_out);
      if (g_in != NULL)
        memcpy(g_in, g, (size_t)sz * sizeof(float));
      break;
    case TB__DROPOUT:
      /* The forward was a[k] = in[k] * mask[k] over this lane's mask rows
       * (a copy at rate 0, which draws no mask). */
      if (g_in != NULL && l->rate > 0.0f) {
        const float *mask = l->mask + (long)ln->row0 * l->n_out;
        for (long k = 0; k < sz; k++)
          g_in[k] = g[k] * mask[k];
      } else if (g_in != NULL) {
        memcpy(g_in, g, (size_t)sz * sizeof(float));
      }
      break;
    }
    if (g_in == NULL)
      break;
    g_next = g_in;
  }
}
