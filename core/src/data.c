/* In-memory datasets: allocation, slicing, Keras's validation split, one-hot
 * labels, the built-in generators and feature scaling. The file loaders (CSV,
 * IDX) live in loaders.c and build on tb_dataset_new().
 *
 * A dataset is two plain float arrays so that the training loop can hand rows
 * straight to sgemm. Every size is an int, and tb_dataset_new() refuses a
 * matrix whose element count does not fit in an int, so that code elsewhere
 * may index x[i * n_features + j] with int arithmetic without overflowing.
 *
 * Generators never call rand(): each seeds its own tb_rng_t and draws in a
 * fixed, documented order, so a seed gives bitwise the same data on a given
 * build. Scaling statistics are accumulated in double so that a feature with
 * a large offset (timestamps, say) keeps its precision. */
#include "trainbus/data.h"

#include "loaders.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* M_PI is an XSI extension that strict C11 with _POSIX_C_SOURCE hides. */
#define PI 3.14159265358979323846

static int fits_int(long long a, long long b) {
  return a >= 0 && b >= 0 && (b == 0 || a <= INT_MAX / b);
}

/* calloc that never asks for zero bytes, so an empty matrix is still a valid
 * pointer and "NULL means out of memory" stays true. */
static float *alloc_floats(int count) {
  return calloc(count > 0 ? (size_t)count : 1, sizeof(float));
}

tb_dataset_t *tb_dataset_new(int n, int n_features, int n_outputs) {
  tb_dataset_t *d = NULL;
  if (n < 0 || n_features < 1 || n_outputs < 0)
    return NULL;
  if (!fits_int(n, n_features) || !fits_int(n, n_outputs))
    return NULL;
  d = calloc(1, sizeof(*d));
  if (d == NULL)
    return NULL;
  d->n = n;
  d->n_features = n_features;
  d->n_outputs = n_outputs;
  d->x = alloc_floats(n * n_features);
  d->y = alloc_floats(n * n_outputs);
  if (d->x == NULL || d->y == NULL)
    goto fail;
  return d;

fail:
  tb_dataset_free(d);
  return NULL;
}

tb_dataset_t *tb__dataset_adopt(int n, int n_features, int n_outputs, float *x, float *y) {
  tb_dataset_t *d;
  if (n < 0 || n_features < 1 || n_outputs < 0 || x == NULL || (n_outputs > 0 && y == NULL))
    return NULL;
  if (y == NULL && (y = malloc(sizeof(float))) == NULL)
    return NULL;
  if ((d = calloc(1, sizeof(*d))) == NULL) {
    if (n_outputs == 0)
      free(y);
    return NULL;
  }
  d->n = n;
  d->n_features = n_features;
  d->n_outputs = n_outputs;
  d->x = x;
  d->y = y;
  return d;
}

void tb_dataset_free(tb_dataset_t *d) {
  if (d == NULL)
    return;
  free(d->x);
  free(d->y);
  tb_classes_free(d->classes);
  free(d);
}

int tb_dataset_slice(const tb_dataset_t *d, int start, int count, tb_dataset_t **out) {
  tb_dataset_t *s;
  if (out != NULL)
    *out = NULL;
  if (d == NULL || out == NULL || start < 0 || count < 0 || start > d->n || count > d->n - start)
    return TB_EINVAL;
  s = tb_dataset_new(count, d->n_features, d->n_outputs);
  if (s == NULL)
    return TB_ENOMEM;
  s->n_classes = d->n_classes;
  memcpy(s->x, d->x + (size_t)start * d->n_features, (size_t)count * d->n_features * sizeof(float));
  memcpy(s->y, d->y + (size_t)start * d->n_outputs, (size_t)count * d->n_outputs * sizeof(float));
  *out = s;
  return 0;
}

/* Keras 3 computes the split point as
 *     split_at = int(math.floor(batch_dim * (1.0 - validation_split)))
 * and raises when split_at is 0 or batch_dim (train_validation_split() in
 * keras/src/trainers/data_adapters/array_slicing.py, read in the keras-team/keras
 * repository). We do the same arithmetic in double, so the rounding quirks
 * match too: 90 rows at 0.3 give 62 training rows, not 63, because
 * 1.0 - 0.3 is just below 0.7. */
int tb_dataset_split_tail(const tb_dataset_t *d, double fraction, tb_dataset_t **train,
                          tb_dataset_t **val, tb_err_t *err) {
  tb_dataset_t *t = NULL, *v = NULL;
  double at;
  int split_at, r;
  if (train != NULL)
    *train = NULL;
  if (val != NULL)
    *val = NULL;
  if (d == NULL || train == NULL || val == NULL)
    return tb_errf(err, TB_EINVAL, "split: dataset and both outputs are required");
  if (!(fraction > 0.0 && fraction < 1.0))
    return tb_errf(err, TB_EINVAL, "validation_split: expected a fraction in (0, 1), got %g",
                   fraction);
  at = floor((double)d->n * (1.0 - fraction));
  split_at = (int)at;
  if (split_at <= 0 || split_at >= d->n)
    return tb_errf(err, TB_ERANGE,
                   "validation_split=%g: %d rows are not enough to leave at least one row for "
                   "training and one for validation",
                   fraction, d->n);
  r = tb_dataset_slice(d, 0, split_at, &t);
  if (r != 0)
    goto fail;
  r = tb_dataset_slice(d, split_at, d->n - split_at, &v);
  if (r != 0)
    goto fail;
  *train = t;
  *val = v;
  return 0;

fail:
  tb_dataset_free(t);
  tb_dataset_free(v);
  return tb_errf(err, r, "validation_split: %s", tb_strerror(r));
}

