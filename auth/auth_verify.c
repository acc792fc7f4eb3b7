/* auth_verify.c -- verify one compact JWS token and its claims
 *
 * The path of a token, each step failing with one stable code:
 *
 *   size (malformed) -> cache lookup (hit: done) -> split in three base64url segments
 *   (malformed) -> header: JSON object, "alg" a string, "kid" a string if present, "typ" absent or
 *   "JWT", no "crit" (malformed) -> alg known and not "none" (alg_mismatch) -> key choice: by kid
 *   (unknown_kid, after at most one rate-limited JWKS refresh; alg_mismatch when that key does
 *   not admit the alg), else every key admitting the alg (alg_mismatch when none) -> signature
 *   (bad_signature) -> payload: JSON object (malformed) -> claims: sub, exp, iat present
 *   (missing_claim), types (malformed), exp (expired), nbf and iat (not_yet_valid), exp - iat
 *   (lifetime_too_long), aud (bad_audience), iss (bad_issuer), parameters an object (malformed)
 *   -> token built, cached, returned.
 *
 * Claims are only looked at after the signature verified, so an unsigned token learns nothing
 * about what else would have been wrong. Messages name claims and our key ids, never token text.
 */
#include "auth_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct token_impl {
    auth_token_t pub;
    int refs; /* atomic */
    char alg[8];
    char kid[]; /* NUL-terminated */
} token_impl_t;

auth_token_t *auth_token_ref(auth_token_t *tok)
{
    if (tok != NULL) __atomic_add_fetch(&((token_impl_t *)tok)->refs, 1, __ATOMIC_RELAXED);
    return tok;
}

void auth_token_release(auth_token_t *tok)
{
    if (tok == NULL) return;
    token_impl_t *t = (token_impl_t *)tok;
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        json_decref(t->pub.claims);
        free(t);
    }
}

auth_token_t *auth__token_new(json_t *claims, const char *kid, const char *alg)
{
    size_t kl = kid ? strlen(kid) : 0;
    token_impl_t *t = calloc(1, sizeof(*t) + kl + 1);
    if (t == NULL) return NULL;
    t->refs = 1;
    if (kid) memcpy(t->kid, kid, kl);
    snprintf(t->alg, sizeof(t->alg), "%s", alg);
    t->pub.claims = claims;
    t->pub.kid = t->kid;
    t->pub.alg = t->alg;
    return &t->pub;
}

int auth_header_token(const char *value, size_t len, const char **tok, size_t *tok_len,
                      auth_err_t *err)
{
    *tok = NULL;
    *tok_len = 0;
    if (value == NULL || len == 0)
        return auth__fail(err, AUTH_EMALFORMED, "missing authorization header");
    size_t skip;
    if (len > 6 && strncasecmp(value, "Token ", 6) == 0)
        skip = 6;
    else if (len > 7 && strncasecmp(value, "Bearer ", 7) == 0)
        skip = 7;
    else
        return auth__fail(err, AUTH_EMALFORMED,
                          "authorization header must be \"Token <jwt>\" or \"Bearer <jwt>\"");
    while (skip < len && value[skip] == ' ')
        skip++;
    size_t end = len;
    while (end > skip && (value[end - 1] == ' ' || value[end - 1] == '\t'))
        end--;
    if (end == skip) return auth__fail(err, AUTH_EMALFORMED, "authorization header has no token");
    *tok = value + skip;
    *tok_len = end - skip;
    return 0;
}

/* Decode one base64url JSON segment into an object; NULL when it is not one. */
static json_t *segment_json(const char *seg, size_t len)
{
    unsigned char stackbuf[2048];
    size_t need = auth__b64url_declen(len);
    unsigned char *buf = need <= sizeof(stackbuf) ? stackbuf : malloc(need);
    if (buf == NULL) return NULL;
    long n = auth__b64url_decode(seg, len, buf);
    json_t *j = NULL;
    if (n > 0) {
        json_error_t jerr;
        j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
        if (j != NULL && !json_is_object(j)) {
            json_decref(j);
            j = NULL;
        }
    }
    if (buf != stackbuf) free(buf);
    return j;
}

