/* rules_stream_compile.c -- compile edition-3 Sync Streams into a plan
 *
 * Input: the streams of one file (sc_begin .. sc_end, driven by rules_compile.c), each a name,
 * options and one or more SELECTs (rules_stream_parse.c), plus common table expressions from
 * `with:`. Output: the splan_t of rules_stream.h: data sources (which bucket a row goes to, with
 * which data), parameter indexes (lookup entries built from rows), buckets, and per stream the
 * queriers that turn a subscription into bucket ids. Bucket ids, lookup keys and their order
 * must equal what the PowerSync reference compiler (@powersync/service-sync-rules, the test
 * oracle) produces for the same file, so the steps follow its algorithm:
 *
 *  1. translate   SQL expressions into sexpr_t over result sets: physical tables, table-valued
 *                 functions (json_each), subqueries and CTEs inlined; `x IN y` becomes
 *                 `x = json_each(y).value`, `x IN (SELECT ..)` an equality with the subquery's
 *                 column plus its filters, `auth.user_id()` becomes `auth ->> '$.sub'`
 *  2. normalize   the WHERE clause (every FROM/ON/subquery filter ANDed) into a disjunction of
 *                 conjunctions; each base term is either an equality between two expressions
 *                 of different sources or an expression of one source; terms of one source are
 *                 merged (filter_simplify)
 *  3. resolve     per conjunction (a "variant"), starting from the selected table: its row
 *                 filters and partition keys (bucket parameters); the other side of each
 *                 equality is request data or a lookup into another table, resolved the same
 *                 way (resolve_rs), in stages; equalities with request data on both sides of a
 *                 lookup become EXISTS-style lookups
 *  4. canonical   equal row evaluators and point lookups are shared (compared by a canonical
 *                 text: expression SQL plus the columns it reads), buckets of one stream with
 *                 the same instantiation are merged, and buckets with the same set of
 *                 evaluators are shared across streams (first name wins); partition keys are
 *                 ordered by the reference's stable hash (Jenkins, as in Dart) of their SQL
 *  5. prepare     SQLite statements for evaluation (se_sql)
 *
 * Errors go to the file's diagnostics with the position of the offending token and compiling
 * goes on, so one run reports what it can. Memory: everything lives in the plan's arena.
 */
#include "rules_stream.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- diagnostics ---------------------------------------------------------------------- */

void s_diag(scompile_t *c, int warning, const ssrc_t *src, int off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int line = 0, col = 0;
    if (src) rpos_map(&src->pm, off, &line, &col);
    rdiag_add(c->d, warning, line, col, "%s", buf);
}

/* ---- small growable arrays in the arena ----------------------------------------------- */

#define VEC(T)                                                                                     \
    struct {                                                                                       \
        T *v;                                                                                      \
        int n, cap;                                                                                \
    }

#define VPUSH(a, vec, x)                                                                           \
    do {                                                                                           \
        if ((vec).n == (vec).cap) {                                                                \
            int nc_ = (vec).cap ? (vec).cap * 2 : 8;                                               \
            void *nv_ = ra_alloc((a), sizeof(*(vec).v) * (size_t)nc_);                             \
            if ((vec).n) memcpy(nv_, (vec).v, sizeof(*(vec).v) * (size_t)(vec).n);                 \
            (vec).v = nv_;                                                                         \
            (vec).cap = nc_;                                                                       \
        }                                                                                          \
        (vec).v[(vec).n++] = (x);                                                                  \
    } while (0)

/* ---- expressions: construction, instantiation, SQL text, canonical keys, hashing --------- */

static sexpr_t *ex_new(rarena_t *a, ekind_t k, const ssrc_t *src, int off, int end)
{
    sexpr_t *e = ra_alloc(a, sizeof *e);
    e->k = k;
    e->src = src;
    e->off = off;
    e->end = end;
    return e;
}

static sexpr_t *ex_lit(rarena_t *a, ekind_t k, const char *text, const ssrc_t *src, int off,
                       int end)
{
    sexpr_t *e = ex_new(a, k, src, off, end);
    e->text = text;
    return e;
}

static sexpr_t *ex_op(rarena_t *a, ekind_t k, const char *op, int n, const ssrc_t *src, int off,
                      int end)
{
    sexpr_t *e = ex_new(a, k, src, off, end);
    e->op = op;
    e->na = n;
    e->a = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(n + 1));
    return e;
}

static sexpr_t *ex_bin(rarena_t *a, const char *op, sexpr_t *l, sexpr_t *r, const ssrc_t *src,
                       int off, int end)
{
    sexpr_t *e = ex_op(a, E_BINARY, op, 2, src, off, end);
    e->a[0] = l;
    e->a[1] = r;
    return e;
}

static sexpr_t *ex_not(rarena_t *a, sexpr_t *inner, const ssrc_t *src, int off, int end)
{
    sexpr_t *e = ex_op(a, E_UNARY, "not", 1, src, off, end);
    e->a[0] = inner;
    return e;
}

/* visit the data references of e in order (the reference's "instantiation") */
typedef void (*ref_fn)(sref_t *r, void *arg);

static void ex_refs(const sexpr_t *e, ref_fn fn, void *arg)
{
    if (!e) return;
    if (e->k == E_DATA) {
        fn(e->ref, arg);
        return;
    }
    for (int i = 0; i < e->na; i++)
        ex_refs(e->a[i], fn, arg);
}

typedef struct reflist {
    sref_t **v;
    int n, cap;
} reflist_t;

static void collect_ref(sref_t *r, void *arg)
{
    reflist_t *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->v = rx_realloc(l->v, sizeof(sref_t *) * (size_t)l->cap);
    }
    l->v[l->n++] = r;
}

/* SQL text of an expression with every data reference written as "?", exactly as the
 * reference's ExpressionToSqlite renders it (its hash and equality depend on this text) */
enum { P_OR = 1, P_AND, P_NOT, P_EQ, P_CMP, P_BIN, P_ADD, P_MUL, P_CONCAT, P_COLLATE, P_UNARY };

typedef struct rsql {
    rbuf_t *b;
    int need_space;
} rsql_t;

static void lexeme(rsql_t *r, const char *t, int space_left, int space_right)
{
    if (r->need_space && space_left) rb_putc(r->b, ' ');
    rb_puts(r->b, t);
    r->need_space = space_right;
}

static void lex_quoted(rsql_t *r, const char *s, char q)
{
    rbuf_t t = {0};
    rb_putc(&t, q);
    for (; *s; s++) {
        if (*s == q) rb_putc(&t, q);
        rb_putc(&t, *s);
    }
    rb_putc(&t, q);
    lexeme(r, t.p, 1, 1);
    rb_free(&t);
}

static int bin_prec(const char *op)
{
    static const struct {
        const char *op;
        int p;
    } t[] = {{"or", P_OR},  {"and", P_AND}, {"=", P_EQ},      {"is", P_EQ}, {"<", P_CMP},
             {">", P_CMP},  {"<=", P_CMP},  {">=", P_CMP},    {"&", P_BIN}, {"|", P_BIN},
             {"<<", P_BIN}, {">>", P_BIN},  {"+", P_ADD},     {"-", P_ADD}, {"*", P_MUL},
             {"/", P_MUL},  {"%", P_MUL},   {"||", P_CONCAT}, {NULL, 0}};
    for (int i = 0; t[i].op; i++)
        if (strcmp(t[i].op, op) == 0) return t[i].p;
    return P_BIN;
}

static void js_number(rbuf_t *b, double d)
{
    /* JS Number#toString; integral values get ".0" as in the reference's literal rendering */
    rj_double(b, d, 1);
}

static void rsql_expr(rsql_t *r, const sexpr_t *e, int outer);

static void rsql_list(rsql_t *r, sexpr_t *const *v, int n)
{
    for (int i = 0; i < n; i++) {
        if (i) lexeme(r, ",", 0, 1);
        rsql_expr(r, v[i], 0);
    }
}

static void rsql_expr(rsql_t *r, const sexpr_t *e, int outer)
{
    int inner, paren;
    switch (e->k) {
    case E_DATA:
        lexeme(r, "?", 1, 1);
        break;
    case E_UNARY:
        inner = strcmp(e->op, "not") == 0 ? P_NOT : P_UNARY;
        paren = outer >= inner;
        if (paren) lexeme(r, "(", 1, 0);
        lexeme(r, e->op, 1, 1);
        rsql_expr(r, e->a[0], inner);
        if (paren) lexeme(r, ")", 0, 1);
        break;
    case E_BINARY:
        inner = bin_prec(e->op);
        paren = outer >= inner;
        if (paren) lexeme(r, "(", 1, 0);
        rsql_expr(r, e->a[0], inner);
        lexeme(r, e->op, 1, 1);
        rsql_expr(r, e->a[1], inner);
        if (paren) lexeme(r, ")", 0, 1);
        break;
    case E_BETWEEN:
        paren = outer >= P_EQ;
        if (paren) lexeme(r, "(", 1, 0);
        rsql_expr(r, e->a[0], P_EQ);
        lexeme(r, "BETWEEN", 1, 1);
        rsql_expr(r, e->a[1], P_EQ);
        lexeme(r, "AND", 1, 1);
        rsql_expr(r, e->a[2], P_EQ);
        if (paren) lexeme(r, ")", 0, 1);
        break;
    case E_SCALAR_IN:
        if (e->na <= 1) {
            lexeme(r, "FALSE", 1, 1);
            break;
        }
        paren = outer >= P_EQ;
        if (paren) lexeme(r, "(", 1, 0);
        rsql_expr(r, e->a[0], P_EQ);
        lexeme(r, "IN", 1, 1);
        lexeme(r, "(", 1, 0);
        rsql_list(r, e->a + 1, e->na - 1);
        lexeme(r, ")", 0, 1);
        if (paren) lexeme(r, ")", 0, 1);
        break;
    case E_CASE: {
        lexeme(r, "CASE", 1, 1);
        if (e->a[0]) rsql_expr(r, e->a[0], 0);
        int nw = (e->na - 2) / 2;
        for (int i = 0; i < nw; i++) {
            lexeme(r, "WHEN", 1, 1);
            rsql_expr(r, e->a[1 + 2 * i], 0);
            lexeme(r, "THEN", 1, 1);
            rsql_expr(r, e->a[2 + 2 * i], 0);
        }
        if (e->a[e->na - 1]) {
            lexeme(r, "ELSE", 1, 1);
            rsql_expr(r, e->a[e->na - 1], 0);
        }
        lexeme(r, "END", 1, 1);
        break;
    }
    case E_CAST:
        lexeme(r, "CAST(", 1, 0);
        rsql_expr(r, e->a[0], 0);
        lexeme(r, "AS", 1, 1);
        lexeme(r, e->op, 1, 1);
        lexeme(r, ")", 0, 1);
        break;
    case E_FUNC:
        lex_quoted(r, e->op, '"');
        lexeme(r, "(", 0, 0);
        rsql_list(r, e->a, e->na);
        lexeme(r, ")", 0, 1);
        break;
    case E_NULL:
        lexeme(r, "NULL", 1, 1);
        break;
    case E_INT:
        lexeme(r, e->text, 1, 1);
        break;
    case E_DOUBLE: {
        rbuf_t t = {0};
        js_number(&t, e->d);
        lexeme(r, t.p, 1, 1);
        rb_free(&t);
        break;
    }
    case E_STRING:
        lex_quoted(r, e->text, '\'');
        break;
    }
}

/** The reference's SQL text of e (data references as "?"); malloc'd. */
static char *ex_sql(const sexpr_t *e)
{
    rbuf_t b = {0};
    rsql_t r = {&b, 0};
    rsql_expr(&r, e, 0);
    char *s = rb_strdup(&b);
    rb_free(&b);
    return s;
}

static const char *req_name(int req)
{
    return req == REQ_AUTH ? "auth" : req == REQ_SUBSCRIPTION ? "subscription" : "connection";
}

static void canon_ref(sref_t *r, void *arg)
{
    rbuf_t *b = arg;
    rb_putc(b, '\x1f');
    if (r->rs) {
        rb_putc(b, 'c');
        rb_puts(b, r->column);
    } else {
        rb_putc(b, 'r');
        rb_puts(b, req_name(r->req));
    }
}

/** Canonical key of e "assuming the same result set": equal keys, equal behaviour. */
static void ex_canon(rbuf_t *b, const sexpr_t *e)
{
    char *s = ex_sql(e);
    rb_puts(b, s);
    free(s);
    ex_refs(e, canon_ref, b);
    rb_putc(b, '\x1e');
}

/* ---- the reference's stable hash (Jenkins one-at-a-time, as in Dart) -------------------- */

typedef struct shash {
    uint32_t h;
} shash_t;

#define SHASH_SEED 614160925u

static void sh_add(shash_t *s, uint32_t v)
{
    uint32_t h = (uint32_t)(((uint64_t)s->h + v) & 0x1fffffff);
    h = (h + ((0x0007ffff & h) << 10)) & 0x1fffffff;
    s->h = h ^ (h >> 6);
}

