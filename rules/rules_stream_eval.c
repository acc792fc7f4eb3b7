/* rules_stream_eval.c -- evaluate Sync Streams: rows -> ops, rows -> lookups, requests -> buckets
 *
 * Called from rules_eval.c with a borrowed evaluation context (rctx_t) after the legacy bucket
 * definitions. Rows: every data source whose table matches runs its statement (or reads plain
 * columns directly) once per row; each result row is one (data, id, bucket parameters) and goes
 * to every bucket that holds the source. Lookups: every parameter index whose table matches
 * yields (key, outputs) entries, keyed `<lookup name>/<query id>[values]` like the bucket
 * definitions' lookups, so storage treats both alike.
 *
 * Requests follow the reference's querier (parameter_evaluator in the service): for each
 * subscription a querier first checks its request filters, then evaluates its lookup stages in
 * order (json_each over request data at once; parameter indexes through the caller's lookup
 * callback, with inputs from earlier stages), then combines the values of its bucket
 * parameters. Every value carries its provenance (which lookup row it came from), so two
 * parameters read from one lookup row are only combined when they come from the same row, and
 * an intersection keeps values present in all of its inputs.
 *
 *   subscription --filters--> stage 0 (request json_each) --> stage 1 (index reads) --> ...
 *                 --> instantiations (cartesian product, provenance-consistent) --> bucket ids
 *
 * Memory: per-request values live in an arena freed at the end of the call.
 */
#include "rules_stream.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- values --------------------------------------------------------------------------- */

static int valid_param(const rval_t *v)
{
    return v->t != SQLITE_NULL && v->t != SQLITE_BLOB;
}

/* a value as a lookup key element: integral numbers normalized to integers */
static void key_norm(rbuf_t *b, const rval_t *v)
{
    if (v->t == SQLITE_FLOAT && isfinite(v->d) && v->d == floor(v->d)) {
        if (fabs(v->d) < 9.2e18)
            rb_int(b, (int64_t)v->d);
        else
            rb_printf(b, "%.0f", v->d);
        return;
    }
    rj_key_value(b, v);
}

/* JavaScript's String(v) for an id */
static void id_text(rbuf_t *b, const rval_t *v)
{
    switch (v->t) {
    case SQLITE_INTEGER:
        rb_int(b, v->i);
        break;
    case SQLITE_FLOAT:
        rj_double(b, v->d, 0);
        break;
    case SQLITE_TEXT:
        rb_put(b, v->s, v->n);
        break;
    default:
        break;
    }
}

static rval_t rv_copy(rarena_t *a, const rval_t *v)
{
    rval_t r = *v;
    if ((v->t == SQLITE_TEXT || v->t == SQLITE_BLOB) && v->s) r.s = ra_strndup(a, v->s, v->n);
    return r;
}

static int table_match(const sproc_t *p, const rules_row_t *row)
{
    const char *schema = row->schema ? row->schema : "public";
    if (strcmp(p->schema ? p->schema : "public", schema) != 0) return 0;
    size_t n = strlen(p->table);
    if (n && p->table[n - 1] == '%') return strncmp(row->table, p->table, n - 1) == 0;
    return strcmp(p->table, row->table) == 0;
}

static int row_col(const rules_row_t *row, const char *name)
{
    for (size_t i = 0; i < row->ncols; i++)
        if (row->names[i][0] == name[0] && strcmp(row->names[i], name) == 0) return (int)i;
    return -1;
}

static const rval_t null_v = {SQLITE_NULL, 0, 0, NULL, 0};

static const rval_t *col_val(rctx_t *c, const rules_row_t *row, const char *name)
{
    int i = row_col(row, name);
    return i >= 0 ? &c->vals[i] : &null_v;
}

/*
 * Run p over the row: cb(arg, vals) once per result row with the values of exprs (outputs then
 * partition values; plain columns are read directly when p has no statement). Returns 0, or
 * -1 when SQLite failed (err filled, no rows).
 */
typedef void (*row_cb)(void *arg, const rval_t *vals, int n);

static int proc_run(rules_set_t *set, rctx_t *c, const rules_row_t *row, const sproc_t *p,
                    sexpr_t **exprs, int n, row_cb cb, void *arg, rules_error_t *err)
{
    /* the callbacks read all n values (outputs, then partition values): a query with more than
     * fit on the stack gets them on the heap (capping n made them read past the array: found by
     * fuzzing with a query of hundreds of outputs) */
    rval_t small[64];
    rval_t *vals = n <= 64 ? small : rx_malloc(sizeof(rval_t) * (size_t)n);
    if (p->stmt < 0) {
        if (p->sql) { /* could not be compiled */
            if (vals != small) free(vals);
            return -1;
        }
        for (int i = 0; i < n; i++)
            vals[i] = *col_val(c, row, exprs[i]->ref->column);
        cb(arg, vals, n);
        if (vals != small) free(vals);
        return 0;
    }
    sqlite3_stmt *st = rctx_stmt(set, c, p->stmt, err);
    if (!st) {
        if (vals != small) free(vals);
        return -1;
    }
    for (int i = 0; i < p->ncols; i++)
        rv_bind(st, i + 1, col_val(c, row, p->cols[i]));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < n; i++)
            rv_from_column(&vals[i], st, i);
        cb(arg, vals, n);
    }
    int bad = rc != SQLITE_DONE;
    if (bad)
        rctx_seterr(err, RULES_EEVAL, "could not evaluate a stream query on table \"%s\": %s",
                    row->table, sqlite3_errmsg(c->db));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (vals != small) free(vals);
    return bad ? -1 : 0;
}

/* ---- rows -> ops ---------------------------------------------------------------------- */

typedef struct sres {
    char *blk; /* data, id, key: one allocation */
    const char *data, *id, *key;
    size_t ndata;
    uint32_t sum;
} sres_t;

typedef struct sresults {
    sres_t *v;
    int n, cap;
    int done;
} sresults_t;

typedef struct datactx {
    rctx_t *c;
    const rules_row_t *row;
    const sdata_t *d;
    int nexpr; /* output expressions before the partition values */
    sresults_t *out;
} datactx_t;

typedef struct pair {
    const char *name;
    rval_t v;
} pair_t;

static int pair_set(pair_t *ps, int n, int max, const char *name, const rval_t *v, int only_null)
{
    for (int i = 0; i < n; i++)
        if (strcmp(ps[i].name, name) == 0) {
            if (!only_null || ps[i].v.t == SQLITE_NULL) ps[i].v = *v;
            return n;
        }
    if (n < max) ps[n++] = (pair_t){name, *v};
    return n;
}