#define DATE_MAX 9000000000000000LL /* far beyond any real date, far from overflow */

/* A NumericDate claim: 1 with *out set, 0 when absent, -1 when not a finite number. */
static int numeric_date(json_t *claims, const char *name, long long *out)
{
    json_t *v = json_object_get(claims, name);
    if (v == NULL) return 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i > DATE_MAX || i < -DATE_MAX) /* keeps exp + leeway, exp - iat from overflowing */
            return -1;
        *out = (long long)i;
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d > (double)DATE_MAX || d < -(double)DATE_MAX) return -1;
        *out = (long long)floor(d);
        return 1;
    }
    return -1;
}

static int check_claims(auth_ctx_t *ctx, json_t *claims, long long now, auth_token_t *t,
                        auth_err_t *err)
{
    json_t *sub = json_object_get(claims, "sub");
    if (sub == NULL) return auth__fail(err, AUTH_EMISSING, "token has no \"sub\" claim");
    if (!json_is_string(sub) || json_string_length(sub) == 0)
        return auth__fail(err, AUTH_EMALFORMED, "\"sub\" claim must be a non-empty string");
    long long exp = 0, iat = 0, nbf = 0;
    int r;
    if ((r = numeric_date(claims, "exp", &exp)) == 0)
        return auth__fail(err, AUTH_EMISSING, "token has no \"exp\" claim");
    if (r < 0) return auth__fail(err, AUTH_EMALFORMED, "\"exp\" claim must be a number");
    if ((r = numeric_date(claims, "iat", &iat)) == 0)
        return auth__fail(err, AUTH_EMISSING, "token has no \"iat\" claim");
    if (r < 0) return auth__fail(err, AUTH_EMALFORMED, "\"iat\" claim must be a number");
    int has_nbf = numeric_date(claims, "nbf", &nbf);
    if (has_nbf < 0) return auth__fail(err, AUTH_EMALFORMED, "\"nbf\" claim must be a number");
    if (now > exp + ctx->leeway) {
        auth__fail(err, AUTH_EEXPIRED, "token expired %lld seconds ago", now - exp);
        return AUTH_EEXPIRED;
    }
    if (has_nbf && nbf > now + ctx->leeway)
        return auth__fail(err, AUTH_ENOTYET, "token is not valid for another %lld seconds",
                          nbf - now);
    if (iat > now + ctx->leeway)
        return auth__fail(err, AUTH_ENOTYET, "token is issued %lld seconds in the future",
                          iat - now);
    if (exp < iat) return auth__fail(err, AUTH_EMALFORMED, "\"exp\" claim is before \"iat\"");
    if (exp - iat > ctx->max_lifetime)
        return auth__fail(err, AUTH_ELIFETIME,
                          "token lifetime of %lld seconds exceeds the maximum of %ld", exp - iat,
                          ctx->max_lifetime);
    if (ctx->n_audience > 0) {
        json_t *aud = json_object_get(claims, "aud");
        int match = 0;
        if (aud == NULL) return auth__fail(err, AUTH_EMISSING, "token has no \"aud\" claim");
        if (json_is_string(aud)) {
            for (size_t i = 0; i < ctx->n_audience && !match; i++)
                match = strcmp(json_string_value(aud), ctx->audience[i]) == 0;
        } else if (json_is_array(aud)) {
            size_t k;
            json_t *a;
            json_array_foreach(aud, k, a)
            {
                if (!json_is_string(a))
                    return auth__fail(err, AUTH_EMALFORMED,
                                      "\"aud\" claim must be a string or an array of strings");
                for (size_t i = 0; i < ctx->n_audience && !match; i++)
                    match = strcmp(json_string_value(a), ctx->audience[i]) == 0;
            }
        } else {
            return auth__fail(err, AUTH_EMALFORMED,
                              "\"aud\" claim must be a string or an array of strings");
        }
        if (!match) {
            auth__fail(err, AUTH_EAUDIENCE, "token audience does not match");
            auth__detail(err, "The \"aud\" claim names none of the configured audiences.");
            return AUTH_EAUDIENCE;
        }
    }
    if (ctx->issuer != NULL) {
        json_t *iss = json_object_get(claims, "iss");
        if (iss == NULL) return auth__fail(err, AUTH_EMISSING, "token has no \"iss\" claim");
        if (!json_is_string(iss))
            return auth__fail(err, AUTH_EMALFORMED, "\"iss\" claim must be a string");
        if (strcmp(json_string_value(iss), ctx->issuer) != 0)
            return auth__fail(err, AUTH_EISSUER, "token issuer does not match");
    }
    json_t *params = json_object_get(claims, "parameters");
    if (params != NULL && !json_is_object(params))
        return auth__fail(err, AUTH_EMALFORMED, "\"parameters\" claim must be an object");
    t->sub = json_string_value(sub);
    t->exp = exp;
    t->iat = iat;
    t->parameters = params;
    return 0;
}