/* addString: the UTF-16 code units of s */
static void sh_str(shash_t *s, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;
    while (*p) {
        uint32_t cp;
        int n;
        if (*p < 0x80) {
            cp = *p;
            n = 1;
        } else if ((*p & 0xe0) == 0xc0 && p[1]) {
            cp = ((uint32_t)(p[0] & 0x1f) << 6) | (p[1] & 0x3f);
            n = 2;
        } else if ((*p & 0xf0) == 0xe0 && p[1] && p[2]) {
            cp = ((uint32_t)(p[0] & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
            n = 3;
        } else if ((*p & 0xf8) == 0xf0 && p[1] && p[2] && p[3]) {
            cp = ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3f) << 12) |
                 ((uint32_t)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
            n = 4;
        } else {
            cp = 0xfffd;
            n = 1;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            sh_add(s, 0xd800 + (cp >> 10));
            sh_add(s, 0xdc00 + (cp & 0x3ff));
        } else {
            sh_add(s, cp);
        }
        p += n;
    }
}

static uint32_t sh_final(const shash_t *s)
{
    uint32_t h = s->h;
    h = (h + ((0x03ffffff & h) << 3)) & 0x1fffffff;
    h = h ^ (h >> 11);
    return (h + ((0x00003fff & h) << 15)) & 0x1fffffff;
}

static void hash_ref(sref_t *r, void *arg)
{
    sh_str(arg, r->rs ? r->column : req_name(r->req));
}

/* SyncExpression.assumingSameResultSetEqualityHashCode */
static void ex_hash(shash_t *s, const sexpr_t *e)
{
    char *sql = ex_sql(e);
    sh_str(s, sql);
    free(sql);
    ex_refs(e, hash_ref, s);
}

/* ---- single-dependency expressions and terms ------------------------------------------ */

/** An expression depending on one result set (rs), or on request data (conn), or on nothing. */
typedef struct sde {
    sexpr_t *e;
    srs_t *rs;
    int conn;
} sde_t;

/** A base term of a conjunction: an expression of one source, or an equality of two. */
typedef struct sterm {
    int eq;
    sde_t a, b; /* a: the expression, or the left side of the equality */
    const ssrc_t *src;
    int off, end;
} sterm_t;

/* BaseSourceResultSet.areCompatible (may attach a static table-valued function to a table) */
static int rs_compatible(srs_t *a, srs_t *b)
{
    if (a == b) return 1;
    srs_t *t = a->kind == RS_TVF ? a : b->kind == RS_TVF ? b : NULL;
    srs_t *o = t == a ? b : a;
    if (!t) return 0;
    if (t->attach == TVF_ROW && t->input == o) return 1;
    if (t->attach == TVF_STATIC && o->kind == RS_PHYS) {
        t->attach = TVF_ROW;
        t->input = o;
        return 1;
    }
    return 0;
}

static srs_t *rs_target(srs_t *rs)
{
    return rs && rs->kind == RS_TVF && rs->attach == TVF_ROW ? rs->input : rs;
}

/* SingleDependencyExpression.extractSingleDependency: 0 when there is more than one */
static int single_dep(sref_t **refs, int n, srs_t **rs_out, int *conn_out)
{
    srs_t *rs = NULL;
    int conn = 0;
    for (int i = 0; i < n; i++) {
        sref_t *r = refs[i];
        if (r->rs) {
            if (conn || (rs && !rs_compatible(rs, r->rs))) return 0;
            rs = r->rs;
        } else {
            if (rs) return 0;
            conn = 1;
        }
    }
    *rs_out = rs;
    *conn_out = conn;
    return 1;
}

static int sde_of(sexpr_t *e, sde_t *out)
{
    reflist_t l = {0};
    ex_refs(e, collect_ref, &l);
    int ok = single_dep(l.v, l.n, &out->rs, &out->conn);
    free(l.v);
    out->e = e;
    return ok;
}

/* ---- builder state ------------------------------------------------------------------- */

typedef struct ssyn {
    const ssrc_t *src;
    int off, end;
    const char *explicit_name;
} ssyn_t;

typedef struct ssubq {
    const char **names;
    sexpr_t **exprs;
    int ncols;
    ssyn_t **tsyn;
    srs_t **trs;
    int ntables;
    sexpr_t *where;
} ssubq_t;

struct scte {
    const char *name;
    ssubq_t *q;
    int used;
    const ssrc_t *src;
    int off;
};

typedef struct sscope sscope_t;
struct sscope {
    sscope_t *parent;
    VEC(const char *) names;
    VEC(ssyn_t *) syns;
    VEC(scte_t *) ctes;
};

/* output column of a query */
typedef struct scolsrc {
    int star;
    sde_t expr;
    const char *alias;
} scolsrc_t;

typedef struct squery {
    scolsrc_t *cols;
    int ncols;
    srs_t *source;
    sterm_t ***terms; /* disjunction of conjunctions */
    int *nterms;
    int nconj;
    const ssrc_t *src;
    int off, end;
} squery_t;

/* partition keys, added functions, parameter values (compiler's intermediate form) */
typedef struct saddfn {
    srs_t *rs; /* the function's result set */
    const char *fn;
    sde_t *inputs;
    int ninputs;
    stvf_t *plan; /* set when translated */
} saddfn_t;

typedef struct spk {
    int tvf;
    sde_t expr; /* scalar: the row expression; tvf: the output expression */
    saddfn_t *fn;
    uint32_t hash;
    char *canon;
} spk_t;

typedef struct splook splook_t;

enum { PV_REQUEST = 1, PV_LOOKUP, PV_INTER };

typedef struct spv spv_t;
struct spv {
    int kind;
    sde_t expr;
    int result_index;
    splook_t *pl;
    spv_t **inner;
    int ninner;
};

typedef struct sresolved {
    VEC(sde_t) filters;
    VEC(spk_t *) keys;
    VEC(VEC(spv_t *) *) vals;
    VEC(saddfn_t *) fns;
} sresolved_t;

struct splook {
    int point;
    srs_t *source;
    sresolved_t *resolved;
    VEC(sde_t) outputs;
    VEC(spv_t *) dependents;
    sstagelk_t *mat;
};

typedef struct sstage sstage_t;
struct sstage {
    VEC(splook_t *) lookups;
    sstage_t *parent;
};

typedef struct sresolver {
    sstream_t *stream;
    VEC(sde_t) req_filters;
    sstagelk_t ***stages;
    int *nstage;
    int nstages;
    VEC(sdata_t *) evaluators;
    sval_t **inst;
    int ninst;
    char *name;
    char *canon;
    int query_index;        /* which query of the stream (0 for `query`) */
    const char *query_text; /* its text as written, in the arena */
} sresolver_t;

struct sbuilder {
    scompile_t *c;
    rarena_t *a;
    VEC(scte_t *) globals;
    sscope_t *root; /* of the current stream */
    sstream_t *stream;
    int counter;
    VEC(sresolver_t *) resolvers; /* of the current stream */
    VEC(sresolver_t *) all;       /* every stream, after merging */
    VEC(sdata_t *) evaluators;    /* canonical */
    VEC(slookup_t *) lookups;     /* canonical */
    VEC(sstream_t *) streams;
    VEC(scte_t *) all_ctes; /* for the "not used" warning */
    int rs_ids;
    const ssrc_t *first_src; /* of the stream, for stream-wide errors */
    int nqueries;            /* queries of the current stream so far */
    int first_off, first_end;
};

/* ---- scopes --------------------------------------------------------------------------- */

static char *lower_dup(rarena_t *a, const char *s)
{
    char *r = ra_strdup(a, s);
    for (char *p = r; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return r;
}

static sscope_t *scope_new(rarena_t *a, sscope_t *parent)
{
    sscope_t *s = ra_alloc(a, sizeof *s);
    s->parent = parent;
    return s;
}

static sscope_t *scope_root(sscope_t *s)
{
    while (s->parent)
        s = s->parent;
    return s;
}

static ssyn_t *scope_default(sscope_t *s)
{
    if (s->names.n == 0) return s->parent ? scope_default(s->parent) : NULL;
    return s->names.n == 1 ? s->syns.v[0] : NULL;
}

static ssyn_t *scope_find(sscope_t *s, const char *name)
{
    for (; s; s = s->parent)
        for (int i = 0; i < s->names.n; i++)
            if (strcasecmp(s->names.v[i], name) == 0) return s->syns.v[i];
    return NULL;
}

static scte_t *scope_cte(sscope_t *s, const char *name)
{
    for (; s; s = s->parent)
        for (int i = 0; i < s->ctes.n; i++)
            if (strcasecmp(s->ctes.v[i]->name, name) == 0) {
                s->ctes.v[i]->used = 1;
                return s->ctes.v[i];
            }
    return NULL;
}

/* ---- the statement parser ------------------------------------------------------------- */

typedef struct spq spq_t;
struct spq {
    sbuilder_t *b;
    const ssrc_t *src;
    sscope_t *scope;
    VEC(ssyn_t *) rs_syn;
    VEC(srs_t *) rs_rs;
    VEC(ssyn_t *) sq_syn;
    VEC(ssubq_t *) sq;
    VEC(sexpr_t *) where;
    VEC(scolsrc_t) cols;
    srs_t *primary;
    int synthetic;
    int alpha; /* editions 1-2: IN inside an expression is a scalar test, no subqueries */
};

static void err(spq_t *q, const ssrc_t *src, int off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void err(spq_t *q, const ssrc_t *src, int off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s_diag(q->b->c, 0, src ? src : q->src, off, "%s", buf);
}

static void warn(spq_t *q, const ssrc_t *src, int off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void warn(spq_t *q, const ssrc_t *src, int off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s_diag(q->b->c, 1, src ? src : q->src, off, "%s", buf);
}

static spq_t *spq_new(sbuilder_t *b, const ssrc_t *src, sscope_t *parent)
{
    spq_t *q = ra_alloc(b->a, sizeof *q);
    q->b = b;
    q->src = src;
    q->scope = scope_new(b->a, parent);
    return q;
}

static spq_t *spq_nested(spq_t *q, sscope_t *parent)
{
    spq_t *n = spq_new(q->b, q->src, parent);
    for (int i = 0; i < q->rs_syn.n; i++) {
        VPUSH(q->b->a, n->rs_syn, q->rs_syn.v[i]);
        VPUSH(q->b->a, n->rs_rs, q->rs_rs.v[i]);
    }
    for (int i = 0; i < q->sq_syn.n; i++) {
        VPUSH(q->b->a, n->sq_syn, q->sq_syn.v[i]);
        VPUSH(q->b->a, n->sq, q->sq.v[i]);
    }
    return n;
}

static void rs_set(spq_t *q, ssyn_t *syn, srs_t *rs)
{
    for (int i = 0; i < q->rs_syn.n; i++)
        if (q->rs_syn.v[i] == syn) {
            q->rs_rs.v[i] = rs;
            return;
        }
    VPUSH(q->b->a, q->rs_syn, syn);
    VPUSH(q->b->a, q->rs_rs, rs);
}

static void scope_register(spq_t *q, const char *name, ssyn_t *syn)
{
    sscope_t *s = q->scope;
    for (int i = 0; i < s->names.n; i++)
        if (strcasecmp(s->names.v[i], name) == 0) {
            err(q, syn->src, syn->off,
                "table name \"%s\" is used twice in this query; give one of them an alias", name);
            return;
        }
    VPUSH(q->b->a, s->names, lower_dup(q->b->a, name));
    VPUSH(q->b->a, s->syns, syn);
}

/* what a syntactic source resolves to: a result set or a subquery */
static void resolve_source(spq_t *q, ssyn_t *syn, srs_t **rs, ssubq_t **sq)
{
    *rs = NULL;
    *sq = NULL;
    for (int i = 0; i < q->rs_syn.n; i++)
        if (q->rs_syn.v[i] == syn) {
            *rs = q->rs_rs.v[i];
            return;
        }
    for (int i = 0; i < q->sq_syn.n; i++)
        if (q->sq_syn.v[i] == syn) {
            *sq = q->sq.v[i];
            return;
        }
}

static int resolve_table(spq_t *q, const sx_t *node, const char *name, srs_t **rs, ssubq_t **sq)
{
    ssyn_t *syn;
    if (!name) {
        syn = scope_default(q->scope);
        if (!syn) {
            err(q, node->src, node->off,
                "unqualified reference \"%s\" with more than one table in scope; write "
                "\"<table>.%s\"",
                node->name, node->name);
            return -1;
        }
    } else {
        syn = scope_find(q->scope, name);
        if (!syn) {
            err(q, node->src, node->qual_off, "table \"%s\" is not in \"FROM\" here", name);
            return -1;
        }
    }
    resolve_source(q, syn, rs, sq);
    if (!*rs && !*sq) {
        err(q, node->src, node->off, "table \"%s\" cannot be used here", name ? name : "");
        return -1;
    }
    return 0;
}

/* ---- translating expressions ---------------------------------------------------------- */

static sexpr_t *translate(spq_t *q, const sx_t *x);

static sexpr_t *bogus(spq_t *q, const sx_t *x)
{
    return ex_new(q->b->a, E_NULL, x->src, x->off, x->end);
}

static sexpr_t *invalid(spq_t *q, const sx_t *x, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static sexpr_t *invalid(spq_t *q, const sx_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    err(q, x->src, x->off, "%s", buf);
    return bogus(q, x);
}

static const struct sfn {
    const char *name;
    int min, max; /* max -1: no maximum */
} sfns[] = {
    {"hex", 1, 1},
    {"ifnull", 2, -1},
    {"iif", 3, 3},
    {"instr", 2, 2},
    {"length", 1, 1},
    {"lower", 1, 1},
    {"substring", 2, 3},
    {"typeof", 1, 1},
    {"upper", 1, 1},
    {"json_array_length", 1, 2},
    {"json_extract", 2, -1},
    {"unixepoch", 1, -1},
    {"datetime", 1, -1},
    {"base64", 1, 1},
    {"json_keys", 1, 1},
    {"uuid_blob", 1, 1},
    {"st_asgeojson", 1, 1},
    {"st_astext", 1, 1},
    {"st_x", 1, 1},
    {"st_y", 1, 1},
    {NULL, 0, 0},
};

static sexpr_t *request_param(spq_t *q, const sx_t *x, int req)
{
    rarena_t *a = q->b->a;
    sexpr_t *data = ex_new(a, E_DATA, x->src, x->off, x->end);
    data->ref = ra_alloc(a, sizeof(sref_t));
    data->ref->req = req;
    data->ref->src = x->src;
    data->ref->off = x->off;
    data->ref->end = x->end;
    if (req == REQ_SUBSCRIPTION) q->b->stream->uses_subscription = 1;
    const char *fn = x->name;
    if (strcmp(fn, "parameters") == 0) {
        if (x->nargs != 0) return invalid(q, x, "%s.parameters() takes no arguments", x->qual);
        return data;
    }
    if (strcmp(fn, "parameter") == 0) {
        if (x->nargs != 1)
            return invalid(q, x, "%s.parameter() takes one argument, the name of the parameter",
                           x->qual);
        sexpr_t *f = ex_op(a, E_FUNC, "->>", 2, x->src, x->off, x->end);
        f->request_fn = 1;
        f->a[0] = data;
        f->a[1] = translate(q, x->args[0]);
        return f;
    }
    if (strcmp(fn, "user_id") == 0) {
        if (req != REQ_AUTH)
            return invalid(q, x, "%s.user_id() does not exist; use auth.user_id()", x->qual);
        if (x->nargs != 0) return invalid(q, x, "auth.user_id() takes no arguments");
        sexpr_t *f = ex_op(a, E_FUNC, "->>", 2, x->src, x->off, x->end);
        f->request_fn = 2;
        f->a[0] = data;
        f->a[1] = ex_lit(a, E_STRING, "$.sub", x->src, x->off, x->end);
        return f;
    }
    return invalid(q, x,
                   "unknown function \"%s.%s\"; use %s.parameter('name') or %s.parameters()%s",
                   x->qual, fn, x->qual, x->qual, req == REQ_AUTH ? " or auth.user_id()" : "");
}

static sexpr_t *in_or_overlap(spq_t *q, const sx_t *x, int overlap, int negated);

static sexpr_t *translate(spq_t *q, const sx_t *x)
{
    rarena_t *a = q->b->a;
    sexpr_t *e;
    switch (x->k) {
    case SX_NULL:
        return ex_new(a, E_NULL, x->src, x->off, x->end);
    case SX_BOOL:
        return ex_lit(a, E_INT, x->ival ? "1" : "0", x->src, x->off, x->end);
    case SX_STR:
        return ex_lit(a, E_STRING, x->text, x->src, x->off, x->end);
    case SX_NUM:
        e = ex_new(a, E_DOUBLE, x->src, x->off, x->end);
        e->d = strtod(x->text, NULL);
        return e;
    case SX_INT:
        return ex_lit(a, E_INT, x->text, x->src, x->off, x->end);
    case SX_REF: {
        srs_t *rs;
        ssubq_t *sq;
        if (resolve_table(q, x, x->qual, &rs, &sq) < 0) return bogus(q, x);
        if (strcmp(x->name, "*") == 0)
            return invalid(q, x, "\"*\" is not supported here; name the columns");
        if (rs) {
            e = ex_new(a, E_DATA, x->src, x->off, x->end);
            e->ref = ra_alloc(a, sizeof(sref_t));
            e->ref->rs = rs;
            e->ref->column = x->name;
            e->ref->src = x->src;
            e->ref->off = x->off;
            e->ref->end = x->end;
            return e;
        }
        for (int i = 0; i < sq->ncols; i++)
            if (strcmp(sq->names[i], x->name) == 0) return sq->exprs[i];
        return invalid(q, x, "column \"%s\" is not selected by the subquery", x->name);
    }
    case SX_PARAM:
        return invalid(q, x,
                       "SQL parameters (%s) are not supported; use auth.parameter('name'), "
                       "subscription.parameter('name') or connection.parameter('name')",
                       x->text);
    case SX_CALL: {
        if (x->qual) {
            int req = strcmp(x->qual, "auth") == 0           ? REQ_AUTH
                      : strcmp(x->qual, "subscription") == 0 ? REQ_SUBSCRIPTION
                      : strcmp(x->qual, "connection") == 0   ? REQ_CONNECTION
                                                             : 0;
            if (!req) {
                if (strcmp(x->qual, "request") == 0 || strcmp(x->qual, "token_parameters") == 0)
                    return invalid(q, x,
                                   "\"%s.%s()\" is for bucket definitions; in streams use "
                                   "auth.user_id(), auth.parameter('name'), "
                                   "subscription.parameter('name') or "
                                   "connection.parameter('name')",
                                   x->qual, x->name);
                return invalid(q, x,
                               "unknown function \"%s.%s\" (the schema must be auth, "
                               "subscription or connection)",
                               x->qual, x->name);
            }
            return request_param(q, x, req);
        }
        if (x->call_extra)
            return invalid(q, x,
                           "DISTINCT, ORDER BY, FILTER, OVER and \"*\" are not supported in "
                           "function calls; sync the rows and aggregate on the client");
        if (strcmp(x->name, "random") == 0 || strcmp(x->name, "randomblob") == 0)
            return invalid(q, x,
                           "function \"%s\" is not allowed: sync rules must be "
                           "deterministic",
                           x->name);
        const struct sfn *f = NULL;
        for (int i = 0; sfns[i].name; i++)
            if (strcmp(sfns[i].name, x->name) == 0) f = &sfns[i];
        if (!f) {
            const char *best = NULL;
            int bd = 3;
            for (int i = 0; sfns[i].name; i++) {
                int d = rsql_distance(x->name, sfns[i].name);
                if (d < bd) {
                    bd = d;
                    best = sfns[i].name;
                }
            }
            if (strcmp(x->name, "json_each") == 0)
                return invalid(q, x,
                               "json_each() is a table: use it after \"FROM\" (\"FROM t, "
                               "json_each(t.col) AS e\") or write \"x IN <json array>\"");
            if (best)
                return invalid(q, x, "unknown function \"%s\" (did you mean \"%s\"?)", x->name,
                               best);
            return invalid(q, x, "unknown function \"%s\"", x->name);
        }
        if (x->nargs < f->min)
            err(q, x->src, x->off, "function \"%s\" takes at least %d argument%s", f->name, f->min,
                f->min == 1 ? "" : "s");
        else if (f->max >= 0 && x->nargs > f->max)
            err(q, x->src, x->off, "function \"%s\" takes at most %d argument%s", f->name, f->max,
                f->max == 1 ? "" : "s");
        e = ex_op(a, E_FUNC, f->name, x->nargs, x->src, x->off, x->end);
        for (int i = 0; i < x->nargs; i++)
            e->a[i] = translate(q, x->args[i]);
        if (strcmp(f->name, "json_extract") == 0 && x->nargs >= 2 && x->args[1]->k == SX_STR &&
            x->args[1]->text[0] != '$')
            err(q, x->args[1]->src, x->args[1]->off,
                "json_extract() path must start with \"$\" (\"$.%s\")", x->args[1]->text);
        return e;
    }
    case SX_BIN: {
        const char *op = x->op;
        if (q->alpha && (strcmp(op, "IN") == 0 || strcmp(op, "NOT IN") == 0)) {
            /* the alpha form: `a IN b` inside an expression tests membership in a JSON array */
            if (x->b->k == SX_SELECT || x->b->k == SX_LIST || x->b->k == SX_ARRAY)
                return invalid(q, x->b,
                               "in this position \"IN\" needs a JSON array, not a list or a "
                               "subquery; write the condition at the top level of WHERE, or set "
                               "\"config: {edition: 3}\"");
            e = ex_op(a, E_FUNC, "ps_json_contains", 2, x->src, x->off, x->end);
            e->a[0] = translate(q, x->a);
            e->a[1] = translate(q, x->b);
            return op[0] == 'N' ? ex_not(a, e, x->src, x->off, x->end) : e;
        }
        if (q->alpha && strcmp(op, "&&") == 0)
            return invalid(q, x, "\"&&\" in streams needs edition 3; set \"config: {edition: 3}\"");
        if (strcmp(op, "IN") == 0 || strcmp(op, "NOT IN") == 0)
            return in_or_overlap(q, x, 0, op[0] == 'N');
        if (strcmp(op, "&&") == 0) return in_or_overlap(q, x, 1, 0);
        sexpr_t *l = translate(q, x->a), *r = translate(q, x->b);
        if (strstr(op, "LIKE"))
            return invalid(q, x,
                           "\"%s\" is not supported in sync streams; compare with \"=\" "
                           "or use instr()",
                           op);
        if (strcmp(op, "!=") == 0 && q->alpha) /* SQLite's operator: NULL stays NULL */
            return ex_bin(a, "!=", l, r, x->src, x->off, x->end);
        if (strcmp(op, "!=") == 0)
            return ex_not(a, ex_bin(a, "=", l, r, x->src, x->off, x->end), x->src, x->off, x->end);
        static const char *const ops[][2] = {
            {"OR", "or"}, {"AND", "and"}, {"=", "="}, {"<", "<"},   {">", ">"},   {"<=", "<="},
            {">=", ">="}, {"&", "&"},     {"|", "|"}, {"<<", "<<"}, {">>", ">>"}, {"+", "+"},
            {"-", "-"},   {"*", "*"},     {"/", "/"}, {"%", "%"},   {"||", "||"}, {NULL, NULL}};
        for (int i = 0; ops[i][0]; i++)
            if (strcmp(ops[i][0], op) == 0)
                return ex_bin(a, ops[i][1], l, r, x->src, x->off, x->end);
        return invalid(q, x, "operator \"%s\" is not supported", op);
    }
    case SX_UN: {
        const char *op = x->op;
        if (strcmp(op, "-") == 0)
            return invalid(q, x, "unary minus is not supported; write \"0 - x\" instead");
        if (strcmp(op, "+") == 0) {
            e = ex_op(a, E_UNARY, "+", 1, x->src, x->off, x->end);
            e->a[0] = translate(q, x->a);
            return e;
        }
        if (strcmp(op, "NOT") == 0) return ex_not(a, translate(q, x->a), x->src, x->off, x->end);
        if (strcmp(op, "~") == 0) return invalid(q, x, "operator \"~\" is not supported");
        int neg = strstr(op, " NOT ") != NULL;
        sexpr_t *rhs;
        if (strstr(op, "NULL"))
            rhs = ex_new(a, E_NULL, x->src, x->off, x->end);
        else
            rhs = ex_lit(a, E_INT, strstr(op, "TRUE") ? "1" : "0", x->src, x->off, x->end);
        sexpr_t *is = ex_bin(a, "is", translate(q, x->a), rhs, x->src, x->off, x->end);
        return neg ? ex_not(a, is, x->src, x->off, x->end) : is;
    }
    case SX_CAST: {
        static const char *const types[] = {"text", "numeric", "integer", "real", "blob", NULL};
        for (int i = 0; types[i]; i++)
            if (strcmp(types[i], x->name) == 0) {
                e = ex_op(a, E_CAST, types[i], 1, x->src, x->off, x->end);
                e->a[0] = translate(q, x->a);
                return e;
            }
        err(q, x->src, x->qual_off,
            "cannot cast to \"%s\" (the types are text, integer, real, numeric and blob)", x->name);
        return bogus(q, x);
    }
    case SX_TERN: {
        e = ex_op(a, E_BETWEEN, NULL, 3, x->src, x->off, x->end);
        e->a[0] = translate(q, x->a);
        e->a[1] = translate(q, x->b);
        e->a[2] = translate(q, x->c);
        return strcmp(x->op, "NOT BETWEEN") == 0 ? ex_not(a, e, x->src, x->off, x->end) : e;
    }
    case SX_CASE: {
        e = ex_op(a, E_CASE, NULL, x->nargs + 2, x->src, x->off, x->end);
        e->a[0] = x->a ? translate(q, x->a) : NULL;
        for (int i = 0; i < x->nargs; i++)
            e->a[1 + i] = translate(q, x->args[i]);
        e->a[x->nargs + 1] = x->b ? translate(q, x->b) : NULL;
        return e;
    }
    case SX_MEMBER: {
        e = ex_op(a, E_FUNC, x->op, 2, x->src, x->off, x->end);
        e->a[0] = translate(q, x->a);
        if (x->is_index)
            e->a[1] = ex_lit(a, E_INT, ra_printf(a, "%d", x->ival), x->src, x->off, x->end);
        else
            e->a[1] = ex_lit(a, E_STRING, x->text, x->src, x->off, x->end);
        return e;
    }
    case SX_SELECT:
        return invalid(q, x,
                       "a subquery is only supported after \"IN\" (\"x IN (SELECT ...)\") or in "
                       "\"FROM\"");
    case SX_ARRAY:
    case SX_LIST:
        return invalid(q, x,
                       "a list of values is only supported after \"IN\"; write \"x IN "
                       "ARRAY[a, b]\"");
    }
    return bogus(q, x);
}

static int process_ast(spq_t *q, const ssel_t *s, int for_subquery);

static sde_t must_single(spq_t *q, sexpr_t *e);

/* joinSubqueryExpression: analyze (SELECT col FROM ...) for `x IN (subquery)` */
static int join_subquery(spq_t *q, const sx_t *sel, sexpr_t ***filters, int *nfilters,
                         sexpr_t **output)
{
    spq_t *inner = spq_nested(q, q->scope);
    if (!process_ast(inner, sel->sel, 1)) return -1;
    const ssel_t *s = sel->sel;
    sx_t *col = NULL;
    if (s->ncols == 1 && !(s->cols[0].expr->k == SX_REF && strcmp(s->cols[0].expr->name, "*") == 0))
        col = s->cols[0].expr;
    if (!col) {
        err(q, sel->src, sel->off, "the subquery after \"IN\" must select exactly one column");
        return -1;
    }
    for (int i = 0; i < inner->rs_syn.n; i++)
        rs_set(q, inner->rs_syn.v[i], inner->rs_rs.v[i]);
    *filters = inner->where.v;
    *nfilters = inner->where.n;
    *output = translate(inner, col);
    return 0;
}

/* a synthetic (SELECT alias.value FROM json_each(expr) AS alias) */
static sx_t *synthetic_each(spq_t *q, const sx_t *expr)
{
    rarena_t *a = q->b->a;
    const char *alias = ra_printf(a, "synthetic:%d", q->synthetic++);
    sx_t *ref = ra_alloc(a, sizeof *ref);
    *ref = (sx_t){.k = SX_REF, .src = expr->src, .off = expr->off, .end = expr->end};
    ref->qual = alias;
    ref->qual_off = expr->off;
    ref->name = "value";
    sx_t *call = ra_alloc(a, sizeof *call);
    *call = (sx_t){.k = SX_CALL, .src = expr->src, .off = expr->off, .end = expr->end};
    call->name = "json_each";
    call->args = ra_alloc(a, sizeof(sx_t *) * 2);
    call->args[0] = (sx_t *)expr;
    call->nargs = 1;
    ssel_t *s = ra_alloc(a, sizeof *s);
    s->src = expr->src;
    s->off = expr->off;
    s->end = expr->end;
    s->distinct_off = s->group_off = s->having_off = s->order_off = s->limit_off = s->offset_off =
        s->for_off = -1;
    s->cols = ra_alloc(a, sizeof(scol_t));
    s->cols[0].expr = ref;
    s->ncols = 1;
    s->from = ra_alloc(a, sizeof(sfrom_t));
    s->from[0].kind = SF_CALL;
    s->from[0].src = expr->src;
    s->from[0].off = expr->off;
    s->from[0].end = expr->end;
    s->from[0].call = call;
    s->from[0].alias = alias;
    s->from[0].using_off = -1;
    s->nfrom = 1;
    sx_t *sel = ra_alloc(a, sizeof *sel);
    *sel = (sx_t){.k = SX_SELECT, .src = expr->src, .off = expr->off, .end = expr->end};
    sel->sel = s;
    return sel;
}

typedef struct sexpand {
    sexpr_t *expr;
    int scalar;
} sexpand_t;

typedef VEC(sexpr_t *) exprvec_t;

static sexpand_t expand(spq_t *q, const sx_t *x, int accept_scalar, exprvec_t *filters)
{
    sexpand_t r = {0};
    if (x->k == SX_SELECT) {
        sexpr_t **f;
        int nf;
        sexpr_t *out;
        if (join_subquery(q, x, &f, &nf, &out) < 0) {
            r.expr = bogus(q, x);
            return r;
        }
        for (int i = 0; i < nf; i++)
            VPUSH(q->b->a, *filters, f[i]);
        r.expr = out;
        return r;
    }
    if (x->k == SX_REF && !x->qual) {
        scte_t *cte = scope_cte(q->scope, x->name);
        if (cte) {
            if (cte->q->ncols != 1) {
                r.expr = invalid(q, x,
                                 "common table expression \"%s\" must select exactly one column "
                                 "to be used after \"IN\"",
                                 x->name);
                return r;
            }
            rarena_t *a = q->b->a;
            sx_t *ref = ra_alloc(a, sizeof *ref);
            *ref = (sx_t){.k = SX_REF, .src = x->src, .off = x->off, .end = x->end};
            ref->qual = x->name;
            ref->qual_off = x->off;
            ref->name = cte->q->names[0];
            ssel_t *s = ra_alloc(a, sizeof *s);
            s->src = x->src;
            s->off = x->off;
            s->end = x->end;
            s->distinct_off = s->group_off = s->having_off = s->order_off = s->limit_off =
                s->offset_off = s->for_off = -1;
            s->cols = ra_alloc(a, sizeof(scol_t));
            s->cols[0].expr = ref;
            s->ncols = 1;
            s->from = ra_alloc(a, sizeof(sfrom_t));
            s->from[0].kind = SF_TABLE;
            s->from[0].src = x->src;
            s->from[0].off = x->off;
            s->from[0].end = x->end;
            s->from[0].name = x->name;
            s->from[0].using_off = -1;
            s->nfrom = 1;
            sx_t *sel = ra_alloc(a, sizeof *sel);
            *sel = (sx_t){.k = SX_SELECT, .src = x->src, .off = x->off, .end = x->end};
            sel->sel = s;
            return expand(q, sel, 0, filters);
        }
    }
    if (accept_scalar) {
        r.expr = translate(q, x);
        r.scalar = 1;
        return r;
    }
    return expand(q, synthetic_each(q, x), 0, filters);
}

static sexpr_t *in_or_overlap(spq_t *q, const sx_t *x, int overlap, int negated)
{
    rarena_t *a = q->b->a;
    exprvec_t filters = {0};
    sexpr_t *left;
    if (overlap) {
        left = expand(q, x->a, 0, &filters).expr;
    } else {
        left = translate(q, x->a);
        const sx_t *r = x->b;
        sx_t **items = NULL;
        int n = -1;
        if (r->k == SX_ARRAY) {
            items = r->args;
            n = r->nargs;
        } else if (r->k == SX_CALL && !r->qual && strcmp(r->name, "row") == 0) {
            items = r->args;
            n = r->nargs;
        }
        if (n >= 0) {
            sexpr_t *e = ex_op(a, E_SCALAR_IN, NULL, n + 1, x->src, x->off, x->end);
            e->a[0] = left;
            for (int i = 0; i < n; i++)
                e->a[1 + i] = translate(q, items[i]);
            return negated ? ex_not(a, e, x->src, x->off, x->end) : e;
        }
        if (r->k == SX_LIST)
            return invalid(q, r,
                           "a parenthesized list after \"IN\" is not supported in sync streams; "
                           "write \"IN ARRAY[a, b]\"");
    }
    sexpand_t right = expand(q, x->b, !overlap && negated, &filters);
    if (right.scalar) {
        sexpr_t *f = ex_op(a, E_FUNC, "ps_json_contains", 2, x->src, x->off, x->end);
        f->a[0] = left;
        f->a[1] = right.expr;
        return ex_not(a, f, x->src, x->off, x->end);
    }
    sexpr_t *rep = ex_bin(a, "=", left, right.expr, x->src, x->off, x->end);
    for (int i = 0; i < filters.n; i++)
        rep = ex_bin(a, "and", rep, filters.v[i], x->src, x->off, x->end);
    if (negated) rep = ex_not(a, rep, x->src, x->off, x->end);
    return rep;
}

/* resolveTableValued */
static srs_t *table_valued(spq_t *q, const sfrom_t *f, ssyn_t *syn)
{
    const sx_t *call = f->call;
    srs_t *rs = ra_alloc(q->b->a, sizeof *rs);
    rs->kind = RS_TVF;
    rs->id = ++q->b->rs_ids;
    rs->fn = call->name;
    rs->explicit_name = syn->explicit_name;
    rs->src = f->src;
    rs->off = f->off;
    rs->end = f->end;
    if (call->qual || strcmp(call->name, "json_each") != 0)
        err(q, f->src, f->off,
            "unknown table-valued function \"%s\" (only json_each() can follow \"FROM\")",
            call->name);
    sde_t *args = ra_alloc(q->b->a, sizeof(sde_t) * (size_t)(call->nargs + 1));
    srs_t *ref_rs = NULL;
    int refs_conn = 0, valid = 1;
    for (int i = 0; i < call->nargs; i++) {
        args[i] = must_single(q, translate(q, call->args[i]));
        if (refs_conn && args[i].rs)
            valid = 0;
        else if (ref_rs && ref_rs != args[i].rs)
            valid = 0;
        else {
            if (args[i].rs) {
                if (args[i].rs->kind == RS_PHYS)
                    ref_rs = args[i].rs;
                else {
                    err(q, args[i].e->src, args[i].e->off,
                        "a table-valued function cannot read another table-valued function; "
                        "its inputs must come from a table or from request data");
                    valid = 0;
                }
            }
            refs_conn = args[i].conn;
        }
    }
    if (!valid)
        err(q, f->src, f->off,
            "the inputs of a table-valued function must all come from one table or from request "
            "data");
    if (call->nargs != 1 && strcmp(call->name, "json_each") == 0)
        err(q, f->src, f->off, "json_each() takes one argument");
    if (valid && call->nargs > 0) {
        rs->params = ra_alloc(q->b->a, sizeof(sexpr_t *) * (size_t)call->nargs);
        for (int i = 0; i < call->nargs; i++)
            rs->params[i] = args[i].e;
        rs->nparams = call->nargs;
        if (args[0].conn)
            rs->attach = TVF_CONNECTION;
        else if (args[0].rs) {
            rs->attach = TVF_ROW;
            rs->input = args[0].rs;
        } else
            rs->attach = TVF_STATIC;
    }
    return rs;
}

/* CloneTableReferences: a CTE used in a query gets its own result sets */
typedef struct sclone {
    rarena_t *a;
    ssyn_t **from_syn, **to_syn;
    srs_t **from_rs, **to_rs;
    int n;
} sclone_t;

static srs_t *clone_rs_of(sclone_t *c, srs_t *rs)
{
    for (int i = 0; i < c->n; i++)
        if (c->from_rs[i] == rs) return c->to_rs[i];
    return rs;
}

static sexpr_t *clone_expr(sclone_t *c, sexpr_t *e)
{
    if (!e) return NULL;
    sexpr_t *n = ra_alloc(c->a, sizeof *n);
    *n = *e;
    if (e->k == E_DATA) {
        n->ref = ra_alloc(c->a, sizeof(sref_t));
        *n->ref = *e->ref;
        if (e->ref->rs) n->ref->rs = clone_rs_of(c, e->ref->rs);
        return n;
    }
    if (e->na) {
        n->a = ra_alloc(c->a, sizeof(sexpr_t *) * (size_t)(e->na + 1));
        for (int i = 0; i < e->na; i++)
            n->a[i] = clone_expr(c, e->a[i]);
    }
    return n;
}

static ssubq_t *clone_subquery(sbuilder_t *b, const ssubq_t *s)
{
    sclone_t c = {b->a, NULL, NULL, NULL, NULL, s->ntables};
    c.from_syn = s->tsyn;
    c.from_rs = s->trs;
    c.to_syn = ra_alloc(b->a, sizeof(ssyn_t *) * (size_t)(s->ntables + 1));
    c.to_rs = ra_alloc(b->a, sizeof(srs_t *) * (size_t)(s->ntables + 1));
    for (int i = 0; i < s->ntables; i++) {
        c.to_syn[i] = ra_alloc(b->a, sizeof(ssyn_t));
        *c.to_syn[i] = *s->tsyn[i];
        c.to_rs[i] = ra_alloc(b->a, sizeof(srs_t));
        *c.to_rs[i] = *s->trs[i];
        c.to_rs[i]->id = ++b->rs_ids;
    }
    for (int i = 0; i < s->ntables; i++) {
        srs_t *r = c.to_rs[i];
        if (r->kind == RS_TVF) {
            if (r->nparams) {
                sexpr_t **p = ra_alloc(b->a, sizeof(sexpr_t *) * (size_t)r->nparams);
                for (int k = 0; k < r->nparams; k++)
                    p[k] = clone_expr(&c, r->params[k]);
                r->params = p;
            }
            /* attachment is recomputed from the (cloned) inputs, as the reference does */
            if (r->attach == TVF_ROW && r->input) r->input = clone_rs_of(&c, r->input);
            if (r->attach == TVF_ROW && r->nparams) {
                /* an attachment made later (static inputs) is not carried over */
                int from_input = 0;
                for (int k = 0; k < r->nparams; k++) {
                    reflist_t l = {0};
                    ex_refs(r->params[k], collect_ref, &l);
                    for (int m = 0; m < l.n; m++)
                        if (l.v[m]->rs) from_input = 1;
                    free(l.v);
                }
                if (!from_input) {
                    r->attach = TVF_STATIC;
                    r->input = NULL;
                }
            }
        }
    }
    ssubq_t *n = ra_alloc(b->a, sizeof *n);
    n->ncols = s->ncols;
    n->names = s->names;
    n->exprs = ra_alloc(b->a, sizeof(sexpr_t *) * (size_t)(s->ncols + 1));
    for (int i = 0; i < s->ncols; i++)
        n->exprs[i] = clone_expr(&c, s->exprs[i]);
    n->ntables = s->ntables;
    n->tsyn = c.to_syn;
    n->trs = c.to_rs;
    n->where = clone_expr(&c, s->where);
    return n;
}

static void add_subquery(spq_t *q, ssyn_t *syn, ssubq_t *s)
{
    for (int i = 0; i < s->ntables; i++)
        rs_set(q, s->tsyn[i], s->trs[i]);
    if (s->where) VPUSH(q->b->a, q->where, s->where);
    VPUSH(q->b->a, q->sq_syn, syn);
    VPUSH(q->b->a, q->sq, s);
}

static ssubq_t *parse_as_subquery(spq_t *q, const ssel_t *s, const char **colnames, int ncolnames);

static void process_from(spq_t *q, const sfrom_t *f)
{
    rarena_t *a = q->b->a;
    ssyn_t *syn = ra_alloc(a, sizeof *syn);
    syn->src = f->src;
    syn->off = f->off;
    syn->end = f->end;
    syn->explicit_name = f->alias;
    if (f->kind == SF_TABLE) {
        scope_register(q, f->alias ? f->alias : f->name, syn);
        scte_t *cte = !f->schema ? scope_cte(q->scope, f->name) : NULL;
        if (cte) {
            add_subquery(q, syn, clone_subquery(q->b, cte->q));
        } else {
            srs_t *rs = ra_alloc(a, sizeof *rs);
            rs->kind = RS_PHYS;
            rs->id = ++q->b->rs_ids;
            rs->schema = f->schema;
            rs->table = f->name;
            rs->explicit_name = f->alias;
            rs->src = f->src;
            rs->off = f->off;
            rs->end = f->end;
            rs_set(q, syn, rs);
        }
    } else if (f->kind == SF_CALL) {
        rs_set(q, syn, table_valued(q, f, syn));
        scope_register(q, f->alias ? f->alias : f->call->name, syn);
    } else {
        spq_t *inner = spq_nested(q, scope_root(q->scope));
        ssubq_t *sq = parse_as_subquery(inner, f->stmt, f->colnames, f->ncolnames);
        if (sq) {
            scope_register(q, f->alias, syn);
            add_subquery(q, syn, sq);
        }
    }
    if (f->join == SJ_OTHER)
        err(q, f->src, f->join_off,
            "\"%s\" is not supported in sync streams; use \"JOIN ... ON\" (an inner join), or a "
            "separate query or stream for the rows without a match",
            f->join_name);
    if (f->using_off >= 0)
        err(q, f->src, f->using_off,
            "\"USING\" is not supported; spell the join condition out with \"ON a.x = b.x\"");
    if (f->on) VPUSH(q->b->a, q->where, translate(q, f->on));
}

static void unsupported(spq_t *q, const ssel_t *s, int off, const char *what, const char *instead)
{
    if (off >= 0) err(q, s->src, off, "%s is not supported in sync streams; %s", what, instead);
}

static int process_ast(spq_t *q, const ssel_t *s, int for_subquery);
static void process_result_columns(spq_t *q, const ssel_t *s);

static int process_ast(spq_t *q, const ssel_t *s, int for_subquery)
{
    for (int i = 0; i < s->nfrom; i++)
        process_from(q, &s->from[i]);
    if (s->where) VPUSH(q->b->a, q->where, translate(q, s->where));
    if (!for_subquery) process_result_columns(q, s);
    if (s->distinct_off >= 0)
        warn(q, s->src, s->distinct_off,
             "DISTINCT has no effect in sync streams (clients receive each row once per bucket "
             "already); remove it");
    unsupported(q, s, s->group_off, "GROUP BY",
                "sync the rows and aggregate on the client, or maintain the aggregate in a "
                "table");
    unsupported(q, s, s->having_off, "HAVING", "sync the rows and filter the groups on the client");
    unsupported(q, s, s->order_off, "ORDER BY", "order the rows on the client when reading");
    unsupported(q, s, s->limit_off, "LIMIT",
                "narrow the rows with a WHERE condition (for example on a date column)");
    unsupported(q, s, s->offset_off, "OFFSET", "narrow the rows with a WHERE condition instead");
    unsupported(q, s, s->for_off, "FOR UPDATE/SHARE", "remove it");
    return 1;
}

static const char *infer_name(spq_t *q, const scol_t *c)
{
    if (c->alias) return c->alias;
    if (c->expr->k == SX_REF) return c->expr->name;
    warn(q, c->expr->src, c->expr->off,
         "the name of this column is not specified; add \"AS <name>\"");
    return ra_strndup(q->b->a, c->expr->src->text + c->expr->off,
                      (size_t)(c->expr->end - c->expr->off));
}

static ssubq_t *parse_as_subquery(spq_t *q, const ssel_t *s, const char **colnames, int ncolnames)
{
    if (!process_ast(q, s, 1)) return NULL;
    rarena_t *a = q->b->a;
    ssubq_t *r = ra_alloc(a, sizeof *r);
    r->names = ra_alloc(a, sizeof(char *) * (size_t)(s->ncols + 1));
    r->exprs = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(s->ncols + 1));
    int n = 0;
    for (int i = 0; i < s->ncols; i++) {
        const scol_t *c = &s->cols[i];
        if (c->expr->k == SX_REF && strcmp(c->expr->name, "*") == 0) {
            err(q, c->expr->src, c->expr->off,
                "\"*\" is not allowed in subqueries and common table expressions; name the "
                "columns");
            continue;
        }
        const char *name = colnames && n < ncolnames ? colnames[n] : infer_name(q, c);
        sexpr_t *e = translate(q, c->expr);
        int dup = 0;
        for (int k = 0; k < n; k++)
            if (strcmp(r->names[k], name) == 0) dup = 1;
        if (dup) err(q, c->expr->src, c->off, "there is a column named \"%s\" already", name);
        r->names[n] = name;
        r->exprs[n] = e;
        n++;
    }
    if (colnames && ncolnames != n)
        err(q, s->src, s->off, "the alias names %d columns but the subquery selects %d", ncolnames,
            n);
    r->ncols = n;
    r->ntables = q->rs_syn.n;
    r->tsyn = q->rs_syn.v;
    r->trs = q->rs_rs.v;
    if (q->where.n) {
        sexpr_t *w = q->where.v[0];
        for (int i = 1; i < q->where.n; i++)
            w = ex_bin(a, "and", w, q->where.v[i], w->src, w->off, w->end);
        r->where = w;
    }
    return r;
}

/* mustBeSingleDependency */
static sde_t must_single(spq_t *q, sexpr_t *e)
{
    reflist_t l = {0};
    ex_refs(e, collect_ref, &l);
    srs_t *rs = NULL;
    const ssrc_t *conn_src = NULL;
    int conn_off = 0, bad = 0;
    srs_t *prev = NULL;
    for (int i = 0; i < l.n; i++) {
        sref_t *r = l.v[i];
        if (r->rs) {
            if (conn_src) {
                err(q, r->src, r->off,
                    "this expression reads request data already, so it cannot also read row "
                    "data unless the two are compared with \"=\"");
                bad = 1;
            } else if (prev && !rs_compatible(prev, r->rs)) {
                err(q, r->src, r->off,
                    "this expression reads \"%s\" already, so it cannot also read this table "
                    "unless the two are compared with \"=\"",
                    prev->kind == RS_PHYS ? prev->table : prev->fn);
                bad = 1;
            }
            prev = r->rs;
            rs = r->rs;
        } else {
            if (prev) {
                err(q, r->src, r->off,
                    "this expression reads row data already, so it cannot also read request "
                    "data unless the two are compared with \"=\"");
                bad = 1;
            }
            conn_src = r->src;
            conn_off = r->off;
        }
    }
    (void)conn_off;
    free(l.v);
    sde_t d = {e, NULL, 0};
    if (bad) {
        d.e = ex_new(q->b->a, E_NULL, e->src, e->off, e->end);
        return d;
    }
    sde_of(e, &d);
    (void)rs;
    return d;
}

static void process_result_columns(spq_t *q, const ssel_t *s)
{
    const char *seen_alias = NULL;
    int star_err = 0; /* a "*" that named no table has its own error; add no second one */
    for (int i = 0; i < s->ncols; i++) {
        const scol_t *c = &s->cols[i];
        const sx_t *x = c->expr;
        if (x->k == SX_REF && strcmp(x->name, "*") == 0) {
            srs_t *rs;
            ssubq_t *sq;
            if (resolve_table(q, x, x->qual, &rs, &sq) < 0) {
                star_err = 1;
                continue;
            }
            if (rs) {
                if (rs->kind != RS_PHYS) {
                    err(q, x->src, x->off,
                        "sync streams can only select rows of tables, not of \"%s\"", rs->fn);
                    continue;
                }
                if (!q->primary)
                    q->primary = rs;
                else if (q->primary != rs) {
                    err(q, x->src, x->off,
                        "a stream query selects rows of one table, and this one selects from "
                        "\"%s\" already; write a second query for the other table",
                        q->primary->table);
                    continue;
                }
                if (seen_alias)
                    warn(q, x->src, x->off,
                         "\"*\" after aliased columns replaces \"%s\" when the row has a column "
                         "of that name; put \"*\" first",
                         seen_alias);
                scolsrc_t cs = {1, {NULL, NULL, 0}, NULL};
                VPUSH(q->b->a, q->cols, cs);
            } else {
                for (int k = 0; k < sq->ncols; k++) {
                    sde_t d;
                    if (!sde_of(sq->exprs[k], &d) || d.conn) {
                        err(q, x->src, x->off, "column \"%s\" of the subquery cannot be synced",
                            sq->names[k]);
                        continue;
                    }
                    if (d.rs && d.rs->kind != RS_PHYS) {
                        err(q, x->src, x->off,
                            "sync streams can only select rows of tables, not of \"%s\"", d.rs->fn);
                        continue;
                    }
                    if (d.rs) {
                        if (!q->primary)
                            q->primary = d.rs;
                        else if (q->primary != d.rs) {
                            err(q, x->src, x->off,
                                "a stream query selects rows of one table, and this one selects "
                                "from \"%s\" already",
                                q->primary->table);
                            continue;
                        }
                    }
                    scolsrc_t cs = {0, d, sq->names[k]};
                    VPUSH(q->b->a, q->cols, cs);
                }
            }
            continue;
        }
        if (c->alias) seen_alias = c->alias;
        sexpr_t *e = translate(q, x);
        const char *name = infer_name(q, c);
        reflist_t l = {0};
        ex_refs(e, collect_ref, &l);
        int ok = 1;
        for (int k = 0; k < l.n && ok; k++) {
            sref_t *r = l.v[k];
            if (!r->rs) {
                err(q, r->src, r->off,
                    "this column reads request data; only values of the source database can be "
                    "synced (compare request data in \"WHERE\" instead)");
                ok = 0;
            } else if (r->rs->kind != RS_PHYS) {
                err(q, r->src, r->off, "sync streams can only select rows of tables, not of \"%s\"",
                    r->rs->fn);
                ok = 0;
            } else if (!q->primary) {
                q->primary = r->rs;
            } else if (q->primary != r->rs) {
                err(q, r->src, r->off,
                    "a stream query selects rows of one table, and this column reads \"%s\"; "
                    "select columns of \"%s\" only",
                    r->rs->table, q->primary->table);
                ok = 0;
            }
        }
        free(l.v);
        if (!ok) continue;
        sde_t d;
        if (!sde_of(e, &d) || d.conn) continue;
        scolsrc_t cs = {0, d, name};
        VPUSH(q->b->a, q->cols, cs);
    }
    if (!q->primary && !star_err)
        err(q, s->src, s->off,
            "the query must select columns of a table (for example \"SELECT * FROM todos\")");
}

/* ---- WHERE into a disjunction of conjunctions ----------------------------------------- */

enum { B_BASE = 1, B_AND, B_OR, B_NOT };

typedef struct sbool sbool_t;
struct sbool {
    int k;
    sbool_t **v;
    int n;
    sexpr_t *e; /* B_BASE */
};

#define DNF_MAX 100

static sbool_t *bnode(rarena_t *a, int k, int n)
{
    sbool_t *b = ra_alloc(a, sizeof *b);
    b->k = k;
    b->n = n;
    b->v = ra_alloc(a, sizeof(sbool_t *) * (size_t)(n + 1));
    return b;
}

static sbool_t *extract_bool(rarena_t *a, sexpr_t *e)
{
    if (e->k == E_BINARY && (strcmp(e->op, "and") == 0 || strcmp(e->op, "or") == 0)) {
        sbool_t *b = bnode(a, e->op[0] == 'a' ? B_AND : B_OR, 2);
        b->v[0] = extract_bool(a, e->a[0]);
        b->v[1] = extract_bool(a, e->a[1]);
        return b;
    }
    if (e->k == E_UNARY && strcmp(e->op, "not") == 0) {
        sbool_t *b = bnode(a, B_NOT, 1);
        b->v[0] = extract_bool(a, e->a[0]);
        return b;
    }
    sbool_t *b = bnode(a, B_BASE, 0);
    b->e = e;
    return b;
}

static sbool_t *prepare_dnf(rarena_t *a, sbool_t *x, int *too_many);

static sbool_t *negated_all(rarena_t *a, sbool_t *x, int k, int *too_many)
{
    sbool_t *r = bnode(a, k, x->n);
    for (int i = 0; i < x->n; i++) {
        sbool_t *n = bnode(a, B_NOT, 1);
        n->v[0] = x->v[i];
        r->v[i] = prepare_dnf(a, n, too_many);
    }
    return prepare_dnf(a, r, too_many);
}

static sbool_t *prepare_dnf(rarena_t *a, sbool_t *x, int *too_many)
{
    if (*too_many) return x;
    switch (x->k) {
    case B_NOT: {
        sbool_t *in = x->v[0];
        switch (in->k) {
        case B_NOT:
            return prepare_dnf(a, in->v[0], too_many);
        case B_AND:
            return negated_all(a, in, B_OR, too_many);
        case B_OR:
            return negated_all(a, in, B_AND, too_many);
        default: {
            sbool_t *b = bnode(a, B_BASE, 0);
            b->e = ex_not(a, in->e, in->e->src, in->e->off, in->e->end);
            return b;
        }
        }
    }
    case B_AND: {
        VEC(sbool_t *) base = {0};
        VEC(sbool_t *) ors = {0};
        long expanded = 1;
        for (int i = 0; i < x->n; i++) {
            sbool_t *n = prepare_dnf(a, x->v[i], too_many);
            if (n->k == B_AND)
                for (int k = 0; k < n->n; k++)
                    VPUSH(a, base, n->v[k]);
            else if (n->k == B_OR) {
                VPUSH(a, ors, n);
                expanded *= n->n;
                if (expanded > DNF_MAX) expanded = DNF_MAX + 1;
            } else
                VPUSH(a, base, n);
        }
        if (ors.n == 0) {
            sbool_t *r = bnode(a, B_AND, base.n);
            for (int i = 0; i < base.n; i++)
                r->v[i] = base.v[i];
            return r;
        }
        if (expanded > DNF_MAX) {
            *too_many = 1;
            return x;
        }
        sbool_t *r = bnode(a, B_OR, (int)expanded);
        int *idx = rx_calloc((size_t)ors.n, sizeof(int));
        for (long t = 0; t < expanded; t++) {
            sbool_t *and = bnode(a, B_AND, ors.n + base.n);
            for (int k = 0; k < ors.n; k++)
                and->v[k] = ors.v[k]->v[idx[k]];
            for (int k = 0; k < base.n; k++)
                and->v[ors.n + k] = base.v[k];
            r->v[t] = prepare_dnf(a, and, too_many);
            for (int k = ors.n - 1; k >= 0; k--) {
                if (++idx[k] < ors.v[k]->n) break;
                idx[k] = 0;
            }
        }
        free(idx);
        return r;
    }
    case B_OR: {
        VEC(sbool_t *) out = {0};
        for (int i = 0; i < x->n; i++) {
            sbool_t *n = prepare_dnf(a, x->v[i], too_many);
            if (n->k == B_OR)
                for (int k = 0; k < n->n; k++)
                    VPUSH(a, out, n->v[k]);
            else
                VPUSH(a, out, n);
        }
        sbool_t *r = bnode(a, B_OR, out.n);
        for (int i = 0; i < out.n; i++)
            r->v[i] = out.v[i];
        return r;
    }
    default:
        return x;
    }
}

/* ---- filter simplification ------------------------------------------------------------ */

typedef VEC(sterm_t *) termvec_t;

static sterm_t *term_sde(rarena_t *a, sde_t d)
{
    sterm_t *t = ra_alloc(a, sizeof *t);
    t->a = d;
    t->src = d.e->src;
    t->off = d.e->off;
    t->end = d.e->end;
    return t;
}

static sexpr_t *compose(rarena_t *a, const char *op, sexpr_t **v, int n)
{
    sexpr_t *e = v[0];
    int off = v[0]->off, end = v[0]->end;
    for (int i = 1; i < n; i++) {
        if (v[i]->off < off) off = v[i]->off;
        if (v[i]->end > end) end = v[i]->end;
        e = ex_bin(a, op, e, v[i], v[0]->src, off, end);
    }
    return e;
}

static sterm_t *simplify_base(rarena_t *a, sterm_t *t)
{
    if (!t->eq) return t;
    reflist_t l = {0};
    ex_refs(t->a.e, collect_ref, &l);
    ex_refs(t->b.e, collect_ref, &l);
    srs_t *rs;
    int conn;
    int single = single_dep(l.v, l.n, &rs, &conn);
    free(l.v);
    if (!single) return t;
    sexpr_t *v[2] = {t->a.e, t->b.e};
    sde_t d;
    sde_of(compose(a, "=", v, 2), &d);
    return term_sde(a, d);
}

static termvec_t merge_common(rarena_t *a, const char *op, sterm_t **terms, int n)
{
    VEC(srs_t *) keys = {0};
    VEC(termvec_t) groups = {0};
    termvec_t none = {0}, rest = {0};
    for (int i = 0; i < n; i++) {
        sterm_t *s = simplify_base(a, terms[i]);
        if (!s->eq) {
            if (s->a.rs) {
                int g = -1;
                for (int k = 0; k < keys.n; k++)
                    if (keys.v[k] == s->a.rs) g = k;
                if (g < 0) {
                    termvec_t empty = {0};
                    VPUSH(a, keys, s->a.rs);
                    VPUSH(a, groups, empty);
                    g = keys.n - 1;
                }
                VPUSH(a, groups.v[g], s);
            } else {
                VPUSH(a, none, s);
            }
        } else {
            VPUSH(a, rest, terms[i]);
        }
    }
    termvec_t *lists[1 + 64];
    int nl = 0;
    lists[nl++] = &none;
    for (int k = 0; k < groups.n && nl < 65; k++)
        lists[nl++] = &groups.v[k];
    for (int k = 0; k < nl; k++) {
        termvec_t *g = lists[k];
        if (!g->n) continue;
        sexpr_t **v = ra_alloc(a, sizeof(sexpr_t *) * (size_t)g->n);
        for (int i = 0; i < g->n; i++)
            v[i] = g->v[i]->a.e;
        sde_t d;
        sde_of(compose(a, op, v, g->n), &d);
        VPUSH(a, rest, term_sde(a, d));
    }
    return rest;
}

/* ---- the querier graph (one conjunction of one query) --------------------------------- */

typedef struct spath {
    sbuilder_t *b;
    squery_t *query;
    termvec_t pending;
    VEC(srs_t *) lk_rs;
    VEC(splook_t *) lk;
    VEC(srs_t *) stack;
    sstage_t *stage;
} spath_t;

static void pending_remove(spath_t *p, sterm_t *t)
{
    for (int i = 0; i < p->pending.n; i++)
        if (p->pending.v[i] == t) {
            memmove(&p->pending.v[i], &p->pending.v[i + 1],
                    sizeof(sterm_t *) * (size_t)(p->pending.n - i - 1));
            p->pending.n--;
            return;
        }
}

static void sde_canon(rbuf_t *b, const sde_t *d)
{
    ex_canon(b, d->e);
}

static char *addfn_canon(rarena_t *a, const saddfn_t *f)
{
    rbuf_t b = {0};
    rb_printf(&b, "F(%s", f->fn);
    for (int i = 0; i < f->ninputs; i++)
        sde_canon(&b, &f->inputs[i]);
    rb_putc(&b, ')');
    char *r = ra_strdup(a, b.p);
    rb_free(&b);
    return r;
}

static saddfn_t *resolved_fn(sbuilder_t *bd, sresolved_t *r, srs_t *rs)
{
    for (int i = 0; i < r->fns.n; i++)
        if (r->fns.v[i]->rs == rs) return r->fns.v[i];
    saddfn_t *f = ra_alloc(bd->a, sizeof *f);
    f->rs = rs;
    f->fn = rs->fn;
    f->ninputs = rs->nparams;
    f->inputs = ra_alloc(bd->a, sizeof(sde_t) * (size_t)(rs->nparams + 1));
    for (int i = 0; i < rs->nparams; i++)
        sde_of(rs->params[i], &f->inputs[i]);
    VPUSH(bd->a, r->fns, f);
    return f;
}

static spk_t *pk_new(sbuilder_t *bd, int tvf, sde_t expr, saddfn_t *fn)
{
    spk_t *k = ra_alloc(bd->a, sizeof *k);
    k->tvf = tvf;
    k->expr = expr;
    k->fn = fn;
    rbuf_t b = {0};
    shash_t h = {SHASH_SEED};
    if (tvf) {
        rb_puts(&b, addfn_canon(bd->a, fn));
        sh_str(&h, fn->fn);
        for (int i = 0; i < fn->ninputs; i++)
            ex_hash(&h, fn->inputs[i].e);
    }
    rb_putc(&b, tvf ? 'T' : 'S');
    sde_canon(&b, &expr);
    ex_hash(&h, expr.e);
    k->hash = sh_final(&h);
    k->canon = ra_strdup(bd->a, b.p);
    rb_free(&b);
    return k;
}

static splook_t *expanding_lookup(spath_t *p, srs_t *rs);

static int pl_add_output(spath_t *p, splook_t *l, sde_t d)
{
    rbuf_t b = {0}, c = {0};
    sde_canon(&b, &d);
    for (int i = 0; i < l->outputs.n; i++) {
        c.n = 0;
        sde_canon(&c, &l->outputs.v[i]);
        if (strcmp(b.p, c.p) == 0) {
            rb_free(&b);
            rb_free(&c);
            return i;
        }
    }
    rb_free(&b);
    rb_free(&c);
    if (d.rs != l->source && d.rs && d.rs->kind == RS_TVF && d.rs->input == l->source &&
        l->resolved)
        resolved_fn(p->b, l->resolved, d.rs);
    VPUSH(p->b->a, l->outputs, d);
    return l->outputs.n - 1;
}

static int in_stack(spath_t *p, srs_t *other)
{
    for (int i = 0; i < p->stack.n; i++) {
        srs_t *s = p->stack.v[i];
        if (s == other || (other->kind == RS_TVF && other->attach == TVF_ROW && other->input == s))
            return 1;
    }
    return 0;
}

static spv_t *pv_new(rarena_t *a, int kind)
{
    spv_t *v = ra_alloc(a, sizeof *v);
    v->kind = kind;
    return v;
}

static void partition_by(spath_t *p, sresolved_t *st, sterm_t *t, spk_t *key, sde_t other)
{
    rarena_t *a = p->b->a;
    if (other.rs && in_stack(p, other.rs)) return;
    pending_remove(p, t);
    int idx = -1;
    for (int i = 0; i < st->keys.n; i++)
        if (strcmp(st->keys.v[i]->canon, key->canon) == 0) idx = i;
    if (idx < 0) {
        VPUSH(a, st->keys, key);
        void *vals = ra_alloc(a, sizeof(VEC(spv_t *)));
        VPUSH(a, st->vals, vals);
        idx = st->keys.n - 1;
    }
    typedef VEC(spv_t *) pvvec_t;
    pvvec_t *vals = (pvvec_t *)st->vals.v[idx];
    if (other.rs) {
        splook_t *l = expanding_lookup(p, other.rs);
        int ri = pl_add_output(p, l, other);
        spv_t *v = pv_new(a, PV_LOOKUP);
        v->result_index = ri;
        v->pl = l;
        VPUSH(a, l->dependents, v);
        VPUSH(a, *vals, v);
    } else {
        spv_t *v = pv_new(a, PV_REQUEST);
        v->expr = other;
        VPUSH(a, *vals, v);
    }
}

static sresolved_t *resolve_rs(spath_t *p, srs_t *source)
{
    rarena_t *a = p->b->a;
    VPUSH(a, p->stack, source);
    sresolved_t *st = ra_alloc(a, sizeof *st);
    int n = p->pending.n;
    sterm_t **snap = rx_malloc(sizeof(sterm_t *) * (size_t)(n + 1));
    if (n > 0) memcpy(snap, p->pending.v, sizeof(sterm_t *) * (size_t)n);
    for (int i = 0; i < n; i++) {
        sterm_t *t = snap[i];
        if (!t->eq) {
            if (rs_target(t->a.rs) == source && t->a.rs) {
                VPUSH(a, st->filters, t->a);
                pending_remove(p, t);
                reflist_t l = {0};
                ex_refs(t->a.e, collect_ref, &l);
                for (int k = 0; k < l.n; k++)
                    if (l.v[k]->rs && l.v[k]->rs != source && l.v[k]->rs->kind == RS_TVF &&
                        l.v[k]->rs->input == source)
                        resolved_fn(p->b, st, l.v[k]->rs);
                free(l.v);
            }
            continue;
        }
        srs_t *ls = t->a.rs, *rsr = t->b.rs;
        if (ls == source) {
            partition_by(p, st, t, pk_new(p->b, 0, t->a, NULL), t->b);
        } else if (rsr == source) {
            partition_by(p, st, t, pk_new(p->b, 0, t->b, NULL), t->a);
        } else if (ls && ls->kind == RS_TVF && ls->attach == TVF_ROW && ls->input == source) {
            saddfn_t *f = resolved_fn(p->b, st, ls);
            partition_by(p, st, t, pk_new(p->b, 1, t->a, f), t->b);
        } else if (rsr && rsr->kind == RS_TVF && rsr->attach == TVF_ROW && rsr->input == source) {
            saddfn_t *f = resolved_fn(p->b, st, rsr);
            partition_by(p, st, t, pk_new(p->b, 1, t->b, f), t->a);
        }
    }
    free(snap);
    p->stack.n--;
    return st;
}

/* resolvePartitions: keys ordered by hash (stable), multiple values intersected */
static void resolved_partitions(sbuilder_t *bd, sresolved_t *st, spk_t ***keys_out,
                                spv_t ***vals_out, int *n_out)
{
    int n = st->keys.n;
    spk_t **keys = ra_alloc(bd->a, sizeof(spk_t *) * (size_t)(n + 1));
    spv_t **vals = ra_alloc(bd->a, sizeof(spv_t *) * (size_t)(n + 1));
    for (int i = 0; i < n; i++) {
        keys[i] = st->keys.v[i];
        typedef VEC(spv_t *) pvvec_t;
        pvvec_t *v = (pvvec_t *)st->vals.v[i];
        if (v->n == 1)
            vals[i] = v->v[0];
        else {
            spv_t *in = pv_new(bd->a, PV_INTER);
            in->inner = v->v;
            in->ninner = v->n;
            vals[i] = in;
        }
    }
    /* stable insertion sort by hash */
    for (int i = 1; i < n; i++) {
        spk_t *k = keys[i];
        spv_t *v = vals[i];
        int j = i - 1;
        while (j >= 0 && keys[j]->hash > k->hash) {
            keys[j + 1] = keys[j];
            vals[j + 1] = vals[j];
            j--;
        }
        keys[j + 1] = k;
        vals[j + 1] = v;
    }
    *keys_out = keys;
    *vals_out = vals;
    *n_out = n;
}

static sstage_t *push_stage(spath_t *p)
{
    sstage_t *child = p->stage;
    if (!child->parent) child->parent = ra_alloc(p->b->a, sizeof(sstage_t));
    p->stage = child->parent;
    return child;
}

static splook_t *expanding_lookup(spath_t *p, srs_t *rs)
{
    if (rs->kind == RS_TVF && rs->attach == TVF_ROW && rs->input)
        return expanding_lookup(p, rs->input);
    for (int i = 0; i < p->lk_rs.n; i++)
        if (p->lk_rs.v[i] == rs) return p->lk.v[i];
    rarena_t *a = p->b->a;
    sstage_t *child = push_stage(p);
    splook_t *l = ra_alloc(a, sizeof *l);
    l->source = rs;
    l->point = rs->kind == RS_PHYS;
    l->resolved = resolve_rs(p, rs);
    if (!l->point && l->resolved->keys.n)
        s_diag(p->b->c, 0, rs->src, rs->off,
               "this table-valued function reads request data and cannot be matched with "
               "\"=\" against more than one table; rewrite the query without \"=\" on its "
               "output");
    VPUSH(a, p->lk_rs, rs);
    VPUSH(a, p->lk, l);
    VPUSH(a, p->stage->lookups, l);
    p->stage = child;
    return l;
}

static void exists_operators(spath_t *p)
{
    int n = p->pending.n;
    sterm_t **snap = rx_malloc(sizeof(sterm_t *) * (size_t)(n + 1));
    if (n > 0) memcpy(snap, p->pending.v, sizeof(sterm_t *) * (size_t)n);
    for (int i = 0; i < n; i++) {
        sterm_t *t = snap[i];
        if (t->eq) {
            if (t->a.conn) {
                if (t->b.rs) expanding_lookup(p, t->b.rs);
            } else if (t->b.conn) {
                if (t->a.rs) expanding_lookup(p, t->a.rs);
            }
        } else if (t->a.rs) {
            expanding_lookup(p, t->a.rs);
        }
    }
    free(snap);
}

static char *table_canon(const srs_t *rs)
{
    rbuf_t b = {0};
    rb_printf(&b, "%s%s.%s\x1d", rs->schema ? "default." : "", rs->schema ? rs->schema : "",
              rs->table);
    char *r = rb_strdup(&b);
    rb_free(&b);
    return r;
}

static void fill_proc(sbuilder_t *bd, sproc_t *p, srs_t *rs, sde_t *filters, int nfilters,
                      spk_t **keys, int nkeys, saddfn_t **fns, int nfns, rbuf_t *canon)
{
    rarena_t *a = bd->a;
    p->rs = rs;
    p->schema = rs->schema;
    p->table = rs->table;
    p->nfilters = nfilters;
    p->filters = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(nfilters + 1));
    char *tc = table_canon(rs);
    rb_puts(canon, tc);
    free(tc);
    for (int i = 0; i < nfilters; i++) {
        p->filters[i] = filters[i].e;
        sde_canon(canon, &filters[i]);
    }
    rb_putc(canon, '|');
    p->nparts = nkeys;
    p->parts = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(nkeys + 1));
    for (int i = 0; i < nkeys; i++) {
        p->parts[i] = keys[i]->expr.e;
        rb_puts(canon, keys[i]->canon);
    }
    rb_putc(canon, '|');
    p->nfns = nfns;
    p->fns = ra_alloc(a, sizeof(stvf_t *) * (size_t)(nfns + 1));
    for (int i = 0; i < nfns; i++) {
        stvf_t *f = ra_alloc(a, sizeof *f);
        f->fn = fns[i]->fn;
        f->rs = fns[i]->rs;
        f->ninputs = fns[i]->ninputs;
        f->inputs = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(f->ninputs + 1));
        for (int k = 0; k < f->ninputs; k++)
            f->inputs[k] = fns[i]->inputs[k].e;
        fns[i]->plan = f;
        p->fns[i] = f;
        rb_puts(canon, addfn_canon(a, fns[i]));
    }
    rb_putc(canon, '|');
}

static sval_t *pv_plan(sbuilder_t *bd, spv_t *v, rbuf_t *canon)
{
    sval_t *s = ra_alloc(bd->a, sizeof *s);
    switch (v->kind) {
    case PV_REQUEST:
        s->kind = SV_REQUEST;
        s->expr = v->expr.e;
        rb_puts(canon, "R(");
        sde_canon(canon, &v->expr);
        rb_putc(canon, ')');
        break;
    case PV_LOOKUP:
        s->kind = SV_LOOKUP;
        s->lookup = v->pl->mat;
        s->result_index = v->result_index;
        rb_printf(canon, "L(%s#%d)", v->pl->mat ? v->pl->mat->canon : "?", v->result_index);
        break;
    default:
        s->kind = SV_INTERSECTION;
        s->ninner = v->ninner;
        s->inner = ra_alloc(bd->a, sizeof(sval_t *) * (size_t)(v->ninner + 1));
        rb_puts(canon, "I(");
        for (int i = 0; i < v->ninner; i++)
            s->inner[i] = pv_plan(bd, v->inner[i], canon);
        rb_putc(canon, ')');
        break;
    }
    return s;
}

static slookup_t *canonical_lookup(sbuilder_t *bd, slookup_t *l)
{
    for (int i = 0; i < bd->lookups.n; i++)
        if (strcmp(bd->lookups.v[i]->canon, l->canon) == 0) return bd->lookups.v[i];
    l->lookup_name = "lookup";
    l->query_id = ra_printf(bd->a, "%d", bd->lookups.n);
    VPUSH(bd->a, bd->lookups, l);
    return l;
}

/* materializeLookupStages: parents (evaluated first) before children */
static void materialize(spath_t *p, sstage_t *stage, sresolver_t *r)
{
    if (stage->parent) materialize(p, stage->parent, r);
    if (!stage->lookups.n) return;
    rarena_t *a = p->b->a;
    int si = r->nstages++;
    /* in the arena, like the rest of the resolver: a resolver dropped on an error (or merged
     * into another) leaves nothing to free (the malloc'd arrays leaked then: found by fuzzing) */
    sstagelk_t ***stages = ra_alloc(a, sizeof(sstagelk_t **) * (size_t)r->nstages);
    int *nstage = ra_alloc(a, sizeof(int) * (size_t)r->nstages);
    if (si > 0) {
        memcpy(stages, r->stages, sizeof(sstagelk_t **) * (size_t)si);
        memcpy(nstage, r->nstage, sizeof(int) * (size_t)si);
    }
    r->stages = stages;
    r->nstage = nstage;
    sstagelk_t **list = ra_alloc(a, sizeof(sstagelk_t *) * (size_t)(stage->lookups.n + 1));
    for (int i = 0; i < stage->lookups.n; i++) {
        splook_t *pl = stage->lookups.v[i];
        sstagelk_t *m = ra_alloc(a, sizeof *m);
        m->stage = si;
        m->index = i;
        rbuf_t canon = {0};
        if (pl->point) {
            spk_t **keys;
            spv_t **vals;
            int nk;
            resolved_partitions(p->b, pl->resolved, &keys, &vals, &nk);
            slookup_t *l = ra_alloc(a, sizeof *l);
            rbuf_t lc = {0};
            fill_proc(p->b, &l->p, pl->source, pl->resolved->filters.v, pl->resolved->filters.n,
                      keys, nk, pl->resolved->fns.v, pl->resolved->fns.n, &lc);
            l->nouts = pl->outputs.n;
            l->outs = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(l->nouts + 1));
            for (int k = 0; k < l->nouts; k++) {
                l->outs[k] = pl->outputs.v[k].e;
                sde_canon(&lc, &pl->outputs.v[k]);
            }
            l->canon = ra_strdup(a, lc.p);
            rb_free(&lc);
            m->kind = SL_PARAMETER;
            m->lookup = canonical_lookup(p->b, l);
            m->ninst = nk;
            m->inst = ra_alloc(a, sizeof(sval_t *) * (size_t)(nk + 1));
            rb_printf(&canon, "P(%s;", m->lookup->canon);
            for (int k = 0; k < nk; k++)
                m->inst[k] = pv_plan(p->b, vals[k], &canon);
            rb_putc(&canon, ')');
        } else {
            m->kind = SL_TABLE_VALUED;
            srs_t *rs = pl->source;
            m->fn = rs->fn;
            m->rs = rs;
            m->nfn_inputs = rs->nparams;
            m->fn_inputs = rs->params;
            m->nouts = pl->outputs.n;
            m->outs = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(m->nouts + 1));
            m->nfilters = pl->resolved->filters.n;
            m->filters = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(m->nfilters + 1));
            rb_printf(&canon, "T(%s", rs->fn);
            for (int k = 0; k < rs->nparams; k++)
                ex_canon(&canon, rs->params[k]);
            rb_putc(&canon, ';');
            for (int k = 0; k < m->nouts; k++) {
                m->outs[k] = pl->outputs.v[k].e;
                sde_canon(&canon, &pl->outputs.v[k]);
            }
            rb_putc(&canon, ';');
            for (int k = 0; k < m->nfilters; k++) {
                m->filters[k] = pl->resolved->filters.v[k].e;
                sde_canon(&canon, &pl->resolved->filters.v[k]);
            }
            rb_putc(&canon, ')');
        }
        m->canon = ra_strdup(a, canon.p);
        rb_free(&canon);
        pl->mat = m;
        list[i] = m;
    }
    r->stages[si] = list;
    r->nstage[si] = stage->lookups.n;
}

