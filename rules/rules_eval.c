/* rules_eval.c -- evaluate compiled rules: rows -> ops, rows -> lookups, requests -> buckets
 *
 * Each call borrows an evaluation context (rctx_t: a private in-memory SQLite connection, its
 * lazily prepared statements and scratch buffers) from the set's pool and returns it at the
 * end, so concurrent callers never share SQLite state and the immutable set needs no locking
 * beyond the pool's mutex. A row is converted once (rules_value.c); each query then binds the
 * columns it references, steps its one statement (skipped when every expression is a plain
 * column), and walks its filter tree in C to produce bucket parameter bindings (data queries)
 * or lookup keys (table-lookup parameter queries). Requests run the parameter queries'
 * request-side statements with ?1 = sub, ?2 = claims JSON, ?3 = client parameters JSON.
 */
#include "rules_stream.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BINDINGS 1000
#define MAX_PARAMS   RULES_MAX_PARAMS

typedef struct binding {
    rval_t v[MAX_PARAMS];
    unsigned set;
} binding_t;

typedef struct blist {
    binding_t *b;
    size_t n, cap;
} blist_t;

/* ---- contexts ------------------------------------------------------------------------- */

rctx_t *rctx_get(rules_set_t *set)
{
    pthread_mutex_lock(&set->pool_lock);
    rctx_t *c = set->pool;
    if (c) set->pool = c->next;
    pthread_mutex_unlock(&set->pool_lock);
    if (c) return c;
    c = rx_calloc(1, sizeof *c);
    if (sqlite3_open_v2(":memory:", &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    rfunc_register(c->db);
    c->md = EVP_MD_CTX_new();
    if (!c->md) abort();
    c->nst = set->nstmts;
    c->st = rx_calloc((size_t)c->nst + 1, sizeof(sqlite3_stmt *));
    return c;
}

void rctx_release_holds(rctx_t *c)
{
    for (size_t i = 0; i < c->nhold; i++)
        json_decref(c->hold[i]);
    c->nhold = 0;
    for (size_t i = 0; i < c->nstrs; i++)
        free(c->strs[i]);
    c->nstrs = 0;
}

void rctx_put(rules_set_t *set, rctx_t *c)
{
    rctx_release_holds(c);
    if (c->scratch.cap > (1 << 20)) rb_free(&c->scratch);
    pthread_mutex_lock(&set->pool_lock);
    c->next = set->pool;
    set->pool = c;
    pthread_mutex_unlock(&set->pool_lock);
}

static void ctx_free(rctx_t *c)
{
    rctx_release_holds(c);
    for (int i = 0; i < c->nst; i++)
        sqlite3_finalize(c->st[i]);
    free(c->st);
    sqlite3_close(c->db);
    EVP_MD_CTX_free(c->md);
    free(c->vals);
    rb_free(&c->scratch);
    rb_free(&c->json);
    rb_free(&c->key);
    rb_free(&c->tmp);
    free(c->hold);
    free(c->strs);
    free(c);
}

void rctx_free_pool(rules_set_t *set)
{
    rctx_t *c = set->pool;
    while (c) {
        rctx_t *n = c->next;
        ctx_free(c);
        c = n;
    }
    set->pool = NULL;
}

void rctx_hold_json(rctx_t *c, json_t *j)
{
    if (c->nhold == c->caphold) {
        c->caphold = c->caphold ? c->caphold * 2 : 16;
        c->hold = rx_realloc(c->hold, sizeof(json_t *) * c->caphold);
    }
    c->hold[c->nhold++] = j;
}

const char *rctx_hold_str(rctx_t *c, char *s)
{
    if (c->nstrs == c->capstrs) {
        c->capstrs = c->capstrs ? c->capstrs * 2 : 16;
        c->strs = rx_realloc(c->strs, sizeof(char *) * c->capstrs);
    }
    c->strs[c->nstrs++] = s;
    return s;
}

void rctx_seterr(rules_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rctx_seterr(rules_error_t *err, int code, const char *fmt, ...)
{
    if (!err || err->code) return;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

sqlite3_stmt *rctx_stmt(rules_set_t *set, rctx_t *c, int idx, rules_error_t *err)
{
    if (idx < 0 || idx >= c->nst) return NULL;
    if (!c->st[idx]) {
        if (sqlite3_prepare_v3(c->db, set->stmts[idx], -1, SQLITE_PREPARE_PERSISTENT, &c->st[idx],
                               NULL) != SQLITE_OK) {
            rctx_seterr(err, RULES_EEVAL, "could not prepare \"%s\": %s", set->stmts[idx],
                        sqlite3_errmsg(c->db));
            return NULL;
        }
    }
    return c->st[idx];
}

/* ---- JSON values ---------------------------------------------------------------------- */

/* JSON value -> SQLite value (as SQLite's json_each would give it). */
void rctx_rv_from_json(rctx_t *c, json_t *j, rval_t *v)
{
    switch (json_typeof(j)) {
    case JSON_STRING:
        v->t = SQLITE_TEXT;
        v->s = json_string_value(j);
        v->n = json_string_length(j);
        break;
    case JSON_INTEGER:
        v->t = SQLITE_INTEGER;
        v->i = json_integer_value(j);
        break;
    case JSON_REAL:
        v->t = SQLITE_FLOAT;
        v->d = json_real_value(j);
        break;
    case JSON_TRUE:
        v->t = SQLITE_INTEGER;
        v->i = 1;
        break;
    case JSON_FALSE:
        v->t = SQLITE_INTEGER;
        v->i = 0;
        break;
    case JSON_NULL:
        v->t = SQLITE_NULL;
        break;
    default: {
        char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        if (!s) {
            v->t = SQLITE_NULL;
            break;
        }
        v->t = SQLITE_TEXT;
        v->s = rctx_hold_str(c, s);
        v->n = strlen(s);
    }
    }
}

/* Parse a JSON array text; returns the array (held by c) or NULL when v is not one. */
json_t *rctx_json_array(rctx_t *c, const rval_t *v)
{
    if (v->t != SQLITE_TEXT) return NULL;
    json_t *j = json_loadb(v->s, v->n, JSON_DECODE_ANY, NULL);
    if (!j) return NULL;
    rctx_hold_json(c, j);
    return json_is_array(j) ? j : NULL;
}

static int key_equal(rctx_t *c, const rval_t *a, const rval_t *b)
{
    c->tmp.n = 0;
    rj_key_value(&c->tmp, a);
    size_t n = c->tmp.n;
    rj_key_value(&c->tmp, b);
    return c->tmp.n == 2 * n && memcmp(c->tmp.p, c->tmp.p + n, n) == 0;
}

/* ---- rows ----------------------------------------------------------------------------- */

typedef struct rowctx {
    const rules_row_t *row;
    rctx_t *c;
    int *colidx; /* per query column: row index or -1 */
    int cap;
    rval_t res[64]; /* SQL results of the current query */
    sqlite3_stmt *st;
} rowctx_t;

void rctx_convert_row(rules_set_t *set, rctx_t *c, const rules_row_t *row)
{
    if (c->capvals < row->ncols) {
        c->capvals = row->ncols + 8;
        c->vals = rx_realloc(c->vals, sizeof(rval_t) * c->capvals);
    }
    c->scratch.n = 0;
    for (size_t i = 0; i < row->ncols; i++) {
        const char *s = row->values[i];
        size_t len = s ? (row->lens ? row->lens[i] : strlen(s)) : 0;
        c->vals[i].s = "";
        rv_from_pg(&set->conv, row->types ? row->types[i] : 0, s, len, &c->vals[i], &c->scratch);
    }
    for (size_t i = 0; i < row->ncols; i++) {
        rval_t *v = &c->vals[i];
        if ((v->t == SQLITE_TEXT || v->t == SQLITE_BLOB) && v->s == NULL) {
            v->s = c->scratch.p ? c->scratch.p + v->i : "";
            v->i = 0;
        }
    }
}

static int find_col(const rules_row_t *row, const char *name, int hint)
{
    if (hint >= 0 && (size_t)hint < row->ncols && strcmp(row->names[hint], name) == 0) return hint;
    for (size_t i = 0; i < row->ncols; i++)
        if (row->names[i][0] == name[0] && strcmp(row->names[i], name) == 0) return (int)i;
    return -1;
}

static const rval_t null_val = {SQLITE_NULL, 0, 0, NULL, 0};

static const rval_t *slot_val(rowctx_t *rc, rslot_t s)
{
    if (s.col >= 0) {
        int i = rc->colidx[s.col];
        return i >= 0 ? &rc->c->vals[i] : &null_val;
    }
    return s.sqlcol < 64 ? &rc->res[s.sqlcol] : &null_val;
}

/* Bind and step the row side of q; fills rc->res. Returns 0, 1 (skip: error recorded). */
static int run_rowq(rules_set_t *set, rowctx_t *rc, const rrowq_t *r, rules_error_t *err)
{
    if (rc->cap < r->ncols) {
        rc->cap = r->ncols + 8;
        rc->colidx = rx_realloc(rc->colidx, sizeof(int) * (size_t)rc->cap);
    }
    for (int k = 0; k < r->ncols; k++)
        rc->colidx[k] = find_col(rc->row, r->cols[k], k);
    rc->st = NULL;
    if (r->stmt < 0) return 0;
    sqlite3_stmt *st = rctx_stmt(set, rc->c, r->stmt, err);
    if (!st) return 1;
    int np = sqlite3_bind_parameter_count(st);
    for (int k = 0; k < r->ncols && k < np; k++)
        rv_bind(st, k + 1, slot_val(rc, (rslot_t){k, -1}));
    int rcode = sqlite3_step(st);
    if (rcode != SQLITE_ROW) {
        rctx_seterr(err, RULES_EEVAL, "could not evaluate a query on table \"%s\": %s",
                    rc->row->table, sqlite3_errmsg(rc->c->db));
        sqlite3_reset(st);
        return 1;
    }
    for (int i = 0; i < r->nsql && i < 64; i++)
        rv_from_column(&rc->res[i], st, i);
    rc->st = st;
    return 0;
}

static void done_rowq(rowctx_t *rc)
{
    if (rc->st) {
        sqlite3_reset(rc->st);
        sqlite3_clear_bindings(rc->st);
        rc->st = NULL;
    }
}

static void bl_add(blist_t *l, const binding_t *b)
{
    if (l->n >= MAX_BINDINGS) return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4;
        l->b = rx_realloc(l->b, sizeof(binding_t) * l->cap);
    }
    l->b[l->n++] = *b;
}

/* Walk a filter into bindings: each binding assigns values to parameters / lookup inputs. */
static void walk(rowctx_t *rc, const rfilt_t *f, blist_t *out)
{
    binding_t b;
    b.set = 0;
    switch (f->kind) {
    case F_TRUE:
        bl_add(out, &b);
        return;
    case F_PRED:
        if (rv_truthy(slot_val(rc, f->v))) bl_add(out, &b);
        return;
    case F_EQ:
    case F_IN_REQARR: {
        /* "=" never matches NULL; "row IN <request array>" keeps it, giving the key [null] that
         * a null element of the request array looks up, as the reference does */
        const rval_t *v = slot_val(rc, f->v);
        if ((v->t == SQLITE_NULL && f->kind == F_EQ) || v->t == SQLITE_BLOB || f->p < 0 ||
            f->p >= MAX_PARAMS)
            return;
        b.v[f->p] = *v;
        b.set = 1u << f->p;
        bl_add(out, &b);
        return;
    }
    case F_IN_ROWARR: {
        json_t *a = rctx_json_array(rc->c, slot_val(rc, f->v));
        if (!a || f->p < 0 || f->p >= MAX_PARAMS) return;
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e)
        {
            rval_t v;
            rctx_rv_from_json(rc->c, e, &v);
            /* a NULL element gives the bucket [null], as the reference does */
            b.v[f->p] = v;
            b.set = 1u << f->p;
            bl_add(out, &b);
        }
        return;
    }
    case F_OR:
        for (int i = 0; i < f->nk; i++)
            walk(rc, f->k[i], out);
        return;
    case F_AND: {
        blist_t acc = {0};
        bl_add(&acc, &b);
        for (int i = 0; i < f->nk && acc.n; i++) {
            blist_t kid = {0}, next = {0};
            walk(rc, f->k[i], &kid);
            for (size_t x = 0; x < acc.n; x++)
                for (size_t y = 0; y < kid.n; y++) {
                    binding_t m = acc.b[x];
                    const binding_t *k = &kid.b[y];
                    int ok = 1;
                    for (int p = 0; p < MAX_PARAMS && ok; p++) {
                        if (!(k->set & (1u << p))) continue;
                        if (m.set & (1u << p))
                            ok = key_equal(rc->c, &m.v[p], &k->v[p]);
                        else {
                            m.v[p] = k->v[p];
                            m.set |= 1u << p;
                        }
                    }
                    if (ok) bl_add(&next, &m);
                }
            free(kid.b);
            free(acc.b);
            acc = next;
        }
        for (size_t x = 0; x < acc.n; x++)
            bl_add(out, &acc.b[x]);
        free(acc.b);
        return;
    }
    }
}

static int table_matches(const rrowq_t *r, const rules_row_t *row)
{
    const char *schema = row->schema ? row->schema : "public";
    if (strcmp(r->schema, schema) != 0) return 0;
    if (r->prefix) return strncmp(row->table, r->table, strlen(r->table)) == 0;
    return strcmp(r->table, row->table) == 0;
}

/* output (name, value) pairs of a data query, "*" expanded, later duplicates replacing */
typedef struct pair {
    const char *name;
    const rval_t *v;
} pair_t;

static int add_pair(pair_t *ps, int n, int max, const char *name, const rval_t *v, int dedup)
{
    for (int i = 0; dedup && i < n; i++)
        if (strcmp(ps[i].name, name) == 0) {
            ps[i].v = v;
            return n;
        }
    if (n < max) ps[n++] = (pair_t){name, v};
    return n;
}

static void text_of(rbuf_t *b, const rval_t *v)
{
    switch (v->t) {
    case SQLITE_INTEGER:
        rb_int(b, v->i);
        break;
    case SQLITE_FLOAT:
        rj_double(b, v->d, 1);
        break;
    case SQLITE_TEXT:
        rb_put(b, v->s, v->n);
        break;
    default:
        break;
    }
}

static void ops_push(rules_ops_t *ops, rules_op_t *op)
{
    for (size_t i = 0; i < ops->n; i++) {
        rules_op_t *o = &ops->items[i];
        if (strcmp(o->bucket, op->bucket) == 0 && strcmp(o->object_type, op->object_type) == 0 &&
            strcmp(o->object_id, op->object_id) == 0) {
            free(o->bucket);
            *o = *op;
            return;
        }
    }
    if (ops->n == ops->cap) {
        ops->cap = ops->cap ? ops->cap * 2 : 8;
        ops->items = rx_realloc(ops->items, sizeof(rules_op_t) * ops->cap);
    }
    ops->items[ops->n++] = *op;
}

void rules_ops_free(rules_ops_t *ops)
{
    if (!ops) return;
    for (size_t i = 0; i < ops->n; i++)
        free(ops->items[i].bucket); /* one block with the other strings */
    free(ops->items);
    memset(ops, 0, sizeof *ops);
}

static void bucket_id(rbuf_t *b, const char *version, const rdef_t *def, const binding_t *bd)
{
    b->n = 0;
    if (version) {
        rb_puts(b, version);
        rb_putc(b, '#');
    }
    rb_puts(b, def->name);
    rb_putc(b, '[');
    for (int p = 0; p < def->nparams; p++) {
        if (p) rb_putc(b, ',');
        rj_key_value(b, &bd->v[p]);
    }
    rb_putc(b, ']');
}

static void eval_data(rules_set_t *set, rowctx_t *rc, const char *version, const rdataq_t *dq,
                      rules_ops_t *out, rules_error_t *err)
{
    const rrowq_t *r = &dq->r;
    if (run_rowq(set, rc, r, err)) return;
    blist_t bl = {0};
    walk(rc, r->filt, &bl);
    if (bl.n == 0) {
        done_rowq(rc);
        free(bl.b);
        return;
    }
    rctx_t *c = rc->c;
    /* data JSON, once for all buckets */
    pair_t ps[512];
    int np = 0;
    const rval_t *idv = NULL;
    /* names can only repeat when "*" is combined with other outputs (or a second "*") */
    int dedup = 0, nstar = 0;
    for (int i = 0; i < r->nouts; i++)
        nstar += r->outs[i].star;
    dedup = nstar > 0 && r->nouts > 1;
    for (int i = 0; i < r->nouts; i++) {
        const rout_t *o = &r->outs[i];
        if (o->star) {
            for (size_t k = 0; k < rc->row->ncols; k++) {
                const char *nm = rc->row->names[k];
                if (nm[0] == '_') continue;
                np = add_pair(ps, np, 512, nm, &c->vals[k], dedup);
            }
        } else {
            np = add_pair(ps, np, 512, o->name, slot_val(rc, o->v), dedup);
        }
    }
    c->json.n = 0;
    rb_putc(&c->json, '{');
    int first = 1;
    for (int i = 0; i < np; i++) {
        if (strcmp(ps[i].name, "id") == 0) idv = ps[i].v;
        if (ps[i].v->t == SQLITE_BLOB) continue;
        if (!first) rb_putc(&c->json, ',');
        first = 0;
        rj_string(&c->json, ps[i].name, strlen(ps[i].name));
        rb_putc(&c->json, ':');
        rj_value(&c->json, ps[i].v);
    }
    rb_putc(&c->json, '}');
    c->tmp.n = 0;
    if (idv) text_of(&c->tmp, idv);
    char *object_id = rb_strdup(&c->tmp);
    const char *otype = dq->out_table ? dq->out_table : rc->row->table;
    const char *parts[6] = {"put.", otype, ".", object_id, ".", c->json.p};
    size_t lens[6] = {4, strlen(otype), 1, strlen(object_id), 1, c->json.n};
    uint32_t sum = rchecksum_parts(c->md, parts, lens, 6);
    /* one op per distinct bucket */
    for (size_t i = 0; i < bl.n; i++) {
        bucket_id(&c->key, version, dq->def, &bl.b[i]);
        /* one allocation per op: bucket, type, id and data live in one block owned by
         * .bucket (rules_ops_free frees only that) */
        size_t lb = c->key.n + 1, lt = strlen(otype) + 1, li = strlen(object_id) + 1;
        char *blk = rx_malloc(lb + lt + li + c->json.n + 1);
        memcpy(blk, c->key.p, lb);
        memcpy(blk + lb, otype, lt);
        memcpy(blk + lb + lt, object_id, li);
        memcpy(blk + lb + lt + li, c->json.p, c->json.n + 1);
        rules_op_t op = {blk,       blk + lb, blk + lb + lt, blk + lb + lt + li,
                         c->json.n, sum,      dq->def->name};
        ops_push(out, &op);
    }
    free(object_id);
    free(bl.b);
    done_rowq(rc);
}

int rules_eval_row(rules_set_t *set, const char *version, const rules_row_t *row, rules_ops_t *out,
                   rules_error_t *err)
{
    if (err) memset(err, 0, sizeof *err);
    rctx_t *c = rctx_get(set);
    if (!c) {
        rctx_seterr(err, RULES_ENOMEM, "could not open an evaluation database");
        return RULES_ENOMEM;
    }
    rowctx_t rc = {row, c, NULL, 0, {{0}}, NULL};
    int converted = 0;
    for (int i = 0; i < set->ndqs; i++) {
        const rdataq_t *dq = set->dqs[i];
        if (!table_matches(&dq->r, row)) continue;
        if (!converted) {
            rctx_convert_row(set, c, row);
            converted = 1;
        }
        eval_data(set, &rc, version, dq, out, err);
        rctx_release_holds(c);
    }
    if (set->splan) {
        if (!converted) rctx_convert_row(set, c, row);
        sv_eval_row(set, c, version, row, out, err);
        rctx_release_holds(c);
    }
    free(rc.colidx);
    rctx_put(set, c);
    return err && err->code ? err->code : 0;
}

/* ---- lookups -------------------------------------------------------------------------- */

void rules_lookups_free(rules_lookups_t *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].params);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* the reference's lookup key: definition name, the query's 1-based id, the values */
static void lookup_key(rbuf_t *b, const rparamq_t *pq, const rval_t *vals, int n)
{
    b->n = 0;
    rb_puts(b, pq->def->name);
    rb_putc(b, '/');
    rb_int(b, pq->index + 1);
    rb_putc(b, '[');
    for (int i = 0; i < n; i++) {
        if (i) rb_putc(b, ',');
        rj_key_value(b, &vals[i]);
    }
    rb_putc(b, ']');
}

int rules_eval_lookups(rules_set_t *set, const rules_row_t *row, rules_lookups_t *out,
                       rules_error_t *err)
{
    if (err) memset(err, 0, sizeof *err);
    rctx_t *c = rctx_get(set);
    if (!c) {
        rctx_seterr(err, RULES_ENOMEM, "could not open an evaluation database");
        return RULES_ENOMEM;
    }
    rowctx_t rc = {row, c, NULL, 0, {{0}}, NULL};
    int converted = 0;
    for (int i = 0; i < set->nlqs; i++) {
        const rparamq_t *pq = set->lqs[i];
        const rrowq_t *r = &pq->r;
        if (!table_matches(r, row)) continue;
        if (!converted) {
            rctx_convert_row(set, c, row);
            converted = 1;
        }
        if (run_rowq(set, &rc, r, err)) continue;
        blist_t bl = {0};
        walk(&rc, r->filt, &bl);
        if (bl.n) {
            /* params: row-derived outputs */
            c->json.n = 0;
            rb_putc(&c->json, '{');
            int first = 1;
            for (int k = 0; k < r->nouts; k++) {
                const rout_t *o = &r->outs[k];
                if (o->from_req) continue;
                const rval_t *v = slot_val(&rc, o->v);
                if (!first) rb_putc(&c->json, ',');
                first = 0;
                rj_string(&c->json, o->name, strlen(o->name));
                rb_putc(&c->json, ':');
                if (v->t == SQLITE_BLOB)
                    rb_puts(&c->json, "null");
                else
                    rj_value(&c->json, v);
            }
            rb_putc(&c->json, '}');
            unsigned all = pq->ninputs >= 32 ? 0xffffffffu : (1u << pq->ninputs) - 1;
            for (size_t x = 0; x < bl.n; x++) {
                if ((bl.b[x].set & all) != all) continue;
                lookup_key(&c->key, pq, bl.b[x].v, pq->ninputs);
                int dup = 0;
                for (size_t y = 0; y < out->n; y++)
                    if (strcmp(out->items[y].key, c->key.p) == 0 &&
                        strcmp(out->items[y].params, c->json.p) == 0)
                        dup = 1;
                if (dup) continue;
                if (out->n == out->cap) {
                    out->cap = out->cap ? out->cap * 2 : 4;
                    out->items = rx_realloc(out->items, sizeof(rules_lookup_t) * out->cap);
                }
                out->items[out->n++] =
                    (rules_lookup_t){rb_strdup(&c->key), rb_strdup(&c->json), pq->def->name};
            }
        }
        free(bl.b);
        done_rowq(&rc);
        rctx_release_holds(c);
    }
    if (set->splan && set->splan->nlookups) {
        if (!converted) rctx_convert_row(set, c, row);
        sv_eval_lookups(set, c, row, out, err);
        rctx_release_holds(c);
    }
    free(rc.colidx);
    rctx_put(set, c);
    return err && err->code ? err->code : 0;
}

/* ---- requests ------------------------------------------------------------------------- */

struct rules_answer {
    char **items;
    size_t n, cap;
};

int rules_answer_add(rules_answer_t *ans, const char *params_json)
{
    if (ans->n == ans->cap) {
        ans->cap = ans->cap ? ans->cap * 2 : 4;
        ans->items = rx_realloc(ans->items, sizeof(char *) * ans->cap);
    }
    ans->items[ans->n++] = rx_strdup(params_json);
    return 0;
}

static void answer_clear(rules_answer_t *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->items[i]);
    free(a->items);
    memset(a, 0, sizeof *a);
}

