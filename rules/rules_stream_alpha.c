/* rules_stream_alpha.c -- the alpha form of Sync Streams (editions 1 and 2)
 *
 * Before edition 3, PowerSync compiled `streams:` with an older parser (the "alpha" form), and
 * its reference compiler still does so for editions 1 and 2, with a warning. One query per
 * stream, selecting from exactly one table; no CTEs, no JOINs. This file compiles that form into
 * the same plan (rules_stream.h) the edition-3 compiler produces, so evaluation, replication,
 * requests and responses are shared; expressions are translated by the edition-3 translator
 * (sa_translate, with `a IN b` inside an expression read as a JSON-array membership test).
 *
 * The WHERE clause becomes a filter tree, then a disjunction of conjunctions, exactly as the
 * reference orders it (the order of parameters is part of every bucket id):
 *
 *   WHERE --to_filter--> AND/OR/NOT over literals --dnf--> OR of ANDs --> one variant each
 *
 * Literals: a condition on the row alone (a row filter), on request data alone (a request
 * filter), `row = <request>` / `row IN <request array>` / `<request> IN row.array` (a bucket
 * parameter matched with request data), `row IN (SELECT c FROM t WHERE ..)` (a bucket parameter
 * read from a parameter index of t) and `<request> IN (SELECT ..)` (a request filter: the
 * index has a row). A variant `i` of stream `s` is the bucket `s|i`: a data source whose
 * partition values are the variant's parameters in order, and a querier that resolves them
 * for a subscription. A subquery is a parameter index named `<stream>/<n>` (n counts the
 * stream's subqueries) whose entries are `{"result": value}`.
 *
 * The alpha form differs from edition 3 in small ways the evaluator follows through flags:
 * NULL request values still make a bucket (`s|0[null]`), NULL subquery results are indexed,
 * and `*` skips columns starting with "_" (sdata_t.alpha, part_null, squerier_t.alpha).
 *
 * Errors name file:line:col through the source text's position map and say what to write
 * instead; everything is allocated from the plan's arena.
 */
#include "rules_stream.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* ---- small arena vectors -------------------------------------------------------------- */

typedef struct avec {
    void **v;
    int n, cap;
} avec_t;

static void apush(rarena_t *a, avec_t *x, void *p)
{
    if (x->n == x->cap) {
        int nc = x->cap ? x->cap * 2 : 8;
        void **nv = ra_alloc(a, sizeof(void *) * (size_t)nc);
        if (x->n) memcpy(nv, x->v, sizeof(void *) * (size_t)x->n);
        x->v = nv;
        x->cap = nc;
    }
    x->v[x->n++] = p;
}

/* ---- filter trees --------------------------------------------------------------------- */

enum { C_STATIC = 0, C_ROW, C_REQ, C_MIX };

enum {
    AF_AND = 1,
    AF_OR,
    AF_NOT,
    AF_SIMPLE, /* e over the row alone, request data alone, or constants (cls) */
    AF_MATCH,  /* row-side e equals the request value req */
    AF_IN,     /* row-side e IN the subquery */
    AF_EXISTS  /* the subquery (with the request value pushed into it) has a row */
};

typedef struct asub asub_t;
typedef struct af af_t;

struct af {
    int k;
    af_t **v; /* AND/OR operands; NOT: v[0] */
    int n;
    int cls;         /* AF_SIMPLE: C_* */
    sexpr_t *e;      /* AF_SIMPLE: the condition; AF_MATCH/AF_IN: the row side */
    sexpr_t *req;    /* AF_MATCH: the request side */
    int expands;     /* AF_MATCH: req is a JSON array of values (`row IN <request>`) */
    int row_expands; /* AF_MATCH: e is a JSON array of values (`<request> IN row.col`) */
    asub_t *sub;     /* AF_IN, AF_EXISTS */
    const ssrc_t *src;
    int off;
};

/* `SELECT col FROM table WHERE ..` inside IN */
struct asub {
    srs_t *rs;
    sexpr_t *col;
    avec_t terms; /* af_t *: the conjunction (AF_SIMPLE and AF_MATCH) */
};

