/* auth_jwks.c -- read JWKS documents (RFC 7517) from files and URLs into keys
 *
 * Accepted keys: RSA (n, e), EC (crv P-256/P-384/P-521, x, y) and OKP Ed25519 (x), with "use"
 * absent or "sig". A key without "alg" admits the algorithms of its type only (RSA: RS256/384/512,
 * EC: the ES alg of its curve, OKP: EdDSA); a key whose "alg" does not fit its type, symmetric
 * ("oct") keys and keys of other types are skipped, never turned into HMAC keys. A document that
 * is not a JSON object with a "keys" array is an error; the caller then keeps the previous keys.
 *
 * URLs are fetched with libcurl (http and https only, no redirects, bounded time and size).
 */
#include "auth_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JWKS_MAX_BYTES (1 << 20)

/* Decode a base64url member of a JWK; NULL when absent or invalid. The caller frees it. */
static unsigned char *jwk_b64(json_t *jwk, const char *name, size_t *len)
{
    const char *s = json_string_value(json_object_get(jwk, name));
    if (s == NULL) return NULL;
    size_t l = strlen(s);
    unsigned char *buf = malloc(auth__b64url_declen(l));
    if (buf == NULL) return NULL;
    long n = auth__b64url_decode(s, l, buf);
    if (n <= 0) {
        free(buf);
        return NULL;
    }
    *len = (size_t)n;
    return buf;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params != NULL && pctx != NULL && EVP_PKEY_fromdata_init(pctx) == 1)
        if (EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) pkey = NULL;
    EVP_PKEY_CTX_free(pctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *jwk_rsa(json_t *jwk)
{
    size_t nl = 0, el = 0;
    unsigned char *n = jwk_b64(jwk, "n", &nl), *e = jwk_b64(jwk, "e", &el);
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    if (n == NULL || e == NULL || el > 8) goto out;
    bn = BN_bin2bn(n, (int)nl, NULL);
    be = BN_bin2bn(e, (int)el, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (bn == NULL || be == NULL || bld == NULL ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) != 1)
        goto out;
    pkey = pkey_fromdata("RSA", bld);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static EVP_PKEY *jwk_ec(json_t *jwk)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    const char *group;
    size_t clen;
    if (crv == NULL) return NULL;
    if (strcmp(crv, "P-256") == 0)
        group = "prime256v1", clen = 32;
    else if (strcmp(crv, "P-384") == 0)
        group = "secp384r1", clen = 48;
    else if (strcmp(crv, "P-521") == 0)
        group = "secp521r1", clen = 66;
    else
        return NULL;
    size_t xl = 0, yl = 0;
    unsigned char *x = jwk_b64(jwk, "x", &xl), *y = jwk_b64(jwk, "y", &yl);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    unsigned char pub[1 + 2 * 66];
    if (x == NULL || y == NULL || xl != clen || yl != clen) goto out;
    pub[0] = 0x04;
    memcpy(pub + 1, x, clen);
    memcpy(pub + 1 + clen, y, clen);
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * clen) != 1)
        goto out;
    pkey = pkey_fromdata("EC", bld);
    if (pkey != NULL) { /* the point must be on the curve */
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (c == NULL || EVP_PKEY_public_check(c) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(c);
    }
out:
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

static EVP_PKEY *jwk_okp(json_t *jwk)
{
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    if (crv == NULL || strcmp(crv, "Ed25519") != 0) return NULL;
    size_t xl = 0;
    unsigned char *x = jwk_b64(jwk, "x", &xl);
    EVP_PKEY *pkey = NULL;
    if (x != NULL && xl == 32) pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl);
    free(x);
    return pkey;
}

