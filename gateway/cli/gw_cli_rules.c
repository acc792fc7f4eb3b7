/* gw_cli_rules.c -- `ferry rules check FILE` and `ferry rules explain FILE --token JWT ...`
 *
 * check compiles a rules file and prints every diagnostic as "file:line:col: message"
 * (warnings prefixed "warning: "; rules_lint's warnings about writable columns that decide
 * buckets come after the compiler's; with --db, columns the rules name that the tables in
 * Postgres do not have, e.g. after a schema change), then each Sync Stream with its bucket kinds
 * and what they are keyed by, then a one-line summary; exit 1 when there are errors. explain is a
 * development tool: it computes the buckets a token would get, with priority and the definition and
 * parameter query that produced each; with Sync Streams, per default stream and per --subscribe
 * 'STREAM:{"k":"v"}' subscription, its buckets and the bucket kind each comes from (or the
 * subscription's error, as the client would see it). It reads the token's claims without verifying
 * the signature unless --config names a ferry.yaml whose auth keys verify it, and says which it
 * did. Table-lookup parameter queries are answered from Postgres with --db (the lookup tables are
 * read once and evaluated with rules_eval_lookups(), so the answers follow exactly the rules the
 * replicator applies); without --db they are listed as unresolved. Exit codes follow gw_cli.h: 0
 * success, 1 failure, 2 usage.
 */
#include "http/gw_auth.h"
#include "cli/gw_cli.h"
#include "config/gw_config.h"
#include "pg/gw_pg.h"
#include "rules/rules.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: ferry rules check FILE [--db URI]\n"
                    "       ferry rules explain FILE --token JWT [--params JSON] [--db URI]\n"
                    "                                [--subscribe STREAM[:PARAMS_JSON]]... "
                    "[--no-defaults]\n"
                    "                                [--config FILE] [--rule-version V]\n");
    return 2;
}

static void print_diags(const rules_diags_t *d, FILE *out)
{
    char buf[1400];
    for (size_t i = 0; i < d->n; i++)
        fprintf(out, "%s\n", rules_diag_format(d, i, buf, sizeof buf));
}

/* SQL text on one line: whitespace runs squeezed to one space, ends trimmed */
static void print_oneline(FILE *out, const char *sql)
{
    int space = 0, any = 0;
    for (const char *p = sql ? sql : ""; *p; p++) {
        if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
            space = any;
            continue;
        }
        if (space) fputc(' ', out);
        space = 0;
        any = 1;
        fputc(*p, out);
    }
}

/* Every stream: default or on subscription, priority, its bucket kinds and their keys. */
static void print_streams(const rules_set_t *set)
{
    for (size_t i = 0; i < rules_stream_count(set); i++) {
        rules_stream_info_t si;
        rules_stream_at(set, i, &si);
        printf("stream %s (%s, priority %d%s):\n", si.name,
               si.auto_subscribe ? "default" : "on subscription", si.priority,
               si.uses_subscription ? ", reads subscription parameters" : "");
        for (size_t j = 0; j < si.nbuckets; j++) {
            char *d = rules_stream_describe(set, i, j);
            printf("  %s\n", d ? d : "?");
            free(d);
        }
    }
}

/* --db: columns the rules name that Postgres does not have (one warning per table, column and
 * place; the connection's last error is kept to report once). */
typedef struct colcheck {
    PGconn *conn;
    const char *file;
    size_t warnings;
    char seen[64][200];
    size_t nseen;
} colcheck_t;

static void check_column(void *ud, const char *schema, const char *table, const char *column,
                         const char *where)
{
    colcheck_t *cc = ud;
    char key[200];
    snprintf(key, sizeof key, "%s.%s.%s|%s", schema, table, column, where);
    for (size_t i = 0; i < cc->nseen; i++)
        if (strcmp(cc->seen[i], key) == 0) return;
    if (cc->nseen < sizeof cc->seen / sizeof cc->seen[0])
        snprintf(cc->seen[cc->nseen++], sizeof cc->seen[0], "%s", key);
    const char *v[3] = {schema, table, column};
    PGresult *res = gw_pg_query_params(
        cc->conn,
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2), (SELECT count(*) FROM pg_attribute a JOIN "
        "pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
        "n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT "
        "a.attisdropped)",
        3, v, NULL);
    if (res != NULL && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0 &&
        strcmp(PQgetvalue(res, 0, 1), "0") == 0) {
        printf("%s: warning: column \"%s\" of table \"%s.%s\" does not exist in Postgres "
               "(named by %s)\n",
               cc->file, column, schema, table, where);
        cc->warnings++;
    }
    PQclear(res);
}