typedef struct actx {
    scompile_t *c;
    sbuilder_t *b;
    rarena_t *a;
    sstream_t *s;
    const ssrc_t *src;
    int qcounter; /* subqueries of the stream so far (their query ids) */
    avec_t data, lookups;
} actx_t;

static af_t *af_new(actx_t *x, int k, const ssrc_t *src, int off)
{
    af_t *f = ra_alloc(x->a, sizeof *f);
    f->k = k;
    f->src = src;
    f->off = off;
    return f;
}

static af_t *af_pair(actx_t *x, int k, af_t *l, af_t *r)
{
    af_t *f = af_new(x, k, l->src, l->off);
    f->v = ra_alloc(x->a, sizeof(af_t *) * 2);
    f->v[0] = l;
    f->v[1] = r;
    f->n = 2;
    return f;
}

static af_t *af_simple(actx_t *x, sexpr_t *e, int cls)
{
    af_t *f = af_new(x, AF_SIMPLE, e->src, e->off);
    f->e = e;
    f->cls = cls;
    return f;
}

static int classify(const sexpr_t *e)
{
    int row, req;
    sa_refs(e, &row, &req);
    return row && req ? C_MIX : row ? C_ROW : req ? C_REQ : C_STATIC;
}

static const char MIXED[] =
    "this expression mixes values of the row with request values (auth.*, subscription.*, "
    "connection.*); compare a row expression with a request expression using \"=\" or \"IN\"";

static asub_t *compile_sub(actx_t *x, spq_t *outer, const sx_t *sel, int *ok);
static af_t *to_filter(actx_t *x, spq_t *q, const sx_t *n, int in_sub);

static int check_select(actx_t *x, const ssel_t *s, int subquery)
{
    int ok = 1;
    if (s->nfrom != 1 || s->from[0].kind != SF_TABLE) {
        int off = s->nfrom > 1 ? s->from[1].off : s->nfrom ? s->from[0].off : s->off;
        s_diag(x->c, 0, s->src, off,
               "%s selects from exactly one table in the alpha form of streams; JOINs, "
               "json_each() and subqueries after FROM need \"config: {edition: 3}\"",
               subquery ? "a subquery" : "a stream query");
        ok = 0;
    }
    static const struct {
        size_t off;
        const char *what, *instead;
    } un[] = {
        {offsetof(ssel_t, distinct_off), "DISTINCT", "remove it"},
        {offsetof(ssel_t, group_off), "GROUP BY",
         "sync the rows and aggregate on the client, or maintain the aggregate in a table"},
        {offsetof(ssel_t, having_off), "HAVING", "sync the rows and filter on the client"},
        {offsetof(ssel_t, order_off), "ORDER BY", "order the rows on the client when reading"},
        {offsetof(ssel_t, limit_off), "LIMIT", "narrow the rows with a WHERE condition"},
        {offsetof(ssel_t, offset_off), "OFFSET", "narrow the rows with a WHERE condition"},
        {offsetof(ssel_t, for_off), "FOR UPDATE/SHARE", "remove it"},
    };
    for (size_t i = 0; i < sizeof un / sizeof un[0]; i++) {
        int off = *(const int *)((const char *)s + un[i].off);
        if (off >= 0) {
            s_diag(x->c, 0, s->src, off, "%s is not supported in sync streams; %s", un[i].what,
                   un[i].instead);
            ok = 0;
        }
    }
    return ok;
}

static af_t *always(actx_t *x, const sx_t *at)
{
    sexpr_t *e = ra_alloc(x->a, sizeof *e);
    e->k = E_INT;
    e->text = "1";
    e->src = at->src;
    e->off = at->off;
    e->end = at->end;
    return af_simple(x, e, C_STATIC);
}

