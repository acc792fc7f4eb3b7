/* ferry_rows.c -- publishing a whole bucket with a second reader: ferry_rows(?) over its rows
 *
 * A first sync publishes with one INSERT OR REPLACE ... SELECT per table over the oplog in
 * rowid order. About half of that statement's work is reading: stepping through the oplog and
 * taking every row's JSON apart (ferry_col). For a large bucket (PR_MIN_OPS ops or more) that
 * half runs on a second thread: the reader, with its own read-only connection, runs the same
 * SELECT and copies each row's values into blocks (PR_BLOCKS of PR_ROWS rows, reused: memory
 * stays bounded); the publishing statement takes them from ferry_rows(?), a table-valued
 * function over those blocks, and only writes.
 *
 * The reader sees what the publishing transaction sees: the transaction holds the write lock
 * (BEGIN IMMEDIATE) before the reader starts, so no commit comes between, and publishing never
 * changes the oplog; what it changed in other tables, the reader does not read. Values and
 * errors are ferry_col's (the reader runs it): an error ends the statement as before, and the
 * table's rows are then published one by one. When the reader cannot start (no thread, no
 * connection), the one-thread statement runs instead.
 *
 * Caller: publish_whole (ferry_publish.c), which starts a reader per table of a large bucket
 * (ferry__rows_start), binds it to ferry_rows(?3) in its statement and frees it after the step
 * (ferry__rows_free); ferry__oplog_init registers ferry_rows on the sync connection. The
 * reader thread shares with the publishing thread only the table's definition (read only) and
 * the blocks, handed over under r->mu: the reader fills a block only while produced - consumed
 * < PR_BLOCKS, and the statement reads it only until it gives it back (consumed++). */
#include "ferry_oplog.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PR_ROWS     512
#define PR_BLOCKS   4
#define PR_MAX_COLS 127 /* columns besides id that ferry_rows declares */

typedef struct prval {
    int type; /* SQLITE_NULL, SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT */
    int64_t i;
    double r;
    size_t off, n; /* a text's bytes in the block's arena */
} prval_t;

typedef struct prblock {
    size_t nrows;
    prval_t *v;  /* nrows rows of width values; owned */
    char *arena; /* owned */
    size_t alen, acap;
} prblock_t;

typedef struct pread {
    sqlite3 *conn;     /* the reader's connection (read-only); owned */
    sqlite3_stmt *sel; /* row_id, data of the table's ops in rowid order; owned */
    struct jrow *jrow; /* the row taken apart; owned (its json_extract statement too) */
    const ferry_tdef_t *t;
    int width; /* 1 + columns */
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    prblock_t blk[PR_BLOCKS];
    size_t produced, consumed; /* blocks handed over, blocks given back (both only grow) */
    int done;                  /* the reader handed over its last block (or failed: rc) */
    int cancel;                /* the writer stopped taking rows */
    int rc;                    /* SQLITE_OK, or the reader's error (err) */
    char err[200];
} pread_t;

/* A text value into block b's arena; 0, or -1 on out-of-memory. */
static int pr_text(prblock_t *b, prval_t *v, const char *s, size_t n)
{
    if (b->alen + n > b->acap) {
        size_t cap = b->acap ? b->acap : 65536;
        while (cap < b->alen + n)
            cap *= 2;
        char *na = realloc(b->arena, cap);
        if (!na) return -1;
        b->arena = na;
        b->acap = cap;
    }
    memcpy(b->arena + b->alen, s, n);
    v->type = SQLITE_TEXT;
    v->off = b->alen;
    v->n = n;
    b->alen += n;
    return 0;
}

