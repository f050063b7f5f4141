/* Model construction, compile, summary, parameter access and the step
 * functions (Keras's train_step / test_step) that fit() and hand-written loops
 * share. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *act_names[] = {"linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"};
static const char *loss_names[] = {"binary_crossentropy", "categorical_crossentropy",
                                   "sparse_categorical_crossentropy", "mse", "mae"};
static const char *optim_names[] = {"sgd", "adam", "rmsprop"};

static int name_index(const char *const *names, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (name != NULL && strcmp(names[i], name) == 0)
      return i;
  return -1;
}

int tb_act_from_name(const char *name) {
  return name_index(act_names, 6, name);
}
const char *tb_act_name(tb_act_t a) {
  return (unsigned)a < 6 ? act_names[a] : "?";
}
int tb_loss_from_name(const char *name) {
  if (name != NULL && strcmp(name, "mean_squared_error") == 0)
    return TB_LOSS_MSE;
  if (name != NULL && strcmp(name, "mean_absolute_error") == 0)
    return TB_LOSS_MAE;
  return name_index(loss_names, 5, name);
}
const char *tb_loss_name(tb_loss_kind_t l) {
  return (unsigned)l < 5 ? loss_names[l] : "?";
}
int tb_optim_from_name(const char *name) {
  return name_index(optim_names, 3, name);
}
const char *tb_optim_name(tb_optim_kind_t o) {
  return (unsigned)o < 3 ? optim_names[o] : "?";
}

void tb_optim_defaults(tb_optim_opts_t *o, tb_optim_kind_t kind) {
  memset(o, 0, sizeof(*o));
  o->kind = kind;
  o->lr = kind == TB_OPT_SGD ? 0.01 : 0.001;
  o->beta_1 = 0.9;
  o->beta_2 = 0.999;
  o->epsilon = 1e-7;
  o->rho = 0.9;
}

void tb_fit_opts_defaults(tb_fit_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->epochs = 1;
  o->batch_size = 32;
  o->shuffle = true;
  o->validation_freq = 1;
  o->verbose = 1;
}

tb_model_t *tb_model_new(int n_inputs, uint64_t seed) {
  if (n_inputs <= 0)
    return NULL;
  tb_model_t *m = calloc(1, sizeof(*m));
  if (m == NULL)
    return NULL;
  m->n_inputs = n_inputs;
  m->seed = seed;
  tb_rng_seed(&m->rng, seed);
  tb__history_init(m);
  return m;
}

void tb_model_free(tb_model_t *m) {
  if (m == NULL)
    return;
  tb__step_free(m);
  for (int i = 0; i < m->n_layers; i++)
    free(m->layers[i].mask);
  free(m->layers);
  free(m->params);
  free(m->grads);
  free(m->slot1);
  free(m->slot2);
  free(m->pos.idx);
  tb__history_free(m);
  tb_classes_free(m->classes);
  free(m);
}

int tb_model_set_classes(tb_model_t *m, const tb_classes_t *c) {
  tb_classes_t *copy = NULL;
  if (m == NULL)
    return TB_EINVAL;
  int r = tb_classes_copy(c, &copy);
  if (r != 0)
    return r;
  tb_classes_free(m->classes);
  m->classes = copy;
  return 0;
}

const tb_classes_t *tb_model_classes(const tb_model_t *m) {
  return m != NULL ? m->classes : NULL;
}

static tb__layer_t *add_layer(tb_model_t *m, tb__kind_t kind, const char *base) {
  if (m->compiled)
    return NULL;
  if (m->n_layers == m->cap_layers) {
    int cap = m->cap_layers ? m->cap_layers * 2 : 8;
    tb__layer_t *l = realloc(m->layers, (size_t)cap * sizeof(*l));
    if (l == NULL)
      return NULL;
    m->layers = l;
    m->cap_layers = cap;
  }
  int same = 0;
  for (int i = 0; i < m->n_layers; i++)
    same += m->layers[i].kind == kind;
  tb__layer_t *l = &m->layers[m->n_layers++];
  memset(l, 0, sizeof(*l));
  l->kind = kind;
  l->n_in = m->n_layers > 1 ? m->layers[m->n_layers - 2].n_out : m->n_inputs;
  l->n_out = l->n_in;
  l->alpha = 0.2f;
  /* Keras names layers dense, dense_1, dense_2, ... */
  if (same == 0)
    snprintf(l->name, sizeof(l->name), "%s", base);
  else
    snprintf(l->name, sizeof(l->name), "%s_%d", base, same);
  return l;
}