static int kid_is(const auth_key_t *k, const char *kid)
{
    return k->kid != NULL && strcmp(k->kid, kid) == 0;
}

/* The steps after the cache: token is NUL-terminated here. */
static int verify_uncached(auth_ctx_t *ctx, const char *token, size_t len, long long now,
                           auth_token_t **out, auth_err_t *err)
{
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        return auth__fail(err, AUTH_EMALFORMED, "token is not three dot-separated parts");
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);
    if (hlen == 0 || plen == 0)
        return auth__fail(err, AUTH_EMALFORMED, "token has an empty header or payload");
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)token[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return auth__fail(err, AUTH_EMALFORMED, "token has characters outside base64url");
    }

    json_t *hdr = segment_json(token, hlen);
    if (hdr == NULL)
        return auth__fail(err, AUTH_EMALFORMED, "token header is not a base64url JSON object");
    json_t *algv = json_object_get(hdr, "alg"), *kidv = json_object_get(hdr, "kid");
    json_t *typv = json_object_get(hdr, "typ");
    int rc;
    if (!json_is_string(algv) || (kidv != NULL && !json_is_string(kidv))) {
        rc = auth__fail(err, AUTH_EMALFORMED, "token header needs a string \"alg\" and \"kid\"");
        goto out_hdr;
    }
    if (typv != NULL &&
        (!json_is_string(typv) || strcasecmp(json_string_value(typv), "JWT") != 0)) {
        rc = auth__fail(err, AUTH_EMALFORMED, "token header \"typ\" must be \"JWT\"");
        goto out_hdr;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        rc = auth__fail(err, AUTH_EMALFORMED, "token header \"crit\" is not supported");
        goto out_hdr;
    }
    const char *algname = json_string_value(algv);
    int alg = auth__alg_from_name(algname, json_string_length(algv));
    if (alg < 0) {
        if (strcasecmp(algname, "none") == 0)
            rc = auth__fail(err, AUTH_EALG, "alg \"none\" is never accepted");
        else
            rc = auth__fail(err, AUTH_EALG, "token alg is not supported");
        goto out_hdr;
    }

    unsigned char sigbuf[1024];
    if (auth__b64url_declen(slen) > sizeof(sigbuf)) {
        rc = auth__fail(err, AUTH_EBADSIG, "signature does not verify");
        goto out_hdr;
    }
    long sig_len = auth__b64url_decode(d2 + 1, slen, sigbuf);
    if (sig_len < 0) {
        rc = auth__fail(err, AUTH_EMALFORMED, "token signature is not base64url");
        goto out_hdr;
    }

    const char *kid = kidv ? json_string_value(kidv) : NULL;
    auth_keyset_t *ks = auth__keyset_get(ctx);
    size_t n_kid = 0, n_cand = 0;
    for (int attempt = 0; kid != NULL && attempt < 2; attempt++) {
        for (size_t i = 0; i < ks->n; i++)
            n_kid += kid_is(&ks->keys[i], kid);
        if (n_kid > 0 || attempt == 1 || !auth__kid_miss(ctx)) break;
        auth__keyset_put(ks); /* a refresh happened: look again in the new set */
        ks = auth__keyset_get(ctx);
    }
    if (kid != NULL && n_kid == 0) {
        char kids[256];
        auth__fail(err, AUTH_EUNKNOWNKID, "token names a key id that is not configured");
        auth__detail(err, "Known key ids: %s.", auth_known_kids(ctx, kids, sizeof(kids)));
        rc = AUTH_EUNKNOWNKID;
        goto out_ks;
    }
    rc = AUTH_EBADSIG;
    const auth_key_t *used = NULL;
    for (size_t i = 0; i < ks->n && used == NULL; i++) {
        const auth_key_t *k = &ks->keys[i];
        if (kid != NULL && !kid_is(k, kid))
            continue; /* without a kid, every key admitting the alg is tried */
        if ((k->algs & AUTH_ALG_BIT(alg)) == 0) continue;
        n_cand++;
        if (auth__verify_sig(k, alg, token, len, token, (size_t)(d2 - token), sigbuf,
                             (size_t)sig_len, err) == 0)
            used = k;
    }
    if (used == NULL) {
        if (n_cand == 0) {
            if (kid != NULL)
                auth__fail(err, AUTH_EALG, "token alg \"%s\" does not match key \"%s\"",
                           auth__alg_name(alg), kid);
            else
                auth__fail(err, AUTH_EALG, "no configured key accepts alg \"%s\"",
                           auth__alg_name(alg));
            rc = AUTH_EALG;
        } else {
            rc = auth__fail(err, AUTH_EBADSIG, "signature does not verify");
        }
        goto out_ks;
    }

    json_t *claims = segment_json(d1 + 1, plen);
    if (claims == NULL) {
        rc = auth__fail(err, AUTH_EMALFORMED, "token payload is not a base64url JSON object");
        goto out_ks;
    }
    auth_token_t *t = auth__token_new(claims, used->kid, auth__alg_name(alg));
    if (t == NULL) {
        json_decref(claims);
        rc = auth__fail(err, AUTH_ENOMEM, "out of memory");
        goto out_ks;
    }
    rc = check_claims(ctx, claims, now, t, err);
    if (rc != 0) {
        auth_token_release(t);
        goto out_ks;
    }
    *out = t;
