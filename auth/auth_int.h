/* auth_int.h -- internals shared by the files of the auth library
 *
 * Keys: an auth_key_t is one usable key (an HMAC secret or a public key) with the set of JWS
 * algorithms it admits. Keys are grouped in an immutable, reference-counted auth_keyset_t; the
 * context holds the current set and replaces it as a whole when a JWKS source changes, so a
 * verification in flight keeps the set it started with. Static keys (secrets, PEM) are parsed
 * once at create; each JWKS source keeps its latest good key list, and the current set is the
 * static keys followed by every source's list.
 *
 * Invariant: an HMAC algorithm bit is only ever set on a key of kind AUTH_KTY_OCT, and public-key
 * bits only on keys whose EVP_PKEY has the matching type (and curve), so "never verify an HMAC
 * with public-key material" holds by construction.
 */
#ifndef AUTH_INT_H
#define AUTH_INT_H

#include "auth.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>

/* JWS algorithms, one bit each in auth_key_t.algs. */
enum auth_alg {
    AUTH_ALG_HS256,
    AUTH_ALG_HS384,
    AUTH_ALG_HS512,
    AUTH_ALG_RS256,
    AUTH_ALG_RS384,
    AUTH_ALG_RS512,
    AUTH_ALG_ES256,
    AUTH_ALG_ES384,
    AUTH_ALG_ES512,
    AUTH_ALG_EDDSA,
    AUTH_ALG_COUNT
};
#define AUTH_ALG_BIT(a) (1u << (a))
#define AUTH_ALGS_HMAC                                                                             \
    (AUTH_ALG_BIT(AUTH_ALG_HS256) | AUTH_ALG_BIT(AUTH_ALG_HS384) | AUTH_ALG_BIT(AUTH_ALG_HS512))

typedef enum auth_kty { AUTH_KTY_OCT, AUTH_KTY_RSA, AUTH_KTY_EC, AUTH_KTY_OKP } auth_kty_t;

typedef struct auth_key {
    char *kid;     /* NULL when the key has no id */
    unsigned algs; /* AUTH_ALG_BIT set of admitted algorithms */
    auth_kty_t kty;
    unsigned char *secret; /* AUTH_KTY_OCT: the HMAC secret */
    size_t secret_len;
    EVP_PKEY *pkey; /* public keys: parsed once, verified with EVP (auth_sig.c) */
} auth_key_t;

typedef struct auth_keyset {
    int refs; /* atomic */
    auth_key_t *keys;
    size_t n;
} auth_keyset_t;

/* A JWKS source: a file or a URL, with its latest good keys. */
typedef struct auth_source {
    char *path; /* file path, or NULL */
    char *uri;  /* URL, or NULL */
    char *where;
    unsigned restrict_algs; /* 0, or the algorithms named by the config entry's alg */
    auth_key_t *keys;       /* latest good keys (owned) */
    size_t n;
    unsigned char digest[32]; /* SHA-256 of the last document, to detect changes */
    int loaded;
} auth_source_t;

typedef struct auth_cache auth_cache_t;

struct auth_ctx {
    /* options, fixed after create */
    char **audience;
    size_t n_audience;
    char *issuer;
    long max_lifetime, leeway, refresh_interval, min_kid_gap, max_token_bytes;
    long long (*now)(void);
    auth_refresh_cb on_refresh;
    void *on_refresh_arg;

    auth_key_t *static_keys; /* owned; copied (by reference) into every keyset */
    size_t n_static;

    pthread_mutex_t lock; /* guards current, sources, next_refresh, last_kid_refresh, kicked */
    auth_keyset_t *current;
    unsigned long long generation; /* bumped when the key set changes (atomic reads) */
    auth_source_t *sources;
    size_t n_sources;
    long long next_refresh;       /* when the periodic refresh is due */
    long long last_kid_refresh;   /* when an unknown kid last caused a refresh */
    pthread_mutex_t refresh_lock; /* one refresh at a time */

    int bg; /* background thread running */
    int stopping;
    int kicked;
    pthread_t thread;
    pthread_cond_t cond;

    auth_cache_t *cache;
};

/* auth_err.c */
int auth__fail(auth_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void auth__detail(auth_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* auth_b64.c: base64url without padding; returns decoded length or -1 on bad input.
 * out must hold at least auth__b64url_declen(len) bytes. */
size_t auth__b64url_declen(size_t len);
long auth__b64url_decode(const char *in, size_t len, unsigned char *out);
/* Encode len bytes; out must hold 4*ceil(len/3)+1 bytes; returns the string length. */
size_t auth__b64url_encode(const unsigned char *in, size_t len, char *out);

/* auth_keys.c */
int auth__alg_from_name(const char *name, size_t len); /* exact case; -1 when unknown */
const char *auth__alg_name(int alg);
int auth__key_from_spec(const auth_key_spec_t *spec, auth_key_t *out, auth_err_t *err);
int auth__key_from_pkey(EVP_PKEY *pkey, const char *kid, unsigned algs, auth_key_t *out,
                        auth_err_t *err); /* takes ownership of pkey, also on failure */
void auth__key_clear(auth_key_t *k);
int auth__key_copy(const auth_key_t *src, auth_key_t *dst);
unsigned auth__algs_for_pkey(EVP_PKEY *pkey); /* algorithms a public key's type admits */

/* auth_jwks.c: parse a JWKS document into keys (restricted to algs when nonzero). */
int auth__jwks_parse(const char *text, size_t len, unsigned restrict_algs, auth_key_t **keys,
                     size_t *n, auth_err_t *err);
int auth__jwks_fetch(const char *uri, char **body, size_t *len, auth_err_t *err);
int auth__read_file(const char *path, char **body, size_t *len, size_t max, auth_err_t *err);

/* auth_ctx.c */
auth_keyset_t *auth__keyset_get(auth_ctx_t *ctx); /* a reference; release with _put */
void auth__keyset_put(auth_keyset_t *ks);
/* Called by verify on an unknown kid: refreshes (inline or via the thread) when the rate limit
 * allows; returns 1 when a refresh happened and the lookup may be retried. */
int auth__kid_miss(auth_ctx_t *ctx);
/* Inline periodic refresh when due and no background thread runs. */
void auth__maybe_refresh(auth_ctx_t *ctx);
long long auth__now(const auth_ctx_t *ctx);

/* auth_cache.c */
auth_cache_t *auth__cache_new(size_t entries);
void auth__cache_free(auth_cache_t *c);
void auth__hash_token(const char *token, size_t len, unsigned char out[32]);
/* A referenced token when present, of this generation and unexpired at now (+ leeway). */
auth_token_t *auth__cache_get(auth_cache_t *c, const unsigned char h[32], unsigned long long gen,
                              long long now, long leeway);
void auth__cache_put(auth_cache_t *c, const unsigned char h[32], unsigned long long gen,
                     auth_token_t *tok);
void auth__cache_stats(auth_cache_t *c, unsigned long long *hits, unsigned long long *misses,
                       size_t *entries);

/* auth_verify.c */
auth_token_t *auth__token_new(json_t *claims, const char *kid, const char *alg);

/* auth_sig.c: check the signature over signing_input with key for alg; 0 or AUTH_EBADSIG. */
int auth__verify_sig(const auth_key_t *key, int alg, const char *token, size_t len,
                     const char *signing_input, size_t si_len, const unsigned char *sig,
                     size_t sig_len, auth_err_t *err);

#endif
