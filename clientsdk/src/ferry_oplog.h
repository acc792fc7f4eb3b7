/* ferry_oplog.h -- what the sync engine's files share (internal; only they include it)
 *
 * The sync engine (its entry points are in ferry_int.h) is split by job: ferry_oplog.c (lines,
 * buckets, storing ops, subkeys, bulk first syncs, validation), ferry_scan.c (the data-line
 * scanner), ferry_ops.c (a batch of PUTs as a table), ferry_publish.c (publishing a validated
 * checkpoint into the app's tables), ferry_rows.c (the second reader of a large publish) and
 * ferry_jrow.c (a row's columns read from its JSON in C). ferry_db.c and ferry_sync.c see only
 * ferry_int.h. The functions that cross between these files were static in one file before:
 * they are declared FERRY__HIDDEN, so libferry.so exports them no more than it did then and
 * calls them directly. Helpers of the hot loops (per byte, per op, per column) are static inline
 * here instead, so that each file still compiles them into its own loops.
 */
#ifndef FERRY_OPLOG_H
#define FERRY_OPLOG_H

#include "ferry_int.h"

#include <stdlib.h>
#include <string.h>

#define FERRY__HIDDEN __attribute__((visibility("hidden")))

/* ---- ferry_oplog.c ------------------------------------------------------------------------- */

/* The sync connection's prepared statements, s->st[S_...] (their SQL is in ferry_oplog.c). */
enum {
    S_BUCKET_GET,
    S_BUCKET_INS,
    S_BUCKET_SET,
    S_OP_DEL_KEY,
    S_OP_INS,
    S_MARK,
    S_CLEAR_MARK,
    S_CLEAR_DEL,
    S_BUCKET_DROP,
    S_BUCKET_PRIO,
    S_LAST_OP_ALL,
    S_CRUD_COUNT,
    S_LIST,
    S_WHOLE_GET,
    S_WHOLE_SET,
    S_OP_GET,
    S_OP_INS_MANY,
    S_NSTMT
};

/* PUTs are inserted up to PUT_BATCH at a time, with one INSERT ... SELECT from the ops in memory
 * (the ferry_ops table, ferry_ops.c). One statement per op cost about a third of storing it; 32
 * ops per statement as VALUES rows bound 224 parameters and, at every reset, freed and allocated
 * again the buffers of their records (a fifth of storing an op). The bound: a batch where a key
 * was stored already is looked up op by op. */
#define PUT_BATCH 256

/* One op of a data line, parsed either by the scanner (ferry_scan.c) or from a jansson tree.
 * Strings are NUL-terminated; NULL when absent or JSON null. */
enum { OP_PUT, OP_REMOVE, OP_MOVE, OP_CLEAR, OP_OTHER };
typedef struct dop {
    int64_t opid;
    uint32_t ck;
    int kind;
    const char *type, *oid, *sub, *data;
} dop_t;

/* The kind of an op from its "op" string (the scanner runs it for every op). */
static inline int ferry__op_kind(const char *k)
{
    return !strcmp(k, "PUT")      ? OP_PUT
           : !strcmp(k, "REMOVE") ? OP_REMOVE
           : !strcmp(k, "MOVE")   ? OP_MOVE
           : !strcmp(k, "CLEAR")  ? OP_CLEAR
                                  : OP_OTHER;
}

/* The stored form of an op's subkey (ferry_oplog.c, "subkeys"). */
typedef struct skey {
    char b[4]; /* the prefix's number in digits, not terminated */
    int n;     /* its length; 0: the subkey is stored as text */
} skey_t;

/* Steps st once and resets it: 0 when it ran (a row or done), -1 on an error. */
static inline int ferry__step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* Ends the open transaction on an SQLite error: s->errmsg "could not <what>: <sqlite's>",
 * ROLLBACK; returns FERRY_ESQLITE. */
FERRY__HIDDEN int ferry__oplog_sqlerr(ferry_sync_t *s, const char *what);
/* 1 when the oplog has no key index, 0 when it has, -1 on an SQLite error. */
FERRY__HIDDEN int ferry__oplog_unindexed(sqlite3 *c);
/* Builds the key index when the oplog has none (inside a transaction); 0 or -1. */
FERRY__HIDDEN int ferry__oplog_need_index(ferry_sync_t *s);

/* ---- ferry_scan.c -------------------------------------------------------------------------- */

/* An op as the scanner stores it in ferry_scan_t.ops: its strings as offsets into the arena
 * (NOFF: absent or JSON null). ferry__oplog_apply_scanned turns them into a dop_t in place. */
#define NOFF ((size_t)-1)
typedef struct dop_off {
    int64_t opid;
    uint32_t ck;
    int kind;
    size_t type, oid, sub, data;
} dop_off_t;

/* Scans a whole line; on success *bucket_off and s->ops / s->nops describe it (strings in the
 * arena). Returns 0, 1 when the line is not a data line, -1 when jansson must take it. */
FERRY__HIDDEN int ferry__scan_data_line(ferry_scan_t *s, const char *line, size_t len,
                                        size_t *bucket_off);
/* Drops the spaces, tabs and carriage returns around a line. */
FERRY__HIDDEN void ferry__scan_trim(const char **line, size_t *len);

/* Bytes that a JSON string holds as they are (ASCII, not a quote, a backslash or a control
 * character): both JSON readers (ferry_scan.c, ferry_jrow.c) skip runs of them with one table
 * look-up per byte. */
