/*
 * Sector decryption for the native back-end's encrypted views (LUKS and QEMU's legacy AES), with the
 * OpenSSL that Node itself exports: no library of our own, no second copy of OpenSSL.
 */
#ifndef QCOW_SECTOR_CRYPT_H
#define QCOW_SECTOR_CRYPT_H

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

#define SECTOR_CRYPT_SECTOR 512u

typedef struct sector_crypt sector_crypt_t;

/* Decrypts `len` bytes (whole 512-byte sectors) in place; the first sector's IV number is
 * `first_sector`. Safe from any number of threads at once. 0, or -1 (the caller lets JavaScript serve). */
int sector_crypt_decrypt(sector_crypt_t *c, unsigned char *buf, size_t len, uint64_t first_sector);

/* Zeroes the keys (ours and OpenSSL's key schedules) and frees. NULL is fine. */
void sector_crypt_free(sector_crypt_t *c);

/* From a view's `crypt` object: { cipher: OpenSSL name, key: Buffer, ivgen: 'none' | 'plain' |
 * 'plain64' | 'essiv', essivCipher?: OpenSSL name, essivKey?: Buffer }. NULL and *problem on failure. */
sector_crypt_t *sector_crypt_from_js(napi_env env, napi_value o, const char **problem);

/* cipherAvailable(name) -> bool: whether this Node's OpenSSL has the cipher. */
napi_value sector_crypt_js_available(napi_env env, napi_callback_info info);

#endif
