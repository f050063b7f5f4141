/* The weights file.
 *
 *   offset  size  field
 *   0       4     magic "TBWT"
 *   4       4     version (1)
 *   8       4     number of layers L
 *   12      16*L  per layer: kind, n_in, n_out, activation (u32 each)
 *   ..      8     number of parameters P (u64)
 *   ..      4*P   parameters, little-endian float32, layer by layer (W then b)
 *   ..      4     CRC-32 (zlib) of every byte before it
 *
 * All integers are little-endian. The file is written to "<path>.tmp" and
 * renamed, so a crash never leaves a torn weights file under the real name.
 * Loading reads the whole file, checks magic, version, size, checksum and
 * every shape before touching the model. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define TB_WEIGHTS_VERSION 1u

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static size_t file_size(const tb_model_t *m) {
  return 12 + 16 * (size_t)m->n_layers + 8 + 4 * (size_t)m->n_params + 4;
}

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
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return tb_errf(err, -errno, "%s: cannot open: %s", path, strerror(errno));
  /* Read up to what the model needs plus a header's worth, to tell a file
   * for another model from a truncated one. */
  size_t cap = file_size(m) + 4096;
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
  if (get32(buf + 4) != TB_WEIGHTS_VERSION) {
    r = tb_errf(err, TB_EVERSION, "%s: weights format version %u, this build reads version %u",
                path, get32(buf + 4), TB_WEIGHTS_VERSION);
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
  if (want > cap) {
    r = tb_errf(err, TB_ESHAPE, "%s: %llu parameters in the file, the model has %ld", path,
                (unsigned long long)np, m->n_params);
    goto out;
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
  p += 8;
  for (long i = 0; i < m->n_params; i++, p += 4) {
    uint32_t u = get32(p);
    memcpy(&m->params[i], &u, 4);
  }
out:
  free(buf);
  fclose(f);
  return r;
}
