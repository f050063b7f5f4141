/* The weights file.
 *
 *   offset  size  field
 *   0       4     magic "TBWT"
 *   4       4     version (2; 1 had no class names)
 *   8       4     number of layers L
 *   12      16*L  per layer: kind, n_in, n_out, activation (u32 each)
 *   ..      8     number of parameters P (u64)
 *   ..      4*P   parameters, little-endian float32, layer by layer (W then b)
 *   ..      4     number of class names K (version 2; 0 for numeric labels)
 *   ..            K times: the name's length (u32) and its bytes, in class order
 *   ..      4     CRC-32 (zlib) of every byte before it
 *
 * All integers are little-endian. The file is written to "<path>.tmp" and
 * renamed, so a crash never leaves a torn weights file under the real name.
 * Loading reads the whole file, checks magic, version, size, checksum and
 * every shape before touching the model. Version 1 files still load (they
 * carry no class names); a version this build does not know is refused by
 * number. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define TB_WEIGHTS_VERSION 2u

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static size_t names_size(const tb_classes_t *c) {
  size_t n = 4;
  for (int i = 0; c != NULL && i < c->n; i++)
    n += 4 + strlen(c->names[i]);
  return n;
}

static size_t file_size(const tb_model_t *m) {
  return 12 + 16 * (size_t)m->n_layers + 8 + 4 * (size_t)m->n_params + names_size(m->classes) + 4;
}

/* The most bytes a version 2 file's class names may take. */
#define NAMES_MAX ((size_t)4 + (size_t)TB_DATA_MAX_CLASS_NAMES * (4 + TB_DATA_MAX_CLASS_NAME))

int tb_model_save_weights(const tb_model_t *m, const char *path, tb_err_t *err) {
  if (m == NULL || !m->compiled || path == NULL)
    return tb_errf(err, TB_ESTATE, "save weights: the model is not compiled");
  size_t size = file_size(m);
  unsigned char *buf = malloc(size), *p = buf;
  if (buf == NULL)
    return tb_errf(err, TB_ENOMEM, "save weights: out of memory");
  memcpy(p, "TBWT", 4);
  put32(p + 4, TB_WEIGHTS_VERSION);
  put32(p + 8, (uint32_t)m->n_layers);
  p += 12;
  for (int i = 0; i < m->n_layers; i++, p += 16) {
    const tb__layer_t *l = &m->layers[i];
    put32(p, l->kind);
    put32(p + 4, (uint32_t)l->n_in);
    put32(p + 8, (uint32_t)l->n_out);
    put32(p + 12, l->act);
  }
  put32(p, (uint32_t)m->n_params);
  put32(p + 4, (uint32_t)((uint64_t)m->n_params >> 32));
  p += 8;
  for (long i = 0; i < m->n_params; i++, p += 4) {
    uint32_t u;
    memcpy(&u, &m->params[i], 4);
    put32(p, u);
  }
  const tb_classes_t *c = m->classes;
  put32(p, c != NULL ? (uint32_t)c->n : 0);
  p += 4;
  for (int i = 0; c != NULL && i < c->n; i++) {
    size_t k = strlen(c->names[i]);
    put32(p, (uint32_t)k);
    memcpy(p + 4, c->names[i], k);
    p += 4 + k;
  }
  put32(p, (uint32_t)crc32(0L, buf, (uInt)(size - 4)));

  char tmp[4096];
  int r = 0;
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    r = tb_errf(err, -errno, "save weights: cannot create %s: %s", tmp, strerror(errno));
    goto out;
  }
  if (fwrite(buf, 1, size, f) != size || fflush(f) != 0) {
    r = tb_errf(err, -errno, "save weights: cannot write %s: %s", tmp, strerror(errno));
    fclose(f);
    remove(tmp);
    goto out;
  }
  if (fclose(f) != 0 || rename(tmp, path) != 0) {
    r = tb_errf(err, -errno, "save weights: cannot write %s: %s", path, strerror(errno));
    remove(tmp);
  }