static void data_row(void *arg, const rval_t *vals, int n)
{
    datactx_t *x = arg;
    const sdata_t *d = x->d;
    rctx_t *c = x->c;
    (void)n;
    /* bucket parameters first: a row with a NULL (or blob) parameter belongs to no bucket */
    rbuf_t key = {0};
    rb_putc(&key, '[');
    for (int i = 0; i < d->p.nparts; i++) {
        const rval_t *v = &vals[x->nexpr + i];
        if (!valid_param(v) && !(v->t == SQLITE_NULL && d->part_null && d->part_null[i])) {
            rb_free(&key);
            return;
        }
        if (i) rb_putc(&key, ',');
        if (d->alpha)
            key_norm(&key, v);
        else
            rj_key_value(&key, v);
    }
    rb_putc(&key, ']');
    /* the record, with the reference's object semantics (a repeated key keeps its place) */
    pair_t ps[512];
    int np = 0, ei = 0;
    for (int i = 0; i < d->nouts; i++) {
        if (d->outs[i].kind == SOUT_STAR) {
            for (size_t k = 0; k < x->row->ncols; k++) {
                const char *nm = x->row->names[k];
                if (c->vals[k].t == SQLITE_BLOB) continue;
                if (d->alpha && nm[0] == '_') continue;
                np = pair_set(ps, np, 512, nm, &c->vals[k], d->alpha);
            }
        } else {
            const rval_t *v = &vals[ei++];
            const sexpr_t *e = d->outs[i].expr;
            if (v->t == SQLITE_BLOB) continue;
            /* a column the row does not have is undefined for the reference: no key at all */
            if (e->k == E_DATA && e->ref->rs && row_col(x->row, e->ref->column) < 0) continue;
            np = pair_set(ps, np, 512, d->outs[i].alias, v, 0);
        }
    }
    c->json.n = 0;
    rb_putc(&c->json, '{');
    const rval_t *idv = NULL;
    for (int i = 0; i < np; i++) {
        if (strcmp(ps[i].name, "id") == 0) idv = &ps[i].v;
        if (i) rb_putc(&c->json, ',');
        rj_string(&c->json, ps[i].name, strlen(ps[i].name));
        rb_putc(&c->json, ':');
        rj_value(&c->json, &ps[i].v);
    }
    rb_putc(&c->json, '}');
    c->tmp.n = 0;
    if (idv) id_text(&c->tmp, idv);
    const char *otype = d->out_table ? d->out_table : x->row->table;
    size_t lid = c->tmp.n;
    const char *parts[6] = {"put.", otype, ".", c->tmp.p ? c->tmp.p : "", ".", c->json.p};
    size_t lens[6] = {4, strlen(otype), 1, lid, 1, c->json.n};
    sres_t r;
    r.sum = rchecksum_parts(c->md, parts, lens, 6);
    r.blk = rx_malloc(c->json.n + 1 + lid + 1 + key.n + 1);
    memcpy(r.blk, c->json.p, c->json.n + 1);
    memcpy(r.blk + c->json.n + 1, c->tmp.p ? c->tmp.p : "", lid);
    r.blk[c->json.n + 1 + lid] = 0;
    memcpy(r.blk + c->json.n + 1 + lid + 1, key.p, key.n + 1);
    r.data = r.blk;
    r.ndata = c->json.n;
    r.id = r.blk + c->json.n + 1;
    r.key = r.blk + c->json.n + 1 + lid + 1;
    rb_free(&key);
    sresults_t *o = x->out;
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 4;
        o->v = rx_realloc(o->v, sizeof(sres_t) * (size_t)o->cap);
    }
    o->v[o->n++] = r;
}

static void eval_data(rules_set_t *set, rctx_t *c, const rules_row_t *row, const sdata_t *d,
                      sresults_t *out, rules_error_t *err)
{
    /* every output and partition value (data_row reads them all): no cap at a fixed size */
    sexpr_t *small[64];
    size_t cap = (size_t)d->nouts + (size_t)d->p.nparts;
    sexpr_t **exprs = cap <= 64 ? small : rx_malloc(sizeof(sexpr_t *) * cap);
    int n = 0;
    for (int i = 0; i < d->nouts; i++)
        if (d->outs[i].kind == SOUT_EXPR) exprs[n++] = d->outs[i].expr;
    int nexpr = n;
    for (int i = 0; i < d->p.nparts; i++)
        exprs[n++] = d->p.parts[i];
    datactx_t x = {c, row, d, nexpr, out};
    if (proc_run(set, c, row, &d->p, exprs, n, data_row, &x, err) < 0) {
        /* like the reference: a failing source contributes nothing for this row */
        for (int i = 0; i < out->n; i++)
            free(out->v[i].blk);
        out->n = 0;
    }
    if (exprs != small) free(exprs);
    out->done = 1;
}

/* append an op; the same bucket, type and id only once (the last one wins) */
static void ops_add(rules_ops_t *ops, const char *version, const char *bucket, const sres_t *r,
                    const char *otype, const char *def)
{
    size_t lv = version ? strlen(version) + 1 : 0, lb = strlen(bucket), lk = strlen(r->key);
    size_t lt = strlen(otype) + 1, li = strlen(r->id) + 1;
    char *blk = rx_malloc(lv + lb + lk + 1 + lt + li + r->ndata + 1);
    char *p = blk;
    if (version) {
        memcpy(p, version, lv - 1);
        p[lv - 1] = '#';
        p += lv;
    }
    memcpy(p, bucket, lb);
    memcpy(p + lb, r->key, lk + 1);
    char *t = blk + lv + lb + lk + 1;
    memcpy(t, otype, lt);
    memcpy(t + lt, r->id, li);
    memcpy(t + lt + li, r->data, r->ndata + 1);
    rules_op_t op = {blk, t, t + lt, t + lt + li, r->ndata, r->sum, def};
    for (size_t i = 0; i < ops->n; i++) {
        rules_op_t *o = &ops->items[i];
        if (strcmp(o->bucket, op.bucket) == 0 && strcmp(o->object_type, op.object_type) == 0 &&
            strcmp(o->object_id, op.object_id) == 0) {
            free(o->bucket);
            *o = op;
            return;
        }
    }
    if (ops->n == ops->cap) {
        ops->cap = ops->cap ? ops->cap * 2 : 8;
        ops->items = rx_realloc(ops->items, sizeof(rules_op_t) * ops->cap);
    }
    ops->items[ops->n++] = op;
}

