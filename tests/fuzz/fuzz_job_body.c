/* The job fuzzer's checks (fuzz_job_body.h): a document goes the way a
 * `submit` takes it through core (tb_job_parse, tb_job_check with the
 * daemon's network policy), then on through tb_job_estimate and, when its
 * data can only come from the generators, tb_job_prepare; what each returns
 * is checked against job.h's promises.
 *
 * Memory is counted through AddressSanitizer's allocation hooks, so a
 * buffer sized by a number the document claims (rather than by the bytes it
 * holds, or refused by the budget first) is a finding even when it would
 * fit in the fuzzer's RSS limit. Without ASan (the plain ctest replay) the
 * counts are skipped and every other check still runs. */
#include "fuzz_job_body.h"

#include "trainbus/job.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: broken invariant: %s\n", __FILE__, __LINE__, #cond);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

/* As the daemon names a submitted job, and its one data directory (which
 * does not exist here, so no file can be read or written). */
#define ORIGIN "params.job"
#define BASE "/nonexistent-base"

/* The network policy's budget (the daemon's default depends on the
 * machine's memory; 1 GiB is the order of it), and the small one a job
 * must pass before it is prepared, so that preparing stays cheap (16 MiB
 * of generated data and model take about 50 ms under ASan). */
#define NET_BUDGET (1ULL << 30)
#define PREP_BUDGET (16ULL << 20)

/* Memory a parse may take: per byte of the document, at most the worst
 * case of a "feature_columns" array of one-digit numbers (2 bytes of text
 * per element, its 64-byte cJSON node, again in the copy the fingerprint
 * prints, and the 16-byte column it becomes: about 73 bytes per byte); and
 * once, the job itself (about 60 KiB) and its at most 32 callbacks (a
 * CSVLogger keeps about 5 KiB). Measured: 650 KiB for 8 KiB of such an
 * array, 230 KiB for 32 CSVLoggers. */
#define PARSE_BYTES_PER_BYTE 96
#define PARSE_BYTES_FIXED (512u << 10)

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TB_FUZZ_COUNT 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TB_FUZZ_COUNT 1
#endif

#ifdef TB_FUZZ_COUNT
/* The sanitizer allocator's interface (sanitizer/allocator_interface.h,
 * which GCC does not install). */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
size_t __sanitizer_get_allocated_size(const volatile void *p);

static _Atomic long long live, peak;

static void on_malloc(const volatile void *p, size_t size) {
  (void)p;
  long long now = atomic_fetch_add(&live, (long long)size) + (long long)size;
  long long was = atomic_load(&peak);
  while (now > was && !atomic_compare_exchange_weak(&peak, &was, now))
    ;
}

static void on_free(const volatile void *p) {
  if (p != NULL)
    atomic_fetch_sub(&live, (long long)__sanitizer_get_allocated_size(p));
}

/* Starts a measurement: returns the bytes live now. */
static long long count_begin(void) {
  static bool hooked;
  if (!hooked) {
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    hooked = true;
  }
  long long now = atomic_load(&live);
  atomic_store(&peak, now);
  return now;
}

/* The most bytes live above `base` since count_begin. */
static long long count_peak(long long base) {
  return atomic_load(&peak) - base;
}
#endif

static bool is_tb_code(int r) {
  return r <= TB_EINVAL && r >= TB_EDIVERGED;
}

/* A message: written (NUL-terminated within the buffer) and one line, no
 * control character in it whatever the document held (error.h). */
static void check_line(const tb_err_t *err) {
  CHECK(memchr(err->msg, '\0', sizeof(err->msg)) != NULL);
  CHECK(err->msg[0] != '\0');
  for (const char *c = err->msg; *c != '\0'; c++)
    CHECK((unsigned char)*c >= 0x20 && *c != 0x7f);
}

/* A failure's message: one line, naming the document first (unless memory
 * ran out). */
static void check_message(int r, const tb_err_t *err) {
  check_line(err);
  if (r != TB_ENOMEM)
    CHECK(strncmp(err->msg, ORIGIN ":", strlen(ORIGIN ":")) == 0);
}

