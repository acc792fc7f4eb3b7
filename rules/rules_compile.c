/* rules_compile.c -- compile a sync-rules YAML file into an immutable rules_set_t
 *
 * Steps: load the YAML document (libyaml), walk the top-level keys, and for every bucket
 * definition parse its parameter queries, then its data queries (rules_sql.c), validate them
 * against the spec (§4.2-§4.5) and reduce each to SQLite SQL over bound parameters plus a
 * filter tree (see rules_int.h). Every problem becomes a diagnostic with the file position of
 * the offending token: positions inside a query are mapped back through the YAML scalar
 * (plain, quoted or block style) by rpos_map(). Compilation continues after an error so one
 * run reports as much as it can; any error means no rule set.
 */
#include "rules_stream.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

typedef struct cc {
    rules_set_t *set;
    rules_diags_t *d;
    const char *text;
    size_t len;
    yaml_document_t *doc;
    yaml_node_t *precision_node;     /* config.timestamp_max_precision */
    yaml_node_t *sqlite_engine_node; /* config.unstable_sqlite_expression_engine: true */
} cc_t;

/* ---- diagnostics ---------------------------------------------------------------------- */

void rdiag_add(rules_diags_t *d, int warning, int line, int col, const char *fmt, ...)
{
    if (d->n % 16 == 0) d->items = rx_realloc(d->items, sizeof(rules_diag_t) * (d->n + 16));
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    d->items[d->n++] = (rules_diag_t){warning, line, col, rx_strdup(buf)};
    if (warning)
        d->nwarnings++;
    else
        d->nerrors++;
}

void rules_diags_free(rules_diags_t *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n; i++)
        free(d->items[i].message);
    free(d->items);
    free(d->file);
    memset(d, 0, sizeof *d);
}

const char *rules_diag_format(const rules_diags_t *d, size_t i, char *buf, size_t len)
{
    const rules_diag_t *g = &d->items[i];
    const char *file = d->file ? d->file : "sync-rules.yaml";
    if (g->line > 0)
        snprintf(buf, len, "%s:%d:%d: %s%s", file, g->line, g->col,
                 g->is_warning ? "warning: " : "", g->message);
    else
        snprintf(buf, len, "%s: %s%s", file, g->is_warning ? "warning: " : "", g->message);
    return buf;
}

