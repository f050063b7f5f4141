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
 * Values are float32, as Keras computes them: each element of a loss is the
 * float32 nearest its exact value (a product or a difference of floats is
 * exactly that; log and exp are evaluated in double and rounded), and every
 * reduction adds float32s in order: the mean over the last axis, the sum over
 * the batch, its division by the row count. The running metrics are Keras's
 * Mean trackers (keras/src/metrics/reduction_metrics.py): a float32 total
 * that gains loss * rows per batch (per-sample sums for metrics) and a
 * float32 count that gains rows, reported as total / count (0 when the count
 * is 0, as divide_no_nan). So a squared error of 1e40 is inf, as in Keras. */
#include "internal.h"

#include <math.h>
#include <string.h>
#include <strings.h>

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

float tb__loss_sum(const tb_model_t *m, const float *out, const float *pre, const float *y, int n,
                   float inv_n, float *dout) {
  int k = tb_model_n_outputs(m);
  tb_loss_kind_t kind = m->opts.loss;
  bool sparse = kind == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY;
  float total = 0.0f; /* the rows' sum of per-sample losses */

  for (int r = 0; r < n; r++) {
    const float *o = out + (long)r * k;
    const float *yr = y + (long)r * (sparse ? 1 : k);
    float *d = dout != NULL ? dout + (long)r * k : NULL;
    switch (kind) {
    case TB_LOSS_MSE:
    case TB_LOSS_MAE: {
      float s = 0.0f;
      for (int c = 0; c < k; c++) {
        float e = o[c] - yr[c];
        if (kind == TB_LOSS_MSE) {
          s += e * e;
          if (d)
            d[c] = 2.0f * e * inv_n / (float)k;
        } else {
          s += fabsf(e);
          if (d)
            d[c] = (e > 0.0f ? 1.0f : e < 0.0f ? -1.0f : 0.0f) * inv_n / (float)k;
        }
      }
      total += s / (float)k;
      break;
    }
    case TB_LOSS_BINARY_CROSSENTROPY: {
      float s = 0.0f;
      for (int c = 0; c < k; c++) {
        float t = yr[c];
        if (m->opts.from_logits) {
          /* max(z, 0) - z * t + log(1 + exp(-|z|)) */
          float z = o[c];
          s += (float)((z > 0.0f ? z : 0.0f) - z * t + log1p(exp(-fabs((double)z))));
          if (d)
            d[c] = (1.0f / (1.0f + expf(-z)) - t) * inv_n / (float)k;
        } else {
          float p = o[c];
          bool clipped = p < TB_EPS || p > 1.0f - TB_EPS;
          p = p < TB_EPS ? TB_EPS : p > 1.0f - TB_EPS ? 1.0f - TB_EPS : p;
          s += (float)(-(t * log((double)p) + (1.0 - t) * log(1.0 - (double)p)));
          if (d)
            d[c] = clipped ? 0.0f : (-t / p + (1.0f - t) / (1.0f - p)) * inv_n / (float)k;
        }
      }
      total += s / (float)k;
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
        total += (float)s;
      } else {
        /* Keras: scale the probabilities to sum to 1, clip, -sum y log p. */
        double sum = 0.0;
        float s = 0.0f;
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
          s -= (float)(t * log(p));
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
  return total;
}

/* Keras's accuracy variants, chosen from the loss at compile time: the
 * float32 sum over the batch of each row's value (1 or 0, or for binary
 * accuracy over several outputs the row's mean). */
static float accuracy_sum(const tb_model_t *m, const float *out, const float *y, int n) {
  int k = tb_model_n_outputs(m);
  tb_loss_kind_t kind = m->opts.loss;
  float acc = 0.0f;
  bool binary = kind == TB_LOSS_BINARY_CROSSENTROPY ||
                ((kind == TB_LOSS_MSE || kind == TB_LOSS_MAE) && k == 1);
  float thr = (kind == TB_LOSS_BINARY_CROSSENTROPY && m->opts.from_logits) ? 0.0f : 0.5f;
  for (int r = 0; r < n; r++) {
    const float *o = out + (long)r * k;
    if (binary) {
      const float *yr = y + (long)r * k;
      float hit = 0.0f;
      for (int c = 0; c < k; c++)
        hit += (float)((o[c] > thr) == (yr[c] > 0.5f));
      acc += hit / (float)k;
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
    acc += (float)(best == label);
  }
  return acc;
}

void tb__metric_sums(const tb_model_t *m, const float *out, const float *y, int n, float *stats) {
  unsigned mt = m->opts.metrics;
  int k = tb_model_n_outputs(m);
  if (mt & TB_METRIC_ACCURACY)
    stats[TB_REDUCE_ACCURACY] += accuracy_sum(m, out, y, n);
  if (mt & (TB_METRIC_MSE | TB_METRIC_MAE)) {
    float se_sum = 0.0f, ae_sum = 0.0f;
    for (int r = 0; r < n; r++) {
      float se = 0.0f, ae = 0.0f;
      for (int c = 0; c < k; c++) {
        float e = y[(long)r * k + c] - out[(long)r * k + c];
        se += e * e;
        ae += fabsf(e);
      }
      se_sum += se / (float)k;
      ae_sum += ae / (float)k;
    }
    stats[TB_REDUCE_MSE] += se_sum;
    stats[TB_REDUCE_MAE] += ae_sum;
  }
}

void tb__metrics_add(tb_model_t *m, const float *stats) {
  float rows = stats[TB_REDUCE_ROWS];
  /* the batch loss, the float32 mean of its per-sample losses; the loss
   * tracker: update_state(loss, sample_weight=rows) */
  float loss = stats[TB_REDUCE_LOSS] / rows;
  m->m_loss_sum += loss * rows;
  m->m_count += rows;
  m->m_acc_sum += stats[TB_REDUCE_ACCURACY];
  m->m_mse_sum += stats[TB_REDUCE_MSE];
  m->m_mae_sum += stats[TB_REDUCE_MAE];
}

static const char *const default_names[3] = {"accuracy", "mse", "mae"};

static float metric_total(const tb_model_t *m, unsigned bit) {
  return bit == TB_METRIC_ACCURACY ? m->m_acc_sum
         : bit == TB_METRIC_MSE    ? m->m_mse_sum
                                   : m->m_mae_sum;
}

/* divide_no_nan(total, count) */
static float mean_of(float total, float count) {
  return count != 0.0f ? total / count : 0.0f;
}

void tb__metrics_logs(const tb_model_t *m, tb_logs_t *logs) {
  tb_logs_set(logs, "loss", mean_of(m->m_loss_sum, m->m_count));
  if (m->opts.n_metric_names > 0) {
    for (int i = 0; i < m->opts.n_metric_names; i++) {
      unsigned bit = tb_metric_from_name(m->opts.metric_names[i]);
      tb_logs_set(logs, m->opts.metric_names[i], mean_of(metric_total(m, bit), m->m_count));
    }
    return;
  }
  for (int i = 0; i < 3; i++)
    if (m->opts.metrics & (1u << i))
      tb_logs_set(logs, default_names[i], mean_of(metric_total(m, 1u << i), m->m_count));
}

unsigned tb_metric_from_name(const char *name) {
  static const char *const mse[] = {"mse", "MSE", "mean_squared_error", "MeanSquaredError"};
  static const char *const mae[] = {"mae", "MAE", "mean_absolute_error", "MeanAbsoluteError"};
  if (name == NULL)
    return 0;
  /* compile_utils.get_metric: str(identifier).lower() in ["accuracy", "acc"] */
  if (strcasecmp(name, "accuracy") == 0 || strcasecmp(name, "acc") == 0)
    return TB_METRIC_ACCURACY;
  for (int i = 0; i < 4; i++) {
    if (strcmp(name, mse[i]) == 0)
      return TB_METRIC_MSE;
    if (strcmp(name, mae[i]) == 0)
      return TB_METRIC_MAE;
  }
  return 0;
}

int tb__metric_direction(const tb_model_t *m, const char *name) {
  unsigned bit = 0;
  if (m->opts.n_metric_names > 0) {
    for (int i = 0; i < m->opts.n_metric_names && bit == 0; i++)
      if (strcmp(m->opts.metric_names[i], name) == 0)
        bit = tb_metric_from_name(name);
  } else {
    for (int i = 0; i < 3 && bit == 0; i++)
      if ((m->opts.metrics & (1u << i)) && strcmp(default_names[i], name) == 0)
        bit = 1u << i;
  }
  return bit == 0 ? 0 : bit == TB_METRIC_ACCURACY ? 1 : -1;
}