void rules_buckets_free(rules_buckets_t *b)
{
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->items[i].bucket);
        free(b->items[i].reasons);
    }
    free(b->items);
    for (size_t i = 0; i < b->nunresolved; i++)
        free(b->unresolved[i].key);
    free(b->unresolved);
    free(b->streams);
    for (size_t i = 0; i < b->nerrors; i++) {
        free(b->errors[i].stream);
        free(b->errors[i].message);
    }
    free(b->errors);
    memset(b, 0, sizeof *b);
}

/* ---- the buckets of a request --------------------------------------------------------- */

static uint32_t racc_hash(const char *id)
{
    uint32_t h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h;
}

/* the slot of id in a->idx[k] (holding its index + 1, or 0 where it would go) */
static size_t racc_slot(const racc_t *a, int k, const char *id)
{
    size_t mask = a->icap[k] - 1, i = racc_hash(id) & mask;
    while (a->idx[k][i] != 0 && strcmp(a->v[k][a->idx[k][i] - 1].bucket, id) != 0)
        i = (i + 1) & mask;
    return i;
}

/* keep the index at most half full */
static void racc_grow_index(racc_t *a, int k)
{
    if ((a->n[k] + 1) * 2 <= a->icap[k]) return;
    size_t cap = a->icap[k] ? a->icap[k] * 2 : 32;
    free(a->idx[k]);
    a->idx[k] = rx_calloc(cap, sizeof(uint32_t));
    a->icap[k] = cap;
    for (size_t i = 0; i < a->n[k]; i++)
        a->idx[k][racc_slot(a, k, a->v[k][i].bucket)] = (uint32_t)(i + 1);
}