void sv_eval_row(rules_set_t *set, rctx_t *c, const char *version, const rules_row_t *row,
                 rules_ops_t *out, rules_error_t *err)
{
    splan_t *p = set->splan;
    if (!p || !p->nbuckets) return;
    sresults_t *res = NULL;
    for (int b = 0; b < p->nbuckets; b++) {
        sbucket_t *bk = p->buckets[b];
        for (int s = 0; s < bk->nsources; s++) {
            sdata_t *d = bk->sources[s];
            if (!table_match(&d->p, row)) continue;
            if (!res) res = rx_calloc((size_t)p->ndata + 1, sizeof(sresults_t));
            int di = 0;
            while (di < p->ndata && p->data[di] != d)
                di++;
            if (!res[di].done) eval_data(set, c, row, d, &res[di], err);
            const char *otype = d->out_table ? d->out_table : row->table;
            /* the stream that defines the bucket, for messages */
            const char *def = bk->name;
            for (int i = 0; i < res[di].n; i++)
                ops_add(out, version, bk->name, &res[di].v[i], otype, def);
        }
    }
    if (res) {
        for (int i = 0; i < p->ndata; i++) {
            for (int k = 0; k < res[i].n; k++)
                free(res[i].v[k].blk);
            free(res[i].v);
        }
        free(res);
    }
}

/* ---- rows -> lookup entries ----------------------------------------------------------- */

typedef struct lkctx {
    const slookup_t *l;
    rules_lookups_t *out;
} lkctx_t;

static void lookup_row(void *arg, const rval_t *vals, int n)
{
    lkctx_t *x = arg;
    const slookup_t *l = x->l;
    /* the alpha form indexes NULL results too ({"result": null}) */
    for (int i = 0; i < n; i++)
        if (!valid_param(&vals[i]) &&
            !(l->result_named && i < l->nouts && vals[i].t == SQLITE_NULL))
            return;
    rbuf_t key = {0}, params = {0};
    rb_printf(&key, "%s/%s[", l->lookup_name, l->query_id);
    for (int i = 0; i < l->p.nparts; i++) {
        if (i) rb_putc(&key, ',');
        key_norm(&key, &vals[l->nouts + i]);
    }
    rb_putc(&key, ']');
    rb_putc(&params, '{');
    for (int i = 0; i < l->nouts; i++) {
        if (i) rb_putc(&params, ',');
        if (l->result_named)
            rb_puts(&params, "\"result\":");
        else
            rb_printf(&params, "\"%d\":", i);
        rj_value(&params, &vals[i]);
    }
    rb_putc(&params, '}');
    rules_lookups_t *o = x->out;
    for (size_t i = 0; i < o->n; i++)
        if (strcmp(o->items[i].key, key.p) == 0 && strcmp(o->items[i].params, params.p) == 0) {
            rb_free(&key);
            rb_free(&params);
            return;
        }
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 4;
        o->items = rx_realloc(o->items, sizeof(rules_lookup_t) * o->cap);
    }
    o->items[o->n++] = (rules_lookup_t){rb_strdup(&key), rb_strdup(&params), l->lookup_name};
    rb_free(&key);
    rb_free(&params);
}

void sv_eval_lookups(rules_set_t *set, rctx_t *c, const rules_row_t *row, rules_lookups_t *out,
                     rules_error_t *err)
{
    splan_t *p = set->splan;
    if (!p) return;
    for (int i = 0; i < p->nlookups; i++) {
        const slookup_t *l = p->lookups[i];
        if (!table_match(&l->p, row)) continue;
        sexpr_t *small[64];
        size_t cap = (size_t)l->nouts + (size_t)l->p.nparts;
        sexpr_t **exprs = cap <= 64 ? small : rx_malloc(sizeof(sexpr_t *) * cap);
        int n = 0;
        for (int k = 0; k < l->nouts; k++)
            exprs[n++] = l->outs[k];
        for (int k = 0; k < l->p.nparts; k++)
            exprs[n++] = l->p.parts[k];
        size_t before = out->n;
        lkctx_t x = {l, out};
        if (proc_run(set, c, row, &l->p, exprs, n, lookup_row, &x, err) < 0) {
            for (size_t k = before; k < out->n; k++) {
                free(out->items[k].key);
                free(out->items[k].params);
            }
            out->n = before;
        }
        if (exprs != small) free(exprs);
    }
}

/* ---- requests ------------------------------------------------------------------------- */

typedef struct porg {
    int rs, row;
} porg_t;

/** A parameter value with the lookup rows it was derived from. */
typedef struct pval {
    rval_t v;
    porg_t *prov;
    int nprov;
    int direct; /* dorg is the row this value was read from */
    porg_t dorg;
} pval_t;

typedef struct pset {
    pval_t *v;
    int n;
} pset_t;

/** The rows of one evaluated lookup: rows[i] has width[i] values. */
typedef struct prows {
    pval_t **rows;
    int *width;
    int n;
} prows_t;

typedef struct sreq {
    rules_set_t *set;
    rctx_t *c;
    const char *version;
    const char *auth, *conn;
    const rules_request_t *req;
    racc_t *acc;
    rules_buckets_t *out;
    rules_error_t *err;
    rarena_t a;
    int next_rs;
    int fatal; /* the lookup callback failed: the request fails */
    size_t lookup_rows;
    struct lkcache *cache; /* parameter-index answers read so far (one read per key) */
    int ncache, capcache;
    /* values of request expressions that do not read subscription parameters: the same for
     * every subscription of the request, so evaluated once */
    const struct sval **rk;
    struct pset **rv;
    int nr, capr;
} sreq_t;

/* One parameter-index key as answered for this request: its rows, parsed once (values in the
 * request's arena). Subscriptions of one stream usually share keys (the same user's lookups),
 * so a request with many subscriptions reads and parses each key once. */
typedef struct lkcache {
    const char *key;
    uint32_t hash;
    int result_named;
    int nrows;
    int *width;
    rval_t **vals;
} lkcache_t;

typedef struct sqstate {
    sreq_t *r;
    const sstream_t *s;
    const squerier_t *q;
    const char *sub_json; /* NULL for a default subscription */
    prows_t ***stage;     /* [stage][index], NULL until evaluated */
    const sval_t **ck;    /* value cache */
    pset_t **cv;
    int nc, capc;
    char msg[256]; /* evaluation error of this subscription */
} sqstate_t;

#define MAX_LOOKUP_ROWS 10000