static sdata_t *canonical_evaluator(sbuilder_t *bd, sdata_t *d)
{
    for (int i = 0; i < bd->evaluators.n; i++)
        if (strcmp(bd->evaluators.v[i]->canon, d->canon) == 0) return bd->evaluators.v[i];
    VPUSH(bd->a, bd->evaluators, d);
    return d;
}

static sresolver_t *resolve_primary(sbuilder_t *bd, squery_t *q, sterm_t **terms, int nterms)
{
    rarena_t *a = bd->a;
    spath_t p = {0};
    p.b = bd;
    p.query = q;
    for (int i = 0; i < nterms; i++)
        VPUSH(a, p.pending, terms[i]);
    p.stage = ra_alloc(a, sizeof(sstage_t));
    sresolved_t *st = resolve_rs(&p, q->source);
    spk_t **keys;
    spv_t **vals;
    int nk;
    resolved_partitions(bd, st, &keys, &vals, &nk);
    sdata_t *d = ra_alloc(a, sizeof *d);
    rbuf_t canon = {0};
    fill_proc(bd, &d->p, q->source, st->filters.v, st->filters.n, keys, nk, st->fns.v, st->fns.n,
              &canon);
    d->nouts = q->ncols;
    d->outs = ra_alloc(a, sizeof(sout_t) * (size_t)(q->ncols + 1));
    for (int i = 0; i < q->ncols; i++) {
        if (q->cols[i].star) {
            d->outs[i].kind = SOUT_STAR;
            rb_puts(&canon, "*\x1f");
        } else {
            d->outs[i].kind = SOUT_EXPR;
            d->outs[i].expr = q->cols[i].expr.e;
            d->outs[i].alias = q->cols[i].alias;
            sde_canon(&canon, &q->cols[i].expr);
            rb_puts(&canon, q->cols[i].alias ? q->cols[i].alias : "");
            rb_putc(&canon, '\x1f');
        }
    }
    const char *tbl = q->source->table;
    int wildcard = tbl[0] && tbl[strlen(tbl) - 1] == '%';
    d->out_table = q->source->explicit_name ? q->source->explicit_name : wildcard ? NULL : tbl;
    rb_printf(&canon, "|%s", d->out_table ? d->out_table : "");
    d->canon = ra_strdup(a, canon.p);
    rb_free(&canon);
    sdata_t *ev = canonical_evaluator(bd, d);
    exists_operators(&p);
    sresolver_t *r = ra_alloc(a, sizeof *r);
    r->stream = bd->stream;
    for (int i = 0; i < p.pending.n; i++) {
        sterm_t *t = p.pending.v[i];
        if (!t->eq) {
            if (t->a.rs)
                s_diag(bd->c, 0, t->src, t->off,
                       "this condition is not related to the request or to the table being "
                       "synced; remove it or compare it with \"=\" to one of them");
            else
                VPUSH(a, r->req_filters, t->a);
        } else {
            s_diag(bd->c, 0, t->src, t->off,
                   "this condition cannot be connected to the tables of the query; join the "
                   "tables with \"=\" on their columns");
        }
    }
    materialize(&p, p.stage, r);
    VPUSH(a, r->evaluators, ev);
    r->ninst = nk;
    r->inst = ra_alloc(a, sizeof(sval_t *) * (size_t)(nk + 1));
    rbuf_t ic = {0};
    for (int i = 0; i < r->req_filters.n; i++)
        sde_canon(&ic, &r->req_filters.v[i]);
    rb_putc(&ic, '|');
    /* lookups, as a multiset */
    int nl = 0;
    for (int i = 0; i < r->nstages; i++)
        nl += r->nstage[i];
    char **lc = rx_calloc((size_t)nl + 1, sizeof(char *));
    nl = 0;
    for (int i = 0; i < r->nstages; i++)
        for (int k = 0; k < r->nstage[i]; k++)
            lc[nl++] = r->stages[i][k]->canon;
    for (int i = 1; i < nl; i++)
        for (int k = i; k > 0 && strcmp(lc[k - 1], lc[k]) > 0; k--) {
            char *t = lc[k];
            lc[k] = lc[k - 1];
            lc[k - 1] = t;
        }
    for (int i = 0; i < nl; i++) {
        rb_puts(&ic, lc[i]);
        rb_putc(&ic, '\x1f');
    }
    free(lc);
    rb_putc(&ic, '|');
    for (int i = 0; i < nk; i++)
        r->inst[i] = pv_plan(bd, vals[i], &ic);
    r->canon = ra_strdup(a, ic.p);
    rb_free(&ic);
    r->name = ra_printf(a, "%s|%d", bd->stream->name, bd->counter++);
    return r;
}