/* Warn about columns the rules name that Postgres does not have; -1 when it cannot connect. */
static int check_db(const rules_set_t *set, const char *file, const char *uri, size_t *warnings)
{
    gw_err_t err;
    PGconn *conn = gw_pg_connect(uri, 0, "ferry rules check", &err);
    if (!conn) {
        fprintf(stderr, "ferry rules check: could not connect to the database: %s\n", err.message);
        return -1;
    }
    colcheck_t *cc = calloc(1, sizeof(*cc));
    if (cc == NULL) abort();
    cc->conn = conn;
    cc->file = file;
    rules_each_column(set, check_column, cc);
    *warnings = cc->warnings;
    free(cc);
    PQfinish(conn);
    return 0;
}

static int cmd_check(int argc, char **argv)
{
    const char *db = NULL;
    if (argc == 5 && strcmp(argv[3], "--db") == 0)
        db = argv[4];
    else if (argc != 3)
        return usage();
    rules_set_t *set = NULL;
    rules_diags_t d;
    int rc = rules_compile_file(argv[2], &set, &d);
    if (rc == 0) rules_lint(set, &d);
    print_diags(&d, stdout);
    size_t dbwarn = 0;
    if (rc == 0 && db != NULL && check_db(set, argv[2], db, &dbwarn) != 0) {
        rules_diags_free(&d);
        rules_unref(set);
        return 1;
    }
    d.nwarnings += dbwarn;
    if (rc != 0) {
        printf("%s: %zu error%s, %zu warning%s\n", argv[2], d.nerrors, d.nerrors == 1 ? "" : "s",
               d.nwarnings, d.nwarnings == 1 ? "" : "s");
        rules_diags_free(&d);
        return 1;
    }
    print_streams(set);
    size_t nstreams = rules_stream_count(set), ndefs = rules_definition_count(set) - nstreams;
    char streams[64] = "";
    if (nstreams > 0)
        snprintf(streams, sizeof streams, ", %zu stream%s", nstreams, nstreams == 1 ? "" : "s");
    printf("%s: ok (edition %d, %zu bucket definition%s%s, %zu table%s, %zu write rule%s, "
           "%zu constraint%s, %zu warning%s)\n",
           argv[2], rules_edition(set), ndefs, ndefs == 1 ? "" : "s", streams,
           rules_table_count(set), rules_table_count(set) == 1 ? "" : "s", rules_write_count(set),
           rules_write_count(set) == 1 ? "" : "s", rules_constraint_count(set),
           rules_constraint_count(set) == 1 ? "" : "s", d.nwarnings, d.nwarnings == 1 ? "" : "s");
    rules_diags_free(&d);
    rules_unref(set);
    return 0;
}

/* ---- explain -------------------------------------------------------------------------- */

static int b64url_val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-' || c == '+') return 62;
    if (c == '_' || c == '/') return 63;
    return -1;
}

/* The payload of a JWT as JSON text (malloc'd), without checking the signature. */
static char *jwt_payload_unverified(const char *token)
{
    const char *a = strchr(token, '.');
    const char *b = a ? strchr(a + 1, '.') : NULL;
    if (!a || !b) return NULL;
    size_t n = (size_t)(b - a - 1);
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (const char *p = a + 1; p < b; p++) {
        if (*p == '=') break;
        int v = b64url_val((unsigned char)*p);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)(acc >> bits & 0xff);
        }
    }
    out[o] = 0;
    return out;
}

/* lookup entries read from Postgres, answered by key */
typedef struct store {
    char **keys, **params;
    size_t n, cap;
} store_t;

static int store_answer(void *arg, const char *key, rules_answer_t *ans)
{
    store_t *s = arg;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->keys[i], key) == 0 && rules_answer_add(ans, s->params[i]) != 0) return -1;
    return 0;
}

static void store_free(store_t *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->keys[i]);
        free(s->params[i]);
    }
    free(s->keys);
    free(s->params);
}