int tb_model_add_dense(tb_model_t *m, int units, tb_act_t act) {
  if (m == NULL || units <= 0 || (unsigned)act > TB_ACT_SOFTMAX)
    return TB_EINVAL;
  tb__layer_t *l = add_layer(m, TB__DENSE, "dense");
  if (l == NULL)
    return m->compiled ? TB_ESTATE : TB_ENOMEM;
  l->n_out = units;
  l->act = act;
  return 0;
}

int tb_model_add_activation(tb_model_t *m, tb_act_t act) {
  if (m == NULL || (unsigned)act > TB_ACT_SOFTMAX)
    return TB_EINVAL;
  tb__layer_t *l = add_layer(m, TB__ACTIVATION, "activation");
  if (l == NULL)
    return m->compiled ? TB_ESTATE : TB_ENOMEM;
  l->act = act;
  return 0;
}

int tb_model_add_dropout(tb_model_t *m, float rate) {
  if (m == NULL || !(rate >= 0.0f && rate < 1.0f))
    return TB_EINVAL;
  tb__layer_t *l = add_layer(m, TB__DROPOUT, "dropout");
  if (l == NULL)
    return m->compiled ? TB_ESTATE : TB_ENOMEM;
  l->rate = rate;
  return 0;
}

int tb_model_n_inputs(const tb_model_t *m) {
  return m->n_inputs;
}
int tb_model_n_outputs(const tb_model_t *m) {
  return m->n_layers > 0 ? m->layers[m->n_layers - 1].n_out : m->n_inputs;
}
int tb_model_n_layers(const tb_model_t *m) {
  return m->n_layers;
}
long tb_model_n_params(const tb_model_t *m) {
  long n = 0;
  for (int i = 0; i < m->n_layers; i++)
    if (m->layers[i].kind == TB__DENSE)
      n += (long)m->layers[i].n_in * m->layers[i].n_out + m->layers[i].n_out;
  return n;
}

/* The activation applied last, looking through dropout layers. */
static tb_act_t last_act(const tb_model_t *m) {
  for (int i = m->n_layers - 1; i >= 0; i--) {
    if (m->layers[i].kind != TB__DROPOUT)
      return m->layers[i].act;
  }
  return TB_ACT_LINEAR;
}

