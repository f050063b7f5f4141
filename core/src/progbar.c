/* ProgbarLogger: Keras's progress display.
 *
 *   Epoch 3/30
 *   100/100 [==============================] - 0s 2ms/step - loss: 0.4123 - accuracy: 0.8125
 *
 * With verbose 1 the bar is redrawn in place with '\r' at most every 50 ms (as
 * Keras's Progbar interval) and finished with the epoch logs; with verbose 2
 * only the finished line is printed. Hooks of evaluate() and predict() outside
 * fit() get the same bar over their own steps. Numbers are written as Keras's
 * Progbar writes them (keras/src/utils/progbar.py): "{:.4f}" when the absolute
 * value is above 1e-3, else "{:.4e}"; times as "{:.0f}s" and per step in s,
 * ms or us. "lr" is left out when "learning_rate" is there (the same rate
 * under its tf.keras name).
 *
 * After a resume (fit() restored a checkpoint taken inside an epoch) the
 * epoch's train_batch_begin comes without an epoch_begin: the bar then prints
 * the "Epoch k/N" line itself and counts time and steps from the resume, so
 * the per-step time and the ETA are those of this process, not of the time
 * since boot or of steps run before the restart. */
#include "pyfmt.h"
#include "trainbus/callbacks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct progbar_s {
  tb_callback_t cb;
  int verbose;
  FILE *out;
  bool in_fit;
  bool epoch_open; /* an epoch's header is printed and its clock running */
  double t_start, t_last;
  int first; /* batches of the epoch done before t_start (a resume) */
  int width_last;
} progbar_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void draw(progbar_t *p, int seen, int target, const tb_logs_t *logs, bool final) {
  char line[1024];
  int len = 0, bar = 30;
  int digits = snprintf(NULL, 0, "%d", target);
  len += snprintf(line + len, sizeof(line) - len, "%*d/%d", digits, seen, target);
  if (p->verbose == 1) {
    int done = target > 0 ? bar * seen / target : bar;
    line[len++] = ' ';
    line[len++] = '[';
    for (int i = 0; i < bar; i++)
      line[len++] = i < done - (seen < target) ? '=' : (i == done - 1 && seen < target) ? '>' : '.';
    line[len++] = ']';
  }
  double el = now_s() - p->t_start;
  int done_here = seen - p->first; /* steps run since the clock started */
  double per = done_here > 0 ? el / done_here : 0;
  if (final) {
    /* Keras 3's verbose 2 line: "250/250 - 3s - 12ms/step - loss: ..." */
    len +=
        snprintf(line + len, sizeof(line) - len, p->verbose == 2 ? " - %.0fs -" : " - %.0fs", el);
    if (per >= 1 || per == 0)
      len += snprintf(line + len, sizeof(line) - len, " %.0fs/step", per);
    else if (per >= 1e-3)
      len += snprintf(line + len, sizeof(line) - len, " %.0fms/step", per * 1e3);
    else
      len += snprintf(line + len, sizeof(line) - len, " %.0fus/step", per * 1e6);
  } else {
    len += snprintf(line + len, sizeof(line) - len, " - ETA: %.0fs", per * (target - seen));
  }
  bool has_learning_rate = logs != NULL && tb_logs_get(logs, "learning_rate", NULL);
  for (int i = 0; logs != NULL && i < logs->n && len < (int)sizeof(line) - 96; i++) {
    double v = logs->values[i];
    char num[64];
    if (has_learning_rate && strcmp(logs->names[i], "lr") == 0)
      continue;
    /* verbose 1 tests abs(avg) > 1e-3, verbose 2 avg > 1e-3 (sic) */
    bool fixed = p->verbose == 1 ? fabs(v) > 1e-3 : v > 1e-3;
    tb__py_format_float(v, fixed ? ".4f" : ".4e", num, sizeof(num));
    len += snprintf(line + len, sizeof(line) - len, " - %s: %s", logs->names[i], num);
  }
  if (p->verbose == 1) {
    /* Blank out what remains of a longer previous line. */
    int pad = p->width_last > len ? p->width_last - len : 0;
    fprintf(p->out, "\r%s%*s", line, pad, "");
    p->width_last = len;
    if (final) {
      fputc('\n', p->out);
      p->width_last = 0;
    }
  } else {
    fprintf(p->out, "%s\n", line);
  }
  fflush(p->out);
}

/* An epoch's header and clock; `first` batches of it were done before. */
static void open_epoch(progbar_t *p, const tb_ctx_t *ctx, int epoch, int first) {
  if (ctx->epochs > 1 && p->verbose > 0)
    fprintf(p->out, "Epoch %d/%d\n", epoch + 1, ctx->epochs);
  p->t_start = p->t_last = now_s();
  p->first = first;
  p->width_last = 0;
  p->epoch_open = true;
}

static int on_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  progbar_t *p = cb->user;
  switch (ctx->hook) {
  case TB_HOOK_TRAIN_BEGIN:
    p->in_fit = true;
    p->epoch_open = false;
    break;
  case TB_HOOK_TRAIN_END:
    p->in_fit = false;
    break;
  case TB_HOOK_EPOCH_BEGIN:
    open_epoch(p, ctx, index, 0);
    break;
  case TB_HOOK_TRAIN_BATCH_BEGIN:
    /* resumed inside this epoch: it began in an earlier process */
    if (p->in_fit && !p->epoch_open)
      open_epoch(p, ctx, ctx->epoch, index);
    break;
  case TB_HOOK_TRAIN_BATCH_END:
  case TB_HOOK_TEST_BATCH_END:
  case TB_HOOK_PREDICT_BATCH_END:
    /* Validation inside fit() is not displayed, as in Keras. */
    if (p->in_fit && ctx->hook != TB_HOOK_TRAIN_BATCH_END)
      break;
    if (p->verbose == 1 && index + 1 < ctx->steps && now_s() - p->t_last < 0.05)
      break;
    p->t_last = now_s();
    if (p->verbose == 1 && index + 1 < ctx->steps)
      draw(p, index + 1, ctx->steps, ctx->hook == TB_HOOK_PREDICT_BATCH_END ? NULL : logs, false);
    break;
  case TB_HOOK_EPOCH_END:
    /* resumed after the epoch's last batch: only its end is left */
    if (!p->epoch_open)
      open_epoch(p, ctx, index, ctx->steps);
    draw(p, ctx->steps, ctx->steps, logs, true);
    p->epoch_open = false;
    break;
  case TB_HOOK_TEST_BEGIN:
  case TB_HOOK_PREDICT_BEGIN:
    if (!p->in_fit) {
      p->t_start = p->t_last = now_s();
      p->first = 0;
    }
    break;
  case TB_HOOK_TEST_END:
    if (!p->in_fit)
      draw(p, ctx->steps, ctx->steps, logs, true);
    break;
  case TB_HOOK_PREDICT_END:
    if (!p->in_fit)
      draw(p, ctx->steps, ctx->steps, NULL, true);
    break;
  default:
    break;
  }
  return 0;
}

static void destroy(tb_callback_t *cb) {
  free(cb->user);
}

tb_callback_t *tb_progbar_new(int verbose, FILE *out) {
  progbar_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->verbose = verbose == 2 ? 2 : 1;
  p->out = out != NULL ? out : stdout;
  p->cb.name = "ProgbarLogger";
  for (int i = 0; i < TB_HOOK_COUNT; i++)
    p->cb.hooks[i] = on_hook;
  p->cb.destroy = destroy;
  p->cb.user = p;
  return &p->cb;
}
