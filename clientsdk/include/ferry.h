/* ferry.h -- libferry, the C client SDK of Ferry (offline-first SQLite replicas)
 *
 * An app opens a SQLite file with a schema (ferry_open), reads and writes its tables with plain
 * SQL through the handle from ferry_sqlite, and connects to a Ferry gateway (ferry_connect).
 * Local writes are recorded by triggers in an upload queue, so they work offline; a background
 * sync thread downloads the rows the sync rules give the user, uploads the queue to
 * POST /api/write, and applies server data only when it cannot clobber pending local edits.
 *
 * Conventions of this API:
 *   - Functions returning int return 0 on success and a negative FERRY_E* code on failure; when
 *     an error struct is passed, it receives a message in the PostgreSQL style.
 *   - libferry never aborts the process (not even on out-of-memory); it returns FERRY_ENOMEM.
 *   - Strings passed in are copied unless stated otherwise; strings handed out are owned by the
 *     library and valid only for the documented lifetime.
 *   - Threads: a ferry_db_t is used by one app thread at a time (like a sqlite3 connection).
 *     Callbacks run on library threads, named in each callback's comment; they must not call
 *     ferry_close or ferry_disconnect.
 *
 * The wire protocol is the PowerSync sync protocol; see clientsdk/README.md.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_STRING "0.1.0"

/* Error codes (negative return values). */
enum {
    FERRY_OK = 0,
    FERRY_EINVAL = -1,   /* invalid argument or schema */
    FERRY_ENOMEM = -2,   /* out of memory */
    FERRY_ESQLITE = -3,  /* SQLite reported an error */
    FERRY_ESTATE = -4,   /* not allowed in the current state (e.g. already connected) */
    FERRY_ETIMEOUT = -5, /* a wait timed out */
    FERRY_EPROTO = -6,   /* the server sent something that breaks the protocol */
    FERRY_ENET = -7,     /* network or HTTP error */
    FERRY_EAUTH = -8,    /* no token, or the server refused it (401) */
    FERRY_ECHECKSUM = -9 /* a checkpoint's checksums did not match the local data */
};

/** An error description filled by functions that take one; message is empty on success. */
typedef struct ferry_error {
    int code;          /* the FERRY_E* code */
    char message[256]; /* e.g. "could not open database \"x.db\": unable to open database file" */
} ferry_error_t;

/** Returns a static English name for a FERRY_E* code ("invalid argument", ...); never NULL. */
const char *ferry_strerror(int code);

/* ---- schema ------------------------------------------------------------------------------ */

typedef enum ferry_coltype { FERRY_TEXT = 0, FERRY_INTEGER = 1, FERRY_REAL = 2 } ferry_coltype_t;

/** A column; an array of them ends with an entry whose name is NULL. "id" is implicit. */
typedef struct ferry_column {
    const char *name;
    ferry_coltype_t type;
} ferry_column_t;

/** An index on columns (NULL-terminated list of names, each optionally followed by " DESC"). */
typedef struct ferry_index {
    const char *name;
    const char *columns[16];
} ferry_index_t;

/**
 * A table: synced (default) or local-only (never uploaded, never touched by sync).
 * track_previous: an update's queued write carries the previous values of the columns it changes
 * ("old", as PowerSync's trackPrevious), which the server's merge strategies server_wins_if_changed
 * and add need. track_metadata: the table gets a local column "_metadata" (TEXT, never synced);
 * what an insert or update writes there is sent as the write's "metadata" (as PowerSync's
 * trackMetadata), e.g. '{"ts":"2026-03-01T10:00:00Z"}' for the server's lww strategy.
 */
typedef struct ferry_table {
    const char *name;
    const ferry_column_t *columns; /* ends with {NULL} */
    const ferry_index_t *indexes;  /* may be NULL; else ends with {NULL} */
    int local_only;
    int track_previous;
    int track_metadata;
} ferry_table_t;

/** A schema: tables, ending with an entry whose name is NULL. */
typedef struct ferry_schema {
    const ferry_table_t *tables;
} ferry_schema_t;

