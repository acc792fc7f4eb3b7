/* bench_auth.c -- token verifications per second on one core, and cache hits per second
 *
 * Keys are generated in-process (RSA 2048, P-256, Ed25519, a 32-byte HMAC secret) and tokens
 * signed once with libjwt or OpenSSL; then, each for about a second of wall time:
 *   - auth_verify() with the cache off: the full path (parse, key choice, signature, claims);
 *   - the same signature check alone with OpenSSL EVP_DigestVerify() on a pre-parsed key: the
 *     limit our path is measured against (the ratio shows what parsing and libjwt cost);
 *   - auth_verify() with the cache on, one token and 1000 distinct tokens.
 * Prints "BENCH name value unit [note]" lines for tests/load/bench.sh. No timing goals here.
 */
#include "auth/auth.h"

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SECRET "bench-secret-bench-secret-bench-secret"

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *pem_of(EVP_PKEY *k, int priv)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (priv)
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(b, k);
    char *d;
    long n = BIO_get_mem_data(b, &d);
    char *s = strndup(d, (size_t)n);
    BIO_free(b);
    return s;
}

static char *payload(void)
{
    static char buf[512];
    long long t = (long long)time(NULL);
    snprintf(buf, sizeof(buf),
             "{\"sub\":\"user-42\",\"iat\":%lld,\"exp\":%lld,\"aud\":\"ferry\","
             "\"parameters\":{\"team\":\"t1\",\"regions\":[\"eu\"]}}",
             t, t + 3600);
    return buf;
}

static char *sign_libjwt(jwt_alg_t alg, const char *kid, const unsigned char *key, size_t klen,
                         const char *extra)
{
    jwt_t *j;
    jwt_new(&j);
    jwt_add_grants_json(j, payload());
    if (extra) jwt_add_grant(j, "n", extra);
    jwt_add_header(j, "kid", kid);
    if (jwt_set_alg(j, alg, key, (int)klen) != 0) {
        fprintf(stderr, "bench_auth: libjwt could not sign\n");
        exit(1);
    }
    char *t = jwt_encode_str(j);
    jwt_free(j);
    return t;
}

static size_t b64url(const unsigned char *in, size_t len, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        if (i + 1 < len) out[o++] = t[v >> 6 & 63];
        if (i + 2 < len) out[o++] = t[v & 63];
    }
    out[o] = '\0';
    return o;
}

static char *sign_eddsa(EVP_PKEY *k)
{
    char *buf = malloc(2048);
    const char *h = "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}";
    size_t o = b64url((const unsigned char *)h, strlen(h), buf);
    buf[o++] = '.';
    const char *p = payload();
    o += b64url((const unsigned char *)p, strlen(p), buf + o);
    unsigned char sig[64];
    size_t sl = sizeof(sig);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_DigestSignInit(m, NULL, NULL, NULL, k);
    EVP_DigestSign(m, sig, &sl, (unsigned char *)buf, o);
    EVP_MD_CTX_free(m);
    buf[o++] = '.';
    b64url(sig, sl, buf + o);
    return buf;
}

typedef struct result {
    double per_sec;
} result_t;

static double run_verify(auth_ctx_t *ctx, char **toks, size_t ntoks, double secs)
{
    size_t n = 0;
    double t0 = now_sec(), t1;
    do {
        for (int i = 0; i < 64; i++, n++) {
            const char *tok = toks[n % ntoks];
            auth_token_t *t;
            auth_err_t err;
            if (auth_verify(ctx, tok, strlen(tok), &t, &err) != 0) {
                fprintf(stderr, "bench_auth: verify failed: %s \n", err.message);
                exit(1);
            }
            auth_token_release(t);
        }
        t1 = now_sec();
    } while (t1 - t0 < secs);
    return (double)n / (t1 - t0);
}

