/* auth_sig.c -- check a JWS signature with one key
 *
 * HMAC, RSA (PKCS#1 v1.5) and ECDSA signatures are checked by libjwt's jwt_decode(), always with
 * a non-NULL key, and the algorithm libjwt saw must equal the one we selected (libjwt 1.10
 * alone would accept "none" with a NULL key and verify an HMAC keyed with public-key text; both
 * are excluded before we get here, and this check keeps it so). libjwt 1.10 has no EdDSA, so
 * Ed25519 signatures are checked with OpenSSL's EVP_DigestVerify() directly.
 */
#include "auth_int.h"

#include <jwt.h>
#include <stdlib.h>
#include <string.h>

static int verify_eddsa(const auth_key_t *key, const char *si, size_t si_len,
                        const unsigned char *sig, size_t sig_len)
{
    if (sig_len != 64 || key->pkey == NULL)
        return AUTH_EBADSIG;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL)
        return AUTH_ENOMEM;
    int ok = EVP_DigestVerifyInit(md, NULL, NULL, NULL, key->pkey) == 1 &&
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
    if (alg == AUTH_ALG_EDDSA) {
        int rc = verify_eddsa(key, signing_input, si_len, sig, sig_len);
        if (rc == AUTH_ENOMEM)
            return auth__fail(err, rc, "out of memory");
        return rc == 0 ? 0 : auth__fail(err, AUTH_EBADSIG, "signature does not verify");
    }
    const unsigned char *kbytes;
    size_t klen;
    if (key->kty == AUTH_KTY_OCT) {
        if ((AUTH_ALG_BIT(alg) & AUTH_ALGS_HMAC) == 0)
            return auth__fail(err, AUTH_EALG, "HMAC key used for alg \"%s\"", auth__alg_name(alg));
        kbytes = key->secret;
        klen = key->secret_len;
    } else {
        if ((AUTH_ALG_BIT(alg) & AUTH_ALGS_HMAC) != 0 || key->pem == NULL)
            return auth__fail(err, AUTH_EALG, "public key used for alg \"%s\"",
                              auth__alg_name(alg));
        kbytes = (const unsigned char *)key->pem;
        klen = key->pem_len;
    }
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