/* ---- dangerous parameters (warning) --------------------------------------------------- */

typedef struct sclass {
    int k; /* 0 neutral, 1 authenticated, 2 unauthenticated */
    const ssrc_t *src;
    int off;
} sclass_t;

static sclass_t classify_expr(const sexpr_t *e)
{
    reflist_t l = {0};
    ex_refs(e, collect_ref, &l);
    int auth = 0;
    sclass_t un = {0, NULL, 0};
    for (int i = 0; i < l.n; i++) {
        sref_t *r = l.v[i];
        if (r->rs) continue;
        if (r->req == REQ_AUTH)
            auth = 1;
        else if (!un.src) {
            un.k = 2;
            un.src = r->src;
            un.off = r->off;
        }
    }
    free(l.v);
    if (un.src && !auth) return un;
    return (sclass_t){1, NULL, 0};
}

static sclass_t merge_class(sclass_t *v, int n)
{
    sclass_t un = {0, NULL, 0};
    for (int i = 0; i < n; i++) {
        if (v[i].k == 1) return v[i];
        if (!un.src && v[i].k == 2) un = v[i];
    }
    return un.src ? un : (sclass_t){0, NULL, 0};
}

static sclass_t classify_values(sval_t **v, int n);

static sclass_t classify_value(const sval_t *v)
{
    if (v->kind == SV_REQUEST) return classify_expr(v->expr);
    if (v->kind == SV_LOOKUP) {
        const sstagelk_t *l = v->lookup;
        if (l->kind == SL_PARAMETER) return classify_values(l->inst, l->ninst);
        sclass_t *c = rx_calloc((size_t)l->nfn_inputs + 1, sizeof(sclass_t));
        for (int i = 0; i < l->nfn_inputs; i++)
            c[i] = classify_expr(l->fn_inputs[i]);
        sclass_t r = merge_class(c, l->nfn_inputs);
        free(c);
        return r;
    }
    return classify_values(v->inner, v->ninner);
}

