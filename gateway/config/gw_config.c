/* gw_config.c -- load and validate ferry.yaml (see gw_config.h)
 *
 * The accepted keys form a tree of static field tables (cfg_field_t). Loading walks the libyaml
 * document against that tree: a mapping key must name a field of its table, a scalar is
 * converted by the field's type and stored at the field's offset. The same tables drive
 * gw_config_free() (every string field is owned by the config) and gw_config_print_keys().
 * Positions come from libyaml marks, which are 0-based; messages print them 1-based.
 */
#include "config/gw_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef enum cfg_type {
    CT_MAP,     /* nested mapping: children */
    CT_STR,     /* char * */
    CT_PATH,    /* char *, resolved against the config folder */
    CT_INT,     /* long, within [min, max] */
    CT_LEVEL,   /* gw_log_level_t */
    CT_BOOL,    /* int: true/false (also yes/no, on/off) */
    CT_STRLIST, /* char ** at offset, size_t count at offset2; a string or a list of strings */
    CT_KEYLIST, /* gw_auth_key_cfg_t * at offset, size_t count at offset2 */
} cfg_type_t;

typedef struct cfg_field cfg_field_t;
struct cfg_field {
    const char *name;
    cfg_type_t type;
    size_t offset;
    size_t offset2;
    const cfg_field_t *children; /* CT_MAP, CT_KEYLIST: the item's fields; NULL-name ended */
    int required;
    long min, max;
    const char *(*check)(const char *value); /* optional: NULL when fine, else what is wrong */
};

static const char *check_listen(const char *v)
{
    char host[256];
    int port;
    return gw_config_parse_listen(v, host, sizeof(host), &port) == 0 ? NULL : "\"host:port\"";
}

#define F_STR(n, m)                                                                                \
    {                                                                                              \
        .name = n, .type = CT_STR, .offset = offsetof(gw_config_t, m)                              \
    }
#define F_STR_REQ(n, m)                                                                            \
    {                                                                                              \
        .name = n, .type = CT_STR, .offset = offsetof(gw_config_t, m), .required = 1               \
    }
#define F_PATH(n, m)                                                                               \
    {                                                                                              \
        .name = n, .type = CT_PATH, .offset = offsetof(gw_config_t, m)                             \
    }
#define F_INT(n, m, lo, hi)                                                                        \
    {                                                                                              \
        .name = n, .type = CT_INT, .offset = offsetof(gw_config_t, m), .min = lo, .max = hi        \
    }
#define F_MAP(n, kids)                                                                             \
    {                                                                                              \
        .name = n, .type = CT_MAP, .children = kids                                                \
    }
#define F_END                                                                                      \
    {                                                                                              \
        .name = NULL                                                                               \
    }
#define K_STR(n, m)                                                                                \
    {                                                                                              \
        .name = n, .type = CT_STR, .offset = offsetof(gw_auth_key_cfg_t, m)                        \
    }
#define K_PATH(n, m)                                                                               \
    {                                                                                              \
        .name = n, .type = CT_PATH, .offset = offsetof(gw_auth_key_cfg_t, m)                       \
    }

static const char *check_admin_listen(const char *v)
{
    return strcmp(v, "off") == 0 ? NULL : check_listen(v) ? "\"host:port\" or \"off\"" : NULL;
}

/* One entry of http.cors.allowed_origins: "*", or an origin as a browser sends it in Origin:
 * scheme://host[:port], with no path, no trailing "/", no wildcard inside. */
