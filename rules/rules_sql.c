/* rules_sql.c -- tokenizer and parser of the sync-rules SQL subset
 *
 * Parses one SELECT of the PowerSync subset into an AST (rnode_t) whose nodes remember the
 * byte offset of their token, so the compiler can point diagnostics at it. The grammar is
 * SQLite's expression grammar restricted to what the spec allows (§4.4, §4.5), plus Postgres
 * `x::type` casts; what the spec forbids (joins, subqueries, ORDER BY, LIMIT, ...) is rejected
 * here with a message naming the construct. Identifiers keep their case; keywords do not.
 * Memory: every node and string belongs to the rsql_t and is freed by rsql_free().
 */
#include "rules_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct rsql {
    const char *sql;
    int qkind;
    rtok_t *toks;
    int ntoks, cap;
    int pos;
    void **allocs;
    int nallocs, capallocs;
    int err_off;
    char err[256];
    int failed;
    int depth;
    rselect_t sel;
};

static void *q_own(rsql_t *q, void *p)
{
    if (q->nallocs == q->capallocs) {
        q->capallocs = q->capallocs ? q->capallocs * 2 : 64;
        q->allocs = rx_realloc(q->allocs, sizeof(void *) * (size_t)q->capallocs);
    }
    q->allocs[q->nallocs++] = p;
    return p;
}

static char *q_strndup(rsql_t *q, const char *s, size_t n)
{
    return q_own(q, rx_strndup(s, n));
}

static void q_fail(rsql_t *q, int off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void q_fail(rsql_t *q, int off, const char *fmt, ...)
{
    if (q->failed) return;
    q->failed = 1;
    q->err_off = off;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->err, sizeof q->err, fmt, ap);
    va_end(ap);
}

/* ---- tokenizer ------------------------------------------------------------------------ */

static void add_tok(rsql_t *q, int kind, int off, int len, char *text)
{
    if (q->ntoks == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 32;
        q->toks = rx_realloc(q->toks, sizeof(rtok_t) * (size_t)q->cap);
    }
    q->toks[q->ntoks++] = (rtok_t){kind, off, len, text};
}

static const char *const ops3[] = {"->>", NULL};
static const char *const ops2[] = {"->", "||", "::", "<=", ">=", "<>",
                                   "!=", "==", "&&", "<<", ">>", NULL};
static const char ops1[] = "=<>+-*/%(),.&|~;";