static sclass_t classify_values(sval_t **v, int n)
{
    sclass_t *c = rx_calloc((size_t)n + 1, sizeof(sclass_t));
    for (int i = 0; i < n; i++)
        c[i] = classify_value(v[i]);
    sclass_t r = merge_class(c, n);
    free(c);
    return r;
}

static void dangerous_check(sbuilder_t *bd, sresolver_t *r)
{
    sclass_t c = classify_values(r->inst, r->ninst);
    if (c.k == 0 && r->req_filters.n) {
        sclass_t *f = rx_calloc((size_t)r->req_filters.n + 1, sizeof(sclass_t));
        for (int i = 0; i < r->req_filters.n; i++)
            f[i] = classify_expr(r->req_filters.v[i].e);
        c = merge_class(f, r->req_filters.n);
        free(f);
    }
    if (c.k == 2)
        s_diag(bd->c, 1, c.src, c.off,
               "clients can send any value for this parameter, so it does not authorize "
               "anything; also compare with an authenticated value (auth.user_id(), "
               "auth.parameter(...)), or set \"accept_potentially_dangerous_queries: true\"");
}

/* ---- builder API ---------------------------------------------------------------------- */

sbuilder_t *sc_begin(scompile_t *c)
{
    sbuilder_t *b = ra_alloc(&c->plan->arena, sizeof *b);
    b->c = c;
    b->a = &c->plan->arena;
    b->root = scope_new(b->a, NULL);
    return b;
}

