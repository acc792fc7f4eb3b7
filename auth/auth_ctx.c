/* auth_ctx.c -- the auth context: options, key sets, JWKS refresh
 *
 * auth_ctx_create() parses the static keys (secrets, PEM) once and loads every JWKS source. The
 * current key set (auth_keyset_t, see auth_int.h) is swapped as a whole under ctx->lock; readers
 * take a reference and use it without the lock. A refresh (auth_refresh) reloads every source
 * outside ctx->lock, one refresh at a time (refresh_lock); a source whose document did not
 * change (same SHA-256) or could not be loaded keeps its keys. When a source's keys change, the
 * new set is published and ctx->generation is bumped, which invalidates the token cache.
 *
 * Refreshes happen: periodically (every jwks_refresh_interval, every 10 s while a source has
 * never loaded), either in a background thread
 * (opts.background_refresh) or inline in auth_verify() when due; and when a token names an
 * unknown kid, at most once per min_kid_refresh_gap seconds (auth__kid_miss): inline without a
 * thread, else by waking the thread (that token fails with unknown_kid; a retry succeeds).
 */
#include "auth_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail_where(auth_err_t *err, const char *where, int rc);

long long auth__now(const auth_ctx_t *ctx)
{
    return ctx->now ? ctx->now() : (long long)time(NULL);
}

static void keyset_free(auth_keyset_t *ks)
{
    if (ks == NULL) return;
    for (size_t i = 0; i < ks->n; i++)
        auth__key_clear(&ks->keys[i]);
    free(ks->keys);
    free(ks);
}

auth_keyset_t *auth__keyset_get(auth_ctx_t *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    auth_keyset_t *ks = ctx->current;
    __atomic_add_fetch(&ks->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->lock);
    return ks;
}

void auth__keyset_put(auth_keyset_t *ks)
{
    if (ks != NULL && __atomic_sub_fetch(&ks->refs, 1, __ATOMIC_ACQ_REL) == 0) keyset_free(ks);
}

/* Build a set from the static keys and every source's keys; caller holds refresh_lock. */
static auth_keyset_t *keyset_build(auth_ctx_t *ctx)
{
    size_t n = ctx->n_static;
    for (size_t i = 0; i < ctx->n_sources; i++)
        n += ctx->sources[i].n;
    auth_keyset_t *ks = calloc(1, sizeof(*ks));
    if (ks == NULL || (ks->keys = calloc(n ? n : 1, sizeof(auth_key_t))) == NULL) {
        free(ks);
        return NULL;
    }
    ks->refs = 1;
    for (size_t i = 0; i < ctx->n_static; i++)
        if (auth__key_copy(&ctx->static_keys[i], &ks->keys[ks->n++]) != 0) goto oom;
    for (size_t s = 0; s < ctx->n_sources; s++)
        for (size_t i = 0; i < ctx->sources[s].n; i++)
            if (auth__key_copy(&ctx->sources[s].keys[i], &ks->keys[ks->n++]) != 0) goto oom;
    return ks;
oom:
    keyset_free(ks);
    return NULL;
}

static void keys_free(auth_key_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        auth__key_clear(&keys[i]);
    free(keys);
}

/* Reload one source; *changed is set when its keys were replaced. Caller holds refresh_lock. */
static int source_refresh(auth_source_t *src, int *changed, size_t *nkeys, auth_err_t *err)
{
    char *body = NULL;
    size_t len = 0;
    int rc = src->uri ? auth__jwks_fetch(src->uri, &body, &len, err)
                      : auth__read_file(src->path, &body, &len, 1 << 20, err);
    *nkeys = src->n;
    if (rc != 0) return rc;
    unsigned char digest[32];
    auth__hash_token(body, len, digest);
    if (src->loaded && memcmp(digest, src->digest, 32) == 0) {
        free(body);
        return 0;
    }
    auth_key_t *keys;
    size_t n;
    rc = auth__jwks_parse(body, len, src->restrict_algs, &keys, &n, err);
    free(body);
    if (rc != 0) return rc;
    keys_free(src->keys, src->n);
    src->keys = keys;
    src->n = n;
    memcpy(src->digest, digest, 32);
    src->loaded = 1;
    *changed = 1;
    *nkeys = n;
    return 0;
}

/* Seconds until the next periodic refresh: the interval, or at most NOT_LOADED_RETRY while a
 * source has never loaded (a JWKS URL that was down at start is retried soon). */
#define NOT_LOADED_RETRY 10
static long next_gap(const auth_ctx_t *ctx)
{
    for (size_t i = 0; i < ctx->n_sources; i++)
        if (!ctx->sources[i].loaded && ctx->refresh_interval > NOT_LOADED_RETRY)
            return NOT_LOADED_RETRY;
    return ctx->refresh_interval;
}