/* The limit: signature check only, pre-parsed key, DER signature prepared once. */
static double run_evp(EVP_PKEY *k, const EVP_MD *md, const char *tok, int ecdsa, double secs)
{
    const char *dot = strrchr(tok, '.');
    size_t si = (size_t)(dot - tok);
    /* decode the signature via libjwt's format is not needed: re-sign here for the limit */
    unsigned char sig[1024];
    size_t sl = sizeof(sig);
    (void)ecdsa;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY *priv = k;
    EVP_DigestSignInit(m, NULL, md, NULL, priv);
    EVP_DigestSign(m, sig, &sl, (const unsigned char *)tok, si);
    EVP_MD_CTX_free(m);
    size_t n = 0;
    double t0 = now_sec(), t1;
    do {
        for (int i = 0; i < 16; i++, n++) {
            EVP_MD_CTX *v = EVP_MD_CTX_new();
            if (EVP_DigestVerifyInit(v, NULL, md, NULL, k) != 1 ||
                EVP_DigestVerify(v, sig, sl, (const unsigned char *)tok, si) != 1) {
                fprintf(stderr, "bench_auth: EVP verify failed\n");
                exit(1);
            }
            EVP_MD_CTX_free(v);
        }
        t1 = now_sec();
    } while (t1 - t0 < secs);
    return (double)n / (t1 - t0);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    char *rsa_pub = pem_of(rsa, 0), *rsa_priv = pem_of(rsa, 1);
    char *ec_pub = pem_of(ec, 0), *ec_priv = pem_of(ec, 1), *ed_pub = pem_of(ed, 0);
    auth_key_spec_t keys[] = {
        {.kid = "hs", .alg = "HS256", .secret = SECRET},
        {.kid = "rs", .alg = "RS256", .pem = rsa_pub},
        {.kid = "es", .alg = "ES256", .pem = ec_pub},
        {.kid = "ed", .alg = "EdDSA", .pem = ed_pub},
    };
    static const char *aud[] = {"ferry"};
    auth_opts_t o = {0};
    o.audience = aud;
    o.n_audience = 1;
    o.leeway = -1;
    o.min_kid_refresh_gap = -1;
    auth_ctx_t *nocache, *cache;
    auth_err_t err;
    if (auth_ctx_create(keys, 4, &o, &nocache, &err) != 0) {
        fprintf(stderr, "bench_auth: %s\n", err.message);
        return 1;
    }
    o.cache_entries = 10000;
    if (auth_ctx_create(keys, 4, &o, &cache, &err) != 0) return 1;

    char *hs =
        sign_libjwt(JWT_ALG_HS256, "hs", (const unsigned char *)SECRET, strlen(SECRET), NULL);
    char *rs = sign_libjwt(JWT_ALG_RS256, "rs", (unsigned char *)rsa_priv, strlen(rsa_priv), NULL);
    char *es = sign_libjwt(JWT_ALG_ES256, "es", (unsigned char *)ec_priv, strlen(ec_priv), NULL);
    char *eds = sign_eddsa(ed);

    double v_rs = run_verify(nocache, &rs, 1, secs);
    double l_rs = run_evp(rsa, EVP_sha256(), rs, 0, secs);
    double v_es = run_verify(nocache, &es, 1, secs);
    double l_es = run_evp(ec, EVP_sha256(), es, 1, secs);
    double v_ed = run_verify(nocache, &eds, 1, secs);
    double l_ed = run_evp(ed, NULL, eds, 0, secs);
    double v_hs = run_verify(nocache, &hs, 1, secs);
    double c_one = run_verify(cache, &rs, 1, secs);
    char *many[1000];
    for (int i = 0; i < 1000; i++) {
        char n[16];
        snprintf(n, sizeof(n), "%d", i);
        many[i] =
            sign_libjwt(JWT_ALG_HS256, "hs", (const unsigned char *)SECRET, strlen(SECRET), n);
    }
    run_verify(cache, many, 1000, 0.05); /* fill */
    double c_many = run_verify(cache, many, 1000, secs);
    unsigned long long hits, misses;
    auth_cache_stats(cache, &hits, &misses, NULL);

    printf("BENCH auth_verify_rs256 %.0f verifies/s (1 core, cache off; %.2f of OpenSSL EVP alone, "
           "%.0f/s) limit=openssl_evp:%.0f\n",
           v_rs, v_rs / l_rs, l_rs, l_rs);
    printf("BENCH auth_verify_es256 %.0f verifies/s (1 core, cache off; %.2f of OpenSSL EVP alone, "
           "%.0f/s) limit=openssl_evp:%.0f\n",
           v_es, v_es / l_es, l_es, l_es);
    printf("BENCH auth_verify_eddsa %.0f verifies/s (1 core, cache off; %.2f of OpenSSL EVP alone, "
           "%.0f/s) limit=openssl_evp:%.0f\n",
           v_ed, v_ed / l_ed, l_ed, l_ed);
    printf("BENCH auth_verify_hs256 %.0f verifies/s (1 core, cache off)\n", v_hs);
    printf("BENCH auth_cache_hit_one %.0f hits/s (1 core, the same RS256 token)\n", c_one);
    printf("BENCH auth_cache_hit_1000 %.0f hits/s (1 core, 1000 distinct tokens; %llu hits %llu "
           "misses)\n",
           c_many, hits, misses);

    for (int i = 0; i < 1000; i++)
        free(many[i]);
    free(hs);
    free(rs);
    free(es);
    free(eds);
    auth_ctx_destroy(nocache);
    auth_ctx_destroy(cache);
    free(rsa_pub);
    free(rsa_priv);
    free(ec_pub);
    free(ec_priv);
    free(ed_pub);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ed);
    return 0;
}
