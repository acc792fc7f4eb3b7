/* fuzz_auth.c -- libFuzzer target: the JWT path of the auth library
 *
 * Each input is used three ways, so the fuzzer reaches past the signature check:
 *   1. as a raw token and as an Authorization header value (auth_header_token, auth_verify);
 *   2. split at the first newline into header and payload JSON, base64url-encoded and signed
 *      with the context's HMAC secret, then verified: this exercises alg/kid/typ handling and
 *      every claim check with correctly signed garbage;
 *   3. as a JWKS document (auth__jwks_parse).
 * Any result is fine except a crash, a leak, a hang, or a success without a sub and exp.
 */
#include "auth/auth.h"
#include "auth/auth_int.h"

#include <openssl/hmac.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-secret-fuzz-secret-fuzz-secret-0"

static auth_ctx_t *g_ctx;

static void init(void)
{
    static const char *aud[] = {"ferry"};
    auth_key_spec_t keys[] = {{.kid = "k", .alg = "HS256", .secret = SECRET},
                              {.alg = "HS512", .secret = SECRET SECRET}};
    auth_opts_t o = {0};
    o.audience = aud;
    o.n_audience = 1;
    o.leeway = -1;
    o.min_kid_refresh_gap = -1;
    o.cache_entries = 64;
    auth_err_t err;
    if (auth_ctx_create(keys, 2, &o, &g_ctx, &err) != 0) abort();
}

static void check(int rc, auth_token_t *t)
{
    if (rc == 0) {
        if (t == NULL || t->sub == NULL || t->claims == NULL) __builtin_trap();
        auth_token_release(t);
    } else if (t != NULL || rc > 0) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_ctx == NULL) init();
    auth_token_t *t = NULL;
    auth_err_t err;

    /* 1: raw */
    check(auth_verify(g_ctx, (const char *)data, size, &t, &err), t);
    const char *tok;
    size_t tlen;
    if (auth_header_token((const char *)data, size, &tok, &tlen, &err) == 0) {
        t = NULL;
        check(auth_verify(g_ctx, tok, tlen, &t, &err), t);
    }

    /* 2: header\npayload, signed */
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl != NULL && size < 8192) {
        size_t hl = (size_t)(nl - data), pl = size - hl - 1;
        char *buf = malloc(2 * size + 128);
        size_t o = auth__b64url_encode(data, hl, buf);
        buf[o++] = '.';
        o += auth__b64url_encode(nl + 1, pl, buf + o);
        unsigned char mac[32];
        unsigned int maclen = 0;
        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)buf, o, mac, &maclen);
        buf[o++] = '.';
        o += auth__b64url_encode(mac, maclen, buf + o);
        t = NULL;
        check(auth_verify(g_ctx, buf, o, &t, &err), t);
        free(buf);
    }

    /* 3: JWKS */
    auth_key_t *keys = NULL;
    size_t n = 0;
    if (auth__jwks_parse((const char *)data, size, 0, &keys, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            auth__key_clear(&keys[i]);
        free(keys);
    }
    return 0;
}
