/* The callback list: an array of borrowed pointers dispatched in order. */
#include "trainbus/callback.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *hook_names[TB_HOOK_COUNT] = {
#define X(up, low) #low,
    TB_HOOK_MAP(X)
#undef X
};

const char *tb_hook_name(tb_hook_t hook) {
  return (unsigned)hook < TB_HOOK_COUNT ? hook_names[hook] : "?";
}

int tb_hook_from_name(const char *name) {
  for (int i = 0; i < TB_HOOK_COUNT; i++)
    if (name != NULL && strcmp(hook_names[i], name) == 0)
      return i;
  return -1;
}

bool tb_hook_is_batch(tb_hook_t hook) {
  switch (hook) {
  case TB_HOOK_TRAIN_BATCH_BEGIN:
  case TB_HOOK_TRAIN_BATCH_END:
  case TB_HOOK_TEST_BATCH_BEGIN:
  case TB_HOOK_TEST_BATCH_END:
  case TB_HOOK_PREDICT_BATCH_BEGIN:
  case TB_HOOK_PREDICT_BATCH_END:
    return true;
  default:
    return false;
  }
}

void tb_ctx_init(tb_ctx_t *ctx) {
  memset(ctx, 0, sizeof(*ctx));
  ctx->epoch = -1;
  ctx->batch = -1;
}

void tb_callback_free(tb_callback_t *cb) {
  if (cb != NULL && cb->destroy != NULL)
    cb->destroy(cb);
}

void tb_callbacks_init(tb_callbacks_t *l) {
  memset(l, 0, sizeof(*l));
}

void tb_callbacks_release(tb_callbacks_t *l) {
  free(l->items);
  memset(l, 0, sizeof(*l));
}

int tb_callbacks_add(tb_callbacks_t *l, tb_callback_t *cb) {
  if (l == NULL || cb == NULL)
    return TB_EINVAL;
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 8;
    tb_callback_t **items = realloc(l->items, (size_t)cap * sizeof(*items));
    if (items == NULL)
      return TB_ENOMEM;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->n++] = cb;
  return 0;
}

void tb_callbacks_remove(tb_callbacks_t *l, tb_callback_t *cb) {
  for (int i = 0; i < l->n; i++) {
    if (l->items[i] == cb) {
      memmove(&l->items[i], &l->items[i + 1], (size_t)(l->n - i - 1) * sizeof(*l->items));
      l->n--;
      return;
    }
  }
}

int tb_callbacks_fire(tb_callbacks_t *l, tb_ctx_t *ctx, tb_hook_t hook, int index,
                      tb_logs_t *logs) {
  tb_logs_t empty;
  if (logs == NULL) {
    tb_logs_clear(&empty);
    logs = &empty;
  }
  ctx->hook = hook;
  switch (hook) {
  case TB_HOOK_EPOCH_BEGIN:
  case TB_HOOK_EPOCH_END:
    ctx->epoch = index;
    ctx->batch = -1;
    break;
  case TB_HOOK_TRAIN_BATCH_BEGIN:
  case TB_HOOK_TRAIN_BATCH_END:
  case TB_HOOK_TEST_BATCH_BEGIN:
  case TB_HOOK_TEST_BATCH_END:
  case TB_HOOK_PREDICT_BATCH_BEGIN:
  case TB_HOOK_PREDICT_BATCH_END:
    ctx->batch = index;
    break;
  default:
    break;
  }
  if (l == NULL)
    return 0;
  for (int i = 0; i < l->n; i++) {
    tb_callback_t *cb = l->items[i];
    tb_hook_fn fn = cb->hooks[hook];
    if (fn == NULL)
      continue;
    int r = fn(cb, ctx, index, logs);
    if (r != 0) {
      ctx->failed = cb->name ? cb->name : "(unnamed)";
      return r < 0 ? r : TB_ECALLBACK;
    }
  }
  return 0;
}

int tb_ctx_request_checkpoint(tb_ctx_t *ctx, const char *path) {
  if (path == NULL || strlen(path) >= sizeof(ctx->ckpt_requests[0]))
    return TB_EINVAL;
  if (ctx->n_ckpt_requests >= 4)
    return TB_ERANGE;
  snprintf(ctx->ckpt_requests[ctx->n_ckpt_requests++], sizeof(ctx->ckpt_requests[0]), "%s", path);
  return 0;
}
