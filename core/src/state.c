/* The state store and its file format.
 *
 *   "TBST" | u32 version (1) | u32 entry count
 *   per entry: u16 key length | key | u8 type | u64 data length | data
 *   u32 CRC-32 (zlib) of everything before it
 *
 * Little-endian throughout. Entries are kept in insertion order in an array;
 * a checkpoint has a few dozen, so lookups are linear. */
#include "internal.h"
#include "trainbus/state.h"
#include "trainbus/error.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define TB_STATE_VERSION 1u

void tb_state_init(tb_state_t *s) {
  memset(s, 0, sizeof(*s));
}

void tb_state_release(tb_state_t *s) {
  for (int i = 0; i < s->n; i++) {
    free(s->items[i].key);
    free(s->items[i].data);
  }
  free(s->items);
  memset(s, 0, sizeof(*s));
}

static void full_key(const tb_state_t *s, const char *key, char *out, size_t len) {
  snprintf(out, len, "%s%s", s->prefix, key);
}

static tb_state_entry_t *find(const tb_state_t *s, const char *key) {
  char k[256];
  full_key(s, key, k, sizeof(k));
  for (int i = 0; i < s->n; i++)
    if (strcmp(s->items[i].key, k) == 0)
      return &s->items[i];
  return NULL;
}

static int put(tb_state_t *s, const char *key, tb_state_type_t type, const void *v, size_t len) {
  char k[256];
  if (key == NULL || (v == NULL && len > 0))
    return TB_EINVAL;
  full_key(s, key, k, sizeof(k));
  void *copy = malloc(len ? len : 1);
  if (copy == NULL)
    return TB_ENOMEM;
  if (len)
    memcpy(copy, v, len);
  tb_state_entry_t *e = find(s, key);
  if (e == NULL) {
    if (s->n == s->cap) {
      int cap = s->cap ? s->cap * 2 : 16;
      tb_state_entry_t *items = realloc(s->items, (size_t)cap * sizeof(*items));
      if (items == NULL) {
        free(copy);
        return TB_ENOMEM;
      }
      s->items = items;
      s->cap = cap;
    }
    e = &s->items[s->n];
    if ((e->key = strdup(k)) == NULL) {
      free(copy);
      return TB_ENOMEM;
    }
    s->n++;
  } else {
    free(e->data);
  }
  e->type = type;
  e->len = len;
  e->data = copy;
  return 0;
}

int tb_state_put_f64(tb_state_t *s, const char *key, double v) {
  return put(s, key, TB_STATE_F64, &v, sizeof(v));
}
int tb_state_put_i64(tb_state_t *s, const char *key, int64_t v) {
  return put(s, key, TB_STATE_I64, &v, sizeof(v));
}
int tb_state_put_f32s(tb_state_t *s, const char *key, const float *v, size_t n) {
  return put(s, key, TB_STATE_F32S, v, n * sizeof(float));
}
int tb_state_put_i32s(tb_state_t *s, const char *key, const int32_t *v, size_t n) {
  return put(s, key, TB_STATE_I32S, v, n * sizeof(int32_t));
}
int tb_state_put_bytes(tb_state_t *s, const char *key, const void *v, size_t len) {
  return put(s, key, TB_STATE_BYTES, v, len);
}

static int get(const tb_state_t *s, const char *key, tb_state_type_t type, void *v, size_t len) {
  const tb_state_entry_t *e = find(s, key);
  if (e == NULL)
    return TB_ENOTFOUND;
  if (e->type != type || e->len != len)
    return TB_EFORMAT;
  if (len)
    memcpy(v, e->data, len);
  return 0;
}

int tb_state_get_f64(const tb_state_t *s, const char *key, double *v) {
  return get(s, key, TB_STATE_F64, v, sizeof(*v));
}
int tb_state_get_i64(const tb_state_t *s, const char *key, int64_t *v) {
  return get(s, key, TB_STATE_I64, v, sizeof(*v));
}
int tb_state_get_f32s(const tb_state_t *s, const char *key, float *v, size_t n) {
  return get(s, key, TB_STATE_F32S, v, n * sizeof(float));
}
int tb_state_get_i32s(const tb_state_t *s, const char *key, int32_t *v, size_t n) {
  return get(s, key, TB_STATE_I32S, v, n * sizeof(int32_t));
}
int tb_state_get_bytes(const tb_state_t *s, const char *key, const void **v, size_t *len) {
  const tb_state_entry_t *e = find(s, key);
  if (e == NULL)
    return TB_ENOTFOUND;
  if (e->type != TB_STATE_BYTES)
    return TB_EFORMAT;
  *v = e->data;
  *len = e->len;
  return 0;
}

long tb_state_count(const tb_state_t *s, const char *key) {
  const tb_state_entry_t *e = find(s, key);
  if (e == NULL)
    return -1;
  switch (e->type) {
  case TB_STATE_F32S:
    return (long)(e->len / sizeof(float));
  case TB_STATE_I32S:
    return (long)(e->len / sizeof(int32_t));
  default:
    return (long)e->len;
  }
}

/* mkdir -p of the directory part of path. */
int tb__make_parent(const char *path) {
  char dir[1200];
  snprintf(dir, sizeof(dir), "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir)
    return 0;
  *slash = '\0';
  for (char *p = dir + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
      return -errno;
    *p = '/';
  }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return -errno;
  return 0;
}

/* ---- file format -------------------------------------------------------- */

typedef struct wbuf_s {
  unsigned char *p;
  size_t len, cap;
} wbuf_t;

static int wput(wbuf_t *b, const void *v, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
      cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (p == NULL)
      return TB_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, v, n);
  b->len += n;
  return 0;
}

