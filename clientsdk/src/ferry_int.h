/* ferry_int.h -- internals shared by libferry's source files (not installed) */
#ifndef FERRY_INT_H
#define FERRY_INT_H

#include "ferry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define FERRY_MAX_TABLES      64
#define FERRY_SUBKEY_PREFIXES 255       /* subkey prefixes numbered in ferry_subkeys, at most */
#define FERRY_TARGET_UNKNOWN  INT64_MAX /* write checkpoint not known yet (local writes pending) */

/* Checksums are u32 with wrapping addition (protocol §2.4). */
static inline uint32_t ferry__ck_add(uint32_t a, uint32_t b)
{
    return a + b;
}

/* Parses a JSON checksum (an integer in [-2^31, 2^32-1] or an integral real) into *out;
 * returns 0, or -1 when it is out of range or not a number. */
struct json_t;
int ferry__ck_parse(const struct json_t *v, uint32_t *out);

/* Parses a decimal op id string (i64, >= 0) into *out; returns 0 or -1. */
int ferry__parse_id(const struct json_t *v, int64_t *out);

typedef struct ferry_tdef {
    char *name;
    char **cols;
    int *types;
    int ncols;
    int local_only;
    int track_previous, track_metadata;
} ferry_tdef_t;

/* One bucket of the checkpoint being downloaded. */
typedef struct ferry_cbucket {
    char *name;
    uint32_t checksum;
    int priority;
    int64_t count;
} ferry_cbucket_t;

/* A data line scanned (ferry__scan_line): unescaped strings in arena, ops (offsets into it,
 * dop_off_t in ferry_oplog.h), the bucket name at bucket_off. Buffers are reused from line to line.
 */
typedef struct ferry_scan {
    char *arena;
    size_t arena_len, arena_cap;
    void *ops;
    size_t nops, ops_cap;
    size_t bucket_off;
} ferry_scan_t;

/* The sync state owned by the sync thread (and by unit tests that feed lines directly). */
typedef struct ferry_sync {
    sqlite3 *conn; /* the sync connection (triggers suppressed) */
    int have_cp;   /* a checkpoint line arrived on this connection */
    int64_t cp_last_op;
    int64_t cp_write_cp; /* -1 when none */
    ferry_cbucket_t *buckets;
    size_t nbuckets, capbuckets;
    int pending;        /* validated but blocked by uploads */
    int64_t applied_cp; /* last applied full checkpoint on this connection, -1 none */
    int complete_seen;  /* the newest checkpoint was complete (validated or not) */
    char errmsg[256];
    sqlite3_stmt *st[24];
    int batch_ops;            /* data lines share a transaction until this many ops or
                                 250 ms (0: one transaction per line, as in unit tests) */
    int in_tx;                /* a data-line transaction is open */
    int64_t tx_ops, tx_start; /* its ops and start (monotonic ms) */
    ferry_scan_t scan;        /* the data-line scanner's buffers for ferry__oplog_line */
    struct jrow *jrow;        /* the row read by ferry_jok / ferry_col (ferry_jrow.c) */
    int wal_frames;           /* the WAL's frames after the last commit (its hook) */
    int defer_checkpoint;     /* publishing: the checkpoint waits (ferry__oplog_checkpoint) */
    int checkpoint_frames;    /* checkpoint at this WAL size (0: 8192 frames; tests set less) */
    int bulk;                 /* the oplog has no key index (a first sync, ferry_oplog.c
                                 "bulk"): 1, 0 indexed, -1 not known in this transaction */
    int index_due;            /* build the key index after the app was told of a publish */
    int bulk_counted;         /* this connection dropped the index: bulk_ops is complete */
    int bulk_last;            /* the table of the last op counted */
    int64_t bulk_ops[FERRY_MAX_TABLES + 1]; /* ops stored in bulk per table (last: others) */
    int pub_reader_min;  /* a whole bucket of this many ops is published with a second
                            reader (0: 20,000; ferry_rows.c) */
    int pub_reader_used; /* tables published so (counted for tests) */
    /* ferry_subkeys as read in the open data-line transaction (ferry_oplog.c, "subkeys") */
    int sk_loaded;     /* 1 read, -1 the file has none (subkeys stay text), 0 not yet */
    int sk_n, sk_last; /* prefixes known; the one found last */
    char *sk_prefix[FERRY_SUBKEY_PREFIXES]; /* owned (malloc) */
    size_t sk_len[FERRY_SUBKEY_PREFIXES];
    int sk_id[FERRY_SUBKEY_PREFIXES];
    /* ferry_subscriptions ids of the current request's subscriptions, in request order (the
     * server names them by index; ferry_subs.c) */
    int64_t *sub_ids;
    size_t nsub_ids;
} ferry_sync_t;