static void qfail(sqstate_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void qfail(sqstate_t *x, const char *fmt, ...)
{
    if (x->msg[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->msg, sizeof x->msg, fmt, ap);
    va_end(ap);
}

static sqlite3_stmt *req_stmt(sqstate_t *x, int idx)
{
    rules_error_t e = {0};
    sqlite3_stmt *st = rctx_stmt(x->r->set, x->r->c, idx, &e);
    if (!st) {
        qfail(x, "%s", e.message);
        return NULL;
    }
    int np = sqlite3_bind_parameter_count(st);
    if (np >= 1) sqlite3_bind_text(st, 1, x->r->auth, -1, SQLITE_STATIC);
    if (np >= 2) {
        if (x->sub_json)
            sqlite3_bind_text(st, 2, x->sub_json, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
    }
    if (np >= 3) sqlite3_bind_text(st, 3, x->r->conn, -1, SQLITE_STATIC);
    return st;
}

static void req_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* 1 when the querier's request filters hold, 0 when not, -1 on an error */
static int filters_match(sqstate_t *x)
{
    if (x->q->filter_stmt < 0) return x->q->nreq_filters && x->q->filter_sql ? -1 : 1;
    sqlite3_stmt *st = req_stmt(x, x->q->filter_stmt);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
    if (r < 0)
        qfail(x, "could not evaluate the stream's conditions: %s", sqlite3_errmsg(x->r->c->db));
    req_done(st);
    return r;
}

static prows_t *rows_new(rarena_t *a)
{
    return ra_alloc(a, sizeof(prows_t));
}

static void rows_add(rarena_t *a, prows_t *r, pval_t *vals, int width)
{
    if ((r->n & (r->n - 1)) == 0) {
        int cap = r->n ? r->n * 2 : 1;
        pval_t **nr = ra_alloc(a, sizeof(pval_t *) * (size_t)cap);
        int *nw = ra_alloc(a, sizeof(int) * (size_t)cap);
        if (r->n) {
            memcpy(nr, r->rows, sizeof(pval_t *) * (size_t)r->n);
            memcpy(nw, r->width, sizeof(int) * (size_t)r->n);
        }
        r->rows = nr;
        r->width = nw;
    }
    r->rows[r->n] = vals;
    r->width[r->n] = width;
    r->n++;
}

/* a json_each() over request data: rows whose values are all valid parameters */
static prows_t *eval_table_valued(sqstate_t *x, const sstagelk_t *l)
{
    rarena_t *a = &x->r->a;
    prows_t *rows = rows_new(a);
    if (l->stmt < 0) {
        qfail(x, "the stream's json_each() cannot be evaluated");
        return NULL;
    }
    sqlite3_stmt *st = req_stmt(x, l->stmt);
    if (!st) return NULL;
    int rs = ++x->r->next_rs, rowid = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int ok = 1;
        for (int i = 0; i < l->nouts && ok; i++) {
            rval_t v;
            rv_from_column(&v, st, i);
            ok = valid_param(&v) || (x->q->alpha && v.t == SQLITE_NULL);
        }
        if (!ok) {
            rowid++;
            continue;
        }
        pval_t *vals = ra_alloc(a, sizeof(pval_t) * (size_t)(l->nouts + 1));
        for (int i = 0; i < l->nouts; i++) {
            rval_t v;
            rv_from_column(&v, st, i);
            vals[i].v = rv_copy(a, &v);
            vals[i].direct = 1;
            vals[i].dorg = (porg_t){rs, rowid};
            vals[i].prov = ra_alloc(a, sizeof(porg_t));
            vals[i].prov[0] = vals[i].dorg;
            vals[i].nprov = 1;
        }
        rows_add(a, rows, vals, l->nouts);
        rowid++;
    }
    if (rc != SQLITE_DONE) {
        qfail(x, "could not evaluate json_each(): %s", sqlite3_errmsg(x->r->c->db));
        req_done(st);
        return NULL;
    }
    req_done(st);
    return rows;
}

static prows_t *lookup_sync(sqstate_t *x, const sstagelk_t *l)
{
    prows_t **slot = &x->stage[l->stage][l->index];
    if (*slot) return *slot;
    if (l->kind == SL_TABLE_VALUED) *slot = eval_table_valued(x, l);
    return *slot;
}

static pset_t *cache_get(sqstate_t *x, const sval_t *v)
{
    for (int i = 0; i < x->nc; i++)
        if (x->ck[i] == v) return x->cv[i];
    return NULL;
}

static pset_t *cache_put(sqstate_t *x, const sval_t *v, pset_t *s)
{
    if (x->nc == x->capc) {
        x->capc = x->capc ? x->capc * 2 : 8;
        const sval_t **k = ra_alloc(&x->r->a, sizeof(sval_t *) * (size_t)x->capc);
        pset_t **c = ra_alloc(&x->r->a, sizeof(pset_t *) * (size_t)x->capc);
        if (x->nc) {
            memcpy(k, x->ck, sizeof(sval_t *) * (size_t)x->nc);
            memcpy(c, x->cv, sizeof(pset_t *) * (size_t)x->nc);
        }
        x->ck = k;
        x->cv = c;
    }
    x->ck[x->nc] = v;
    x->cv[x->nc] = s;
    x->nc++;
    return s;
}

/* JavaScript Map key equality (SameValueZero: 5 and 5n differ) */
static int same_value(const rval_t *a, const rval_t *b)
{
    if (a->t != b->t) return 0;
    switch (a->t) {
    case SQLITE_INTEGER:
        return a->i == b->i;
    case SQLITE_FLOAT:
        return a->d == b->d || (a->d != a->d && b->d != b->d);
    case SQLITE_TEXT:
    case SQLITE_BLOB:
        return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
    default:
        return 1;
    }
}

/* JavaScript `==` between parameter values (5 == 5n) */
static int loose_equal(const rval_t *a, const rval_t *b)
{
    if ((a->t == SQLITE_INTEGER || a->t == SQLITE_FLOAT) &&
        (b->t == SQLITE_INTEGER || b->t == SQLITE_FLOAT)) {
        if (a->t == SQLITE_INTEGER && b->t == SQLITE_INTEGER) return a->i == b->i;
        double x = a->t == SQLITE_INTEGER ? (double)a->i : a->d;
        double y = b->t == SQLITE_INTEGER ? (double)b->i : b->d;
        return x == y;
    }
    return same_value(a, b);
}

/* rows of a (result set, row) marked "completed" / their canonical value (or poisoned) */
typedef struct rowmark {
    porg_t o;
    int completed;
    int has_value, poison;
    rval_t value;
} rowmark_t;

typedef struct marks {
    rowmark_t *v;
    int n, cap;
} marks_t;

static rowmark_t *mark_get(marks_t *m, porg_t o, int create)
{
    for (int i = 0; i < m->n; i++)
        if (m->v[i].o.rs == o.rs && m->v[i].o.row == o.row) return &m->v[i];
    if (!create) return NULL;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 8;
        m->v = rx_realloc(m->v, sizeof(rowmark_t) * (size_t)m->cap);
    }
    m->v[m->n] = (rowmark_t){o, 0, 0, 0, {0, 0, 0, NULL, 0}};
    return &m->v[m->n++];
}

static int marks_has_rs(const marks_t *m, int rs)
{
    for (int i = 0; i < m->n; i++)
        if (m->v[i].o.rs == rs && (m->v[i].has_value || m->v[i].poison)) return 1;
    return 0;
}

static int skip_value(marks_t *m, const pval_t *v)
{
    if (!v->direct) return 0;
    rowmark_t *k = mark_get(m, v->dorg, 0);
    if (k && k->completed) return 1;
    if (!marks_has_rs(m, v->dorg.rs)) return 0;
    if (!k || k->poison || !k->has_value) return 1;
    return !loose_equal(&k->value, &v->v);
}

typedef struct ientry {
    rval_t value;
    porg_t **provs;
    int *nprov;
    int n, cap;
    int alive;
} ientry_t;

static void ientry_push(ientry_t *e, porg_t *p, int n)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 4;
        e->provs = rx_realloc(e->provs, sizeof(porg_t *) * (size_t)e->cap);
        e->nprov = rx_realloc(e->nprov, sizeof(int) * (size_t)e->cap);
    }
    e->provs[e->n] = p;
    e->nprov[e->n] = n;
    e->n++;
}

