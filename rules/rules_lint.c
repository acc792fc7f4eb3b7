/* rules_lint.c -- warnings about write rules that let a user write into other users' buckets
 *
 * A write rule lists the columns a client may write and a `check` over the new row. The mistake
 * people copy: a writable column decides which buckets a row lands in (a data query matches it
 * against a bucket parameter, `WHERE org_id = bucket.org_id`) or which buckets a user gets (a
 * table-lookup parameter query reads it, `SELECT org_id FROM members WHERE user_id = ...`), and
 * the check never looks at it. Then a user writes a row with another tenant's org_id and it is
 * synced to that tenant (or moves a row out of its own tenant). rules_lint() finds each such
 * column and warns, pointing at the column in the write rule's "columns" list.
 *
 * What "looks at it" means here is deliberately simple: the table's `check` mentions
 * new.<column>. A check can mention a column and still not tie it to the user (the warning is a
 * prompt to look, not a proof either way), and a column the check ties through another column is
 * still reported; the message says what to add. Only write rules that allow insert or update are
 * looked at (a delete writes no column).
 *
 * Sync Streams (`streams:`, rules_stream.h) are looked at the same way through their compiled
 * plan: a column that a stream's data source partitions on (its value is matched against
 * auth.user_id(), auth/subscription/connection parameters or the result of a lookup) decides
 * the row's bucket, and a column that a lookup reads (the table of a subquery, JOIN or CTE that
 * yields the bucket parameters, its keys, outputs and filters) decides which buckets a user
 * gets.
 *
 * Called by `ferry rules check` and when ferry loads a rules file; like the rest of librules it
 * never logs, it only appends diagnostics.
 */
#include "rules_int.h"
#include "rules_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* Whether the query on schema.table (a prefix pattern when prefix) reads rows of r's table. */
static int same_table(const rules_write_rule_t *r, const char *schema, const char *table,
                      int prefix)
{
    if (strcmp(r->schema, schema != NULL ? schema : "public") != 0) return 0;
    return prefix ? strncmp(r->table, table, strlen(table)) == 0 : strcmp(r->table, table) == 0;
}

/* A reference to a bucket parameter (bucket.<name>) before or after the compiler resolved it. */
static int is_bucket_ref(const rnode_t *n)
{
    return n != NULL && (n->kind == N_BUCKET ||
                         (n->kind == N_COL && n->qual != NULL && strcmp(n->qual, "bucket") == 0));
}

/* Whether n mentions row column col (unqualified, or qualified by the table or its alias). */
static int mentions_col(const rnode_t *n, const rselect_t *sel, const char *col)
{
    if (n == NULL) return 0;
    if (n->kind == N_COL && !is_bucket_ref(n) && strcmp(n->name, col) == 0 &&
        (n->qual == NULL || strcmp(n->qual, sel->table) == 0 ||
         (sel->alias != NULL && strcmp(n->qual, sel->alias) == 0)))
        return 1;
    if (mentions_col(n->a, sel, col) || mentions_col(n->b, sel, col)) return 1;
    for (int i = 0; i < n->nargs; i++)
        if (mentions_col(n->args[i], sel, col)) return 1;
    return 0;
}

/* Whether WHERE node n matches row column col against a bucket parameter ("=" or "IN"). */
static int matches_bucket(const rnode_t *n, const rselect_t *sel, const char *col)
{
    if (n == NULL) return 0;
    if (n->kind == N_BINARY && n->op != NULL && strcmp(n->op, "=") == 0) {
        if (is_bucket_ref(n->a) && mentions_col(n->b, sel, col)) return 1;
        if (is_bucket_ref(n->b) && mentions_col(n->a, sel, col)) return 1;
    }
    if (n->kind == N_IN && is_bucket_ref(n->a) && mentions_col(n->b, sel, col)) return 1;
    if (n->kind == N_BINARY && n->op != NULL &&
        (strcmp(n->op, "AND") == 0 || strcmp(n->op, "OR") == 0))
        return matches_bucket(n->a, sel, col) || matches_bucket(n->b, sel, col);
    return 0;
}

/* The first data query on r's table that matches col against a bucket parameter, or NULL. */
static const rdataq_t *bucket_query_of(const rules_set_t *set, const rules_write_rule_t *r,
                                       const char *col)
{
    for (int i = 0; i < set->ndqs; i++) {
        const rdataq_t *dq = set->dqs[i];
        if (!same_table(r, dq->r.schema, dq->r.table, dq->r.prefix)) continue;
        int off;
        char err[256];
        rsql_t *q = rsql_parse(dq->src, Q_DATA, &off, err, sizeof(err));
        if (q == NULL) continue; /* it compiled, so this does not happen */
        const rselect_t *sel = rsql_select(q);
        int hit = sel != NULL && matches_bucket(sel->where, sel, col);
        rsql_free(q);
        if (hit) return dq;
    }
    return NULL;
}