/* `a IN b`, `a NOT IN b` (negated by the caller) */
static af_t *in_filter(actx_t *x, spq_t *q, const sx_t *n, int in_sub)
{
    if (n->b->k == SX_SELECT) {
        sexpr_t *l = sa_translate(q, n->a);
        int cl = classify(l);
        if (cl == C_MIX || cl == C_STATIC) {
            s_diag(x->c, 0, n->src, n->a->off,
                   cl == C_MIX ? "the left side of \"IN (SELECT ..)\" must come from the row or "
                                 "from request data, not both"
                               : "the left side of \"IN (SELECT ..)\" must read the row or "
                                 "request data (auth.*, subscription.*, connection.*)");
            return always(x, n);
        }
        if (in_sub) {
            s_diag(x->c, 0, n->src, n->b->off,
                   "a subquery cannot contain another subquery in the alpha form of streams; "
                   "set \"config: {edition: 3}\"");
            return always(x, n);
        }
        int ok = 1;
        asub_t *sub = compile_sub(x, q, n->b, &ok);
        if (!sub) return always(x, n);
        af_t *f = af_new(x, cl == C_ROW ? AF_IN : AF_EXISTS, n->src, n->off);
        f->sub = sub;
        if (cl == C_ROW) {
            f->e = l;
        } else {
            /* `<request> IN (SELECT c ..)`: EXISTS (SELECT .. WHERE .. AND c = <request>) */
            af_t *m = af_new(x, AF_MATCH, n->src, n->off);
            m->e = sub->col;
            m->req = l;
            apush(x->a, &sub->terms, m);
        }
        return f;
    }
    if (n->b->k == SX_LIST || n->b->k == SX_ARRAY) {
        s_diag(x->c, 0, n->src, n->b->off,
               "a list of values after \"IN\" is not supported in the alpha form of streams; "
               "compare with \"=\" and \"OR\", or set \"config: {edition: 3}\"");
        return always(x, n);
    }
    sexpr_t *l = sa_translate(q, n->a), *r = sa_translate(q, n->b);
    int cl = classify(l), cr = classify(r);
    if (cl == C_MIX || cr == C_MIX) {
        s_diag(x->c, 0, n->src, n->off, MIXED);
        return always(x, n);
    }
    if ((cl == C_ROW && cr == C_REQ) || (cl == C_REQ && cr == C_ROW)) {
        if (in_sub && cl == C_ROW) {
            s_diag(x->c, 0, n->src, n->off,
                   "\"<column> IN <request array>\" is not supported inside a subquery; compare "
                   "the column with \"=\"");
            return always(x, n);
        }
        af_t *m = af_new(x, AF_MATCH, n->src, n->off);
        m->e = cl == C_ROW ? l : r;
        m->req = cl == C_ROW ? r : l;
        m->expands = cl == C_ROW;
        m->row_expands = cl == C_REQ;
        return m;
    }
    /* both sides from one source: a membership test in a JSON array (two operands, the
     * location of the whole expression) */
    sexpr_t *e = sa_bin(x->b, "=", l, r);
    e->k = E_FUNC;
    e->op = "ps_json_contains";
    return af_simple(x, e,
                     cl == C_ROW || cr == C_ROW   ? C_ROW
                     : cl == C_REQ || cr == C_REQ ? C_REQ
                                                  : C_STATIC);
}

static int combine_cls(int a, int b)
{
    if (a == C_STATIC) return b;
    if (b == C_STATIC) return a;
    return a == b ? a : -1;
}

