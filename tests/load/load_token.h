/* load_token.h -- HS256 tokens for the load harness's simulated users
 *
 * Signs {"sub","iat","exp"[,"aud"][,"iss"]} with the shared secret in-process (OpenSSL HMAC),
 * the same claims `ferry token` writes, so thousands of users need no CLI call each.
 */
#ifndef LOAD_TOKEN_H
#define LOAD_TOKEN_H

#include <stddef.h>

typedef struct load_token_cfg {
    const char *secret, *kid, *aud, *iss;
    long ttl; /* seconds */
} load_token_cfg_t;

/** Write a token for user sub into out (NUL-terminated); returns its length, or -1 if cap is too
 * small. */
int load_token_sign(const load_token_cfg_t *cfg, const char *sub, char *out, size_t cap);

#endif