/* Results of ferry__oplog_line. */
enum {
    FERRY_LINE_OK = 0,
    FERRY_LINE_RECONNECT = 1, /* end this stream iteration and reconnect (checksums, token) */
    FERRY_LINE_REFRESH = 2,   /* token expires soon / expired: new token, reconnect now */
};

struct ferry_watch;

struct ferry_db {
    char *path;
    sqlite3 *app;
    char client_id[37];
    ferry_tdef_t tables[FERRY_MAX_TABLES];
    int ntables;

    /* per app-connection transaction bookkeeping (app thread, via hooks) */
    int64_t next_tx, cur_tx;
    int app_applying;    /* ferry_applying() on the app connection (1 while migrating) */
    uint64_t tx_changed; /* tables changed in the open transaction (bit = table index) */

    /* watch thread */
    pthread_t watch_thread;
    pthread_mutex_t mu; /* guards everything below and status */
    pthread_cond_t cond;
    int watch_running, watch_stop;
    uint64_t changed; /* committed, not yet delivered */
    struct ferry_watch *watches;
    int next_watch_id;
    int in_watch_id; /* the watch whose callback runs now (0 none) */

    /* connection */
    int connected;
    _Atomic int stop;
    _Atomic int upload_done;  /* the uploader emptied the queue: retry a pending checkpoint */
    _Atomic int subs_changed; /* ferry_subscribe/unsubscribe changed the subscriptions: the
                                 open stream ends and a new request carries them */
    pthread_t sync_thread, upload_thread;
    char *endpoint;
    char *params_json;
    ferry_token_cb token_cb;
    void *token_ud;
    ferry_options_t opt;
    char *token; /* guarded by mu */
    int token_bad;
    ferry_status_t status;
    int synced_ever;
    int caught_up;            /* the newest checkpoint of this connection is applied */
    int64_t target;           /* kv "target" as the uploader saw it last; -2 not read yet */
    uint64_t app_commits;     /* commits on the app's connection (guarded by mu) */
    uint64_t scanned_commits; /* app_commits as of the uploader's last queue scan (mu) */
    int64_t rejected_total;
    int64_t conn_applied_write_cp;
    int sync_lock_fd; /* the held "<path>-sync.lock" (flock), -1 none; sync thread */
    ferry_sync_t sync;
};

/* ferry_db.c */
/* Opens a connection (WAL, busy timeout) whose ferry_applying() returns *applying, or 1 when
 * applying is NULL (the sync connection). */