void sc_cte(sbuilder_t *b, const char *name, const ssrc_t *src, int local)
{
    int off = 0;
    char msg[256];
    ssel_t *s = sparse_select(b->a, src, &off, msg, sizeof msg);
    if (!s) {
        s_diag(b->c, 0, src, off, "%s", msg);
        return;
    }
    /* a CTE is parsed on its own, with nothing in scope */
    sstream_t *save = b->stream;
    sstream_t tmp = {0};
    if (!b->stream) b->stream = &tmp;
    spq_t *q = spq_new(b, src, scope_new(b->a, NULL));
    ssubq_t *sq = parse_as_subquery(q, s, NULL, 0);
    if (tmp.uses_subscription && save) save->uses_subscription = 1;
    b->stream = save;
    if (!sq) return;
    scte_t *cte = ra_alloc(b->a, sizeof *cte);
    cte->name = name;
    cte->q = sq;
    cte->src = src;
    cte->off = 0;
    if (local) {
        VPUSH(b->a, b->root->ctes, cte);
    } else {
        VPUSH(b->a, b->globals, cte);
    }
    VPUSH(b->a, b->all_ctes, cte);
}

void sc_stream(sbuilder_t *b, const char *name, int priority, int auto_subscribe,
               int accept_dangerous, int line, int col)
{
    sstream_t *s = ra_alloc(b->a, sizeof *s);
    s->name = ra_strdup(b->a, name);
    s->priority = priority;
    s->auto_subscribe = auto_subscribe;
    s->accept_dangerous = accept_dangerous;
    s->line = line;
    s->col = col;
    b->stream = s;
    b->counter = 0;
    b->resolvers.n = 0;
    b->first_src = NULL;
    b->nqueries = 0;
    /* global CTEs first, then local ones shadow them */
    b->root = scope_new(b->a, NULL);
    for (int i = 0; i < b->globals.n; i++)
        VPUSH(b->a, b->root->ctes, b->globals.v[i]);
    VPUSH(b->a, b->streams, s);
}