int racc_add(racc_t *a, int dynamic, const char *id, int priority, const char *definition,
             int query_index, const char *query, int reason, rules_error_t *err)
{
    int k = dynamic ? 1 : 0;
    racc_grow_index(a, k);
    size_t slot = racc_slot(a, k, id);
    if (a->idx[k][slot] != 0) {
        rules_bucket_t *b = &a->v[k][a->idx[k][slot] - 1];
        if (priority < b->priority) b->priority = priority;
        b->reasons = rx_realloc(b->reasons, sizeof(int) * (b->nreasons + 1));
        b->reasons[b->nreasons++] = reason;
        return 0;
    }
    if (a->n[0] + a->n[1] >= a->max) {
        rctx_seterr(err, RULES_ELIMIT,
                    "too many buckets: more than %zu for one request (bucket definition or "
                    "stream \"%s\")",
                    a->max, definition);
        return RULES_ELIMIT;
    }
    if (a->n[k] == a->cap[k]) {
        a->cap[k] = a->cap[k] ? a->cap[k] * 2 : 8;
        a->v[k] = rx_realloc(a->v[k], sizeof(rules_bucket_t) * a->cap[k]);
        a->seq[k] = rx_realloc(a->seq[k], sizeof(size_t) * a->cap[k]);
    }
    int *reasons = rx_malloc(sizeof(int));
    reasons[0] = reason;
    a->seq[k][a->n[k]] = a->next++;
    a->v[k][a->n[k]++] =
        (rules_bucket_t){rx_strdup(id), priority, definition, query_index, query, reasons, 1};
    a->idx[k][slot] = (uint32_t)a->n[k];
    return 0;
}