static bool terminated(const char *s, size_t cap) {
  return memchr(s, '\0', cap) != NULL;
}

/* A path the job resolved: NUL-terminated, absolute (relative ones are
 * joined to BASE), and empty exactly when absent. */
static void check_path(const char *p, size_t cap, bool present) {
  CHECK(terminated(p, cap));
  CHECK(present ? p[0] == '/' : p[0] == '\0');
}

static void check_spec(const tb_data_spec_t *s, bool main_set) {
  CHECK(terminated(s->where, sizeof(s->where)));
  CHECK(!s->measured && s->file_bytes == 0);
  CHECK((s->columns != NULL) == (s->source == TB_SRC_CSV && s->csv.n_features > 0));
  CHECK(s->source >= TB_SRC_NONE && s->source <= TB_SRC_NPY);
  if (main_set)
    CHECK(s->source != TB_SRC_NONE && strcmp(s->where, "data") == 0);
  if (s->source == TB_SRC_NONE)
    return;
  CHECK(s->seed <= INT32_MAX + 3ULL);
  check_path(s->path, sizeof(s->path), s->source == TB_SRC_CSV);
  check_path(s->images, sizeof(s->images), s->source == TB_SRC_IDX);
  check_path(s->labels, sizeof(s->labels), s->source == TB_SRC_IDX);
  check_path(s->x, sizeof(s->x), s->source == TB_SRC_NPY);
  check_path(s->y, sizeof(s->y), s->source == TB_SRC_NPY);
  switch (s->source) {
  case TB_SRC_SPIRALS:
    CHECK(s->n_per_class >= 1 && s->noise >= 0.0 && s->noise <= 100.0);
    break;
  case TB_SRC_BLOBS:
    CHECK(s->n >= 1 && s->classes >= 2 && s->features >= 1 && s->std > 0.0);
    break;
  case TB_SRC_CSV:
    /* What tb_csv_load refuses as a bad argument must not parse. */
    CHECK(s->csv.delimiter != '\0' && s->csv.delimiter != '\n' && s->csv.delimiter != '\r' &&
          s->csv.delimiter != '"');
    CHECK(s->csv.skip_rows >= 0);
    CHECK(s->csv.header >= TB_CSV_HEADER_AUTO && s->csv.header <= TB_CSV_HEADER_NO);
    /* Names are looked up in a header: none to look in is refused. */
    if (s->csv.header == TB_CSV_HEADER_NO) {
      CHECK(s->csv.label_name == NULL);
      for (int i = 0; i < s->csv.n_features; i++)
        CHECK(s->csv.features[i].name == NULL);
    }
    CHECK(s->csv.label_name == NULL ||
          (s->csv.label_name == s->label_name && terminated(s->label_name, sizeof(s->label_name)) &&
           s->label_name[0] != '\0'));
    CHECK((s->csv.features == NULL) == (s->csv.n_features == 0));
    CHECK(s->csv.features == NULL || s->csv.features == s->columns);
    CHECK(s->csv.n_features >= 0 && s->csv.n_features <= TB_DATA_MAX_COLS);
    CHECK(s->csv.limits == NULL && s->csv.class_names == NULL);
    break;
  case TB_SRC_NPY:
    CHECK(s->npy.limits == NULL);
    break;
  default:
    break;
  }
}

