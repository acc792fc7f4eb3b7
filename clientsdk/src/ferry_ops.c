/* ferry_ops.c -- ferry_ops(?): a batch of PUTs in memory as a table, stored with one statement
 *
 * ferry_ops(?) is an eponymous table-valued function over a batch of PUTs in memory (an ops_t
 * bound with sqlite3_bind_pointer, type "ferry_ops"): one row per op, in batch order, columns
 * subkey (its stored form; 'null' when absent), op_id, row_type, row_id, data, hash. Its values
 * point into the scanned line and the batch (SQLITE_STATIC), which outlive the statement's step.
 * Only statements may use it, not the schema (views, triggers).
 *
 * Registered on the sync connection by ferry__oplog_init; its one user is put_batch in
 * ferry_oplog.c (S_OP_INS_MANY: INSERT OR IGNORE INTO ferry_oplog ... SELECT ... FROM
 * ferry_ops(?2)), with up to PUT_BATCH ops. The table only reads the batch, and its xColumn runs
 * for every column of every PUT stored. ferry_rows (ferry_rows.c) shares its xDisconnect. */
#include "ferry_oplog.h"

#include <string.h>

typedef struct ops_cur {
    sqlite3_vtab_cursor base;
    const ops_t *ops;
    size_t i;
} ops_cur_t;

static int ops_connect(sqlite3 *c, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                       char **err)
{
    (void)aux, (void)argc, (void)argv, (void)err;
    int rc = sqlite3_declare_vtab(c, "CREATE TABLE x(subkey, op_id, row_type, row_id, data, "
                                     "hash, batch HIDDEN)");
    if (rc != SQLITE_OK) return rc;
    sqlite3_vtab_config(c, SQLITE_VTAB_DIRECTONLY);
    if (!(*out = sqlite3_malloc(sizeof **out))) return SQLITE_NOMEM;
    memset(*out, 0, sizeof **out);
    return SQLITE_OK;
}

int ferry__ops_disconnect(sqlite3_vtab *vt)
{
    sqlite3_free(vt);
    return SQLITE_OK;
}

/* Only "batch = ?" (the function's argument) is a usable plan. */
static int ops_best_index(sqlite3_vtab *vt, sqlite3_index_info *ix)
{
    (void)vt;
    for (int i = 0; i < ix->nConstraint; i++)
        if (ix->aConstraint[i].iColumn == 6 &&
            ix->aConstraint[i].op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!ix->aConstraint[i].usable) return SQLITE_CONSTRAINT;
            ix->aConstraintUsage[i].argvIndex = 1;
            ix->aConstraintUsage[i].omit = 1;
            ix->estimatedCost = 1;
            ix->estimatedRows = PUT_BATCH;
            return SQLITE_OK;
        }
    return SQLITE_CONSTRAINT;
}

static int ops_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    (void)vt;
    ops_cur_t *c = sqlite3_malloc(sizeof *c);
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int ops_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

static int ops_filter(sqlite3_vtab_cursor *cur, int idx, const char *idxs, int argc,
                      sqlite3_value **argv)
{
    (void)idx, (void)idxs;
    ops_cur_t *c = (ops_cur_t *)cur;
    c->ops = argc == 1 ? sqlite3_value_pointer(argv[0], "ferry_ops") : NULL;
    c->i = 0;
    return SQLITE_OK;
}

static int ops_next(sqlite3_vtab_cursor *cur)
{
    ((ops_cur_t *)cur)->i++;
    return SQLITE_OK;
}

static int ops_eof(sqlite3_vtab_cursor *cur)
{
    ops_cur_t *c = (ops_cur_t *)cur;
    return !c->ops || c->i >= c->ops->n;
}

static int ops_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    ops_cur_t *c = (ops_cur_t *)cur;
    const dop_t *op = c->ops->op[c->i];
    const char *t = NULL;
    switch (col) {
    case 0:
        if (c->ops->sk[c->i].n) {
            sqlite3_result_blob(ctx, c->ops->sk[c->i].b, c->ops->sk[c->i].n, SQLITE_STATIC);
            return SQLITE_OK;
        }
        t = op->sub ? op->sub : "null";
        break;
    case 1:
        sqlite3_result_int64(ctx, op->opid);
        return SQLITE_OK;
    case 2:
        t = op->type;
        break;
    case 3:
        t = op->oid;
        break;
    case 4:
        t = op->data;
        break;
    case 5:
        sqlite3_result_int64(ctx, op->ck);
        return SQLITE_OK;
    default:
        return SQLITE_OK; /* batch: NULL */
    }
    if (t) sqlite3_result_text(ctx, t, -1, SQLITE_STATIC);
    return SQLITE_OK;
}

static int ops_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    *rowid = (sqlite3_int64)((ops_cur_t *)cur)->i;
    return SQLITE_OK;
}

const sqlite3_module ferry__ops_module = {
    .xConnect = ops_connect,
    .xBestIndex = ops_best_index,
    .xDisconnect = ferry__ops_disconnect,
    .xOpen = ops_open,
    .xClose = ops_close,
    .xFilter = ops_filter,
    .xNext = ops_next,
    .xEof = ops_eof,
    .xColumn = ops_column,
    .xRowid = ops_rowid,
};