int auth_refresh(auth_ctx_t *ctx, auth_err_t *err)
{
    int first_rc = 0, changed = 0;
    pthread_mutex_lock(&ctx->refresh_lock);
    for (size_t i = 0; i < ctx->n_sources; i++) {
        auth_source_t *src = &ctx->sources[i];
        auth_err_t e = {0};
        size_t nkeys = 0;
        int rc = source_refresh(src, &changed, &nkeys, &e);
        if (rc != 0) fail_where(&e, src->where, rc);
        if (rc != 0 && first_rc == 0) {
            first_rc = rc;
            if (err != NULL) *err = e;
        }
        if (ctx->on_refresh != NULL)
            ctx->on_refresh(ctx->on_refresh_arg, src->uri ? src->uri : src->path, rc,
                            rc ? &e : NULL, nkeys);
    }
    if (changed) {
        auth_keyset_t *ks = keyset_build(ctx);
        if (ks == NULL) {
            if (first_rc == 0) first_rc = auth__fail(err, AUTH_ENOMEM, "out of memory");
        } else {
            pthread_mutex_lock(&ctx->lock);
            auth_keyset_t *old = ctx->current;
            ctx->current = ks;
            __atomic_add_fetch(&ctx->generation, 1, __ATOMIC_RELEASE);
            pthread_mutex_unlock(&ctx->lock);
            auth__keyset_put(old);
        }
    }
    pthread_mutex_lock(&ctx->lock);
    ctx->next_refresh = auth__now(ctx) + next_gap(ctx);
    pthread_mutex_unlock(&ctx->lock);
    pthread_mutex_unlock(&ctx->refresh_lock);
    return first_rc;
}

void auth__maybe_refresh(auth_ctx_t *ctx)
{
    if (ctx->bg || ctx->n_sources == 0) return;
    long long now = auth__now(ctx);
    pthread_mutex_lock(&ctx->lock);
    int due = now >= ctx->next_refresh;
    if (due) ctx->next_refresh = now + ctx->refresh_interval; /* claim it: one thread refreshes */
    pthread_mutex_unlock(&ctx->lock);
    if (due) auth_refresh(ctx, NULL);
}

int auth__kid_miss(auth_ctx_t *ctx)
{
    if (ctx->n_sources == 0) return 0;
    long long now = auth__now(ctx);
    pthread_mutex_lock(&ctx->lock);
    if (ctx->min_kid_gap > 0 && ctx->last_kid_refresh != 0 &&
        now - ctx->last_kid_refresh < ctx->min_kid_gap) {
        pthread_mutex_unlock(&ctx->lock);
        return 0;
    }
    ctx->last_kid_refresh = now;
    if (ctx->bg) {
        ctx->kicked = 1;
        pthread_cond_signal(&ctx->cond);
        pthread_mutex_unlock(&ctx->lock);
        return 0;
    }
    pthread_mutex_unlock(&ctx->lock);
    auth_refresh(ctx, NULL);
    return 1;
}

static void *refresh_thread(void *arg)
{
    auth_ctx_t *ctx = arg;
    pthread_mutex_lock(&ctx->lock);
    while (!ctx->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long wait = ctx->next_refresh - auth__now(ctx);
        ts.tv_sec += wait < 1 ? 1 : wait > ctx->refresh_interval ? ctx->refresh_interval : wait;
        int rc = 0;
        while (!ctx->stopping && !ctx->kicked && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&ctx->cond, &ctx->lock, &ts);
        if (ctx->stopping) break;
        ctx->kicked = 0;
        pthread_mutex_unlock(&ctx->lock);
        auth_refresh(ctx, NULL);
        pthread_mutex_lock(&ctx->lock);
    }
    pthread_mutex_unlock(&ctx->lock);
    return NULL;
}

static char *prefixed(const char *where, const char *msg)
{
    size_t n = (where ? strlen(where) + 2 : 0) + strlen(msg) + 1;
    char *s = malloc(n);
    if (s != NULL) snprintf(s, n, "%s%s%s", where ? where : "", where ? ": " : "", msg);
    return s;
}

/* Prefix err->message with where ("ferry.yaml:12:5: ..."). */
static int fail_where(auth_err_t *err, const char *where, int rc)
{
    if (err != NULL && where != NULL) {
        char *s = prefixed(where, err->message);
        if (s != NULL) {
            snprintf(err->message, sizeof(err->message), "%s", s);
            free(s);
        }
    }
    return rc;
}