/* A parsed job, field by field (job.h, docs/JOB.md). */
static void check_job(const tb_job_t *job) {
  CHECK(terminated(job->name, sizeof(job->name)) && job->name[0] != '\0');
  CHECK(strcmp(job->origin, ORIGIN) == 0);
  CHECK(job->seed <= INT32_MAX);
  CHECK(job->threads >= 0 && job->threads <= 256);
  check_spec(&job->train_spec, true);
  check_spec(&job->val_spec, false);
  check_spec(&job->test_spec, false);
  CHECK(job->val_spec.source == TB_SRC_NONE || strcmp(job->val_spec.where, "data.validation") == 0);
  CHECK(job->test_spec.source == TB_SRC_NONE || strcmp(job->test_spec.where, "data.test") == 0);
  CHECK(job->scale >= TB_SCALE_NONE && job->scale <= TB_SCALE_DIVIDE);
  CHECK(job->scale != TB_SCALE_DIVIDE || (isfinite(job->scale_divisor) && job->scale_divisor != 0));

  int max_layers = (int)(sizeof(job->layers) / sizeof(job->layers[0]));
  CHECK(job->n_layers >= 1 && job->n_layers <= max_layers);
  for (int i = 0; i < job->n_layers; i++) {
    const struct tb_job_layer_s *l = &job->layers[i];
    CHECK(l->act >= TB_ACT_LINEAR && l->act <= TB_ACT_SOFTMAX);
    if (l->type == TB_JOB_DENSE)
      CHECK(l->units >= 1 && l->units <= (1 << 20));
    else if (l->type == TB_JOB_DROPOUT)
      CHECK(l->rate >= 0.0f && l->rate < 1.0f && i < job->n_layers - 1);
    else
      CHECK(l->type == TB_JOB_ACTIVATION);
  }
  const tb_compile_opts_t *c = &job->compile;
  CHECK(c->loss >= TB_LOSS_BINARY_CROSSENTROPY && c->loss <= TB_LOSS_MAE);
  CHECK(c->optim.kind >= TB_OPT_SGD && c->optim.kind <= TB_OPT_RMSPROP);
  CHECK(isfinite(c->optim.lr) && c->optim.lr > 0.0);
  CHECK(c->n_metric_names >= 0 && c->n_metric_names <= TB_METRICS_MAX);
  for (int i = 0; i < c->n_metric_names; i++)
    CHECK(terminated(c->metric_names[i], sizeof(c->metric_names[i])) &&
          c->metric_names[i][0] != '\0');

  const tb_fit_opts_t *f = &job->fit;
  CHECK(f->epochs >= 1 && f->epochs <= 1000000);
  CHECK(f->batch_size >= 1 && f->batch_size <= (1 << 20));
  CHECK(f->initial_epoch == 0);
  CHECK(f->validation_split >= 0.0 && f->validation_split < 1.0);
  CHECK(f->validation_split == 0.0 || job->val_spec.source == TB_SRC_NONE);
  CHECK(f->validation_freq >= 1 && f->verbose >= 0 && f->verbose <= 2);
  CHECK(f->validation_data == NULL && f->control == NULL && f->resume_from == NULL &&
        f->reduce == NULL);
  CHECK(f->checkpoint_every >= 0);
  check_path(job->checkpoint_dir, sizeof(job->checkpoint_dir), job->checkpoint_dir[0] != '\0');
  CHECK(job->checkpoint_dir[0] != '\0' ? f->checkpoint_dir == job->checkpoint_dir
                                       : f->checkpoint_dir == NULL && f->checkpoint_every == 0);
  CHECK(f->job_id == job->id && strlen(job->id) == 16 && strspn(job->id, "0123456789abcdef") == 16);

  int max_cbs = (int)(sizeof(job->callbacks) / sizeof(job->callbacks[0]));
  CHECK(job->n_callbacks >= 0 && job->n_callbacks <= max_cbs);
  int writers = 0;
  for (int i = 0; i < job->n_callbacks; i++) {
    CHECK(job->callbacks[i] != NULL);
    writers += job->callback_writes[i];
  }
  CHECK(job->n_weight_copies >= 0 && job->n_weight_copies <= job->n_callbacks);
  int max_outputs = (int)(sizeof(job->outputs) / sizeof(job->outputs[0]));
  CHECK(job->n_outputs >= 0 && job->n_outputs <= max_outputs);
  /* Every writing callback noted its path, and so did checkpoint_dir. */
  CHECK(job->n_outputs == writers + (job->checkpoint_dir[0] != '\0'));
  for (int i = 0; i < job->n_outputs; i++) {
    CHECK(terminated(job->outputs[i].field, sizeof(job->outputs[i].field)) &&
          job->outputs[i].field[0] != '\0');
    check_path(job->outputs[i].path, sizeof(job->outputs[i].path), true);
  }

  CHECK(job->dist_ranks >= 0 && job->dist_ranks <= TB_JOB_MAX_RANKS);
  CHECK(terminated(job->dist_hosts, sizeof(job->dist_hosts)));
  CHECK(terminated(job->dist_hostfile, sizeof(job->dist_hostfile)));
  CHECK(job->dist_hosts[0] == '\0' || job->dist_hostfile[0] == '\0');
  CHECK(job->dist_ranks > 0 || (job->dist_hosts[0] == '\0' && job->dist_hostfile[0] == '\0'));
  /* mpirun's --host list: names and slots, never an option or a shell word. */
  CHECK(job->dist_hosts[0] != '-' &&
        strspn(job->dist_hosts, "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789.-_:,") == strlen(job->dist_hosts));
  check_path(job->dist_hostfile, sizeof(job->dist_hostfile), job->dist_hostfile[0] != '\0');

  CHECK(job->policy == NULL && job->model == NULL && job->train == NULL && job->val == NULL &&
        job->test == NULL);
}

