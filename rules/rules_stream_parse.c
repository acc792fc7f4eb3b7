/* rules_stream_parse.c -- tokenizer and parser of stream SQL (a Postgres SELECT)
 *
 * Sync Streams queries are written in Postgres' dialect, as the PowerSync reference compiler
 * parses them: unquoted identifiers fold to lower case, `"Quoted"` ones keep theirs, strings may
 * be E'..' escape strings, and a SELECT may join tables (`JOIN .. ON`, commas), select from
 * subqueries and functions (`json_each(..) AS j`), and use subqueries after IN. This file only
 * builds the syntax tree (sx_t, ssel_t in rules_stream.h); what streams do not support (GROUP BY,
 * LIMIT, outer joins, ...) is parsed here and rejected by the compiler with a position, so one
 * run reports every such problem. Syntax errors stop at the first one.
 *
 * Precedence, high to low (Postgres): `::`, unary + -, * / %, + -, other operators (|| -> ->>
 * && & | << >>), BETWEEN IN LIKE, comparisons, IS, NOT, AND, OR.
 *
 * Memory: every node is allocated from the caller's arena (also defined here).
 */
#include "rules_stream.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- arena ---------------------------------------------------------------------------- */

struct rablk {
    rablk_t *next;
    size_t used, cap;
    max_align_t data[];
};