static pset_t *value_sync(sqstate_t *x, const sval_t *v);

/* an intersection of parameter values, keeping rows consistent (see the file comment) */
static pset_t *intersect(sqstate_t *x, pset_t **cols, int ncols)
{
    rarena_t *a = &x->r->a;
    marks_t m = {0};
    for (int c = 0; c < ncols; c++)
        for (int i = 0; i < cols[c]->n; i++) {
            const pval_t *v = &cols[c]->v[i];
            if (!v->direct) continue;
            rowmark_t *k = mark_get(&m, v->dorg, 1);
            if (k->poison) continue;
            if (k->has_value && !loose_equal(&k->value, &v->v)) {
                k->poison = 1;
                k->has_value = 0;
                k->completed = 1;
                continue;
            }
            k->has_value = 1;
            k->value = v->v;
        }
    ientry_t *ents = NULL;
    int nents = 0, first = 1;
    for (int c = 0; c < ncols; c++) {
        if (first) {
            first = 0;
            for (int i = 0; i < cols[c]->n; i++) {
                const pval_t *v = &cols[c]->v[i];
                if (skip_value(&m, v)) continue;
                int e = -1;
                for (int k = 0; k < nents; k++)
                    if (ents[k].alive && same_value(&ents[k].value, &v->v)) e = k;
                if (e < 0) {
                    ents = rx_realloc(ents, sizeof(ientry_t) * (size_t)(nents + 1));
                    memset(&ents[nents], 0, sizeof(ientry_t));
                    ents[nents].value = v->v;
                    ents[nents].alive = 1;
                    e = nents++;
                }
                ientry_push(&ents[e], v->prov, v->nprov);
                for (int k = 0; k < v->nprov; k++)
                    mark_get(&m, v->prov[k], 1)->completed = 1;
            }
        } else {
            int *matched = rx_calloc((size_t)nents + 1, sizeof(int));
            for (int i = 0; i < cols[c]->n; i++) {
                const pval_t *v = &cols[c]->v[i];
                for (int k = 0; k < nents; k++)
                    if (ents[k].alive && same_value(&ents[k].value, &v->v)) {
                        matched[k] = 1;
                        if (!skip_value(&m, v)) ientry_push(&ents[k], v->prov, v->nprov);
                    }
            }
            for (int k = 0; k < nents; k++)
                if (!matched[k]) ents[k].alive = 0;
            free(matched);
        }
        int alive = 0;
        for (int k = 0; k < nents; k++)
            alive += ents[k].alive;
        if (alive == 0) break;
    }
    pset_t *out = ra_alloc(a, sizeof *out);
    int total = 0;
    for (int k = 0; k < nents; k++)
        if (ents[k].alive) total += ents[k].n;
    out->v = ra_alloc(a, sizeof(pval_t) * (size_t)(total + 1));
    for (int k = 0; k < nents; k++) {
        if (ents[k].alive)
            for (int p = 0; p < ents[k].n; p++) {
                pval_t *pv = &out->v[out->n++];
                pv->v = ents[k].value;
                pv->prov = ents[k].provs[p];
                pv->nprov = ents[k].nprov[p];
            }
        free(ents[k].provs);
        free(ents[k].nprov);
    }
    free(ents);
    free(m.v);
    return out;
}

/* parameterSync: the values of v when they can be known now (NULL: needs a lookup first) */
static pset_t *value_sync(sqstate_t *x, const sval_t *v)
{
    pset_t *c = cache_get(x, v);
    if (c) return c;
    rarena_t *a = &x->r->a;
    if (v->kind == SV_INTERSECTION) {
        pset_t **cols = ra_alloc(a, sizeof(pset_t *) * (size_t)(v->ninner + 1));
        for (int i = 0; i < v->ninner; i++) {
            cols[i] = value_sync(x, v->inner[i]);
            if (!cols[i]) return NULL;
        }
        return cache_put(x, v, intersect(x, cols, v->ninner));
    }
    if (v->kind == SV_LOOKUP) {
        prows_t *rows = lookup_sync(x, v->lookup);
        if (!rows) return NULL;
        pset_t *s = ra_alloc(a, sizeof *s);
        s->v = ra_alloc(a, sizeof(pval_t) * (size_t)(rows->n + 1));
        for (int i = 0; i < rows->n; i++)
            if (v->result_index < rows->width[i]) s->v[s->n++] = rows->rows[i][v->result_index];
        return cache_put(x, v, s);
    }
    /* request data */
    sreq_t *r = x->r;
    for (int i = 0; i < r->nr; i++)
        if (r->rk[i] == v) return cache_put(x, v, r->rv[i]);
    pset_t *s = ra_alloc(a, sizeof *s);
    s->v = ra_alloc(a, sizeof(pval_t));
    if (v->stmt < 0) {
        qfail(x, "a parameter of the stream cannot be evaluated");
        return cache_put(x, v, s);
    }
    sqlite3_stmt *st = req_stmt(x, v->stmt);
    if (!st) return cache_put(x, v, s);
    int shared = sqlite3_bind_parameter_count(st) < 2; /* ?2 is the subscription: not read */
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && shared) {
        if (r->nr == r->capr) {
            r->capr = r->capr ? r->capr * 2 : 8;
            r->rk = rx_realloc(r->rk, sizeof(*r->rk) * (size_t)r->capr);
            r->rv = rx_realloc(r->rv, sizeof(*r->rv) * (size_t)r->capr);
        }
        r->rk[r->nr] = v;
        r->rv[r->nr++] = s; /* filled below */
    }
    if (rc == SQLITE_ROW) {
        rval_t r;
        rv_from_column(&r, st, 0);
        /* the alpha form keeps NULL request values (bucket `s|0[null]`) */
        if (valid_param(&r) || (x->q->alpha && r.t == SQLITE_NULL)) {
            s->v[0].v = rv_copy(a, &r);
            s->n = 1;
        }
    } else {
        qfail(x, "could not evaluate a parameter: %s", sqlite3_errmsg(x->r->c->db));
    }
    req_done(st);
    return cache_put(x, v, s);
}