static int wle(wbuf_t *b, uint64_t v, int bytes) {
  unsigned char t[8];
  for (int i = 0; i < bytes; i++)
    t[i] = (unsigned char)(v >> (8 * i));
  return wput(b, t, (size_t)bytes);
}

static uint64_t rle(const unsigned char *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Data are host-order arrays of 4- or 8-byte scalars; on the little-endian
 * hosts we build for that is the file order. A big-endian port would swap
 * here. */
int tb_state_write(const tb_state_t *s, const char *path) {
  wbuf_t b = {0};
  int r = 0;
  if ((r = wput(&b, "TBST", 4)) != 0 || (r = wle(&b, TB_STATE_VERSION, 4)) != 0 ||
      (r = wle(&b, (uint64_t)s->n, 4)) != 0)
    goto out;
  for (int i = 0; i < s->n; i++) {
    const tb_state_entry_t *e = &s->items[i];
    size_t kl = strlen(e->key);
    if ((r = wle(&b, kl, 2)) != 0 || (r = wput(&b, e->key, kl)) != 0 ||
        (r = wle(&b, e->type, 1)) != 0 || (r = wle(&b, e->len, 8)) != 0 ||
        (r = wput(&b, e->data, e->len)) != 0)
      goto out;
  }
  if ((r = wle(&b, (uint32_t)crc32(0L, b.p, (uInt)b.len), 4)) != 0)
    goto out;

  char tmp[4200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  if ((r = tb__make_parent(path)) != 0)
    goto out;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    r = -errno;
    goto out;
  }
  size_t off = 0;
  while (off < b.len) {
    ssize_t w = write(fd, b.p + off, b.len - off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      r = -errno;
      close(fd);
      unlink(tmp);
      goto out;
    }
    off += (size_t)w;
  }
  /* fsync before rename: after a crash the new name holds the whole file. */
  if (fsync(fd) != 0 || close(fd) != 0) {
    r = -errno;
    unlink(tmp);
    goto out;
  }
  if (rename(tmp, path) != 0) {
    r = -errno;
    unlink(tmp);
  }
out:
  free(b.p);
  return r;
}

int tb_state_read(tb_state_t *s, const char *path, char *why, size_t why_len) {
  int r = 0;
  unsigned char *buf = NULL;
  tb_state_init(s);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    r = -errno;
    snprintf(why, why_len, "cannot open: %s", strerror(errno));
    return r;
  }
  if (fseek(f, 0, SEEK_END) != 0) {
    fclose(f);
    snprintf(why, why_len, "cannot seek");
    return TB_EIO;
  }
  long size = ftell(f);
  rewind(f);
  if (size < 16) {
    fclose(f);
    snprintf(why, why_len, "truncated: %ld bytes", size);
    return TB_ETRUNCATED;
  }
  if ((buf = malloc((size_t)size)) == NULL) {
    fclose(f);
    snprintf(why, why_len, "out of memory");
    return TB_ENOMEM;
  }
  size_t got = fread(buf, 1, (size_t)size, f);
  fclose(f);
  if (got != (size_t)size) {
    r = TB_EIO;
    snprintf(why, why_len, "read error");
    goto fail;
  }
  if (memcmp(buf, "TBST", 4) != 0) {
    r = TB_EFORMAT;
    snprintf(why, why_len, "not a trainbus checkpoint (bad magic)");
    goto fail;
  }
  if (rle(buf + 4, 4) != TB_STATE_VERSION) {
    r = TB_EVERSION;
    snprintf(why, why_len, "format version %u, this build reads version %u",
             (unsigned)rle(buf + 4, 4), TB_STATE_VERSION);
    goto fail;
  }
  if (rle(buf + got - 4, 4) != (uint32_t)crc32(0L, buf, (uInt)(got - 4))) {
    r = TB_ECHECKSUM;
    snprintf(why, why_len, "checksum mismatch: the file is truncated or corrupt");
    goto fail;
  }
  uint64_t n = rle(buf + 8, 4);
  size_t off = 12, end = got - 4;
  for (uint64_t i = 0; i < n; i++) {
    if (end - off < 2)
      goto short_file;
    size_t kl = (size_t)rle(buf + off, 2);
    off += 2;
    if (end - off < kl + 9 || kl == 0 || kl > 255)
      goto short_file;
    char key[256];
    memcpy(key, buf + off, kl);
    key[kl] = '\0';
    off += kl;
    int type = buf[off++];
    uint64_t len = rle(buf + off, 8);
    off += 8;
    if (len > end - off || type < TB_STATE_F64 || type > TB_STATE_BYTES)
      goto short_file;
    if ((r = put(s, key, (tb_state_type_t)type, buf + off, (size_t)len)) != 0) {
      snprintf(why, why_len, "out of memory");
      goto fail;
    }
    off += (size_t)len;
  }
  if (off != end)
    goto short_file;
  free(buf);
  return 0;
short_file:
  r = TB_EFORMAT;
  snprintf(why, why_len, "malformed entry table");
fail:
  free(buf);
  tb_state_release(s);
  return r;
}
