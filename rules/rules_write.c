/* rules_write.c -- write rules and constraints: compile Postgres SQL fragments for write-back
 *
 * `write_rules:` says per table which operations and columns a client may write and two
 * conditions (`check` over the new row, `check_old` over the stored row); `constraints:` name
 * queries whose rows mean "this write violates something". These are Postgres SQL that the
 * gateway runs inside the write transaction, so they are not parsed in full: a tokenizer that
 * respects string literals (standard, E'' and dollar-quoted), quoted identifiers and comments
 * finds the references to the outside world -- new.<col>, old.<col>, request.user_id(),
 * request.jwt(), request.parameters() -- checks them, and rewrites them into the row aliases
 * "new"/"old" and positional parameters with an ordered list of bind kinds (rules.h). Client
 * text never becomes SQL: it only ever travels as bound parameter values.
 */
#include "rules_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

static int ident_start(int c)
{
    return isalpha(c) || c == '_' || c >= 0x80;
}

static int ident_char(int c)
{
    return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

static int bind_of(rules_bind_kind_t kind, rules_bind_kind_t *kinds, int *nkinds)
{
    for (int i = 0; i < *nkinds; i++)
        if (kinds[i] == kind) return i + 1;
    kinds[(*nkinds)++] = kind;
    return *nkinds;
}

static void put_qident(rbuf_t *b, const char *s, size_t n)
{
    rb_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') rb_putc(b, '"');
        rb_putc(b, s[i]);
    }
    rb_putc(b, '"');
}

/* read an identifier (plain or quoted) at s[*i]; returns malloc'd name or NULL */
static char *read_ident(const char *s, size_t n, size_t *i)
{
    size_t j = *i;
    if (j < n && s[j] == '"') {
        rbuf_t b = {0};
        for (j++; j < n; j++) {
            if (s[j] == '"') {
                if (j + 1 < n && s[j + 1] == '"') {
                    rb_putc(&b, '"');
                    j++;
                    continue;
                }
                *i = j + 1;
                char *r = rb_strdup(&b);
                rb_free(&b);
                return r;
            }
            rb_putc(&b, s[j]);
        }
        rb_free(&b);
        return NULL;
    }
    if (j < n && ident_start((unsigned char)s[j])) {
        size_t k = j;
        while (k < n && ident_char((unsigned char)s[k]))
            k++;
        char *r = rx_strndup(s + j, k - j);
        for (char *p = r; *p; p++)
            *p = (char)tolower((unsigned char)*p); /* unquoted names fold to lower case */
        *i = k;
        return r;
    }
    return NULL;
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && isspace((unsigned char)s[i]))
        i++;
    return i;
}