/* mergeValueCombinations: every choice of one value per parameter whose rows agree */
typedef void (*combo_fn)(sqstate_t *x, pval_t **combo, int n, void *arg);

typedef struct used {
    porg_t *v;
    int n, cap;
} used_t;

static int install(used_t *u, const pval_t *v, int *added)
{
    *added = 0;
    for (int i = 0; i < v->nprov; i++) {
        porg_t o = v->prov[i];
        int found = -1;
        for (int k = 0; k < u->n; k++)
            if (u->v[k].rs == o.rs) found = k;
        if (found < 0) {
            if (u->n == u->cap) {
                u->cap = u->cap ? u->cap * 2 : 8;
                u->v = rx_realloc(u->v, sizeof(porg_t) * (size_t)u->cap);
            }
            u->v[u->n++] = o;
            (*added)++;
        } else if (u->v[found].row != o.row) {
            return 0;
        }
    }
    return 1;
}

static void combos(sqstate_t *x, pset_t **vals, int n, int i, pval_t **partial, used_t *u,
                   combo_fn fn, void *arg)
{
    if (i == n) {
        fn(x, partial, n, arg);
        return;
    }
    for (int k = 0; k < vals[i]->n; k++) {
        int added;
        int ok = install(u, &vals[i]->v[k], &added);
        if (ok) {
            partial[i] = &vals[i]->v[k];
            combos(x, vals, n, i + 1, partial, u, fn, arg);
        }
        u->n -= added;
    }
}

static int resolve_inputs(sqstate_t *x, sval_t *const *inst, int n, combo_fn fn, void *arg)
{
    pset_t **vals = ra_alloc(&x->r->a, sizeof(pset_t *) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) {
        vals[i] = value_sync(x, inst[i]);
        if (!vals[i]) return -1;
    }
    pval_t **partial = ra_alloc(&x->r->a, sizeof(pval_t *) * (size_t)(n + 1));
    used_t u = {0};
    combos(x, vals, n, 0, partial, &u, fn, arg);
    free(u.v);
    return 0;
}

/* parameter index reads of one stage lookup */
typedef struct lkreq {
    char **keys;
    porg_t ***origins; /* per key: list of provenance lists */
    int **norigins;
    int *nentries;
    int n, cap;
} lkreq_t;

static void lookup_combo(sqstate_t *x, pval_t **combo, int n, void *arg)
{
    void **args = arg;
    lkreq_t *lk = args[0];
    const sstagelk_t *l = args[1];
    rarena_t *a = &x->r->a;
    rbuf_t key = {0};
    rb_printf(&key, "%s/%s[", l->lookup->lookup_name, l->lookup->query_id);
    int np = 0;
    for (int i = 0; i < n; i++) {
        if (i) rb_putc(&key, ',');
        key_norm(&key, &combo[i]->v);
        np += combo[i]->nprov;
    }
    rb_putc(&key, ']');
    porg_t *prov = ra_alloc(a, sizeof(porg_t) * (size_t)(np + 1));
    np = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < combo[i]->nprov; k++)
            prov[np++] = combo[i]->prov[k];
    int e = -1;
    for (int i = 0; i < lk->n; i++)
        if (strcmp(lk->keys[i], key.p) == 0) e = i;
    if (e < 0) {
        if (lk->n == lk->cap) {
            lk->cap = lk->cap ? lk->cap * 2 : 4;
            lk->keys = rx_realloc(lk->keys, sizeof(char *) * (size_t)lk->cap);
            lk->origins = rx_realloc(lk->origins, sizeof(porg_t **) * (size_t)lk->cap);
            lk->norigins = rx_realloc(lk->norigins, sizeof(int *) * (size_t)lk->cap);
            lk->nentries = rx_realloc(lk->nentries, sizeof(int) * (size_t)lk->cap);
        }
        lk->keys[lk->n] = ra_strdup(a, key.p);
        lk->origins[lk->n] = NULL;
        lk->norigins[lk->n] = NULL;
        lk->nentries[lk->n] = 0;
        e = lk->n++;
    }
    int k = lk->nentries[e]++;
    lk->origins[e] = rx_realloc(lk->origins[e], sizeof(porg_t *) * (size_t)(k + 1));
    lk->norigins[e] = rx_realloc(lk->norigins[e], sizeof(int) * (size_t)(k + 1));
    lk->origins[e][k] = prov;
    lk->norigins[e][k] = np;
    rb_free(&key);
}

static void lkreq_free(lkreq_t *lk)
{
    for (int i = 0; i < lk->n; i++) {
        free(lk->origins[i]);
        free(lk->norigins[i]);
    }
    free(lk->keys);
    free(lk->origins);
    free(lk->norigins);
    free(lk->nentries);
}

struct rules_answer {
    char **items;
    size_t n, cap;
};

static uint32_t key_hash(const char *k)
{
    uint32_t h = 2166136261u;
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 16777619u;
    return h;
}

/* A stored lookup row the way the replicator writes them ({"0": v, ...} or {"result": v}, with
 * strings without escapes, integers and null) into vals (copied into a); the number of values,
 * or -1 for anything else (then jansson reads it). The same values jansson's path gives. */
#define FAST_ROW_MAX 8
static int fast_row(rarena_t *a, const char *p, int result_named, rval_t *vals)
{
    int width = 0, seen = 0;
    if (*p++ != '{') return -1;
    if (*p == '}') return p[1] == '\0' ? 0 : -1;
    for (;;) {
        int idx;
        if (result_named) {
            if (strncmp(p, "\"result\":", 9) != 0) return -1;
            p += 9;
            idx = 0;
        } else {
            if (*p++ != '"' || *p < '0' || *p > '9' || p[1] != '"' || p[2] != ':') return -1;
            idx = *p - '0';
            p += 3;
        }
        if (idx >= FAST_ROW_MAX || (seen & 1 << idx)) return -1;
        seen |= 1 << idx;
        rval_t v = {SQLITE_NULL, 0, 0, NULL, 0};
        if (*p == '"') {
            const char *q = ++p;
            while (*q && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
                q++;
            if (*q != '"') return -1;
            v.t = SQLITE_TEXT;
            v.s = ra_strndup(a, p, (size_t)(q - p));
            v.n = (size_t)(q - p);
            p = q + 1;
        } else if (strncmp(p, "null", 4) == 0) {
            p += 4;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            const char *q = p + (*p == '-');
            if (*q < '0' || *q > '9' || (*q == '0' && q[1] >= '0' && q[1] <= '9')) return -1;
            int digits = 0;
            while (*q >= '0' && *q <= '9') {
                q++;
                digits++;
            }
            if (digits > 18 || *q == '.' || *q == 'e' || *q == 'E') return -1;
            v.t = SQLITE_INTEGER;
            v.i = strtoll(p, NULL, 10);
            p = q;
        } else {
            return -1;
        }
        vals[idx] = v;
        width++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p != '}' || p[1] != '\0') return -1;
        break;
    }
    return seen == (1 << width) - 1 ? width : -1; /* keys 0 .. width-1 */
}

