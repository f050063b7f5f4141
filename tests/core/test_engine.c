/* The engine: gradients, optimizer steps, Keras's hook order and logs,
 * control, determinism and the weights file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"
#include "trainbus/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- finite-difference gradient checks ---------------------------------- */

/* The batch's mean loss through lane 0, with the masks drawn from *rng (the
 * same every time). */
static double batch_loss(tb_model_t *m, const float *x, const float *y, int n, tb_rng_t *rng) {
  m->rng = *rng;
  assert_int_equal(tb__draw_masks(m, n), 0);
  tb__lane_t *ln = &m->lanes[0];
  const float *out = tb__forward(m, ln, x, n, 0, true);
  return tb__loss_sum(m, out, ln->z[m->n_layers - 1], y, n, 1.0f / (float)n, NULL) / (float)n;
}

/* An SGD model with rate 0 keeps its weights through a step, whose gradient
 * sums are left in m->grads: the step as fit() runs it, on the threads. */
static void step_gradients(tb_model_t *m, const float *x, const float *y, int n) {
  tb__batch_t b = {.x = x, .y = y};
  tb__batch_share(&b, n, NULL);
  m->lr = 0.0;
  assert_int_equal(tb__train_batch(m, &b, NULL, NULL), 0);
}

/* Builds in -> hidden(act) [-> extra] -> out(out_act), compiles with loss and
 * checks every parameter's analytic gradient, from a step split over
 * `threads` threads (9 rows each, so that every thread has rows), against
 * central differences of the loss. */
static void gradcheck_threads(tb_act_t hidden, tb_act_t out_act, int k, tb_loss_kind_t loss,
                              bool from_logits,
                              int extra /* 0 none, 1 dropout, 2 activation layer, 3 dropout 0 */,
                              int threads) {
  enum { IN = 3, H = 4, MAX_N = 36 };
  int N = threads > 1 ? 9 * threads : 5;
  assert_true(N <= MAX_N);
  tb_set_num_threads(threads);
  tb_model_t *m = tb_model_new(IN, 7);
  assert_non_null(m);
  assert_int_equal(tb_model_add_dense(m, H, hidden), 0);
  if (extra == 1 || extra == 3)
    assert_int_equal(tb_model_add_dropout(m, extra == 1 ? 0.3f : 0.0f), 0);
  if (extra == 2) {
    assert_int_equal(tb_model_add_dense(m, k, TB_ACT_LINEAR), 0);
    assert_int_equal(tb_model_add_activation(m, out_act), 0);
  } else {
    assert_int_equal(tb_model_add_dense(m, k, out_act), 0);
  }
  tb_compile_opts_t o = {.loss = loss, .from_logits = from_logits};
  tb_optim_defaults(&o.optim, TB_OPT_SGD);
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);

  tb_rng_t r;
  tb_rng_seed(&r, 99);
  float x[MAX_N * IN], y[MAX_N * 4];
  for (int i = 0; i < N * IN; i++)
    x[i] = (float)(tb_rng_uniform_d(&r) * 2 - 1);
  bool sparse = loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY;
  for (int i = 0; i < N; i++) {
    int label = (int)tb_rng_below(&r, (uint32_t)k);
    for (int c = 0; c < k; c++) {
      float v;
      if (loss == TB_LOSS_MSE || loss == TB_LOSS_MAE)
        v = (float)(tb_rng_uniform_d(&r) * 2 - 1);
      else if (loss == TB_LOSS_BINARY_CROSSENTROPY)
        v = (float)tb_rng_below(&r, 2);
      else
        v = c == label ? 1.0f : 0.0f;
      if (!sparse)
        y[i * k + c] = v;
    }
    if (sparse)
      y[i] = (float)label;
  }
  /* Move weights a little off zero-bias so relu kinks are not hit exactly. */
  for (long i = 0; i < m->n_params; i++)
    m->params[i] += 0.05f * (float)(tb_rng_uniform_d(&r) - 0.5);

  tb_rng_t drop = m->rng;
  step_gradients(m, x, y, N);
  assert_int_equal(tb__step_lanes(m, N), threads);
  /* lane 0 for the losses below */
  assert_non_null(m->lanes);
  assert_int_equal(tb__lane_reserve(m, &m->lanes[0], N), 0);

  int checked = 0;
  for (long i = 0; i < m->n_params; i++) {
    float keep = m->params[i];
    double ana = m->grads[i], num = 0;
    bool ok = false;
    /* Two step sizes: a relu kink inside one step spoils that estimate only. */
    for (float eps = 1e-2f; eps > 1e-4f && !ok; eps /= 10) {
      m->params[i] = keep + eps;
      double lp = batch_loss(m, x, y, N, &drop);
      m->params[i] = keep - eps;
      double lm = batch_loss(m, x, y, N, &drop);
      m->params[i] = keep;
      num = (lp - lm) / (2.0 * eps);
      ok = fabs(num - ana) <= 2e-3 + 2e-2 * fmax(fabs(num), fabs(ana));
    }
    if (!ok)
      fail_msg("param %ld: analytic %.6g vs numeric %.6g (hidden %s, out %s, loss %s)", i, ana, num,
               tb_act_name(hidden), tb_act_name(out_act), tb_loss_name(loss));
    checked++;
  }
  assert_int_equal(checked, m->n_params);
  tb_model_free(m);
  tb_set_num_threads(1);
}

