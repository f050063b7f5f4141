/* Losses and metrics with Keras semantics.
 *
 * Every loss is a mean over the batch ("sum_over_batch_size"); per-sample
 * losses of mse, mae and binary_crossentropy are means over the last axis.
 * Probabilities given to a crossentropy are clipped to [1e-7, 1 - 1e-7] as
 * Keras's backend epsilon does, and clipped entries get a zero gradient.
 * When the last layer is a softmax and the loss is a (sparse) categorical
 * crossentropy on probabilities, the two are fused: the loss is computed from
 * the logits with log-sum-exp and the gradient w.r.t. the logits is p - y,
 * which is both cheaper and numerically stable (what Keras's TensorFlow backend
 * does when it finds a softmax under the loss).
 *
 * Sums are accumulated in double so the reported running means do not drift
 * over a long epoch. */
#include "internal.h"

#include <math.h>
#include <string.h>

#define TB_EPS 1e-7f

static int label_of(const float *y) {
  return (int)y[0];
}

/* log(sum(exp(z))) of one row, stable. */
static double logsumexp(const float *z, int k) {
  float mx = z[0];
  for (int c = 1; c < k; c++)
    mx = z[c] > mx ? z[c] : mx;
  double s = 0.0;
  for (int c = 0; c < k; c++)
    s += exp((double)(z[c] - mx));
  return (double)mx + log(s);
}

double tb__loss(tb_model_t *m, const float *out, const float *pre, const float *y, int n,
                float *dout) {
  int k = tb_model_n_outputs(m);
  tb_loss_kind_t kind = m->opts.loss;
  bool sparse = kind == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY;
  double total = 0.0;
  float inv_n = 1.0f / (float)n;

  for (int r = 0; r < n; r++) {
    const float *o = out + (long)r * k;
    const float *yr = y + (long)r * (sparse ? 1 : k);
    float *d = dout != NULL ? dout + (long)r * k : NULL;
    switch (kind) {
    case TB_LOSS_MSE:
    case TB_LOSS_MAE: {
      double s = 0.0;
      for (int c = 0; c < k; c++) {
        float e = o[c] - yr[c];
        if (kind == TB_LOSS_MSE) {
          s += (double)e * e;
          if (d)
            d[c] = 2.0f * e * inv_n / (float)k;
        } else {
          s += fabs((double)e);
          if (d)
            d[c] = (e > 0.0f ? 1.0f : e < 0.0f ? -1.0f : 0.0f) * inv_n / (float)k;
        }
      }
      total += s / k;
      break;
    }
    case TB_LOSS_BINARY_CROSSENTROPY: {
      double s = 0.0;
      for (int c = 0; c < k; c++) {
        float t = yr[c];
        if (m->opts.from_logits) {
          /* max(z, 0) - z * t + log(1 + exp(-|z|)) */
          float z = o[c];
          s += (z > 0.0f ? z : 0.0f) - z * t + log1p(exp(-fabs((double)z)));
          if (d)
            d[c] = (1.0f / (1.0f + expf(-z)) - t) * inv_n / (float)k;
        } else {
          float p = o[c];
          bool clipped = p < TB_EPS || p > 1.0f - TB_EPS;
          p = p < TB_EPS ? TB_EPS : p > 1.0f - TB_EPS ? 1.0f - TB_EPS : p;
          s += -(t * log((double)p) + (1.0 - t) * log(1.0 - (double)p));
          if (d)
            d[c] = clipped ? 0.0f : (-t / p + (1.0f - t) / (1.0f - p)) * inv_n / (float)k;
        }
      }
      total += s / k;
      break;
    }
    case TB_LOSS_CATEGORICAL_CROSSENTROPY:
    case TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY: {
      int label = sparse ? label_of(yr) : -1;
      if (m->fused_softmax_ce || m->opts.from_logits) {
        /* logits z: loss = lse(z) - sum_c y_c z_c; dL/dz = softmax(z) - y */
        const float *z = m->opts.from_logits ? o : pre + (long)r * k;
        double lse = logsumexp(z, k), s = 0.0;
        for (int c = 0; c < k; c++) {
          float t = sparse ? (c == label ? 1.0f : 0.0f) : yr[c];
          s += t * (lse - z[c]);
          if (d) {
            float p = m->opts.from_logits ? (float)exp(z[c] - lse) : o[c];
            d[c] = (p - t) * inv_n;
          }
        }
        total += s;
      } else {
        /* Keras: scale the probabilities to sum to 1, clip, -sum y log p. */
        double sum = 0.0, s = 0.0;
        for (int c = 0; c < k; c++)
          sum += o[c];
        if (sum <= 0.0)
          sum = TB_EPS;
        double gsum = 0.0; /* sum_c y_c / S, the normalisation's share */
        for (int c = 0; c < k; c++) {
          float t = sparse ? (c == label ? 1.0f : 0.0f) : yr[c];
          double p = o[c] / sum;
          bool clipped = p < TB_EPS || p > 1.0 - TB_EPS;
          p = p < TB_EPS ? TB_EPS : p > 1.0 - TB_EPS ? 1.0 - TB_EPS : p;
          s -= t * log(p);
          if (!clipped)
            gsum += t / sum;
          if (d)
            d[c] = clipped ? 0.0f : (float)(-t / (p * sum));
        }
        if (d)
          for (int c = 0; c < k; c++)
            d[c] = (d[c] + (float)gsum) * inv_n;
        total += s;
      }
      break;
    }
    }
  }
  return total / n;
}

