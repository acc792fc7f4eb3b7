/* rules_stream_explain.c -- what a stream's bucket kinds are keyed by, as text
 *
 * `ferry rules check` and `ferry rules explain` show, for each bucket kind of a stream (one
 * querier of the compiled plan), where its parameter values come from: expressions over the
 * request (auth.*, subscription.*, connection.*) as written in the query, and parameter-index
 * lookups (the rows of a table the replicator indexes, keyed by values of the request or of an
 * earlier lookup). Expressions are quoted from the source text by their offsets; an expression
 * the compiler made up (no offsets) is shown as "(derived)".
 *
 * Called only by the CLI (never on a request path). Output is plain text, malloc'd.
 */
#include "rules_int.h"
#include "rules_stream.h"

#include <string.h>

/* the source text of e, whitespace runs squeezed to one space */
static void expr_text(rbuf_t *b, const sexpr_t *e)
{
    if (e == NULL) {
        rb_puts(b, "(derived)");
        return;
    }
    if (e->src == NULL || e->end <= e->off) {
        rb_puts(b, e->text ? e->text : "(derived)");
        return;
    }
    int space = 0;
    for (int i = e->off; i < e->end && e->src->text[i]; i++) {
        char c = e->src->text[i];
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
            space = 1;
            continue;
        }
        if (space) rb_putc(b, ' ');
        space = 0;
        rb_putc(b, c);
    }
}

static void value_text(rbuf_t *b, const sval_t *v)
{
    if (v->kind == SV_REQUEST) {
        expr_text(b, v->expr);
    } else if (v->kind == SV_LOOKUP) {
        const sstagelk_t *l = v->lookup;
        if (l->kind == SL_PARAMETER) {
            rb_printf(b, "lookup %s", l->lookup->query_id);
        } else {
            rb_printf(b, "each value of %s(", l->fn);
            for (int i = 0; i < l->nfn_inputs; i++) {
                if (i) rb_puts(b, ", ");
                expr_text(b, l->fn_inputs[i]);
            }
            rb_puts(b, ")");
        }
        if (l->kind == SL_PARAMETER ? l->lookup->nouts > 1 : l->nouts > 1)
            rb_printf(b, " column %d", v->result_index);
    } else {
        for (int i = 0; i < v->ninner; i++) {
            if (i) rb_puts(b, " when also ");
            value_text(b, v->inner[i]);
        }
    }
}

static void table_text(rbuf_t *b, const sproc_t *p)
{
    if (p->schema) rb_printf(b, "%s.", p->schema);
    rb_puts(b, p->table);
}

/* the row conditions of a data source or lookup: " where a and b" */
static void filters_text(rbuf_t *b, const sproc_t *p, int first)
{
    for (int i = 0; i < p->nfilters; i++) {
        rb_puts(b, first && i == 0 ? " where " : " and ");
        expr_text(b, p->filters[i]);
    }
}

/* "lookup 0: id from lists where owner_id = auth.user_id()" (parameter lookups only; a table
 * valued function over the request is shown where its values are used) */
static void lookup_text(rbuf_t *b, const sstagelk_t *l)
{
    const slookup_t *lk = l->lookup;
    rb_printf(b, "lookup %s: ", lk->query_id);
    for (int i = 0; i < lk->nouts; i++) {
        if (i) rb_puts(b, ", ");
        expr_text(b, lk->outs[i]);
    }
    rb_puts(b, " from ");
    table_text(b, &lk->p);
    rb_puts(b, " where ");
    for (int i = 0; i < lk->p.nparts && i < l->ninst; i++) {
        if (i) rb_puts(b, " and ");
        expr_text(b, lk->p.parts[i]);
        rb_puts(b, " = ");
        value_text(b, l->inst[i]);
    }
    filters_text(b, &lk->p, lk->p.nparts == 0);
}

char *rules_stream_describe(const rules_set_t *set, size_t i, size_t j)
{
    if (i >= rules_stream_count(set)) return NULL;
    const sstream_t *s = set->splan->streams[i];
    if (j >= (size_t)s->nq) return NULL;
    const squerier_t *q = s->q[j];
    rbuf_t b = {0};
    rb_printf(&b, "%s from query %d: ", q->bucket->name, q->query_index);
    const sbucket_t *bk = q->bucket;
    rb_puts(&b, "rows of ");
    for (int k = 0; k < bk->nsources; k++) {
        if (k) rb_puts(&b, ", ");
        table_text(&b, &bk->sources[k]->p);
        filters_text(&b, &bk->sources[k]->p, 1);
    }
    if (q->ninst == 0) {
        rb_puts(&b, ", one bucket for everyone");
    } else {
        rb_puts(&b, " by ");
        const sproc_t *p = &bk->sources[0]->p;
        for (int k = 0; k < q->ninst; k++) {
            if (k) rb_puts(&b, " and ");
            if (k < p->nparts) {
                expr_text(&b, p->parts[k]);
                rb_puts(&b, " = ");
            }
            value_text(&b, q->inst[k]);
        }
    }
    for (int k = 0; k < q->nreq_filters; k++) {
        rb_puts(&b, k == 0 ? "; if " : " and ");
        expr_text(&b, q->req_filters[k]);
    }
    for (int st = 0; st < q->nstages; st++)
        for (int k = 0; k < q->nstage[st]; k++) {
            if (q->stages[st][k]->kind != SL_PARAMETER) continue;
            rb_puts(&b, "; ");
            lookup_text(&b, q->stages[st][k]);
        }
    char *out = rb_strdup(&b);
    rb_free(&b);
    return out;
}