out:
  free(buf);
  return r;
}

int tb_model_load_weights(tb_model_t *m, const char *path, tb_err_t *err) {
  if (m == NULL || !m->compiled || path == NULL)
    return tb_errf(err, TB_ESTATE, "load weights: the model is not compiled");
  int r = 0;
  unsigned char *buf = NULL;
  tb_classes_t *classes = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return tb_errf(err, -errno, "%s: cannot open: %s", path, strerror(errno));
  /* Read up to what the model needs plus a header's worth and the most
   * class names a file may hold, to tell a file for another model from a
   * truncated one. */
  size_t cap = file_size(m) + 4096 + NAMES_MAX;
  if ((buf = malloc(cap)) == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory", path);
    goto out;
  }
  size_t got = fread(buf, 1, cap, f);
  if (ferror(f)) {
    r = tb_errf(err, TB_EIO, "%s: read error", path);
    goto out;
  }
  if (got >= 4 && memcmp(buf, "TBWT", 4) != 0) {
    r = tb_errf(err, TB_EFORMAT, "%s: not a trainbus weights file (bad magic)", path);
    goto out;
  }
  if (got < 12) {
    r = tb_errf(err, TB_ETRUNCATED, "%s: truncated: %zu bytes, too short for a weights header",
                path, got);
    goto out;
  }
  uint32_t version = get32(buf + 4);
  if (version < 1 || version > TB_WEIGHTS_VERSION) {
    r = tb_errf(err, TB_EVERSION,
                "%s: weights format version %u, this build reads versions 1 to %u", path, version,
                TB_WEIGHTS_VERSION);
    goto out;
  }
  /* The size the file's own header declares. */
  uint32_t n_layers = get32(buf + 8);
  size_t head = 12 + 16 * (size_t)n_layers + 8;
  if (n_layers > 1u << 20 || got < head) {
    r = tb_errf(err, TB_ETRUNCATED, "%s: truncated in the header (%zu bytes)", path, got);
    goto out;
  }
  uint64_t np = (uint64_t)get32(buf + head - 8) | (uint64_t)get32(buf + head - 4) << 32;
  if (np > (uint64_t)1 << 40) {
    r = tb_errf(err, TB_EFORMAT, "%s: implausible parameter count %llu", path,
                (unsigned long long)np);
    goto out;
  }
  size_t want = head + 4 * (size_t)np + 4;
  if (want + (version >= 2 ? 4 : 0) > cap) {
    r = tb_errf(err, TB_ESHAPE, "%s: %llu parameters in the file, the model has %ld", path,
                (unsigned long long)np, m->n_params);
    goto out;
  }
  /* Version 2: the class names between the parameters and the checksum. */
  size_t names_at = want - 4, names_len = 0;
  uint32_t n_names = 0;
  if (version >= 2) {
    if (got < names_at + 4) {
      r = tb_errf(err, TB_ETRUNCATED, "%s: truncated: %zu of at least %zu bytes", path, got,
                  names_at + 8);
      goto out;
    }
    n_names = get32(buf + names_at);
    names_len = 4;
    if (n_names > TB_DATA_MAX_CLASS_NAMES) {
      r = tb_errf(err, TB_EFORMAT, "%s: %u class names, more than the %d a file may hold", path,
                  n_names, TB_DATA_MAX_CLASS_NAMES);
      goto out;
    }
    for (uint32_t i = 0; i < n_names; i++) {
      if (got < names_at + names_len + 4) {
        r = tb_errf(err, TB_ETRUNCATED, "%s: truncated in its class names", path);
        goto out;
      }
      uint32_t k = get32(buf + names_at + names_len);
      if (k > TB_DATA_MAX_CLASS_NAME) {
        r = tb_errf(err, TB_EFORMAT, "%s: a class name of %u bytes, more than %d", path, k,
                    TB_DATA_MAX_CLASS_NAME);
        goto out;
      }
      names_len += 4 + k;
    }
    want += names_len;
  }
  if (got < want) {
    r = tb_errf(err, TB_ETRUNCATED, "%s: truncated: %zu of %zu bytes", path, got, want);
    goto out;
  }
  if (got > want) {
    r = tb_errf(err, TB_EFORMAT, "%s: longer than its header says (%zu bytes expected)", path,
                want);
    goto out;
  }
  if (get32(buf + want - 4) != (uint32_t)crc32(0L, buf, (uInt)(want - 4))) {
    r = tb_errf(err, TB_ECHECKSUM, "%s: checksum mismatch: the file is corrupt", path);
    goto out;
  }
  if (n_layers != (uint32_t)m->n_layers) {
    r = tb_errf(err, TB_ESHAPE, "%s: the file has %u layers but the model has %d", path, n_layers,
                m->n_layers);
    goto out;
  }
  const unsigned char *p = buf + 12;
  for (int i = 0; i < m->n_layers; i++, p += 16) {
    const tb__layer_t *l = &m->layers[i];
    if (get32(p) != (uint32_t)l->kind || get32(p + 4) != (uint32_t)l->n_in ||
        get32(p + 8) != (uint32_t)l->n_out) {
      r = tb_errf(err, TB_ESHAPE,
                  "%s: layer %d: the file has shape %u -> %u but the model's %s is %d -> %d", path,
                  i, get32(p + 4), get32(p + 8), l->name, l->n_in, l->n_out);
      goto out;
    }
  }
  if (np != (uint64_t)m->n_params) {
    r = tb_errf(err, TB_ESHAPE, "%s: %llu parameters in the file, the model has %ld", path,
                (unsigned long long)np, m->n_params);
    goto out;
  }
  if (n_names > 0) {
    const char **names = malloc(n_names * sizeof(char *));
    size_t *lens = malloc(n_names * sizeof(size_t));
    const unsigned char *q = buf + names_at + 4;
    if (names == NULL || lens == NULL) {
      free(names);
      free(lens);
      r = tb_errf(err, TB_ENOMEM, "%s: out of memory", path);
      goto out;
    }
    for (uint32_t i = 0; i < n_names; i++) {
      lens[i] = get32(q);
      names[i] = (const char *)q + 4;
      q += 4 + lens[i];
    }
    r = tb_classes_new(names, lens, (int)n_names, &classes);
    free(names);
    free(lens);
    if (r == TB_ENOMEM) {
      r = tb_errf(err, r, "%s: out of memory", path);
      goto out;
    }
    /* Stored in class order, which is sorted order. */
    q = buf + names_at + 4;
    for (uint32_t i = 0; r == 0 && i < n_names; i++) {
      uint32_t k = get32(q);
      if (strlen(classes->names[i]) != k || memcmp(classes->names[i], q + 4, k) != 0)
        r = TB_EFORMAT;
      q += 4 + k;
    }
    if (r != 0) {
      r = tb_errf(err, TB_EFORMAT,
                  "%s: malformed class names (a NUL byte, a name twice, or out of order)", path);
      goto out;
    }
  }
  /* A model with class names takes weights trained on the same names (or
   * a version 1 file, which has none to compare); one without adopts the
   * file's. */
  if (m->classes != NULL && classes != NULL && !tb_classes_equal(m->classes, classes)) {
    char mine[200];
    r = tb_errf(err, TB_ESHAPE,
                "%s: the file's class names are not the model's (%s): its outputs would mean "
                "other classes",
                path, tb_classes_format(m->classes, mine, sizeof(mine)));
    goto out;
  }
  if (m->classes == NULL && classes != NULL) {
    m->classes = classes;
    classes = NULL;
  }
  p += 8;
  for (long i = 0; i < m->n_params; i++, p += 4) {
    uint32_t u = get32(p);
    memcpy(&m->params[i], &u, 4);
  }
out:
  tb_classes_free(classes);
  free(buf);
  fclose(f);
  return r;
}