int ferry__open_conn(const char *path, sqlite3 **out, int *applying, ferry_error_t *err);
void ferry__seterr(ferry_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ferry__notify(ferry_db_t *db, uint64_t tables);
int ferry__table_index(ferry_db_t *db, const char *name);
int64_t ferry__kv_get_int(sqlite3 *c, const char *key, int64_t dflt);
int ferry__kv_set_int(sqlite3 *c, const char *key, int64_t v);
void ferry__status_changed(ferry_db_t *db);

/* ferry_oplog.c: the local side of the protocol (no network). The sync engine's other files
 * (ferry_oplog.h) are reached through it, but for ferry_scan.c and ferry_publish.c below. */
int ferry__oplog_init(ferry_db_t *db, ferry_sync_t *s, sqlite3 *conn);
void ferry__oplog_free(ferry_sync_t *s);
void ferry__oplog_reset_connection(ferry_sync_t *s);
/* Handles one NDJSON line; returns FERRY_LINE_* (>= 0) or a negative FERRY_E* code (the
 * iteration ends; message in s->errmsg). */
int ferry__oplog_line(ferry_db_t *db, ferry_sync_t *s, const char *line, size_t len);
/* Applies a data line scanned into b, like ferry__oplog_line; b's ops are converted in place. */
int ferry__oplog_apply_scanned(ferry_db_t *db, ferry_sync_t *s, ferry_scan_t *b);
/* Commits the open data-line transaction, if any (complete lines only: positions and ops
 * together). Returns 0 or FERRY_ESQLITE. _due: only when it is 250 ms old. */
int ferry__oplog_flush(ferry_sync_t *s);
int ferry__oplog_flush_due(ferry_sync_t *s);
/* Runs the WAL checkpoint a publish deferred (until the app was told), when the WAL is at the
 * checkpoint size. */
void ferry__oplog_checkpoint(ferry_sync_t *s);
/* Creates the oplog's key index when it is missing (ferry_oplog.c, "bulk"), first removing the
 * older ops of keys stored twice (their checksums move to add_checksum). Runs inside the
 * caller's write transaction; returns an SQLite result code. */
int ferry__oplog_index(sqlite3 *c);
/* Builds the request body (buckets and positions); returns a malloc'd string or NULL. */
char *ferry__request_body(ferry_db_t *db, ferry_sync_t *s);

/* ferry_subs.c: Sync Streams subscriptions on the sync connection */
/* Adds "streams" (include_defaults and the stored subscriptions) to a request body and
 * remembers their ids in s->sub_ids. Returns 0, FERRY_ESQLITE or FERRY_ENOMEM. */
int ferry__subs_request(ferry_db_t *db, ferry_sync_t *s, struct json_t *body);
/* Stores the errors of a full checkpoint's "streams" per subscription of the request (and
 * clears the others'); inside the checkpoint's transaction. Returns 0 or a FERRY_E* code. */
int ferry__subs_checkpoint(ferry_sync_t *s, struct json_t *streams);
/* Marks the request's subscriptions without error synced; inside the publishing transaction of
 * a full checkpoint. Returns 0 or FERRY_ESQLITE. */
int ferry__subs_synced(ferry_sync_t *s);

/* ferry_scan.c: the data-line scanner */
/* Scans a line into b without touching the database (any thread): 0 when it is a data line
 * (apply it with ferry__oplog_apply_scanned), 1 when it is another line or empty, -1 when the
 * scanner gives up (ferry__oplog_line handles both with jansson). */
int ferry__scan_line(ferry_scan_t *b, const char *line, size_t len);
void ferry__scan_free(ferry_scan_t *b);

/* ferry_publish.c: publishing into the app's tables */
/* Applies a validated checkpoint that was blocked by uploads, if it can be now; returns 1 when
 * applied, 0 when not, negative on error. */
int ferry__publish_try_pending(ferry_db_t *db, ferry_sync_t *s);
/* Re-evaluates the rows of table index ti from the oplog (after the schema gained it). */
int ferry__republish_type(ferry_db_t *db, sqlite3 *conn, const char *type);

/* ferry_sync.c: one sync stream per database file. Two streams writing into one file (two
 * processes, or two ferry_db_t of one file) interleave their data lines in the same buckets:
 * ops already stored arrive again, their checksums are counted twice, and validation fails on
 * every attempt. The sync thread therefore holds an exclusive flock on "<path>-sync.lock" while
 * it streams. Returns the locked descriptor (>= 0), FERRY_ESTATE when another holder has it, or
 * FERRY_EINVAL when the lock file cannot be opened (the caller then syncs unlocked). */
int ferry__sync_lock(const char *path);
void ferry__sync_unlock(int fd);
/* Waits on db->cond until done(db) (called under db->mu) or timeout_ms (negative: forever);
 * returns 0 or FERRY_ETIMEOUT. */
int ferry__sync_wait(ferry_db_t *db, int timeout_ms, int (*done)(ferry_db_t *));

#endif
