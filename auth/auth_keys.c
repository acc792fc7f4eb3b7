/* auth_keys.c -- turn configured key definitions into usable keys
 *
 * A key definition (auth_key_spec_t) is an HMAC secret (text or base64url) or a public key
 * (PEM text or file). This file checks that the definition is complete and coherent (the alg
 * fits the key's type and curve, HMAC secrets are at least as long as the hash, RSA keys have
 * at least 2048 bits) and produces an auth_key_t. JWKS documents are handled in auth_jwks.c,
 * which hands each parsed EVP_PKEY to auth__key_from_pkey() here.
 */
#include "auth_int.h"

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const alg_names[AUTH_ALG_COUNT] = {
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA",
};

int auth__alg_from_name(const char *name, size_t len)
{
    for (int i = 0; i < AUTH_ALG_COUNT; i++)
        if (strlen(alg_names[i]) == len && memcmp(alg_names[i], name, len) == 0) return i;
    return -1;
}

const char *auth__alg_name(int alg)
{
    return alg >= 0 && alg < AUTH_ALG_COUNT ? alg_names[alg] : "?";
}

unsigned auth__algs_for_pkey(EVP_PKEY *pkey)
{
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
        return AUTH_ALG_BIT(AUTH_ALG_RS256) | AUTH_ALG_BIT(AUTH_ALG_RS384) |
               AUTH_ALG_BIT(AUTH_ALG_RS512);
    case EVP_PKEY_EC: {
        char group[64];
        size_t glen = 0;
        if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) != 1) return 0;
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            return AUTH_ALG_BIT(AUTH_ALG_ES256);
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            return AUTH_ALG_BIT(AUTH_ALG_ES384);
        if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
            return AUTH_ALG_BIT(AUTH_ALG_ES512);
        return 0;
    }
    case EVP_PKEY_ED25519:
        return AUTH_ALG_BIT(AUTH_ALG_EDDSA);
    }
    return 0;
}

static auth_kty_t kty_of(EVP_PKEY *pkey)
{
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
        return AUTH_KTY_RSA;
    case EVP_PKEY_EC:
        return AUTH_KTY_EC;
    default:
        return AUTH_KTY_OKP;
    }
}

void auth__key_clear(auth_key_t *k)
{
    if (k == NULL) return;
    free(k->kid);
    if (k->secret != NULL) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    EVP_PKEY_free(k->pkey);
    memset(k, 0, sizeof(*k));
}

int auth__key_copy(const auth_key_t *src, auth_key_t *dst)
{
    memset(dst, 0, sizeof(*dst));
    dst->algs = src->algs;
    dst->kty = src->kty;
    if (src->kid != NULL && (dst->kid = strdup(src->kid)) == NULL) goto oom;
    if (src->secret != NULL) {
        if ((dst->secret = malloc(src->secret_len)) == NULL) goto oom;
        memcpy(dst->secret, src->secret, src->secret_len);
        dst->secret_len = src->secret_len;
    }
    if (src->pkey != NULL) {
        if (EVP_PKEY_up_ref(src->pkey) != 1) goto oom;
        dst->pkey = src->pkey;
    }
    return 0;
oom:
    auth__key_clear(dst);
    return AUTH_ENOMEM;
}

int auth__key_from_pkey(EVP_PKEY *pkey, const char *kid, unsigned algs, auth_key_t *out,
                        auth_err_t *err)
{
    memset(out, 0, sizeof(*out));
    int bits = EVP_PKEY_get_bits(pkey);
    algs &= auth__algs_for_pkey(pkey); /* the invariant in auth_int.h */
    if (algs == 0) {
        EVP_PKEY_free(pkey);
        return auth__fail(err, AUTH_EINVAL, "unsupported public key type");
    }
    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA && bits < 2048) {
        EVP_PKEY_free(pkey);
        return auth__fail(err, AUTH_EINVAL, "RSA key has %d bits, at least 2048 are required",
                          bits);
    }
    if (kid != NULL && (out->kid = strdup(kid)) == NULL) {
        EVP_PKEY_free(pkey);
        return auth__fail(err, AUTH_ENOMEM, "out of memory");
    }
    out->pkey = pkey;
    out->kty = kty_of(pkey);
    out->algs = algs;
    return 0;
}

