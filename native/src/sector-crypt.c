/*
 * Per-sector decryption as QEMU's qcrypto block layer does it: each 512-byte sector is decrypted on its
 * own with the IV its ivgen makes from the sector number (plain: LE32, plain64: LE64, essiv: the plain64
 * IV encrypted under the hash of the key, which TypeScript derives and hands over as essivKey).
 *
 * One OpenSSL context per worker at a time, taken from a small lock-free pool: a key schedule is set
 * once per context, and each sector only re-initialises the IV (about 3.7 GB/s for aes-256-xts on this
 * machine's AES-NI, several times the host file's read speed through FUSE).
 */
#define _GNU_SOURCE
#include "sector-crypt.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define POOL 32 /* contexts: more than the back-end's 16 worker threads at most */
#define MAX_KEY 64
#define MAX_IV 16

enum ivgen { IV_NONE, IV_PLAIN, IV_PLAIN64, IV_ESSIV };

typedef struct {
  atomic_int busy;
  EVP_CIPHER_CTX *ctx;
  EVP_CIPHER_CTX *essiv;
} slot_t;

struct sector_crypt {
  EVP_CIPHER *cipher;
  EVP_CIPHER *essiv_cipher;
  unsigned char key[MAX_KEY];
  unsigned char essiv_key[MAX_KEY];
  int ivgen;
  int iv_len;
  slot_t pool[POOL];
};

static slot_t *take(sector_crypt_t *c) {
  for (int i = 0; i < POOL; i++) {
    int idle = 0;
    if (atomic_compare_exchange_strong_explicit(&c->pool[i].busy, &idle, 1, memory_order_acquire, memory_order_relaxed)) return &c->pool[i];
  }
  return NULL;
}

static void give_back(slot_t *s) { atomic_store_explicit(&s->busy, 0, memory_order_release); }

/* The slot's contexts, keyed on first use. */
static int ready(sector_crypt_t *c, slot_t *s) {
  if (!s->ctx) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return -1;
    if (EVP_CipherInit_ex(ctx, c->cipher, NULL, c->key, NULL, 0) != 1) {
      EVP_CIPHER_CTX_free(ctx);
      return -1;
    }
    EVP_CIPHER_CTX_set_padding(ctx, 0); /* else DecryptUpdate holds back the last block */
    s->ctx = ctx;
  }
  if (c->essiv_cipher && !s->essiv) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return -1;
    if (EVP_CipherInit_ex(ctx, c->essiv_cipher, NULL, c->essiv_key, NULL, 1) != 1) {
      EVP_CIPHER_CTX_free(ctx);
      return -1;
    }
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    s->essiv = ctx;
  }
  return 0;
}

static int sector_iv(sector_crypt_t *c, slot_t *s, uint64_t sector, unsigned char *iv) {
  memset(iv, 0, MAX_IV);
  uint64_t n = c->ivgen == IV_PLAIN ? (sector & 0xffffffffu) : sector;
  for (int i = 0; i < 8 && i < c->iv_len; i++) iv[i] = (unsigned char)(n >> (8 * i));
  if (c->ivgen != IV_ESSIV) return 0;
  int out = 0;
  return EVP_EncryptUpdate(s->essiv, iv, &out, iv, c->iv_len) == 1 && out == c->iv_len ? 0 : -1;
}

int sector_crypt_decrypt(sector_crypt_t *c, unsigned char *buf, size_t len, uint64_t first_sector) {
  if (len % SECTOR_CRYPT_SECTOR != 0 || len > (size_t)INT32_MAX) return -1;
  slot_t *s = take(c);
  if (!s) return -1;
  int rc = ready(c, s);
  if (rc == 0 && c->ivgen == IV_NONE) {
    /* ECB: no IV, no chaining; the whole run at once. */
    int out = 0;
    rc = EVP_DecryptUpdate(s->ctx, buf, &out, buf, (int)len) == 1 && (size_t)out == len ? 0 : -1;
  }
  for (size_t at = 0; rc == 0 && c->ivgen != IV_NONE && at < len; at += SECTOR_CRYPT_SECTOR) {
    unsigned char iv[MAX_IV];
    int out = 0;
    if (sector_iv(c, s, first_sector + at / SECTOR_CRYPT_SECTOR, iv) != 0 ||
        EVP_CipherInit_ex(s->ctx, NULL, NULL, NULL, iv, 0) != 1 ||
        EVP_DecryptUpdate(s->ctx, buf + at, &out, buf + at, SECTOR_CRYPT_SECTOR) != 1 || out != SECTOR_CRYPT_SECTOR) {
      rc = -1;
    }
  }
  give_back(s);
  return rc;
}