out_ks:
    auth__keyset_put(ks);
out_hdr:
    json_decref(hdr);
    return rc;
}

int auth_verify(auth_ctx_t *ctx, const char *token, size_t len, auth_token_t **out, auth_err_t *err)
{
    *out = NULL;
    if (err != NULL) {
        err->code = 0;
        err->message[0] = err->detail[0] = '\0';
    }
    if (token == NULL || len == 0) return auth__fail(err, AUTH_EMALFORMED, "token is empty");
    if (len > (size_t)ctx->max_token_bytes)
        return auth__fail(err, AUTH_EMALFORMED, "token is larger than %ld bytes",
                          ctx->max_token_bytes);
    if (memchr(token, '\0', len) != NULL)
        return auth__fail(err, AUTH_EMALFORMED, "token contains a NUL byte");
    long long now = auth__now(ctx);
    unsigned char h[32];
    unsigned long long gen = __atomic_load_n(&ctx->generation, __ATOMIC_ACQUIRE);
    if (ctx->cache != NULL) {
        auth__hash_token(token, len, h);
        auth_token_t *hit = auth__cache_get(ctx->cache, h, gen, now, ctx->leeway);
        if (hit != NULL) {
            *out = hit;
            return 0;
        }
    }
    auth__maybe_refresh(ctx);
    char stackbuf[4096];
    char *copy = len < sizeof(stackbuf) ? stackbuf : malloc(len + 1);
    if (copy == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
    memcpy(copy, token, len);
    copy[len] = '\0';
    int rc = verify_uncached(ctx, copy, len, now, out, err);
    if (copy != stackbuf) free(copy);
    if (rc == 0 && ctx->cache != NULL) {
        /* cache under the generation read before the keys were taken: when a refresh ran in
         * between, the entry is stale at once, never wrongly fresh */
        auth__cache_put(ctx->cache, h, gen, *out);
    }
    return rc;
}