static int tokenize(rsql_t *q)
{
    const char *s = q->sql;
    int i = 0;
    int n = (int)strlen(s);
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (isspace(c)) {
            i++;
            continue;
        }
        if (c == '-' && s[i + 1] == '-') {
            while (i < n && s[i] != '\n')
                i++;
            continue;
        }
        if (c == '/' && s[i + 1] == '*') {
            const char *e = strstr(s + i + 2, "*/");
            if (!e) {
                q_fail(q, i, "unterminated comment");
                return -1;
            }
            i = (int)(e - s) + 2;
            continue;
        }
        if (isalpha(c) || c == '_') {
            int j = i;
            while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_' || s[j] == '$'))
                j++;
            add_tok(q, T_IDENT, i, j - i, q_strndup(q, s + i, (size_t)(j - i)));
            i = j;
            continue;
        }
        if (isdigit(c) || (c == '.' && isdigit((unsigned char)s[i + 1]))) {
            int j = i;
            while (j < n && isdigit((unsigned char)s[j]))
                j++;
            if (j < n && s[j] == '.') {
                j++;
                while (j < n && isdigit((unsigned char)s[j]))
                    j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                int k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && isdigit((unsigned char)s[k])) {
                    j = k;
                    while (j < n && isdigit((unsigned char)s[j]))
                        j++;
                }
            }
            if (j < n && (isalpha((unsigned char)s[j]) || s[j] == '_')) {
                q_fail(q, i, "invalid number \"%.*s\"", j - i + 1, s + i);
                return -1;
            }
            add_tok(q, T_NUM, i, j - i, q_strndup(q, s + i, (size_t)(j - i)));
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            rbuf_t b = {0};
            int j = i + 1;
            for (;;) {
                if (j >= n) {
                    rb_free(&b);
                    q_fail(q, i,
                           c == '\'' ? "unterminated string literal"
                                     : "unterminated quoted identifier");
                    return -1;
                }
                if (s[j] == (char)c) {
                    if (s[j + 1] == (char)c) {
                        rb_putc(&b, (char)c);
                        j += 2;
                        continue;
                    }
                    break;
                }
                rb_putc(&b, s[j]);
                j++;
            }
            char *text = q_own(q, rb_strdup(&b));
            rb_free(&b);
            add_tok(q, c == '\'' ? T_STR : T_QIDENT, i, j + 1 - i, text);
            i = j + 1;
            continue;
        }
        if (c == '?' || c == '$' || c == ':' || c == '@') {
            if (!(c == ':' && s[i + 1] == ':')) {
                q_fail(q, i, "positional and named parameters are not supported");
                return -1;
            }
        }
        int len = 0;
        for (int k = 0; ops3[k]; k++)
            if (strncmp(s + i, ops3[k], 3) == 0) len = 3;
        if (!len)
            for (int k = 0; ops2[k]; k++)
                if (strncmp(s + i, ops2[k], 2) == 0) len = 2;
        if (!len && strchr(ops1, c)) len = 1;
        if (!len) {
            q_fail(q, i, "unexpected character \"%c\"", c);
            return -1;
        }
        add_tok(q, T_OP, i, len, q_strndup(q, s + i, (size_t)len));
        i += len;
    }
    add_tok(q, T_EOF, n, 0, "");
    return 0;
}

/* ---- parser helpers ------------------------------------------------------------------- */

static rtok_t *peek(rsql_t *q)
{
    return &q->toks[q->pos];
}

static rtok_t *peek2(rsql_t *q)
{
    return &q->toks[q->pos + 1 < q->ntoks ? q->pos + 1 : q->pos];
}

static int is_kw(const rtok_t *t, const char *kw)
{
    return t->kind == T_IDENT && strcasecmp(t->text, kw) == 0;
}

static int is_op(const rtok_t *t, const char *op)
{
    return t->kind == T_OP && strcmp(t->text, op) == 0;
}

static int accept_kw(rsql_t *q, const char *kw)
{
    if (is_kw(peek(q), kw)) {
        q->pos++;
        return 1;
    }
    return 0;
}

static int accept_op(rsql_t *q, const char *op)
{
    if (is_op(peek(q), op)) {
        q->pos++;
        return 1;
    }
    return 0;
}

static const char *tok_desc(const rtok_t *t, char *buf, size_t len)
{
    if (t->kind == T_EOF) return "end of query";
    snprintf(buf, len, "\"%.*s\"", t->len > 40 ? 40 : t->len, t->text);
    return buf;
}

static void expect_op(rsql_t *q, const char *op)
{
    if (accept_op(q, op)) return;
    char b[64];
    q_fail(q, peek(q)->off, "expected \"%s\" but found %s", op, tok_desc(peek(q), b, sizeof b));
}

static rnode_t *mk(rsql_t *q, nkind_t k, int off)
{
    rnode_t *n = q_own(q, rx_calloc(1, sizeof *n));
    n->kind = k;
    n->off = off;
    return n;
}

/* keywords that cannot start an identifier reference */
static const char *const reserved[] = {
    "select", "from",      "where",    "and",     "or",      "not",    "as",        "in",
    "is",     "null",      "order",    "group",   "limit",   "offset", "having",    "join",
    "on",     "union",     "distinct", "cast",    "true",    "false",  "left",      "right",
    "inner",  "outer",     "cross",    "full",    "natural", "using",  "case",      "when",
    "then",   "else",      "end",      "between", "like",    "glob",   "intersect", "except",
    "window", "returning", "for",      NULL};