char *rwrite_rewrite(const char *sql, const char *const *cols, size_t ncols, int allow_new,
                     int allow_old, rules_bind_kind_t *kinds, int *nkinds, int *used_new,
                     int *used_old, int *err_off, char *err, size_t errlen)
{
    size_t n = strlen(sql), i = 0, run = 0;
    rbuf_t out = {0};
    char prev = 0; /* last significant character outside literals */
#define FAIL(off, ...)                                                                             \
    do {                                                                                           \
        *err_off = (int)(off);                                                                     \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        rb_free(&out);                                                                             \
        return NULL;                                                                               \
    } while (0)
    while (i < n) {
        unsigned char c = (unsigned char)sql[i];
        if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
            /* comments are dropped so the fragment can be wrapped on one line */
            rb_put(&out, sql + run, i - run);
            rb_putc(&out, ' ');
            while (i < n && sql[i] != '\n')
                i++;
            run = i;
            continue;
        }
        if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
            size_t start = i;
            int depth = 0;
            while (i < n) {
                if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
                    i += 2;
                    if (--depth == 0) break;
                } else
                    i++;
            }
            if (depth) FAIL(start, "unterminated comment");
            rb_put(&out, sql + run, start - run);
            rb_putc(&out, ' ');
            run = i;
            continue;
        }
        if (c == '\'') {
            int esc = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') &&
                      (i < 2 || !ident_char((unsigned char)sql[i - 2]));
            size_t start = i;
            for (i++;; i++) {
                if (i >= n) FAIL(start, "unterminated string literal");
                if (esc && sql[i] == '\\') {
                    i++;
                    continue;
                }
                if (sql[i] == '\'') {
                    if (i + 1 < n && sql[i + 1] == '\'') {
                        i++;
                        continue;
                    }
                    break;
                }
            }
            i++;
            prev = '\'';
            continue;
        }
        if (c == '"') {
            size_t start = i;
            char *id = read_ident(sql, n, &i);
            if (!id) FAIL(start, "unterminated quoted identifier");
            free(id);
            prev = 'a';
            continue;
        }
        if (c == '$') {
            size_t start = i;
            if (i + 1 < n && isdigit((unsigned char)sql[i + 1]))
                FAIL(start, "positional parameters (\"$1\") are not allowed; use new.<column>, "
                            "old.<column> or request.user_id(), request.jwt(), "
                            "request.parameters()");
            size_t j = i + 1;
            while (j < n && ident_char((unsigned char)sql[j]) && sql[j] != '$')
                j++;
            if (j < n && sql[j] == '$') {
                size_t taglen = j - i + 1;
                const char *tag = sql + i;
                size_t k = j + 1;
                for (;; k++) {
                    if (k + taglen > n) FAIL(start, "unterminated dollar-quoted string");
                    if (memcmp(sql + k, tag, taglen) == 0) break;
                }
                i = k + taglen;
                prev = '\'';
                continue;
            }
            i++;
            prev = '$';
            continue;
        }
        if (c == ';') FAIL(i, "\";\" is not allowed: write one expression or query");
        if (c == '?') FAIL(i, "\"?\" parameters are not allowed");
        if (ident_start(c) && !(i > 0 && ident_char((unsigned char)sql[i - 1]))) {
            size_t start = i;
            size_t k = i;
            while (k < n && ident_char((unsigned char)sql[k]))
                k++;
            size_t wl = k - i;
            int is_new = wl == 3 && strncasecmp(sql + i, "new", 3) == 0;
            int is_old = wl == 3 && strncasecmp(sql + i, "old", 3) == 0;
            int is_req = wl == 7 && strncasecmp(sql + i, "request", 7) == 0;
            size_t dot = skip_ws(sql, n, k);
            if ((is_new || is_old || is_req) && prev != '.' && dot < n && sql[dot] == '.') {
                size_t j = skip_ws(sql, n, dot + 1);
                size_t name_off = j;
                char *name = read_ident(sql, n, &j);
                if (!name) FAIL(name_off, "expected a name after \"%.*s.\"", (int)wl, sql + i);
                if (is_req) {
                    size_t p = skip_ws(sql, n, j);
                    int call = p < n && sql[p] == '(';
                    size_t q = call ? skip_ws(sql, n, p + 1) : p;
                    rules_bind_kind_t kind = 0;
                    const char *cast = NULL;
                    if (strcmp(name, "user_id") == 0) {
                        kind = RULES_BIND_USER_ID;
                        cast = "text";
                    } else if (strcmp(name, "jwt") == 0) {
                        kind = RULES_BIND_JWT_JSONB;
                        cast = "jsonb";
                    } else if (strcmp(name, "parameters") == 0) {
                        kind = RULES_BIND_PARAMS_JSONB;
                        cast = "jsonb";
                    }
                    if (!kind || !call || q >= n || sql[q] != ')') {
                        char tmp[128];
                        snprintf(tmp, sizeof tmp, "%s", name);
                        free(name);
                        FAIL(start,
                             "unknown request function \"request.%s\" (use request.user_id(), "
                             "request.jwt() or request.parameters())",
                             tmp);
                    }
                    free(name);
                    rb_put(&out, sql + run, start - run);
                    rb_printf(&out, "($%d::%s)", bind_of(kind, kinds, nkinds), cast);
                    i = q + 1;
                    run = i;
                    prev = ')';
                    continue;
                }
                if ((is_new && !allow_new) || (is_old && !allow_old)) {
                    free(name);
                    FAIL(start, "\"%s\" is not available here%s", is_new ? "new" : "old",
                         is_new ? " (\"check_old\" sees only the stored row, \"old\")"
                                : " (\"check\" and constraints see only the new row, \"new\")");
                }
                int found = 0;
                for (size_t x = 0; x < ncols; x++)
                    if (strcmp(cols[x], name) == 0) found = 1;
                if (!found) {
                    char tmp[128];
                    snprintf(tmp, sizeof tmp, "%s", name);
                    free(name);
                    FAIL(name_off, "column \"%s\" is not listed in \"columns\"", tmp);
                }
                rb_put(&out, sql + run, start - run);
                rb_puts(&out, is_new ? "\"new\"." : "\"old\".");
                put_qident(&out, name, strlen(name));
                free(name);
                if (is_new)
                    *used_new = 1;
                else
                    *used_old = 1;
                i = j;
                run = i;
                prev = 'a';
                continue;
            }
            i = k;
            prev = 'a';
            continue;
        }
        if (!isspace(c)) prev = (char)c;
        i++;
    }
    rb_put(&out, sql + run, n - run);
    char *r = rb_strdup(&out);
    rb_free(&out);
    return r;
