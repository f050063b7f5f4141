/* History: every epoch's logs, kept by the model (Keras's model.history).
 * Its state (all rows so far) goes into checkpoints, so a resumed run ends
 * with the same history as an uninterrupted one. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int on_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  tb_model_t *m = cb->user;
  m->history.n = 0;
  return 0;
}

static int append(tb_history_t *h, int epoch, const tb_logs_t *logs) {
  if (h->n == h->cap) {
    int cap = h->cap ? h->cap * 2 : 16;
    int *e = realloc(h->epochs, (size_t)cap * sizeof(int));
    if (e == NULL)
      return TB_ENOMEM;
    h->epochs = e;
    tb_logs_t *l = realloc(h->logs, (size_t)cap * sizeof(tb_logs_t));
    if (l == NULL)
      return TB_ENOMEM;
    h->logs = l;
    h->cap = cap;
  }
  h->epochs[h->n] = epoch;
  h->logs[h->n] = *logs;
  h->n++;
  return 0;
}

static int on_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  tb_model_t *m = cb->user;
  return append(&m->history, index, logs);
}

/* Saved as raw rows: each is one tb_logs_t, written whole. */
static int save_state(tb_callback_t *cb, tb_state_t *st) {
  tb_model_t *m = cb->user;
  int r = tb_state_put_i32s(st, "epochs", m->history.epochs, (size_t)m->history.n);
  if (r == 0)
    r = tb_state_put_bytes(st, "logs", m->history.logs, (size_t)m->history.n * sizeof(tb_logs_t));
  return r;
}

static int load_state(tb_callback_t *cb, const tb_state_t *st) {
  tb_model_t *m = cb->user;
  long n = tb_state_count(st, "epochs");
  const void *rows;
  size_t len;
  int r;
  if (n < 0)
    return TB_ENOTFOUND;
  if ((r = tb_state_get_bytes(st, "logs", &rows, &len)) != 0)
    return r;
  if (len != (size_t)n * sizeof(tb_logs_t))
    return TB_EFORMAT;
  int32_t *e = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
  if (e == NULL)
    return TB_ENOMEM;
  if ((r = tb_state_get_i32s(st, "epochs", e, (size_t)n)) != 0) {
    free(e);
    return r;
  }
  m->history.n = 0;
  for (long i = 0; i < n && r == 0; i++) {
    tb_logs_t l;
    memcpy(&l, (const char *)rows + i * sizeof(tb_logs_t), sizeof(l));
    if (l.n < 0 || l.n > TB_LOGS_MAX)
      r = TB_EFORMAT;
    else
      r = append(&m->history, e[i], &l);
  }
  free(e);
  return r;
}

void tb__history_init(tb_model_t *m) {
  memset(&m->history_cb, 0, sizeof(m->history_cb));
  m->history_cb.name = "History";
  m->history_cb.on_train_begin = on_train_begin;
  m->history_cb.on_epoch_end = on_epoch_end;
  m->history_cb.save_state = save_state;
  m->history_cb.load_state = load_state;
  m->history_cb.user = m;
}

void tb__history_free(tb_model_t *m) {
  free(m->history.epochs);
  free(m->history.logs);
  memset(&m->history, 0, sizeof(m->history));
}

const tb_history_t *tb_model_history(const tb_model_t *m) {
  return &m->history;
}