static int cmp_seq(const void *x, const void *y, void *arg)
{
    const size_t *seq = arg, a = seq[*(const size_t *)x], b = seq[*(const size_t *)y];
    return a < b ? -1 : a > b;
}

void racc_finish(racc_t *a, rules_buckets_t *out)
{
    size_t n = a->n[0] + a->n[1], m = 0;
    rules_bucket_t *v = rx_calloc(n + 1, sizeof(rules_bucket_t));
    size_t *seq = rx_calloc(n + 1, sizeof(size_t));
    for (size_t i = 0; i < a->n[0]; i++) {
        v[m] = a->v[0][i];
        seq[m++] = a->seq[0][i];
    }
    size_t nstatic = m;
    for (size_t i = 0; i < a->n[1]; i++) {
        rules_bucket_t *b = &a->v[1][i];
        size_t j = nstatic;
        if (a->icap[0] > 0) { /* static buckets are v[0..nstatic) in a->v[0]'s order */
            size_t slot = racc_slot(a, 0, b->bucket);
            if (a->idx[0][slot] != 0) j = a->idx[0][slot] - 1;
        }
        if (j < nstatic) {
            free(v[j].bucket);
            free(v[j].reasons);
            v[j] = *b;
            if (a->seq[1][i] < seq[j]) seq[j] = a->seq[1][i];
            continue;
        }
        v[m] = *b;
        seq[m++] = a->seq[1][i];
    }
    /* stable order by first appearance (seq values are distinct) */
    if (m > 1) {
        size_t *ord = rx_calloc(m, sizeof(size_t));
        for (size_t i = 0; i < m; i++)
            ord[i] = i;
        qsort_r(ord, m, sizeof(size_t), cmp_seq, seq);
        rules_bucket_t *sorted = rx_calloc(m, sizeof(rules_bucket_t));
        for (size_t i = 0; i < m; i++)
            sorted[i] = v[ord[i]];
        memcpy(v, sorted, m * sizeof(rules_bucket_t));
        free(sorted);
        free(ord);
    }
    for (size_t i = 0; i < m; i++) {
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 8;
            out->items = rx_realloc(out->items, sizeof(rules_bucket_t) * out->cap);
        }
        out->items[out->n++] = v[i];
    }
    free(v);
    free(seq);
    for (int k = 0; k < 2; k++) {
        free(a->v[k]);
        free(a->seq[k]);
        free(a->idx[k]);
    }
    memset(a, 0, sizeof *a);
}