static af_t *to_filter(actx_t *x, spq_t *q, const sx_t *n, int in_sub)
{
    if (n->k == SX_BIN && (strcmp(n->op, "AND") == 0 || strcmp(n->op, "OR") == 0)) {
        af_t *l = to_filter(x, q, n->a, in_sub), *r = to_filter(x, q, n->b, in_sub);
        int and = n->op[0] == 'A';
        if (l->k == AF_SIMPLE && r->k == AF_SIMPLE && combine_cls(l->cls, r->cls) >= 0)
            return af_simple(x, sa_bin(x->b, and? "and" : "or", l->e, r->e),
                             combine_cls(l->cls, r->cls));
        af_t *f = af_pair(x, and? AF_AND : AF_OR, l, r);
        f->off = n->off;
        return f;
    }
    if (n->k == SX_BIN && (strcmp(n->op, "IN") == 0 || strcmp(n->op, "NOT IN") == 0)) {
        af_t *f = in_filter(x, q, n, in_sub);
        if (n->op[0] != 'N') return f;
        if (f->k == AF_SIMPLE) return af_simple(x, sa_not(x->b, f->e), f->cls);
        af_t *nt = af_new(x, AF_NOT, n->src, n->off);
        nt->v = ra_alloc(x->a, sizeof(af_t *));
        nt->v[0] = f;
        nt->n = 1;
        return nt;
    }
    if (n->k == SX_BIN && strcmp(n->op, "=") == 0) {
        sexpr_t *l = sa_translate(q, n->a), *r = sa_translate(q, n->b);
        int cl = classify(l), cr = classify(r);
        if (cl == C_MIX || cr == C_MIX) {
            s_diag(x->c, 0, n->src, n->off, MIXED);
            return always(x, n);
        }
        if ((cl == C_ROW && cr == C_REQ) || (cl == C_REQ && cr == C_ROW)) {
            af_t *m = af_new(x, AF_MATCH, n->src, n->off);
            m->e = cl == C_ROW ? l : r;
            m->req = cl == C_ROW ? r : l;
            return m;
        }
        return af_simple(x, sa_bin(x->b, "=", l, r), combine_cls(cl, cr));
    }
    if (n->k == SX_UN && strcmp(n->op, "NOT") == 0) {
        af_t *in = to_filter(x, q, n->a, in_sub);
        if (in->k == AF_SIMPLE) return af_simple(x, sa_not(x->b, in->e), in->cls);
        af_t *nt = af_new(x, AF_NOT, n->src, n->off);
        nt->v = ra_alloc(x->a, sizeof(af_t *));
        nt->v[0] = in;
        nt->n = 1;
        return nt;
    }
    sexpr_t *e = sa_translate(q, n);
    int c = classify(e);
    if (c == C_MIX) {
        s_diag(x->c, 0, n->src, n->off, MIXED);
        return always(x, n);
    }
    return af_simple(x, e, c);
}

/* ---- disjunctive normal form (the reference's toDisjunctiveNormalForm) ------------------ */

static af_t *af_list(actx_t *x, int k, const af_t *at, avec_t *v)
{
    af_t *f = af_new(x, k, at->src, at->off);
    f->v = (af_t **)v->v;
    f->n = v->n;
    return f;
}

static af_t *dnf(actx_t *x, af_t *f);

static af_t *negate(actx_t *x, af_t *f)
{
    af_t *nt = af_new(x, AF_NOT, f->src, f->off);
    nt->v = ra_alloc(x->a, sizeof(af_t *));
    nt->v[0] = f;
    nt->n = 1;
    return nt;
}

/* every choice of one term from each OR of ors (the reference's cartesianProduct) */
static void product(actx_t *x, af_t **ors, int n, int i, avec_t *cur, const af_t *at, avec_t *atoms,
                    avec_t *out)
{
    if (i == n) {
        avec_t and = {0};
        for (int k = 0; k < cur->n; k++)
            apush(x->a, &and, cur->v[k]);
        for (int k = 0; k < atoms->n; k++)
            apush(x->a, &and, atoms->v[k]);
        apush(x->a, out, af_list(x, AF_AND, at, &and));
        return;
    }
    for (int k = 0; k < ors[i]->n; k++) {
        apush(x->a, cur, ors[i]->v[k]);
        product(x, ors, n, i + 1, cur, at, atoms, out);
        cur->n--;
    }
}