/* Read every table that table-lookup queries use and evaluate its rows into s. */
static int load_lookups(rules_set_t *set, const char *uri, store_t *s)
{
    gw_err_t err;
    PGconn *conn = gw_pg_connect(uri, 0, "ferry rules explain", &err);
    if (!conn) {
        fprintf(stderr, "ferry rules explain: could not connect to the database: %s\n",
                err.message);
        return -1;
    }
    int rc = 0;
    for (size_t t = 0; t < rules_table_count(set) && rc == 0; t++) {
        const rules_table_t *tb = rules_table_at(set, t);
        if (!(tb->uses & RULES_USE_LOOKUP)) continue;
        char *si = gw_pg_ident(conn, tb->schema), *ti = gw_pg_ident(conn, tb->name);
        char sql[1024];
        snprintf(sql, sizeof sql, "SELECT * FROM %s.%s", si ? si : "", ti ? ti : "");
        free(si);
        free(ti);
        PGresult *res = PQexec(conn, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            fprintf(stderr, "ferry rules explain: could not read table \"%s.%s\": %s", tb->schema,
                    tb->name, PQerrorMessage(conn));
            PQclear(res);
            rc = -1;
            break;
        }
        int ncols = PQnfields(res);
        const char **names = calloc((size_t)ncols + 1, sizeof(char *));
        uint32_t *types = calloc((size_t)ncols + 1, sizeof(uint32_t));
        const char **vals = calloc((size_t)ncols + 1, sizeof(char *));
        size_t *lens = calloc((size_t)ncols + 1, sizeof(size_t));
        if (!names || !types || !vals || !lens) abort();
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = (uint32_t)PQftype(res, c);
        }
        for (int r = 0; r < PQntuples(res); r++) {
            for (int c = 0; c < ncols; c++) {
                vals[c] = PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
                lens[c] = (size_t)PQgetlength(res, r, c);
            }
            rules_row_t row = {tb->schema, tb->name, (size_t)ncols, names, types, vals, lens};
            rules_lookups_t lk = {0};
            rules_error_t rerr;
            if (rules_eval_lookups(set, &row, &lk, &rerr) != 0)
                fprintf(stderr, "ferry rules explain: table \"%s\" row %d: %s\n", tb->name, r,
                        rerr.message);
            for (size_t i = 0; i < lk.n; i++) {
                if (s->n == s->cap) {
                    s->cap = s->cap ? s->cap * 2 : 64;
                    s->keys = realloc(s->keys, sizeof(char *) * s->cap);
                    s->params = realloc(s->params, sizeof(char *) * s->cap);
                    if (!s->keys || !s->params) abort();
                }
                s->keys[s->n] = strdup(lk.items[i].key);
                s->params[s->n++] = strdup(lk.items[i].params);
            }
            rules_lookups_free(&lk);
        }
        free(names);
        free(types);
        free(vals);
        free(lens);
        PQclear(res);
    }
    PQfinish(conn);
    return rc;
}

/* Verify the token with the auth keys of a ferry.yaml; returns claims JSON (malloc'd). */
static char *verified_claims(const char *config, const char *token)
{
    gw_config_t cfg;
    gw_err_t err;
    if (gw_config_load(&cfg, config, &err) != 0) {
        fprintf(stderr, "ferry rules explain: %s%s%s\n", err.where, err.where[0] ? ": " : "",
                err.message);
        return NULL; /* nothing to free on failure */
    }
    auth_ctx_t *ctx = NULL;
    if (gw_auth_create_opts(&cfg, 0, 0, &ctx, &err) != 0) {
        fprintf(stderr, "ferry rules explain: %s\n", err.message);
        gw_config_free(&cfg);
        return NULL;
    }
    size_t len = strlen(token) + 8;
    char *hdr = malloc(len);
    if (!hdr) abort();
    snprintf(hdr, len, "Bearer %s", token);
    auth_token_t *tok = NULL;
    const char *code = NULL;
    char *claims = NULL;
    if (gw_auth_verify_header(ctx, hdr, strlen(hdr), &tok, &code, &err, NULL) != 0) {
        fprintf(stderr, "ferry rules explain: token rejected (%s): %s\n", code ? code : "error",
                err.message);
    } else {
        claims = json_dumps(tok->claims, JSON_COMPACT);
        auth_token_release(tok);
    }
    free(hdr);
    gw_auth_destroy(ctx);
    gw_config_free(&cfg);
    return claims;
}

static int explain(const char *file, const char *token, const char *params, const char *db,
                   const char *config, const char *version, const rules_subscription_t *subs,
                   size_t nsubs, int no_defaults);

/* the stream index of name, or -1 (a bucket definition) */
static int stream_index(const rules_set_t *set, const char *name)
{
    for (size_t i = 0; i < rules_stream_count(set); i++) {
        rules_stream_info_t si;
        rules_stream_at(set, i, &si);
        if (strcmp(si.name, name) == 0) return (int)i;
    }
    return -1;
}