/* The first table-lookup parameter query that reads col of r's table, or NULL. */
static const rparamq_t *lookup_query_of(const rules_set_t *set, const rules_write_rule_t *r,
                                        const char *col)
{
    for (int i = 0; i < set->nlqs; i++) {
        const rparamq_t *pq = set->lqs[i];
        if (!same_table(r, pq->r.schema, pq->r.table, pq->r.prefix)) continue;
        for (int k = 0; k < pq->r.ncols; k++)
            if (strcmp(pq->r.cols[k], col) == 0) return pq;
    }
    return NULL;
}

/* ---- Sync Streams --------------------------------------------------------------------------- */

/* Whether a stream's row side on schema.table (NULL: default schema; table may end in '%')
 * reads rows of r's table. */
static int stream_same_table(const rules_write_rule_t *r, const sproc_t *p)
{
    size_t n = strlen(p->table);
    int prefix = n > 0 && p->table[n - 1] == '%';
    if (strcmp(r->schema, p->schema != NULL ? p->schema : "public") != 0) return 0;
    return prefix ? strncmp(r->table, p->table, n - 1) == 0 : strcmp(r->table, p->table) == 0;
}

/* Whether e reads column col of p's row, directly or through a json_each() over the row. */
static int sexpr_reads(const sexpr_t *e, const sproc_t *p, const char *col)
{
    if (e == NULL) return 0;
    if (e->k == E_DATA) {
        if (e->ref == NULL || e->ref->rs == NULL) return 0; /* request data */
        if (e->ref->rs == p->rs) return strcmp(e->ref->column, col) == 0;
        for (int i = 0; i < p->nfns; i++)
            if (p->fns[i]->rs == e->ref->rs)
                for (int k = 0; k < p->fns[i]->ninputs; k++)
                    if (sexpr_reads(p->fns[i]->inputs[k], p, col)) return 1;
        return 0;
    }
    for (int i = 0; i < e->na; i++)
        if (sexpr_reads(e->a[i], p, col)) return 1;
    return 0;
}

static int any_reads(sexpr_t *const *es, int n, const sproc_t *p, const char *col)
{
    for (int i = 0; i < n; i++)
        if (sexpr_reads(es[i], p, col)) return 1;
    return 0;
}

/* Whether data source d on r's table partitions its rows (picks their bucket) by col. */
static int data_decides(const sdata_t *d, const rules_write_rule_t *r, const char *col)
{
    return stream_same_table(r, &d->p) && any_reads(d->p.parts, d->p.nparts, &d->p, col);
}

/* Whether lookup l reads col of r's table (as a key, an output or in a filter). */
static int lookup_reads(const slookup_t *l, const rules_write_rule_t *r, const char *col)
{
    const sproc_t *p = &l->p;
    return stream_same_table(r, p) &&
           (any_reads(p->parts, p->nparts, p, col) || any_reads(l->outs, l->nouts, p, col) ||
            any_reads(p->filters, p->nfilters, p, col));
}

/* The first stream (file order) one of whose buckets holds a data source on r's table that
 * partitions by col, or NULL. */
static const sstream_t *stream_data_of(const rules_set_t *set, const rules_write_rule_t *r,
                                       const char *col)
{
    const splan_t *plan = set->splan;
    for (int i = 0; plan != NULL && i < plan->nstreams; i++) {
        const sstream_t *s = plan->streams[i];
        for (int q = 0; q < s->nq; q++) {
            const sbucket_t *b = s->q[q]->bucket;
            for (int k = 0; b != NULL && k < b->nsources; k++)
                if (data_decides(b->sources[k], r, col)) return s;
        }
    }
    return NULL;
}

/* The first stream (file order) that resolves its buckets through a lookup reading col of
 * r's table, or NULL. */
static const sstream_t *stream_lookup_of(const rules_set_t *set, const rules_write_rule_t *r,
                                         const char *col)
{
    const splan_t *plan = set->splan;
    for (int i = 0; plan != NULL && i < plan->nstreams; i++) {
        const sstream_t *s = plan->streams[i];
        for (int q = 0; q < s->nq; q++) {
            const squerier_t *sq = s->q[q];
            for (int st = 0; st < sq->nstages; st++)
                for (int k = 0; k < sq->nstage[st]; k++) {
                    const sstagelk_t *lk = sq->stages[st][k];
                    if (lk->kind == SL_PARAMETER && lk->lookup != NULL &&
                        lookup_reads(lk->lookup, r, col))
                        return s;
                }
        }
    }
    return NULL;
}

/* ---- the write rule's side ------------------------------------------------------------------ */