void racc_free(racc_t *a)
{
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < a->n[k]; i++) {
            free(a->v[k][i].bucket);
            free(a->v[k][i].reasons);
        }
        free(a->v[k]);
        free(a->seq[k]);
        free(a->idx[k]);
    }
    memset(a, 0, sizeof *a);
}

typedef struct reqctx {
    rules_set_t *set;
    rctx_t *c;
    const char *version;
    const char *sub;
    const char *claims;
    const char *params;
    const rules_request_t *req;
    rules_buckets_t *out;
    rules_error_t *err;
    size_t max;
    racc_t *acc;
} reqctx_t;

/* bucket definitions are default streams: their buckets' reason is "default" */
static int add_bucket(reqctx_t *q, const rparamq_t *pq, const binding_t *b, int prio)
{
    rbuf_t *key = &q->c->key;
    bucket_id(key, q->version, pq->def, b);
    return racc_add(q->acc, pq->kind == PQ_LOOKUP, key->p, prio, pq->def->name, pq->index, pq->src,
                    RULES_REASON_DEFAULT, q->err);
}

static int prio_of(const rparamq_t *pq, const rval_t *v)
{
    if (v && (v->t == SQLITE_INTEGER || v->t == SQLITE_FLOAT)) {
        double d = v->t == SQLITE_INTEGER ? (double)v->i : v->d;
        if (d >= 0 && d <= 3 && d == (int)d) return (int)d;
    }
    return pq->def->priority;
}