static squery_t *parse_query(sbuilder_t *b, const ssrc_t *src)
{
    int off = 0;
    char msg[256];
    ssel_t *s = sparse_select(b->a, src, &off, msg, sizeof msg);
    if (!s) {
        s_diag(b->c, 0, src, off, "%s", msg);
        return NULL;
    }
    spq_t *q = spq_new(b, src, b->root);
    int nerr = (int)b->c->d->nerrors;
    process_ast(q, s, 0);
    if (!q->primary) return NULL;
    rarena_t *a = b->a;
    /* WHERE: every filter, as a disjunction of conjunctions */
    sbool_t *all = bnode(a, B_AND, q->where.n);
    for (int i = 0; i < q->where.n; i++)
        all->v[i] = extract_bool(a, q->where.v[i]);
    int too_many = 0;
    sbool_t *dnf = prepare_dnf(a, all, &too_many);
    squery_t *r = ra_alloc(a, sizeof *r);
    r->src = src;
    r->off = s->off;
    r->end = s->end;
    r->source = q->primary;
    r->cols = q->cols.v;
    r->ncols = q->cols.n;
    if (too_many) {
        s_diag(b->c, 0, src, s->where ? s->where->off : s->off,
               "the conditions expand to more than %d alternatives; move inner \"OR\"s up into "
               "separate queries of the stream",
               DNF_MAX);
        return NULL;
    }
    sbool_t **conj;
    int nconj;
    sbool_t *one[1];
    if (dnf->k == B_OR) {
        conj = dnf->v;
        nconj = dnf->n;
    } else {
        one[0] = dnf;
        conj = one;
        nconj = 1;
    }
    /* map base expressions to terms, then simplify */
    VEC(termvec_t) ands = {0};
    termvec_t base_or = {0};
    for (int i = 0; i < nconj; i++) {
        sbool_t *cj = conj[i];
        sbool_t *single[1];
        sbool_t **items = cj->k == B_AND ? cj->v : single;
        int nitems = cj->k == B_AND ? cj->n : 1;
        single[0] = cj;
        VEC(sterm_t *) terms = {0};
        for (int k = 0; k < nitems; k++) {
            sexpr_t *e = items[k]->e;
            if (!e) continue;
            sterm_t *t = ra_alloc(a, sizeof *t);
            t->src = e->src;
            t->off = e->off;
            t->end = e->end;
            if (e->k == E_BINARY && strcmp(e->op, "=") == 0) {
                t->eq = 1;
                t->a = must_single(q, e->a[0]);
                t->b = must_single(q, e->a[1]);
            } else {
                t->a = must_single(q, e);
            }
            VPUSH(a, terms, t);
        }
        termvec_t merged = merge_common(a, "and", terms.v, terms.n);
        if (merged.n == 1)
            VPUSH(a, base_or, merged.v[0]);
        else
            VPUSH(a, ands, merged);
    }
    termvec_t ors = merge_common(a, "or", base_or.v, base_or.n);
    for (int i = 0; i < ors.n; i++) {
        termvec_t one_t = {0};
        VPUSH(a, one_t, ors.v[i]);
        VPUSH(a, ands, one_t);
    }
    r->nconj = ands.n;
    r->terms = ra_alloc(a, sizeof(sterm_t **) * (size_t)(ands.n + 1));
    r->nterms = ra_alloc(a, sizeof(int) * (size_t)(ands.n + 1));
    for (int i = 0; i < ands.n; i++) {
        r->terms[i] = ands.v[i].v;
        r->nterms[i] = ands.v[i].n;
    }
    if ((int)b->c->d->nerrors > nerr) return NULL;
    return r;
}

void sc_query(sbuilder_t *b, const ssrc_t *src)
{
    if (!b->first_src) {
        b->first_src = src;
        b->first_off = 0;
    }
    int nerr = (int)b->c->d->nerrors;
    int qi = b->nqueries++;
    squery_t *q = parse_query(b, src);
    if (!q) return;
    const char *text = ra_strdup(b->a, src->text);
    for (int i = 0; i < q->nconj; i++) {
        sresolver_t *r = resolve_primary(b, q, q->terms[i], q->nterms[i]);
        if ((int)b->c->d->nerrors > nerr) return;
        r->query_index = qi;
        r->query_text = text;
        VPUSH(b->a, b->resolvers, r);
    }
}

#define MAX_BUCKETS_PER_STREAM 100

void sc_stream_end(sbuilder_t *b)
{
    /* merge resolvers with the same instantiation (the first keeps its name) */
    VEC(sresolver_t *) merged = {0};
    for (int i = 0; i < b->resolvers.n; i++) {
        sresolver_t *r = b->resolvers.v[i];
        sresolver_t *ex = NULL;
        for (int k = 0; k < merged.n && !ex; k++)
            if (strcmp(merged.v[k]->canon, r->canon) == 0) ex = merged.v[k];
        if (!ex) {
            VPUSH(b->a, merged, r);
            continue;
        }
        for (int e = 0; e < r->evaluators.n; e++) {
            int have = 0;
            for (int k = 0; k < ex->evaluators.n; k++)
                if (strcmp(ex->evaluators.v[k]->canon, r->evaluators.v[e]->canon) == 0) have = 1;
            if (!have) VPUSH(b->a, ex->evaluators, r->evaluators.v[e]);
        }
    }
    if (merged.n > MAX_BUCKETS_PER_STREAM) {
        s_diag(b->c, 0, b->first_src, 0,
               "stream \"%s\" defines %d buckets (at most %d are allowed); split its queries "
               "into separate streams or move inner \"OR\"s into separate queries",
               b->stream->name, merged.n, MAX_BUCKETS_PER_STREAM);
        return;
    }
    for (int i = 0; i < merged.n; i++) {
        if (!b->stream->accept_dangerous) dangerous_check(b, merged.v[i]);
        VPUSH(b->a, b->all, merged.v[i]);
    }
}

/* ---- finishing the plan --------------------------------------------------------------- */

static int is_array_index(const char *s)
{
    if (!*s || (s[0] == '0' && s[1])) return 0;
    size_t n = strlen(s);
    if (n > 10) return 0;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p)) return 0;
    return strtoull(s, NULL, 10) < 4294967295ULL;
}

static char *evaluator_set_canon(sdata_t **v, int n)
{
    char **c = rx_calloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++)
        c[i] = v[i]->canon;
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && strcmp(c[k - 1], c[k]) > 0; k--) {
            char *t = c[k];
            c[k] = c[k - 1];
            c[k - 1] = t;
        }
    rbuf_t b = {0};
    for (int i = 0; i < n; i++) {
        rb_puts(&b, c[i]);
        rb_putc(&b, '\x1c');
    }
    free(c);
    char *r = rb_strdup(&b);
    rb_free(&b);
    return r;
}

static void prepare_statements(sbuilder_t *b);

void sc_end(sbuilder_t *b)
{
    splan_t *p = b->c->plan;
    rarena_t *a = b->a;
    /* streams grouped by name in first-appearance order (integer-like names first, as JS
     * object keys are ordered) */
    VEC(sstream_t *) order = {0};
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < b->streams.n; i++) {
            sstream_t *s = b->streams.v[i];
            int idx = is_array_index(s->name);
            if ((pass == 0) != (idx != 0)) continue;
            VPUSH(a, order, s);
        }
    /* integer-like names ascend numerically */
    for (int i = 1; i < order.n; i++)
        for (int k = i;
             k > 0 && is_array_index(order.v[k]->name) && is_array_index(order.v[k - 1]->name) &&
             strtoull(order.v[k - 1]->name, NULL, 10) > strtoull(order.v[k]->name, NULL, 10);
             k--) {
            sstream_t *t = order.v[k];
            order.v[k] = order.v[k - 1];
            order.v[k - 1] = t;
        }
    VEC(sbucket_t *) buckets = {0};
    for (int si = 0; si < order.n; si++) {
        sstream_t *s = order.v[si];
        VEC(squerier_t *) qs = {0};
        for (int i = 0; i < b->all.n; i++) {
            sresolver_t *r = b->all.v[i];
            if (r->stream != s) continue;
            char *key = evaluator_set_canon(r->evaluators.v, r->evaluators.n);
            sbucket_t *bk = NULL;
            for (int k = 0; k < buckets.n && !bk; k++)
                if (strcmp(buckets.v[k]->canon, key) == 0) bk = buckets.v[k];
            if (!bk) {
                bk = ra_alloc(a, sizeof *bk);
                bk->name = r->name;
                bk->canon = ra_strdup(a, key);
                bk->nsources = r->evaluators.n;
                bk->sources = ra_alloc(a, sizeof(sdata_t *) * (size_t)(bk->nsources + 1));
                for (int k = 0; k < bk->nsources; k++)
                    bk->sources[k] = r->evaluators.v[k];
                VPUSH(a, buckets, bk);
            }
            free(key);
            squerier_t *q = ra_alloc(a, sizeof *q);
            q->nreq_filters = r->req_filters.n;
            q->req_filters = ra_alloc(a, sizeof(sexpr_t *) * (size_t)(q->nreq_filters + 1));
            for (int k = 0; k < q->nreq_filters; k++)
                q->req_filters[k] = r->req_filters.v[k].e;
            q->nstages = r->nstages;
            q->stages = ra_alloc(a, sizeof(sstagelk_t **) * (size_t)(r->nstages + 1));
            q->nstage = ra_alloc(a, sizeof(int) * (size_t)(r->nstages + 1));
            for (int k = 0; k < r->nstages; k++) {
                q->stages[k] = r->stages[k];
                q->nstage[k] = r->nstage[k];
            }
            r->stages = NULL; /* the querier's copies, in the arena, are the ones used */
            r->nstage = NULL;
            q->bucket = bk;
            q->inst = r->inst;
            q->ninst = r->ninst;
            q->unique_name = r->name;
            q->canon = r->canon;
            q->query_index = r->query_index;
            q->query_text = r->query_text;
            VPUSH(a, qs, q);
        }
        s->q = qs.v;
        s->nq = qs.n;
    }
    p->streams = order.v;
    p->nstreams = order.n;
    p->buckets = buckets.v;
    p->nbuckets = buckets.n;
    p->data = b->evaluators.v;
    p->ndata = b->evaluators.n;
    p->lookups = b->lookups.v;
    p->nlookups = b->lookups.n;
    /* CTEs nobody used */
    for (int i = 0; i < b->all_ctes.n; i++)
        if (!b->all_ctes.v[i]->used)
            s_diag(b->c, 1, b->all_ctes.v[i]->src, 0,
                   "common table expression \"%s\" is not used by any query",
                   b->all_ctes.v[i]->name);
    if (!b->c->d->nerrors) prepare_statements(b);
}

/* ---- SQLite statements for evaluation ------------------------------------------------- */

/*
 * Expressions are evaluated by SQLite, with the reference's JavaScript semantics where they
 * differ: boolean logic goes through ps_bool()/ps_not() (NULL is false and NOT NULL is true,
 * text is true when it starts with a non-zero integer), json_each() takes only text and yields
 * numbers as JavaScript doubles (ps_json_each_arg, ps_jnum), `x NOT IN <json array>` uses
 * ps_json_contains(), and a JSON null reads per fixed_json_extract (ps_jnum, ps_jnull_text). Row
 * columns are bound as ?1..?n, request data as ?1 (token payload), ?2 (subscription parameters), ?3
 * (connection parameters); a table-valued function's outputs are "tbl_N"."key" / "tbl_N"."value".
 */
typedef struct sectx {
    scompile_t *c;
    srs_t *row; /* row columns come from this result set */
    VEC(const char *) cols;
    stvf_t *const *fns;
    int nfns;
    srs_t *req_tvf; /* request-side table-valued lookup: its outputs are "tbl_0" */
    int failed;
} sectx_t;

static void se_expr(sectx_t *x, const sexpr_t *e, rbuf_t *b);

static void se_path(const sexpr_t *k, int fixed, rbuf_t *b)
{
    if (k->k != E_INT) {
        rb_sql_json_path(b, k->text, fixed);
        return;
    }
    rbuf_t p = {0};
    rb_printf(&p, "$[%s]", k->text);
    rb_sql_str(b, p.p);
    rb_free(&p);
}

static void se_data(sectx_t *x, const sref_t *r, rbuf_t *b)
{
    if (!r->rs) {
        rb_printf(b, "?%d", r->req);
        return;
    }
    if (r->rs == x->row) {
        for (int i = 0; i < x->cols.n; i++)
            if (strcmp(x->cols.v[i], r->column) == 0) {
                rb_printf(b, "?%d", i + 1);
                return;
            }
        VPUSH(&x->c->plan->arena, x->cols, r->column);
        rb_printf(b, "?%d", x->cols.n);
        return;
    }
    int fi = -1;
    if (x->req_tvf && r->rs == x->req_tvf) fi = 0;
    for (int i = 0; i < x->nfns && fi < 0; i++)
        if (x->fns[i]->rs == r->rs) fi = i;
    if (fi < 0) {
        x->failed = 1;
        rb_puts(b, "NULL");
        return;
    }
    if (strcmp(r->column, "value") == 0)
        rb_printf(b, "ps_jnum(\"tbl_%d\".value, \"tbl_%d\".type, %d)", fi, fi,
                  r->rs->alpha_in == 2 ? 2 : r->rs->alpha_in || x->c->fixed_json_extract);
    else if (strcmp(r->column, "key") == 0)
        rb_printf(b, "\"tbl_%d\".key", fi);
    else
        rb_puts(b, "NULL"); /* json_each() has no other outputs in the reference */
}

