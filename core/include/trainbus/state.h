/* tb_state_t: a small typed key-value store for saved state.
 *
 * Checkpoints are made of these: the engine saves weights, optimizer slots,
 * RNG and position under fixed keys, and every stateful callback saves its own
 * fields under "cb.<callback name>.". Values are stored exactly (doubles as
 * their 8 bytes), so a restored run continues bitwise. */
#ifndef TRAINBUS_STATE_H
#define TRAINBUS_STATE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  TB_STATE_F64 = 1, /* one double */
  TB_STATE_I64,     /* one int64 */
  TB_STATE_F32S,    /* an array of float */
  TB_STATE_I32S,    /* an array of int32 */
  TB_STATE_BYTES    /* raw bytes (text) */
} tb_state_type_t;

typedef struct tb_state_entry_s {
  char *key;
  tb_state_type_t type;
  size_t len; /* bytes of data */
  void *data;
} tb_state_entry_t;

typedef struct tb_state_s {
  tb_state_entry_t *items;
  int n, cap;
  /* Prepended to keys by put/get while set (the engine sets "cb.<name>."
   * around a callback's save_state / load_state). */
  char prefix[96];
} tb_state_t;

void tb_state_init(tb_state_t *s);
void tb_state_release(tb_state_t *s);

/* Put replaces an existing key. All return 0 or TB_ENOMEM / TB_EINVAL. */
int tb_state_put_f64(tb_state_t *s, const char *key, double v);
int tb_state_put_i64(tb_state_t *s, const char *key, int64_t v);
int tb_state_put_f32s(tb_state_t *s, const char *key, const float *v, size_t n);
int tb_state_put_i32s(tb_state_t *s, const char *key, const int32_t *v, size_t n);
int tb_state_put_bytes(tb_state_t *s, const char *key, const void *v, size_t len);

/* Get: TB_ENOTFOUND if absent, TB_EFORMAT if of another type or (arrays) of
 * another length than n. The _bytes getter returns a view (valid until the
 * state changes) and its length. */
int tb_state_get_f64(const tb_state_t *s, const char *key, double *v);
int tb_state_get_i64(const tb_state_t *s, const char *key, int64_t *v);
int tb_state_get_f32s(const tb_state_t *s, const char *key, float *v, size_t n);
int tb_state_get_i32s(const tb_state_t *s, const char *key, int32_t *v, size_t n);
int tb_state_get_bytes(const tb_state_t *s, const char *key, const void **v, size_t *len);
/* The element count of an array entry, or -1. */
long tb_state_count(const tb_state_t *s, const char *key);

/* Serialisation: "TBST", version, entries, CRC-32. tb_state_write() writes
 * to "<path>.tmp", fsyncs and renames, so a crash never leaves a torn file. */
int tb_state_write(const tb_state_t *s, const char *path);
/* Reads a file written by tb_state_write(); TB_ETRUNCATED, TB_ECHECKSUM,
 * TB_EFORMAT or TB_EVERSION on a bad file, with the reason in *why. */
int tb_state_read(tb_state_t *s, const char *path, char *why, size_t why_len);

#endif