/* ---- database ---------------------------------------------------------------------------- */

typedef struct ferry_db ferry_db_t;

/** Opens (creating if needed) the SQLite file path with schema: creates missing tables, adds
 * missing columns and indexes, (re)creates the upload-queue triggers and Ferry's own tables.
 * On success *out owns the database (free with ferry_close); on failure returns a FERRY_E* code,
 * fills err if given and leaves *out NULL. The schema is copied. Any thread; starts the watch
 * thread. */
int ferry_open(const char *path, const ferry_schema_t *schema, ferry_db_t **out,
               ferry_error_t *err);

/** Disconnects (waiting for the sync threads to end), stops the watch thread and closes the
 * database; db is freed. NULL is allowed. Call from the app thread, never from a callback. */
void ferry_close(ferry_db_t *db);

/** The app's SQLite connection: read and write the schema's tables with plain SQL, including
 * transactions (BEGIN/COMMIT). Owned by db; valid until ferry_close; use it from one thread at a
 * time. Writes to synced tables are queued for upload; do not write Ferry's own ferry_* tables. */
sqlite3 *ferry_sqlite(ferry_db_t *db);

/** Runs sql (one or more statements, no results) on the app connection. Returns 0 or
 * FERRY_ESQLITE with the SQLite message in err. App thread. */
int ferry_exec(ferry_db_t *db, const char *sql, ferry_error_t *err);

/** Starts a transaction (BEGIN IMMEDIATE) on the app connection; all writes until
 * ferry_commit share one upload transaction id. Returns 0 or FERRY_ESQLITE. App thread. */
int ferry_begin(ferry_db_t *db, ferry_error_t *err);
/** Commits the transaction started by ferry_begin. Returns 0 or FERRY_ESQLITE. App thread. */
int ferry_commit(ferry_db_t *db, ferry_error_t *err);
/** Rolls back the transaction started by ferry_begin; never fails. App thread. */
void ferry_rollback(ferry_db_t *db);

/** Writes a new random UUID (36 characters and a NUL) into buf, for ids of new rows. */
void ferry_uuid(char buf[37]);

/** The client id of this database (a UUID created with the file, sent to the server). Owned by
 * db, valid until ferry_close. */
const char *ferry_client_id(ferry_db_t *db);

/* ---- watching tables --------------------------------------------------------------------- */

/** Called with the names of the watched tables that changed (committed local writes or applied
 * server data), on the watch thread; tables is valid during the call only. */
typedef void (*ferry_watch_cb)(void *ud, const char *const *tables, size_t ntables);

/** Calls cb whenever one of tables (NULL-terminated names of schema tables) changes. Returns a
 * positive watch id, or FERRY_EINVAL for an unknown table, FERRY_ENOMEM. Any thread. */
int ferry_watch(ferry_db_t *db, const char *const *tables, ferry_watch_cb cb, void *ud);

/** Stops watch id; after it returns the callback is not running and will not run again, unless
 * called from inside that callback (then it is the last call). Any thread. */
void ferry_unwatch(ferry_db_t *db, int id);

/* ---- upload queue ------------------------------------------------------------------------ */

/** One queued local write. Strings are owned by the entry (free with ferry_crud_free). */
typedef struct ferry_crud {
    int64_t op_id;  /* increasing; the server acknowledges by this id */
    int64_t tx_id;  /* the same for every write of one local transaction */
    char op[8];     /* "PUT", "PATCH" or "DELETE" */
    char *type;     /* the table */
    char *id;       /* the row id */
    char *data;     /* JSON object text: all columns (PUT), changed ones (PATCH), NULL (DELETE) */
    char *old;      /* JSON object text: the changed columns' previous values (PATCH of a table
                       with track_previous), else NULL */
    char *metadata; /* what the write put in "_metadata" (tables with track_metadata), or NULL */
} ferry_crud_t;

/** Number of queued writes, or a negative FERRY_E* code. Any thread (uses a short-lived read). */
int64_t ferry_queue_length(ferry_db_t *db);