static af_t *dnf(actx_t *x, af_t *f)
{
    if (f->k == AF_NOT) {
        af_t *in = f->v[0];
        if (in->k == AF_NOT) return dnf(x, in->v[0]);
        if (in->k == AF_SIMPLE) return af_simple(x, sa_not(x->b, in->e), in->cls);
        if (in->k != AF_AND && in->k != AF_OR) return f;
        avec_t terms = {0};
        for (int i = 0; i < in->n; i++)
            apush(x->a, &terms, dnf(x, negate(x, in->v[i])));
        af_t *r = af_list(x, in->k == AF_AND ? AF_OR : AF_AND, in, &terms);
        return dnf(x, r);
    }
    if (f->k == AF_AND) {
        avec_t atoms = {0}, ors = {0};
        for (int i = 0; i < f->n; i++) {
            af_t *t = dnf(x, f->v[i]);
            if (t->k == AF_AND)
                for (int k = 0; k < t->n; k++)
                    apush(x->a, &atoms, t->v[k]);
            else if (t->k == AF_OR)
                apush(x->a, &ors, t);
            else
                apush(x->a, &atoms, t);
        }
        if (!ors.n) return af_list(x, AF_AND, f, &atoms);
        avec_t out = {0}, cur = {0};
        product(x, (af_t **)ors.v, ors.n, 0, &cur, f, &atoms, &out);
        return af_list(x, AF_OR, f, &out);
    }
    if (f->k == AF_OR) {
        avec_t out = {0};
        for (int i = 0; i < f->n; i++) {
            af_t *t = dnf(x, f->v[i]);
            if (t->k == AF_OR)
                for (int k = 0; k < t->n; k++)
                    apush(x->a, &out, t->v[k]);
            else
                apush(x->a, &out, t);
        }
        return af_list(x, AF_OR, f, &out);
    }
    return f;
}

/* the literals of a conjunction, in order (nested ANDs flattened) */
static void literals(actx_t *x, af_t *f, avec_t *out)
{
    if (f->k == AF_AND) {
        for (int i = 0; i < f->n; i++)
            literals(x, f->v[i], out);
        return;
    }
    apush(x->a, out, f);
}

/* 0 when a NOT is left in front of something that is not a plain condition */
static int check_negations(actx_t *x, af_t *f)
{
    if (f->k == AF_AND || f->k == AF_OR) {
        int ok = 1;
        for (int i = 0; i < f->n; i++)
            ok &= check_negations(x, f->v[i]);
        return ok;
    }
    if (f->k != AF_NOT) return 1;
    s_diag(x->c, 0, f->src, f->off,
           "\"NOT\" cannot be applied to a comparison with request data or to a subquery in the "
           "alpha form of streams; state the condition positively (for example \"<>\" on the "
           "row alone), or set \"config: {edition: 3}\"");
    return 0;
}

/* ---- subqueries ----------------------------------------------------------------------- */

static asub_t *compile_sub(actx_t *x, spq_t *outer, const sx_t *sel, int *ok)
{
    (void)outer;
    const ssel_t *s = sel->sel;
    if (!check_select(x, s, 1)) return NULL;
    asub_t *sub = ra_alloc(x->a, sizeof *sub);
    spq_t *q = sa_query(x->b, x->s, s->src, &s->from[0], &sub->rs);
    if (!sub->rs) return NULL;
    if (s->ncols != 1 ||
        (s->cols[0].expr->k == SX_REF && strcmp(s->cols[0].expr->name, "*") == 0)) {
        s_diag(x->c, 0, s->src, s->off, "the subquery after \"IN\" must select exactly one column");
        return NULL;
    }
    sub->col = sa_translate(q, s->cols[0].expr);
    int cc = classify(sub->col);
    if (cc == C_REQ || cc == C_MIX) {
        s_diag(x->c, 0, s->src, s->cols[0].expr->off,
               "the column a subquery selects must come from its table");
        return NULL;
    }
    if (!s->where) return sub;
    af_t *f = dnf(x, to_filter(x, q, s->where, 1));
    if (f->k == AF_OR) {
        if (f->n != 1) {
            s_diag(x->c, 0, s->src, s->where->off,
                   "a subquery cannot use \"OR\" in the alpha form of streams; write one stream "
                   "per alternative, or set \"config: {edition: 3}\"");
            *ok = 0;
            return NULL;
        }
        f = f->v[0];
    }
    avec_t lits = {0};
    literals(x, f, &lits);
    for (int i = 0; i < lits.n; i++) {
        af_t *t = lits.v[i];
        if (t->k != AF_SIMPLE && t->k != AF_MATCH) {
            s_diag(x->c, 0, t->src, t->off,
                   "this condition is not supported inside a subquery; compare a column with a "
                   "request value (\"owner = auth.user_id()\") or test the row alone");
            *ok = 0;
            return NULL;
        }
        apush(x->a, &sub->terms, t);
    }
    return sub;
}

/* ---- variants -> data sources, parameter indexes, queriers ---------------------------- */