/* One bucket of a stream and why: the bucket kinds of its stream that name it. */
static void print_stream_bucket(const rules_set_t *set, const rules_bucket_t *b)
{
    printf("    %s  priority %d\n", b->bucket, b->priority);
    int si = b->definition ? stream_index(set, b->definition) : -1;
    if (si < 0) return;
    const char *kind = strchr(b->bucket, '#');
    kind = kind ? kind + 1 : b->bucket;
    size_t klen = strcspn(kind, "[");
    rules_stream_info_t info;
    rules_stream_at(set, (size_t)si, &info);
    for (size_t j = 0; j < info.nbuckets; j++) {
        const char *name = rules_stream_bucket(set, (size_t)si, j);
        if (strlen(name) != klen || strncmp(name, kind, klen) != 0) continue;
        char *d = rules_stream_describe(set, (size_t)si, j);
        printf("      because: %s\n", d ? d : "?");
        free(d);
    }
}

static void no_buckets(const rules_buckets_t *b, const char *stream)
{
    for (size_t i = 0; i < b->nunresolved; i++)
        if (strcmp(b->unresolved[i].definition, stream) == 0) {
            printf("    no buckets yet: its table lookups are unresolved (pass --db)\n");
            return;
        }
    printf("    no buckets\n");
}

/* Per default stream and per subscription: its buckets and why, or its errors. */
static void print_subscriptions(const rules_set_t *set, const rules_buckets_t *b,
                                const rules_subscription_t *subs, size_t nsubs)
{
    printf("streams:\n");
    for (size_t s = 0; s < b->nstreams; s++) {
        if (!b->streams[s].is_default || stream_index(set, b->streams[s].name) < 0) continue;
        printf("  default stream %s:\n", b->streams[s].name);
        int any = 0;
        for (size_t i = 0; i < b->n; i++) {
            const rules_bucket_t *bk = &b->items[i];
            if (!bk->definition || strcmp(bk->definition, b->streams[s].name) != 0) continue;
            for (size_t k = 0; k < bk->nreasons; k++)
                if (bk->reasons[k] == RULES_REASON_DEFAULT) {
                    print_stream_bucket(set, bk);
                    any = 1;
                    break;
                }
        }
        for (size_t e = 0; e < b->nerrors; e++)
            if (b->errors[e].subscription < 0 &&
                strcmp(b->errors[e].stream, b->streams[s].name) == 0) {
                printf("    error: %s\n", b->errors[e].message);
                any = 1;
            }
        if (!any) no_buckets(b, b->streams[s].name);
    }
    for (size_t j = 0; j < nsubs; j++) {
        printf("  subscription %zu: %s %s:\n", j, subs[j].stream,
               subs[j].params_json ? subs[j].params_json : "null");
        int any = 0;
        for (size_t i = 0; i < b->n; i++) {
            const rules_bucket_t *bk = &b->items[i];
            for (size_t k = 0; k < bk->nreasons; k++)
                if (bk->reasons[k] == (int)j) {
                    print_stream_bucket(set, bk);
                    any = 1;
                    break;
                }
        }
        for (size_t e = 0; e < b->nerrors; e++)
            if (b->errors[e].subscription == (int)j) {
                printf("    error: %s\n", b->errors[e].message);
                any = 1;
            }
        if (!any) no_buckets(b, subs[j].stream);
    }
}

static int cmd_explain(int argc, char **argv)
{
    const char *file = NULL, *token = NULL, *params = NULL, *db = NULL, *config = NULL;
    const char *version = "1";
    rules_subscription_t *subs = calloc((size_t)argc, sizeof *subs);
    char **sub_names = calloc((size_t)argc, sizeof(char *));
    if (!subs || !sub_names) abort();
    size_t nsubs = 0;
    int no_defaults = 0, rc = 2;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--subscribe") == 0) {
            if (i + 1 >= argc) goto done;
            const char *v = argv[++i], *colon = strchr(v, ':');
            sub_names[nsubs] = colon ? strndup(v, (size_t)(colon - v)) : strdup(v);
            if (!sub_names[nsubs]) abort();
            subs[nsubs] = (rules_subscription_t){sub_names[nsubs], colon ? colon + 1 : NULL, -1};
            nsubs++;
            continue;
        }
        if (strcmp(a, "--no-defaults") == 0) {
            no_defaults = 1;
            continue;
        }
        const char **dst = strcmp(a, "--token") == 0          ? &token
                           : strcmp(a, "--params") == 0       ? &params
                           : strcmp(a, "--db") == 0           ? &db
                           : strcmp(a, "--config") == 0       ? &config
                           : strcmp(a, "--rule-version") == 0 ? &version
                                                              : NULL;
        if (dst) {
            if (i + 1 >= argc) goto done;
            *dst = argv[++i];
        } else if (a[0] == '-' || file) {
            goto done;
        } else {
            file = a;
        }
    }
    if (!file || !token) goto done;
    rc = explain(file, token, params, db, config, version, subs, nsubs, no_defaults);
