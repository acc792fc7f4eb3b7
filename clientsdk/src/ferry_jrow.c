/* ferry_jrow.c -- a row's columns read from its JSON in C: the SQL functions ferry_jok, ferry_col
 *
 * Publishing used json_extract once per column and row. The reader below (struct jrow) takes
 * the object apart once; rows it does not take are left to json_extract, so the values and
 * errors are always json_extract's.
 *
 * Callers: publishing (ferry_publish.c) binds the columns of a row published one by one from
 * it, and its whole-bucket statement calls ferry_col; the second reader (ferry_rows.c) copies
 * rows out of it on its own thread, with its own struct jrow; ferry__oplog_init registers
 * ferry_jok and ferry_col on the sync connection. A struct jrow belongs to one thread. The row
 * cache and its two hot accessors (ferry__jrow_get, ferry__jrow_text, inline) are in
 * ferry_oplog.h. */
#include "ferry_oplog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jr {
    const char *p, *end;
} jr_t;

static void jr_ws(jr_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* A string at j->p (after ws): *s and *n give its raw contents; *esc is set when it holds
 * escapes. -1 when malformed or holding a \u escape or a control character. */
static int jr_str(jr_t *j, const char **s, size_t *n, int *esc)
{
    if (j->p >= j->end || *j->p != '"') return -1;
    const char *q = ++j->p;
    *esc = 0;
    while (q < j->end && *q != '"') {
        if (ferry__plain[(unsigned char)*q]) {
            q++;
            continue;
        }
        if ((unsigned char)*q < 0x20) return -1;
        if (*q == '\\') {
            if (q + 1 >= j->end || !strchr("\"\\/bfnrt", q[1])) return -1;
            *esc = 1;
            q += 2;
            continue;
        }
        q++;
    }
    if (q >= j->end) return -1;
    *s = j->p;
    *n = (size_t)(q - j->p);
    j->p = q + 1;
    return 0;
}

/* Skips a value (nested ones too); -1 when malformed. */
static int jr_skip(jr_t *j, int depth)
{
    jr_ws(j);
    if (j->p >= j->end || depth > 64) return -1;
    const char *s;
    size_t n;
    int esc;
    char ch = *j->p;
    if (ch == '"') return jr_str(j, &s, &n, &esc);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        j->p++;
        jr_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (ch == '{') {
                jr_ws(j);
                if (jr_str(j, &s, &n, &esc)) return -1;
                jr_ws(j);
                if (j->p >= j->end || *j->p++ != ':') return -1;
            }
            if (jr_skip(j, depth + 1)) return -1;
            jr_ws(j);
            if (j->p >= j->end) return -1;
            if (*j->p == close) {
                j->p++;
                return 0;
            }
            if (*j->p++ != ',') return -1;
        }
    }
    const char *q = j->p;
    while (q < j->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E' || (*q >= 'a' && *q <= 'z')))
        q++;
    n = (size_t)(q - j->p);
    if (!((n == 4 && !memcmp(j->p, "true", 4)) || (n == 5 && !memcmp(j->p, "false", 5)) ||
          (n == 4 && !memcmp(j->p, "null", 4)))) {
        /* a number: the JSON grammar */
        const char *x = j->p;
        if (x < q && *x == '-') x++;
        if (x >= q || *x < '0' || *x > '9') return -1;
        if (*x == '0')
            x++;
        else
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        if (x < q && *x == '.') {
            x++;
            if (x >= q || *x < '0' || *x > '9') return -1;
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        }
        if (x < q && (*x == 'e' || *x == 'E')) {
            x++;
            if (x < q && (*x == '+' || *x == '-')) x++;
            if (x >= q || *x < '0' || *x > '9') return -1;
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        }
        if (x != q) return -1;
    }
    j->p = q;
    return 0;
}

/* The row cache behind two SQL functions on the sync connection, for publishing a whole bucket
 * in one INSERT ... SELECT: ferry_jok(data) reads the object once per row and says whether
 * every top-level value is one this reader returns exactly as json_extract would (strings with
 * simple escapes, integers of up to 18 digits, true, false, null; keys without escapes; no
 * trailing text). ferry_col(data, name) returns json_extract(data, '$."name"'): for a row the
 * reader takes, the first value of that key (NULL when absent) read here; for any other row
 * (reals, nested values, \u escapes, malformed JSON) it runs json_extract itself on the same
 * connection, so values and errors are always json_extract's. json_extract parsed each row once
 * but looked each column's path up and copied its result; this cost 0.4-0.7 s of the 2-2.5 s of
 * publishing 1,000,000 rows. (The publish first called "CASE WHEN ferry_jok(d) THEN
 * ferry_col(d, 'c') ELSE json_extract(...) END": two calls per column instead of one.) The
 * cache, struct jrow, is in ferry_oplog.h. */

struct jrow *ferry__jrow_new(void)
{
    return calloc(1, sizeof(struct jrow));
}

void ferry__jrow_free(struct jrow *r)
{
    if (!r) return;
    free(r->text);
    free(r->v);
    free(r->ubuf);
    sqlite3_finalize(r->jx);
    free(r->path);
    free(r);
}