static int add_spec(auth_ctx_t *ctx, const auth_key_spec_t *spec, auth_err_t *err)
{
    int n_material = (spec->secret != NULL) + (spec->secret_base64url != NULL) +
                     (spec->pem != NULL) + (spec->pem_file != NULL) + (spec->jwks_file != NULL) +
                     (spec->jwks_uri != NULL);
    if (n_material != 1) {
        auth__fail(err, AUTH_EINVAL,
                   n_material == 0 ? "key has no key material"
                                   : "key has more than one kind of key material");
        auth__detail(err, "Set exactly one of secret, secret_base64url, pem, pem_file, "
                          "jwks_file, jwks_uri.");
        return fail_where(err, spec->where, AUTH_EINVAL);
    }
    if (spec->jwks_file == NULL && spec->jwks_uri == NULL) {
        auth_key_t k;
        int rc = auth__key_from_spec(spec, &k, err);
        if (rc != 0) return fail_where(err, spec->where, rc);
        for (size_t i = 0; i < ctx->n_static; i++) {
            if (k.kid != NULL && ctx->static_keys[i].kid != NULL &&
                strcmp(k.kid, ctx->static_keys[i].kid) == 0) {
                auth__fail(err, AUTH_EINVAL, "duplicate kid \"%s\"", k.kid);
                auth__key_clear(&k);
                return fail_where(err, spec->where, AUTH_EINVAL);
            }
        }
        ctx->static_keys[ctx->n_static++] = k;
        return 0;
    }
    if (spec->kid != NULL) {
        auth__fail(err, AUTH_EINVAL, "\"kid\" cannot be set on a JWKS source");
        auth__detail(err, "Key ids come from the JWKS document.");
        return fail_where(err, spec->where, AUTH_EINVAL);
    }
    auth_source_t *src = &ctx->sources[ctx->n_sources];
    memset(src, 0, sizeof(*src));
    if (spec->alg != NULL) {
        int a = auth__alg_from_name(spec->alg, strlen(spec->alg));
        if (a < 0 || (AUTH_ALG_BIT(a) & AUTH_ALGS_HMAC)) {
            auth__fail(err, AUTH_EINVAL, "alg \"%s\" cannot be used with a JWKS", spec->alg);
            auth__detail(err, "A JWKS admits RS*, ES* and EdDSA keys only.");
            return fail_where(err, spec->where, AUTH_EINVAL);
        }
        src->restrict_algs = AUTH_ALG_BIT(a);
    }
    if (spec->jwks_uri != NULL && strncmp(spec->jwks_uri, "http://", 7) != 0 &&
        strncmp(spec->jwks_uri, "https://", 8) != 0) {
        auth__fail(err, AUTH_EINVAL, "\"jwks_uri\" must be an http:// or https:// URL");
        return fail_where(err, spec->where, AUTH_EINVAL);
    }
    src->path = spec->jwks_file ? strdup(spec->jwks_file) : NULL;
    src->uri = spec->jwks_uri ? strdup(spec->jwks_uri) : NULL;
    src->where = spec->where ? strdup(spec->where) : NULL;
    ctx->n_sources++;
    if ((src->path == NULL && src->uri == NULL) || (spec->where && src->where == NULL))
        return auth__fail(err, AUTH_ENOMEM, "out of memory");
    return 0;
}