static void node_err(cc_t *c, int warning, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void node_err(cc_t *c, int warning, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rdiag_add(c->d, warning, n ? (int)n->start_mark.line + 1 : 0,
              n ? (int)n->start_mark.column + 1 : 0, "%s", buf);
}

/* Map an offset in a scalar's value to its line/col in the file (see file comment). */
void rpos_map(const rposmap_t *m, int off, int *line, int *col)
{
    const char *src = m->text;
    size_t j = m->start, e = m->len;
    if (m->style == YAML_SINGLE_QUOTED_SCALAR_STYLE || m->style == YAML_DOUBLE_QUOTED_SCALAR_STYLE)
        j++;
    else if (m->style == YAML_LITERAL_SCALAR_STYLE || m->style == YAML_FOLDED_SCALAR_STYLE) {
        while (j < e && src[j] != '\n')
            j++;
        if (j < e) j++;
        while (j < e && (src[j] == ' ' || src[j] == '\t'))
            j++;
    }
    const char *v = m->value;
    size_t vlen = strlen(v);
    for (int i = 0; i < off && (size_t)i < vlen && j < e; i++) {
        char ch = v[i];
        if (ch == ' ' || ch == '\n' || ch == '\t') {
            if (src[j] == ' ' || src[j] == '\n' || src[j] == '\t' || src[j] == '\r') {
                j++;
                char nx = v[i + 1];
                if (nx != ' ' && nx != '\n' && nx != '\t') {
                    while (j < e &&
                           (src[j] == ' ' || src[j] == '\n' || src[j] == '\t' || src[j] == '\r'))
                        j++;
                }
                continue;
            }
        }
        while (j < e && src[j] != ch)
            j++;
        if (j < e) j++;
    }
    /* land on the token itself, not on folding whitespace before it */
    if ((size_t)off < vlen && v[off] != ' ' && v[off] != '\n')
        while (j < e && (src[j] == ' ' || src[j] == '\n' || src[j] == '\r') && src[j] != v[off])
            j++;
    int l = 1, c = 1;
    for (size_t k = 0; k < j && k < e; k++) {
        if (src[k] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

typedef struct qc {
    cc_t *c;
    rposmap_t pm;
    int qkind; /* Q_DATA, Q_PARAM */
    int pkind; /* PQ_* for parameter queries */
    rdef_t *def;
    int params_known;
    rselect_t *sel;
    const char *tname; /* table name (without '%') for qualifiers */
    const char *alias;
    rrowq_t *r;    /* row side being built */
    rbuf_t rowsql; /* SELECT list of the row side */
    int nrowsql;
    /* lookup inputs (request side) */
    char **inputs;
    int ninputs;
    int expand_input;
    rbuf_t reqsql;
    int nreqsql;
    rbuf_t reqpred;
    int uses_auth, uses_client;
    int failed;
} qc_t;

static void q_err(qc_t *q, int warning, int off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void q_err(qc_t *q, int warning, int off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int line, col;
    rpos_map(&q->pm, off, &line, &col);
    rdiag_add(q->c->d, warning, line, col, "%s", buf);
    if (!warning) q->failed = 1;
}

/* ---- functions ------------------------------------------------------------------------ */

static const struct fn {
    const char *name;
    int min, max;
} fns[] = {
    {"upper", 1, 1},
    {"lower", 1, 1},
    {"substring", 2, 3},
    {"hex", 1, 1},
    {"length", 1, 1},
    {"base64", 1, 1},
    {"uuid_blob", 1, 1},
    {"typeof", 1, 1},
    {"ifnull", 2, 2},
    {"iif", 3, 3},
    {"instr", 2, 2},
    {"json_extract", 2, 2},
    {"json_array_length", 1, 2},
    {"json_valid", 1, 1},
    {"json_keys", 1, 1},
    {"unixepoch", 1, 8},
    {"datetime", 1, 8},
    {"st_asgeojson", 1, 1},
    {"st_astext", 1, 1},
    {"st_x", 1, 1},
    {"st_y", 1, 1},
    {NULL, 0, 0},
};

static const struct fn *find_fn(const char *name)
{
    for (int i = 0; fns[i].name; i++)
        if (strcasecmp(fns[i].name, name) == 0) return &fns[i];
    return NULL;
}

static const char *suggest_fn(const char *name)
{
    const char *best = NULL;
    int bd = 3;
    for (int i = 0; fns[i].name; i++) {
        int d = rsql_distance(name, fns[i].name);
        if (d < bd) {
            bd = d;
            best = fns[i].name;
        }
    }
    return best;
}

static const char *const je_cols[] = {"key",    "value",   "type", "atom", "id",
                                      "parent", "fullkey", "path", NULL};

static int is_je_col(const char *n)
{
    for (int i = 0; je_cols[i]; i++)
        if (strcmp(n, je_cols[i]) == 0) return 1;
    return 0;
}

static int def_param(const rdef_t *d, const char *name)
{
    for (int i = 0; i < d->nparams; i++)
        if (strcmp(d->params[i], name) == 0) return i;
    return -1;
}

/* Resolve names and compute deps; reports errors. Returns deps or -1 on error. */
static int resolve(qc_t *q, rnode_t *n)
{
    if (!n) return 0;
    int deps = 0, r;
    switch (n->kind) {
    case N_INT:
    case N_REAL:
    case N_STR:
    case N_NULL:
    case N_BOOL:
        break;
    case N_COL: {
        const char *qual = n->qual;
        if (qual && strcmp(qual, "bucket") == 0) {
            if (q->qkind != Q_DATA) {
                q_err(q, 0, n->off, "bucket parameters are not available in parameter queries");
                return -1;
            }
            n->kind = N_BUCKET;
            if (q->params_known && def_param(q->def, n->name) < 0) {
                const char *best = NULL;
                int bd = 3;
                for (int i = 0; i < q->def->nparams; i++) {
                    int d = rsql_distance(n->name, q->def->params[i]);
                    if (d < bd) {
                        bd = d;
                        best = q->def->params[i];
                    }
                }
                if (best)
                    q_err(q, 0, n->off, "unknown bucket parameter \"%s\" (did you mean \"%s\"?)",
                          n->name, best);
                else
                    q_err(q, 0, n->off, "unknown bucket parameter \"%s\"", n->name);
                return -1;
            }
            deps = DEP_BUCKET;
            break;
        }
        if (qual &&
            (strcmp(qual, "token_parameters") == 0 || strcmp(qual, "user_parameters") == 0)) {
            if (q->qkind == Q_DATA) {
                q_err(q, 0, n->off,
                      "\"%s\" is not available in data queries; use bucket parameters", qual);
                return -1;
            }
            int tok = qual[0] == 't';
            n->kind = tok ? N_TOKPARAM : N_USERPARAM;
            if (tok)
                q->uses_auth = 1;
            else
                q->uses_client = 1;
            deps = DEP_REQ;
            break;
        }
        if (q->pkind == PQ_JSON_EACH && q->qkind == Q_PARAM) {
            const char *al = q->alias ? q->alias : "json_each";
            if ((!qual || strcmp(qual, al) == 0) && is_je_col(n->name)) {
                n->kind = N_JEACH;
                n->qual = (char *)al;
                deps = DEP_REQ;
                break;
            }
            q_err(q, 0, n->off, "unknown column \"%s%s%s\" (json_each() has key, value, type, ...)",
                  qual ? qual : "", qual ? "." : "", n->name);
            return -1;
        }
        if (!q->sel->has_from) {
            q_err(q, 0, n->off, "unknown column \"%s\" (the query has no \"FROM\")", n->name);
            return -1;
        }
        if (qual && !(q->alias ? strcmp(qual, q->alias) == 0 : strcmp(qual, q->tname) == 0)) {
            q_err(q, 0, n->off, "unknown table \"%s\"", qual);
            return -1;
        }
        deps = DEP_ROW;
        break;
    }
    case N_FUNC:
        if (n->qual) {
            if (strcmp(n->qual, "request") == 0 &&
                (strcmp(n->name, "user_id") == 0 || strcmp(n->name, "jwt") == 0 ||
                 strcmp(n->name, "parameters") == 0)) {
                if (q->qkind == Q_DATA) {
                    q_err(q, 0, n->off,
                          "\"request.%s()\" is not available in data queries; use bucket "
                          "parameters",
                          n->name);
                    return -1;
                }
                n->kind = N_REQ;
                n->req = n->name[0] == 'u' ? REQ_USER_ID : n->name[0] == 'j' ? REQ_JWT : REQ_PARAMS;
                if (n->req == REQ_PARAMS)
                    q->uses_client = 1;
                else
                    q->uses_auth = 1;
                deps = DEP_REQ;
                break;
            }
            q_err(q, 0, n->off, "unknown function \"%s.%s\"", n->qual, n->name);
            return -1;
        }
        if (strcasecmp(n->name, "json_each") == 0) {
            q_err(q, 0, n->off, "json_each() is only allowed after \"FROM\" in parameter queries");
            return -1;
        }
        {
            const struct fn *f = find_fn(n->name);
            if (!f) {
                const char *s = suggest_fn(n->name);
                if (s)
                    q_err(q, 0, n->off, "unknown function \"%s\" (did you mean \"%s\"?)", n->name,
                          s);
                else
                    q_err(q, 0, n->off, "unknown function \"%s\"", n->name);
                return -1;
            }
            if (n->nargs < f->min || n->nargs > f->max) {
                if (f->min == f->max)
                    q_err(q, 0, n->off, "function \"%s\" takes %d argument%s, not %d", f->name,
                          f->min, f->min == 1 ? "" : "s", n->nargs);
                else
                    q_err(q, 0, n->off, "function \"%s\" takes %d to %d arguments, not %d", f->name,
                          f->min, f->max, n->nargs);
                return -1;
            }
            if (strcmp(f->name, "json_extract") == 0 && n->args[1]->kind == N_STR &&
                n->args[1]->text[0] != '$') {
                q_err(q, 0, n->args[1]->off, "json_extract() path must start with \"$\"");
                return -1;
            }
        }
        for (int i = 0; i < n->nargs; i++) {
            if ((r = resolve(q, n->args[i])) < 0) return -1;
            deps |= r;
        }
        break;
    case N_INLIST:
        for (int i = 0; i < n->nargs; i++) {
            if ((r = resolve(q, n->args[i])) < 0) return -1;
            deps |= r;
        }
        /* fallthrough */
    default:
        if ((r = resolve(q, n->a)) < 0) return -1;
        deps |= r;
        if ((r = resolve(q, n->b)) < 0) return -1;
        deps |= r;
        break;
    }
    n->deps = deps;
    return deps;
}

/* ---- SQL emission --------------------------------------------------------------------- */

static int row_col(rrowq_t *r, const char *name)
{
    for (int i = 0; i < r->ncols; i++)
        if (strcmp(r->cols[i], name) == 0) return i;
    r->cols = rx_realloc(r->cols, sizeof(char *) * (size_t)(r->ncols + 1));
    r->cols[r->ncols] = rx_strdup(name);
    return r->ncols++;
}

static void sql_ident(rbuf_t *b, const char *s)
{
    rb_putc(b, '"');
    for (; *s; s++) {
        if (*s == '"') rb_putc(b, '"');
        rb_putc(b, *s);
    }
    rb_putc(b, '"');
}

static void emit(qc_t *q, rnode_t *n, rbuf_t *b);

/*
 * `x -> 'key'` and `x ->> 'key'` as the reference evaluates them (rules_func.c): with
 * fixed_json_extract, SQLite's operators, and `->` gives 'null' also where the path ends below
 * a JSON null; without it, `->>` gives the text 'null' for a JSON null and `->` gives NULL.
 */
static void emit_json_arrow(qc_t *q, rnode_t *n, rbuf_t *b)
{
    int fixed = q->c->set->fixed_json_extract;
    int text = strcmp(n->op, "->>") == 0;
    if (fixed && text) {
        rb_putc(b, '(');
        emit(q, n->a, b);
        rb_puts(b, " ->> ");
        rb_sql_json_path(b, n->b->text, fixed);
        rb_putc(b, ')');
        return;
    }
    if (!fixed && !text) {
        rb_puts(b, "NULLIF((");
        emit(q, n->a, b);
        rb_puts(b, " -> ");
        rb_sql_json_path(b, n->b->text, fixed);
        rb_puts(b, "), 'null')");
        return;
    }
    rb_puts(b, "ps_jnull_text(");
    emit(q, n->a, b);
    rb_puts(b, ", ");
    rb_sql_str(b, n->b->text);
    rb_printf(b, ", %d, (", fixed);
    emit(q, n->a, b);
    rb_printf(b, " %s ", n->op);
    rb_sql_json_path(b, n->b->text, fixed);
    rb_puts(b, "))");
}

static void emit(qc_t *q, rnode_t *n, rbuf_t *b)
{
    switch (n->kind) {
    case N_INT:
    case N_REAL:
        rb_puts(b, n->text);
        break;
    case N_STR:
        rb_sql_str(b, n->text);
        break;
    case N_NULL:
        rb_puts(b, "NULL");
        break;
    case N_BOOL:
        rb_puts(b, n->text);
        break;
    case N_COL:
        rb_printf(b, "?%d", row_col(q->r, n->name) + 1);
        break;
    case N_BUCKET:
        rb_puts(b, "NULL");
        break; /* never emitted by valid queries */
    case N_JEACH:
        if (strcmp(n->name, "value") == 0) {
            /* a JSON null is 'null' without fixed_json_extract, objects re-serialized */
            rb_puts(b, "ps_jvalue(");
            sql_ident(b, n->qual);
            rb_puts(b, ".value, ");
            sql_ident(b, n->qual);
            rb_printf(b, ".type, %d)", q->c->set->fixed_json_extract);
            break;
        }
        sql_ident(b, n->qual);
        rb_putc(b, '.');
        rb_puts(b, n->name);
        break;
    case N_REQ:
        rb_printf(b, "?%d", n->req);
        break;
    case N_TOKPARAM:
        if (strcmp(n->name, "user_id") == 0) {
            rb_puts(b, "?1");
        } else {
            rbuf_t p = {0};
            rb_puts(&p, "$.parameters.\"");
            for (const char *s = n->name; *s; s++) {
                if (*s == '"' || *s == '\\') rb_putc(&p, '\\');
                rb_putc(&p, *s);
            }
            rb_putc(&p, '"');
            rb_puts(b, "json_extract(?2, ");
            rb_sql_str(b, p.p);
            rb_putc(b, ')');
            rb_free(&p);
        }
        break;
    case N_USERPARAM: {
        rb_puts(b, "json_extract(?3, ");
        rb_sql_json_path(b, n->name, 1);
        rb_putc(b, ')');
        break;
    }
    case N_UNARY:
        /* NOT with the reference's semantics (NOT NULL is true): ps_not() */
        if (strcmp(n->op, "NOT") == 0) {
            rb_puts(b, "ps_not(");
            emit(q, n->a, b);
            rb_putc(b, ')');
            break;
        }
        rb_putc(b, '(');
        rb_puts(b, n->op);
        rb_putc(b, ' ');
        emit(q, n->a, b);
        rb_putc(b, ')');
        break;
    case N_BINARY:
        if (strcmp(n->op, "AND") == 0 || strcmp(n->op, "OR") == 0) {
            rb_puts(b, "(ps_bool(");
            emit(q, n->a, b);
            rb_printf(b, ") %s ps_bool(", n->op);
            emit(q, n->b, b);
            rb_puts(b, "))");
            break;
        }
        if (strcmp(n->op, "||") == 0) {
            rb_puts(b, "ps_concat(");
            emit(q, n->a, b);
            rb_puts(b, ", ");
            emit(q, n->b, b);
            rb_putc(b, ')');
            break;
        }
        if ((strcmp(n->op, "->") == 0 || strcmp(n->op, "->>") == 0) && n->b->kind == N_STR) {
            emit_json_arrow(q, n, b);
            break;
        }
        rb_putc(b, '(');
        emit(q, n->a, b);
        rb_printf(b, " %s ", n->op);
        emit(q, n->b, b);
        rb_putc(b, ')');
        break;
    case N_FUNC: {
        const struct fn *f = find_fn(n->name);
        if (f && strcmp(f->name, "json_extract") == 0 && !q->c->set->fixed_json_extract &&
            n->nargs == 2) {
            /* edition 1: a JSON null is the text 'null' */
            rb_puts(b, "ps_jnull_text(");
            emit(q, n->args[0], b);
            rb_puts(b, ", ");
            emit(q, n->args[1], b);
            rb_puts(b, ", 0, json_extract(");
            emit(q, n->args[0], b);
            rb_puts(b, ", ");
            emit(q, n->args[1], b);
            rb_puts(b, "))");
            break;
        }
        rb_puts(b, f ? f->name : n->name);
        rb_putc(b, '(');
        for (int i = 0; i < n->nargs; i++) {
            if (i) rb_puts(b, ", ");
            emit(q, n->args[i], b);
        }
        rb_putc(b, ')');
        break;
    }
    case N_CAST:
        rb_puts(b, "ps_cast(");
        emit(q, n->a, b);
        rb_printf(b, ", '%s')", n->name);
        break;
    case N_ISNULL:
        rb_putc(b, '(');
        emit(q, n->a, b);
        rb_puts(b, n->neg ? " IS NOT NULL)" : " IS NULL)");
        break;
    case N_IN:
        /* `x IN <json array>` with the reference's semantics (NULL when either is NULL) */
        rb_puts(b, n->neg ? "ps_not(ps_json_contains(" : "ps_json_contains(");
        emit(q, n->a, b);
        rb_puts(b, ", ");
        emit(q, n->b, b);
        rb_puts(b, n->neg ? "))" : ")");
        break;
    case N_INLIST:
        rb_putc(b, '(');
        emit(q, n->a, b);
        rb_puts(b, n->neg ? " NOT IN (" : " IN (");
        for (int i = 0; i < n->nargs; i++) {
            if (i) rb_puts(b, ", ");
            emit(q, n->args[i], b);
        }
        rb_puts(b, "))");
        break;
    }
}

/* A row-side value: plain columns take the fast path, the rest become SQL result columns. */
static rslot_t row_slot(qc_t *q, rnode_t *n)
{
    rslot_t s = {-1, -1};
    if (n->kind == N_COL) {
        s.col = row_col(q->r, n->name);
        return s;
    }
    if (q->nrowsql) rb_puts(&q->rowsql, ", ");
    emit(q, n, &q->rowsql);
    s.sqlcol = q->nrowsql++;
    return s;
}

static int req_col(qc_t *q, rnode_t *n)
{
    if (q->nreqsql) rb_puts(&q->reqsql, ", ");
    emit(q, n, &q->reqsql);
    return q->nreqsql++;
}

static rnode_t *find_kind(rnode_t *n, nkind_t k)
{
    if (!n) return NULL;
    if (n->kind == k) return n;
    rnode_t *r;
    if ((r = find_kind(n->a, k)) || (r = find_kind(n->b, k))) return r;
    for (int i = 0; i < n->nargs; i++)
        if ((r = find_kind(n->args[i], k))) return r;
    return NULL;
}

static rfilt_t *mkf(fkind_t k)
{
    rfilt_t *f = rx_calloc(1, sizeof *f);
    f->kind = k;
    return f;
}

static void addk(rfilt_t *f, rfilt_t *k)
{
    if (k->kind == f->kind && (k->kind == F_AND || k->kind == F_OR)) {
        for (int i = 0; i < k->nk; i++)
            addk(f, k->k[i]);
        free(k->k);
        free(k);
        return;
    }
    f->k = rx_realloc(f->k, sizeof(rfilt_t *) * (size_t)(f->nk + 1));
    f->k[f->nk++] = k;
}

static void free_filt(rfilt_t *f)
{
    if (!f) return;
    for (int i = 0; i < f->nk; i++)
        free_filt(f->k[i]);
    free(f->k);
    free(f);
}

/* bit set of parameters / inputs a filter matches on every path */
static unsigned covered(const rfilt_t *f)
{
    unsigned m = 0;
    switch (f->kind) {
    case F_AND:
        for (int i = 0; i < f->nk; i++)
            m |= covered(f->k[i]);
        return m;
    case F_OR:
        return f->nk ? covered(f->k[0]) : 0;
    case F_EQ:
    case F_IN_ROWARR:
    case F_IN_REQARR:
        return 1u << (f->p & 31);
    default:
        return 0;
    }
}

static const char *op_name(const rnode_t *n)
{
    if (n->kind == N_IN) return n->neg ? "NOT IN" : "IN";
    if (n->kind == N_ISNULL) return "IS NULL";
    return n->op ? n->op : "?";
}

/* Data query WHERE -> filter over bucket parameters. */
static rfilt_t *dfilt(qc_t *q, rnode_t *n)
{
    if (!(n->deps & DEP_BUCKET)) {
        rfilt_t *f = mkf(F_PRED);
        f->v = row_slot(q, n);
        return f;
    }
    if (n->kind == N_BINARY && (strcmp(n->op, "AND") == 0 || strcmp(n->op, "OR") == 0)) {
        int is_or = n->op[0] == 'O';
        rfilt_t *f = mkf(is_or ? F_OR : F_AND);
        rfilt_t *a = dfilt(q, n->a);
        rfilt_t *b = a ? dfilt(q, n->b) : NULL;
        if (!a || !b) {
            free_filt(a);
            free_filt(b);
            free_filt(f);
            return NULL;
        }
        if (is_or && covered(a) != covered(b)) {
            q_err(q, 0, n->off, "both sides of \"OR\" must use the same bucket parameters");
            free_filt(a);
            free_filt(b);
            free_filt(f);
            return NULL;
        }
        addk(f, a);
        addk(f, b);
        return f;
    }
    if (n->kind == N_BINARY && strcmp(n->op, "=") == 0) {
        rnode_t *bk = n->a->kind == N_BUCKET ? n->a : n->b->kind == N_BUCKET ? n->b : NULL;
        rnode_t *other = bk == n->a ? n->b : n->a;
        if (bk && !(other->deps & DEP_BUCKET)) {
            rfilt_t *f = mkf(F_EQ);
            f->p = def_param(q->def, bk->name);
            f->v = row_slot(q, other);
            return f;
        }
        if (bk && other->kind == N_BUCKET) {
            q_err(q, 0, n->off, "cannot compare two bucket parameters");
            return NULL;
        }
    }
    if (n->kind == N_IN && n->a->kind == N_BUCKET && !(n->b->deps & DEP_BUCKET) && !n->neg) {
        rfilt_t *f = mkf(F_IN_ROWARR);
        f->p = def_param(q->def, n->a->name);
        f->v = row_slot(q, n->b);
        return f;
    }
    if (n->kind == N_IN && n->b->kind == N_BUCKET && !n->neg) {
        q_err(q, 0, n->b->off,
              "\"IN bucket.%s\" is not supported; use \"bucket.%s IN <column>\" or "
              "\"<column> = bucket.%s\"",
              n->b->name, n->b->name, n->b->name);
        return NULL;
    }
    if (n->kind == N_UNARY && strcmp(n->op, "NOT") == 0) {
        q_err(q, 0, n->off, "\"NOT\" cannot be applied to a bucket parameter match");
        return NULL;
    }
    if ((n->kind == N_BINARY || n->kind == N_IN || n->kind == N_ISNULL) &&
        (n->a->kind == N_BUCKET || (n->b && n->b->kind == N_BUCKET))) {
        q_err(q, 0, n->off,
              "operator \"%s\" cannot be used with bucket parameters; only \"=\" and \"IN\" "
              "can match them",
              op_name(n));
        return NULL;
    }
    rnode_t *bk = find_kind(n, N_BUCKET);
    q_err(q, 0, bk ? bk->off : n->off,
          "bucket parameter \"%s\" can only be matched with \"=\" or \"IN\", not used inside "
          "an expression",
          bk ? bk->name : "?");
    return NULL;
}

/* Lookup inputs: request expressions matched against row values. */
static int lookup_input(qc_t *q, rnode_t *n, int expand)
{
    rbuf_t b = {0};
    rrowq_t *save = q->r;
    emit(q, n, &b);
    q->r = save;
    for (int i = 0; i < q->ninputs; i++)
        if (strcmp(q->inputs[i], b.p) == 0) {
            rb_free(&b);
            if (expand && q->expand_input != i) {
                q_err(q, 0, n->off,
                      "a request value cannot be matched both with \"=\" and "
                      "\"IN\" in one query");
                return -1;
            }
            return i;
        }
    if (expand) {
        if (q->expand_input >= 0) {
            q_err(q, 0, n->off, "only one \"IN\" over a request array is supported per query");
            rb_free(&b);
            return -1;
        }
        q->expand_input = q->ninputs;
    }
    if (q->ninputs >= RULES_MAX_PARAMS) {
        q_err(q, 0, n->off, "too many request values in one query");
        rb_free(&b);
        return -1;
    }
    q->inputs = rx_realloc(q->inputs, sizeof(char *) * (size_t)(q->ninputs + 1));
    q->inputs[q->ninputs] = rb_strdup(&b);
    rb_free(&b);
    return q->ninputs++;
}

static int pure(int deps, int want)
{
    return deps != 0 && (deps & ~want) == 0;
}

static rfilt_t *lfilt(qc_t *q, rnode_t *n)
{
    if (!(n->deps & DEP_REQ)) {
        rfilt_t *f = mkf(F_PRED);
        f->v = row_slot(q, n);
        return f;
    }
    if (!(n->deps & DEP_ROW)) {
        q_err(q, 0, n->off,
              "a condition on request values alone cannot be combined with \"OR\" here");
        return NULL;
    }
    if (n->kind == N_BINARY && (strcmp(n->op, "AND") == 0 || strcmp(n->op, "OR") == 0)) {
        int is_or = n->op[0] == 'O';
        rfilt_t *f = mkf(is_or ? F_OR : F_AND);
        rfilt_t *a = lfilt(q, n->a);
        rfilt_t *b = a ? lfilt(q, n->b) : NULL;
        if (!a || !b) {
            free_filt(a);
            free_filt(b);
            free_filt(f);
            return NULL;
        }
        if (is_or && covered(a) != covered(b)) {
            q_err(q, 0, n->off, "both sides of \"OR\" must use the same request values");
            free_filt(a);
            free_filt(b);
            free_filt(f);
            return NULL;
        }
        addk(f, a);
        addk(f, b);
        return f;
    }
    if (n->kind == N_BINARY && strcmp(n->op, "=") == 0) {
        rnode_t *rq = pure(n->a->deps, DEP_REQ) ? n->a : pure(n->b->deps, DEP_REQ) ? n->b : NULL;
        rnode_t *row = rq == n->a ? n->b : n->a;
        if (rq && !(row->deps & DEP_REQ)) {
            int in = lookup_input(q, rq, 0);
            if (in < 0) return NULL;
            rfilt_t *f = mkf(F_EQ);
            f->p = in;
            f->v = row_slot(q, row);
            return f;
        }
    }
    if (n->kind == N_IN && !n->neg) {
        if (pure(n->a->deps, DEP_REQ) && !(n->b->deps & DEP_REQ)) {
            int in = lookup_input(q, n->a, 0);
            if (in < 0) return NULL;
            rfilt_t *f = mkf(F_IN_ROWARR);
            f->p = in;
            f->v = row_slot(q, n->b);
            return f;
        }
        if (pure(n->b->deps, DEP_REQ) && !(n->a->deps & DEP_REQ)) {
            int in = lookup_input(q, n->b, 1);
            if (in < 0) return NULL;
            rfilt_t *f = mkf(F_IN_REQARR);
            f->p = in;
            f->v = row_slot(q, n->a);
            return f;
        }
    }
    if (n->kind == N_UNARY && strcmp(n->op, "NOT") == 0) {
        q_err(q, 0, n->off,
              "\"NOT\" cannot be applied to a condition that matches row values with request "
              "values");
        return NULL;
    }
    if ((n->kind == N_BINARY && strcmp(n->op, "=") == 0) || (n->kind == N_IN && !n->neg)) {
        rnode_t *mixed = (n->a->deps & (DEP_ROW | DEP_REQ)) == (DEP_ROW | DEP_REQ) ? n->a : n->b;
        q_err(q, 0, mixed->off,
              "expression mixes row values and request values; \"%s\" needs row values on "
              "one side and request values on the other",
              op_name(n));
        return NULL;
    }
    if (n->kind == N_BINARY || n->kind == N_IN || n->kind == N_INLIST || n->kind == N_ISNULL) {
        q_err(q, 0, n->off,
              "cannot compare a row value and a request value with \"%s\"; only \"=\" and "
              "\"IN\" are supported",
              op_name(n));
        return NULL;
    }
    q_err(q, 0, n->off,
          "%s cannot mix row values and request values; compare them with \"=\" or \"IN\"",
          n->kind == N_FUNC ? "a function" : "an expression");
    return NULL;
}

/* ---- statements ----------------------------------------------------------------------- */

int rset_add_stmt(rules_set_t *set, char *sql)
{
    if (set->nstmts == set->capstmts) {
        set->capstmts = set->capstmts ? set->capstmts * 2 : 16;
        set->stmts = rx_realloc(set->stmts, sizeof(char *) * (size_t)set->capstmts);
    }
    set->stmts[set->nstmts] = sql;
    return set->nstmts++;
}

/* Check that sql prepares in SQLite (catches what our checks missed, e.g. bad casts). */
static int sqlite_check(qc_t *q, const char *sql)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY, NULL) !=
        SQLITE_OK) {
        sqlite3_close(db);
        return 0;
    }
    rfunc_register(db);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) q_err(q, 0, 0, "query cannot be evaluated: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

static void table_use(rules_set_t *set, const char *schema, const char *name, int use)
{
    if (!schema) schema = "public";
    for (size_t i = 0; i < set->ntables; i++)
        if (strcmp(set->tables[i].schema, schema) == 0 && strcmp(set->tables[i].name, name) == 0) {
            set->tables[i].uses |= use;
            return;
        }
    set->tables = rx_realloc(set->tables, sizeof(rules_table_t) * (set->ntables + 1));
    set->tables[set->ntables++] =
        (rules_table_t){rset_own(set, rx_strdup(schema)), rset_own(set, rx_strdup(name)), use};
}

static void finish_rowq(qc_t *q)
{
    rrowq_t *r = q->r;
    r->nsql = q->nrowsql;
    r->stmt = -1;
    if (q->nrowsql) {
        rbuf_t b = {0};
        rb_puts(&b, "SELECT ");
        rb_put(&b, q->rowsql.p, q->rowsql.n);
        r->sql = rb_strdup(&b);
        rb_free(&b);
        if (!q->failed && sqlite_check(q, r->sql) == 0)
            r->stmt = rset_add_stmt(q->c->set, rx_strdup(r->sql));
    }
    rb_free(&q->rowsql);
}

static void qc_init(qc_t *q, cc_t *c, yaml_node_t *node, rdef_t *def, int qkind)
{
    memset(q, 0, sizeof *q);
    q->c = c;
    q->qkind = qkind;
    q->def = def;
    q->expand_input = -1;
    q->pm = (rposmap_t){c->text, c->len, node->start_mark.index, node->data.scalar.style,
                        (const char *)node->data.scalar.value};
}

static void qc_done(qc_t *q)
{
    for (int i = 0; i < q->ninputs; i++)
        free(q->inputs[i]);
    free(q->inputs);
    rb_free(&q->rowsql);
    rb_free(&q->reqsql);
    rb_free(&q->reqpred);
}

static rsql_t *parse_query(qc_t *q, int qkind)
{
    int off = 0;
    char err[256];
    rsql_t *s = rsql_parse(q->pm.value, qkind, &off, err, sizeof err);
    if (!s) q_err(q, 0, off, "%s", err);
    return s;
}

static int lower_case_check(qc_t *q, const rselect_t *s)
{
    if (s->table_quoted) return 0;
    for (const char *p = s->table; *p; p++)
        if (isupper((unsigned char)*p)) {
            q_err(q, 1, s->from_off,
                  "unquoted table name \"%s\" has upper-case letters; it is matched as written "
                  "(quote it to make that explicit)",
                  s->table);
            return 1;
        }
    return 0;
}

/* ---- data queries --------------------------------------------------------------------- */

static void compile_data(cc_t *c, rdef_t *def, yaml_node_t *node, int params_known)
{
    qc_t qq, *q = &qq;
    qc_init(q, c, node, def, Q_DATA);
    q->params_known = params_known;
    rsql_t *s = parse_query(q, Q_DATA);
    if (!s) {
        qc_done(q);
        return;
    }
    rselect_t *sel = rsql_select(s);
    q->sel = sel;
    rdataq_t *dq = rx_calloc(1, sizeof *dq);
    dq->def = def;
    dq->src = rset_own(c->set, rx_strdup((const char *)node->data.scalar.value));
    dq->id_out = -1;
    q->r = &dq->r;
    if (!sel->has_from) {
        q_err(q, 0, 0, "data queries need \"FROM\" and one table");
        goto fail;
    }
    if (sel->json_each_arg) {
        q_err(q, 0, sel->from_off, "json_each() is only allowed in parameter queries");
        goto fail;
    }
    lower_case_check(q, sel);
    size_t tl = strlen(sel->table);
    dq->r.prefix = tl > 0 && sel->table[tl - 1] == '%';
    dq->r.table = rx_strndup(sel->table, dq->r.prefix ? tl - 1 : tl);
    dq->r.schema = rx_strdup(sel->schema ? sel->schema : "public");
    q->tname = dq->r.table;
    q->alias = sel->alias;
    if (sel->alias) dq->out_table = rx_strdup(sel->alias);
    /* outputs */
    dq->r.outs = rx_calloc((size_t)sel->nitems + 1, sizeof(rout_t));
    int has_star = 0;
    for (int i = 0; i < sel->nitems; i++) {
        rsel_item_t *it = &sel->items[i];
        rout_t *o = &dq->r.outs[dq->r.nouts];
        if (!it->expr) {
            o->star = 1;
            has_star = 1;
            dq->r.nouts++;
            continue;
        }
        int deps = resolve(q, it->expr);
        if (deps < 0) continue;
        if (deps & DEP_BUCKET) {
            rnode_t *bk = find_kind(it->expr, N_BUCKET);
            q_err(q, 0, bk->off, "bucket parameters cannot be selected in data queries");
            continue;
        }
        const char *name = it->alias ? it->alias : it->expr->kind == N_COL ? it->expr->name : NULL;
        if (!name) {
            q_err(q, 0, it->off, "expression needs a name; add \"AS <name>\"");
            continue;
        }
        for (int k = 0; k < dq->r.nouts; k++)
            if (dq->r.outs[k].name && strcmp(dq->r.outs[k].name, name) == 0) {
                q_err(q, 0, it->off, "duplicate output column \"%s\"", name);
                break;
            }
        o->name = rx_strdup(name);
        o->v = row_slot(q, it->expr);
        if (strcmp(name, "id") == 0) dq->id_out = dq->r.nouts;
        dq->r.nouts++;
    }
    if (!q->failed && dq->id_out < 0) {
        if (has_star)
            q_err(q, 1, 0,
                  "query selects \"*\" and the table schema is not known: make sure \"%s\" has "
                  "an \"id\" column",
                  sel->table);
        else
            q_err(q, 0, 0, "data query has no \"id\" column (select one, or \"<expr> AS id\")");
    }
    /* WHERE */
    if (sel->where) {
        int deps = resolve(q, sel->where);
        if (deps >= 0) dq->r.filt = dfilt(q, sel->where);
    }
    if (!dq->r.filt && !q->failed) dq->r.filt = mkf(F_TRUE);
    if (!q->failed && params_known) {
        unsigned cov = dq->r.filt ? covered(dq->r.filt) : 0;
        for (int i = 0; i < def->nparams; i++)
            if (!(cov & (1u << i))) {
                q_err(q, 0, 0,
                      "data query does not use bucket parameter \"%s\" (add \"<column> = "
                      "bucket.%s\" to its \"WHERE\")",
                      def->params[i], def->params[i]);
                break;
            }
    }
    finish_rowq(q);
    if (q->failed) goto fail;
    dq->index = def->ndq;
    def->dq = rx_realloc(def->dq, sizeof(rdataq_t *) * (size_t)(def->ndq + 1));
    def->dq[def->ndq++] = dq;
    table_use(c->set, dq->r.schema, sel->table, RULES_USE_DATA);
    rsql_free(s);
    qc_done(q);
    return;
fail:
    rsql_free(s);
    qc_done(q);
    free_filt(dq->r.filt);
    for (int i = 0; i < dq->r.nouts; i++)
        free(dq->r.outs[i].name);
    for (int i = 0; i < dq->r.ncols; i++)
        free(dq->r.cols[i]);
    free(dq->r.cols);
    free(dq->r.outs);
    free(dq->r.sql);
    free(dq->r.table);
    free(dq->r.schema);
    free(dq->out_table);
    free(dq);
}

/* ---- parameter queries ---------------------------------------------------------------- */

static void free_pq(rparamq_t *pq)
{
    if (!pq) return;
    for (int i = 0; i < pq->nnames; i++)
        free(pq->names[i]);
    free(pq->names);
    free(pq->param_of);
    free(pq->req_sql);
    free_filt(pq->r.filt);
    for (int i = 0; i < pq->r.nouts; i++)
        free(pq->r.outs[i].name);
    free(pq->r.outs);
    for (int i = 0; i < pq->r.ncols; i++)
        free(pq->r.cols[i]);
    free(pq->r.cols);
    free(pq->r.sql);
    free(pq->r.table);
    free(pq->r.schema);
    free(pq);
}

/* split the top-level AND chain of a lookup WHERE: request-only conjuncts go to reqpred */
static rfilt_t *lookup_where(qc_t *q, rnode_t *n)
{
    if (n->kind == N_BINARY && strcmp(n->op, "AND") == 0) {
        rfilt_t *a = lookup_where(q, n->a);
        if (!a && q->failed) return NULL;
        rfilt_t *b = lookup_where(q, n->b);
        if (!b && q->failed) {
            free_filt(a);
            return NULL;
        }
        if (!a) return b;
        if (!b) return a;
        rfilt_t *f = mkf(F_AND);
        addk(f, a);
        addk(f, b);
        return f;
    }
    if (pure(n->deps, DEP_REQ)) {
        if (q->reqpred.n) rb_puts(&q->reqpred, " AND ");
        emit(q, n, &q->reqpred);
        return NULL;
    }
    return lfilt(q, n);
}

static rparamq_t *compile_param(cc_t *c, rdef_t *def, yaml_node_t *node)
{
    qc_t qq, *q = &qq;
    qc_init(q, c, node, def, Q_PARAM);
    rsql_t *s = parse_query(q, Q_PARAM);
    if (!s) {
        qc_done(q);
        return NULL;
    }
    rselect_t *sel = rsql_select(s);
    q->sel = sel;
    rparamq_t *pq = rx_calloc(1, sizeof *pq);
    pq->def = def;
    pq->src = rset_own(c->set, rx_strdup((const char *)node->data.scalar.value));
    pq->prio_out = -1;
    pq->expand_input = -1;
    pq->req_pred_col = -1;
    pq->req_stmt = -1;
    q->r = &pq->r;
    if (!sel->has_from)
        pq->kind = PQ_STATIC;
    else if (sel->json_each_arg)
        pq->kind = PQ_JSON_EACH;
    else
        pq->kind = PQ_LOOKUP;
    q->pkind = pq->kind;
    q->alias = sel->alias;
    if (pq->kind == PQ_LOOKUP) {
        if (sel->alias) {
            q_err(q, 0, sel->from_off, "table aliases are not supported in parameter queries");
            goto fail;
        }
        lower_case_check(q, sel);
        size_t tl = strlen(sel->table);
        if (tl && sel->table[tl - 1] == '%') {
            q_err(q, 0, sel->from_off,
                  "table patterns (\"%%\") are not supported in parameter "
                  "queries");
            goto fail;
        }
        pq->r.table = rx_strdup(sel->table);
        pq->r.schema = rx_strdup(sel->schema ? sel->schema : "public");
        q->tname = pq->r.table;
    }
    if (pq->kind == PQ_JSON_EACH) {
        int deps = resolve(q, sel->json_each_arg);
        if (deps < 0) goto fail;
    }
    /* outputs */
    pq->names = rx_calloc((size_t)sel->nitems + 1, sizeof(char *));
    pq->r.outs = rx_calloc((size_t)sel->nitems + 1, sizeof(rout_t));
    rbuf_t outsql = {0};
    int nout_sql = 0;
    for (int i = 0; i < sel->nitems; i++) {
        rsel_item_t *it = &sel->items[i];
        if (!it->expr) {
            q_err(q, 0, it->off, "\"*\" is not allowed in parameter queries");
            continue;
        }
        int deps = resolve(q, it->expr);
        if (deps < 0) continue;
        rnode_t *e = it->expr;
        const char *name = it->alias;
        if (!name && (e->kind == N_COL || e->kind == N_JEACH || e->kind == N_TOKPARAM ||
                      e->kind == N_USERPARAM))
            name = e->name;
        if (!name) {
            q_err(q, 0, it->off, "expression needs a name; add \"AS <name>\"");
            continue;
        }
        for (int k = 0; k < pq->nnames; k++)
            if (strcmp(pq->names[k], name) == 0) {
                q_err(q, 0, it->off, "duplicate output column \"%s\"", name);
                break;
            }
        rout_t *o = &pq->r.outs[pq->nnames];
        o->name = rx_strdup(name);
        if (strcmp(name, "_priority") == 0) pq->prio_out = pq->nnames;
        pq->names[pq->nnames++] = rx_strdup(name);
        pq->r.nouts = pq->nnames;
        if (pq->kind == PQ_LOOKUP) {
            if ((deps & DEP_ROW) && (deps & DEP_REQ)) {
                q_err(q, 0, it->off, "output \"%s\" mixes row values and request values", name);
                continue;
            }
            if (deps & DEP_ROW) {
                o->v = row_slot(q, e);
            } else {
                o->from_req = 1;
                o->reqcol = -1; /* assigned after the inputs */
            }
        } else {
            if (nout_sql) rb_puts(&outsql, ", ");
            emit(q, e, &outsql);
            nout_sql++;
        }
    }
    if (pq->prio_out >= 0 && def->has_priority_key)
        q_err(q, 0, 0,
              "\"_priority\" cannot be combined with \"priority\" in bucket definition "
              "\"%s\"",
              def->name);
    /* WHERE and SQL */
    if (pq->kind == PQ_LOOKUP) {
        if (sel->where && resolve(q, sel->where) >= 0) pq->r.filt = lookup_where(q, sel->where);
        if (!pq->r.filt && !q->failed) pq->r.filt = mkf(F_TRUE);
        /* request side: inputs, request outputs, predicate */
        if (!q->failed) {
            for (int i = 0; i < q->ninputs; i++) {
                if (q->nreqsql) rb_puts(&q->reqsql, ", ");
                rb_puts(&q->reqsql, q->inputs[i]);
                q->nreqsql++;
            }
            for (int i = 0; i < sel->nitems; i++) {
                rout_t *o = &pq->r.outs[i];
                if (o->from_req && sel->items[i].expr) o->reqcol = req_col(q, sel->items[i].expr);
            }
            if (q->reqpred.n) {
                if (q->nreqsql) rb_puts(&q->reqsql, ", ");
                rb_putc(&q->reqsql, '(');
                rb_put(&q->reqsql, q->reqpred.p, q->reqpred.n);
                rb_putc(&q->reqsql, ')');
                pq->req_pred_col = q->nreqsql++;
            }
            pq->ninputs = q->ninputs;
            pq->expand_input = q->expand_input;
            if (q->nreqsql) {
                rbuf_t b = {0};
                rb_puts(&b, "SELECT ");
                rb_put(&b, q->reqsql.p, q->reqsql.n);
                pq->req_sql = rb_strdup(&b);
                rb_free(&b);
            }
        }
        finish_rowq(q);
        pq->dangerous = q->uses_client && !q->uses_auth;
    } else {
        rbuf_t b = {0};
        rb_puts(&b, "SELECT ");
        if (nout_sql)
            rb_put(&b, outsql.p, outsql.n);
        else
            rb_puts(&b, "1");
        if (pq->kind == PQ_JSON_EACH) {
            rb_puts(&b, " FROM json_each(");
            emit(q, sel->json_each_arg, &b);
            rb_puts(&b, ") AS ");
            sql_ident(&b, sel->alias ? sel->alias : "json_each");
        }
        if (sel->where && resolve(q, sel->where) >= 0) {
            if (sel->where->deps & DEP_ROW) {
                q_err(q, 0, sel->where->off, "unexpected row value");
            } else {
                rb_puts(&b, " WHERE ");
                emit(q, sel->where, &b);
            }
        }
        pq->req_sql = rb_strdup(&b);
        rb_free(&b);
        pq->dangerous = q->uses_client && !q->uses_auth;
    }
    rb_free(&outsql);
    if (pq->req_sql && !q->failed) {
        if (sqlite_check(q, pq->req_sql) == 0)
            pq->req_stmt = rset_add_stmt(c->set, rx_strdup(pq->req_sql));
    }
    if (q->failed) goto fail;
    if (pq->kind == PQ_LOOKUP) table_use(c->set, pq->r.schema, pq->r.table, RULES_USE_LOOKUP);
    if (pq->dangerous && !def->accept_dangerous)
        q_err(q, 1, 0,
              "potentially dangerous query: its bucket parameters come only from "
              "client-supplied parameters, which any user can set (set "
              "\"accept_potentially_dangerous_queries: true\" if that is intended)");
    rsql_free(s);
    qc_done(q);
    return pq;
fail:
    rsql_free(s);
    qc_done(q);
    free_pq(pq);
    return NULL;
}

/* ---- YAML walking --------------------------------------------------------------------- */

static yaml_node_t *ynode(cc_t *c, int id)
{
    return yaml_document_get_node(c->doc, id);
}

static const char *yscalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int ybool(cc_t *c, yaml_node_t *n, int *out)
{
    const char *s = yscalar(n);
    if (s && (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)) {
        *out = 1;
        return 0;
    }
    if (s && (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)) {
        *out = 0;
        return 0;
    }
    node_err(c, 0, n, "expected true or false");
    return -1;
}

static int yint(cc_t *c, yaml_node_t *n, long min, long max, long *out)
{
    const char *s = yscalar(n);
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < min || v > max) {
        node_err(c, 0, n, "expected an integer from %ld to %ld", min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static const char *suggest(const char *k, const char *const *keys)
{
    const char *best = NULL;
    int bd = 3;
    for (int i = 0; keys[i]; i++) {
        int d = rsql_distance(k, keys[i]);
        if (d < bd) {
            bd = d;
            best = keys[i];
        }
    }
    return best;
}

static void unknown_key(cc_t *c, yaml_node_t *k, const char *where, const char *const *keys)
{
    const char *s = suggest(yscalar(k) ? yscalar(k) : "", keys);
    if (s)
        node_err(c, 0, k, "unknown key \"%s\" in %s (did you mean \"%s\"?)", yscalar(k), where, s);
    else
        node_err(c, 0, k, "unknown key \"%s\" in %s", yscalar(k), where);
}

/* Iterate a mapping, rejecting non-scalar and duplicate keys. */
#define FOR_PAIRS(c, map, kvar, vvar)                                                              \
    for (yaml_node_pair_t *p_ = (map)->data.mapping.pairs.start;                                   \
         p_ < (map)->data.mapping.pairs.top; p_++)                                                 \
        for (yaml_node_t *kvar = ynode(c, p_->key), *vvar = ynode(c, p_->value); kvar; kvar = NULL)

static int dup_key(cc_t *c, yaml_node_t *map, yaml_node_pair_t *upto, yaml_node_t *k)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < upto; p++) {
        const char *a = yscalar(ynode(c, p->key));
        if (a && yscalar(k) && strcmp(a, yscalar(k)) == 0) return 1;
    }
    return 0;
}

static void compile_config(cc_t *c, yaml_node_t *m, int *edition, int flags[4], int *prec)
{
    static const char *const keys[] = {"edition",
                                       "storage_version",
                                       "timestamp_max_precision",
                                       "timestamps_iso8601",
                                       "versioned_bucket_ids",
                                       "fixed_json_extract",
                                       "custom_postgres_types",
                                       "unstable_sqlite_expression_engine",
                                       NULL};
    if (m->type != YAML_MAPPING_NODE) {
        node_err(c, 0, m, "\"config\" must be a mapping");
        return;
    }
    FOR_PAIRS(c, m, k, v)
    {
        const char *key = yscalar(k);
        if (!key) {
            node_err(c, 0, k, "keys must be plain names");
            continue;
        }
        if (dup_key(c, m, p_, k)) {
            node_err(c, 0, k, "duplicate key \"%s\"", key);
            continue;
        }
        long n;
        int b;
        if (strcmp(key, "edition") == 0) {
            if (yint(c, v, 1, 3, &n) == 0) *edition = (int)n;
        } else if (strcmp(key, "storage_version") == 0) {
            if (yint(c, v, 1, 99, &n) == 0) {
                if (n != 2 && n != 3)
                    node_err(c, 0, v, "storage version %ld is not supported (use 2, or 3)", n);
                else if (n == 3)
                    node_err(c, 1, v,
                             "storage version 3 is unstable in PowerSync; Ferry accepts it and "
                             "stores buckets the same way");
            }
        } else if (strcmp(key, "timestamp_max_precision") == 0) {
            c->precision_node = v;
            const char *s = yscalar(v);
            static const char *const names[] = {"seconds", "milliseconds", "microseconds",
                                                "nanoseconds", NULL};
            int found = -1;
            for (int i = 0; s && names[i]; i++)
                if (strcmp(s, names[i]) == 0) found = i;
            if (found < 0)
                node_err(c, 0, v, "expected seconds, milliseconds, microseconds or nanoseconds");
            else
                *prec = found * 3;
        } else if (strcmp(key, "timestamps_iso8601") == 0) {
            if (ybool(c, v, &b) == 0) flags[0] = b;
        } else if (strcmp(key, "versioned_bucket_ids") == 0) {
            if (ybool(c, v, &b) == 0) flags[1] = b;
        } else if (strcmp(key, "fixed_json_extract") == 0) {
            if (ybool(c, v, &b) == 0) flags[2] = b;
        } else if (strcmp(key, "custom_postgres_types") == 0) {
            if (ybool(c, v, &b) == 0) flags[3] = b;
        } else if (strcmp(key, "unstable_sqlite_expression_engine") == 0) {
            if (ybool(c, v, &b) == 0 && b) c->sqlite_engine_node = v;
        } else {
            unknown_key(c, k, "\"config\"", keys);
        }
    }
}

/* collect the scalar query strings of a string-or-list node */
static int query_nodes(cc_t *c, yaml_node_t *v, const char *what, yaml_node_t **out, int max)
{
    int n = 0;
    if (v->type == YAML_SCALAR_NODE) {
        out[n++] = v;
        return n;
    }
    if (v->type != YAML_SEQUENCE_NODE) {
        node_err(c, 0, v, "\"%s\" must be a query or a list of queries", what);
        return -1;
    }
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
         it++) {
        yaml_node_t *q = ynode(c, *it);
        if (!q || q->type != YAML_SCALAR_NODE) {
            node_err(c, 0, q, "each entry of \"%s\" must be a query (a string)", what);
            continue;
        }
        if (n == max) {
            node_err(c, 0, q, "too many queries");
            break;
        }
        out[n++] = q;
    }
    return n;
}

static void compile_def(cc_t *c, const char *name, yaml_node_t *kn, yaml_node_t *m)
{
    static const char *const keys[] = {"parameters", "data", "priority",
                                       "accept_potentially_dangerous_queries", NULL};
    if (m->type != YAML_MAPPING_NODE) {
        node_err(c, 0, m, "bucket definition \"%s\" must be a mapping", name);
        return;
    }
    rdef_t *def = rx_calloc(1, sizeof *def);
    def->name = rx_strdup(name);
    def->priority = 3;
    rules_set_t *set = c->set;
    set->defs = rx_realloc(set->defs, sizeof(rdef_t *) * (size_t)(set->ndefs + 1));
    set->defs[set->ndefs++] = def;
    yaml_node_t *params = NULL, *data = NULL;
    FOR_PAIRS(c, m, k, v)
    {
        const char *key = yscalar(k);
        if (!key) {
            node_err(c, 0, k, "keys must be plain names");
            continue;
        }
        if (dup_key(c, m, p_, k)) {
            node_err(c, 0, k, "duplicate key \"%s\"", key);
            continue;
        }
        if (strcmp(key, "parameters") == 0)
            params = v;
        else if (strcmp(key, "data") == 0)
            data = v;
        else if (strcmp(key, "priority") == 0) {
            long n;
            if (yint(c, v, 0, 3, &n) == 0) {
                def->priority = (int)n;
                def->has_priority_key = 1;
            }
        } else if (strcmp(key, "accept_potentially_dangerous_queries") == 0) {
            ybool(c, v, &def->accept_dangerous);
        } else {
            unknown_key(c, k, "a bucket definition", keys);
        }
    }
    /* parameter queries */
    yaml_node_t *qn[256];
    int nq = params ? query_nodes(c, params, "parameters", qn, 256) : 0;
    int params_ok = nq >= 0;
    for (int i = 0; i < nq; i++) {
        rparamq_t *pq = compile_param(c, def, qn[i]);
        if (!pq) {
            params_ok = 0;
            continue;
        }
        pq->index = i;
        /* parameter names: from the first query; later ones must match */
        if (def->npq == 0 && params_ok && pq->nnames - (pq->prio_out >= 0) > RULES_MAX_PARAMS) {
            node_err(c, 0, qn[i], "bucket definition \"%s\" has more than %d bucket parameters",
                     name, RULES_MAX_PARAMS);
            free_pq(pq);
            params_ok = 0;
            continue;
        }
        if (def->npq == 0 && params_ok) {
            def->params = rx_calloc((size_t)pq->nnames + 1, sizeof(char *));
            for (int k = 0; k < pq->nnames; k++)
                if (k != pq->prio_out) def->params[def->nparams++] = rx_strdup(pq->names[k]);
        }
        int mismatch = 0;
        int cnt = 0;
        for (int k = 0; k < pq->nnames; k++)
            if (k != pq->prio_out) {
                cnt++;
                if (def_param(def, pq->names[k]) < 0) mismatch = 1;
            }
        if (cnt != def->nparams) mismatch = 1;
        if (mismatch && def->npq > 0) {
            rbuf_t a = {0}, b = {0};
            for (int k = 0; k < def->nparams; k++)
                rb_printf(&a, "%s\"%s\"", k ? ", " : "", def->params[k]);
            for (int k = 0, j = 0; k < pq->nnames; k++)
                if (k != pq->prio_out) rb_printf(&b, "%s\"%s\"", j++ ? ", " : "", pq->names[k]);
            int line, col;
            rposmap_t pm = {c->text, c->len, qn[i]->start_mark.index, qn[i]->data.scalar.style,
                            (const char *)qn[i]->data.scalar.value};
            rpos_map(&pm, 0, &line, &col);
            rdiag_add(c->d, 0, line, col,
                      "parameter queries of bucket definition \"%s\" must output the same "
                      "columns (first query: %s; this one: %s)",
                      name, a.p ? a.p : "none", b.p ? b.p : "none");
            rb_free(&a);
            rb_free(&b);
            free_pq(pq);
            params_ok = 0;
            continue;
        }
        pq->param_of = rx_calloc((size_t)pq->nnames + 1, sizeof(int));
        for (int k = 0; k < pq->nnames; k++)
            pq->param_of[k] = k == pq->prio_out ? -1 : def_param(def, pq->names[k]);
        def->pq = rx_realloc(def->pq, sizeof(rparamq_t *) * (size_t)(def->npq + 1));
        def->pq[def->npq++] = pq;
        if (pq->kind == PQ_LOOKUP) {
            set->lqs = rx_realloc(set->lqs, sizeof(rparamq_t *) * (size_t)(set->nlqs + 1));
            set->lqs[set->nlqs++] = pq;
        }
    }
    if (!params) {
        /* global bucket: one static query "SELECT" */
        rparamq_t *pq = rx_calloc(1, sizeof *pq);
        pq->def = def;
        pq->kind = PQ_STATIC;
        pq->src = "SELECT";
        pq->prio_out = -1;
        pq->expand_input = -1;
        pq->req_pred_col = -1;
        pq->req_sql = rx_strdup("SELECT 1");
        pq->req_stmt = rset_add_stmt(set, rx_strdup(pq->req_sql));
        pq->names = rx_calloc(1, sizeof(char *));
        pq->param_of = rx_calloc(1, sizeof(int));
        def->pq = rx_calloc(1, sizeof(rparamq_t *));
        def->pq[def->npq++] = pq;
    }
    /* data queries */
    if (!data) {
        node_err(c, 0, kn, "bucket definition \"%s\" has no \"data\" queries", name);
        return;
    }
    if (data->type != YAML_SEQUENCE_NODE) {
        node_err(c, 0, data, "\"data\" must be a list of queries");
        return;
    }
    nq = query_nodes(c, data, "data", qn, 256);
    for (int i = 0; i < nq; i++)
        compile_data(c, def, qn[i], params_ok);
    /* every parameter must be used by every data query (checked per query); also warn when a
     * definition has no data queries at all */
    if (nq == 0) node_err(c, 1, data, "bucket definition \"%s\" has no data queries", name);
}

static void compile_defs(cc_t *c, yaml_node_t *m)
{
    if (m->type != YAML_MAPPING_NODE) {
        node_err(c, 0, m, "\"bucket_definitions\" must be a mapping of names to definitions");
        return;
    }
    FOR_PAIRS(c, m, k, v)
    {
        const char *name = yscalar(k);
        if (!name || !*name) {
            node_err(c, 0, k, "bucket definition names must be plain strings");
            continue;
        }
        if (dup_key(c, m, p_, k)) {
            node_err(c, 0, k, "duplicate bucket definition \"%s\"", name);
            continue;
        }
        if (name[0] == '$' || strpbrk(name, "[]#")) {
            node_err(c, 0, k,
                     "bucket definition name \"%s\" cannot contain \"[\", \"]\", \"#\" "
                     "or start with \"$\"",
                     name);
            continue;
        }
        compile_def(c, name, k, v);
    }
}

/* ---- streams (the YAML side; rules_stream_compile.c compiles the SQL) ----------------- */

static ssrc_t *scalar_src(cc_t *c, yaml_node_t *n)
{
    splan_t *p = c->set->splan;
    ssrc_t *s = ra_alloc(&p->arena, sizeof *s);
    s->text = ra_strdup(&p->arena, (const char *)n->data.scalar.value);
    s->pm = (rposmap_t){c->text, c->len, n->start_mark.index, n->data.scalar.style, s->text};
    return s;
}

static int name_taken(cc_t *c, const char *name)
{
    for (int i = 0; i < c->set->ndefs; i++)
        if (strcmp(c->set->defs[i]->name, name) == 0) return 1;
    return 0;
}

static void compile_ctes(cc_t *c, sbuilder_t *b, yaml_node_t *m, int local)
{
    if (m->type != YAML_MAPPING_NODE) {
        node_err(c, 0, m, "\"with\" must map names to queries");
        return;
    }
    FOR_PAIRS(c, m, k, v)
    {
        const char *name = yscalar(k);
        if (!name || !*name) {
            node_err(c, 0, k, "common table expression names must be plain strings");
            continue;
        }
        if (dup_key(c, m, p_, k)) {
            node_err(c, 0, k, "duplicate common table expression \"%s\"", name);
            continue;
        }
        if (!v || v->type != YAML_SCALAR_NODE) {
            node_err(c, 0, v ? v : k, "common table expression \"%s\" must be a query", name);
            continue;
        }
        sc_cte(b, ra_strdup(&c->set->splan->arena, name), scalar_src(c, v), local);
    }
}

static void compile_streams(cc_t *c, yaml_node_t *m, yaml_node_t *with, int edition)
{
    static const char *const keys[] = {
        "query", "queries", "auto_subscribe", "priority", "accept_potentially_dangerous_queries",
        "with",  NULL};
    if (m->type != YAML_MAPPING_NODE) {
        node_err(c, 0, m, "\"streams\" must be a mapping of names to streams");
        return;
    }
    splan_t *p = c->set->splan = rx_calloc(1, sizeof *p);
    scompile_t *sc = ra_alloc(&p->arena, sizeof *sc);
    *sc = (scompile_t){c->set, c->d, p, edition, c->set->fixed_json_extract, NULL};
    sbuilder_t *b = edition >= 3 ? sc_begin(sc) : NULL;
    if (b && with) compile_ctes(c, b, with, 0);
    FOR_PAIRS(c, m, k, v)
    {
        const char *name = yscalar(k);
        if (!name || !*name) {
            node_err(c, 0, k, "stream names must be plain strings");
            continue;
        }
        if (dup_key(c, m, p_, k) || name_taken(c, name)) {
            node_err(c, 0, k, "duplicate stream or bucket definition \"%s\"", name);
            continue;
        }
        if (!v || v->type != YAML_MAPPING_NODE) {
            node_err(c, 0, v ? v : k,
                     "stream \"%s\" must be a mapping with \"query\" (or \"queries\")", name);
            continue;
        }
        yaml_node_t *query = NULL, *queries = NULL, *lwith = NULL;
        int prio = 3, auto_sub = 0, accept = 0;
        FOR_PAIRS(c, v, k2, v2)
        {
            const char *key = yscalar(k2);
            if (!key) {
                node_err(c, 0, k2, "keys must be plain names");
                continue;
            }
            if (dup_key(c, v, p_, k2)) {
                node_err(c, 0, k2, "duplicate key \"%s\"", key);
                continue;
            }
            long n;
            if (strcmp(key, "query") == 0)
                query = v2;
            else if (strcmp(key, "queries") == 0)
                queries = v2;
            else if (strcmp(key, "with") == 0)
                lwith = v2;
            else if (strcmp(key, "priority") == 0) {
                if (yint(c, v2, 0, 3, &n) == 0) prio = (int)n;
            } else if (strcmp(key, "auto_subscribe") == 0)
                ybool(c, v2, &auto_sub);
            else if (strcmp(key, "accept_potentially_dangerous_queries") == 0)
                ybool(c, v2, &accept);
            else {
                const char *sg = suggest(key, keys);
                if (sg)
                    node_err(c, 1, k2,
                             "unknown key \"%s\" in a stream is ignored (did you mean "
                             "\"%s\"?)",
                             key, sg);
                else
                    node_err(c, 1, k2, "unknown key \"%s\" in a stream is ignored", key);
            }
        }
        if (!query == !queries) {
            node_err(c, 0, v, "stream \"%s\" needs exactly one of \"query\" and \"queries\"", name);
            continue;
        }
        int line = (int)k->start_mark.line + 1, col = (int)k->start_mark.column + 1;
        if (!b) {
            /* editions 1-2: the alpha parser, one query, no CTEs */
            if (lwith) node_err(c, 0, lwith, "\"with\" in a stream needs edition 3");
            if (queries) {
                node_err(c, 0, queries, "\"queries\" needs edition 3; use one \"query\"");
                continue;
            }
            if (query->type != YAML_SCALAR_NODE) {
                node_err(c, 0, query, "\"query\" must be a query (a string)");
                continue;
            }
            if (edition < 2) {
                node_err(c, 0, query,
                         "sync streams need edition 2 or later; add \"config: {edition: 3}\"");
                continue;
            }
            sa_stream(sc, ra_strdup(&p->arena, name), scalar_src(c, query), prio, auto_sub, accept,
                      line, col);
            continue;
        }
        sc_stream(b, name, prio, auto_sub, accept, line, col);
        if (lwith) compile_ctes(c, b, lwith, 1);
        if (query) {
            if (query->type != YAML_SCALAR_NODE)
                node_err(c, 0, query, "\"query\" must be a query (a string)");
            else
                sc_query(b, scalar_src(c, query));
        } else if (queries->type != YAML_SEQUENCE_NODE) {
            node_err(c, 0, queries, "\"queries\" must be a list of queries");
        } else {
            for (yaml_node_item_t *it = queries->data.sequence.items.start;
                 it < queries->data.sequence.items.top; it++) {
                yaml_node_t *qn = ynode(c, *it);
                if (!qn || qn->type != YAML_SCALAR_NODE)
                    node_err(c, 0, qn ? qn : queries, "each entry of \"queries\" must be a query");
                else
                    sc_query(b, scalar_src(c, qn));
            }
        }
        sc_stream_end(b);
    }
    if (b)
        sc_end(b);
    else
        sa_end(sc);
    /* the tables the streams read */
    for (int i = 0; i < p->ndata; i++)
        table_use(c->set, p->data[i]->p.schema, p->data[i]->p.table, RULES_USE_DATA);
    for (int i = 0; i < p->nlookups; i++)
        table_use(c->set, p->lookups[i]->p.schema, p->lookups[i]->p.table, RULES_USE_LOOKUP);
}

/* write rules and constraints are compiled in rules_write.c through these hooks */
void rwrite_compile_rules(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                          yaml_document_t *doc, yaml_node_t *m);
void rwrite_compile_constraints(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                                yaml_document_t *doc, yaml_node_t *m);

/* ---- set lifetime --------------------------------------------------------------------- */

void *rset_own(rules_set_t *set, void *p)
{
    if (set->nowned == set->capowned) {
        set->capowned = set->capowned ? set->capowned * 2 : 32;
        set->owned = rx_realloc(set->owned, sizeof(void *) * set->capowned);
    }
    set->owned[set->nowned++] = p;
    return p;
}

void rctx_free_pool(rules_set_t *set);

static void free_rowq(rrowq_t *r)
{
    free_filt(r->filt);
    for (int i = 0; i < r->nouts; i++)
        free(r->outs[i].name);
    free(r->outs);
    for (int i = 0; i < r->ncols; i++)
        free(r->cols[i]);
    free(r->cols);
    free(r->sql);
    free(r->table);
    free(r->schema);
}

static void set_free(rules_set_t *set)
{
    rctx_free_pool(set);
    for (int i = 0; i < set->ndefs; i++) {
        rdef_t *d = set->defs[i];
        for (int k = 0; k < d->npq; k++)
            free_pq(d->pq[k]);
        for (int k = 0; k < d->ndq; k++) {
            free_rowq(&d->dq[k]->r);
            free(d->dq[k]->out_table);
            free(d->dq[k]);
        }
        for (int k = 0; k < d->nparams; k++)
            free(d->params[k]);
        free(d->params);
        free(d->pq);
        free(d->dq);
        free(d->name);
        free(d);
    }
    free(set->defs);
    free(set->dqs);
    free(set->lqs);
    for (int i = 0; i < set->nstmts; i++)
        free(set->stmts[i]);
    free(set->stmts);
    free(set->tables);
    for (size_t i = 0; i < set->nowned; i++)
        free(set->owned[i]);
    free(set->owned);
    free(set->writes);
    free(set->constraints);
    splan_free(set->splan);
    free(set->file);
    free(set->text);
    pthread_mutex_destroy(&set->pool_lock);
    free(set);
}

rules_set_t *rules_ref(rules_set_t *set)
{
    __atomic_add_fetch(&set->refs, 1, __ATOMIC_RELAXED);
    return set;
}

void rules_unref(rules_set_t *set)
{
    if (set && __atomic_sub_fetch(&set->refs, 1, __ATOMIC_ACQ_REL) == 0) set_free(set);
}

int rules_edition(const rules_set_t *set)
{
    return set->edition;
}

size_t rules_table_count(const rules_set_t *set)
{
    return set->ntables;
}

const rules_table_t *rules_table_at(const rules_set_t *set, size_t i)
{
    return i < set->ntables ? &set->tables[i] : NULL;
}

void rules_each_column(const rules_set_t *set, rules_column_fn fn, void *ud)
{
    char where[300];
    for (int i = 0; i < set->ndqs; i++) {
        const rrowq_t *r = &set->dqs[i]->r;
        if (r->prefix) continue;
        snprintf(where, sizeof where, "a data query of bucket definition \"%s\"",
                 set->dqs[i]->def->name);
        for (int c = 0; c < r->ncols; c++)
            fn(ud, r->schema, r->table, r->cols[c], where);
    }
    for (int i = 0; i < set->nlqs; i++) {
        const rrowq_t *r = &set->lqs[i]->r;
        if (r->prefix) continue;
        snprintf(where, sizeof where, "a parameter query of bucket definition \"%s\"",
                 set->lqs[i]->def->name);
        for (int c = 0; c < r->ncols; c++)
            fn(ud, r->schema, r->table, r->cols[c], where);
    }
    for (size_t i = 0; i < set->nwrites; i++) {
        const rules_write_rule_t *w = &set->writes[i];
        for (size_t c = 0; c < w->ncolumns; c++)
            fn(ud, w->schema, w->table, w->columns[c], "the write rules");
    }
}

size_t rules_definition_count(const rules_set_t *set)
{
    return (size_t)set->ndefs + rules_stream_count(set);
}

const char *rules_definition_name(const rules_set_t *set, size_t i)
{
    if (i < (size_t)set->ndefs) return set->defs[i]->name;
    i -= (size_t)set->ndefs;
    return i < rules_stream_count(set) ? set->splan->streams[i]->name : NULL;
}

size_t rules_stream_count(const rules_set_t *set)
{
    return set->splan ? (size_t)set->splan->nstreams : 0;
}

int rules_stream_at(const rules_set_t *set, size_t i, rules_stream_info_t *out)
{
    if (i >= rules_stream_count(set)) return -1;
    const sstream_t *s = set->splan->streams[i];
    *out = (rules_stream_info_t){s->name,   s->priority,   s->auto_subscribe,
                                 !s->alpha, (size_t)s->nq, s->uses_subscription};
    return 0;
}

const char *rules_stream_bucket(const rules_set_t *set, size_t i, size_t j)
{
    if (i >= rules_stream_count(set)) return NULL;
    const sstream_t *s = set->splan->streams[i];
    return j < (size_t)s->nq ? s->q[j]->bucket->name : NULL;
}

/* ---- entry points --------------------------------------------------------------------- */

int rules_compile(const char *text, size_t len, const char *file, rules_set_t **out,
                  rules_diags_t *diags)
{
    rules_diags_t local = {0};
    rules_diags_t *d = diags ? diags : &local;
    memset(d, 0, sizeof *d);
    d->file = rx_strdup(file ? file : "sync-rules.yaml");
    *out = NULL;

    rules_set_t *set = rx_calloc(1, sizeof *set);
    set->refs = 1;
    set->edition = 1;
    pthread_mutex_init(&set->pool_lock, NULL);
    set->file = rx_strdup(d->file);
    set->text = rx_strndup(text, len);
    cc_t c = {set, d, set->text, len, NULL, NULL, NULL};

    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)set->text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rdiag_add(d, 0, (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1,
                  "invalid YAML: %s", parser.problem ? parser.problem : "syntax error");
        yaml_parser_delete(&parser);
        set_free(set);
        rules_diags_free(&local);
        return RULES_ECOMPILE;
    }
    c.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    static const char *const top[] = {
        "bucket_definitions", "config", "write_rules", "constraints", "streams",
        "event_definitions",  "with",   NULL};
    if (!root || root->type != YAML_MAPPING_NODE) {
        rdiag_add(d, 0, root ? (int)root->start_mark.line + 1 : 1,
                  root ? (int)root->start_mark.column + 1 : 1,
                  "sync rules must be a mapping with \"streams\" or \"bucket_definitions\"");
    } else {
        int edition = 1, flags[4] = {-1, -1, -1, -1}, prec = 6;
        yaml_node_t *defs = NULL, *writes = NULL, *cons = NULL, *streams = NULL, *with = NULL;
        yaml_node_t *defs_key = NULL;
        FOR_PAIRS(&c, root, k, v)
        {
            const char *key = yscalar(k);
            if (!key) {
                node_err(&c, 0, k, "keys must be plain names");
                continue;
            }
            if (dup_key(&c, root, p_, k)) {
                node_err(&c, 0, k, "duplicate key \"%s\"", key);
                continue;
            }
            if (strcmp(key, "bucket_definitions") == 0) {
                defs = v;
                defs_key = k;
            } else if (strcmp(key, "config") == 0)
                compile_config(&c, v, &edition, flags, &prec);
            else if (strcmp(key, "write_rules") == 0)
                writes = v;
            else if (strcmp(key, "constraints") == 0)
                cons = v;
            else if (strcmp(key, "streams") == 0)
                streams = v;
            else if (strcmp(key, "with") == 0)
                with = v;
            else if (strcmp(key, "event_definitions") == 0)
                node_err(&c, 0, k,
                         "\"event_definitions\" is not supported by Ferry; write checkpoints "
                         "need no events here (see rules/README.md, \"moving from PowerSync\")");
            else
                unknown_key(&c, k, "the top level", top);
        }
        set->edition = edition;
        int e2 = edition >= 2;
        set->conv.iso = flags[0] >= 0 ? flags[0] : e2;
        set->conv.precision = prec;
        set->fixed_json_extract = flags[2] >= 0 ? flags[2] : e2;
        if (c.precision_node && !set->conv.iso)
            node_err(&c, 0, c.precision_node,
                     "\"timestamp_max_precision\" needs \"timestamps_iso8601\" (edition 2 or "
                     "later turns it on)");
        if (c.sqlite_engine_node && (edition < 3 || !set->fixed_json_extract))
            node_err(&c, 0, c.sqlite_engine_node,
                     edition < 3 ? "\"unstable_sqlite_expression_engine\" needs edition 3"
                                 : "\"unstable_sqlite_expression_engine\" needs "
                                   "\"fixed_json_extract\"");
        if (edition >= 3) {
            if (defs)
                node_err(&c, 0, defs_key,
                         "\"bucket_definitions\" are not supported with edition 3; write them as "
                         "\"streams\" (rules/README.md shows each form side by side), or keep "
                         "edition 2");
            if (!streams)
                rdiag_add(d, 0, (int)root->start_mark.line + 1, (int)root->start_mark.column + 1,
                          "edition 3 needs \"streams\"");
            else
                compile_streams(&c, streams, with, edition);
        } else {
            if (with)
                node_err(&c, 0, with,
                         "\"with\" (common table expressions) needs edition 3; set "
                         "\"config: {edition: 3}\"");
            if (defs) compile_defs(&c, defs);
            if (streams) {
                node_err(&c, 1, streams,
                         "this is the alpha version of Sync Streams; set \"config: {edition: "
                         "3}\" for the current one");
                compile_streams(&c, streams, NULL, edition);
            }
            if (!defs && !streams && !d->nerrors)
                rdiag_add(d, 0, (int)root->start_mark.line + 1, (int)root->start_mark.column + 1,
                          "sync rules need \"bucket_definitions\" or \"streams\"");
        }
        if (writes) rwrite_compile_rules(set, d, c.text, len, &doc, writes);
        if (cons) rwrite_compile_constraints(set, d, c.text, len, &doc, cons);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    /* flat list of data queries in file order */
    for (int i = 0; i < set->ndefs; i++)
        for (int k = 0; k < set->defs[i]->ndq; k++) {
            set->dqs = rx_realloc(set->dqs, sizeof(rdataq_t *) * (size_t)(set->ndqs + 1));
            set->dqs[set->ndqs++] = set->defs[i]->dq[k];
        }
    if (d->nerrors) {
        set_free(set);
        rules_diags_free(&local);
        return RULES_ECOMPILE;
    }
    rules_diags_free(&local);
    *out = set;
    return 0;
}

int rules_compile_file(const char *path, rules_set_t **out, rules_diags_t *diags)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (diags) {
            memset(diags, 0, sizeof *diags);
            diags->file = rx_strdup(path);
            rdiag_add(diags, 0, 0, 0, "could not open file: %s", strerror(errno));
        }
        return RULES_EIO;
    }
    rbuf_t b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        rb_put(&b, tmp, n);
    int err = ferror(f);
    fclose(f);
    if (err) {
        rb_free(&b);
        if (diags) {
            memset(diags, 0, sizeof *diags);
            diags->file = rx_strdup(path);
            rdiag_add(diags, 0, 0, 0, "could not read file");
        }
        return RULES_EIO;
    }
    const char *base = path;
    int rc = rules_compile(b.p ? b.p : "", b.n, base, out, diags);
    rb_free(&b);
    return rc;
}