static sval_t *request_value(actx_t *x, sexpr_t *e)
{
    sval_t *v = ra_alloc(x->a, sizeof *v);
    v->kind = SV_REQUEST;
    v->expr = e;
    v->stmt = -1;
    return v;
}

/* a json_each() over request data, as a stage lookup; its value is output 0 */
static sstagelk_t *request_each(actx_t *x, sexpr_t *req, avec_t *tvfs)
{
    sstagelk_t *l = ra_alloc(x->a, sizeof *l);
    l->kind = SL_TABLE_VALUED;
    l->fn = "json_each";
    l->fn_inputs = ra_alloc(x->a, sizeof(sexpr_t *));
    l->fn_inputs[0] = req;
    l->nfn_inputs = 1;
    l->rs = sa_tvf(x->b, req, TVF_STATIC, NULL);
    l->rs->alpha_in = 2;
    l->outs = ra_alloc(x->a, sizeof(sexpr_t *));
    l->outs[0] = sa_column(x->b, l->rs, "value", req);
    l->nouts = 1;
    l->stmt = -1;
    l->canon = ra_printf(x->a, "alpha-each:%d", l->rs->id);
    apush(x->a, tvfs, l);
    return l;
}

/* the row side of a parameter: e itself, or the values of the JSON array e */
static sexpr_t *row_part(actx_t *x, sproc_t *p, avec_t *fns, af_t *m)
{
    if (!m->row_expands) return m->e;
    stvf_t *fn = ra_alloc(x->a, sizeof *fn);
    fn->fn = "json_each";
    fn->inputs = ra_alloc(x->a, sizeof(sexpr_t *));
    fn->inputs[0] = m->e;
    fn->ninputs = 1;
    fn->rs = sa_tvf(x->b, m->e, TVF_ROW, p->rs);
    fn->rs->alpha_in = 1;
    apush(x->a, fns, fn);
    return sa_column(x->b, fn->rs, "value", m->e);
}

static void proc_init(sproc_t *p, srs_t *rs)
{
    p->schema = rs->schema;
    p->table = rs->table;
    p->rs = rs;
    p->stmt = -1;
}

/* the parameter index of a subquery and the stage lookup that reads it */
static sstagelk_t *sub_lookup(actx_t *x, asub_t *sub, avec_t *req_filters, avec_t *params)
{
    slookup_t *l = ra_alloc(x->a, sizeof *l);
    proc_init(&l->p, sub->rs);
    avec_t filters = {0}, parts = {0}, fns = {0}, inst = {0};
    for (int i = 0; i < sub->terms.n; i++) {
        af_t *t = sub->terms.v[i];
        if (t->k == AF_SIMPLE) {
            apush(x->a, t->cls == C_REQ ? req_filters : &filters, t->e);
        } else {
            apush(x->a, &parts, row_part(x, &l->p, &fns, t));
            apush(x->a, &inst, request_value(x, t->req));
        }
    }
    if (!parts.n) {
        s_diag(x->c, 0, sub->rs->src, sub->rs->off,
               "a subquery must compare one of its columns with request data (for example "
               "\"WHERE owner_id = auth.user_id()\")");
        return NULL;
    }
    l->p.filters = (sexpr_t **)filters.v;
    l->p.nfilters = filters.n;
    l->p.parts = (sexpr_t **)parts.v;
    l->p.nparts = parts.n;
    l->p.fns = (stvf_t **)fns.v;
    l->p.nfns = fns.n;
    l->outs = ra_alloc(x->a, sizeof(sexpr_t *));
    l->outs[0] = sub->col;
    l->nouts = 1;
    l->lookup_name = x->s->name;
    l->query_id = ra_printf(x->a, "%d", x->qcounter++);
    l->result_named = 1;
    l->canon = ra_printf(x->a, "alpha:%s/%s", x->s->name, l->query_id);
    apush(x->a, &x->lookups, l);
    sstagelk_t *sl = ra_alloc(x->a, sizeof *sl);
    sl->kind = SL_PARAMETER;
    sl->lookup = l;
    sl->inst = (sval_t **)inst.v;
    sl->ninst = inst.n;
    sl->stmt = -1;
    sl->canon = l->canon;
    apush(x->a, params, sl);
    return sl;
}