#undef FAIL
}

/* ---- YAML ----------------------------------------------------------------------------- */

typedef struct wc {
    rules_set_t *set;
    rules_diags_t *d;
    const char *text;
    size_t len;
    yaml_document_t *doc;
} wc_t;

static yaml_node_t *wnode(wc_t *w, int id)
{
    return yaml_document_get_node(w->doc, id);
}

static const char *ys(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static void werr(wc_t *w, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void werr(wc_t *w, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rdiag_add(w->d, 0, n ? (int)n->start_mark.line + 1 : 0, n ? (int)n->start_mark.column + 1 : 0,
              "%s", buf);
}

static void split_table(rules_set_t *set, const char *name, const char **schema, const char **table)
{
    const char *dot = strchr(name, '.');
    if (dot) {
        *schema = rset_own(set, rx_strndup(name, (size_t)(dot - name)));
        *table = rset_own(set, rx_strdup(dot + 1));
    } else {
        *schema = "public";
        *table = rset_own(set, rx_strdup(name));
    }
}

static void qualified(rbuf_t *b, const char *schema, const char *table)
{
    put_qident(b, schema, strlen(schema));
    rb_putc(b, '.');
    put_qident(b, table, strlen(table));
}

/* The fragment of a check (kind 0) or check_old (kind 1) as a bare expression with the fixed
 * parameters of rules_write_rule_t.check_expr; NULL when it does not compile (compile_stmt
 * reports why). Owned by the set. */
static const char *compile_expr(wc_t *w, const char *sql, const char *const *cols, size_t ncols,
                                int kind)
{
    /* $1 and $2 are the caller's: two kinds no reference asks for hold their places */
    rules_bind_kind_t kinds[8] = {(rules_bind_kind_t)100, (rules_bind_kind_t)101,
                                  RULES_BIND_USER_ID, RULES_BIND_JWT_JSONB,
                                  RULES_BIND_PARAMS_JSONB};
    int nk = 5, used_new = 0, used_old = 0, off = 0;
    char err[512];
    char *body = rwrite_rewrite(sql, cols, ncols, kind != 1, kind == 1, kinds, &nk, &used_new,
                                &used_old, &off, err, sizeof err);
    if (!body || nk != 5) {
        free(body);
        return NULL;
    }
    return rset_own(w->set, body);
}

/* Compile one fragment into stmt. kind 0: check (new), 1: check_old (old), 2: constraint. */
static int compile_stmt(wc_t *w, yaml_node_t *node, const char *schema, const char *table,
                        const char *const *cols, size_t ncols, int kind, rules_pg_stmt_t *stmt)
{
    const char *sql = ys(node);
    if (!sql) {
        werr(w, node, "expected SQL text");
        return -1;
    }
    rules_bind_kind_t *kinds = rset_own(w->set, rx_calloc(8, sizeof(rules_bind_kind_t)));
    int nk = 0, used_new = 0, used_old = 0, off = 0;
    char err[512];
    char *body = rwrite_rewrite(sql, cols, ncols, kind != 1, kind == 1, kinds, &nk, &used_new,
                                &used_old, &off, err, sizeof err);
    rposmap_t pm = {w->text, w->len, node->start_mark.index, node->data.scalar.style, sql};
    if (!body) {
        int line, col;
        rpos_map(&pm, off, &line, &col);
        rdiag_add(w->d, 0, line, col, "%s", err);
        return -1;
    }
    rbuf_t b = {0};
    if (kind == 2)
        rb_printf(&b, "SELECT EXISTS (%s)", body);
    else
        rb_printf(&b, "SELECT COALESCE((%s)::boolean, false)", body);
    free(body);
    if (used_new || used_old) {
        int p = bind_of(used_new ? RULES_BIND_NEW_ROW_JSONB : RULES_BIND_OLD_ROW_JSONB, kinds, &nk);
        rb_puts(&b, " FROM jsonb_populate_record(NULL::");
        qualified(&b, schema, table);
        rb_printf(&b, ", $%d::jsonb) AS \"%s\"", p, used_new ? "new" : "old");
    }
    stmt->sql = rset_own(w->set, rb_strdup(&b));
    rb_free(&b);
    stmt->binds = kinds;
    stmt->nbinds = nk;
    rpos_map(&pm, 0, &stmt->line, &stmt->col);
    return 0;
}

void rwrite_compile_rules(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                          yaml_document_t *doc, yaml_node_t *m);

static const char *const MERGE_NAMES[RULES_MERGE_N] = {
    "client_wins", "server_wins_if_changed", "lww", "add", "max", "min"};

const char *rules_merge_name(rules_merge_t m)
{
    return (unsigned)m < RULES_MERGE_N ? MERGE_NAMES[m] : "?";
}

static int merge_of(const char *s, rules_merge_t *out)
{
    for (int i = 0; s && i < RULES_MERGE_N; i++)
        if (strcmp(s, MERGE_NAMES[i]) == 0) {
            *out = (rules_merge_t)i;
            return 0;
        }
    return -1;
}

static int column_index(const rules_write_rule_t *r, const char *s)
{
    for (size_t x = 0; s && x < r->ncolumns; x++)
        if (strcmp(r->columns[x], s) == 0) return (int)x;
    return -1;
}

/* `merge: {col: strategy, default: strategy}` and `lww_timestamp: {metadata|column: name}` of
 * write rule r (its columns known). 0, or -1 with errors reported. */
static int compile_merge(wc_t *w, rules_write_rule_t *r, yaml_node_t *merge, yaml_node_t *ts)
{
    int bad = 0;
    if (ts) {
        yaml_node_pair_t *q = ts->type == YAML_MAPPING_NODE ? ts->data.mapping.pairs.start : NULL;
        const char *key = q ? ys(wnode(w, q->key)) : NULL, *val = q ? ys(wnode(w, q->value)) : NULL;
        if (!q || ts->data.mapping.pairs.top - q != 1 || !key || !val || !*val ||
            (strcmp(key, "metadata") != 0 && strcmp(key, "column") != 0)) {
            werr(w, ts,
                 "\"lww_timestamp\" must be {metadata: FIELD} (a field of the op's metadata) or "
                 "{column: COLUMN} (a column the op sends)");
            return -1;
        }
        r->ts_source = strcmp(key, "metadata") == 0 ? RULES_TS_METADATA : RULES_TS_COLUMN;
        if (r->ts_source == RULES_TS_COLUMN && column_index(r, val) < 0) {
            werr(w, wnode(w, q->value),
                 "\"lww_timestamp\" column \"%s\" is not listed in \"columns\"", val);
            return -1;
        }
        r->ts_name = rset_own(w->set, rx_strdup(val));
    }
    if (!merge) return 0;
    if (merge->type != YAML_MAPPING_NODE) {
        werr(w, merge, "\"merge\" must be a mapping of columns (or \"default\") to strategies");
        return -1;
    }
    rules_merge_t *m = rset_own(w->set, rx_calloc(r->ncolumns + 1, sizeof(rules_merge_t)));
    for (int pass = 0; pass < 2; pass++) { /* default first, so columns override it */
        for (yaml_node_pair_t *q = merge->data.mapping.pairs.start;
             q < merge->data.mapping.pairs.top; q++) {
            yaml_node_t *kk = wnode(w, q->key), *vv = wnode(w, q->value);
            const char *col = ys(kk), *strat = ys(vv);
            int is_default = col && strcmp(col, "default") == 0;
            if (is_default != (pass == 0)) continue;
            rules_merge_t how;
            if (merge_of(strat, &how) != 0) {
                werr(w, vv,
                     "unknown merge strategy \"%s\" (expected client_wins, "
                     "server_wins_if_changed, lww, add, max or min)",
                     strat ? strat : "?");
                bad = 1;
                continue;
            }
            if (is_default) {
                for (size_t x = 0; x < r->ncolumns; x++)
                    m[x] = how;
                continue;
            }
            int x = column_index(r, col);
            if (x < 0) {
                werr(w, kk, "merge column \"%s\" is not listed in \"columns\"", col ? col : "?");
                bad = 1;
                continue;
            }
            m[x] = how;
        }
    }
    int id = column_index(r, "id");
    if (id >= 0) m[id] = RULES_MERGE_CLIENT_WINS; /* the key is never merged */
    int any = 0;
    for (size_t x = 0; x < r->ncolumns; x++) {
        if (m[x] == RULES_MERGE_LWW) r->merge_lww = 1;
        if (m[x] != RULES_MERGE_CLIENT_WINS) any = 1;
    }
    if (!bad && r->merge_lww && r->ts_source == RULES_TS_NONE) {
        werr(w, merge,
             "merge strategy \"lww\" needs \"lww_timestamp\" ({metadata: FIELD} or "
             "{column: COLUMN}): where an op's timestamp comes from");
        bad = 1;
    }
    if (!bad && r->lww_column && any) {
        werr(w, merge, "\"merge\" and \"lww_column\" cannot be combined; use \"lww\" per column");
        bad = 1;
    }
    if (bad) return -1;
    r->merge = any ? m : NULL;
    return 0;
}

void rwrite_compile_constraints(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                                yaml_document_t *doc, yaml_node_t *m);

static void table_use_write(rules_set_t *set, const char *schema, const char *name)
{
    for (size_t i = 0; i < set->ntables; i++)
        if (strcmp(set->tables[i].schema, schema) == 0 && strcmp(set->tables[i].name, name) == 0) {
            set->tables[i].uses |= RULES_USE_WRITE;
            return;
        }
    set->tables = rx_realloc(set->tables, sizeof(rules_table_t) * (set->ntables + 1));
    set->tables[set->ntables++] = (rules_table_t){schema, name, RULES_USE_WRITE};
}

void rwrite_compile_rules(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                          yaml_document_t *doc, yaml_node_t *m)
{
    wc_t w = {set, d, text, len, doc};
    if (m->type != YAML_MAPPING_NODE) {
        werr(&w, m, "\"write_rules\" must be a mapping of table names to rules");
        return;
    }
    size_t cap = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
    set->writes = rx_calloc(cap + 1, sizeof(rules_write_rule_t));
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = wnode(&w, p->key), *v = wnode(&w, p->value);
        const char *name = ys(k);
        if (!name || !*name) {
            werr(&w, k, "table names must be plain strings");
            continue;
        }
        rules_write_rule_t *r = &set->writes[set->nwrites];
        memset(r, 0, sizeof *r);
        split_table(set, name, &r->schema, &r->table);
        int dup = 0;
        for (size_t i = 0; i < set->nwrites; i++)
            if (strcmp(set->writes[i].schema, r->schema) == 0 &&
                strcmp(set->writes[i].table, r->table) == 0)
                dup = 1;
        if (dup) {
            werr(&w, k, "duplicate write rule for table \"%s\"", name);
            continue;
        }
        if (!v || v->type != YAML_MAPPING_NODE) {
            werr(&w, v, "write rule \"%s\" must be a mapping", name);
            continue;
        }
        yaml_node_t *ops = NULL, *cols = NULL, *check = NULL, *check_old = NULL, *lww = NULL;
        yaml_node_t *merge = NULL, *lww_ts = NULL, *unknown = NULL;
        int bad = 0;
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top;
             q++) {
            yaml_node_t *kk = wnode(&w, q->key), *vv = wnode(&w, q->value);
            const char *key = ys(kk);
            if (!key) {
                werr(&w, kk, "keys must be plain names");
                bad = 1;
            } else if (strcmp(key, "operations") == 0)
                ops = vv;
            else if (strcmp(key, "columns") == 0)
                cols = vv;
            else if (strcmp(key, "check") == 0)
                check = vv;
            else if (strcmp(key, "check_old") == 0)
                check_old = vv;
            else if (strcmp(key, "lww_column") == 0)
                lww = vv;
            else if (strcmp(key, "merge") == 0)
                merge = vv;
            else if (strcmp(key, "lww_timestamp") == 0)
                lww_ts = vv;
            else if (strcmp(key, "unknown_columns") == 0)
                unknown = vv;
            else {
                werr(&w, kk,
                     "unknown key \"%s\" in a write rule (expected operations, columns, check, "
                     "check_old, lww_column, merge, lww_timestamp, unknown_columns)",
                     key);
                bad = 1;
            }
        }
        if (!ops) {
            werr(&w, k, "write rule \"%s\" needs \"operations\"", name);
            bad = 1;
        } else if (ops->type != YAML_SEQUENCE_NODE) {
            werr(&w, ops, "\"operations\" must be a list of insert, update, delete");
            bad = 1;
        } else {
            for (yaml_node_item_t *it = ops->data.sequence.items.start;
                 it < ops->data.sequence.items.top; it++) {
                yaml_node_t *o = wnode(&w, *it);
                const char *s = ys(o);
                int bit = !s                         ? 0
                          : strcmp(s, "insert") == 0 ? RULES_OP_INSERT
                          : strcmp(s, "update") == 0 ? RULES_OP_UPDATE
                          : strcmp(s, "delete") == 0 ? RULES_OP_DELETE
                                                     : 0;
                if (!bit) {
                    werr(&w, o, "unknown operation \"%s\" (expected insert, update or delete)",
                         s ? s : "?");
                    bad = 1;
                }
                r->operations |= bit;
            }
        }
        /* columns: always include id */
        const char **cl = NULL;
        size_t ncl = 0;
        if (!cols) {
            werr(&w, k, "write rule \"%s\" needs \"columns\"", name);
            bad = 1;
        } else if (cols->type != YAML_SEQUENCE_NODE) {
            werr(&w, cols, "\"columns\" must be a list of column names");
            bad = 1;
        } else {
            size_t nitems =
                (size_t)(cols->data.sequence.items.top - cols->data.sequence.items.start);
            cl = rset_own(set, rx_calloc(nitems + 2, sizeof(char *)));
            int has_id = 0;
            for (yaml_node_item_t *it = cols->data.sequence.items.start;
                 it < cols->data.sequence.items.top; it++) {
                yaml_node_t *o = wnode(&w, *it);
                const char *s = ys(o);
                if (!s || !*s) {
                    werr(&w, o, "column names must be plain strings");
                    bad = 1;
                    continue;
                }
                int dupc = 0;
                for (size_t x = 0; x < ncl; x++)
                    if (strcmp(cl[x], s) == 0) dupc = 1;
                if (dupc) {
                    werr(&w, o, "duplicate column \"%s\"", s);
                    bad = 1;
                    continue;
                }
                if (strcmp(s, "id") == 0) has_id = 1;
                cl[ncl++] = rset_own(set, rx_strdup(s));
            }
            if (!has_id) cl[ncl++] = "id";
        }
        r->columns = cl;
        r->ncolumns = ncl;
        if (lww) {
            const char *s = ys(lww);
            int found = 0;
            for (size_t x = 0; s && x < ncl; x++)
                if (strcmp(cl[x], s) == 0) found = 1;
            if (!found) {
                werr(&w, lww, "\"lww_column\" \"%s\" is not listed in \"columns\"", s ? s : "?");
                bad = 1;
            } else
                r->lww_column = rset_own(set, rx_strdup(s));
        }
        if (cl && compile_merge(&w, r, merge, lww_ts) != 0) bad = 1;
        if (unknown) {
            const char *s = ys(unknown);
            if (s && strcmp(s, "reject") == 0)
                r->unknown_columns = RULES_UNKNOWN_REJECT;
            else if (s && strcmp(s, "ignore") == 0)
                r->unknown_columns = RULES_UNKNOWN_IGNORE;
            else {
                werr(&w, unknown, "\"unknown_columns\" must be \"reject\" or \"ignore\"");
                bad = 1;
            }
        }
        if (check && !(r->operations & (RULES_OP_INSERT | RULES_OP_UPDATE))) {
            werr(&w, check,
                 "\"check\" applies to insert and update, and \"operations\" allows "
                 "neither");
            bad = 1;
        } else if (check && cl &&
                   compile_stmt(&w, check, r->schema, r->table, cl, ncl, 0, &r->check) != 0)
            bad = 1;
        else if (check && cl)
            r->check_expr = compile_expr(&w, ys(check), cl, ncl, 0);
        if (check_old && !(r->operations & (RULES_OP_UPDATE | RULES_OP_DELETE))) {
            werr(&w, check_old,
                 "\"check_old\" applies to update and delete, and \"operations\" "
                 "allows neither");
            bad = 1;
        } else if (check_old && cl &&
                   compile_stmt(&w, check_old, r->schema, r->table, cl, ncl, 1, &r->check_old) != 0)
            bad = 1;
        else if (check_old && cl)
            r->check_old_expr = compile_expr(&w, ys(check_old), cl, ncl, 1);
        if (bad) continue;
        table_use_write(set, r->schema, r->table);
        set->nwrites++;
    }
}