int tb_dataset_one_hot(tb_dataset_t *d, tb_err_t *err) {
  float *y;
  int k;
  if (d == NULL)
    return tb_errf(err, TB_EINVAL, "one_hot: no dataset");
  k = d->n_classes;
  if (d->n_outputs != 1 || k < 1)
    return tb_errf(err, TB_EINVAL,
                   "one_hot: expected one column of class indices with n_classes > 0, got "
                   "%d columns and n_classes %d",
                   d->n_outputs, k);
  if (!fits_int(d->n, k))
    return tb_errf(err, TB_ERANGE, "one_hot: %d rows of %d classes is too large", d->n, k);
  /* Check every label before touching d, so a failure leaves it unchanged. */
  for (int i = 0; i < d->n; i++) {
    float c = d->y[i];
    if (!(c >= 0.0f && c < (float)k && c == floorf(c)))
      return tb_errf(err, TB_ERANGE, "one_hot: row %d: label %g is not a class index in 0..%d", i,
                     (double)c, k - 1);
  }
  y = alloc_floats(d->n * k);
  if (y == NULL)
    return tb_errf(err, TB_ENOMEM, "one_hot: out of memory for %d x %d", d->n, k);
  for (int i = 0; i < d->n; i++)
    y[(size_t)i * k + (size_t)d->y[i]] = 1.0f;
  free(d->y);
  d->y = y;
  d->n_outputs = k;
  return 0;
}

int tb_gen_seed(tb_dataset_t **out) {
  static const float xs[4] = {1, 2, 3, 4}, ys[4] = {0, 0, 1, 1};
  tb_dataset_t *d;
  if (out == NULL)
    return TB_EINVAL;
  *out = NULL;
  d = tb_dataset_new(4, 1, 1);
  if (d == NULL)
    return TB_ENOMEM;
  memcpy(d->x, xs, sizeof(xs));
  memcpy(d->y, ys, sizeof(ys));
  d->n_classes = 2;
  *out = d;
  return 0;
}

/* The CS231n spiral, two arms: point i of N has radius r = i / (N - 1) and
 * angle t = 4 r (radians) plus gaussian noise on the angle; class 1 is class 0
 * turned by pi. Each row draws exactly one normal, in row order, so the
 * stream of draws does not depend on the noise level. The pairs of rows are
 * then shuffled (pairs stay class 0, class 1): in radius order a tail split,
 * which is what Keras's validation_split takes, would hold only the outer end
 * of the arms, and validation would measure extrapolation. */
int tb_gen_spirals(int n_per_class, double noise, uint64_t seed, tb_dataset_t **out) {
  tb_dataset_t *d;
  tb_rng_t rng;
  if (out == NULL)
    return TB_EINVAL;
  *out = NULL;
  if (n_per_class < 1 || n_per_class > INT_MAX / 4 || !(noise >= 0.0 && isfinite(noise)))
    return TB_EINVAL;
  d = tb_dataset_new(2 * n_per_class, 2, 1);
  if (d == NULL)
    return TB_ENOMEM;
  d->n_classes = 2;
  tb_rng_seed(&rng, seed);
  for (int i = 0; i < n_per_class; i++) {
    double r = n_per_class > 1 ? (double)i / (n_per_class - 1) : 0.0;
    for (int c = 0; c < 2; c++) {
      size_t row = 2 * (size_t)i + (size_t)c;
      double t = 4.0 * r + noise * tb_rng_normal(&rng) + (c == 1 ? PI : 0.0);
      d->x[row * 2] = (float)(r * sin(t));
      d->x[row * 2 + 1] = (float)(r * cos(t));
      d->y[row] = (float)c;
    }
  }
  for (int i = n_per_class - 1; i > 0; i--) {
    int j = (int)tb_rng_below(&rng, (uint32_t)i + 1);
    float t[4];
    memcpy(t, d->x + 4 * (size_t)i, sizeof(t));
    memcpy(d->x + 4 * (size_t)i, d->x + 4 * (size_t)j, sizeof(t));
    memcpy(d->x + 4 * (size_t)j, t, sizeof(t));
  }
  *out = d;
  return 0;
}

/* Like scikit-learn's make_blobs (centers uniform in [-10, 10], points
 * center + std * N(0, 1)), except that row i belongs to class i % k rather
 * than to a shuffled block: the classes come out balanced (the first n % k
 * classes get one extra row) and spread evenly, so a tail validation split
 * sees every class. Draw order: all centers, class by class, then each row's
 * features. */