static int parse_pem(const char *text, size_t len, EVP_PKEY **out, auth_err_t *err)
{
    BIO *bio = BIO_new_mem_buf(text, (int)len);
    if (bio == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
    *out = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (*out != NULL) return 0;
    if (strstr(text, "PRIVATE KEY") != NULL) {
        auth__fail(err, AUTH_EINVAL, "key is a private key");
        auth__detail(err, "Configure the public key; the gateway only verifies signatures.");
        return AUTH_EINVAL;
    }
    return auth__fail(err, AUTH_EINVAL, "could not parse public key PEM");
}

static size_t hmac_min_len(int alg)
{
    return alg == AUTH_ALG_HS256 ? 32 : alg == AUTH_ALG_HS384 ? 48 : 64;
}

int auth__key_from_spec(const auth_key_spec_t *spec, auth_key_t *out, auth_err_t *err)
{
    memset(out, 0, sizeof(*out));
    if (spec->alg == NULL) return auth__fail(err, AUTH_EINVAL, "key has no \"alg\"");
    int alg = auth__alg_from_name(spec->alg, strlen(spec->alg));
    if (alg < 0) {
        auth__fail(err, AUTH_EINVAL, "unsupported alg \"%s\"", spec->alg);
        auth__detail(err, "Supported: HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, "
                          "ES512, EdDSA.");
        return AUTH_EINVAL;
    }
    int is_hmac = (AUTH_ALG_BIT(alg) & AUTH_ALGS_HMAC) != 0;
    if (spec->secret != NULL || spec->secret_base64url != NULL) {
        if (!is_hmac)
            return auth__fail(err, AUTH_EINVAL, "a secret needs an HMAC alg, not \"%s\"",
                              spec->alg);
        size_t n;
        unsigned char *buf;
        if (spec->secret != NULL) {
            n = strlen(spec->secret);
            buf = malloc(n + 1);
            if (buf == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
            memcpy(buf, spec->secret, n);
        } else {
            size_t l = strlen(spec->secret_base64url);
            while (l > 0 && spec->secret_base64url[l - 1] == '=')
                l--;
            buf = malloc(auth__b64url_declen(l));
            if (buf == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
            long r = auth__b64url_decode(spec->secret_base64url, l, buf);
            if (r < 0) {
                free(buf);
                return auth__fail(err, AUTH_EINVAL, "\"secret_base64url\" is not base64url");
            }
            n = (size_t)r;
        }
        if (n < hmac_min_len(alg)) {
            OPENSSL_cleanse(buf, n);
            free(buf);
            auth__fail(err, AUTH_EINVAL, "%s secret has %zu bytes, at least %zu are required",
                       spec->alg, n, hmac_min_len(alg));
            auth__detail(err, "RFC 7518 requires an HMAC key at least as long as the hash.");
            return AUTH_EINVAL;
        }
        if (spec->kid != NULL && (out->kid = strdup(spec->kid)) == NULL) {
            free(buf);
            return auth__fail(err, AUTH_ENOMEM, "out of memory");
        }
        out->secret = buf;
        out->secret_len = n;
        out->kty = AUTH_KTY_OCT;
        out->algs = AUTH_ALG_BIT(alg);
        return 0;
    }
    if (is_hmac)
        return auth__fail(err, AUTH_EINVAL, "alg \"%s\" needs \"secret\" or \"secret_base64url\"",
                          spec->alg);
    char *text = NULL;
    size_t len = 0;
    int rc;
    if (spec->pem != NULL) {
        text = strdup(spec->pem);
        if (text == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
        len = strlen(text);
    } else if (spec->pem_file != NULL) {
        if ((rc = auth__read_file(spec->pem_file, &text, &len, 1 << 16, err)) != 0) return rc;
    } else {
        return auth__fail(err, AUTH_EINVAL, "key has no key material");
    }
    EVP_PKEY *pkey = NULL;
    rc = parse_pem(text, len, &pkey, err);
    free(text);
    if (rc != 0) return rc;
    unsigned fit = auth__algs_for_pkey(pkey);
    if ((fit & AUTH_ALG_BIT(alg)) == 0) {
        EVP_PKEY_free(pkey);
        if (fit == 0) return auth__fail(err, AUTH_EINVAL, "unsupported public key type");
        return auth__fail(err, AUTH_EINVAL, "alg \"%s\" does not fit the key, which admits %s",
                          spec->alg, auth__alg_name(__builtin_ctz(fit)));
    }
    return auth__key_from_pkey(pkey, spec->kid, AUTH_ALG_BIT(alg), out, err);
}