done:
    if (rc == 2) usage();
    for (size_t i = 0; i < nsubs; i++)
        free(sub_names[i]);
    free(sub_names);
    free(subs);
    return rc;
}

static int explain(const char *file, const char *token, const char *params, const char *db,
                   const char *config, const char *version, const rules_subscription_t *subs,
                   size_t nsubs, int no_defaults)
{
    rules_set_t *set = NULL;
    rules_diags_t d;
    int rc = rules_compile_file(file, &set, &d);
    if (rc != 0) {
        print_diags(&d, stderr);
        rules_diags_free(&d);
        return 1;
    }
    rules_diags_free(&d);
    char *claims;
    if (config) {
        claims = verified_claims(config, token);
        if (!claims) {
            rules_unref(set);
            return 1;
        }
        printf("token: signature and claims verified with the keys of %s\n", config);
    } else {
        claims = jwt_payload_unverified(token);
        if (!claims) {
            fprintf(stderr, "ferry rules explain: the token is not a JWT (header.payload.sig)\n");
            rules_unref(set);
            return 1;
        }
        printf("token: NOT verified (claims read without checking the signature; pass --config "
               "to verify)\n");
    }
    json_t *cj = json_loads(claims, 0, NULL);
    json_t *sub = cj ? json_object_get(cj, "sub") : NULL;
    printf("user_id: %s\n", json_is_string(sub) ? json_string_value(sub) : "(none)");
    json_decref(cj);
    printf("rule version: %s\n", version);
    store_t store = {0};
    if (db && load_lookups(set, db, &store) != 0) {
        store_free(&store);
        free(claims);
        rules_unref(set);
        return 1;
    }
    rules_request_t req = {.claims_json = claims,
                           .params_json = params,
                           .lookup = db ? store_answer : NULL,
                           .lookup_arg = &store,
                           .subs = subs,
                           .nsubs = nsubs,
                           .exclude_defaults = no_defaults};
    rules_buckets_t b = {0};
    rules_error_t err;
    rc = rules_eval_request(set, version, &req, &b, &err);
    if (rc != 0) {
        fprintf(stderr, "ferry rules explain: %s\n", err.message);
    } else {
        if (rules_stream_count(set) > 0 || nsubs > 0) print_subscriptions(set, &b, subs, nsubs);
        printf("buckets: %zu\n", b.n);
        for (size_t i = 0; i < b.n; i++) {
            int stream = stream_index(set, b.items[i].definition) >= 0;
            printf("  %s  priority %d  %s %s  %s %d: ", b.items[i].bucket, b.items[i].priority,
                   stream ? "stream" : "definition", b.items[i].definition,
                   stream ? "query" : "parameter query", b.items[i].query_index);
            print_oneline(stdout, b.items[i].query);
            printf("\n");
        }
        if (b.nunresolved) {
            printf("unresolved (table lookups; pass --db to answer them): %zu\n", b.nunresolved);
            for (size_t i = 0; i < b.nunresolved; i++) {
                int stream = stream_index(set, b.unresolved[i].definition) >= 0;
                printf("  %s %s  %s %d: ", stream ? "stream" : "definition",
                       b.unresolved[i].definition, stream ? "query" : "parameter query",
                       b.unresolved[i].query_index);
                print_oneline(stdout, b.unresolved[i].query);
                printf("  lookup %s\n", b.unresolved[i].key);
            }
        }
    }
    rules_buckets_free(&b);
    store_free(&store);
    free(claims);
    rules_unref(set);
    return rc ? 1 : 0;
}

int gw_cli_rules(int argc, char **argv)
{
    if (argc < 2) return usage();
    if (strcmp(argv[1], "check") == 0) return cmd_check(argc, argv);
    if (strcmp(argv[1], "explain") == 0) return cmd_explain(argc, argv);
    return usage();
}