static int is_reserved(const rtok_t *t)
{
    if (t->kind != T_IDENT) return 0;
    for (int i = 0; reserved[i]; i++)
        if (strcasecmp(t->text, reserved[i]) == 0) return 1;
    return 0;
}

static const char *qname(int qkind)
{
    return qkind == Q_DATA ? "data queries" : "parameter queries";
}

/* clauses that are not supported after FROM/WHERE: message names them */
static int reject_clause(rsql_t *q)
{
    rtok_t *t = peek(q);
    static const char *const clauses[][2] = {{"order", "ORDER BY"},      {"group", "GROUP BY"},
                                             {"limit", "LIMIT"},         {"offset", "OFFSET"},
                                             {"having", "HAVING"},       {"union", "UNION"},
                                             {"intersect", "INTERSECT"}, {"except", "EXCEPT"},
                                             {"window", "WINDOW"},       {"for", "FOR"},
                                             {"returning", "RETURNING"}, {NULL, NULL}};
    for (int i = 0; clauses[i][0]; i++)
        if (is_kw(t, clauses[i][0])) {
            q_fail(q, t->off, "\"%s\" is not supported in %s", clauses[i][1], qname(q->qkind));
            return 1;
        }
    static const char *const joins[] = {"join",  "left", "right",   "inner", "outer",
                                        "cross", "full", "natural", NULL};
    for (int i = 0; joins[i]; i++)
        if (is_kw(t, joins[i])) {
            q_fail(q, t->off, "joins are not supported in %s", qname(q->qkind));
            return 1;
        }
    if (is_op(t, ",")) {
        q_fail(q, t->off, "joins are not supported in %s (only one table may follow \"FROM\")",
               qname(q->qkind));
        return 1;
    }
    return 0;
}

/* ---- expressions ---------------------------------------------------------------------- */

static rnode_t *p_expr(rsql_t *q);

static int node_end(rsql_t *q)
{
    rtok_t *t = &q->toks[q->pos > 0 ? q->pos - 1 : 0];
    return t->off + t->len;
}

static rnode_t *binary(rsql_t *q, const char *op, int off, rnode_t *a, rnode_t *b)
{
    rnode_t *n = mk(q, N_BINARY, off);
    n->op = q_strndup(q, op, strlen(op));
    n->a = a;
    n->b = b;
    n->end = node_end(q);
    return n;
}

static char *ident_text(rtok_t *t)
{
    return t->text;
}

static int is_ident(const rtok_t *t)
{
    return t->kind == T_QIDENT || (t->kind == T_IDENT && !is_reserved(t));
}