static sqlite3_stmt *bind_req(reqctx_t *q, int idx)
{
    sqlite3_stmt *st = rctx_stmt(q->set, q->c, idx, q->err);
    if (!st) return NULL;
    int np = sqlite3_bind_parameter_count(st);
    if (np >= 1) {
        if (q->sub)
            sqlite3_bind_text(st, 1, q->sub, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 1);
    }
    if (np >= 2) sqlite3_bind_text(st, 2, q->claims, -1, SQLITE_STATIC);
    if (np >= 3) sqlite3_bind_text(st, 3, q->params, -1, SQLITE_STATIC);
    return st;
}

static int run_direct(reqctx_t *q, const rparamq_t *pq)
{
    sqlite3_stmt *st = bind_req(q, pq->req_stmt);
    if (!st) return RULES_EEVAL;
    int rc, res = 0;
    int rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (++rows > MAX_BINDINGS) break;
        binding_t b;
        b.set = 0;
        rval_t prio = null_val;
        for (int i = 0; i < pq->nnames; i++) {
            rval_t v;
            rv_from_column(&v, st, i);
            if (v.t == SQLITE_BLOB) v.t = SQLITE_NULL;
            if (i == pq->prio_out)
                prio = v;
            else if (pq->param_of[i] >= 0 && pq->param_of[i] < MAX_PARAMS)
                b.v[pq->param_of[i]] = v;
        }
        if ((res = add_bucket(q, pq, &b, prio_of(pq, pq->prio_out >= 0 ? &prio : NULL)))) break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rctx_seterr(q->err, RULES_EEVAL, "could not evaluate parameter query of \"%s\": %s",
                    pq->def->name, sqlite3_errmsg(q->c->db));
        res = RULES_EEVAL;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return res;
}