static void gradcheck(tb_act_t hidden, tb_act_t out_act, int k, tb_loss_kind_t loss,
                      bool from_logits, int extra) {
  gradcheck_threads(hidden, out_act, k, loss, from_logits, extra, 1);
}

static void test_grad_activations(void **state) {
  (void)state;
  tb_act_t acts[] = {TB_ACT_LINEAR,  TB_ACT_RELU, TB_ACT_LEAKY_RELU,
                     TB_ACT_SIGMOID, TB_ACT_TANH, TB_ACT_SOFTMAX};
  for (size_t i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
    gradcheck(acts[i], TB_ACT_LINEAR, 2, TB_LOSS_MSE, false, 0);
    gradcheck(TB_ACT_TANH, acts[i], 3, TB_LOSS_MSE, false, 0);
  }
}

static void test_grad_losses(void **state) {
  (void)state;
  gradcheck(TB_ACT_TANH, TB_ACT_LINEAR, 3, TB_LOSS_MSE, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_LINEAR, 3, TB_LOSS_MAE, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_SIGMOID, 1, TB_LOSS_BINARY_CROSSENTROPY, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_SIGMOID, 3, TB_LOSS_BINARY_CROSSENTROPY, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_LINEAR, 2, TB_LOSS_BINARY_CROSSENTROPY, true, 0);
  /* softmax fused into the crossentropies, dense and sparse targets */
  gradcheck(TB_ACT_TANH, TB_ACT_SOFTMAX, 4, TB_LOSS_CATEGORICAL_CROSSENTROPY, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_SOFTMAX, 4, TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY, false, 0);
  /* crossentropy on non-softmax probabilities (Keras rescales them to sum 1) */
  gradcheck(TB_ACT_TANH, TB_ACT_SIGMOID, 3, TB_LOSS_CATEGORICAL_CROSSENTROPY, false, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_SIGMOID, 3, TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY, false, 0);
  /* from logits */
  gradcheck(TB_ACT_TANH, TB_ACT_LINEAR, 3, TB_LOSS_CATEGORICAL_CROSSENTROPY, true, 0);
  gradcheck(TB_ACT_TANH, TB_ACT_LINEAR, 3, TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY, true, 0);
}

static void test_grad_layers(void **state) {
  (void)state;
  gradcheck(TB_ACT_RELU, TB_ACT_LINEAR, 2, TB_LOSS_MSE, false, 1);                   /* dropout */
  gradcheck(TB_ACT_TANH, TB_ACT_SOFTMAX, 3, TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY, /* act */
            false, 2);
  gradcheck(TB_ACT_TANH, TB_ACT_SIGMOID, 2, TB_LOSS_MSE, false, 2);
  gradcheck(TB_ACT_RELU, TB_ACT_LINEAR, 2, TB_LOSS_MSE, false, 3); /* dropout at rate 0 */
}

/* The same checks with the batch split over 2 and 3 threads: the threads'
 * partial gradients (each its rows' share of the batch mean) must add up to
 * the batch's gradient, dropout masks included. */