/* An estimate: every part within the total, the rows a batch can have. */
static void check_estimate(const tb_job_t *job, const tb_job_estimate_t *e) {
  CHECK(e->total >= e->other && e->other > 0);
  CHECK(e->total >= e->params && e->total >= e->optimizer && e->total >= e->activations &&
        e->total >= e->data && e->total >= e->validation && e->total >= e->callbacks &&
        e->total >= e->checkpoint && e->total >= e->loading);
  CHECK(e->n_params >= 0);
  CHECK(e->rows >= 1 && e->rows <= job->fit.batch_size);
  CHECK(e->threads >= 1 && (job->threads == 0 || e->threads == job->threads));
  CHECK(e->callbacks == 0 || job->n_weight_copies > 0);
  CHECK(e->validation == 0 || job->fit.validation_split > 0.0);
}

/* Field by field: the struct's padding is not part of an estimate. */
static bool same_estimate(const tb_job_estimate_t *a, const tb_job_estimate_t *b) {
  return a->total == b->total && a->params == b->params && a->optimizer == b->optimizer &&
         a->activations == b->activations && a->data == b->data && a->validation == b->validation &&
         a->callbacks == b->callbacks && a->checkpoint == b->checkpoint &&
         a->loading == b->loading && a->other == b->other && a->n_params == b->n_params &&
         a->rows == b->rows && a->threads == b->threads;
}

static bool all_zero(const tb_job_estimate_t *e) {
  static const tb_job_estimate_t zero;
  return same_estimate(e, &zero);
}

/* tb_job_check's result under policy: the estimate when it was made, the
 * budget's refusal, or a path's or a file's error and no estimate. */
static int check_against(tb_job_t *job, const tb_job_policy_t *policy, tb_job_estimate_t *est) {
  tb_err_t err;
  memset(&err, 'x', sizeof(err));
  memset(est, 0x55, sizeof(*est));
  int r = tb_job_check(job, policy, est, &err);
  CHECK(job->policy == policy);
  if (r == 0) {
    check_estimate(job, est);
    CHECK(est->total <= policy->max_bytes);
    return 0;
  }
  check_message(r, &err);
  CHECK(is_tb_code(r) || (r < 0 && r > -4096));
  if (r == TB_ERANGE && !all_zero(est)) {
    check_estimate(job, est);
    CHECK(est->total > policy->max_bytes);
    CHECK(strstr(err.msg, "more than the") != NULL);
  } else {
    CHECK(all_zero(est));
  }
  return r;
}

/* The job's data, as prepared from the generators. */
static void check_prepared(const tb_job_t *job) {
  const tb_dataset_t *sets[3] = {job->train, job->val, job->test};
  const tb_data_spec_t *specs[3] = {&job->train_spec, &job->val_spec, &job->test_spec};
  CHECK(job->model != NULL && job->train != NULL);
  for (int i = 0; i < 3; i++) {
    CHECK((sets[i] != NULL) == (specs[i]->source != TB_SRC_NONE));
    if (sets[i] == NULL)
      continue;
    CHECK(sets[i]->n >= 1 && sets[i]->n_features == job->train->n_features);
    CHECK(sets[i]->n_outputs >= 1);
  }
  CHECK(job->fit.validation_data == job->val);
}