static const unsigned char ferry__plain[256] = {
    [0x20 ... 0x21] = 1, [0x23 ... 0x5b] = 1, [0x5d ... 0x7f] = 1, /* not '"' (0x22), '\\' */
};

/* ---- ferry_ops.c --------------------------------------------------------------------------- */

/* The batch that ferry_ops(?) reads (bound with sqlite3_bind_pointer, type "ferry_ops"). */
typedef struct ops {
    const dop_t *const *op;
    const skey_t *sk; /* the stored subkeys, op[i]'s at sk[i] */
    size_t n;
} ops_t;

FERRY__HIDDEN extern const sqlite3_module ferry__ops_module;
/* The xDisconnect of ferry_ops and ferry_rows: frees the sqlite3_vtab of their xConnect. */
FERRY__HIDDEN int ferry__ops_disconnect(sqlite3_vtab *vt);

/* ---- ferry_publish.c ----------------------------------------------------------------------- */

/* Publishes the marked rows of buckets with priority <= prio (prio < 0: all, a full
 * checkpoint). Returns 1 when published, 0 when blocked by uploads, negative on error. */
FERRY__HIDDEN int ferry__publish(ferry_db_t *db, ferry_sync_t *s, int prio);

/* ---- ferry_rows.c -------------------------------------------------------------------------- */

/* A whole bucket of this many ops is published with a second reader (s->pub_reader_min when
 * set). */
#define PR_MIN_OPS 20000

typedef struct pread pread_t;
/* Starts a reader of table t's rows in the oplog of the file of conn (rowid order, ferry_col's
 * values). Returns it (free with ferry__rows_free), or NULL when it could not start: publish
 * with one thread then. */
FERRY__HIDDEN pread_t *ferry__rows_start(sqlite3 *conn, const ferry_tdef_t *t);
/* Stops the reader (if running) and frees r and what it owns. */
FERRY__HIDDEN void ferry__rows_free(pread_t *r);
FERRY__HIDDEN extern const sqlite3_module ferry__rows_module;

/* ---- ferry_jrow.c -------------------------------------------------------------------------- */

/* A row's JSON object taken apart once (ferry_jrow.c): the row cache behind the SQL functions
 * ferry_jok and ferry_col, and the reader of both ways of publishing. */
typedef struct jcol {
    const char *k, *s; /* key; text value (raw, escaped when esc) */
    size_t kn, sn;
    int type; /* SQLITE_INTEGER, SQLITE_TEXT, SQLITE_NULL */
    int esc;
    int64_t i;
} jcol_t;

struct jrow {
    char *text; /* a copy of the row's data (the values point into it) */
    size_t len, cap;
    int loaded, ok;
    jcol_t *v;
    size_t nv, capv;
    char *ubuf; /* an unescaped string */
    size_t ucap;
    sqlite3_stmt *jx; /* "SELECT json_extract(?1, ?2)": ferry_col's answer for rows not taken */
    char *path;       /* its path argument, '$."name"' */
    size_t pcap;
};

FERRY__HIDDEN struct jrow *ferry__jrow_new(void);
FERRY__HIDDEN void ferry__jrow_free(struct jrow *r);
/* Reads d into r unless it holds it already; returns r->ok, or -1 on out-of-memory. */
FERRY__HIDDEN int ferry__jrow_load(struct jrow *r, const char *d, size_t n);
/* r's "SELECT json_extract(?1, ?2)" on connection c (prepared once), bound to data and
 * '$."name"', ready to step (the caller resets it and clears its bindings). NULL when it could
 * not be prepared or on out-of-memory. */
FERRY__HIDDEN sqlite3_stmt *ferry__jrow_extract(struct jrow *r, sqlite3 *c, sqlite3_value *data,
                                                const char *name);
/* The SQL functions ferry_jok(data) and ferry_col(data, name) (user data: a struct jrow). */
FERRY__HIDDEN void ferry__jrow_fn_jok(sqlite3_context *ctx, int argc, sqlite3_value **argv);
FERRY__HIDDEN void ferry__jrow_fn_col(sqlite3_context *ctx, int argc, sqlite3_value **argv);

/* The first value of key name in r, NULL when absent. */
static inline const jcol_t *ferry__jrow_get(struct jrow *r, const char *name)
{
    size_t nn = strlen(name);
    for (size_t i = 0; i < r->nv; i++)
        if (r->v[i].kn == nn && memcmp(r->v[i].k, name, nn) == 0) return &r->v[i];
    return NULL;
}

/* A text value, unescaped (into r->ubuf when it holds escapes, valid until the next call);
 * NULL on out-of-memory. */
static inline const char *ferry__jrow_text(struct jrow *r, const jcol_t *c, size_t *n)
{
    if (!c->esc) {
        *n = c->sn;
        return c->s;
    }
    if (c->sn + 1 > r->ucap) {
        char *nb = realloc(r->ubuf, c->sn + 1);
        if (!nb) return NULL;
        r->ubuf = nb;
        r->ucap = c->sn + 1;
    }
    size_t o = 0;
    for (size_t k = 0; k < c->sn; k++) {
        char ch = c->s[k];
        if (ch == '\\') {
            ch = c->s[++k];
            ch = ch == 'b'   ? '\b'
                 : ch == 'f' ? '\f'
                 : ch == 'n' ? '\n'
                 : ch == 'r' ? '\r'
                 : ch == 't' ? '\t'
                             : ch;
        }
        r->ubuf[o++] = ch;
    }
    *n = o;
    return r->ubuf;
}

#endif