int auth_ctx_create(const auth_key_spec_t *keys, size_t n_keys, const auth_opts_t *opts,
                    auth_ctx_t **out, auth_err_t *err)
{
    *out = NULL;
    static const auth_opts_t defaults = {.leeway = -1, .min_kid_refresh_gap = -1};
    if (opts == NULL) opts = &defaults;
    if (n_keys == 0) {
        auth__fail(err, AUTH_EINVAL, "no keys configured");
        auth__detail(err, "Add at least one entry to auth.keys.");
        return AUTH_EINVAL;
    }
    auth_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) return auth__fail(err, AUTH_ENOMEM, "out of memory");
    pthread_mutex_init(&ctx->lock, NULL);
    pthread_mutex_init(&ctx->refresh_lock, NULL);
    pthread_cond_init(&ctx->cond, NULL);
    ctx->max_lifetime = opts->max_lifetime > 0 ? opts->max_lifetime : 86400;
    ctx->leeway = opts->leeway >= 0 ? opts->leeway : 60;
    ctx->refresh_interval = opts->jwks_refresh_interval > 0 ? opts->jwks_refresh_interval : 300;
    ctx->min_kid_gap = opts->min_kid_refresh_gap >= 0 ? opts->min_kid_refresh_gap : 10;
    ctx->max_token_bytes = opts->max_token_bytes > 0 ? opts->max_token_bytes : 16384;
    ctx->now = opts->now;
    ctx->on_refresh = opts->on_refresh;
    ctx->on_refresh_arg = opts->on_refresh_arg;
    int rc = AUTH_ENOMEM;
    if (opts->n_audience > 0) {
        ctx->audience = calloc(opts->n_audience, sizeof(char *));
        if (ctx->audience == NULL) goto fail_oom;
        for (; ctx->n_audience < opts->n_audience; ctx->n_audience++)
            if ((ctx->audience[ctx->n_audience] = strdup(opts->audience[ctx->n_audience])) == NULL)
                goto fail_oom;
    }
    if (opts->issuer != NULL && (ctx->issuer = strdup(opts->issuer)) == NULL) goto fail_oom;
    ctx->static_keys = calloc(n_keys, sizeof(auth_key_t));
    ctx->sources = calloc(n_keys, sizeof(auth_source_t));
    if (ctx->static_keys == NULL || ctx->sources == NULL) goto fail_oom;
    for (size_t i = 0; i < n_keys; i++)
        if ((rc = add_spec(ctx, &keys[i], err)) != 0) goto fail;
    /* Initial load: a JWKS file must load; a URL may be down now and come back later. */
    for (size_t i = 0; i < ctx->n_sources; i++) {
        auth_source_t *src = &ctx->sources[i];
        auth_err_t e = {0};
        int changed = 0;
        size_t nkeys = 0;
        rc = source_refresh(src, &changed, &nkeys, &e);
        if (rc != 0 && src->uri == NULL) {
            if (err != NULL) *err = e;
            rc = fail_where(err, src->where, rc);
            goto fail;
        }
        if (ctx->on_refresh != NULL)
            ctx->on_refresh(ctx->on_refresh_arg, src->uri ? src->uri : src->path, rc,
                            rc ? &e : NULL, nkeys);
    }
    rc = AUTH_ENOMEM;
    if ((ctx->current = keyset_build(ctx)) == NULL) goto fail_oom;
    ctx->next_refresh = auth__now(ctx) + next_gap(ctx);
    if (opts->cache_entries > 0 &&
        (ctx->cache = auth__cache_new((size_t)opts->cache_entries)) == NULL)
        goto fail_oom;
    if (opts->background_refresh && ctx->n_sources > 0) {
        if (pthread_create(&ctx->thread, NULL, refresh_thread, ctx) != 0) {
            rc = auth__fail(err, AUTH_EIO, "could not start the JWKS refresh thread");
            goto fail;
        }
        ctx->bg = 1;
    }
    *out = ctx;
    return 0;
fail_oom:
    rc = auth__fail(err, AUTH_ENOMEM, "out of memory");
fail:
    auth_ctx_destroy(ctx);
    return rc;
}

void auth_ctx_destroy(auth_ctx_t *ctx)
{
    if (ctx == NULL) return;
    if (ctx->bg) {
        pthread_mutex_lock(&ctx->lock);
        ctx->stopping = 1;
        pthread_cond_signal(&ctx->cond);
        pthread_mutex_unlock(&ctx->lock);
        pthread_join(ctx->thread, NULL);
    }
    auth__cache_free(ctx->cache);
    auth__keyset_put(ctx->current);
    keys_free(ctx->static_keys, ctx->n_static);
    for (size_t i = 0; i < ctx->n_sources; i++) {
        keys_free(ctx->sources[i].keys, ctx->sources[i].n);
        free(ctx->sources[i].path);
        free(ctx->sources[i].uri);
        free(ctx->sources[i].where);
    }
    free(ctx->sources);
    for (size_t i = 0; i < ctx->n_audience; i++)
        free(ctx->audience[i]);
    free(ctx->audience);
    free(ctx->issuer);
    pthread_mutex_destroy(&ctx->lock);
    pthread_mutex_destroy(&ctx->refresh_lock);
    pthread_cond_destroy(&ctx->cond);
    free(ctx);
}

size_t auth_key_count(auth_ctx_t *ctx)
{
    auth_keyset_t *ks = auth__keyset_get(ctx);
    size_t n = ks->n;
    auth__keyset_put(ks);
    return n;
}

const char *auth_known_kids(auth_ctx_t *ctx, char *buf, size_t len)
{
    auth_keyset_t *ks = auth__keyset_get(ctx);
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ks->n && o < len; i++) {
        int w = snprintf(buf + o, len - o, "%s%s", i ? ", " : "",
                         ks->keys[i].kid ? ks->keys[i].kid : "(no kid)");
        if (w < 0) break;
        o += (size_t)w;
    }
    if (ks->n == 0) snprintf(buf, len, "(none)");
    auth__keyset_put(ks);
    return buf;
}

void auth_cache_stats(auth_ctx_t *ctx, unsigned long long *hits, unsigned long long *misses,
                      size_t *entries)
{
    auth__cache_stats(ctx->cache, hits, misses, entries);
}