/* A value of any type into v (text into b's arena); 0, or -1 on out-of-memory. */
static int pr_value(prblock_t *b, prval_t *v, sqlite3_value *x)
{
    v->type = sqlite3_value_type(x);
    if (v->type == SQLITE_INTEGER)
        v->i = sqlite3_value_int64(x);
    else if (v->type == SQLITE_FLOAT)
        v->r = sqlite3_value_double(x);
    else if (v->type != SQLITE_NULL) {
        const char *s = (const char *)sqlite3_value_text(x);
        return s ? pr_text(b, v, s, (size_t)sqlite3_value_bytes(x)) : -1;
    }
    return 0;
}

/* Copies the current row of r->sel into block b: its id and the values ferry_col gives for the
 * table's columns (the C reader for the rows it takes, json_extract for the others). Returns
 * SQLITE_OK, SQLITE_NOMEM, or json_extract's error (r->err set). */
static int pr_copy_row(pread_t *r, prblock_t *b)
{
    prval_t *v = &b->v[b->nrows * (size_t)r->width];
    const char *id = (const char *)sqlite3_column_text(r->sel, 0);
    if (!id || pr_text(b, &v[0], id, (size_t)sqlite3_column_bytes(r->sel, 0))) return SQLITE_NOMEM;
    sqlite3_value *data = sqlite3_column_value(r->sel, 1);
    int ok = 0;
    if (sqlite3_value_type(data) == SQLITE_NULL) {
        for (int i = 1; i < r->width; i++)
            v[i].type = SQLITE_NULL; /* ferry_col(NULL, c) */
        b->nrows++;
        return SQLITE_OK;
    }
    if (sqlite3_value_type(data) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(data);
        if (!d || (ok = ferry__jrow_load(r->jrow, d, (size_t)sqlite3_value_bytes(data))) < 0)
            return SQLITE_NOMEM;
    }
    for (int i = 1; i < r->width; i++) {
        const char *name = r->t->cols[i - 1];
        if (ok) {
            const jcol_t *c = ferry__jrow_get(r->jrow, name);
            v[i].type = c ? c->type : SQLITE_NULL;
            if (c && c->type == SQLITE_INTEGER) v[i].i = c->i;
            if (c && c->type == SQLITE_TEXT) {
                size_t n;
                const char *s = ferry__jrow_text(r->jrow, c, &n);
                if (!s || pr_text(b, &v[i], s, n)) return SQLITE_NOMEM;
            }
            continue;
        }
        sqlite3_stmt *jx = ferry__jrow_extract(r->jrow, r->conn, data, name);
        int st = jx ? sqlite3_step(jx) : SQLITE_NOMEM;
        int rc = st == SQLITE_ROW ? pr_value(b, &v[i], sqlite3_column_value(jx, 0)) : st;
        if (rc != SQLITE_OK) {
            snprintf(r->err, sizeof r->err, "%s",
                     rc == SQLITE_NOMEM || rc < 0 ? "out of memory" : sqlite3_errmsg(r->conn));
            rc = rc < 0 ? SQLITE_NOMEM : rc;
        }
        if (jx) {
            sqlite3_reset(jx);
            sqlite3_clear_bindings(jx);
        }
        if (rc != SQLITE_OK) return rc;
    }
    b->nrows++;
    return SQLITE_OK;
}