static void test_grad_threads(void **state) {
  (void)state;
  for (int t = 2; t <= 3; t++) {
    gradcheck_threads(TB_ACT_TANH, TB_ACT_SOFTMAX, 4, TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                      false, 0, t);
    gradcheck_threads(TB_ACT_TANH, TB_ACT_SIGMOID, 3, TB_LOSS_CATEGORICAL_CROSSENTROPY, false, 0,
                      t);
    gradcheck_threads(TB_ACT_RELU, TB_ACT_LINEAR, 2, TB_LOSS_MSE, false, 1, t); /* dropout */
    gradcheck_threads(TB_ACT_SIGMOID, TB_ACT_LINEAR, 3, TB_LOSS_MAE, false, 2, t);
    gradcheck_threads(TB_ACT_TANH, TB_ACT_LINEAR, 2, TB_LOSS_BINARY_CROSSENTROPY, true, 0, t);
  }
}

/* Keras's clipping: a probability of exactly 0 or 1 gives a finite loss. */
static void test_bce_clipping(void **state) {
  (void)state;
  tb_model_t *m = tb_model_new(1, 1);
  assert_int_equal(tb_model_add_dense(m, 1, TB_ACT_SIGMOID), 0);
  tb_compile_opts_t o = {.loss = TB_LOSS_BINARY_CROSSENTROPY};
  tb_optim_defaults(&o.optim, TB_OPT_SGD);
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  float out[2] = {0.0f, 1.0f}, y[2] = {1.0f, 0.0f};
  double l = tb__loss_sum(m, out, out, y, 2, 0.5f, NULL) / 2.0;
  /* About -log(1e-7) = 16.12 for both rows (1 - 1e-7 rounds in float32). */
  assert_true(l > 15.9 && l < 16.2);
  tb_model_free(m);
}

/* ---- optimizer steps against hand-computed values ----------------------- */

/* One input, one linear unit, mse; W = 0.5, b = 0; x = 2, y = 3 gives
 * out = 1, dL/dout = 2 * (1 - 3) = -4, dW = -8, db = -4. */
static tb_model_t *one_unit(tb_optim_opts_t *opt) {
  tb_model_t *m = tb_model_new(1, 1);
  assert_int_equal(tb_model_add_dense(m, 1, TB_ACT_LINEAR), 0);
  tb_compile_opts_t o = {.loss = TB_LOSS_MSE, .optim = *opt};
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  float p[2] = {0.5f, 0.0f};
  assert_int_equal(tb_model_set_params(m, p, 2), 0);
  return m;
}

static void step(tb_model_t *m, float *w, float *b) {
  float x = 2.0f, y = 3.0f, p[2];
  assert_int_equal(tb_model_train_step(m, &x, &y, 1, NULL), 0);
  assert_int_equal(tb_model_get_params(m, p, 2), 0);
  *w = p[0];
  *b = p[1];
}

static void test_sgd(void **state) {
  (void)state;
  tb_optim_opts_t o;
  float w, b;
  tb_optim_defaults(&o, TB_OPT_SGD);
  o.lr = 0.1;
  tb_model_t *m = one_unit(&o);
  step(m, &w, &b);
  assert_float_equal(w, 0.5 + 0.8, 1e-6);
  assert_float_equal(b, 0.4, 1e-6);
  tb_model_free(m);

  /* momentum 0.9: step 1 v = -lr g; step 2 v = 0.9 v - lr g2 */
  o.momentum = 0.9;
  m = one_unit(&o);
  step(m, &w, &b); /* w = 1.3, b = 0.4, vW = 0.8, vb = 0.4 */
  step(m, &w, &b); /* out = 3.0, error 0: g = 0, so w += 0.9 * v */
  assert_float_equal(w, 1.3 + 0.72, 1e-5);
  assert_float_equal(b, 0.4 + 0.36, 1e-5);
  tb_model_free(m);

  /* nesterov: w += mu * v - lr * g with v = mu * v - lr * g */
  o.nesterov = true;
  m = one_unit(&o);
  step(m, &w, &b); /* v = 0.8; w = 0.5 + 0.9*0.8 + 0.8 */
  assert_float_equal(w, 0.5 + 0.72 + 0.8, 1e-5);
  assert_float_equal(b, 0.0 + 0.36 + 0.4, 1e-5);
  tb_model_free(m);
}