/* The rows of one parameter-index key: from the request's cache, else read through the
 * callback and parsed into the cache. NULL when the callback failed (r->fatal is set). */
static const lkcache_t *lookup_rows(sqstate_t *x, const char *key, int result_named)
{
    sreq_t *r = x->r;
    rarena_t *a = &r->a;
    uint32_t h = key_hash(key);
    for (int i = 0; i < r->ncache; i++)
        if (r->cache[i].hash == h && r->cache[i].result_named == result_named &&
            strcmp(r->cache[i].key, key) == 0)
            return &r->cache[i];
    rules_answer_t ans = {0};
    if (r->req->lookup(r->req->lookup_arg, key, &ans) < 0) {
        rctx_seterr(r->err, RULES_ELOOKUP, "lookup for stream \"%s\" failed", x->s->name);
        r->fatal = RULES_ELOOKUP;
        for (size_t k = 0; k < ans.n; k++)
            free(ans.items[k]);
        free(ans.items);
        return NULL;
    }
    if (r->ncache == r->capcache) {
        r->capcache = r->capcache ? r->capcache * 2 : 8;
        r->cache = rx_realloc(r->cache, sizeof(lkcache_t) * (size_t)r->capcache);
    }
    lkcache_t *e = &r->cache[r->ncache++];
    *e = (lkcache_t){ra_strdup(a, key), h, result_named, 0, NULL, NULL};
    e->width = ra_alloc(a, sizeof(int) * (ans.n + 1));
    e->vals = ra_alloc(a, sizeof(rval_t *) * (ans.n + 1));
    for (size_t k = 0; k < ans.n; k++) {
        rval_t fast[FAST_ROW_MAX];
        int fw = fast_row(a, ans.items[k], result_named, fast);
        if (fw >= 0) {
            rval_t *vals = ra_alloc(a, sizeof(rval_t) * (size_t)(fw + 1));
            memcpy(vals, fast, sizeof(rval_t) * (size_t)fw);
            e->width[e->nrows] = fw;
            e->vals[e->nrows++] = vals;
            free(ans.items[k]);
            continue;
        }
        json_t *obj = json_loads(ans.items[k], 0, NULL);
        if (obj && json_is_object(obj)) {
            int width = (int)json_object_size(obj);
            rval_t *vals = ra_alloc(a, sizeof(rval_t) * (size_t)(width + 1));
            for (int c = 0; c < width; c++) {
                char name[16];
                json_t *jv;
                if (result_named)
                    jv = json_object_get(obj, "result");
                else {
                    snprintf(name, sizeof name, "%d", c);
                    jv = json_object_get(obj, name);
                }
                rval_t v = {SQLITE_NULL, 0, 0, NULL, 0};
                if (jv) rctx_rv_from_json(r->c, jv, &v);
                vals[c] = rv_copy(a, &v);
            }
            rctx_release_holds(r->c);
            e->width[e->nrows] = width;
            e->vals[e->nrows++] = vals;
        }
        json_decref(obj);
        free(ans.items[k]);
    }
    free(ans.items);
    return e;
}

static int eval_parameter_lookup(sqstate_t *x, const sstagelk_t *l)
{
    sreq_t *r = x->r;
    rarena_t *a = &r->a;
    lkreq_t lk = {0};
    void *args[2] = {&lk, (void *)l};
    if (resolve_inputs(x, l->inst, l->ninst, lookup_combo, args) < 0) {
        lkreq_free(&lk);
        qfail(x, "a lookup of the stream needs values that are not known yet");
        return -1;
    }
    prows_t *rows = rows_new(a);
    for (int i = 0; i < lk.n && !r->fatal; i++) {
        if (!r->req->lookup) {
            rules_buckets_t *o = r->out;
            if (o->nunresolved == o->capunresolved) {
                o->capunresolved = o->capunresolved ? o->capunresolved * 2 : 4;
                o->unresolved =
                    rx_realloc(o->unresolved, sizeof(rules_unresolved_t) * o->capunresolved);
            }
            o->unresolved[o->nunresolved++] = (rules_unresolved_t){
                x->s->name, x->q->query_text, x->q->query_index, rx_strdup(lk.keys[i])};
            continue;
        }
        const lkcache_t *ce = lookup_rows(x, lk.keys[i], l->lookup->result_named);
        if (!ce) break;
        for (int e = 0; e < lk.nentries[i]; e++) {
            int rs = ++r->next_rs;
            for (int k = 0; k < ce->nrows; k++) {
                int width = ce->width[k];
                pval_t *vals = ra_alloc(a, sizeof(pval_t) * (size_t)(width + 1));
                for (int c = 0; c < width; c++) {
                    vals[c].v = ce->vals[k][c];
                    int direct = width > 1;
                    int np = lk.norigins[i][e];
                    vals[c].nprov = np + direct;
                    vals[c].prov = ra_alloc(a, sizeof(porg_t) * (size_t)(np + 2));
                    memcpy(vals[c].prov, lk.origins[i][e], sizeof(porg_t) * (size_t)np);
                    if (direct) {
                        vals[c].direct = 1;
                        vals[c].dorg = (porg_t){rs, k};
                        vals[c].prov[np] = vals[c].dorg;
                    }
                }
                rows_add(a, rows, vals, width);
                if (++r->lookup_rows > MAX_LOOKUP_ROWS) {
                    qfail(x, "too many parameter rows (more than %d) for one request",
                          MAX_LOOKUP_ROWS);
                    break;
                }
            }
        }
    }
    lkreq_free(&lk);
    x->stage[l->stage][l->index] = rows;
    return x->msg[0] || r->fatal ? -1 : 0;
}

/* 1 when every stage is evaluated, 0 when some parameter index must be read first, -1 when
 * a stage is empty (the subscription resolves to no bucket) */