/* Keras's accuracy variants, chosen from the loss at compile time. */
static double accuracy_sum(const tb_model_t *m, const float *out, const float *y, int n) {
  int k = tb_model_n_outputs(m);
  tb_loss_kind_t kind = m->opts.loss;
  double acc = 0.0;
  bool binary = kind == TB_LOSS_BINARY_CROSSENTROPY ||
                ((kind == TB_LOSS_MSE || kind == TB_LOSS_MAE) && k == 1);
  float thr = (kind == TB_LOSS_BINARY_CROSSENTROPY && m->opts.from_logits) ? 0.0f : 0.5f;
  for (int r = 0; r < n; r++) {
    const float *o = out + (long)r * k;
    if (binary) {
      const float *yr = y + (long)r * k;
      int hit = 0;
      for (int c = 0; c < k; c++)
        hit += (o[c] > thr) == (yr[c] > 0.5f);
      acc += (double)hit / k;
      continue;
    }
    int best = 0;
    for (int c = 1; c < k; c++)
      if (o[c] > o[best])
        best = c;
    int label;
    if (kind == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY) {
      label = label_of(y + r);
    } else {
      const float *yr = y + (long)r * k;
      label = 0;
      for (int c = 1; c < k; c++)
        if (yr[c] > yr[label])
          label = c;
    }
    acc += best == label;
  }
  return acc;
}

void tb__metrics_update(tb_model_t *m, const float *out, const float *y, int n, double loss) {
  unsigned mt = m->opts.metrics;
  int k = tb_model_n_outputs(m);
  m->m_loss_sum += loss * n;
  m->m_count += n;
  if (mt & TB_METRIC_ACCURACY)
    m->m_acc_sum += accuracy_sum(m, out, y, n);
  if (mt & (TB_METRIC_MSE | TB_METRIC_MAE)) {
    for (int r = 0; r < n; r++) {
      double se = 0.0, ae = 0.0;
      for (int c = 0; c < k; c++) {
        double e = (double)out[(long)r * k + c] - y[(long)r * k + c];
        se += e * e;
        ae += fabs(e);
      }
      m->m_mse_sum += se / k;
      m->m_mae_sum += ae / k;
    }
  }
}

void tb__metrics_logs(const tb_model_t *m, tb_logs_t *logs) {
  double n = m->m_count > 0 ? (double)m->m_count : 1.0;
  unsigned mt = m->opts.metrics;
  tb_logs_set(logs, "loss", m->m_loss_sum / n);
  if (mt & TB_METRIC_ACCURACY)
    tb_logs_set(logs, "accuracy", m->m_acc_sum / n);
  if (mt & TB_METRIC_MSE)
    tb_logs_set(logs, "mse", m->m_mse_sum / n);
  if (mt & TB_METRIC_MAE)
    tb_logs_set(logs, "mae", m->m_mae_sum / n);
}