static void test_adam(void **state) {
  (void)state;
  tb_optim_opts_t o;
  float w, b;
  tb_optim_defaults(&o, TB_OPT_ADAM);
  assert_float_equal(o.lr, 0.001, 0);
  assert_float_equal(o.beta_1, 0.9, 0);
  assert_float_equal(o.beta_2, 0.999, 0);
  assert_float_equal(o.epsilon, 1e-7, 0);
  o.lr = 0.1;
  tb_model_t *m = one_unit(&o);
  /* step 1: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1 */
  double g = -8, mm = 0.1 * g, vv = 0.001 * g * g, alpha = 0.1 * sqrt(1 - 0.999) / (1 - 0.9);
  double w_exp = 0.5 - alpha * mm / (sqrt(vv) + 1e-7);
  step(m, &w, &b);
  assert_float_equal(w, w_exp, 1e-5);
  /* step 2 from the new weights */
  double out = w_exp * 2 + b, g2 = 2 * (out - 3) * 2;
  mm = 0.9 * mm + 0.1 * g2;
  vv = 0.999 * vv + 0.001 * g2 * g2;
  alpha = 0.1 * sqrt(1 - 0.999 * 0.999) / (1 - 0.9 * 0.9);
  w_exp -= alpha * mm / (sqrt(vv) + 1e-7);
  step(m, &w, &b);
  assert_float_equal(w, w_exp, 1e-4);
  tb_model_free(m);

  /* Bit for bit, Keras's float32 step (adam.py update_step): the constants
   * (1 - beta) are Python floats converted to float32, the powers and alpha
   * float32 operations. One step from w 0.5, b 0, x 2, y 3. */
  m = one_unit(&o);
  step(m, &w, &b);
  float gw = 2.0f * (0.5f * 2.0f + 0.0f - 3.0f) * 2.0f;
  float one_b1 = (float)(1.0 - 0.9), one_b2 = (float)(1.0 - 0.999);
  float mf = (gw - 0.0f) * one_b1, vf = (gw * gw - 0.0f) * one_b2;
  float b1p = (float)pow((double)0.9f, 1.0), b2p = (float)pow((double)0.999f, 1.0);
  float alpha_f = (float)0.1 * sqrtf(1.0f - b2p) / (1.0f - b1p);
  float wf = 0.5f - mf * alpha_f / (sqrtf(vf) + (float)1e-7);
  assert_true(w == wf);
  assert_true(one_b1 != 1.0f - 0.9f); /* the distinction matters */
  tb_model_free(m);
}

static void test_rmsprop(void **state) {
  (void)state;
  tb_optim_opts_t o;
  float w, b;
  tb_optim_defaults(&o, TB_OPT_RMSPROP);
  o.lr = 0.01;
  tb_model_t *m = one_unit(&o);
  double v = 0.1 * 64.0, w_exp = 0.5 - 0.01 * -8 / sqrt(v + 1e-7);
  step(m, &w, &b);
  assert_float_equal(w, w_exp, 1e-6);
  tb_model_free(m);
}

/* ---- hook order and logs ------------------------------------------------ */

typedef struct recorder_s {
  char seq[8192];
  int counts[TB_HOOK_COUNT];
  int stop_at_batch; /* set stop_training at this train batch of epoch 0 (-1: never) */
  tb_logs_t epoch_end_logs[8];
  tb_logs_t last_batch_logs;
  tb_logs_t train_end_logs;
  double lr_seen[64];
  int n_lr;
} recorder_t;

static int record(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  recorder_t *r = cb->user;
  char item[64];
  snprintf(item, sizeof(item), "%s%s(%d)", r->seq[0] ? " " : "", tb_hook_name(ctx->hook), index);
  strncat(r->seq, item, sizeof(r->seq) - strlen(r->seq) - 1);
  r->counts[ctx->hook]++;
  if (ctx->hook == TB_HOOK_TRAIN_BATCH_END) {
    r->last_batch_logs = *logs;
    if (ctx->epoch == 0 && index == r->stop_at_batch)
      ctx->stop_training = true;
  }
  if (ctx->hook == TB_HOOK_TRAIN_BATCH_BEGIN && r->n_lr < 64 && ctx->model)
    r->lr_seen[r->n_lr++] = tb_model_lr(ctx->model);
  if (ctx->hook == TB_HOOK_EPOCH_END && index < 8)
    r->epoch_end_logs[index] = *logs;
  if (ctx->hook == TB_HOOK_TRAIN_END)
    r->train_end_logs = *logs;
  return 0;
}