static void se_expr(sectx_t *x, const sexpr_t *e, rbuf_t *b)
{
    switch (e->k) {
    case E_DATA:
        se_data(x, e->ref, b);
        break;
    case E_UNARY:
        if (strcmp(e->op, "not") == 0) {
            rb_puts(b, "ps_not(");
            se_expr(x, e->a[0], b);
            rb_putc(b, ')');
        } else {
            rb_puts(b, "(+");
            se_expr(x, e->a[0], b);
            rb_putc(b, ')');
        }
        break;
    case E_BINARY:
        if (strcmp(e->op, "and") == 0 || strcmp(e->op, "or") == 0) {
            rb_puts(b, "(ps_bool(");
            se_expr(x, e->a[0], b);
            rb_printf(b, ") %s ps_bool(", e->op[0] == 'a' ? "AND" : "OR");
            se_expr(x, e->a[1], b);
            rb_puts(b, "))");
        } else if (strcmp(e->op, "||") == 0) {
            rb_puts(b, "ps_concat(");
            se_expr(x, e->a[0], b);
            rb_puts(b, ", ");
            se_expr(x, e->a[1], b);
            rb_putc(b, ')');
        } else {
            rb_putc(b, '(');
            se_expr(x, e->a[0], b);
            rb_printf(b, " %s ", strcmp(e->op, "is") == 0 ? "IS" : e->op);
            se_expr(x, e->a[1], b);
            rb_putc(b, ')');
        }
        break;
    case E_BETWEEN:
        rb_putc(b, '(');
        se_expr(x, e->a[0], b);
        rb_puts(b, " BETWEEN ");
        se_expr(x, e->a[1], b);
        rb_puts(b, " AND ");
        se_expr(x, e->a[2], b);
        rb_putc(b, ')');
        break;
    case E_SCALAR_IN:
        if (e->na <= 1) {
            rb_puts(b, "0");
            break;
        }
        rb_putc(b, '(');
        se_expr(x, e->a[0], b);
        rb_puts(b, " IN (");
        for (int i = 1; i < e->na; i++) {
            if (i > 1) rb_puts(b, ", ");
            se_expr(x, e->a[i], b);
        }
        rb_puts(b, "))");
        break;
    case E_CASE: {
        int nw = (e->na - 2) / 2;
        rb_puts(b, "(CASE");
        if (e->a[0]) {
            rb_putc(b, ' ');
            se_expr(x, e->a[0], b);
        }
        for (int i = 0; i < nw; i++) {
            rb_puts(b, e->a[0] ? " WHEN " : " WHEN ps_bool(");
            se_expr(x, e->a[1 + 2 * i], b);
            rb_puts(b, e->a[0] ? " THEN " : ") THEN ");
            se_expr(x, e->a[2 + 2 * i], b);
        }
        if (e->a[e->na - 1]) {
            rb_puts(b, " ELSE ");
            se_expr(x, e->a[e->na - 1], b);
        }
        rb_puts(b, " END)");
        break;
    }
    case E_CAST:
        rb_puts(b, "ps_cast(");
        se_expr(x, e->a[0], b);
        rb_printf(b, ", '%s')", e->op);
        break;
    case E_FUNC:
        if (strcmp(e->op, "->") == 0 || strcmp(e->op, "->>") == 0) {
            const sexpr_t *k = e->a[1];
            if (k->k != E_STRING && k->k != E_INT) {
                s_diag(x->c, 0, k->src, k->off,
                       "the key after \"%s\" (or of .parameter()) must be a string literal", e->op);
                x->failed = 1;
                rb_puts(b, "NULL");
                break;
            }
            /* JSON null per fixed_json_extract, as in rules_compile.c's emit_json_arrow() */
            int fixed = e->request_fn == 2 || (e->request_fn && x->c->edition < 3) ||
                        x->c->fixed_json_extract;
            int text = strcmp(e->op, "->>") == 0;
            if (fixed && text) {
                rb_putc(b, '(');
                se_expr(x, e->a[0], b);
                rb_puts(b, " ->> ");
                se_path(k, fixed, b);
                rb_putc(b, ')');
            } else if (!fixed && !text) {
                rb_puts(b, "NULLIF((");
                se_expr(x, e->a[0], b);
                rb_puts(b, " -> ");
                se_path(k, fixed, b);
                rb_puts(b, "), 'null')");
            } else {
                rb_puts(b, "ps_jnull_text(");
                se_expr(x, e->a[0], b);
                rb_puts(b, ", ");
                rb_sql_str(b, k->text);
                rb_printf(b, ", %d, (", fixed);
                se_expr(x, e->a[0], b);
                rb_printf(b, " %s ", e->op);
                se_path(k, fixed, b);
                rb_puts(b, "))");
            }
            break;
        }
        if (strcmp(e->op, "json_extract") == 0 && e->na == 2 && !x->c->fixed_json_extract) {
            /* edition 1: a JSON null is the text 'null' */
            rb_puts(b, "ps_jnull_text(");
            se_expr(x, e->a[0], b);
            rb_puts(b, ", ");
            se_expr(x, e->a[1], b);
            rb_puts(b, ", 0, json_extract(");
            se_expr(x, e->a[0], b);
            rb_puts(b, ", ");
            se_expr(x, e->a[1], b);
            rb_puts(b, "))");
            break;
        }
        rb_puts(b, strcmp(e->op, "substring") == 0 ? "substr" : e->op);
        rb_putc(b, '(');
        for (int i = 0; i < e->na; i++) {
            if (i) rb_puts(b, ", ");
            se_expr(x, e->a[i], b);
        }
        rb_putc(b, ')');
        break;
    case E_NULL:
        rb_puts(b, "NULL");
        break;
    case E_INT:
        rb_puts(b, e->text);
        break;
    case E_DOUBLE: {
        rbuf_t t = {0};
        rj_double(&t, e->d, 1);
        rb_puts(b, t.p);
        rb_free(&t);
        break;
    }
    case E_STRING:
        rb_sql_str(b, e->text);
        break;
    }
}

/* SELECT <outs> FROM <fns> WHERE <filters> over the row (or request) */
static char *se_select(sectx_t *x, sexpr_t **outs, int nouts, sexpr_t **filters, int nfilters,
                       stvf_t **fns, int nfns, srs_t *req_tvf, const char *req_fn,
                       sexpr_t **req_inputs, int nreq_inputs)
{
    rbuf_t b = {0};
    rb_puts(&b, "SELECT ");
    for (int i = 0; i < nouts; i++) {
        if (i) rb_puts(&b, ", ");
        se_expr(x, outs[i], &b);
    }
    if (nouts == 0) rb_puts(&b, "1");
    if (nfns || req_tvf) rb_puts(&b, " FROM ");
    for (int i = 0; i < nfns; i++) {
        if (i) rb_puts(&b, ", ");
        rb_printf(&b, "%s(ps_json_each_arg(", fns[i]->fn);
        for (int k = 0; k < fns[i]->ninputs; k++) {
            if (k) rb_puts(&b, ", ");
            se_expr(x, fns[i]->inputs[k], &b);
        }
        rb_printf(&b, ")) AS \"tbl_%d\"", i);
    }
    if (req_tvf) {
        rb_printf(&b, "%s(ps_json_each_arg(", req_fn);
        for (int k = 0; k < nreq_inputs; k++) {
            if (k) rb_puts(&b, ", ");
            se_expr(x, req_inputs[k], &b);
        }
        rb_puts(&b, ")) AS \"tbl_0\"");
    }
    for (int i = 0; i < nfilters; i++) {
        rb_puts(&b, i ? " AND " : " WHERE ");
        rb_puts(&b, "ps_bool(");
        se_expr(x, filters[i], &b);
        rb_putc(&b, ')');
    }
    char *r = rb_strdup(&b);
    rb_free(&b);
    return r;
}

/* compile sql into the set's statement table, or report it at the stream's source */
static int se_stmt(sbuilder_t *bd, char *sql, const ssrc_t *src, int off)
{
    sqlite3 *db = NULL;
    int ok = 0;
    if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, NULL) ==
        SQLITE_OK) {
        rfunc_register(db);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK)
            ok = 1;
        else
            s_diag(bd->c, 0, src, off, "query cannot be evaluated: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    if (!ok) {
        free(sql);
        return -1;
    }
    return rset_add_stmt(bd->c->set, sql);
}

/* se_stmt when the SQL was built without a failure; the SQL is freed otherwise (the callers'
 * "failed ? -1 : se_stmt" leaked it: found by fuzzing). Takes sql. */
static int se_stmt_if(sbuilder_t *bd, const sectx_t *x, char *sql, const ssrc_t *src, int off)
{
    if (!x->failed) return se_stmt(bd, sql, src, off);
    free(sql);
    return -1;
}

static int plain_column(const sexpr_t *e, const srs_t *row)
{
    return e->k == E_DATA && e->ref->rs == row;
}

static void prepare_proc(sbuilder_t *bd, sproc_t *p, sexpr_t **outs, int nouts, int *direct)
{
    /* fast path: every output a plain column, no filter, no function: no statement at all */
    int all_plain = p->nfilters == 0 && p->nfns == 0;
    for (int i = 0; i < nouts && all_plain; i++)
        all_plain = plain_column(outs[i], p->rs);
    for (int i = 0; i < p->nparts && all_plain; i++)
        all_plain = plain_column(p->parts[i], p->rs);
    sectx_t x = {0};
    x.c = bd->c;
    x.row = p->rs;
    x.fns = p->fns;
    x.nfns = p->nfns;
    int n = nouts + p->nparts;
    sexpr_t **all = ra_alloc(bd->a, sizeof(sexpr_t *) * (size_t)(n + 1));
    for (int i = 0; i < nouts; i++)
        all[i] = outs[i];
    for (int i = 0; i < p->nparts; i++)
        all[nouts + i] = p->parts[i];
    p->stmt = -1;
    if (all_plain) {
        /* columns in order of use; the evaluator reads them directly */
        rbuf_t b = {0};
        for (int i = 0; i < n; i++)
            se_expr(&x, all[i], &b);
        rb_free(&b);
        *direct = 1;
    } else {
        *direct = 0;
        char *sql =
            se_select(&x, all, n, p->filters, p->nfilters, p->fns, p->nfns, NULL, NULL, NULL, 0);
        p->sql = ra_strdup(bd->a, sql);
        if (!x.failed)
            p->stmt = se_stmt(bd, sql, p->rs->src, p->rs->off);
        else
            free(sql);
    }
    p->cols = x.cols.v;
    p->ncols = x.cols.n;
}

static void prepare_value(sbuilder_t *bd, sval_t *v)
{
    if (v->kind == SV_REQUEST && !v->sql) {
        sectx_t x = {0};
        x.c = bd->c;
        char *sql = se_select(&x, &v->expr, 1, NULL, 0, NULL, 0, NULL, NULL, NULL, 0);
        v->sql = ra_strdup(bd->a, sql);
        v->stmt = se_stmt_if(bd, &x, sql, v->expr->src, v->expr->off);
    } else if (v->kind == SV_INTERSECTION) {
        for (int i = 0; i < v->ninner; i++)
            prepare_value(bd, v->inner[i]);
    }
}

static void prepare_statements(sbuilder_t *b)
{
    splan_t *p = b->c->plan;
    for (int i = 0; i < p->ndata; i++) {
        sdata_t *d = p->data[i];
        sexpr_t **outs = ra_alloc(b->a, sizeof(sexpr_t *) * (size_t)(d->nouts + 1));
        int n = 0;
        for (int k = 0; k < d->nouts; k++)
            if (d->outs[k].kind == SOUT_EXPR) outs[n++] = d->outs[k].expr;
        int direct;
        prepare_proc(b, &d->p, outs, n, &direct);
    }
    for (int i = 0; i < p->nlookups; i++) {
        slookup_t *l = p->lookups[i];
        int direct;
        prepare_proc(b, &l->p, l->outs, l->nouts, &direct);
    }
    for (int s = 0; s < p->nstreams; s++) {
        sstream_t *st = p->streams[s];
        for (int qi = 0; qi < st->nq; qi++) {
            squerier_t *q = st->q[qi];
            if (q->nreq_filters) {
                sectx_t x = {0};
                x.c = b->c;
                char *sql = se_select(&x, NULL, 0, q->req_filters, q->nreq_filters, NULL, 0, NULL,
                                      NULL, NULL, 0);
                q->filter_sql = ra_strdup(b->a, sql);
                q->filter_stmt =
                    se_stmt_if(b, &x, sql, q->req_filters[0]->src, q->req_filters[0]->off);
            } else {
                q->filter_stmt = -1;
            }
            for (int k = 0; k < q->ninst; k++)
                prepare_value(b, q->inst[k]);
            for (int si = 0; si < q->nstages; si++)
                for (int li = 0; li < q->nstage[si]; li++) {
                    sstagelk_t *l = q->stages[si][li];
                    if (l->kind == SL_PARAMETER) {
                        for (int k = 0; k < l->ninst; k++)
                            prepare_value(b, l->inst[k]);
                    } else if (!l->sql) {
                        sectx_t x = {0};
                        x.c = b->c;
                        x.req_tvf = l->rs;
                        char *sql = se_select(&x, l->outs, l->nouts, l->filters, l->nfilters, NULL,
                                              0, l->rs, l->fn, l->fn_inputs, l->nfn_inputs);
                        l->sql = ra_strdup(b->a, sql);
                        l->stmt = se_stmt_if(b, &x, sql, l->rs->src, l->rs->off);
                    }
                }
        }
    }
}

/* ---- the alpha form (rules_stream_alpha.c) ------------------------------------------- */

sbuilder_t *sa_builder(scompile_t *c)
{
    if (!c->alpha) c->alpha = sc_begin(c);
    return c->alpha;
}

spq_t *sa_query(sbuilder_t *b, sstream_t *s, const ssrc_t *src, const sfrom_t *f, srs_t **rs)
{
    b->stream = s;
    spq_t *q = spq_new(b, src, scope_new(b->a, NULL));
    q->alpha = 1;
    process_from(q, f);
    srs_t *r = NULL;
    ssubq_t *sq = NULL;
    if (q->scope->syns.n == 1) resolve_source(q, q->scope->syns.v[0], &r, &sq);
    *rs = r;
    return q;
}

sexpr_t *sa_translate(spq_t *q, const sx_t *x)
{
    return translate(q, x);
}

void sa_diag(spq_t *q, int warning, const ssrc_t *src, int off, const char *msg)
{
    s_diag(q->b->c, warning, src ? src : q->src, off, "%s", msg);
}

int sa_refs(const sexpr_t *e, int *row, int *req)
{
    reflist_t l = {0};
    ex_refs(e, collect_ref, &l);
    *row = *req = 0;
    for (int i = 0; i < l.n; i++) {
        if (l.v[i]->rs)
            *row = 1;
        else
            *req = 1;
    }
    free(l.v);
    return l.n;
}

sexpr_t *sa_bin(sbuilder_t *b, const char *op, sexpr_t *l, sexpr_t *r)
{
    return ex_bin(b->a, op, l, r, l->src, l->off, r->end > l->end ? r->end : l->end);
}

sexpr_t *sa_not(sbuilder_t *b, sexpr_t *e)
{
    return ex_not(b->a, e, e->src, e->off, e->end);
}

sexpr_t *sa_func(sbuilder_t *b, const char *fn, sexpr_t *arg)
{
    sexpr_t *e = ex_op(b->a, E_FUNC, fn, 1, arg->src, arg->off, arg->end);
    e->a[0] = arg;
    return e;
}

sexpr_t *sa_column(sbuilder_t *b, srs_t *rs, const char *column, const sexpr_t *at)
{
    sexpr_t *e = ex_new(b->a, E_DATA, at->src, at->off, at->end);
    e->ref = ra_alloc(b->a, sizeof(sref_t));
    e->ref->rs = rs;
    e->ref->column = column;
    e->ref->src = at->src;
    e->ref->off = at->off;
    e->ref->end = at->end;
    return e;
}

srs_t *sa_tvf(sbuilder_t *b, sexpr_t *input, int attach, srs_t *row)
{
    srs_t *rs = ra_alloc(b->a, sizeof *rs);
    rs->kind = RS_TVF;
    rs->id = ++b->rs_ids;
    rs->fn = "json_each";
    rs->params = ra_alloc(b->a, sizeof(sexpr_t *));
    rs->params[0] = input;
    rs->nparams = 1;
    rs->attach = attach;
    rs->input = row;
    rs->src = input->src;
    rs->off = input->off;
    rs->end = input->end;
    return rs;
}

void sa_add(sbuilder_t *b, sstream_t *s, sdata_t **data, int ndata, slookup_t **lookups,
            int nlookups)
{
    VPUSH(b->a, b->streams, s);
    for (int i = 0; i < ndata; i++)
        VPUSH(b->a, b->evaluators, data[i]);
    for (int i = 0; i < nlookups; i++)
        VPUSH(b->a, b->lookups, lookups[i]);
}

void sa_end(scompile_t *c)
{
    sbuilder_t *b = c->alpha;
    if (!b) return;
    splan_t *p = c->plan;
    VEC(sbucket_t *) buckets = {0};
    for (int i = 0; i < b->streams.n; i++)
        for (int k = 0; k < b->streams.v[i]->nq; k++)
            VPUSH(b->a, buckets, b->streams.v[i]->q[k]->bucket);
    p->streams = b->streams.v;
    p->nstreams = b->streams.n;
    p->buckets = buckets.v;
    p->nbuckets = buckets.n;
    p->data = b->evaluators.v;
    p->ndata = b->evaluators.n;
    p->lookups = b->lookups.v;
    p->nlookups = b->lookups.n;
    if (!c->d->nerrors) prepare_statements(b);
}

void splan_free(splan_t *p)
{
    if (!p) return;
    ra_free(&p->arena);
    free(p);
}