int tb_model_compile(tb_model_t *m, const tb_compile_opts_t *o, tb_err_t *err) {
  if (m == NULL || o == NULL)
    return tb_errf(err, TB_EINVAL, "compile: no model or options");
  if (m->compiled)
    return tb_errf(err, TB_ESTATE, "compile: the model is already compiled");
  if (m->n_layers == 0 || m->layers[m->n_layers - 1].kind == TB__DROPOUT)
    return tb_errf(err, TB_EINVAL, "compile: the model must end with a Dense or Activation layer");
  if ((unsigned)o->loss > TB_LOSS_MAE || (unsigned)o->optim.kind > TB_OPT_RMSPROP)
    return tb_errf(err, TB_EINVAL, "compile: unknown loss or optimizer");
  if (!(isfinite((float)o->optim.lr) && o->optim.lr > 0.0))
    return tb_errf(err, TB_ERANGE,
                   "compile: learning rate must be positive and within float32's range, got %g",
                   o->optim.lr);
  unsigned named = 0;
  if (o->n_metric_names < 0 || o->n_metric_names > TB_METRICS_MAX)
    return tb_errf(err, TB_EINVAL, "compile: at most %d metrics", TB_METRICS_MAX);
  for (int i = 0; i < o->n_metric_names; i++) {
    const char *nm = o->metric_names[i];
    unsigned bit = tb_metric_from_name(nm);
    if (bit == 0 || strnlen(nm, TB_LOGS_NAME_MAX) > TB_LOGS_NAME_MAX - 5)
      return tb_errf(err, TB_EINVAL,
                     "compile: metric \"%.*s\" is not accuracy/acc, mse or mae (or too long)",
                     TB_LOGS_NAME_MAX, nm);
    named |= bit;
  }
  if (o->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY &&
      ((o->metrics | named) & ~TB_METRIC_ACCURACY))
    return tb_errf(err, TB_EINVAL,
                   "compile: mse/mae metrics need dense targets, not sparse labels");
  int k = tb_model_n_outputs(m);
  if ((o->loss == TB_LOSS_CATEGORICAL_CROSSENTROPY ||
       o->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY) &&
      k < 2)
    return tb_errf(err, TB_ESHAPE, "compile: %s needs at least 2 output units, the model has %d",
                   tb_loss_name(o->loss), k);
  m->opts = *o;
  if (o->n_metric_names > 0)
    m->opts.metrics = named;
  m->lr = (float)o->optim.lr; /* Keras's float32 variable */
  m->y_width = o->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY ? 1 : k;
  m->fused_softmax_ce = !o->from_logits && last_act(m) == TB_ACT_SOFTMAX &&
                        m->layers[m->n_layers - 1].kind != TB__DROPOUT &&
                        (o->loss == TB_LOSS_CATEGORICAL_CROSSENTROPY ||
                         o->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY);

  m->n_params = tb_model_n_params(m);
  size_t bytes = (size_t)(m->n_params ? m->n_params : 1) * sizeof(float);
  m->params = calloc(1, bytes);
  m->grads = calloc((size_t)TB_REDUCE_LEN(m->n_params + TB_REDUCE_N_STATS), sizeof(float));
  if (m->params == NULL || m->grads == NULL)
    return tb_errf(err, TB_ENOMEM, "compile: out of memory for %ld parameters", m->n_params);

  /* Glorot-uniform kernels, zero biases, in layer order from the model RNG. */
  long off = 0;
  for (int i = 0; i < m->n_layers; i++) {
    tb__layer_t *l = &m->layers[i];
    if (l->kind != TB__DENSE)
      continue;
    long nw = (long)l->n_in * l->n_out;
    l->off = off;
    l->W = m->params + off;
    l->dW = m->grads + off;
    l->b = l->W + nw;
    l->db = l->dW + nw;
    float limit = sqrtf(6.0f / (float)(l->n_in + l->n_out));
    for (long j = 0; j < nw; j++)
      l->W[j] = (2.0f * tb_rng_uniform(&m->rng) - 1.0f) * limit;
    off += nw + l->n_out;
  }
  int r = tb__optim_alloc(m);
  if (r != 0)
    return tb_errf(err, r, "compile: out of memory for optimizer state");
  m->compiled = true;
  tb_model_reset_metrics(m);
  return 0;
}

double tb_model_lr(const tb_model_t *m) {
  return m->lr;
}

int tb_model_set_lr(tb_model_t *m, double lr) {
  /* 0 is allowed here: schedules such as CosineDecay with alpha 0 end there.
   * Requests from outside (the control block) must be positive. The
   * assignment rounds to float32, as assigning Keras's optimizer.learning_rate
   * (a float32 variable) does. */
  float f = (float)lr;
  if (!(isfinite(f) && lr >= 0.0))
    return TB_ERANGE;
  m->lr = f;
  return 0;
}

tb_rng_t *tb_model_rng(tb_model_t *m) {
  return &m->rng;
}

long tb_model_iterations(const tb_model_t *m) {
  return m->iterations;
}

int tb_model_get_params(const tb_model_t *m, float *out, long n) {
  if (!m->compiled || n != m->n_params)
    return TB_ESHAPE;
  memcpy(out, m->params, (size_t)n * sizeof(float));
  return 0;
}