static tb_callback_t recorder_cb(recorder_t *r) {
  tb_callback_t cb = {.name = "recorder", .user = r};
  for (int i = 0; i < TB_HOOK_COUNT; i++)
    cb.hooks[i] = record;
  memset(r, 0, sizeof(*r));
  r->stop_at_batch = -1;
  return cb;
}

static tb_model_t *blob_model(tb_dataset_t **data, int n, uint64_t seed) {
  assert_int_equal(tb_gen_blobs(n, 3, 2, 1.0, 5, data), 0);
  tb_model_t *m = tb_model_new(2, seed);
  assert_int_equal(tb_model_add_dense(m, 8, TB_ACT_RELU), 0);
  assert_int_equal(tb_model_add_dense(m, 3, TB_ACT_SOFTMAX), 0);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  o.optim.lr = 0.01;
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  return m;
}

static void test_fit_hook_order(void **state) {
  (void)state;
  tb_dataset_t *d, *val;
  tb_model_t *m = blob_model(&d, 10, 1);
  assert_int_equal(tb_gen_blobs(5, 3, 2, 1.0, 6, &val), 0);
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 2;
  o.batch_size = 4;
  o.validation_data = val;
  tb_logs_t last;
  assert_int_equal(tb_model_fit(m, d, &o, &l, &last, NULL), 0);
  const char *epoch =
      "epoch_begin(%d) train_batch_begin(0) train_batch_end(0) train_batch_begin(1) "
      "train_batch_end(1) train_batch_begin(2) train_batch_end(2) test_begin(-1) "
      "test_batch_begin(0) test_batch_end(0) test_batch_begin(1) test_batch_end(1) "
      "test_end(-1) epoch_end(%d)";
  char want[4096], e0[1024], e1[1024];
  snprintf(e0, sizeof(e0), epoch, 0, 0);
  snprintf(e1, sizeof(e1), epoch, 1, 1);
  snprintf(want, sizeof(want), "train_begin(-1) %s %s train_end(-1)", e0, e1);
  assert_string_equal(rec.seq, want);

  /* Epoch logs: train means then val_ results; train_end gets the last. */
  const tb_logs_t *el = &rec.epoch_end_logs[1];
  assert_int_equal(el->n, 6);
  assert_string_equal(el->names[0], "loss");
  assert_string_equal(el->names[1], "accuracy");
  assert_string_equal(el->names[2], "val_loss");
  assert_string_equal(el->names[3], "val_accuracy");
  /* the rate the epoch trained with, float(the float32 variable), under
   * tf.keras's name and Keras 3's */
  assert_string_equal(el->names[4], "lr");
  assert_string_equal(el->names[5], "learning_rate");
  assert_true(el->values[4] == (double)0.01f && el->values[5] == (double)0.01f);
  /* History (appended last) holds every epoch's logs. */
  const tb_history_t *h = tb_model_history(m);
  assert_int_equal(h->n, 2);
  assert_int_equal(h->epochs[1], 1);
  assert_memory_equal(&h->logs[1], el, sizeof(*el));
  assert_memory_equal(&rec.train_end_logs, el, sizeof(*el));
  assert_memory_equal(&last, el, sizeof(*el));
  /* The last batch's running means are the epoch's means. */
  assert_float_equal(rec.last_batch_logs.values[0], el->values[0], 0);
  assert_float_equal(rec.last_batch_logs.values[1], el->values[1], 0);

  /* validation matches a separate evaluate() with the same weights */
  tb_logs_t ev;
  assert_int_equal(tb_model_evaluate(m, val, 4, 0, NULL, &ev, NULL), 0);
  assert_float_equal(ev.values[0], el->values[2], 1e-12);
  assert_float_equal(ev.values[1], el->values[3], 1e-12);

  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
  tb_dataset_free(val);
}

/* Running means: batch_end logs average over all rows seen so far this
 * epoch, weighted by batch size (the last batch is short). */
static void test_running_means(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 10, 1);
  /* Reproduce the steps by hand on a twin model. */
  tb_dataset_t *d2;
  tb_model_t *twin = blob_model(&d2, 10, 1);
  double sum = 0;
  int rows = 0;
  tb_logs_t logs;
  for (int b = 0; b < 3; b++) {
    int n = b < 2 ? 4 : 2;
    tb_model_reset_metrics(twin);
    assert_int_equal(tb_model_train_step(twin, d2->x + b * 4 * 2, d2->y + b * 4, n, &logs), 0);
    sum += logs.values[0] * n;
    rows += n;
  }
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.batch_size = 4;
  o.shuffle = false;
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, NULL), 0);
  assert_float_equal(rec.epoch_end_logs[0].values[0], sum / rows, 1e-9);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_model_free(twin);
  tb_dataset_free(d);
  tb_dataset_free(d2);
}