int tb_gen_blobs(int n, int k, int n_features, double std, uint64_t seed, tb_dataset_t **out) {
  tb_dataset_t *d = NULL;
  double *centers = NULL;
  tb_rng_t rng;
  int r;
  if (out == NULL)
    return TB_EINVAL;
  *out = NULL;
  if (n < 1 || k < 1 || n_features < 1 || !(std >= 0.0 && isfinite(std)) ||
      !fits_int(k, n_features) || !fits_int(n, n_features))
    return TB_EINVAL;
  d = tb_dataset_new(n, n_features, 1);
  centers = malloc((size_t)k * n_features * sizeof(double));
  if (d == NULL || centers == NULL) {
    r = TB_ENOMEM;
    goto fail;
  }
  d->n_classes = k;
  tb_rng_seed(&rng, seed);
  for (size_t i = 0; i < (size_t)k * n_features; i++)
    centers[i] = -10.0 + 20.0 * tb_rng_uniform_d(&rng);
  for (int i = 0; i < n; i++) {
    int c = i % k;
    for (int j = 0; j < n_features; j++)
      d->x[(size_t)i * n_features + j] =
          (float)(centers[(size_t)c * n_features + j] + std * tb_rng_normal(&rng));
    d->y[i] = (float)c;
  }
  free(centers);
  *out = d;
  return 0;

fail:
  free(centers);
  tb_dataset_free(d);
  return r;
}

/* Fills shift and mult for one feature column from train. */
static void fit_column(tb_scaler_t *s, const tb_dataset_t *train, int j) {
  const float *x = train->x;
  size_t nf = (size_t)train->n_features;
  if (s->mode == TB_SCALE_MINMAX) {
    float lo = x[j], hi = x[j];
    for (int i = 1; i < train->n; i++) {
      float v = x[(size_t)i * nf + j];
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    /* A constant feature keeps a unit scale (scikit-learn does the same), so
     * it maps to 0 on train and other data is only shifted. */
    s->shift[j] = lo;
    s->mult[j] = hi > lo ? (float)(1.0 / ((double)hi - (double)lo)) : 1.0f;
  } else {
    /* Two passes: the textbook one-pass formula loses everything to
     * cancellation when the mean is large compared to the spread. */
    double sum = 0.0, ss = 0.0, mean, sd;
    for (int i = 0; i < train->n; i++)
      sum += x[(size_t)i * nf + j];
    mean = sum / train->n;
    for (int i = 0; i < train->n; i++) {
      double dv = x[(size_t)i * nf + j] - mean;
      ss += dv * dv;
    }
    sd = sqrt(ss / train->n);
    s->shift[j] = (float)mean;
    s->mult[j] = sd > 0.0 ? (float)(1.0 / sd) : 1.0f;
  }
}

int tb_scaler_fit(tb_scaler_t *s, tb_scale_t mode, double divisor, const tb_dataset_t *train) {
  int nf;
  if (s == NULL)
    return TB_EINVAL;
  memset(s, 0, sizeof(*s));
  if (train == NULL || train->n_features < 1)
    return TB_EINVAL;
  if (mode != TB_SCALE_NONE && mode != TB_SCALE_MINMAX && mode != TB_SCALE_STANDARD &&
      mode != TB_SCALE_DIVIDE)
    return TB_EINVAL;
  if (mode == TB_SCALE_DIVIDE && !(isfinite(divisor) && divisor != 0.0))
    return TB_EINVAL;
  if ((mode == TB_SCALE_MINMAX || mode == TB_SCALE_STANDARD) && train->n < 1)
    return TB_EINVAL;
  nf = train->n_features;
  s->shift = alloc_floats(nf);
  s->mult = alloc_floats(nf);
  if (s->shift == NULL || s->mult == NULL)
    goto fail;
  s->mode = mode;
  s->n_features = nf;
  for (int j = 0; j < nf; j++) {
    if (mode == TB_SCALE_MINMAX || mode == TB_SCALE_STANDARD) {
      fit_column(s, train, j);
    } else {
      s->shift[j] = 0.0f;
      s->mult[j] = mode == TB_SCALE_DIVIDE ? (float)(1.0 / divisor) : 1.0f;
    }
  }
  return 0;

fail:
  tb_scaler_free(s);
  return TB_ENOMEM;
}

int tb_scaler_apply(const tb_scaler_t *s, tb_dataset_t *d) {
  size_t nf;
  if (s == NULL || d == NULL || s->shift == NULL || s->mult == NULL)
    return TB_EINVAL;
  if (d->n_features != s->n_features)
    return TB_ESHAPE;
  nf = (size_t)d->n_features;
  for (size_t i = 0; i < (size_t)d->n; i++)
    for (size_t j = 0; j < nf; j++)
      d->x[i * nf + j] = (d->x[i * nf + j] - s->shift[j]) * s->mult[j];
  return 0;
}

void tb_scaler_free(tb_scaler_t *s) {
  if (s == NULL)
    return;
  free(s->shift);
  free(s->mult);
  memset(s, 0, sizeof(*s));
}