/** Copies up to max oldest queued writes into a new array *out (*n entries; free with
 * ferry_crud_free). Returns 0 or FERRY_ESQLITE / FERRY_ENOMEM. App thread. */
int ferry_queue_peek(ferry_db_t *db, size_t max, ferry_crud_t **out, size_t *n);

/** Frees an array from ferry_queue_peek. */
void ferry_crud_free(ferry_crud_t *entries, size_t n);

/**
 * This user's write conflicts, when the sync rules send them: the rows of the server's
 * ferry_write_conflicts table (a column a merge strategy kept, merged or overwrote; selected by
 * the rules under that name) that arrived with synced data, as JSON text of an array of row
 * objects ordered by their "created_at" column (when selected), into *json (malloc'd; free()).
 * They are synced data, not a schema table (ferry_* names are Ferry's). Returns 0, FERRY_EINVAL,
 * FERRY_ESQLITE or FERRY_ENOMEM. App thread.
 */
int ferry_write_conflicts(ferry_db_t *db, char **json);

/* ---- connection -------------------------------------------------------------------------- */

/** Returns a token (malloc'd; the library frees it) for the gateway, or NULL when none is
 * available now (the library retries later). expired is 1 when the previous token was refused
 * (401) or expired. Called on the sync or upload thread. */
typedef char *(*ferry_token_cb)(void *ud, int expired);

/** A write the server rejected; it has been removed from the queue and the local row will be
 * set back to the server's state by the next checkpoint. status is "rejected"; code and message
 * come from the server. Called on the upload thread; pointers valid during the call only. */
typedef void (*ferry_rejected_cb)(void *ud, const ferry_crud_t *entry, const char *code,
                                  const char *message);

typedef enum ferry_state {
    FERRY_DISCONNECTED = 0,
    FERRY_CONNECTING = 1, /* getting a token, or waiting to retry */
    FERRY_CONNECTED = 2   /* the stream is open */
} ferry_state_t;

/** A snapshot of the sync status. */
typedef struct ferry_status {
    ferry_state_t state;
    int downloading;            /* ops of the current checkpoint are arriving */
    int64_t ops_downloaded;     /* in the current checkpoint */
    int64_t ops_total;          /* expected in the current checkpoint (from bucket counts) */
    int64_t prio_downloaded[4]; /* the same per priority 0..3 */
    int64_t prio_total[4];
    int64_t ops_received_total; /* every op received since ferry_connect */
    int64_t last_synced_at;     /* unix seconds of the last applied full checkpoint, 0 = never */
    int64_t applied_checkpoint; /* last_op_id of that checkpoint */
    int64_t upload_queue_length;
    int64_t checksum_failures; /* buckets dropped and downloaded again, since open */
    char last_error[256];      /* empty when the last attempt succeeded */
} ferry_status_t;

/** Called on every status change, on the sync thread (while a stream is open: its apply
 * thread) or the upload thread; st valid during the call. */
typedef void (*ferry_status_cb)(void *ud, const ferry_status_t *st);

/** Options of ferry_connect; zero means the default. */
typedef struct ferry_options {
    const char *params_json;       /* client parameters object for the sync rules; default {} */
    int retry_delay_ms;            /* first reconnect delay, doubled up to 30 s, ±20% jitter;
                                      default 1000 */
    int upload_batch;              /* writes per POST /api/write; default 100 */
    ferry_rejected_cb on_rejected; /* may be NULL (rejections are then only counted) */
    ferry_status_cb on_status;     /* may be NULL */
    void *ud;                      /* passed to the callbacks above */
    int exclude_default_streams;   /* 1: only the subscribed streams (no auto_subscribe streams,
                                      no bucket definitions): streams.include_defaults false */
} ferry_options_t;

/** Starts syncing with the gateway at endpoint (e.g. "http://127.0.0.1:8080", no trailing
 * slash): starts the sync and upload threads and returns at once. token_cb is called for every
 * attempt that has no valid token. One stream per database file: the sync thread holds an
 * exclusive lock on "<path>-sync.lock" (flock) while connected; a second connection to the same
 * file (another process, or another ferry_db_t) waits with backoff until the first ends, and
 * says so in last_error. Returns 0, FERRY_EINVAL, FERRY_ESTATE when already
 * connected, FERRY_ENOMEM. endpoint, options and their strings are copied. App thread. */
