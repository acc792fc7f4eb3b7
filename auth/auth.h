/* auth.h -- verify client JWTs against configured keys and JWKS; Ferry's auth library
 *
 * The gateway builds one auth_ctx_t at start from its configuration (HMAC secrets, public keys
 * in PEM, JWKS files and JWKS URLs) and calls auth_verify() for every request that carries a
 * token. A token is accepted only when its header names an algorithm that the chosen key was
 * configured for (never "none", never an HMAC with public-key material), its signature verifies,
 * and its claims pass: "sub" (string), "exp" and "iat" present, "nbf" honoured, all with a
 * leeway; "exp - iat" within the maximum lifetime; "aud" intersecting the configured audiences;
 * "iss" equal to the configured issuer when one is set; "parameters" an object when present.
 *
 * This is a leaf library: it never logs and never aborts. Functions return 0 or a negative
 * AUTH_E* code, and fill an optional auth_err_t with a stable code string ("expired",
 * "bad_signature", ...) and a message that never repeats the token.
 *
 * Thread safety: after auth_ctx_create(), auth_verify() and auth_refresh() may be called from
 * any number of threads at once. Keys from JWKS sources are swapped atomically on refresh.
 */
#ifndef AUTH_H
#define AUTH_H

#include <jansson.h>
#include <stddef.h>

/* X(name, value, stable code string); values and strings are stable, never reuse one. */
#define AUTH_ERROR_TABLE(X)                                                                        \
    X(AUTH_OK, 0, "ok")                                                                            \
    X(AUTH_ENOMEM, -1, "out_of_memory")                                                            \
    X(AUTH_EINVAL, -2, "invalid_config")                                                           \
    X(AUTH_EIO, -3, "io_error")                                                                    \
    X(AUTH_EEXPIRED, -10, "expired")                                                               \
    X(AUTH_ENOTYET, -11, "not_yet_valid")                                                          \
    X(AUTH_EBADSIG, -12, "bad_signature")                                                          \
    X(AUTH_EUNKNOWNKID, -13, "unknown_kid")                                                        \
    X(AUTH_EALG, -14, "alg_mismatch")                                                              \
    X(AUTH_EAUDIENCE, -15, "bad_audience")                                                         \
    X(AUTH_EISSUER, -16, "bad_issuer")                                                             \
    X(AUTH_ELIFETIME, -17, "lifetime_too_long")                                                    \
    X(AUTH_EMALFORMED, -18, "malformed")                                                           \
    X(AUTH_EMISSING, -19, "missing_claim")

enum auth_errcode {
#define AUTH_ERR_ENUM(name, value, str) name = value,
    AUTH_ERROR_TABLE(AUTH_ERR_ENUM)
#undef AUTH_ERR_ENUM
};

/** Error detail filled by failing calls; every string is NUL-terminated, "" when unused. */
typedef struct auth_err {
    int code;          /* one of enum auth_errcode */
    char message[256]; /* primary message, lowercase, no final period; never contains a token */
    char detail[512];  /* optional full sentence, e.g. the key ids we know for unknown_kid */
} auth_err_t;

/** Static stable code string of an error code ("expired", ...); "unknown_error" for others. */
const char *auth_err_code_str(int code);

/** One configured key; exactly one of secret, secret_base64url, pem, pem_file, jwks_file,
 *  jwks_uri is set. Strings are borrowed for the duration of auth_ctx_create() only. */
typedef struct auth_key_spec {
    const char *kid;              /* optional key id, matched against the token's "kid" */
    const char *alg;              /* HS256..HS512, RS256..RS512, ES256..ES512, EdDSA; for JWKS
                                     sources optional (restricts every key of the source) */
    const char *secret;           /* HMAC secret as text */
    const char *secret_base64url; /* HMAC secret as base64url */
    const char *pem;              /* public key, PEM text */
    const char *pem_file;         /* public key, PEM file */
    const char *jwks_file;        /* a JWKS document on disk */
    const char *jwks_uri;         /* a JWKS document over http(s), fetched with libcurl */
    const char *where;            /* optional, prefixed to messages ("ferry.yaml:12:5") */
} auth_key_spec_t;

/** Called (from the refreshing thread) after every JWKS refresh attempt; err is NULL on success.
 *  source is the file path or URL. Keep it short: it runs with no lock held but delays the next
 *  refresh. */
typedef void (*auth_refresh_cb)(void *arg, const char *source, int rc, const auth_err_t *err,
                                size_t n_keys);