static void *pr_main(void *arg)
{
    pread_t *r = arg;
    int rc = SQLITE_OK, step = SQLITE_ROW;
    while (step == SQLITE_ROW) {
        pthread_mutex_lock(&r->mu);
        while (r->produced - r->consumed >= PR_BLOCKS && !r->cancel)
            pthread_cond_wait(&r->cv, &r->mu);
        int cancel = r->cancel;
        pthread_mutex_unlock(&r->mu);
        if (cancel) break;
        prblock_t *b = &r->blk[r->produced % PR_BLOCKS];
        b->nrows = 0;
        b->alen = 0;
        while (b->nrows < PR_ROWS && (step = sqlite3_step(r->sel)) == SQLITE_ROW)
            if ((rc = pr_copy_row(r, b)) != SQLITE_OK) break;
        if (rc == SQLITE_OK && step != SQLITE_ROW && step != SQLITE_DONE) rc = step;
        if (rc != SQLITE_OK && !r->err[0])
            snprintf(r->err, sizeof r->err, "%s",
                     rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(r->conn));
        pthread_mutex_lock(&r->mu);
        if (rc == SQLITE_OK && b->nrows) r->produced++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        if (rc != SQLITE_OK) break;
    }
    sqlite3_reset(r->sel); /* ends the read transaction */
    pthread_mutex_lock(&r->mu);
    r->rc = rc;
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Stops the reader (if running) and frees r and what it owns. */
void ferry__rows_free(pread_t *r)
{
    if (!r) return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->cancel = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->th, NULL);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    for (int i = 0; i < PR_BLOCKS; i++) {
        free(r->blk[i].v);
        free(r->blk[i].arena);
    }
    sqlite3_finalize(r->sel);
    ferry__jrow_free(r->jrow); /* its json_extract statement is on conn */
    sqlite3_close(r->conn);
    free(r);
}

/* Starts a reader of table t's rows in the oplog of the file of conn (rowid order, ferry_col's
 * values). Returns it (free with ferry__rows_free), or NULL when it could not start: publish with
 * one thread then. */
pread_t *ferry__rows_start(sqlite3 *conn, const ferry_tdef_t *t)
{
    if (t->ncols > PR_MAX_COLS) return NULL;
    const char *path = sqlite3_db_filename(conn, "main");
    pread_t *r = calloc(1, sizeof *r);
    if (!r || !path || !*path) return free(r), NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->width = 1 + t->ncols;
    r->t = t;
    for (int i = 0; i < PR_BLOCKS; i++)
        if (!(r->blk[i].v = malloc(sizeof(prval_t) * PR_ROWS * (size_t)r->width)))
            return ferry__rows_free(r), NULL;
    if (sqlite3_open_v2(path, &r->conn, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        !(r->jrow = ferry__jrow_new()) ||
        sqlite3_prepare_v2(r->conn,
                           "SELECT row_id, data FROM ferry_oplog NOT INDEXED WHERE "
                           "row_type = ? ORDER BY rowid",
                           -1, &r->sel, NULL) != SQLITE_OK)
        return ferry__rows_free(r), NULL;
    sqlite3_bind_text(r->sel, 1, t->name, -1, SQLITE_STATIC);
    sqlite3_busy_timeout(r->conn, 10000);
    if (pthread_create(&r->th, NULL, pr_main, r) != 0) return ferry__rows_free(r), NULL;
    r->started = 1;
    return r;
}

/* ferry_rows(?): the reader's rows (bound with sqlite3_bind_pointer, type "ferry_rows"), as
 * columns c0 (id), c1 ... in the table's column order. Values point into the current block
 * (SQLITE_STATIC); a block goes back to the reader only when the cursor has left it. */
typedef struct rows_cur {
    sqlite3_vtab_cursor base;
    pread_t *r;
    prblock_t *b; /* the block being read; NULL at the end */
    size_t row;
} rows_cur_t;

static int rows_connect(sqlite3 *c, void *aux, int argc, const char *const *argv,
                        sqlite3_vtab **out, char **err)
{
    (void)aux, (void)argc, (void)argv, (void)err;
    sqlite3_str *q = sqlite3_str_new(NULL);
    sqlite3_str_appendf(q, "CREATE TABLE x(c0");
    for (int i = 1; i <= PR_MAX_COLS; i++)
        sqlite3_str_appendf(q, ", c%d", i);
    sqlite3_str_appendf(q, ", src HIDDEN)");
    char *decl = sqlite3_str_finish(q);
    int rc = decl ? sqlite3_declare_vtab(c, decl) : SQLITE_NOMEM;
    sqlite3_free(decl);
    if (rc != SQLITE_OK) return rc;
    sqlite3_vtab_config(c, SQLITE_VTAB_DIRECTONLY);
    if (!(*out = sqlite3_malloc(sizeof **out))) return SQLITE_NOMEM;
    memset(*out, 0, sizeof **out);
    return SQLITE_OK;
}

static int rows_best_index(sqlite3_vtab *vt, sqlite3_index_info *ix)
{
    (void)vt;
    for (int i = 0; i < ix->nConstraint; i++)
        if (ix->aConstraint[i].iColumn == PR_MAX_COLS + 1 &&
            ix->aConstraint[i].op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!ix->aConstraint[i].usable) return SQLITE_CONSTRAINT;
            ix->aConstraintUsage[i].argvIndex = 1;
            ix->aConstraintUsage[i].omit = 1;
            ix->estimatedCost = 1;
            return SQLITE_OK;
        }
    return SQLITE_CONSTRAINT;
}