static int stages_state(sqstate_t *x)
{
    int pending = 0;
    for (int s = 0; s < x->q->nstages; s++)
        for (int i = 0; i < x->q->nstage[s]; i++) {
            prows_t *r = lookup_sync(x, x->q->stages[s][i]);
            if (!r) {
                pending = 1;
                continue;
            }
            if (r->n == 0) return -1;
        }
    return pending ? 0 : 1;
}

typedef struct bucketctx {
    int dynamic;
    int reason;
    int priority;
} bucketctx_t;

static void bucket_combo(sqstate_t *x, pval_t **combo, int n, void *arg)
{
    bucketctx_t *b = arg;
    sreq_t *r = x->r;
    rbuf_t id = {0};
    if (r->version) {
        rb_puts(&id, r->version);
        rb_putc(&id, '#');
    }
    rb_puts(&id, x->q->bucket->name);
    rb_putc(&id, '[');
    for (int i = 0; i < n; i++) {
        if (i) rb_putc(&id, ',');
        rj_key_value(&id, &combo[i]->v);
    }
    rb_putc(&id, ']');
    if (racc_add(r->acc, b->dynamic, id.p, b->priority, x->s->name, x->q->query_index,
                 x->q->query_text, b->reason, r->err) < 0)
        r->fatal = RULES_ELIMIT;
    rb_free(&id);
}

static void add_error(rules_buckets_t *out, const char *stream, int sub, const char *msg)
{
    out->errors = rx_realloc(out->errors, sizeof(rules_stream_error_t) * (out->nerrors + 1));
    out->errors[out->nerrors++] = (rules_stream_error_t){rx_strdup(stream), sub, rx_strdup(msg)};
}

/* querierForSubscription */
static void run_querier(sreq_t *r, const sstream_t *s, const squerier_t *q, int sub,
                        const char *sub_json, int priority)
{
    rarena_t *a = &r->a;
    sqstate_t x = {0};
    x.r = r;
    x.s = s;
    x.q = q;
    x.sub_json = sub_json;
    x.stage = ra_alloc(a, sizeof(prows_t **) * (size_t)(q->nstages + 1));
    for (int i = 0; i < q->nstages; i++)
        x.stage[i] = ra_alloc(a, sizeof(prows_t *) * (size_t)(q->nstage[i] + 1));
    bucketctx_t bc = {0, sub, priority};
    int m = filters_match(&x);
    if (m <= 0) goto out;
    int st = stages_state(&x);
    if (x.msg[0] || st < 0) goto out;
    if (st == 0) {
        bc.dynamic = 1;
        for (int s2 = 0; s2 < q->nstages && !x.msg[0] && !r->fatal; s2++)
            for (int i = 0; i < q->nstage[s2] && !x.msg[0] && !r->fatal; i++) {
                const sstagelk_t *l = q->stages[s2][i];
                if (l->kind == SL_PARAMETER) eval_parameter_lookup(&x, l);
            }
        if (x.msg[0] || r->fatal) goto out;
        if (stages_state(&x) < 0) goto out;
    }
    if (resolve_inputs(&x, q->inst, q->ninst, bucket_combo, &bc) < 0 && !x.msg[0])
        qfail(&x, "the stream's bucket parameters cannot be resolved");
out:
    if (x.msg[0] && !r->fatal) {
        char m2[300];
        snprintf(m2, sizeof m2, "could not evaluate the bucket ids: %s", x.msg);
        add_error(r->out, s->name, sub, m2);
    }
}

static void add_stream_ref(rules_buckets_t *out, const char *name, int is_default)
{
    out->streams = rx_realloc(out->streams, sizeof(rules_stream_ref_t) * (out->nstreams + 1));
    out->streams[out->nstreams++] = (rules_stream_ref_t){name, is_default};
}

int sv_eval_request(rules_set_t *set, rctx_t *c, const char *version, const rules_request_t *req,
                    const char *auth, const char *conn, racc_t *acc, rules_buckets_t *out,
                    rules_error_t *err)
{
    splan_t *p = set->splan;
    sreq_t r = {0};
    r.set = set;
    r.c = c;
    r.version = version;
    r.auth = auth;
    r.conn = conn;
    r.req = req;
    r.acc = acc;
    r.out = out;
    r.err = err;
    for (int si = 0; p && si < p->nstreams && !r.fatal; si++) {
        const sstream_t *s = p->streams[si];
        int nsubs = 0;
        for (size_t i = 0; i < req->nsubs; i++)
            nsubs += strcmp(req->subs[i].stream, s->name) == 0;
        int defaults = s->auto_subscribe && (!req->exclude_defaults || (s->alpha && nsubs));
        if (!nsubs && !(s->auto_subscribe && !req->exclude_defaults)) continue;
        add_stream_ref(out, s->name, s->auto_subscribe);
        for (size_t i = 0; i < req->nsubs && !r.fatal; i++) {
            const rules_subscription_t *sub = &req->subs[i];
            if (strcmp(sub->stream, s->name) != 0) continue;
            const char *pj = sub->params_json ? sub->params_json : "{}";
            json_t *jp = json_loads(pj, JSON_DECODE_ANY, NULL);
            int ok = jp && (json_is_object(jp) || json_is_null(jp));
            int is_null = jp && json_is_null(jp);
            json_decref(jp);
            if (!ok) {
                add_error(out, s->name, (int)i,
                          "the subscription's parameters must be a JSON object");
                continue;
            }
            if (is_null) pj = "{}";
            int prio = sub->override_priority >= 0 && sub->override_priority <= 3
                           ? sub->override_priority
                           : s->priority;
            for (int q = 0; q < s->nq && !r.fatal; q++)
                run_querier(&r, s, s->q[q], (int)i, pj, prio);
        }
        if (defaults)
            for (int q = 0; q < s->nq && !r.fatal; q++)
                run_querier(&r, s, s->q[q], RULES_REASON_DEFAULT, NULL, s->priority);
    }
    /* subscriptions to streams the rules do not define */
    for (size_t i = 0; i < req->nsubs; i++) {
        const char *name = req->subs[i].stream;
        int known = 0;
        for (int si = 0; p && si < p->nstreams && !known; si++)
            known = strcmp(p->streams[si]->name, name) == 0;
        for (int d = 0; d < set->ndefs && !known; d++)
            known = strcmp(set->defs[d]->name, name) == 0;
        if (!known) {
            char m[300];
            snprintf(m, sizeof m, "stream \"%.200s\" is not defined in the sync rules", name);
            add_error(out, name, (int)i, m);
        }
    }
    free(r.cache);
    free(r.rk);
    free(r.rv);
    ra_free(&r.a);
    return r.fatal;
}