static squerier_t *variant(actx_t *x, af_t *conj, int id, srs_t *rs, sout_t *outs, int nouts,
                           const char *out_table)
{
    rarena_t *a = x->a;
    sdata_t *d = ra_alloc(a, sizeof *d);
    proc_init(&d->p, rs);
    d->outs = outs;
    d->nouts = nouts;
    d->out_table = out_table;
    d->alpha = 1;
    squerier_t *q = ra_alloc(a, sizeof *q);
    q->alpha = 1;
    q->filter_stmt = -1;
    avec_t lits = {0}, filters = {0}, parts = {0}, fns = {0}, req_filters = {0}, inst = {0};
    avec_t tvfs = {0}, params = {0}, nulls = {0};
    if (conj) literals(x, conj, &lits);
    for (int i = 0; i < lits.n; i++) {
        af_t *t = lits.v[i];
        sval_t *v = NULL;
        int null_ok = 0;
        switch (t->k) {
        case AF_SIMPLE:
            apush(a, t->cls == C_REQ ? &req_filters : &filters, t->e);
            continue;
        case AF_MATCH:
            apush(a, &parts, row_part(x, &d->p, &fns, t));
            if (t->expands) {
                v = ra_alloc(a, sizeof *v);
                v->kind = SV_LOOKUP;
                v->lookup = request_each(x, t->req, &tvfs);
                v->stmt = -1;
            } else {
                v = request_value(x, t->req);
            }
            break;
        case AF_IN:
        case AF_EXISTS: {
            sstagelk_t *sl = sub_lookup(x, t->sub, &req_filters, &params);
            if (!sl || t->k == AF_EXISTS) continue;
            apush(a, &parts, t->e);
            null_ok = 1;
            v = ra_alloc(a, sizeof *v);
            v->kind = SV_LOOKUP;
            v->lookup = sl;
            v->stmt = -1;
            break;
        }
        default:
            continue;
        }
        apush(a, &inst, v);
        apush(a, &nulls, (void *)(size_t)null_ok);
    }
    d->p.filters = (sexpr_t **)filters.v;
    d->p.nfilters = filters.n;
    d->p.parts = (sexpr_t **)parts.v;
    d->p.nparts = parts.n;
    d->p.fns = (stvf_t **)fns.v;
    d->p.nfns = fns.n;
    d->part_null = ra_alloc(a, (size_t)parts.n + 1);
    for (int i = 0; i < nulls.n; i++)
        d->part_null[i] = nulls.v[i] != NULL;
    sbucket_t *bk = ra_alloc(a, sizeof *bk);
    bk->name = ra_printf(a, "%s|%d", x->s->name, id);
    bk->canon = ra_printf(a, "alpha:%s", bk->name);
    d->canon = bk->canon;
    bk->sources = ra_alloc(a, sizeof(sdata_t *));
    bk->sources[0] = d;
    bk->nsources = 1;
    apush(a, &x->data, d);
    q->req_filters = (sexpr_t **)req_filters.v;
    q->nreq_filters = req_filters.n;
    /* stage 0: json_each over request data; then the parameter indexes */
    avec_t *stage[2] = {&tvfs, &params};
    q->stages = ra_alloc(a, sizeof(sstagelk_t **) * 2);
    q->nstage = ra_alloc(a, sizeof(int) * 2);
    for (int s = 0; s < 2; s++) {
        if (!stage[s]->n) continue;
        for (int i = 0; i < stage[s]->n; i++) {
            sstagelk_t *l = stage[s]->v[i];
            l->stage = q->nstages;
            l->index = i;
        }
        q->stages[q->nstages] = (sstagelk_t **)stage[s]->v;
        q->nstage[q->nstages++] = stage[s]->n;
    }
    q->bucket = bk;
    q->inst = (sval_t **)inst.v;
    q->ninst = inst.n;
    q->unique_name = bk->name;
    q->canon = bk->canon;
    q->query_index = 0;
    q->query_text = x->src->text;
    return q;
}