static int run_lookup(reqctx_t *q, const rparamq_t *pq)
{
    rctx_t *c = q->c;
    rval_t res[64];
    int nres = 0;
    sqlite3_stmt *st = NULL;
    if (pq->req_stmt >= 0) {
        st = bind_req(q, pq->req_stmt);
        if (!st) return RULES_EEVAL;
        if (sqlite3_step(st) != SQLITE_ROW) {
            rctx_seterr(q->err, RULES_EEVAL, "could not evaluate parameter query of \"%s\": %s",
                        pq->def->name, sqlite3_errmsg(c->db));
            sqlite3_reset(st);
            return RULES_EEVAL;
        }
        nres = sqlite3_column_count(st);
        if (nres > 64) nres = 64;
        for (int i = 0; i < nres; i++)
            rv_from_column(&res[i], st, i);
    }
    int rcode = 0;
    if (pq->req_pred_col >= 0 && !rv_truthy(&res[pq->req_pred_col])) goto done;
    /* lookup keys: inputs, one expanding. A NULL request value (or a null element of the
     * expanding array) is looked up as null, as the reference does: it finds the [null] entries
     * of "request IN row array" and "row IN request array", never those of "=" (none exist) */
    rval_t in[32];
    for (int i = 0; i < pq->ninputs; i++) {
        in[i] = res[i];
        if (in[i].t == SQLITE_BLOB) goto done;
    }
    json_t *arr = NULL;
    size_t nkeys = 1;
    if (pq->expand_input >= 0) {
        arr = rctx_json_array(c, &in[pq->expand_input]);
        if (!arr) goto done;
        nkeys = json_array_size(arr);
    }
    rules_answer_t ans = {0};
    for (size_t k = 0; k < nkeys && !rcode; k++) {
        if (arr) rctx_rv_from_json(c, json_array_get(arr, k), &in[pq->expand_input]);
        lookup_key(&c->key, pq, in, pq->ninputs);
        if (!q->req->lookup) {
            rules_buckets_t *o = q->out;
            if (o->nunresolved == o->capunresolved) {
                o->capunresolved = o->capunresolved ? o->capunresolved * 2 : 4;
                o->unresolved =
                    rx_realloc(o->unresolved, sizeof(rules_unresolved_t) * o->capunresolved);
            }
            o->unresolved[o->nunresolved++] =
                (rules_unresolved_t){pq->def->name, pq->src, pq->index, rb_strdup(&c->key)};
            continue;
        }
        char *keycopy = rb_strdup(&c->key);
        int lr = q->req->lookup(q->req->lookup_arg, keycopy, &ans);
        free(keycopy);
        if (lr < 0) {
            rctx_seterr(q->err, RULES_ELOOKUP, "lookup for bucket definition \"%s\" failed",
                        pq->def->name);
            rcode = RULES_ELOOKUP;
            break;
        }
        for (size_t a = 0; a < ans.n && !rcode; a++) {
            json_t *obj = json_loads(ans.items[a], 0, NULL);
            if (!obj || !json_is_object(obj)) {
                json_decref(obj);
                continue;
            }
            rctx_hold_json(c, obj);
            binding_t b;
            b.set = 0;
            rval_t prio = null_val;
            for (int i = 0; i < pq->nnames; i++) {
                const rout_t *o = &pq->r.outs[i];
                rval_t v = null_val;
                if (o->from_req) {
                    if (o->reqcol >= 0 && o->reqcol < nres) v = res[o->reqcol];
                } else {
                    json_t *j = json_object_get(obj, o->name);
                    if (j) rctx_rv_from_json(c, j, &v);
                }
                if (i == pq->prio_out)
                    prio = v;
                else if (pq->param_of[i] >= 0 && pq->param_of[i] < MAX_PARAMS)
                    b.v[pq->param_of[i]] = v;
            }
            rcode = add_bucket(q, pq, &b, prio_of(pq, pq->prio_out >= 0 ? &prio : NULL));
        }
        answer_clear(&ans);
    }
    answer_clear(&ans);
done:
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    return rcode;
}

