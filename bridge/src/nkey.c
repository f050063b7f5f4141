/* The public key of a NATS nkey seed, which libnats's
 * natsOptions_SetNKeyFromSeed needs beside the seed file (it signs the
 * server's nonce with the seed but sends the public key as given).
 *
 * An nkey is base32 (RFC 4648, no padding) of: prefix byte(s), the 32-byte
 * Ed25519 key, and a CRC-16/XMODEM of what precedes it, little-endian
 * (nats-io/nkeys, nkeys.go and crc16.go). A user seed starts "SU": two bytes
 * holding the seed prefix (18 << 3) and the user prefix (20 << 3). The
 * Ed25519 public key is derived with OpenSSL, which libnats links already. */
#include "internal.h"

#include <openssl/evp.h>

#include <string.h>

#define PREFIX_SEED (18 << 3)
#define PREFIX_USER (20 << 3)

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16(const uint8_t *p, size_t n) {
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)(p[i] << 8);
    for (int k = 0; k < 8; k++)
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

static int b32_decode(const char *s, uint8_t *out, size_t cap, size_t *len) {
  uint32_t acc = 0;
  int bits = 0;
  size_t n = 0;
  for (; *s; s++) {
    const char *p = strchr(b32, *s);
    if (p == NULL || *s == '\0')
      return -1;
    acc = (acc << 5) | (uint32_t)(p - b32);
    bits += 5;
    if (bits >= 8) {
      if (n == cap)
        return -1;
      out[n++] = (uint8_t)(acc >> (bits - 8));
      bits -= 8;
    }
  }
  *len = n;
  return 0;
}

static void b32_encode(const uint8_t *p, size_t n, char *out) {
  uint32_t acc = 0;
  int bits = 0;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    acc = (acc << 8) | p[i];
    bits += 8;
    while (bits >= 5) {
      out[k++] = b32[(acc >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0)
    out[k++] = b32[(acc << (5 - bits)) & 31];
  out[k] = '\0';
}

int tb__nkey_public(const char *seed, char *pub, size_t pub_len, tb_client_err_t *err) {
  uint8_t raw[64];
  size_t n = 0;
  if (b32_decode(seed, raw, sizeof raw, &n) != 0 || n != 36)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "nkey seed: not a base32 nkey seed");
  uint16_t want = (uint16_t)(raw[34] | (raw[35] << 8));
  if (crc16(raw, 34) != want)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "nkey seed: bad checksum");
  int kind = ((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3);
  if ((raw[0] & 0xf8) != PREFIX_SEED || kind != PREFIX_USER)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "nkey seed: not a user seed (it must start SU)");
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
  uint8_t key[35];
  size_t klen = 32;
  int ok = k != NULL && EVP_PKEY_get_raw_public_key(k, key + 1, &klen) == 1 && klen == 32;
  EVP_PKEY_free(k);
  memset(raw, 0, sizeof raw);
  if (!ok)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "nkey seed: OpenSSL cannot derive its public key");
  key[0] = PREFIX_USER;
  uint16_t c = crc16(key, 33);
  key[33] = (uint8_t)(c & 0xff);
  key[34] = (uint8_t)(c >> 8);
  if (pub_len < 57)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "nkey: buffer too small");
  b32_encode(key, sizeof key, pub);
  return 0;
}