static const char *check_origin(const char *v)
{
    static const char *what = "\"*\" or an origin \"scheme://host[:port]\" (no path)";
    if (strcmp(v, "*") == 0) return NULL;
    const char *sep = strstr(v, "://");
    if (sep == NULL || sep == v) return what;
    for (const char *p = v; p < sep; p++)
        if (!isalpha((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.') return what;
    const char *host = sep + 3;
    if (host[0] == '\0') return what;
    for (const char *p = host; *p != '\0'; p++)
        if (*p == '/' || *p == '*' || *p == '?' || *p == '#' || *p == ' ' || *p == ',' ||
            (unsigned char)*p < 0x21)
            return what;
    return NULL;
}

/* One entry of http.cors.allowed_headers: an HTTP header name (a token). */
static const char *check_header_name(const char *v)
{
    if (v[0] == '\0') return "a header name";
    for (const char *p = v; *p != '\0'; p++)
        if (!isalnum((unsigned char)*p) && strchr("!#$%&'*+-.^_`|~", *p) == NULL)
            return "a header name (letters, digits and -)";
    return NULL;
}

static const cfg_field_t cors_fields[] = {
    {.name = "allowed_origins",
     .type = CT_STRLIST,
     .offset = offsetof(gw_config_t, http.cors.allowed_origins),
     .offset2 = offsetof(gw_config_t, http.cors.n_allowed_origins),
     .check = check_origin},
    {.name = "allowed_headers",
     .type = CT_STRLIST,
     .offset = offsetof(gw_config_t, http.cors.allowed_headers),
     .offset2 = offsetof(gw_config_t, http.cors.n_allowed_headers),
     .check = check_header_name},
    F_END,
};
static const cfg_field_t compression_fields[] = {
    {.name = "enabled", .type = CT_BOOL, .offset = offsetof(gw_config_t, http.compression.enabled)},
    F_INT("zstd_level", http.compression.zstd_level, 1, 19),
    F_INT("gzip_level", http.compression.gzip_level, 1, 9),
    F_END,
};

static const cfg_field_t http_fields[] = {
    {.name = "listen",
     .type = CT_STR,
     .offset = offsetof(gw_config_t, http.listen),
     .check = check_listen},
    {.name = "admin_listen",
     .type = CT_STR,
     .offset = offsetof(gw_config_t, http.admin_listen),
     .check = check_admin_listen},
    F_INT("threads", http.threads, 0, 256),
    F_INT("max_request_body", http.max_request_body, 1024, 1L << 30),
    F_MAP("cors", cors_fields),
    F_MAP("compression", compression_fields),
    F_END,
};
static const cfg_field_t postgres_fields[] = {
    F_STR_REQ("uri", postgres.uri),
    F_INT("pool_size", postgres.pool_size, 1, 64),
    F_INT("timeout", postgres.timeout, 1, 3600),
    F_END,
};
static const cfg_field_t replication_fields[] = {
    F_STR("publication", replication.publication),
    F_STR("slot_prefix", replication.slot_prefix),
    F_INT("snapshot_chunk_rows", replication.snapshot_chunk_rows, 1, 10000000),
    F_INT("lag_warn_seconds", replication.lag_warn_seconds, 1, 30L * 86400),
    F_INT("wal_warn_bytes", replication.wal_warn_bytes, 1048576, 1L << 50),
    F_INT("compact_interval", replication.compact_interval, 0, 30L * 86400),
    F_INT("timeout", replication.timeout, 3, 3600),
    F_END,
};
/* The storage backends this build has (storage/gw_storage.c registers the same ones; config/
 * sits below storage/ and cannot ask it). */
static const char *check_storage_kind(const char *v)
{
    return strcmp(v, "sqlite") == 0 || strcmp(v, "postgres") == 0 ? NULL
                                                                  : "one of: sqlite, postgres";
}

/* A schema name Ferry creates: lowercase, so it needs no quoting anywhere. */
static const char *check_schema(const char *v)
{
    size_t n = strlen(v);
    int ok = n > 0 && n <= 63 && !(v[0] >= '0' && v[0] <= '9');
    for (const char *p = v; ok && *p; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
    return ok ? NULL : "a lowercase name of letters, digits and _ (at most 63)";
}

static const cfg_field_t storage_fields[] = {
    {.name = "kind",
     .type = CT_STR,
     .offset = offsetof(gw_config_t, storage.kind),
     .check = check_storage_kind},
    F_PATH("path", storage.path),
    F_STR("uri", storage.uri),
    {.name = "schema",
     .type = CT_STR,
     .offset = offsetof(gw_config_t, storage.schema),
     .check = check_schema},
    F_STR("read_uri", storage.read_uri),
    F_INT("lock_timeout", storage.lock_timeout, 2, 600),
    F_END,
};
static const cfg_field_t key_fields[] = {
    K_STR("kid", kid),
    K_STR("alg", alg),
    K_STR("secret", secret),
    K_STR("secret_base64url", secret_base64url),
    K_STR("pem", pem),
    K_PATH("pem_file", pem_file),
    K_PATH("jwks_file", jwks_file),
    K_STR("jwks_uri", jwks_uri),
    F_END,
};
static const cfg_field_t auth_fields[] = {
    {.name = "audience",
     .type = CT_STRLIST,
     .offset = offsetof(gw_config_t, auth.audience),
     .offset2 = offsetof(gw_config_t, auth.n_audience)},
    F_STR("issuer", auth.issuer),
    F_INT("max_lifetime", auth.max_lifetime, 1, 366L * 86400),
    F_INT("leeway", auth.leeway, 0, 3600),
    F_INT("jwks_refresh_interval", auth.jwks_refresh_interval, 1, 86400),
    F_INT("max_token_bytes", auth.max_token_bytes, 256, 1L << 20),
    F_INT("cache_entries", auth.cache_entries, 0, 10000000),
    {.name = "keys",
     .type = CT_KEYLIST,
     .offset = offsetof(gw_config_t, auth.keys),
     .offset2 = offsetof(gw_config_t, auth.n_keys),
     .children = key_fields},
    F_END,
};
static const cfg_field_t sync_rules_fields[] = {
    F_PATH("path", sync_rules.path),
    F_END,
};
static const cfg_field_t limits_fields[] = {
    F_INT("max_connections", limits.max_connections, 1, 10000000),
    F_INT("max_buckets_per_connection", limits.max_buckets_per_connection, 1, 1000000),
    F_INT("max_streams_per_user", limits.max_streams_per_user, 1, 1000000),
    F_INT("max_subscriptions_per_connection", limits.max_subscriptions_per_connection, 0, 100000),
    F_INT("max_subscription_parameter_bytes", limits.max_subscription_parameter_bytes, 2, 1L << 20),
    F_END,
};
static const cfg_field_t history_fields[] = {
    F_INT("keep", write_back.history.keep, 0, 10L * 366 * 86400),
    F_END,
};
static const cfg_field_t write_back_fields[] = {
    F_INT("max_ops_per_batch", write_back.max_ops_per_batch, 1, 1000000),
    F_INT("max_batches_per_user", write_back.max_batches_per_user, 1, 10000),
    F_INT("statement_timeout", write_back.statement_timeout, 0, 86400),
    F_INT("batch_timeout", write_back.batch_timeout, 0, 86400),
    F_INT("checkpoint_retention", write_back.checkpoint_retention, 60, 10L * 366 * 86400),
    F_INT("recheck_interval", write_back.recheck_interval, 1, 86400),
    F_MAP("history", history_fields),
    F_END,
};
static const cfg_field_t admin_fields[] = {
    F_STR("token", admin.token),
    F_END,
};
static const cfg_field_t root_fields[] = {
    {.name = "log_level", .type = CT_LEVEL, .offset = offsetof(gw_config_t, log_level)},
    F_MAP("http", http_fields),
    {.name = "postgres", .type = CT_MAP, .children = postgres_fields, .required = 1},
    F_MAP("replication", replication_fields),
    F_MAP("storage", storage_fields),
    F_MAP("auth", auth_fields),
    F_MAP("sync_rules", sync_rules_fields),
    F_MAP("limits", limits_fields),
    F_MAP("write_back", write_back_fields),
    F_MAP("admin", admin_fields),
    F_END,
};

/* ---- parse context ---- */

typedef struct ctx {
    yaml_document_t *doc;
    const char *name; /* file name for messages */
    const char *dir;  /* folder for relative paths */
    gw_err_t *err;
} ctx_t;

static int fail_at(ctx_t *c, yaml_mark_t mark, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(ctx_t *c, yaml_mark_t mark, const char *fmt, ...)
{
    if (c->err == NULL) return GW_ECONFIG;
    char where[256];
    snprintf(where, sizeof(where), "%s:%zu:%zu", c->name, mark.line + 1, mark.column + 1);
    c->err->code = GW_ECONFIG;
    c->err->detail[0] = '\0';
    snprintf(c->err->where, sizeof(c->err->where), "%s", where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err->message, sizeof(c->err->message), fmt, ap);
    va_end(ap);
    return GW_ECONFIG;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The closest field name to key among fields, or NULL when nothing is close. */
static const char *suggest(const cfg_field_t *fields, const char *key)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (const cfg_field_t *f = fields; f->name != NULL; f++) {
        size_t d = edit_distance(key, f->name);
        if (d < best_d) {
            best_d = d;
            best = f->name;
        }
    }
    size_t limit = strlen(key) / 3 + 1;
    if (limit < 2) limit = 2;
    return best_d <= limit ? best : NULL;
}

/* Expand ${VAR} and ${VAR:-default}; "$${" is a literal "${". Returns a malloc'd string or NULL
 * with *bad set to the (static-buffered) variable name that is unset or malformed. */
static char *substitute(const char *in, char *bad, size_t badlen, int *malformed)
{
    size_t cap = strlen(in) + 64, len = 0;
    char *out = gw_xmalloc(cap);
    *malformed = 0;
    for (const char *p = in; *p != '\0';) {
        const char *piece = p;
        size_t plen = 1;
        if (p[0] == '$' && p[1] == '$' && p[2] == '{') {
            piece = "${";
            plen = 2;
            p += 3;
        } else if (p[0] == '$' && p[1] == '{') {
            const char *close = strchr(p + 2, '}');
            if (close == NULL) {
                snprintf(bad, badlen, "%s", p);
                *malformed = 1;
                free(out);
                return NULL;
            }
            const char *name = p + 2;
            const char *dflt = strstr(name, ":-");
            size_t nlen =
                (dflt != NULL && dflt < close) ? (size_t)(dflt - name) : (size_t)(close - name);
            char var[256];
            snprintf(var, sizeof(var), "%.*s", (int)(nlen < 255 ? nlen : 255), name);
            int valid = nlen > 0 && nlen < 255 && !isdigit((unsigned char)var[0]);
            for (size_t i = 0; valid && i < nlen; i++)
                valid = isalnum((unsigned char)var[i]) || var[i] == '_';
            if (!valid) {
                snprintf(bad, badlen, "%.*s", (int)(close - p + 1), p);
                *malformed = 1;
                free(out);
                return NULL;
            }
            const char *env = getenv(var);
            if (env != NULL && env[0] != '\0') {
                piece = env;
                plen = strlen(env);
            } else if (dflt != NULL && dflt < close) {
                piece = dflt + 2;
                plen = (size_t)(close - piece);
            } else if (env != NULL) {
                piece = "";
                plen = 0;
            } else {
                snprintf(bad, badlen, "%s", var);
                free(out);
                return NULL;
            }
            p = close + 1;
        } else {
            p++;
        }
        if (len + plen + 1 > cap) {
            cap = (len + plen + 1) * 2;
            out = gw_xrealloc(out, cap);
        }
        memcpy(out + len, piece, plen);
        len += plen;
    }
    out[len] = '\0';
    return out;
}

static int is_null_scalar(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *v = (const char *)n->data.scalar.value;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

/* The scalar text of n after ${} substitution (malloc'd, caller frees), or NULL on error. */
static char *scalar_text(ctx_t *c, const yaml_node_t *n, const char *dotted, const char *what)
{
    if (n->type != YAML_SCALAR_NODE) {
        fail_at(c, n->start_mark, "\"%s\" must be %s", dotted, what);
        return NULL;
    }
    char bad[256];
    int malformed;
    char *s = substitute((const char *)n->data.scalar.value, bad, sizeof(bad), &malformed);
    if (s == NULL) {
        if (malformed)
            fail_at(c, n->start_mark, "malformed variable reference \"%s\" in \"%s\"", bad, dotted);
        else
            fail_at(c, n->start_mark,
                    "environment variable \"%s\" is not set (write ${%s:-default} to give a "
                    "default)",
                    bad, bad);
    }
    return s;
}

static char *resolve_path(const char *dir, const char *p)
{
    if (p[0] == '/' || dir == NULL || dir[0] == '\0' || p[0] == '\0') return gw_xstrdup(p);
    size_t n = strlen(dir) + strlen(p) + 2;
    char *out = gw_xmalloc(n);
    snprintf(out, n, "%s/%s", dir, p);
    return out;
}

static int parse_fields(ctx_t *c, const yaml_node_t *map, const cfg_field_t *fields, void *base,
                        const char *prefix);

static int set_field(ctx_t *c, const cfg_field_t *f, const yaml_node_t *v, void *base,
                     const char *dotted)
{
    char *dst = (char *)base + f->offset;
    switch (f->type) {
    case CT_MAP:
        if (v->type != YAML_MAPPING_NODE)
            return fail_at(c, v->start_mark, "\"%s\" must be a mapping", dotted);
        return parse_fields(c, v, f->children, base, dotted);
    case CT_STR:
    case CT_PATH: {
        if (v->type != YAML_SCALAR_NODE)
            return fail_at(c, v->start_mark, "\"%s\" must be a string", dotted);
        char *s = scalar_text(c, v, dotted, "a string");
        if (s == NULL) return GW_ECONFIG;
        const char *bad = f->check != NULL ? f->check(s) : NULL;
        if (bad != NULL) {
            fail_at(c, v->start_mark, "\"%s\" must be %s (got \"%s\")", dotted, bad, s);
            free(s);
            return GW_ECONFIG;
        }
        char **slot = (char **)dst;
        free(*slot);
        if (f->type == CT_PATH) {
            *slot = resolve_path(c->dir, s);
            free(s);
        } else {
            *slot = s;
        }
        return 0;
    }
    case CT_INT: {
        char *s = scalar_text(c, v, dotted, "an integer");
        if (s == NULL) return GW_ECONFIG;
        char *end;
        errno = 0;
        long val = strtol(s, &end, 10);
        int ok = s[0] != '\0' && *end == '\0' && errno == 0;
        if (!ok) {
            fail_at(c, v->start_mark, "\"%s\" must be an integer (got \"%s\")", dotted, s);
            free(s);
            return GW_ECONFIG;
        }
        free(s);
        if (val < f->min || val > f->max)
            return fail_at(c, v->start_mark, "\"%s\" must be between %ld and %ld (got %ld)", dotted,
                           f->min, f->max, val);
        *(long *)dst = val;
        return 0;
    }
    case CT_LEVEL: {
        char *s = scalar_text(c, v, dotted, "one of debug, info, warn, error");
        if (s == NULL) return GW_ECONFIG;
        gw_log_level_t lvl;
        if (gw_log_parse_level(s, &lvl) != 0) {
            fail_at(c, v->start_mark, "\"%s\" must be one of debug, info, warn, error (got \"%s\")",
                    dotted, s);
            free(s);
            return GW_ECONFIG;
        }
        free(s);
        *(gw_log_level_t *)dst = lvl;
        return 0;
    }
    case CT_BOOL: {
        char *s = scalar_text(c, v, dotted, "true or false");
        if (s == NULL) return GW_ECONFIG;
        static const char *yes[] = {"true", "True", "TRUE", "yes", "Yes", "on", "On"};
        static const char *no[] = {"false", "False", "FALSE", "no", "No", "off", "Off"};
        int val = -1;
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
            if (strcmp(s, yes[i]) == 0) val = 1;
            if (strcmp(s, no[i]) == 0) val = 0;
        }
        if (val < 0) {
            fail_at(c, v->start_mark, "\"%s\" must be true or false (got \"%s\")", dotted, s);
            free(s);
            return GW_ECONFIG;
        }
        free(s);
        *(int *)dst = val;
        return 0;
    }
    case CT_STRLIST: {
        char ***list = (char ***)dst;
        size_t *count = (size_t *)((char *)base + f->offset2);
        for (size_t i = 0; i < *count; i++)
            free((*list)[i]);
        free(*list);
        *list = NULL;
        *count = 0;
        if (v->type == YAML_SCALAR_NODE) {
            char *s = scalar_text(c, v, dotted, "a string or a list of strings");
            if (s == NULL) return GW_ECONFIG;
            const char *bad = f->check != NULL ? f->check(s) : NULL;
            if (bad != NULL) {
                fail_at(c, v->start_mark, "\"%s\" must be %s (got \"%s\")", dotted, bad, s);
                free(s);
                return GW_ECONFIG;
            }
            *list = gw_xcalloc(1, sizeof(char *));
            (*list)[0] = s;
            *count = 1;
            return 0;
        }
        if (v->type != YAML_SEQUENCE_NODE)
            return fail_at(c, v->start_mark, "\"%s\" must be a string or a list of strings",
                           dotted);
        size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        *list = gw_xcalloc(n, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
            char *s = scalar_text(c, item, dotted, "a list of strings");
            if (s == NULL) return GW_ECONFIG;
            const char *bad = f->check != NULL ? f->check(s) : NULL;
            if (bad != NULL) {
                fail_at(c, item->start_mark, "\"%s\" entries must be %s (got \"%s\")", dotted, bad,
                        s);
                free(s);
                return GW_ECONFIG;
            }
            (*list)[(*count)++] = s;
        }
        return 0;
    }
    case CT_KEYLIST: {
        gw_auth_key_cfg_t **list = (gw_auth_key_cfg_t **)dst;
        size_t *count = (size_t *)((char *)base + f->offset2);
        if (*count != 0) return fail_at(c, v->start_mark, "duplicate key \"%s\"", dotted);
        if (v->type != YAML_SEQUENCE_NODE)
            return fail_at(c, v->start_mark, "\"%s\" must be a list", dotted);
        size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        *list = gw_xcalloc(n, sizeof(gw_auth_key_cfg_t));
        char item_name[300];
        snprintf(item_name, sizeof(item_name), "%s[]", dotted);
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
            gw_auth_key_cfg_t *k = &(*list)[i];
            *count = i + 1;
            k->line = (int)item->start_mark.line + 1;
            k->col = (int)item->start_mark.column + 1;
            if (item->type != YAML_MAPPING_NODE)
                return fail_at(c, item->start_mark, "each entry of \"%s\" must be a mapping",
                               dotted);
            int rc = parse_fields(c, item, f->children, k, item_name);
            if (rc != 0) return rc;
        }
        return 0;
    }
    }
    return GW_EINVAL;
}

static int parse_fields(ctx_t *c, const yaml_node_t *map, const cfg_field_t *fields, void *base,
                        const char *prefix)
{
    const cfg_field_t *seen[64] = {0};
    size_t nseen = 0;
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(c->doc, pair->value);
        if (k->type != YAML_SCALAR_NODE)
            return fail_at(c, k->start_mark, "keys must be plain names");
        const char *key = (const char *)k->data.scalar.value;
        const cfg_field_t *f = NULL;
        for (const cfg_field_t *x = fields; x->name != NULL; x++)
            if (strcmp(x->name, key) == 0) f = x;
        if (f == NULL) {
            const char *hint = suggest(fields, key);
            if (hint != NULL)
                return fail_at(c, k->start_mark, "unknown key \"%s\" (did you mean \"%s\"?)", key,
                               hint);
            return fail_at(c, k->start_mark, "unknown key \"%s\"", key);
        }
        for (size_t i = 0; i < nseen; i++)
            if (seen[i] == f) return fail_at(c, k->start_mark, "duplicate key \"%s\"", key);
        if (nseen < 64) seen[nseen++] = f;
        char dotted[256];
        if (prefix[0] != '\0')
            snprintf(dotted, sizeof(dotted), "%s.%s", prefix, key);
        else
            snprintf(dotted, sizeof(dotted), "%s", key);
        if (is_null_scalar(v) && f->type != CT_MAP) {
            if (f->required) return fail_at(c, v->start_mark, "\"%s\" must not be empty", dotted);
            continue;
        }
        if (is_null_scalar(v) && f->type == CT_MAP) {
            /* "http:" with nothing under it: keep defaults, but still check required keys */
            for (const cfg_field_t *x = f->children; x->name != NULL; x++)
                if (x->required)
                    return fail_at(c, k->start_mark, "missing required key \"%s.%s\"", dotted,
                                   x->name);
            continue;
        }
        int rc = set_field(c, f, v, base, dotted);
        if (rc != 0) return rc;
    }
    /* required keys of this level and of required sub-mappings that are absent */
    for (const cfg_field_t *x = fields; x->name != NULL; x++) {
        int present = 0;
        for (size_t i = 0; i < nseen; i++)
            present |= seen[i] == x;
        if (present || !x->required) continue;
        char dotted[256];
        snprintf(dotted, sizeof(dotted), "%s%s%s", prefix, prefix[0] ? "." : "", x->name);
        if (x->type == CT_MAP) {
            for (const cfg_field_t *y = x->children; y->name != NULL; y++)
                if (y->required)
                    return fail_at(c, map->start_mark, "missing required key \"%s.%s\"", dotted,
                                   y->name);
        }
        return fail_at(c, map->start_mark, "missing required key \"%s\"", dotted);
    }
    return 0;
}

void gw_config_defaults(gw_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_level = GW_LOG_INFO;
    cfg->http.listen = gw_xstrdup("127.0.0.1:8080");
    cfg->http.threads = 0;
    cfg->http.max_request_body = 1048576;
    cfg->http.cors.allowed_origins = gw_xcalloc(1, sizeof(char *));
    cfg->http.cors.allowed_origins[0] = gw_xstrdup("*");
    cfg->http.cors.n_allowed_origins = 1;
    cfg->http.compression.enabled = 1;
    cfg->http.compression.zstd_level = 1;
    cfg->http.compression.gzip_level = 1;
    cfg->postgres.pool_size = 4;
    cfg->postgres.timeout = 10;
    cfg->replication.publication = gw_xstrdup("ferry");
    cfg->replication.slot_prefix = gw_xstrdup("ferry");
    cfg->replication.snapshot_chunk_rows = 10000;
    cfg->replication.lag_warn_seconds = 300;
    cfg->replication.wal_warn_bytes = 1L << 30;
    cfg->replication.compact_interval = 3600;
    cfg->replication.timeout = 30;
    cfg->storage.kind = gw_xstrdup("sqlite");
    cfg->storage.path = gw_xstrdup("ferry-storage.db");
    cfg->storage.schema = gw_xstrdup("ferry");
    cfg->storage.lock_timeout = 5;
    cfg->auth.max_lifetime = 86400;
    cfg->auth.leeway = 60;
    cfg->auth.jwks_refresh_interval = 300;
    cfg->auth.max_token_bytes = 16384;
    cfg->auth.cache_entries = 10000;
    cfg->sync_rules.path = gw_xstrdup("sync-rules.yaml");
    cfg->limits.max_connections = 10000;
    cfg->limits.max_buckets_per_connection = 1000;
    cfg->limits.max_streams_per_user = 10;
    cfg->write_back.max_ops_per_batch = 1000;
    cfg->write_back.max_batches_per_user = 4;
    cfg->write_back.statement_timeout = 30;
    cfg->write_back.checkpoint_retention = 90L * 86400;
    cfg->write_back.recheck_interval = 60;
    cfg->write_back.history.keep = 7L * 86400;
    cfg->limits.max_subscriptions_per_connection = 100;
    cfg->limits.max_subscription_parameter_bytes = 4096;
}

static void free_fields(const cfg_field_t *fields, void *base)
{
    for (const cfg_field_t *f = fields; f->name != NULL; f++) {
        char *dst = (char *)base + f->offset;
        switch (f->type) {
        case CT_MAP:
            free_fields(f->children, base);
            break;
        case CT_STR:
        case CT_PATH:
            free(*(char **)dst);
            *(char **)dst = NULL;
            break;
        case CT_STRLIST: {
            char **list = *(char ***)dst;
            size_t *count = (size_t *)((char *)base + f->offset2);
            for (size_t i = 0; i < *count; i++)
                free(list[i]);
            free(list);
            *(char ***)dst = NULL;
            *count = 0;
            break;
        }
        case CT_KEYLIST: {
            gw_auth_key_cfg_t *list = *(gw_auth_key_cfg_t **)dst;
            size_t *count = (size_t *)((char *)base + f->offset2);
            for (size_t i = 0; i < *count; i++)
                free_fields(f->children, &list[i]);
            free(list);
            *(gw_auth_key_cfg_t **)dst = NULL;
            *count = 0;
            break;
        }
        default:
            break;
        }
    }
}

void gw_config_free(gw_config_t *cfg)
{
    free_fields(root_fields, cfg);
    free(cfg->path);
    free(cfg->dir);
    memset(cfg, 0, sizeof(*cfg));
}

/* The default storage and rules paths are relative to the config folder too. */
static void resolve_default_paths(gw_config_t *cfg, const char *dir)
{
    char **paths[] = {&cfg->storage.path, &cfg->sync_rules.path};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        if (*paths[i] != NULL && (*paths[i])[0] != '/' && dir != NULL && dir[0] != '\0' &&
            strncmp(*paths[i], dir, strlen(dir)) != 0) {
            char *r = resolve_path(dir, *paths[i]);
            free(*paths[i]);
            *paths[i] = r;
        }
    }
}

int gw_config_load_string(gw_config_t *cfg, const char *text, size_t len, const char *name,
                          const char *dir, gw_err_t *err)
{
    gw_config_defaults(cfg);
    yaml_parser_t parser;
    yaml_document_t doc;
    ctx_t c = {.doc = &doc, .name = name, .dir = dir, .err = err};
    int rc = 0;
    if (!yaml_parser_initialize(&parser)) {
        gw_config_free(cfg);
        return gw_err_set(err, GW_ENOMEM, name, "could not initialise the YAML parser");
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_mark_t m = parser.problem_mark;
        rc =
            fail_at(&c, m, "syntax error: %s%s%s", parser.problem ? parser.problem : "invalid YAML",
                    parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        gw_config_free(cfg);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_mark_t start = {0, 0, 0};
    if (root == NULL || is_null_scalar(root)) {
        rc = fail_at(&c, start, "the configuration is empty (see deploy/ferry.example.yaml)");
    } else if (root->type != YAML_MAPPING_NODE) {
        rc = fail_at(&c, root->start_mark, "the configuration must be a mapping of keys");
    } else {
        rc = parse_fields(&c, root, root_fields, cfg, "");
    }
    if (rc == 0 && strcmp(cfg->storage.kind, "postgres") == 0 &&
        (cfg->storage.uri == NULL || cfg->storage.uri[0] == '\0'))
        rc = gw_err_set(err, GW_ECONFIG, name,
                        "storage.uri is required with storage.kind: postgres (a Postgres "
                        "connection URI for Ferry's tables; it may be postgres.uri)");
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc != 0) {
        gw_config_free(cfg);
        return rc;
    }
    resolve_default_paths(cfg, dir);
    cfg->path = gw_xstrdup(name);
    cfg->dir = gw_xstrdup(dir != NULL ? dir : ".");
    return 0;
}

int gw_config_load(gw_config_t *cfg, const char *path, gw_err_t *err)
{
    memset(cfg, 0, sizeof(*cfg));
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return gw_err_set(err, GW_ECONFIG, path, "could not open the configuration file: %s",
                          strerror(errno));
    size_t cap = 8192, len = 0;
    char *buf = gw_xmalloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = gw_xrealloc(buf, cap);
        }
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        return gw_err_set(err, GW_ECONFIG, path, "could not read the configuration file");
    }
    char *dir = gw_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int rc = gw_config_load_string(cfg, buf, len, path, dir, err);
    free(dir);
    free(buf);
    return rc;
}

static void print_keys(FILE *out, const cfg_field_t *fields, const char *prefix)
{
    for (const cfg_field_t *f = fields; f->name != NULL; f++) {
        char dotted[256];
        snprintf(dotted, sizeof(dotted), "%s%s%s", prefix, prefix[0] ? "." : "", f->name);
        if (f->type == CT_MAP) {
            print_keys(out, f->children, dotted);
        } else if (f->type == CT_KEYLIST) {
            fprintf(out, "%s\n", dotted);
            strncat(dotted, "[]", sizeof(dotted) - strlen(dotted) - 1);
            print_keys(out, f->children, dotted);
        } else {
            fprintf(out, "%s\n", dotted);
        }
    }
}

void gw_config_print_keys(FILE *out)
{
    print_keys(out, root_fields, "");
}

int gw_config_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    if (listen == NULL) return GW_EINVAL;
    const char *colon;
    const char *h = listen;
    size_t hl;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (close == NULL || close[1] != ':') return GW_EINVAL;
        h = listen + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL) return GW_EINVAL;
        hl = (size_t)(colon - listen);
        if (memchr(listen, ':', hl) != NULL) return GW_EINVAL;
    }
    if (hl == 0 || hl >= hostlen) return GW_EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 1 || p > 65535) return GW_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}