int auth__jwks_parse(const char *text, size_t len, unsigned restrict_algs, auth_key_t **keys,
                     size_t *n, auth_err_t *err)
{
    json_error_t jerr;
    *keys = NULL;
    *n = 0;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL)
        return auth__fail(err, AUTH_EINVAL, "JWKS is not valid JSON: %s (line %d)", jerr.text,
                          jerr.line);
    json_t *arr = json_object_get(doc, "keys");
    if (!json_is_array(arr)) {
        json_decref(doc);
        return auth__fail(err, AUTH_EINVAL, "JWKS has no \"keys\" array");
    }
    size_t cap = json_array_size(arr);
    auth_key_t *out = calloc(cap ? cap : 1, sizeof(*out));
    if (out == NULL) {
        json_decref(doc);
        return auth__fail(err, AUTH_ENOMEM, "out of memory");
    }
    size_t i, count = 0;
    json_t *jwk;
    json_array_foreach(arr, i, jwk)
    {
        const char *kty = json_string_value(json_object_get(jwk, "kty"));
        const char *use = json_string_value(json_object_get(jwk, "use"));
        json_t *kidv = json_object_get(jwk, "kid");
        json_t *algv = json_object_get(jwk, "alg");
        if (kty == NULL || (use != NULL && strcmp(use, "sig") != 0)) continue;
        if (kidv != NULL && !json_is_string(kidv)) continue;
        if (algv != NULL && !json_is_string(algv)) continue;
        EVP_PKEY *pkey = NULL;
        if (strcmp(kty, "RSA") == 0)
            pkey = jwk_rsa(jwk);
        else if (strcmp(kty, "EC") == 0)
            pkey = jwk_ec(jwk);
        else if (strcmp(kty, "OKP") == 0)
            pkey = jwk_okp(jwk);
        if (pkey == NULL) continue; /* "oct", unknown types and broken keys are skipped */
        unsigned algs = auth__algs_for_pkey(pkey);
        if (algv != NULL) {
            int a = auth__alg_from_name(json_string_value(algv), json_string_length(algv));
            algs = a < 0 ? 0 : algs & AUTH_ALG_BIT(a);
        }
        if (restrict_algs != 0) algs &= restrict_algs;
        if (algs == 0) {
            EVP_PKEY_free(pkey);
            continue;
        }
        auth_err_t kerr;
        if (auth__key_from_pkey(pkey, json_string_value(kidv), algs, &out[count], &kerr) == 0)
            count++;
    }
    json_decref(doc);
    *keys = out;
    *n = count;
    return 0;
}

int auth__read_file(const char *path, char **body, size_t *len, size_t max, auth_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return auth__fail(err, AUTH_EIO, "could not open \"%s\": %s", path, strerror(errno));
    char *buf = malloc(max + 1);
    if (buf == NULL) {
        fclose(f);
        return auth__fail(err, AUTH_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, max + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return auth__fail(err, AUTH_EIO, "could not read \"%s\"", path);
    }
    if (n > max) {
        free(buf);
        return auth__fail(err, AUTH_EIO, "\"%s\" is larger than %zu bytes", path, max);
    }
    buf[n] = '\0';
    *body = buf;
    *len = n;
    return 0;
}

typedef struct fetch_buf {
    char *data;
    size_t len;
} fetch_buf_t;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
    fetch_buf_t *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > JWKS_MAX_BYTES) return 0; /* abort: too large */
    char *p = realloc(b->data, b->len + n + 1);
    if (p == NULL) return 0;
    memcpy(p + b->len, ptr, n);
    b->data = p;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int auth__jwks_fetch(const char *uri, char **body, size_t *len, auth_err_t *err)
{
    pthread_once(&curl_once, curl_init);
    CURL *c = curl_easy_init();
    if (c == NULL) return auth__fail(err, AUTH_ENOMEM, "could not create a libcurl handle");
    fetch_buf_t b = {0};
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, uri);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "ferry-jwks");
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(b.data);
        return auth__fail(err, AUTH_EIO, "could not fetch JWKS from \"%s\": %s", uri,
                          ebuf[0] ? ebuf : curl_easy_strerror(rc));
    }
    if (status != 200) {
        free(b.data);
        return auth__fail(err, AUTH_EIO, "could not fetch JWKS from \"%s\": HTTP status %ld", uri,
                          status);
    }
    if (b.data == NULL && (b.data = strdup("")) == NULL)
        return auth__fail(err, AUTH_ENOMEM, "out of memory");
    *body = b.data;
    *len = b.len;
    return 0;
}