static void test_stop_mid_epoch(void **state) {
  (void)state;
  tb_dataset_t *d, *val;
  tb_model_t *m = blob_model(&d, 10, 1);
  assert_int_equal(tb_gen_blobs(3, 3, 2, 1.0, 6, &val), 0);
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec);
  rec.stop_at_batch = 1;
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 5;
  o.batch_size = 4;
  o.validation_data = val;
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, NULL), 0);
  /* After the stop: no more batches, but the epoch validates and ends. */
  assert_string_equal(rec.seq, "train_begin(-1) epoch_begin(0) train_batch_begin(0) "
                               "train_batch_end(0) train_batch_begin(1) train_batch_end(1) "
                               "test_begin(-1) test_batch_begin(0) test_batch_end(0) "
                               "test_end(-1) epoch_end(0) train_end(-1)");
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
  tb_dataset_free(val);
}

static void test_validation_split_and_freq(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 20, 1);
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 4;
  o.batch_size = 8;
  o.validation_split = 0.25; /* 15 train rows -> 2 steps, 5 validation rows */
  o.validation_freq = 2;
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, NULL), 0);
  assert_int_equal(rec.counts[TB_HOOK_TRAIN_BATCH_END], 4 * 2);
  assert_int_equal(rec.counts[TB_HOOK_TEST_BEGIN], 2); /* epochs 2 and 4 (1-based) */
  assert_int_equal(rec.counts[TB_HOOK_TEST_BATCH_END], 2);
  assert_false(tb_logs_get(&rec.epoch_end_logs[0], "val_loss", NULL));
  assert_true(tb_logs_get(&rec.epoch_end_logs[1], "val_loss", NULL));
  assert_false(tb_logs_get(&rec.epoch_end_logs[2], "val_loss", NULL));
  assert_true(tb_logs_get(&rec.epoch_end_logs[3], "val_loss", NULL));
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
}

static void test_evaluate_predict_hooks(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 10, 1);
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_logs_t out;
  assert_int_equal(tb_model_evaluate(m, d, 6, 0, &l, &out, NULL), 0);
  assert_string_equal(rec.seq, "test_begin(-1) test_batch_begin(0) test_batch_end(0) "
                               "test_batch_begin(1) test_batch_end(1) test_end(-1)");
  assert_int_equal(out.n, 2);
  rec.seq[0] = '\0';
  float pred[10 * 3];
  assert_int_equal(tb_model_predict(m, d, 6, 0, &l, pred, NULL), 0);
  assert_string_equal(rec.seq, "predict_begin(-1) predict_batch_begin(0) predict_batch_end(0) "
                               "predict_batch_begin(1) predict_batch_end(1) predict_end(-1)");
  for (int i = 0; i < 10; i++) {
    float s = pred[i * 3] + pred[i * 3 + 1] + pred[i * 3 + 2];
    assert_float_equal(s, 1.0, 1e-5); /* softmax rows */
  }
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
}

/* A failing hook aborts fit with a message naming it; train_end is skipped. */
static int failing(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  snprintf(ctx->err.msg, sizeof(ctx->err.msg), "disk full");
  return TB_EIO;
}

static void test_failing_callback(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 10, 1);
  recorder_t rec;
  tb_callback_t cb = recorder_cb(&rec), bad = {.name = "writer", .on_epoch_end = failing};
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &bad);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 3;
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, &err), TB_EIO);
  assert_non_null(strstr(err.msg, "writer"));
  assert_non_null(strstr(err.msg, "epoch_end"));
  assert_non_null(strstr(err.msg, "disk full"));
  assert_int_equal(rec.counts[TB_HOOK_EPOCH_END], 0);
  assert_int_equal(rec.counts[TB_HOOK_TRAIN_END], 0);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
}

/* ---- control: lr between batches, stop -------------------------------- */

typedef struct lr_at_s {
  tb_control_t *c;
} lr_at_t;