/* Reads d into r unless it holds it already; returns r->ok, or -1 on out-of-memory. */
int ferry__jrow_load(struct jrow *r, const char *d, size_t n)
{
    if (r->loaded && n == r->len && memcmp(r->text, d, n) == 0) return r->ok;
    r->loaded = 0;
    if (n + 1 > r->cap) {
        char *nt = realloc(r->text, n + 1);
        if (!nt) return -1;
        r->text = nt;
        r->cap = n + 1;
    }
    memcpy(r->text, d, n);
    r->text[n] = 0;
    r->len = n;
    r->nv = 0;
    r->ok = 0;
    r->loaded = 1;
    jr_t j = {r->text, r->text + n};
    jr_ws(&j);
    if (j.p >= j.end || *j.p++ != '{') return 0;
    jr_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            if (r->nv == r->capv) {
                size_t cap = r->capv ? r->capv * 2 : 16;
                jcol_t *nv = realloc(r->v, cap * sizeof *nv);
                if (!nv) {
                    r->loaded = 0;
                    return -1;
                }
                r->v = nv;
                r->capv = cap;
            }
            jcol_t *c = &r->v[r->nv];
            int esc;
            jr_ws(&j);
            if (jr_str(&j, &c->k, &c->kn, &esc) || esc) return 0;
            jr_ws(&j);
            if (j.p >= j.end || *j.p++ != ':') return 0;
            jr_ws(&j);
            if (j.p >= j.end || *j.p == '{' || *j.p == '[') return 0;
            if (*j.p == '"') {
                if (jr_str(&j, &c->s, &c->sn, &c->esc)) return 0;
                c->type = SQLITE_TEXT;
            } else {
                const char *v = j.p;
                if (jr_skip(&j, 0)) return 0;
                size_t len = (size_t)(j.p - v);
                if (*v == 't' || *v == 'f') {
                    c->type = SQLITE_INTEGER;
                    c->i = *v == 't';
                } else if (*v == 'n') {
                    c->type = SQLITE_NULL;
                } else {
                    size_t digits = len - (*v == '-');
                    if (memchr(v, '.', len) || memchr(v, 'e', len) || memchr(v, 'E', len) ||
                        digits > 18)
                        return 0;
                    int64_t x = 0;
                    for (const char *q = v + (*v == '-'); q < j.p; q++)
                        x = x * 10 + (*q - '0');
                    c->type = SQLITE_INTEGER;
                    c->i = *v == '-' ? -x : x;
                }
            }
            r->nv++;
            jr_ws(&j);
            if (j.p >= j.end) return 0;
            if (*j.p == '}') {
                j.p++;
                break;
            }
            if (*j.p++ != ',') return 0;
        }
    }
    jr_ws(&j);
    r->ok = j.p == j.end;
    return r->ok;
}

void ferry__jrow_fn_jok(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    struct jrow *r = sqlite3_user_data(ctx);
    int ok = 0;
    if (sqlite3_value_type(argv[0]) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(argv[0]);
        ok = d ? ferry__jrow_load(r, d, (size_t)sqlite3_value_bytes(argv[0])) : 0;
        if (ok < 0) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
    }
    sqlite3_result_int(ctx, ok);
}

/* r's "SELECT json_extract(?1, ?2)" on connection c (prepared once), bound to data and
 * '$."name"', ready to step (the caller resets it and clears its bindings). NULL when it could
 * not be prepared or on out-of-memory. */
sqlite3_stmt *ferry__jrow_extract(struct jrow *r, sqlite3 *c, sqlite3_value *data, const char *name)
{
    size_t need = strlen(name) + 5;
    if (need > r->pcap) {
        char *np = realloc(r->path, need);
        if (!np) return NULL;
        r->path = np;
        r->pcap = need;
    }
    snprintf(r->path, need, "$.\"%s\"", name);
    if (!r->jx && sqlite3_prepare_v2(c, "SELECT json_extract(?1, ?2)", -1, &r->jx, NULL))
        return NULL;
    sqlite3_bind_value(r->jx, 1, data);
    sqlite3_bind_text(r->jx, 2, r->path, -1, SQLITE_STATIC);
    return r->jx;
}

/* ferry_col for a row the reader does not take: json_extract(data, '$."name"') run on the
 * connection of ctx, its value or its error as the result. */
static void col_json_extract(sqlite3_context *ctx, struct jrow *r, sqlite3_value *data,
                             const char *name)
{
    sqlite3 *c = sqlite3_context_db_handle(ctx);
    if (!ferry__jrow_extract(r, c, data, name)) {
        if (r->jx)
            sqlite3_result_error_nomem(ctx);
        else
            sqlite3_result_error(ctx, sqlite3_errmsg(c), -1);
        return;
    }
    if (sqlite3_step(r->jx) == SQLITE_ROW)
        sqlite3_result_value(ctx, sqlite3_column_value(r->jx, 0));
    else
        sqlite3_result_error(ctx, sqlite3_errmsg(c), -1);
    sqlite3_reset(r->jx);
    sqlite3_clear_bindings(r->jx);
}

void ferry__jrow_fn_col(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    struct jrow *r = sqlite3_user_data(ctx);
    const char *d = (const char *)sqlite3_value_text(argv[0]);
    const char *name = (const char *)sqlite3_value_text(argv[1]);
    if (!d || !name) return; /* NULL */
    int ok = ferry__jrow_load(r, d, (size_t)sqlite3_value_bytes(argv[0]));
    if (ok < 0) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    if (!ok) {
        col_json_extract(ctx, r, argv[0], name);
        return;
    }
    const jcol_t *c = ferry__jrow_get(r, name);
    if (!c || c->type == SQLITE_NULL) return;
    if (c->type == SQLITE_INTEGER) {
        sqlite3_result_int64(ctx, c->i);
        return;
    }
    size_t n;
    const char *v = ferry__jrow_text(r, c, &n);
    if (!v)
        sqlite3_result_error_nomem(ctx);
    else
        sqlite3_result_text(ctx, v, (int)n, SQLITE_TRANSIENT);
}