/* ---- a stream ------------------------------------------------------------------------- */

void sa_stream(scompile_t *c, const char *name, const ssrc_t *src, int priority, int auto_subscribe,
               int accept_dangerous, int line, int col)
{
    sbuilder_t *b = sa_builder(c);
    rarena_t *a = &c->plan->arena;
    actx_t x = {0};
    x.c = c;
    x.b = b;
    x.a = a;
    x.src = src;
    int nerr = (int)c->d->nerrors;
    sstream_t *s = ra_alloc(a, sizeof *s);
    s->name = name;
    /* the reference's alpha streams never read `priority`: their buckets have the default
     * priority 3 (a subscription's override_priority still applies) */
    s->priority = 3;
    s->auto_subscribe = auto_subscribe;
    s->accept_dangerous = accept_dangerous;
    s->alpha = 1;
    s->line = line;
    s->col = col;
    x.s = s;
    if (priority != 3)
        s_diag(c, 1, src, 0,
               "\"priority\" has no effect in the alpha form of streams (its buckets have "
               "priority 3, as in PowerSync); set \"config: {edition: 3}\" to use it");
    int off = 0;
    char msg[256];
    ssel_t *sel = sparse_select(a, src, &off, msg, sizeof msg);
    if (!sel) {
        s_diag(c, 0, src, off, "%s", msg);
        return;
    }
    if (!check_select(&x, sel, 0)) return;
    srs_t *rs = NULL;
    spq_t *q = sa_query(b, s, src, &sel->from[0], &rs);
    if (!rs) return;
    /* the data: "*" or named expressions of the row */
    sout_t *outs = ra_alloc(a, sizeof(sout_t) * (size_t)(sel->ncols + 1));
    int nouts = 0, has_id = 0;
    for (int i = 0; i < sel->ncols; i++) {
        const scol_t *cl = &sel->cols[i];
        if (cl->expr->k == SX_REF && strcmp(cl->expr->name, "*") == 0) {
            outs[nouts++] = (sout_t){SOUT_STAR, NULL, NULL};
            has_id = 1;
            continue;
        }
        const char *alias = cl->alias ? cl->alias : cl->expr->k == SX_REF ? cl->expr->name : NULL;
        if (!alias) {
            s_diag(c, 0, src, cl->expr->off, "name this column with \"AS <name>\"");
            continue;
        }
        sexpr_t *e = sa_translate(q, cl->expr);
        int k = classify(e);
        if (k == C_REQ || k == C_MIX) {
            s_diag(c, 0, src, cl->expr->off,
                   "a selected column can only read the row; request values (auth.*, "
                   "subscription.*, connection.*) belong in WHERE");
            continue;
        }
        if (strcmp(alias, "id") == 0) has_id = 1;
        outs[nouts++] = (sout_t){SOUT_EXPR, e, alias};
    }
    if (!has_id && sel->ncols)
        s_diag(c, 0, src, sel->cols[0].off, "the query must return an \"id\" column");
    /* WHERE -> variants */
    af_t *f = sel->where ? dnf(&x, to_filter(&x, q, sel->where, 0)) : NULL;
    if ((int)c->d->nerrors > nerr) return;
    if (f && !check_negations(&x, f)) return;
    avec_t qs = {0};
    const char *out_table = sel->from[0].alias;
    if (f && f->k == AF_OR) {
        for (int i = 0; i < f->n; i++)
            apush(a, &qs, variant(&x, f->v[i], i, rs, outs, nouts, out_table));
    } else {
        apush(a, &qs, variant(&x, f, 0, rs, outs, nouts, out_table));
    }
    if ((int)c->d->nerrors > nerr) return;
    s->q = (squerier_t **)qs.v;
    s->nq = qs.n;
    if (s->uses_subscription && auto_subscribe)
        s_diag(c, 1, src, 0,
               "stream \"%s\" is subscribed to by default but reads subscription parameters; a "
               "default subscription has none (they are null): remove \"auto_subscribe\" or "
               "the parameter",
               name);
    sa_add(b, s, (sdata_t **)x.data.v, x.data.n, (slookup_t **)x.lookups.v, x.lookups.n);
}