void *ra_alloc(rarena_t *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    rablk_t *b = a->head;
    if (!b || b->used + n > b->cap) {
        size_t cap = n > 16384 ? n : 16384;
        b = rx_malloc(sizeof(rablk_t) + cap);
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

char *ra_strndup(rarena_t *a, const char *s, size_t n)
{
    char *p = ra_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *ra_strdup(rarena_t *a, const char *s)
{
    return ra_strndup(a, s, strlen(s));
}

char *ra_printf(rarena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = ra_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void ra_free(rarena_t *a)
{
    rablk_t *b = a->head;
    while (b) {
        rablk_t *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
}

/* ---- tokens --------------------------------------------------------------------------- */

enum { K_EOF, K_WORD, K_QWORD, K_INT, K_NUM, K_STR, K_OP, K_PARAM };

typedef struct stok {
    int kind;
    int off, len;
    const char *text; /* K_WORD lower-cased; K_QWORD, K_STR decoded; others as written */
} stok_t;

typedef struct sp {
    rarena_t *a;
    const ssrc_t *src;
    const char *s;
    stok_t *toks;
    int ntoks, cap;
    int pos;
    int failed;
    int err_off;
    char err[256];
    int depth;
} sp_t;

static void fail(sp_t *p, int off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(sp_t *p, int off, const char *fmt, ...)
{
    if (p->failed) return;
    p->failed = 1;
    p->err_off = off;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
}

static void push(sp_t *p, int kind, int off, int len, const char *text)
{
    if (p->ntoks == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->toks = rx_realloc(p->toks, sizeof(stok_t) * (size_t)p->cap);
    }
    p->toks[p->ntoks++] = (stok_t){kind, off, len, text};
}

static const char *const ops3[] = {"->>", NULL};
static const char *const ops2[] = {"->", "||", "::", "<=", ">=", "<>",
                                   "!=", "==", "&&", "<<", ">>", NULL};
static const char ops1[] = "=<>+-*/%(),.&|~;[]^";

static int lex(sp_t *p)
{
    const char *s = p->s;
    int n = (int)strlen(s), i = 0;
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
                fail(p, i, "unterminated comment");
                return -1;
            }
            i = (int)(e - s) + 2;
            continue;
        }
        /* E'...' escape strings */
        if ((c == 'e' || c == 'E') && s[i + 1] == '\'') {
            rbuf_t b = {0};
            int j = i + 2;
            for (;;) {
                if (j >= n) {
                    rb_free(&b);
                    fail(p, i, "unterminated string literal");
                    return -1;
                }
                if (s[j] == '\\' && j + 1 < n) {
                    char e = s[j + 1];
                    rb_putc(&b, e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e);
                    j += 2;
                    continue;
                }
                if (s[j] == '\'') {
                    if (s[j + 1] == '\'') {
                        rb_putc(&b, '\'');
                        j += 2;
                        continue;
                    }
                    break;
                }
                rb_putc(&b, s[j++]);
            }
            push(p, K_STR, i, j + 1 - i, ra_strndup(p->a, b.p ? b.p : "", b.n));
            rb_free(&b);
            i = j + 1;
            continue;
        }
        if (isalpha(c) || c == '_' || c >= 0x80) {
            int j = i;
            while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_' || s[j] == '$' ||
                             (unsigned char)s[j] >= 0x80))
                j++;
            char *t = ra_strndup(p->a, s + i, (size_t)(j - i));
            for (char *q = t; *q; q++)
                *q = (char)tolower((unsigned char)*q);
            push(p, K_WORD, i, j - i, t);
            i = j;
            continue;
        }
        if (isdigit(c) || (c == '.' && isdigit((unsigned char)s[i + 1]))) {
            int j = i, real = 0;
            while (j < n && isdigit((unsigned char)s[j]))
                j++;
            if (j < n && s[j] == '.' && s[j + 1] != '.') {
                real = 1;
                j++;
                while (j < n && isdigit((unsigned char)s[j]))
                    j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                int k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && isdigit((unsigned char)s[k])) {
                    real = 1;
                    j = k;
                    while (j < n && isdigit((unsigned char)s[j]))
                        j++;
                }
            }
            push(p, real ? K_NUM : K_INT, i, j - i, ra_strndup(p->a, s + i, (size_t)(j - i)));
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            rbuf_t b = {0};
            int j = i + 1;
            for (;;) {
                if (j >= n) {
                    rb_free(&b);
                    fail(p, i,
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
                rb_putc(&b, s[j++]);
            }
            push(p, c == '\'' ? K_STR : K_QWORD, i, j + 1 - i,
                 ra_strndup(p->a, b.p ? b.p : "", b.n));
            rb_free(&b);
            i = j + 1;
            continue;
        }
        if (c == '$' && isdigit((unsigned char)s[i + 1])) {
            int j = i + 1;
            while (j < n && isdigit((unsigned char)s[j]))
                j++;
            push(p, K_PARAM, i, j - i, ra_strndup(p->a, s + i, (size_t)(j - i)));
            i = j;
            continue;
        }
        if (c == '?' || c == '@' || (c == ':' && s[i + 1] != ':')) {
            fail(p, i,
                 "positional and named parameters are not supported; use auth.parameter(), "
                 "subscription.parameter() or connection.parameter()");
            return -1;
        }
        int len = 0;
        for (int k = 0; ops3[k]; k++)
            if (strncmp(s + i, ops3[k], 3) == 0) len = 3;
        if (!len)
            for (int k = 0; ops2[k]; k++)
                if (strncmp(s + i, ops2[k], 2) == 0) len = 2;
        if (!len && strchr(ops1, c)) len = 1;
        if (!len) {
            fail(p, i, "unexpected character \"%c\"", c);
            return -1;
        }
        push(p, K_OP, i, len, ra_strndup(p->a, s + i, (size_t)len));
        i += len;
    }
    push(p, K_EOF, n, 0, "");
    return 0;
}

/* ---- parser helpers ------------------------------------------------------------------- */

static stok_t *peek(sp_t *p)
{
    return &p->toks[p->pos];
}

static stok_t *peekn(sp_t *p, int k)
{
    int i = p->pos + k;
    return &p->toks[i < p->ntoks ? i : p->ntoks - 1];
}

static int is_kw(const stok_t *t, const char *kw)
{
    return t->kind == K_WORD && strcmp(t->text, kw) == 0;
}

static int is_op(const stok_t *t, const char *op)
{
    return t->kind == K_OP && strcmp(t->text, op) == 0;
}

static int accept_kw(sp_t *p, const char *kw)
{
    if (is_kw(peek(p), kw)) {
        p->pos++;
        return 1;
    }
    return 0;
}

static int accept_op(sp_t *p, const char *op)
{
    if (is_op(peek(p), op)) {
        p->pos++;
        return 1;
    }
    return 0;
}

static const char *desc(const stok_t *t, char *buf, size_t len)
{
    if (t->kind == K_EOF) return "end of query";
    snprintf(buf, len, "\"%.*s\"", t->len > 40 ? 40 : t->len, t->text);
    return buf;
}

static void expect_op(sp_t *p, const char *op)
{
    if (accept_op(p, op)) return;
    char b[64];
    fail(p, peek(p)->off, "expected \"%s\" but found %s", op, desc(peek(p), b, sizeof b));
}

/* words that end an expression or cannot name a column */
static const char *const reserved[] = {
    "select", "from",      "where",    "and",     "or",      "not",    "as",        "in",
    "is",     "null",      "order",    "group",   "limit",   "offset", "having",    "join",
    "on",     "union",     "distinct", "cast",    "true",    "false",  "left",      "right",
    "inner",  "outer",     "cross",    "full",    "natural", "using",  "case",      "when",
    "then",   "else",      "end",      "between", "like",    "ilike",  "intersect", "except",
    "window", "returning", "for",      "all",     "array",   "fetch",  NULL};

static int reserved_word(const stok_t *t)
{
    if (t->kind != K_WORD) return 0;
    for (int i = 0; reserved[i]; i++)
        if (strcmp(t->text, reserved[i]) == 0) return 1;
    return 0;
}

static int is_name(const stok_t *t)
{
    return t->kind == K_QWORD || (t->kind == K_WORD && !reserved_word(t));
}

static int prev_end(sp_t *p)
{
    stok_t *t = &p->toks[p->pos > 0 ? p->pos - 1 : 0];
    return t->off + t->len;
}

static sx_t *mk(sp_t *p, sxkind_t k, int off)
{
    sx_t *n = ra_alloc(p->a, sizeof *n);
    n->k = k;
    n->src = p->src;
    n->off = off;
    return n;
}

static sx_t *fin(sp_t *p, sx_t *n)
{
    if (n) n->end = prev_end(p);
    return n;
}

static sx_t **copy_nodes(sp_t *p, sx_t **v, int n)
{
    sx_t **r = ra_alloc(p->a, sizeof(sx_t *) * (size_t)(n + 1));
    memcpy(r, v, sizeof(sx_t *) * (size_t)n);
    return r;
}

static sx_t *p_expr(sp_t *p);
static ssel_t *p_select(sp_t *p);

/* a comma-separated list of expressions up to `close` (already after the opener) */
static sx_t **p_list(sp_t *p, const char *close, int *count)
{
    sx_t *items[256];
    int n = 0;
    if (!is_op(peek(p), close)) {
        for (;;) {
            sx_t *e = p_expr(p);
            if (!e) return NULL;
            if (n == 256) {
                fail(p, e->off, "too many items in a list");
                return NULL;
            }
            items[n++] = e;
            if (!accept_op(p, ",")) break;
        }
    }
    expect_op(p, close);
    if (p->failed) return NULL;
    *count = n;
    return copy_nodes(p, items, n);
}

static sx_t *p_cast(sp_t *p, sx_t *inner, int off)
{
    stok_t *t = peek(p);
    char b[64];
    if (t->kind != K_WORD && t->kind != K_QWORD) {
        fail(p, t->off, "expected a type name but found %s", desc(t, b, sizeof b));
        return NULL;
    }
    p->pos++;
    sx_t *n = mk(p, SX_CAST, off);
    n->a = inner;
    n->name = t->text;
    n->qual_off = t->off;
    /* Postgres type names with a second word or arguments: double precision, varchar(10) */
    if (strcmp(t->text, "double") == 0 && is_kw(peek(p), "precision")) {
        p->pos++;
        n->name = "double precision";
    }
    if (is_op(peek(p), "(")) {
        p->pos++;
        while (!p->failed && !is_op(peek(p), ")") && peek(p)->kind != K_EOF)
            p->pos++;
        expect_op(p, ")");
    }
    return fin(p, n);
}

static sx_t *p_primary(sp_t *p)
{
    stok_t *t = peek(p);
    char b[64];
    sx_t *r = NULL;
    if (++p->depth > 200) {
        fail(p, t->off, "expression is nested too deeply");
        return NULL;
    }
    if (t->kind == K_INT || t->kind == K_NUM) {
        p->pos++;
        r = mk(p, t->kind == K_INT ? SX_INT : SX_NUM, t->off);
        r->text = t->text;
    } else if (t->kind == K_STR) {
        p->pos++;
        r = mk(p, SX_STR, t->off);
        r->text = t->text;
    } else if (t->kind == K_PARAM) {
        p->pos++;
        r = mk(p, SX_PARAM, t->off);
        r->text = t->text;
    } else if (is_kw(t, "null")) {
        p->pos++;
        r = mk(p, SX_NULL, t->off);
    } else if (is_kw(t, "true") || is_kw(t, "false")) {
        p->pos++;
        r = mk(p, SX_BOOL, t->off);
        r->ival = is_kw(t, "true");
    } else if (is_kw(t, "cast")) {
        p->pos++;
        expect_op(p, "(");
        sx_t *inner = p_expr(p);
        if (!inner) goto out;
        if (!accept_kw(p, "as")) {
            fail(p, peek(p)->off, "expected \"AS\" but found %s", desc(peek(p), b, sizeof b));
            goto out;
        }
        r = p_cast(p, inner, t->off);
        expect_op(p, ")");
    } else if (is_kw(t, "case")) {
        p->pos++;
        r = mk(p, SX_CASE, t->off);
        if (!is_kw(peek(p), "when")) r->a = p_expr(p);
        sx_t *items[256];
        int n = 0;
        while (!p->failed && accept_kw(p, "when")) {
            sx_t *w = p_expr(p);
            if (!w) goto out;
            if (!accept_kw(p, "then")) {
                fail(p, peek(p)->off, "expected \"THEN\" but found %s", desc(peek(p), b, sizeof b));
                goto out;
            }
            sx_t *th = p_expr(p);
            if (!th) goto out;
            if (n >= 254) {
                fail(p, w->off, "too many WHEN clauses");
                goto out;
            }
            items[n++] = w;
            items[n++] = th;
        }
        if (p->failed) goto out;
        if (n == 0) {
            fail(p, peek(p)->off, "expected \"WHEN\" but found %s", desc(peek(p), b, sizeof b));
            goto out;
        }
        if (accept_kw(p, "else")) r->b = p_expr(p);
        if (p->failed) goto out;
        if (!accept_kw(p, "end")) {
            fail(p, peek(p)->off, "expected \"END\" but found %s", desc(peek(p), b, sizeof b));
            goto out;
        }
        r->args = copy_nodes(p, items, n);
        r->nargs = n;
    } else if (is_kw(t, "array") && is_op(peekn(p, 1), "[")) {
        p->pos += 2;
        r = mk(p, SX_ARRAY, t->off);
        r->args = p_list(p, "]", &r->nargs);
    } else if (is_kw(t, "select")) {
        r = mk(p, SX_SELECT, t->off);
        r->sel = p_select(p);
    } else if (is_op(t, "(")) {
        p->pos++;
        if (is_kw(peek(p), "select")) {
            r = mk(p, SX_SELECT, t->off);
            r->sel = p_select(p);
            expect_op(p, ")");
        } else {
            int n = 0;
            sx_t **items = p_list(p, ")", &n);
            if (!items) goto out;
            if (n == 0) {
                fail(p, t->off, "empty parentheses");
                goto out;
            }
            if (n == 1) {
                r = items[0];
                /* keep the parentheses in the location, as pgsql-ast-parser does not */
            } else {
                r = mk(p, SX_LIST, t->off);
                r->args = items;
                r->nargs = n;
            }
        }
    } else if (is_name(t) || (t->kind == K_WORD && (is_kw(t, "left") || is_kw(t, "right")) &&
                              is_op(peekn(p, 1), "("))) {
        p->pos++;
        const char *q = NULL, *name = t->text;
        int qoff = t->off;
        if (is_op(peek(p), ".")) {
            p->pos++;
            stok_t *t2 = peek(p);
            if (is_op(t2, "*")) {
                p->pos++;
                r = mk(p, SX_REF, t->off);
                r->qual = name;
                r->qual_off = qoff;
                r->name = "*";
                goto out;
            }
            if (t2->kind != K_WORD && t2->kind != K_QWORD) {
                fail(p, t2->off, "expected a name after \".\" but found %s", desc(t2, b, sizeof b));
                goto out;
            }
            p->pos++;
            q = name;
            name = t2->text;
            if (is_op(peek(p), ".")) {
                fail(p, peek(p)->off, "names with more than one \".\" are not supported");
                goto out;
            }
        }
        if (is_op(peek(p), "(")) {
            p->pos++;
            r = mk(p, SX_CALL, t->off);
            r->qual = q;
            r->qual_off = qoff;
            r->name = name;
            if (is_kw(peek(p), "distinct") || is_kw(peek(p), "all")) {
                r->call_extra = 1;
                p->pos++;
            }
            if (is_op(peek(p), "*")) {
                p->pos++;
                r->call_extra = 1;
                expect_op(p, ")");
            } else {
                r->args = p_list(p, ")", &r->nargs);
            }
            if (p->failed) goto out;
            if (is_kw(peek(p), "filter") || is_kw(peek(p), "over")) {
                r->call_extra = 1;
                p->pos++;
                if (is_op(peek(p), "(")) {
                    int depth = 0;
                    do {
                        if (is_op(peek(p), "(")) depth++;
                        if (is_op(peek(p), ")")) depth--;
                        p->pos++;
                    } while (depth > 0 && peek(p)->kind != K_EOF);
                }
            }
        } else {
            r = mk(p, SX_REF, t->off);
            r->qual = q;
            r->qual_off = qoff;
            r->name = name;
        }
    } else if (t->kind == K_EOF) {
        fail(p, t->off, "unexpected end of query");
    } else {
        fail(p, t->off, "syntax error at %s", desc(t, b, sizeof b));
    }
out:
    p->depth--;
    if (p->failed) return NULL;
    if (r && !r->end) r->end = prev_end(p);
    return r;
}

static sx_t *p_postfix(sp_t *p)
{
    sx_t *n = p_primary(p);
    while (n && !p->failed) {
        if (is_op(peek(p), "::")) {
            int off = n->off;
            p->pos++;
            n = p_cast(p, n, off);
        } else if (is_op(peek(p), "[")) {
            fail(p, peek(p)->off, "array subscripts are not supported; use \"->>\" with an index");
            return NULL;
        } else if (is_kw(peek(p), "collate")) {
            fail(p, peek(p)->off, "\"COLLATE\" is not supported");
            return NULL;
        } else {
            break;
        }
    }
    return p->failed ? NULL : n;
}

static sx_t *p_unary(sp_t *p)
{
    stok_t *t = peek(p);
    if ((is_op(t, "-") || is_op(t, "+")) && !p->failed) {
        stok_t *nx = peekn(p, 1);
        if (is_op(t, "-") && (nx->kind == K_INT || nx->kind == K_NUM) && nx->off == t->off + 1) {
            /* a negative literal */
            p->pos += 2;
            sx_t *r = mk(p, nx->kind == K_INT ? SX_INT : SX_NUM, t->off);
            r->text = ra_printf(p->a, "-%s", nx->text);
            return fin(p, r);
        }
        p->pos++;
        if (++p->depth > 200) {
            fail(p, t->off, "expression is nested too deeply");
            return NULL;
        }
        sx_t *a = p_unary(p);
        p->depth--;
        if (!a) return NULL;
        sx_t *n = mk(p, SX_UN, t->off);
        n->op = t->text;
        n->a = a;
        return fin(p, n);
    }
    return p_postfix(p);
}

static sx_t *bin(sp_t *p, const char *op, sx_t *a, sx_t *b)
{
    sx_t *n = mk(p, SX_BIN, a->off);
    n->op = op;
    n->a = a;
    n->b = b;
    return fin(p, n);
}

static sx_t *p_mul(sp_t *p)
{
    sx_t *a = p_unary(p);
    while (a) {
        stok_t *t = peek(p);
        if (!(is_op(t, "*") || is_op(t, "/") || is_op(t, "%"))) break;
        p->pos++;
        sx_t *b = p_unary(p);
        if (!b) return NULL;
        a = bin(p, t->text, a, b);
    }
    return a;
}

static sx_t *p_add(sp_t *p)
{
    sx_t *a = p_mul(p);
    while (a) {
        stok_t *t = peek(p);
        if (!(is_op(t, "+") || is_op(t, "-"))) break;
        p->pos++;
        sx_t *b = p_mul(p);
        if (!b) return NULL;
        a = bin(p, t->text, a, b);
    }
    return a;
}

/* "other" operators: || -> ->> && & | << >> ^ */
static sx_t *p_other(sp_t *p)
{
    sx_t *a = p_add(p);
    while (a) {
        stok_t *t = peek(p);
        if (is_op(t, "->") || is_op(t, "->>")) {
            p->pos++;
            stok_t *k = peek(p);
            sx_t *m = mk(p, SX_MEMBER, a->off);
            m->op = t->text;
            m->a = a;
            if (k->kind == K_STR) {
                p->pos++;
                m->text = k->text;
            } else if (k->kind == K_INT) {
                p->pos++;
                m->is_index = 1;
                m->ival = atoi(k->text);
            } else {
                char b[64];
                fail(p, k->off,
                     "expected a string or an integer after \"%s\" but found %s (the key must "
                     "be a literal)",
                     t->text, desc(k, b, sizeof b));
                return NULL;
            }
            a = fin(p, m);
            continue;
        }
        if (!(is_op(t, "||") || is_op(t, "&&") || is_op(t, "&") || is_op(t, "|") ||
              is_op(t, "<<") || is_op(t, ">>") || is_op(t, "^") || is_op(t, "~")))
            break;
        p->pos++;
        sx_t *b = p_add(p);
        if (!b) return NULL;
        a = bin(p, t->text, a, b);
    }
    return a;
}

/* BETWEEN, IN, LIKE */
static sx_t *p_range(sp_t *p)
{
    sx_t *a = p_other(p);
    while (a && !p->failed) {
        stok_t *t = peek(p);
        int neg = 0;
        if (is_kw(t, "not") && (is_kw(peekn(p, 1), "in") || is_kw(peekn(p, 1), "between") ||
                                is_kw(peekn(p, 1), "like") || is_kw(peekn(p, 1), "ilike"))) {
            neg = 1;
            p->pos++;
            t = peek(p);
        }
        if (is_kw(t, "in")) {
            p->pos++;
            sx_t *b = p_other(p);
            if (!b) return NULL;
            a = bin(p, neg ? "NOT IN" : "IN", a, b);
        } else if (is_kw(t, "between")) {
            p->pos++;
            accept_kw(p, "symmetric");
            sx_t *lo = p_other(p);
            if (!lo) return NULL;
            if (!accept_kw(p, "and")) {
                char b[64];
                fail(p, peek(p)->off, "expected \"AND\" but found %s", desc(peek(p), b, sizeof b));
                return NULL;
            }
            sx_t *hi = p_other(p);
            if (!hi) return NULL;
            sx_t *n = mk(p, SX_TERN, a->off);
            n->op = neg ? "NOT BETWEEN" : "BETWEEN";
            n->a = a;
            n->b = lo;
            n->c = hi;
            a = fin(p, n);
        } else if (is_kw(t, "like") || is_kw(t, "ilike")) {
            p->pos++;
            sx_t *b = p_other(p);
            if (!b) return NULL;
            const char *op =
                is_kw(t, "like") ? (neg ? "NOT LIKE" : "LIKE") : (neg ? "NOT ILIKE" : "ILIKE");
            a = bin(p, op, a, b);
        } else {
            if (neg) p->pos--;
            break;
        }
    }
    return p->failed ? NULL : a;
}

static sx_t *p_cmp(sp_t *p)
{
    sx_t *a = p_range(p);
    while (a && !p->failed) {
        stok_t *t = peek(p);
        const char *op = NULL;
        if (is_op(t, "=") || is_op(t, "=="))
            op = "=";
        else if (is_op(t, "!=") || is_op(t, "<>"))
            op = "!=";
        else if (is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") || is_op(t, ">="))
            op = t->text;
        if (!op) break;
        p->pos++;
        sx_t *b = p_range(p);
        if (!b) return NULL;
        a = bin(p, op, a, b);
    }
    return p->failed ? NULL : a;
}

static sx_t *p_is(sp_t *p)
{
    sx_t *a = p_cmp(p);
    while (a && !p->failed) {
        stok_t *t = peek(p);
        if (is_kw(t, "is")) {
            p->pos++;
            int neg = accept_kw(p, "not");
            const char *what = NULL;
            if (accept_kw(p, "null"))
                what = "NULL";
            else if (accept_kw(p, "true"))
                what = "TRUE";
            else if (accept_kw(p, "false"))
                what = "FALSE";
            else {
                char b[64];
                fail(p, peek(p)->off,
                     "expected NULL, TRUE or FALSE after \"IS\" but found %s (use \"=\" to "
                     "compare values)",
                     desc(peek(p), b, sizeof b));
                return NULL;
            }
            sx_t *n = mk(p, SX_UN, a->off);
            n->op = ra_printf(p->a, "IS %s%s", neg ? "NOT " : "", what);
            n->a = a;
            a = fin(p, n);
        } else if (is_kw(t, "isnull") || is_kw(t, "notnull")) {
            p->pos++;
            sx_t *n = mk(p, SX_UN, a->off);
            n->op = is_kw(t, "isnull") ? "IS NULL" : "IS NOT NULL";
            n->a = a;
            a = fin(p, n);
        } else {
            break;
        }
    }
    return p->failed ? NULL : a;
}

static sx_t *p_not(sp_t *p)
{
    stok_t *t = peek(p);
    if (is_kw(t, "not")) {
        p->pos++;
        if (++p->depth > 200) {
            fail(p, t->off, "expression is nested too deeply");
            return NULL;
        }
        sx_t *a = p_not(p);
        p->depth--;
        if (!a) return NULL;
        sx_t *n = mk(p, SX_UN, t->off);
        n->op = "NOT";
        n->a = a;
        return fin(p, n);
    }
    return p_is(p);
}

static sx_t *p_and(sp_t *p)
{
    sx_t *a = p_not(p);
    while (a && is_kw(peek(p), "and")) {
        p->pos++;
        sx_t *b = p_not(p);
        if (!b) return NULL;
        a = bin(p, "AND", a, b);
    }
    return a;
}

static sx_t *p_expr(sp_t *p)
{
    if (++p->depth > 200) {
        fail(p, peek(p)->off, "expression is nested too deeply");
        return NULL;
    }
    sx_t *a = p_and(p);
    while (a && is_kw(peek(p), "or")) {
        p->pos++;
        sx_t *b = p_and(p);
        if (!b) {
            a = NULL;
            break;
        }
        a = bin(p, "OR", a, b);
    }
    p->depth--;
    return p->failed ? NULL : a;
}

/* ---- SELECT --------------------------------------------------------------------------- */

static const char *p_alias(sp_t *p)
{
    char b[64];
    if (accept_kw(p, "as")) {
        stok_t *a = peek(p);
        if (a->kind != K_WORD && a->kind != K_QWORD) {
            fail(p, a->off, "expected a name after \"AS\" but found %s", desc(a, b, sizeof b));
            return NULL;
        }
        p->pos++;
        return a->text;
    }
    if (is_name(peek(p))) {
        const char *r = peek(p)->text;
        p->pos++;
        return r;
    }
    return NULL;
}

static int p_from_item(sp_t *p, sfrom_t *f)
{
    stok_t *t = peek(p);
    char b[64];
    f->src = p->src;
    f->off = t->off;
    f->using_off = -1;
    if (is_op(t, "(")) {
        p->pos++;
        if (!is_kw(peek(p), "select")) {
            fail(p, peek(p)->off, "expected a subquery after \"(\" but found %s",
                 desc(peek(p), b, sizeof b));
            return -1;
        }
        f->kind = SF_STMT;
        f->stmt = p_select(p);
        expect_op(p, ")");
        if (p->failed) return -1;
        f->alias = p_alias(p);
        if (p->failed) return -1;
        if (!f->alias) {
            fail(p, peek(p)->off, "a subquery in \"FROM\" needs an alias (\"AS name\")");
            return -1;
        }
        if (accept_op(p, "(")) {
            const char *names[64];
            int n = 0;
            for (;;) {
                stok_t *c = peek(p);
                if (c->kind != K_WORD && c->kind != K_QWORD) {
                    fail(p, c->off, "expected a column name but found %s", desc(c, b, sizeof b));
                    return -1;
                }
                if (n == 64) {
                    fail(p, c->off, "too many column names");
                    return -1;
                }
                names[n++] = c->text;
                p->pos++;
                if (!accept_op(p, ",")) break;
            }
            expect_op(p, ")");
            f->colnames = ra_alloc(p->a, sizeof(char *) * (size_t)(n + 1));
            memcpy(f->colnames, names, sizeof(char *) * (size_t)n);
            f->ncolnames = n;
        }
    } else if (is_name(t)) {
        p->pos++;
        const char *schema = NULL, *name = t->text;
        if (is_op(peek(p), ".")) {
            p->pos++;
            stok_t *t2 = peek(p);
            if (t2->kind != K_WORD && t2->kind != K_QWORD) {
                fail(p, t2->off, "expected a table name but found %s", desc(t2, b, sizeof b));
                return -1;
            }
            p->pos++;
            schema = name;
            name = t2->text;
            t = t2;
        }
        if (is_op(peek(p), "(")) {
            p->pos++;
            f->kind = SF_CALL;
            sx_t *c = mk(p, SX_CALL, f->off);
            c->qual = schema;
            c->name = name;
            c->args = p_list(p, ")", &c->nargs);
            if (p->failed) return -1;
            f->call = fin(p, c);
        } else {
            f->kind = SF_TABLE;
            f->schema = schema;
            f->name = name;
            /* table patterns: todos% */
            if (is_op(peek(p), "%") && peek(p)->off == t->off + t->len) {
                p->pos++;
                f->name = ra_printf(p->a, "%s%%", name);
            }
        }
        f->alias = p_alias(p);
        if (p->failed) return -1;
    } else {
        fail(p, t->off, "expected a table name but found %s", desc(t, b, sizeof b));
        return -1;
    }
    f->end = prev_end(p);
    return 0;
}

static int p_join_kind(sp_t *p, sfrom_t *f)
{
    stok_t *t = peek(p);
    f->join_off = t->off;
    if (accept_kw(p, "join")) {
        f->join = SJ_INNER;
        f->join_name = "INNER JOIN";
        return 1;
    }
    if (is_kw(t, "inner") && is_kw(peekn(p, 1), "join")) {
        p->pos += 2;
        f->join = SJ_INNER;
        f->join_name = "INNER JOIN";
        return 1;
    }
    static const char *const kinds[][2] = {{"left", "LEFT JOIN"},       {"right", "RIGHT JOIN"},
                                           {"full", "FULL JOIN"},       {"cross", "CROSS JOIN"},
                                           {"natural", "NATURAL JOIN"}, {NULL, NULL}};
    for (int i = 0; kinds[i][0]; i++)
        if (is_kw(t, kinds[i][0])) {
            p->pos++;
            accept_kw(p, "outer");
            accept_kw(p, "inner");
            if (!accept_kw(p, "join")) {
                char b[64];
                fail(p, peek(p)->off, "expected \"JOIN\" but found %s", desc(peek(p), b, sizeof b));
                return -1;
            }
            f->join = SJ_OTHER;
            f->join_name = kinds[i][1];
            return 1;
        }
    return 0;
}

static void p_skip_clause(sp_t *p)
{
    /* skip the expressions of an unsupported clause up to the next clause keyword */
    int depth = 0;
    while (peek(p)->kind != K_EOF) {
        stok_t *t = peek(p);
        if (is_op(t, "(")) depth++;
        if (is_op(t, ")")) {
            if (depth == 0) return;
            depth--;
        }
        if (depth == 0 &&
            (is_kw(t, "group") || is_kw(t, "having") || is_kw(t, "order") || is_kw(t, "limit") ||
             is_kw(t, "offset") || is_kw(t, "for") || is_kw(t, "fetch") || is_op(t, ";")))
            return;
        p->pos++;
    }
}

static ssel_t *p_select(sp_t *p)
{
    char b[64];
    ssel_t *s = ra_alloc(p->a, sizeof *s);
    s->src = p->src;
    s->off = peek(p)->off;
    s->distinct_off = s->group_off = s->having_off = s->order_off = s->limit_off = s->offset_off =
        s->for_off = -1;
    if (!accept_kw(p, "select")) {
        fail(p, peek(p)->off, "expected \"SELECT\" but found %s", desc(peek(p), b, sizeof b));
        return NULL;
    }
    if (is_kw(peek(p), "distinct")) {
        s->distinct_off = peek(p)->off;
        p->pos++;
        if (is_kw(peek(p), "on")) {
            p->pos++;
            int n;
            if (!accept_op(p, "(") || !p_list(p, ")", &n)) {
                fail(p, peek(p)->off, "expected \"(\" after \"DISTINCT ON\"");
                return NULL;
            }
        }
    } else {
        accept_kw(p, "all");
    }
    scol_t cols[256];
    int n = 0;
    if (!is_kw(peek(p), "from") && !is_kw(peek(p), "where") && peek(p)->kind != K_EOF &&
        !is_op(peek(p), ")")) {
        for (;;) {
            scol_t c = {0};
            c.off = peek(p)->off;
            if (is_op(peek(p), "*")) {
                c.expr = mk(p, SX_REF, peek(p)->off);
                c.expr->name = "*";
                p->pos++;
                fin(p, c.expr);
            } else {
                c.expr = p_expr(p);
                if (!c.expr) return NULL;
                c.alias = p_alias(p);
                if (p->failed) return NULL;
            }
            c.end = prev_end(p);
            if (n == 256) {
                fail(p, c.off, "too many columns");
                return NULL;
            }
            cols[n++] = c;
            if (!accept_op(p, ",")) break;
        }
    }
    s->cols = ra_alloc(p->a, sizeof(scol_t) * (size_t)(n + 1));
    memcpy(s->cols, cols, sizeof(scol_t) * (size_t)n);
    s->ncols = n;
    if (accept_kw(p, "from")) {
        sfrom_t items[64];
        int nf = 0;
        for (;;) {
            if (nf == 64) {
                fail(p, peek(p)->off, "too many tables");
                return NULL;
            }
            sfrom_t *f = &items[nf];
            memset(f, 0, sizeof *f);
            if (p_from_item(p, f) < 0) return NULL;
            nf++;
            for (;;) {
                sfrom_t j;
                memset(&j, 0, sizeof j);
                int k = p_join_kind(p, &j);
                if (k < 0) return NULL;
                if (k == 0) break;
                int jo = j.join, joff = j.join_off;
                const char *jname = j.join_name;
                if (nf == 64) {
                    fail(p, peek(p)->off, "too many tables");
                    return NULL;
                }
                f = &items[nf];
                memset(f, 0, sizeof *f);
                if (p_from_item(p, f) < 0) return NULL;
                f->join = jo;
                f->join_off = joff;
                f->join_name = jname;
                if (accept_kw(p, "on")) {
                    f->on = p_expr(p);
                    if (!f->on) return NULL;
                } else if (is_kw(peek(p), "using")) {
                    f->using_off = peek(p)->off;
                    p->pos++;
                    int nu;
                    if (!accept_op(p, "(") || !p_list(p, ")", &nu)) {
                        fail(p, peek(p)->off, "expected a column list after \"USING\"");
                        return NULL;
                    }
                } else if (jo == SJ_INNER) {
                    fail(p, peek(p)->off, "expected \"ON\" after the joined table but found %s",
                         desc(peek(p), b, sizeof b));
                    return NULL;
                }
                nf++;
            }
            if (!accept_op(p, ",")) break;
        }
        s->from = ra_alloc(p->a, sizeof(sfrom_t) * (size_t)(nf + 1));
        memcpy(s->from, items, sizeof(sfrom_t) * (size_t)nf);
        s->nfrom = nf;
    }
    if (accept_kw(p, "where")) {
        s->where = p_expr(p);
        if (!s->where) return NULL;
    }
    for (;;) {
        stok_t *t = peek(p);
        if (is_kw(t, "group") && is_kw(peekn(p, 1), "by")) {
            s->group_off = t->off;
            p->pos += 2;
        } else if (is_kw(t, "having")) {
            s->having_off = t->off;
            p->pos++;
        } else if (is_kw(t, "order") && is_kw(peekn(p, 1), "by")) {
            s->order_off = t->off;
            p->pos += 2;
        } else if (is_kw(t, "limit")) {
            s->limit_off = t->off;
            p->pos++;
        } else if (is_kw(t, "offset")) {
            s->offset_off = t->off;
            p->pos++;
        } else if (is_kw(t, "fetch")) {
            s->limit_off = t->off;
            p->pos++;
        } else if (is_kw(t, "for")) {
            s->for_off = t->off;
            p->pos++;
        } else {
            break;
        }
        p_skip_clause(p);
    }
    if (is_kw(peek(p), "union") || is_kw(peek(p), "intersect") || is_kw(peek(p), "except")) {
        fail(p, peek(p)->off, "\"%s\" is not supported; write one query per entry of \"queries\"",
             peek(p)->text);
        return NULL;
    }
    s->end = prev_end(p);
    return p->failed ? NULL : s;
}

ssel_t *sparse_select(rarena_t *arena, const ssrc_t *src, int *err_off, char *err, size_t errlen)
{
    sp_t p = {0};
    p.a = arena;
    p.src = src;
    p.s = src->text;
    ssel_t *s = NULL;
    if (lex(&p) == 0) {
        if (is_kw(peek(&p), "with")) {
            fail(&p, peek(&p)->off,
                 "\"WITH\" is not supported inside a query; define the common table expression "
                 "under \"with:\" of the stream or of the file");
        } else {
            s = p_select(&p);
            if (s) {
                accept_op(&p, ";");
                if (peek(&p)->kind != K_EOF) {
                    char b[64];
                    fail(&p, peek(&p)->off, "syntax error at %s (one statement per query)",
                         desc(peek(&p), b, sizeof b));
                }
            }
        }
    }
    free(p.toks);
    if (p.failed) {
        *err_off = p.err_off;
        snprintf(err, errlen, "%s", p.err);
        return NULL;
    }
    return s;
}