void sector_crypt_free(sector_crypt_t *c) {
  if (!c) return;
  for (int i = 0; i < POOL; i++) {
    EVP_CIPHER_CTX_free(c->pool[i].ctx); /* clears the key schedule */
    EVP_CIPHER_CTX_free(c->pool[i].essiv);
  }
  EVP_CIPHER_free(c->cipher);
  EVP_CIPHER_free(c->essiv_cipher);
  OPENSSL_cleanse(c, sizeof *c);
  free(c);
}

/* ---------------------------------------------------------------- from JavaScript */

static int get(napi_env env, napi_value o, const char *key, napi_value *out) {
  bool has = false;
  if (napi_has_named_property(env, o, key, &has) != napi_ok || !has) return 0;
  if (napi_get_named_property(env, o, key, out) != napi_ok) return 0;
  napi_valuetype t;
  napi_typeof(env, *out, &t);
  return t != napi_undefined && t != napi_null;
}

static int get_string(napi_env env, napi_value o, const char *key, char *out, size_t cap) {
  napi_value v;
  size_t len;
  return get(env, o, key, &v) && napi_get_value_string_utf8(env, v, out, cap, &len) == napi_ok && len > 0 && len < cap - 1;
}

/* Copies a Buffer into `out`: its length, or -1. */
static int get_key(napi_env env, napi_value o, const char *key, unsigned char *out) {
  napi_value v;
  void *data;
  size_t len;
  bool is_buffer = false;
  if (!get(env, o, key, &v) || napi_is_buffer(env, v, &is_buffer) != napi_ok || !is_buffer) return -1;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok || len == 0 || len > MAX_KEY) return -1;
  memcpy(out, data, len);
  return (int)len;
}

static EVP_CIPHER *fetch(const char *name) {
  ERR_set_mark();
  EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);
  ERR_pop_to_mark(); /* a missing cipher is an answer, not an error left on this thread's queue */
  return c;
}

sector_crypt_t *sector_crypt_from_js(napi_env env, napi_value o, const char **problem) {
  char name[64], ivgen[16], essiv_name[64];
  sector_crypt_t *c = calloc(1, sizeof *c);
  if (!c) { *problem = "out of memory"; return NULL; }
  *problem = NULL;
  if (!get_string(env, o, "cipher", name, sizeof name) || !get_string(env, o, "ivgen", ivgen, sizeof ivgen)) *problem = "crypt needs cipher and ivgen";
  else if (!strcmp(ivgen, "none")) c->ivgen = IV_NONE;
  else if (!strcmp(ivgen, "plain")) c->ivgen = IV_PLAIN;
  else if (!strcmp(ivgen, "plain64")) c->ivgen = IV_PLAIN64;
  else if (!strcmp(ivgen, "essiv")) c->ivgen = IV_ESSIV;
  else *problem = "crypt ivgen unknown";
  int key_len = *problem ? -1 : get_key(env, o, "key", c->key);
  if (!*problem && key_len < 0) *problem = "crypt key must be a Buffer of 1 to 64 bytes";
  if (!*problem && !(c->cipher = fetch(name))) *problem = "crypt cipher not in this Node's OpenSSL";
  if (!*problem && EVP_CIPHER_get_key_length(c->cipher) != key_len) *problem = "crypt key length does not fit the cipher";
  if (!*problem) {
    c->iv_len = EVP_CIPHER_get_iv_length(c->cipher);
    if ((c->ivgen == IV_NONE) != (c->iv_len == 0) || c->iv_len > MAX_IV) *problem = "crypt ivgen does not fit the cipher";
  }
  if (!*problem && c->ivgen == IV_ESSIV) {
    int essiv_len = get_key(env, o, "essivKey", c->essiv_key);
    if (!get_string(env, o, "essivCipher", essiv_name, sizeof essiv_name) || essiv_len < 0) *problem = "essiv needs essivCipher and essivKey";
    else if (!(c->essiv_cipher = fetch(essiv_name))) *problem = "crypt essiv cipher not in this Node's OpenSSL";
    else if (EVP_CIPHER_get_key_length(c->essiv_cipher) != essiv_len || EVP_CIPHER_get_block_size(c->essiv_cipher) != c->iv_len) *problem = "essiv cipher does not fit";
  }
  if (*problem) {
    sector_crypt_free(c);
    return NULL;
  }
  return c;
}

napi_value sector_crypt_js_available(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  char name[64];
  size_t len = 0;
  int ok = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == 1 &&
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) == napi_ok && len > 0 && len < sizeof name - 1) {
    EVP_CIPHER *c = fetch(name);
    ok = c != NULL;
    EVP_CIPHER_free(c);
  }
  napi_get_boolean(env, ok, &out);
  return out;
}