int rules_eval_request(rules_set_t *set, const char *version, const rules_request_t *req,
                       rules_buckets_t *out, rules_error_t *err)
{
    if (err) memset(err, 0, sizeof *err);
    json_t *claims = json_loads(req->claims_json ? req->claims_json : "", 0, NULL);
    if (!claims || !json_is_object(claims)) {
        json_decref(claims);
        rctx_seterr(err, RULES_EINVAL, "token claims are not a JSON object");
        return RULES_EINVAL;
    }
    json_t *params = NULL;
    if (req->params_json) {
        params = json_loads(req->params_json, 0, NULL);
        if (!params || !(json_is_object(params) || json_is_null(params))) {
            json_decref(params);
            json_decref(claims);
            rctx_seterr(err, RULES_EINVAL, "client parameters are not a JSON object");
            return RULES_EINVAL;
        }
    }
    rctx_t *c = rctx_get(set);
    if (!c) {
        json_decref(params);
        json_decref(claims);
        rctx_seterr(err, RULES_ENOMEM, "could not open an evaluation database");
        return RULES_ENOMEM;
    }
    json_t *sub = json_object_get(claims, "sub");
    char subbuf[32];
    const char *subs = NULL;
    if (json_is_string(sub))
        subs = json_string_value(sub);
    else if (json_is_integer(sub)) {
        snprintf(subbuf, sizeof subbuf, "%lld", (long long)json_integer_value(sub));
        subs = subbuf;
    }
    int has_params = params && json_is_object(params);
    racc_t acc = {0};
    acc.max = req->max_buckets ? req->max_buckets : 1000;
    reqctx_t q = {
        set, c,   version, subs, req->claims_json, has_params ? req->params_json : "{}", req,
        out, err, acc.max, &acc};
    int rc = 0;
    for (int d = 0; d < set->ndefs && !rc; d++) {
        rdef_t *def = set->defs[d];
        /* a bucket definition is a default stream (or subscribed to by its name) */
        int subscribed = !req->exclude_defaults;
        for (size_t i = 0; i < req->nsubs && !subscribed; i++)
            subscribed = strcmp(req->subs[i].stream, def->name) == 0;
        if (!subscribed) continue;
        out->streams = rx_realloc(out->streams, sizeof(rules_stream_ref_t) * (out->nstreams + 1));
        out->streams[out->nstreams++] = (rules_stream_ref_t){def->name, 1};
        for (int k = 0; k < def->npq && !rc; k++) {
            const rparamq_t *pq = def->pq[k];
            rc = pq->kind == PQ_LOOKUP ? run_lookup(&q, pq) : run_direct(&q, pq);
            rctx_release_holds(c);
        }
    }
    if (!rc && (set->splan || req->nsubs))
        rc = sv_eval_request(set, c, version, req, req->claims_json,
                             has_params ? req->params_json : "{}", &acc, out, err);
    if (rc)
        racc_free(&acc);
    else
        racc_finish(&acc, out);
    rctx_put(set, c);
    json_decref(params);
    json_decref(claims);
    return rc;
}