/* Whether compiled statement sql references "new"."col" (as rules_write.c writes it). */
static int stmt_mentions_new(const char *sql, const char *col)
{
    if (sql == NULL) return 0;
    rbuf_t b = {0};
    rb_puts(&b, "\"new\".\"");
    for (const char *p = col; *p; p++) {
        if (*p == '"') rb_putc(&b, '"');
        rb_putc(&b, *p);
    }
    rb_putc(&b, '"');
    int found = strstr(sql, b.p) != NULL;
    rb_free(&b);
    return found;
}

/* ---- positions: the column in the write rule's "columns" list ---------------------------- */

static const char *scalar(yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *m, const char *key)
{
    if (m == NULL || m->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const char *k = scalar(yaml_document_get_node(doc, p->key));
        if (k != NULL && strcmp(k, key) == 0) return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

/* Line and column (1-based) of column col in r's "columns" list; 0, 0 when not found. */
static void column_position(const rules_set_t *set, const rules_write_rule_t *r, const char *col,
                            int *line, int *column)
{
    *line = *column = 0;
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)set->text, strlen(set->text));
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_parser_delete(&parser);
        return;
    }
    yaml_node_t *writes = map_get(&doc, yaml_document_get_root_node(&doc), "write_rules");
    for (yaml_node_pair_t *p = writes != NULL && writes->type == YAML_MAPPING_NODE
                                   ? writes->data.mapping.pairs.start
                                   : NULL;
         p != NULL && p < writes->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        const char *name = scalar(k), *dot = name != NULL ? strchr(name, '.') : NULL;
        if (name == NULL) continue;
        int same = dot != NULL ? strncmp(name, r->schema, (size_t)(dot - name)) == 0 &&
                                     r->schema[dot - name] == '\0' && strcmp(dot + 1, r->table) == 0
                               : strcmp(r->schema, "public") == 0 && strcmp(name, r->table) == 0;
        if (!same) continue;
        *line = (int)k->start_mark.line + 1;
        *column = (int)k->start_mark.column + 1;
        yaml_node_t *cols = map_get(&doc, yaml_document_get_node(&doc, p->value), "columns");
        if (cols == NULL || cols->type != YAML_SEQUENCE_NODE) break;
        for (yaml_node_item_t *it = cols->data.sequence.items.start;
             it < cols->data.sequence.items.top; it++) {
            yaml_node_t *c = yaml_document_get_node(&doc, *it);
            if (scalar(c) != NULL && strcmp(scalar(c), col) == 0) {
                *line = (int)c->start_mark.line + 1;
                *column = (int)c->start_mark.column + 1;
            }
        }
        break;
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}

/* ---- the lint ----------------------------------------------------------------------------- */

size_t rules_lint(const rules_set_t *set, rules_diags_t *diags)
{
    size_t added = 0;
    for (size_t w = 0; w < set->nwrites; w++) {
        const rules_write_rule_t *r = &set->writes[w];
        if (!(r->operations & (RULES_OP_INSERT | RULES_OP_UPDATE))) continue;
        for (size_t c = 0; c < r->ncolumns; c++) {
            const char *col = r->columns[c];
            if (strcmp(col, "id") == 0 || stmt_mentions_new(r->check.sql, col)) continue;
            const rdataq_t *dq = bucket_query_of(set, r, col);
            const rparamq_t *pq = dq == NULL ? lookup_query_of(set, r, col) : NULL;
            const sstream_t *sd = dq == NULL && pq == NULL ? stream_data_of(set, r, col) : NULL;
            const sstream_t *sl =
                dq == NULL && pq == NULL && sd == NULL ? stream_lookup_of(set, r, col) : NULL;
            if (dq == NULL && pq == NULL && sd == NULL && sl == NULL) continue;
            char table[300];
            if (strcmp(r->schema, "public") == 0)
                snprintf(table, sizeof(table), "%s", r->table);
            else
                snprintf(table, sizeof(table), "%s.%s", r->schema, r->table);
            int line, column;
            column_position(set, r, col, &line, &column);
            if (dq != NULL || sd != NULL)
                rdiag_add(diags, 1, line, column,
                          "column \"%s\" of table \"%s\" is writable and decides the buckets of "
                          "%s \"%s\", but \"check\" does not mention new.%s: a user can write "
                          "rows into other users' buckets; constrain new.%s in \"check\" (and "
                          "old.%s in \"check_old\")",
                          col, table, dq != NULL ? "bucket definition" : "stream",
                          dq != NULL ? dq->def->name : sd->name, col, col, col);
            else
                rdiag_add(diags, 1, line, column,
                          "column \"%s\" of table \"%s\" is writable and feeds %s of %s "
                          "\"%s\", but \"check\" does not mention new.%s: a user can give "
                          "themselves other users' buckets; constrain new.%s in \"check\"",
                          col, table,
                          pq != NULL ? "a parameter query" : "a lookup (subquery or join)",
                          pq != NULL ? "bucket definition" : "stream",
                          pq != NULL ? pq->def->name : sl->name, col, col);
            added++;
        }
    }
    return added;
}