typedef struct auth_opts {
    const char *const *audience; /* accepted audiences; a token's "aud" must name one */
    size_t n_audience;           /* 0: "aud" is not checked */
    const char *issuer;          /* NULL: "iss" is not checked */
    long max_lifetime;           /* max exp - iat in seconds; 0 means 86400 */
    long leeway;                 /* clock skew allowed in seconds; negative means 60 */
    long jwks_refresh_interval;  /* seconds between JWKS refreshes; 0 means 300 */
    long min_kid_refresh_gap;    /* min seconds between refreshes caused by unknown kids;
                                    negative means 10, 0 disables the limit (tests) */
    long max_token_bytes;        /* 0 means 16384 */
    long cache_entries;          /* verified-token cache size; 0 disables the cache */
    int background_refresh;      /* nonzero: a thread refreshes JWKS sources; otherwise they are
                                    refreshed inline by auth_verify() when due */
    auth_refresh_cb on_refresh;  /* optional */
    void *on_refresh_arg;
    long long (*now)(void); /* optional clock (Unix seconds) for tests; NULL: time() */
} auth_opts_t;

typedef struct auth_ctx auth_ctx_t;

/** A verified token: immutable, reference-counted, shareable between threads. */
typedef struct auth_token {
    json_t *claims;     /* the whole payload object; read-only (it may be shared) */
    const char *sub;    /* the "sub" claim, owned by claims */
    json_t *parameters; /* the "parameters" claim (an object) or NULL; owned by claims */
    long long exp;      /* expiry, Unix seconds */
    long long iat;      /* issued at, Unix seconds */
    const char *kid;    /* id of the key that verified it; "" when the key has none */
    const char *alg;    /* the algorithm, e.g. "RS256" */
} auth_token_t;

/**
 * Build a context from keys and options: parses every secret and PEM, loads JWKS files and
 * fetches JWKS URLs once. A JWKS URL that cannot be fetched at start is not fatal (it is retried
 * on refresh; on_refresh reports it); a bad key definition is. Returns 0 and *out, which the
 * caller owns and releases with auth_ctx_destroy(), or a negative code with err filled.
 */
int auth_ctx_create(const auth_key_spec_t *keys, size_t n_keys, const auth_opts_t *opts,
                    auth_ctx_t **out, auth_err_t *err);

/** Stop the refresh thread and free ctx and its keys (NULL is fine). Tokens already returned
 *  stay valid until released. */
void auth_ctx_destroy(auth_ctx_t *ctx);

/**
 * Verify a compact JWS token of len bytes. Returns 0 and *out (a reference the caller releases
 * with auth_token_release()), or a negative AUTH_E* code with err filled and *out NULL.
 * A cached verification is returned without checking the signature again; exp is rechecked.
 */
int auth_verify(auth_ctx_t *ctx, const char *token, size_t len, auth_token_t **out,
                auth_err_t *err);

/**
 * Take the token out of an Authorization header value: "Token <jwt>" or "Bearer <jwt>"
 * (scheme case-insensitive). Returns 0 with *tok and *tok_len pointing into value (not copied),
 * or AUTH_EMALFORMED with err filled.
 */
int auth_header_token(const char *value, size_t len, const char **tok, size_t *tok_len,
                      auth_err_t *err);

/** Add a reference to tok (NULL is fine); returns tok. */
auth_token_t *auth_token_ref(auth_token_t *tok);

/** Release one reference to tok (NULL is fine); the last release frees it. */
void auth_token_release(auth_token_t *tok);

/**
 * Refresh every JWKS source now (synchronously, in the calling thread). A source that fails
 * keeps its previous keys. Returns 0 when every source refreshed, else the first failure's code
 * with err filled.
 */
int auth_refresh(auth_ctx_t *ctx, auth_err_t *err);

/** Number of keys currently usable (static keys plus the current JWKS keys). */
size_t auth_key_count(auth_ctx_t *ctx);

/** Write the known key ids, comma-separated, into buf (size len, always terminated); returns buf.
 *  Keys without an id appear as "(no kid)". */
const char *auth_known_kids(auth_ctx_t *ctx, char *buf, size_t len);

/** Cache counters since creation: hits, misses and current entries (any may be NULL). */
void auth_cache_stats(auth_ctx_t *ctx, unsigned long long *hits, unsigned long long *misses,
                      size_t *entries);

/**
 * Sign a development token with the HMAC key whose kid is kid (or the first HMAC key when kid
 * is NULL): header {"alg","typ":"JWT","kid"}, payload claims (not modified; the caller sets
 * sub, iat, exp, aud). Returns 0 with *out a malloc'd string the caller frees, or AUTH_EINVAL
 * when there is no such HMAC key.
 */
int auth_sign_hmac(auth_ctx_t *ctx, const char *kid, const json_t *claims, char **out,
                   auth_err_t *err);

#endif