static rnode_t *p_cast_type(rsql_t *q, rnode_t *inner, int off)
{
    rtok_t *t = peek(q);
    if (t->kind != T_IDENT) {
        char b[64];
        q_fail(q, t->off, "expected a type name but found %s", tok_desc(t, b, sizeof b));
        return NULL;
    }
    static const char *const types[] = {"text", "integer", "real", "numeric", "blob", NULL};
    int ok = 0;
    for (int i = 0; types[i]; i++)
        if (strcasecmp(t->text, types[i]) == 0) ok = 1;
    if (!ok) {
        q_fail(q, t->off,
               "cannot cast to \"%s\" (supported types: text, integer, real, numeric, blob)",
               t->text);
        return NULL;
    }
    q->pos++;
    rnode_t *n = mk(q, N_CAST, off);
    n->a = inner;
    char *ty = q_strndup(q, t->text, strlen(t->text));
    for (char *p = ty; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    n->name = ty;
    n->end = node_end(q);
    return n;
}

static rnode_t *p_primary(rsql_t *q)
{
    if (++q->depth > 200) {
        q_fail(q, peek(q)->off, "expression is nested too deeply");
        return NULL;
    }
    rnode_t *r = NULL;
    rtok_t *t = peek(q);
    char b[64];
    if (t->kind == T_NUM) {
        q->pos++;
        int real = strpbrk(t->text, ".eE") != NULL;
        r = mk(q, real ? N_REAL : N_INT, t->off);
        r->text = t->text;
        if (!real) {
            /* integers beyond int64 are REAL in SQLite */
            if (strlen(t->text) > 19 ||
                (strlen(t->text) == 19 && strcmp(t->text, "9223372036854775807") > 0))
                r->kind = N_REAL;
        }
    } else if (t->kind == T_STR) {
        q->pos++;
        r = mk(q, N_STR, t->off);
        r->text = t->text;
    } else if (is_kw(t, "null")) {
        q->pos++;
        r = mk(q, N_NULL, t->off);
    } else if (is_kw(t, "true") || is_kw(t, "false")) {
        q->pos++;
        r = mk(q, N_BOOL, t->off);
        r->text = is_kw(t, "true") ? "1" : "0";
    } else if (is_kw(t, "cast")) {
        q->pos++;
        expect_op(q, "(");
        rnode_t *inner = p_expr(q);
        if (q->failed) goto out;
        if (!accept_kw(q, "as")) {
            q_fail(q, peek(q)->off, "expected \"AS\" but found %s", tok_desc(peek(q), b, sizeof b));
            goto out;
        }
        r = p_cast_type(q, inner, t->off);
        if (r) expect_op(q, ")");
        if (r) r->end = node_end(q);
    } else if (is_kw(t, "case")) {
        q_fail(q, t->off, "\"CASE\" is not supported; use iif() or ifnull()");
    } else if (is_kw(t, "select")) {
        q_fail(q, t->off, "subqueries are not supported in %s", qname(q->qkind));
    } else if (is_op(t, "(")) {
        q->pos++;
        if (is_kw(peek(q), "select")) {
            q_fail(q, peek(q)->off, "subqueries are not supported in %s", qname(q->qkind));
            goto out;
        }
        r = p_expr(q);
        if (q->failed) goto out;
        if (is_op(peek(q), ",")) {
            /* a value list: only valid on the right of IN */
            q_fail(q, peek(q)->off, "a list of values is only allowed after \"IN\"");
            goto out;
        }
        expect_op(q, ")");
        if (r) r->end = node_end(q);
    } else if (is_ident(t)) {
        q->pos++;
        /* qualified name or function call */
        if (is_op(peek(q), "(")) {
            q->pos++;
            r = mk(q, N_FUNC, t->off);
            r->name = ident_text(t);
            rnode_t *args[16];
            int na = 0;
            if (!is_op(peek(q), ")")) {
                if (is_op(peek(q), "*")) {
                    q_fail(q, peek(q)->off, "\"*\" is not a function argument here");
                    goto out;
                }
                if (is_kw(peek(q), "distinct")) {
                    q_fail(q, peek(q)->off, "\"DISTINCT\" is not supported in %s", qname(q->qkind));
                    goto out;
                }
                for (;;) {
                    rnode_t *a = p_expr(q);
                    if (q->failed) goto out;
                    if (na == 16) {
                        q_fail(q, a->off, "too many function arguments");
                        goto out;
                    }
                    args[na++] = a;
                    if (!accept_op(q, ",")) break;
                }
            }
            expect_op(q, ")");
            if (q->failed) goto out;
            r->args = q_own(q, rx_calloc((size_t)na + 1, sizeof(rnode_t *)));
            memcpy(r->args, args, sizeof(rnode_t *) * (size_t)na);
            r->nargs = na;
            r->end = node_end(q);
        } else if (is_op(peek(q), ".") && peek2(q)->kind != T_EOF) {
            q->pos++;
            rtok_t *t2 = peek(q);
            if (!is_ident(t2) && t2->kind != T_IDENT) {
                q_fail(q, t2->off, "expected a name after \".\" but found %s",
                       tok_desc(t2, b, sizeof b));
                goto out;
            }
            q->pos++;
            if (is_op(peek(q), "(")) {
                /* qualified function: request.user_id() etc. */
                q->pos++;
                if (!is_op(peek(q), ")")) {
                    q_fail(q, peek(q)->off, "\"%s.%s()\" takes no arguments", t->text, t2->text);
                    goto out;
                }
                q->pos++;
                r = mk(q, N_FUNC, t->off);
                r->qual = ident_text(t);
                r->name = ident_text(t2);
                r->end = node_end(q);
            } else if (is_op(peek(q), ".")) {
                q_fail(q, peek(q)->off, "schema-qualified column names are not supported");
                goto out;
            } else {
                r = mk(q, N_COL, t->off);
                r->qual = ident_text(t);
                r->name = ident_text(t2);
                r->end = node_end(q);
            }
        } else {
            r = mk(q, N_COL, t->off);
            r->name = ident_text(t);
            r->end = node_end(q);
        }
    } else if (t->kind == T_EOF) {
        q_fail(q, t->off, "unexpected end of query");
    } else {
        q_fail(q, t->off, "syntax error at %s", tok_desc(t, b, sizeof b));
    }
out:
    q->depth--;
    if (r && !r->end) r->end = node_end(q);
    return q->failed ? NULL : r;
}

static rnode_t *p_postfix(rsql_t *q)
{
    rnode_t *n = p_primary(q);
    while (n && is_op(peek(q), "::")) {
        int off = peek(q)->off;
        q->pos++;
        n = p_cast_type(q, n, off);
    }
    if (n && is_kw(peek(q), "collate")) {
        q_fail(q, peek(q)->off, "\"COLLATE\" is not supported");
        return NULL;
    }
    return n;
}

static rnode_t *p_unary(rsql_t *q)
{
    rtok_t *t = peek(q);
    if (is_op(t, "-") || is_op(t, "+") || is_op(t, "~")) {
        q->pos++;
        if (++q->depth > 200) {
            q_fail(q, t->off, "expression is nested too deeply");
            return NULL;
        }
        rnode_t *a = p_unary(q);
        q->depth--;
        if (!a) return NULL;
        rnode_t *n = mk(q, N_UNARY, t->off);
        n->op = t->text;
        n->a = a;
        n->end = node_end(q);
        return n;
    }
    return p_postfix(q);
}

static rnode_t *p_concat(rsql_t *q)
{
    rnode_t *a = p_unary(q);
    while (a) {
        rtok_t *t = peek(q);
        if (!(is_op(t, "||") || is_op(t, "->") || is_op(t, "->>"))) break;
        q->pos++;
        rnode_t *b = p_unary(q);
        if (!b) return NULL;
        a = binary(q, t->text, t->off, a, b);
    }
    return a;
}

static rnode_t *p_mul(rsql_t *q)
{
    rnode_t *a = p_concat(q);
    while (a) {
        rtok_t *t = peek(q);
        if (!(is_op(t, "*") || is_op(t, "/") || is_op(t, "%"))) break;
        q->pos++;
        rnode_t *b = p_concat(q);
        if (!b) return NULL;
        a = binary(q, t->text, t->off, a, b);
    }
    return a;
}

static rnode_t *p_add(rsql_t *q)
{
    rnode_t *a = p_mul(q);
    while (a) {
        rtok_t *t = peek(q);
        if (!(is_op(t, "+") || is_op(t, "-"))) break;
        q->pos++;
        rnode_t *b = p_mul(q);
        if (!b) return NULL;
        a = binary(q, t->text, t->off, a, b);
    }
    return a;
}

static rnode_t *p_bits(rsql_t *q)
{
    rnode_t *a = p_add(q);
    while (a) {
        rtok_t *t = peek(q);
        if (!(is_op(t, "&") || is_op(t, "|") || is_op(t, "<<") || is_op(t, ">>"))) break;
        q->pos++;
        rnode_t *b = p_add(q);
        if (!b) return NULL;
        a = binary(q, t->text, t->off, a, b);
    }
    if (a && is_op(peek(q), "&&")) {
        q_fail(q, peek(q)->off, "operator \"&&\" is only supported in sync streams");
        return NULL;
    }
    return a;
}

static rnode_t *p_cmp(rsql_t *q)
{
    rnode_t *a = p_bits(q);
    while (a) {
        rtok_t *t = peek(q);
        if (!(is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") || is_op(t, ">="))) break;
        q->pos++;
        rnode_t *b = p_bits(q);
        if (!b) return NULL;
        a = binary(q, t->text, t->off, a, b);
    }
    return a;
}

static rnode_t *p_eq(rsql_t *q)
{
    rnode_t *a = p_cmp(q);
    while (a && !q->failed) {
        rtok_t *t = peek(q);
        if (is_op(t, "=") || is_op(t, "==") || is_op(t, "!=") || is_op(t, "<>")) {
            q->pos++;
            rnode_t *b = p_cmp(q);
            if (!b) return NULL;
            const char *op = is_op(t, "==") ? "=" : is_op(t, "<>") ? "!=" : t->text;
            a = binary(q, op, t->off, a, b);
        } else if (is_kw(t, "is")) {
            q->pos++;
            int neg = accept_kw(q, "not");
            if (accept_kw(q, "null")) {
                rnode_t *n = mk(q, N_ISNULL, t->off);
                n->a = a;
                n->neg = neg;
                n->end = node_end(q);
                a = n;
            } else {
                rnode_t *b = p_cmp(q);
                if (!b) return NULL;
                a = binary(q, neg ? "IS NOT" : "IS", t->off, a, b);
            }
        } else if (is_kw(t, "notnull") || is_kw(t, "isnull")) {
            q->pos++;
            rnode_t *n = mk(q, N_ISNULL, t->off);
            n->a = a;
            n->neg = is_kw(t, "notnull");
            n->end = node_end(q);
            a = n;
        } else if (is_kw(t, "in") || (is_kw(t, "not") && is_kw(peek2(q), "in"))) {
            int neg = is_kw(t, "not");
            q->pos += neg ? 2 : 1;
            int inoff = neg ? peek(q)->off : t->off;
            (void)inoff;
            if (is_op(peek(q), "(") && !is_kw(peek2(q), "select")) {
                /* (e) is one expression (a JSON array); (e1, e2, ...) is a list */
                int save = q->pos;
                q->pos++;
                rnode_t *items[64];
                int ni = 0;
                for (;;) {
                    rnode_t *e = p_expr(q);
                    if (!e) return NULL;
                    if (ni == 64) {
                        q_fail(q, e->off, "too many values in \"IN\" list");
                        return NULL;
                    }
                    items[ni++] = e;
                    if (!accept_op(q, ",")) break;
                }
                expect_op(q, ")");
                if (q->failed) return NULL;
                rnode_t *n;
                if (ni == 1) {
                    q->pos = save;
                    rnode_t *b = p_cmp(q);
                    if (!b) return NULL;
                    n = mk(q, N_IN, t->off);
                    n->b = b;
                } else {
                    n = mk(q, N_INLIST, t->off);
                    n->args = q_own(q, rx_calloc((size_t)ni, sizeof(rnode_t *)));
                    memcpy(n->args, items, sizeof(rnode_t *) * (size_t)ni);
                    n->nargs = ni;
                }
                n->a = a;
                n->neg = neg;
                n->end = node_end(q);
                a = n;
            } else {
                rnode_t *b = p_cmp(q);
                if (!b) return NULL;
                rnode_t *n = mk(q, N_IN, t->off);
                n->a = a;
                n->b = b;
                n->neg = neg;
                n->end = node_end(q);
                a = n;
            }
        } else if (is_kw(t, "like") || is_kw(t, "glob") || is_kw(t, "between") ||
                   is_kw(t, "regexp") || is_kw(t, "match") ||
                   (is_kw(t, "not") && (is_kw(peek2(q), "like") || is_kw(peek2(q), "between")))) {
            rtok_t *k = is_kw(t, "not") ? peek2(q) : t;
            char up[16];
            snprintf(up, sizeof up, "%s", k->text);
            for (char *p = up; *p; p++)
                *p = (char)toupper((unsigned char)*p);
            q_fail(q, k->off, "operator \"%s\" is not supported", up);
            return NULL;
        } else {
            break;
        }
    }
    return q->failed ? NULL : a;
}

static rnode_t *p_not(rsql_t *q)
{
    rtok_t *t = peek(q);
    if (is_kw(t, "not")) {
        q->pos++;
        if (++q->depth > 200) {
            q_fail(q, t->off, "expression is nested too deeply");
            return NULL;
        }
        rnode_t *a = p_not(q);
        q->depth--;
        if (!a) return NULL;
        rnode_t *n = mk(q, N_UNARY, t->off);
        n->op = "NOT";
        n->a = a;
        n->end = node_end(q);
        return n;
    }
    return p_eq(q);
}

static rnode_t *p_and(rsql_t *q)
{
    rnode_t *a = p_not(q);
    while (a && is_kw(peek(q), "and")) {
        int off = peek(q)->off;
        q->pos++;
        rnode_t *b = p_not(q);
        if (!b) return NULL;
        a = binary(q, "AND", off, a, b);
    }
    return a;
}

static rnode_t *p_expr(rsql_t *q)
{
    if (++q->depth > 200) {
        q_fail(q, peek(q)->off, "expression is nested too deeply");
        return NULL;
    }
    rnode_t *a = p_and(q);
    while (a && is_kw(peek(q), "or")) {
        int off = peek(q)->off;
        q->pos++;
        rnode_t *b = p_and(q);
        if (!b) {
            a = NULL;
            break;
        }
        a = binary(q, "OR", off, a, b);
    }
    q->depth--;
    return q->failed ? NULL : a;
}

/* ---- SELECT --------------------------------------------------------------------------- */

static void p_select(rsql_t *q)
{
    rselect_t *s = &q->sel;
    rtok_t *t = peek(q);
    char b[64];
    if (!accept_kw(q, "select")) {
        q_fail(q, t->off, "expected \"SELECT\" but found %s", tok_desc(t, b, sizeof b));
        return;
    }
    if (is_kw(peek(q), "distinct") || is_kw(peek(q), "all")) {
        q_fail(q, peek(q)->off, "\"%s\" is not supported in %s",
               is_kw(peek(q), "all") ? "ALL" : "DISTINCT", qname(q->qkind));
        return;
    }
    rsel_item_t items[256];
    int n = 0;
    if (!is_kw(peek(q), "from") && !is_kw(peek(q), "where") && peek(q)->kind != T_EOF) {
        for (;;) {
            rsel_item_t it = {0};
            it.off = peek(q)->off;
            if (is_op(peek(q), "*")) {
                q->pos++;
            } else {
                it.expr = p_expr(q);
                if (q->failed) return;
                if (accept_kw(q, "as")) {
                    rtok_t *a = peek(q);
                    if (a->kind != T_IDENT && a->kind != T_QIDENT) {
                        q_fail(q, a->off, "expected a column name after \"AS\" but found %s",
                               tok_desc(a, b, sizeof b));
                        return;
                    }
                    q->pos++;
                    it.alias = a->text;
                } else if (is_ident(peek(q))) {
                    it.alias = peek(q)->text;
                    q->pos++;
                }
            }
            if (n == 256) {
                q_fail(q, it.off, "too many columns");
                return;
            }
            items[n++] = it;
            if (!accept_op(q, ",")) break;
        }
    }
    s->items = q_own(q, rx_calloc((size_t)n + 1, sizeof(rsel_item_t)));
    memcpy(s->items, items, sizeof(rsel_item_t) * (size_t)n);
    s->nitems = n;

    if (is_kw(peek(q), "from")) {
        q->pos++;
        s->has_from = 1;
        rtok_t *ft = peek(q);
        s->from_off = ft->off;
        if (is_op(ft, "(")) {
            q_fail(q, ft->off, "subqueries are not supported in %s", qname(q->qkind));
            return;
        }
        if (!is_ident(ft)) {
            q_fail(q, ft->off, "expected a table name but found %s", tok_desc(ft, b, sizeof b));
            return;
        }
        q->pos++;
        if (ft->kind == T_IDENT && strcasecmp(ft->text, "json_each") == 0 && is_op(peek(q), "(")) {
            q->pos++;
            s->json_each_arg = p_expr(q);
            if (q->failed) return;
            expect_op(q, ")");
            if (q->failed) return;
            s->table = "json_each";
        } else {
            s->table = ft->text;
            s->table_quoted = ft->kind == T_QIDENT;
            if (is_op(peek(q), ".")) {
                q->pos++;
                rtok_t *t2 = peek(q);
                if (!is_ident(t2)) {
                    q_fail(q, t2->off, "expected a table name but found %s",
                           tok_desc(t2, b, sizeof b));
                    return;
                }
                q->pos++;
                s->schema = s->table;
                s->table = t2->text;
                s->table_quoted = t2->kind == T_QIDENT;
                ft = t2;
            }
            /* prefix pattern: todos% */
            if (is_op(peek(q), "%") && peek(q)->off == ft->off + ft->len) {
                q->pos++;
                size_t l = strlen(s->table);
                char *p = q_own(q, rx_malloc(l + 2));
                memcpy(p, s->table, l);
                p[l] = '%';
                p[l + 1] = 0;
                s->table = p;
            }
        }
        if (accept_kw(q, "as")) {
            rtok_t *a = peek(q);
            if (!is_ident(a)) {
                q_fail(q, a->off, "expected an alias after \"AS\" but found %s",
                       tok_desc(a, b, sizeof b));
                return;
            }
            q->pos++;
            s->alias = a->text;
        } else if (is_ident(peek(q))) {
            s->alias = peek(q)->text;
            q->pos++;
        }
        if (reject_clause(q)) return;
    }
    if (is_kw(peek(q), "where")) {
        q->pos++;
        s->where = p_expr(q);
        if (q->failed) return;
    }
    if (reject_clause(q)) return;
    accept_op(q, ";");
    if (peek(q)->kind != T_EOF)
        q_fail(q, peek(q)->off, "syntax error at %s", tok_desc(peek(q), b, sizeof b));
}

rsql_t *rsql_parse(const char *sql, int qkind, int *err_off, char *err, size_t errlen)
{
    rsql_t *q = rx_calloc(1, sizeof *q);
    q->sql = sql;
    q->qkind = qkind;
    if (tokenize(q) == 0) p_select(q);
    if (q->failed) {
        *err_off = q->err_off;
        snprintf(err, errlen, "%s", q->err);
        rsql_free(q);
        return NULL;
    }
    return q;
}

rselect_t *rsql_select(rsql_t *q)
{
    return &q->sel;
}

void rsql_free(rsql_t *q)
{
    if (!q) return;
    for (int i = 0; i < q->nallocs; i++)
        free(q->allocs[i]);
    free(q->allocs);
    free(q->toks);
    free(q);
}

int rsql_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40) return 99;
    int d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int c = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int m = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < m) m = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + c < m) m = d[i - 1][j - 1] + c;
            d[i][j] = m;
        }
    return d[la][lb];
}