void tb_fuzz_job(const uint8_t *data, size_t size) {
  static const char *const dirs[] = {BASE};
  /* The daemon's network policy (server.c: the operator's budget, confined
   * to the data directories, redacted; checkpoints with a state dir). */
  const tb_job_policy_t net = {
      .data = {.confined = true, .dirs = dirs, .n_dirs = 1, .redact = true},
      .max_bytes = NET_BUDGET,
      .limit_name = "--max-job-memory",
      .checkpoints = true};
  tb_job_policy_t small = net;
  small.max_bytes = PREP_BUDGET;
  small.checkpoints = false;
  /* tb_job_prepare sets the process's thread count: each input starts
   * from the same one, so the estimates do not depend on the one before. */
  tb_set_num_threads(1);

  /* An exact copy, so a read past the document is seen. */
  char *text = malloc(size ? size : 1);
  CHECK(text != NULL);
  memcpy(text, data, size);
  tb_job_t *job = (tb_job_t *)&job;
  tb_err_t err;
  memset(&err, 'x', sizeof(err));
#ifdef TB_FUZZ_COUNT
  long long base = count_begin();
#endif
  int r = tb_job_parse(text, size, ORIGIN, BASE, &job, &err);
#ifdef TB_FUZZ_COUNT
  long long used = count_peak(base);
  if (used > (long long)size * PARSE_BYTES_PER_BYTE + PARSE_BYTES_FIXED) {
    fprintf(stderr, "parsing %zu bytes took %lld bytes of memory\n", size, used);
    CHECK(!"parsing takes memory in proportion to the document's length");
  }
#endif
  free(text);
  if (r != 0) {
    CHECK(job == NULL);
    CHECK(r == TB_EINVAL || r == TB_EFORMAT || r == TB_ERANGE || r == TB_ENOMEM);
    check_message(r, &err);
    return;
  }
  CHECK(job != NULL);
  check_job(job);

  tb_job_estimate_t est, again;
  int rc = check_against(job, &net, &est);
  /* The policy now set is confined, so estimating reads nothing either. */
  memset(&err, 'x', sizeof(err));
  memset(&again, 0x55, sizeof(again));
  int re = tb_job_estimate(job, &again, &err);
  if (re == 0) {
    check_estimate(job, &again);
    if (rc == 0 || !all_zero(&est))
      CHECK(same_estimate(&est, &again));
  } else {
    check_message(re, &err);
    CHECK(all_zero(&again));
    CHECK(rc != 0 && all_zero(&est));
  }

  /* Prepared only under the small budget, which every data file fails (the
   * data folder does not exist): only generated data is ever made. */
  if (check_against(job, &small, &est) == 0) {
    CHECK(rc == 0);
    const tb_data_spec_t *specs[3] = {&job->train_spec, &job->val_spec, &job->test_spec};
    for (int i = 0; i < 3; i++)
      CHECK(specs[i]->source <= TB_SRC_BLOBS);
    memset(&err, 'x', sizeof(err));
#ifdef TB_FUZZ_COUNT
    base = count_begin();
#endif
    int rp = tb_job_prepare(job, &err);
#ifdef TB_FUZZ_COUNT
    used = count_peak(base);
    if (used > (long long)est.total) {
      fprintf(stderr, "preparing took %lld bytes, more than the %llu estimated\n", used,
              (unsigned long long)est.total);
      CHECK(!"preparing stays within the estimate");
    }
#endif
    if (rp == 0) {
      check_prepared(job);
    } else {
      /* Generated data fits the model or not (shapes, labels), or its real
       * size is over the budget; what the document alone makes invalid
       * (compile's rules, the generators' bounds) was refused at parse. */
      CHECK(rp == TB_ESHAPE || rp == TB_ERANGE || rp == TB_ENOMEM);
      check_line(&err);
    }
    tb_job_release(job);
    CHECK(job->model == NULL && job->train == NULL);
  }
  tb_job_free(job);
}