static int request_at_batch1(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  lr_at_t *a = cb->user;
  if (ctx->epoch == 0 && index == 1) {
    assert_int_equal(tb_control_set_lr(a->c, 0.5, "test"), 0);
    assert_int_equal(tb_control_set_lr(a->c, -1.0, "test"), TB_ERANGE);
    assert_int_equal(tb_control_set_lr(a->c, NAN, "test"), TB_ERANGE);
  }
  if (ctx->epoch == 1 && index == 0)
    tb_control_stop(a->c, "test");
  return 0;
}

static void test_control_lr_and_stop(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 12, 1);
  tb_control_t c;
  assert_int_equal(tb_control_init(&c), 0);
  recorder_t rec;
  lr_at_t a = {&c};
  tb_callback_t cb = recorder_cb(&rec), req = {.name = "req", .user = &a};
  req.on_train_batch_end = request_at_batch1;
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &req);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 3;
  o.batch_size = 4;
  o.control = &c;
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, NULL), 0);
  /* applied at the very next batch boundary */
  assert_float_equal(rec.lr_seen[0], 0.01, 0);
  assert_float_equal(rec.lr_seen[1], 0.01, 0);
  assert_float_equal(rec.lr_seen[2], 0.5, 0);
  /* stop requested at epoch 1 batch 0: that batch ends, then the epoch ends */
  assert_int_equal(rec.counts[TB_HOOK_TRAIN_BATCH_END], 3 + 1);
  assert_int_equal(rec.counts[TB_HOOK_EPOCH_END], 2);
  assert_int_equal(rec.counts[TB_HOOK_TRAIN_END], 1);
  tb_control_destroy(&c);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
}

/* ---- determinism, learning, weights file ------------------------------- */

static void fit_blobs(uint64_t seed, float *params, long n, tb_logs_t *last) {
  tb_dataset_t *d;
  tb_model_t *m = tb_model_new(2, seed);
  assert_int_equal(tb_gen_blobs(300, 3, 2, 0.5, 5, &d), 0);
  assert_int_equal(tb_model_add_dense(m, 16, TB_ACT_RELU), 0);
  assert_int_equal(tb_model_add_dropout(m, 0.2f), 0);
  assert_int_equal(tb_model_add_dense(m, 3, TB_ACT_SOFTMAX), 0);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  o.optim.lr = 0.01;
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = 15;
  f.validation_split = 0.2;
  assert_int_equal(tb_model_fit(m, d, &f, NULL, last, NULL), 0);
  assert_int_equal(tb_model_n_params(m), n);
  assert_int_equal(tb_model_get_params(m, params, n), 0);
  tb_model_free(m);
  tb_dataset_free(d);
}

static void test_determinism_and_learning(void **state) {
  (void)state;
  long n = 2 * 16 + 16 + 16 * 3 + 3;
  float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)),
        *c = malloc(n * sizeof(float));
  tb_logs_t la, lb, lc;
  fit_blobs(11, a, n, &la);
  fit_blobs(11, b, n, &lb);
  fit_blobs(12, c, n, &lc);
  assert_memory_equal(a, b, n * sizeof(float));
  assert_memory_equal(&la, &lb, sizeof(la));
  assert_memory_not_equal(a, c, n * sizeof(float));
  double acc;
  assert_true(tb_logs_get(&la, "val_accuracy", &acc));
  assert_true(acc > 0.9);
  free(a);
  free(b);
  free(c);
}