int tb_model_set_params(tb_model_t *m, const float *in, long n) {
  if (!m->compiled || n != m->n_params)
    return TB_ESHAPE;
  memcpy(m->params, in, (size_t)n * sizeof(float));
  return 0;
}

static const char *kind_title(tb__kind_t k) {
  return k == TB__DENSE ? "Dense" : k == TB__DROPOUT ? "Dropout" : "Activation";
}

/* "1,234,567" */
static void with_commas(long v, char *buf, size_t len) {
  char raw[32];
  int n = snprintf(raw, sizeof(raw), "%ld", v);
  size_t j = 0;
  for (int i = 0; i < n && j + 1 < len; i++) {
    if (i > 0 && (n - i) % 3 == 0 && j + 2 < len)
      buf[j++] = ',';
    buf[j++] = raw[i];
  }
  buf[j] = '\0';
}

static void human_bytes(double b, char *buf, size_t len) {
  if (b < 1024)
    snprintf(buf, len, "%.2f B", b);
  else if (b < 1024 * 1024)
    snprintf(buf, len, "%.2f KB", b / 1024);
  else
    snprintf(buf, len, "%.2f MB", b / (1024 * 1024));
}

void tb_model_summary(const tb_model_t *m, FILE *f) {
  fprintf(f, "Model: \"sequential\"\n");
  fprintf(f, "%-32s %-24s %12s\n", "Layer (type)", "Output Shape", "Param #");
  fprintf(f, "%.*s\n", 70,
          "======================================================================");
  for (int i = 0; i < m->n_layers; i++) {
    const tb__layer_t *l = &m->layers[i];
    char title[64], shape[32], params[32];
    snprintf(title, sizeof(title), "%s (%s)", l->name, kind_title(l->kind));
    snprintf(shape, sizeof(shape), "(None, %d)", l->n_out);
    long p = l->kind == TB__DENSE ? (long)l->n_in * l->n_out + l->n_out : 0;
    with_commas(p, params, sizeof(params));
    fprintf(f, "%-32s %-24s %12s\n", title, shape, params);
  }
  fprintf(f, "%.*s\n", 70,
          "======================================================================");
  char total[32], bytes[32];
  long n = tb_model_n_params(m);
  with_commas(n, total, sizeof(total));
  human_bytes((double)n * 4.0, bytes, sizeof(bytes));
  fprintf(f, " Total params: %s (%s)\n", total, bytes);
  fprintf(f, " Trainable params: %s (%s)\n", total, bytes);
  fprintf(f, " Non-trainable params: 0 (0.00 B)\n");
}

void tb_model_reset_metrics(tb_model_t *m) {
  m->m_loss_sum = m->m_acc_sum = m->m_mse_sum = m->m_mae_sum = 0.0f;
  m->m_count = 0.0f;
}

int tb_model_train_step(tb_model_t *m, const float *x, const float *y, int n, tb_logs_t *logs) {
  if (!m->compiled || n <= 0 || x == NULL || y == NULL)
    return TB_EINVAL;
  tb__batch_t b = {.x = x, .y = y};
  tb__batch_share(&b, n, NULL);
  int r = tb__train_batch(m, &b, NULL, NULL);
  if (r != 0)
    return r;
  if (logs != NULL)
    tb__metrics_logs(m, logs);
  return 0;
}

int tb_model_test_step(tb_model_t *m, const float *x, const float *y, int n, tb_logs_t *logs) {
  if (!m->compiled || n <= 0 || x == NULL || y == NULL)
    return TB_EINVAL;
  tb__batch_t b = {.x = x, .y = y};
  tb__batch_share(&b, n, NULL);
  int r = tb__test_batch(m, &b, NULL, NULL);
  if (r != 0)
    return r;
  if (logs != NULL)
    tb__metrics_logs(m, logs);
  return 0;
}

int tb_model_forward(tb_model_t *m, const float *x, int n, float *out) {
  if (!m->compiled || n <= 0 || x == NULL || out == NULL)
    return TB_EINVAL;
  return tb__predict_batch(m, x, n, out);
}