void rwrite_compile_constraints(rules_set_t *set, rules_diags_t *d, const char *text, size_t len,
                                yaml_document_t *doc, yaml_node_t *m)
{
    wc_t w = {set, d, text, len, doc};
    if (m->type != YAML_MAPPING_NODE) {
        werr(&w, m, "\"constraints\" must be a mapping of names to constraints");
        return;
    }
    size_t cap = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
    set->constraints = rx_calloc(cap + 1, sizeof(rules_constraint_t));
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *k = wnode(&w, p->key), *v = wnode(&w, p->value);
        const char *name = ys(k);
        if (!name || !*name) {
            werr(&w, k, "constraint names must be plain strings");
            continue;
        }
        int dup = 0;
        for (size_t i = 0; i < set->nconstraints; i++)
            if (strcmp(set->constraints[i].name, name) == 0) dup = 1;
        if (dup) {
            werr(&w, k, "duplicate constraint \"%s\"", name);
            continue;
        }
        if (!v || v->type != YAML_MAPPING_NODE) {
            werr(&w, v, "constraint \"%s\" must be a mapping", name);
            continue;
        }
        yaml_node_t *tn = NULL, *qn = NULL, *mn = NULL, *en = NULL;
        int bad = 0;
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top;
             q++) {
            yaml_node_t *kk = wnode(&w, q->key), *vv = wnode(&w, q->value);
            const char *key = ys(kk);
            if (key && strcmp(key, "table") == 0)
                tn = vv;
            else if (key && strcmp(key, "query") == 0)
                qn = vv;
            else if (key && strcmp(key, "message") == 0)
                mn = vv;
            else if (key && strcmp(key, "expire_after") == 0)
                en = vv;
            else {
                werr(&w, kk,
                     "unknown key \"%s\" in a constraint (expected table, query, message, "
                     "expire_after)",
                     key ? key : "?");
                bad = 1;
            }
        }
        if (!tn || !ys(tn) || !qn || !mn || !ys(mn)) {
            werr(&w, k, "constraint \"%s\" needs \"table\", \"query\" and \"message\"", name);
            continue;
        }
        rules_constraint_t *c = &set->constraints[set->nconstraints];
        c->name = rset_own(set, rx_strdup(name));
        split_table(set, ys(tn), &c->schema, &c->table);
        c->message = rset_own(set, rx_strdup(ys(mn)));
        if (en) {
            const char *e = ys(en);
            char *end = NULL;
            long secs = e ? strtol(e, &end, 10) : 0;
            if (!e || !*e || *end != '\0' || secs <= 0 || secs > 10L * 366 * 86400) {
                werr(&w, en, "\"expire_after\" must be a number of seconds (1 to 316224000)");
                continue;
            }
            c->expire_after = secs;
        }
        const rules_write_rule_t *wr = rules_write_find(set, c->schema, c->table);
        if (!wr) {
            werr(&w, tn, "constraint \"%s\" is on table \"%s\", which has no write rules", name,
                 ys(tn));
            continue;
        }
        if (bad ||
            compile_stmt(&w, qn, c->schema, c->table, wr->columns, wr->ncolumns, 2, &c->stmt) != 0)
            continue;
        set->nconstraints++;
    }
}

size_t rules_write_count(const rules_set_t *set)
{
    return set->nwrites;
}

const rules_write_rule_t *rules_write_at(const rules_set_t *set, size_t i)
{
    return i < set->nwrites ? &set->writes[i] : NULL;
}

const rules_write_rule_t *rules_write_find(const rules_set_t *set, const char *schema,
                                           const char *table)
{
    if (!schema) schema = "public";
    for (size_t i = 0; i < set->nwrites; i++)
        if (strcmp(set->writes[i].schema, schema) == 0 && strcmp(set->writes[i].table, table) == 0)
            return &set->writes[i];
    return NULL;
}

size_t rules_constraint_count(const rules_set_t *set)
{
    return set->nconstraints;
}

const rules_constraint_t *rules_constraint_at(const rules_set_t *set, size_t i)
{
    return i < set->nconstraints ? &set->constraints[i] : NULL;
}