static void test_weights_roundtrip(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_weightsXXXXXX", path[256], tmp[300];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/w.tbw", dir);
  tb_dataset_t *d;
  tb_dataset_t *d2, *d3;
  tb_model_t *m = blob_model(&d, 30, 3), *m2 = blob_model(&d2, 30, 4);
  tb_dataset_free(d2);
  long n = tb_model_n_params(m);
  float *p = malloc(n * sizeof(float)), *q = malloc(n * sizeof(float));
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_save_weights(m, path, &err), 0);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  assert_int_not_equal(access(tmp, F_OK), 0); /* renamed into place */
  assert_int_equal(tb_model_load_weights(m2, path, &err), 0);
  tb_model_get_params(m, p, n);
  tb_model_get_params(m2, q, n);
  assert_memory_equal(p, q, n * sizeof(float));

  /* Corruptions: each refused with its error, the model left unchanged. */
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  rewind(f);
  unsigned char *buf = malloc(size);
  assert_int_equal(fread(buf, 1, size, f), size);
  fclose(f);
  struct {
    long len;
    long flip; /* byte to flip, -1 none */
    int code;
    const char *says;
  } cases[] = {{size, 40, TB_ECHECKSUM, "checksum"},
               {size - 7, -1, TB_ETRUNCATED, "truncated"},
               {5, -1, TB_ETRUNCATED, "truncated"},
               {size, 0, TB_EFORMAT, "magic"},
               {size, 4, TB_EVERSION, "version"}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    unsigned char *c = malloc(size);
    memcpy(c, buf, size);
    if (cases[i].flip >= 0)
      c[cases[i].flip] ^= 0x5a;
    f = fopen(path, "wb");
    fwrite(c, 1, cases[i].len, f);
    fclose(f);
    free(c);
    tb_model_t *fresh = blob_model(&d3, 30, 9);
    tb_dataset_free(d3);
    float *before = malloc(n * sizeof(float)), *after = malloc(n * sizeof(float));
    tb_model_get_params(fresh, before, n);
    err.msg[0] = '\0';
    assert_int_equal(tb_model_load_weights(fresh, path, &err), cases[i].code);
    assert_non_null(strstr(err.msg, cases[i].says));
    tb_model_get_params(fresh, after, n);
    assert_memory_equal(before, after, n * sizeof(float));
    free(before);
    free(after);
    tb_model_free(fresh);
  }
  /* Another architecture is refused, naming the layer. */
  f = fopen(path, "wb");
  fwrite(buf, 1, size, f);
  fclose(f);
  tb_model_t *other = tb_model_new(2, 1);
  tb_model_add_dense(other, 9, TB_ACT_RELU);
  tb_model_add_dense(other, 3, TB_ACT_SOFTMAX);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  assert_int_equal(tb_model_compile(other, &o, NULL), 0);
  assert_int_equal(tb_model_load_weights(other, path, &err), TB_ESHAPE);
  assert_non_null(strstr(err.msg, "dense"));
  tb_model_free(other);

  remove(path);
  rmdir(dir);
  free(buf);
  free(p);
  free(q);
  tb_model_free(m);
  tb_model_free(m2);
  tb_dataset_free(d);
}

static void test_fit_refuses_bad_data(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 10, 1);
  d->y[3] = 7; /* not a class of a 3-unit softmax */
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(m, d, &o, NULL, NULL, &err), TB_ERANGE);
  assert_non_null(strstr(err.msg, "row 3"));
  tb_dataset_t *wide = tb_dataset_new(4, 5, 1);
  assert_int_equal(tb_model_fit(m, wide, &o, NULL, NULL, &err), TB_ESHAPE);
  assert_non_null(strstr(err.msg, "5 features"));
  tb_dataset_free(wide);
  tb_model_free(m);
  tb_dataset_free(d);
}

static void test_summary(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 10, 1);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  tb_model_summary(m, f);
  fclose(f);
  assert_non_null(strstr(buf, "dense (Dense)"));
  assert_non_null(strstr(buf, "dense_1 (Dense)"));
  assert_non_null(strstr(buf, "(None, 8)"));
  assert_non_null(strstr(buf, "Total params: 51 (204.00 B)"));
  free(buf);
  tb_model_free(m);
  tb_dataset_free(d);
}

int main(void) {
  /* Split every batch of 16 rows or more, however small the model (by
   * default a step of little work stays on one thread). */
  tb__threading_force = 0;
  tb_set_num_threads(1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grad_activations),
      cmocka_unit_test(test_grad_losses),
      cmocka_unit_test(test_grad_layers),
      cmocka_unit_test(test_grad_threads),
      cmocka_unit_test(test_bce_clipping),
      cmocka_unit_test(test_sgd),
      cmocka_unit_test(test_adam),
      cmocka_unit_test(test_rmsprop),
      cmocka_unit_test(test_fit_hook_order),
      cmocka_unit_test(test_running_means),
      cmocka_unit_test(test_stop_mid_epoch),
      cmocka_unit_test(test_validation_split_and_freq),
      cmocka_unit_test(test_evaluate_predict_hooks),
      cmocka_unit_test(test_failing_callback),
      cmocka_unit_test(test_control_lr_and_stop),
      cmocka_unit_test(test_determinism_and_learning),
      cmocka_unit_test(test_weights_roundtrip),
      cmocka_unit_test(test_fit_refuses_bad_data),
      cmocka_unit_test(test_summary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
