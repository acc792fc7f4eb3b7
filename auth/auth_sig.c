/* auth_sig.c -- check a JWS signature with one key
 *
 * HMAC signatures are checked by libjwt's jwt_decode(), always with a non-NULL key, and the
 * algorithm libjwt saw must equal the one we selected (libjwt 1.10 alone would accept "none"
 * with a NULL key and verify an HMAC keyed with public-key text; both are excluded before we get
 * here, and this check keeps it so).
 *
 * Public-key signatures (RS*, ES*, EdDSA) are checked with OpenSSL's EVP_DigestVerify() on the
 * EVP_PKEY parsed once when the key was loaded. libjwt 1.10 has no EdDSA, and for RS256/ES256 it
 * re-reads the PEM on every call: measured with tests/load/bench_auth, that ran at 0.05 (RS256)
 * and 0.16 (ES256) of EVP_DigestVerify() alone, so the pre-parsed key is used instead. JWS
 * ECDSA signatures are r||s of fixed length (RFC 7518 3.4) and are converted to DER for OpenSSL.
 */
#include "auth_int.h"

#include <jwt.h>
#include <openssl/ecdsa.h>
#include <stdlib.h>
#include <string.h>

static const EVP_MD *md_for(int alg)
{
    switch (alg) {
    case AUTH_ALG_RS256:
    case AUTH_ALG_ES256:
        return EVP_sha256();
    case AUTH_ALG_RS384:
    case AUTH_ALG_ES384:
        return EVP_sha384();
    case AUTH_ALG_RS512:
    case AUTH_ALG_ES512:
        return EVP_sha512();
    }
    return NULL; /* EdDSA: no separate digest */
}

/* r||s (each n bytes) to a DER ECDSA-Sig-Value in der (size *der_len); 0 or -1. */
static int ecdsa_to_der(const unsigned char *sig, size_t n, unsigned char *der, size_t *der_len)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)n, NULL), *s = BN_bin2bn(sig + n, (int)n, NULL);
    if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return -1;
    }
    int len = i2d_ECDSA_SIG(es, NULL);
    int rc = -1;
    if (len > 0 && (size_t)len <= *der_len) {
        unsigned char *p = der;
        *der_len = (size_t)i2d_ECDSA_SIG(es, &p);
        rc = 0;
    }
    ECDSA_SIG_free(es);
    return rc;
}

static int verify_evp(const auth_key_t *key, int alg, const char *si, size_t si_len,
                      const unsigned char *sig, size_t sig_len)
{
    unsigned char der[160];
    if (key->pkey == NULL) return AUTH_EBADSIG;
    if (alg == AUTH_ALG_EDDSA && sig_len != 64) return AUTH_EBADSIG;
    if (alg >= AUTH_ALG_ES256 && alg <= AUTH_ALG_ES512) {
        size_t n = alg == AUTH_ALG_ES256 ? 32 : alg == AUTH_ALG_ES384 ? 48 : 66;
        size_t der_len = sizeof(der);
        if (sig_len != 2 * n || ecdsa_to_der(sig, n, der, &der_len) != 0) return AUTH_EBADSIG;
        sig = der;
        sig_len = der_len;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL) return AUTH_ENOMEM;
    int ok = EVP_DigestVerifyInit(md, NULL, md_for(alg), NULL, key->pkey) == 1 &&
             EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)si, si_len) == 1;
    EVP_MD_CTX_free(md);
    return ok ? 0 : AUTH_EBADSIG;
}

int auth__verify_sig(const auth_key_t *key, int alg, const char *token, size_t len,
                     const char *signing_input, size_t si_len, const unsigned char *sig,
                     size_t sig_len, auth_err_t *err)
{
    (void)len;
    if ((key->algs & AUTH_ALG_BIT(alg)) == 0) /* callers select keys by alg; never reached */
        return auth__fail(err, AUTH_EALG, "key does not admit alg \"%s\"", auth__alg_name(alg));
    if ((AUTH_ALG_BIT(alg) & AUTH_ALGS_HMAC) == 0) {
        if (key->kty == AUTH_KTY_OCT)
            return auth__fail(err, AUTH_EALG, "HMAC key used for alg \"%s\"", auth__alg_name(alg));
        int rc = verify_evp(key, alg, signing_input, si_len, sig, sig_len);
        if (rc == AUTH_ENOMEM) return auth__fail(err, rc, "out of memory");
        return rc == 0 ? 0 : auth__fail(err, AUTH_EBADSIG, "signature does not verify");
    }
    if (key->kty != AUTH_KTY_OCT) /* never an HMAC keyed with public-key material */
        return auth__fail(err, AUTH_EALG, "public key used for alg \"%s\"", auth__alg_name(alg));
    const unsigned char *kbytes = key->secret;
    size_t klen = key->secret_len;
    if (sig_len == 0 || kbytes == NULL || klen == 0)
        return auth__fail(err, AUTH_EBADSIG, "signature does not verify");
    jwt_t *jwt = NULL;
    /* token is NUL-terminated by the caller */
    int rc = jwt_decode(&jwt, token, kbytes, (int)klen);
    if (rc != 0 || jwt == NULL) {
        jwt_free(jwt);
        return auth__fail(err, AUTH_EBADSIG, "signature does not verify");
    }
    jwt_alg_t seen = jwt_get_alg(jwt);
    jwt_free(jwt);
    if ((int)seen != alg + 1 /* JWT_ALG_HS256 == 1, in our order */)
        return auth__fail(err, AUTH_EBADSIG, "signature does not verify");
    return 0;
}