static int rows_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    (void)vt;
    rows_cur_t *c = sqlite3_malloc(sizeof *c);
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int rows_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

/* Waits for the reader's next block: c->b is it, or NULL at the end. An error of the reader
 * is the statement's. */
static int rows_wait(rows_cur_t *c)
{
    pread_t *r = c->r;
    pthread_mutex_lock(&r->mu);
    while (r->produced == r->consumed && !r->done)
        pthread_cond_wait(&r->cv, &r->mu);
    int rc = SQLITE_OK;
    c->b = NULL;
    c->row = 0;
    if (r->produced > r->consumed)
        c->b = &r->blk[r->consumed % PR_BLOCKS];
    else if (r->rc != SQLITE_OK)
        rc = SQLITE_ERROR;
    pthread_mutex_unlock(&r->mu);
    if (rc != SQLITE_OK) {
        sqlite3_free(c->base.pVtab->zErrMsg);
        c->base.pVtab->zErrMsg = sqlite3_mprintf("%s", r->err);
    }
    return rc;
}

static int rows_filter(sqlite3_vtab_cursor *cur, int idx, const char *idxs, int argc,
                       sqlite3_value **argv)
{
    (void)idx, (void)idxs;
    rows_cur_t *c = (rows_cur_t *)cur;
    c->r = argc == 1 ? sqlite3_value_pointer(argv[0], "ferry_rows") : NULL;
    c->b = NULL;
    return c->r ? rows_wait(c) : SQLITE_OK;
}

static int rows_next(sqlite3_vtab_cursor *cur)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    if (!c->b || ++c->row < c->b->nrows) return SQLITE_OK;
    pthread_mutex_lock(&c->r->mu);
    c->r->consumed++; /* the block goes back to the reader */
    pthread_cond_broadcast(&c->r->cv);
    pthread_mutex_unlock(&c->r->mu);
    return rows_wait(c);
}

static int rows_eof(sqlite3_vtab_cursor *cur)
{
    return ((rows_cur_t *)cur)->b == NULL;
}

static int rows_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    if (col >= c->r->width) return SQLITE_OK; /* NULL */
    const prval_t *v = &c->b->v[c->row * (size_t)c->r->width + (size_t)col];
    switch (v->type) {
    case SQLITE_INTEGER:
        sqlite3_result_int64(ctx, v->i);
        break;
    case SQLITE_FLOAT:
        sqlite3_result_double(ctx, v->r);
        break;
    case SQLITE_TEXT:
        sqlite3_result_text(ctx, c->b->arena + v->off, (int)v->n, SQLITE_STATIC);
        break;
    default:
        break;
    }
    return SQLITE_OK;
}

static int rows_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    *rowid = (sqlite3_int64)c->row;
    return SQLITE_OK;
}

const sqlite3_module ferry__rows_module = {
    .xConnect = rows_connect,
    .xBestIndex = rows_best_index,
    .xDisconnect = ferry__ops_disconnect,
    .xOpen = rows_open,
    .xClose = rows_close,
    .xFilter = rows_filter,
    .xNext = rows_next,
    .xEof = rows_eof,
    .xColumn = rows_column,
    .xRowid = rows_rowid,
};