int ferry_connect(ferry_db_t *db, const char *endpoint, ferry_token_cb token_cb, void *token_ud,
                  const ferry_options_t *options);

/** Stops syncing: closes the stream, waits for both threads to end. Local data and the queue
 * stay. No-op when not connected. App thread, never from a callback. */
void ferry_disconnect(ferry_db_t *db);

/** Copies the current status into *st. Any thread. */
void ferry_get_status(ferry_db_t *db, ferry_status_t *st);

/** Waits until a full checkpoint has been applied at least once (ever, in this file). Returns
 * 0, or FERRY_ETIMEOUT after timeout_ms (negative = forever). Any thread but callbacks. */
int ferry_wait_for_first_sync(ferry_db_t *db, int timeout_ms);

/** Waits until this connection is caught up: the upload queue is empty, and the checkpoint the
 * server sent last (carrying our write checkpoint) has been applied. Returns 0 or
 * FERRY_ETIMEOUT; FERRY_ESTATE when not connected. Any thread but callbacks. */
int ferry_wait_synced(ferry_db_t *db, int timeout_ms);

/* ---- Sync Streams subscriptions ------------------------------------------------------------ */

/** Subscribes to the Sync Stream `stream` with parameters (a JSON object text, or NULL / "null"
 * for none): the subscription is stored in the database file (it survives restarts and is sent
 * in every request until ferry_unsubscribe) and, when connected, the stream is reopened with it
 * at once (within a second), as the official clients do. Several subscriptions to one stream
 * with other parameters are allowed. priority 0..3 overrides the stream's priority for this
 * subscription's buckets; -1 keeps the stream's. Subscribing again with the same parameters
 * only updates the priority. A stream the server does not know, or parameters it cannot use,
 * do not fail here: the server reports it, see ferry_subscriptions. Returns 0, FERRY_EINVAL
 * (no stream, parameters not a JSON object, priority out of range), FERRY_ESQLITE,
 * FERRY_ENOMEM. App thread. */
int ferry_subscribe(ferry_db_t *db, const char *stream, const char *params_json, int priority,
                    ferry_error_t *err);

/** Removes the subscription (stream, parameters as in ferry_subscribe; key order does not
 * matter). The next request no longer carries it: the server drops its buckets from the
 * checkpoint and their rows leave the replica (rows other buckets hold stay). Removing a
 * subscription that does not exist is not an error. Returns 0, FERRY_EINVAL, FERRY_ESQLITE.
 * App thread. */
int ferry_unsubscribe(ferry_db_t *db, const char *stream, const char *params_json,
                      ferry_error_t *err);

/** One stored subscription; strings owned by the array (ferry_subscriptions_free). */
typedef struct ferry_subscription {
    char *stream;
    char *params_json; /* canonical: keys sorted, no spaces; "null" when none */
    int priority;      /* override priority, -1 none */
    int synced;        /* a checkpoint of a request carrying it has been applied (ever) */
    char *error;       /* the server's error for it in the last checkpoint, or NULL */
} ferry_subscription_t;

/** Copies the stored subscriptions (in subscription order) into a new array *out of *n entries.
 * Returns 0, FERRY_ESQLITE or FERRY_ENOMEM. App thread. */
int ferry_subscriptions(ferry_db_t *db, ferry_subscription_t **out, size_t *n);

/** Frees an array from ferry_subscriptions. */
void ferry_subscriptions_free(ferry_subscription_t *subs, size_t n);

/** Waits until every stored subscription has synced (a checkpoint carrying it was applied) or
 * has an error from the server. Returns 0, FERRY_ETIMEOUT, or FERRY_ESTATE when not connected
 * and some subscription has not synced. App thread (not a callback). */
int ferry_wait_for_subscriptions(ferry_db_t *db, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
