/* rules.h -- sync rules and write rules: compile a YAML file, evaluate rows and requests
 *
 * librules is a leaf library (libyaml, SQLite, jansson, libcrypto; no h2o, no libpq, no
 * logging). It compiles a PowerSync-compatible sync-rules file (`bucket_definitions`, editions
 * 1 and 2) plus Ferry's `write_rules` and `constraints` into an immutable, reference-counted
 * rule set, and answers three pure questions about it:
 *
 *   rules_eval_row()      row of table T       -> [(bucket id, object_type, object_id, data)]
 *   rules_eval_lookups()  row of table T       -> parameter-lookup entries (key -> params)
 *   rules_eval_request()  claims + parameters  -> [(bucket id, priority, definition)]
 *
 * Expressions are evaluated by SQLite itself (prepared statements in private in-memory
 * databases, every value bound as a parameter), so functions, operators, NULL rules, casts,
 * `->`/`->>` and json_each behave exactly as on the client. Plain column references skip SQLite.
 *
 * Thread safety: a compiled rule set is immutable. Any number of threads may evaluate one set
 * concurrently; each call borrows a private evaluation context (SQLite connection and its
 * prepared statements) from a pool inside the set and returns it before it returns.
 *
 * Row text contract. Values are the text form pgoutput (or a plain text-mode query) sends,
 * produced on a connection with these session settings pinned, which the gateway sets on every
 * Postgres connection:
 *     TimeZone=UTC  DateStyle=ISO  IntervalStyle=postgres  extra_float_digits=3
 *     bytea_output=hex
 * Conversion follows the PowerSync service (see rules/README.md, "Value conversion"): int2/4/8
 * and oid become INTEGER (int8 exact), float4/8 REAL, numeric TEXT, bool 1/0, json/jsonb raw
 * TEXT, bytea a BLOB (dropped from row data), arrays JSON text, timestamps in the legacy or
 * ISO 8601 format chosen by the file's config, everything else TEXT as printed.
 *
 * Errors: functions return 0 or a negative RULES_E* code. Compile problems are returned as a
 * list of diagnostics, each "file:line:col: message" pointing at the offending token in the
 * YAML file; evaluation problems fill an optional rules_error_t.
 */
#ifndef RULES_H
#define RULES_H

#include <stddef.h>
#include <stdint.h>

/* Error codes (negative; 0 is success). Values are stable. */
#define RULES_OK       0
#define RULES_ENOMEM   (-1) /* out of memory */
#define RULES_EINVAL   (-2) /* invalid argument (e.g. malformed claims JSON) */
#define RULES_ECOMPILE (-3) /* the rules file has errors; see the diagnostics */
#define RULES_EIO      (-4) /* could not read the rules file */
#define RULES_EEVAL    (-5) /* SQLite could not evaluate an expression */
#define RULES_ELOOKUP  (-6) /* the lookup callback failed */
#define RULES_ELIMIT   (-7) /* too many buckets or parameter rows for one request */

/**
 * Version of what the library computes from a rules file (bucket ids, row data, lookup keys).
 * The gateway mixes it into the hash of the rules, so an upgrade that changes these outputs
 * builds the rules again as a new rule version instead of mixing old and new outputs.
 */
#define RULES_ENGINE_VERSION 3

/** Static one-line description of a RULES_E* code ("out of memory"). */
const char *rules_strerror(int code);

/** Detail of a failed evaluation call: the code and a message in PostgreSQL style. */
typedef struct rules_error {
    int code;
    char message[256];
} rules_error_t;

/* ---- compiling ------------------------------------------------------------------------ */

/** One compile error or warning; `file` is the name given to the compiler. */
typedef struct rules_diag {
    int is_warning;
    int line, col; /* 1-based; 0 when the problem has no position (e.g. unreadable file) */
    char *message; /* e.g. unknown function "uper" (did you mean "upper"?) */
} rules_diag_t;

/** The diagnostics of one compile; owned by the caller, release with rules_diags_free(). */
typedef struct rules_diags {
    char *file;
    rules_diag_t *items;
    size_t n;
    size_t nerrors, nwarnings;
} rules_diags_t;

/** Release the memory of *d (not d itself) and zero it; NULL is fine. */
void rules_diags_free(rules_diags_t *d);

/** Format item i as "file:line:col: message" (with "warning: " before warnings) into buf. */
const char *rules_diag_format(const rules_diags_t *d, size_t i, char *buf, size_t len);

typedef struct rules_set rules_set_t;

/**
 * Compile the rules in text[0..len) (`file` names it in diagnostics). On success *out is a new
 * set with one reference (release with rules_unref) and returns 0; warnings may still be in
 * *diags. On RULES_ECOMPILE *out is NULL and *diags holds at least one error. diags may be
 * NULL when the caller does not want them; it must be released with rules_diags_free() otherwise.
 */
int rules_compile(const char *text, size_t len, const char *file, rules_set_t **out,
                  rules_diags_t *diags);

/** Read the file at path and rules_compile() it; RULES_EIO (with a diagnostic) if unreadable. */
int rules_compile_file(const char *path, rules_set_t **out, rules_diags_t *diags);

/** Take one more reference to set; returns set. */
rules_set_t *rules_ref(rules_set_t *set);

/** Drop one reference; the last one frees the set and its evaluation contexts. NULL is fine. */
void rules_unref(rules_set_t *set);

/** Edition of the file (1, 2 or 3) after applying config: defaults. */
int rules_edition(const rules_set_t *set);

/**
 * Look for write rules that let a user write into other users' buckets (rules_lint.c): a
 * writable column that a data query matches against a bucket parameter (or a stream partitions
 * its rows by), or that a table-lookup parameter query (or a stream's lookup: subquery, JOIN,
 * CTE) reads, while the table's "check" does not mention new.<column>. Appends one
 * warning per such column to *diags (which must hold the diagnostics of set's compile, or be
 * zeroed with its file set), pointing at the column in "columns". Returns how many it added.
 */
size_t rules_lint(const rules_set_t *set, rules_diags_t *diags);

/* ---- referenced tables ------------------------------------------------------------------ */

#define RULES_USE_DATA   1 /* read by a data query */
#define RULES_USE_LOOKUP 2 /* read by a table-lookup parameter query */
#define RULES_USE_WRITE  4 /* has write rules */

/** One table the rules reference; `name` ends in '%' for a prefix pattern. Owned by the set. */
typedef struct rules_table {
    const char *schema;
    const char *name;
    int uses; /* RULES_USE_* bits */
} rules_table_t;

/** Number of distinct tables the set references (for the publication check, the snapshot). */
size_t rules_table_count(const rules_set_t *set);

/** Table i (0 <= i < rules_table_count()); the pointer lives as long as the set. */
const rules_table_t *rules_table_at(const rules_set_t *set, size_t i);

/** What rules_each_column() reports: a column of schema.table that `where` names. */
typedef void (*rules_column_fn)(void *ud, const char *schema, const char *table, const char *column,
                                const char *where);

/**
 * Call fn for every column the set names of a table: data and table-lookup parameter queries of
 * bucket definitions (not prefix patterns, not Sync Streams) and write rules; a column may be
 * reported more than once. For `ferry rules check --db`.
 */
void rules_each_column(const rules_set_t *set, rules_column_fn fn, void *ud);

/* ---- evaluating rows -------------------------------------------------------------------- */

/**
 * One replicated row in pgoutput text form. names/types/values have ncols entries; values[i]
 * is NULL for SQL NULL; lens may be NULL (values are then NUL-terminated). types are Postgres
 * type OIDs (0 = unknown, treated as text). Nothing is retained after the call.
 */
typedef struct rules_row {
    const char *schema; /* NULL means "public" */
    const char *table;
    size_t ncols;
    const char *const *names;
    const uint32_t *types;
    const char *const *values;
    const size_t *lens;
} rules_row_t;

/** Most bucket parameters one definition may have. */
#define RULES_MAX_PARAMS 8

/** One output of a data query for one bucket. Strings are NUL-terminated, owned by the list
 * (one allocation per op: never free them individually, use rules_ops_free). */
typedef struct rules_op {
    char *bucket;      /* "<version>#name[params]" (no prefix when version is NULL) */
    char *object_type; /* output table name */
    char *object_id;   /* text of the output "id" ("" when absent) */
    char *data;        /* row JSON object in output-column order, as sent to clients */
    size_t data_len;
    uint32_t checksum;      /* rules_checksum_put(object_type, object_id, data) */
    const char *definition; /* bucket definition name; owned by the set */
} rules_op_t;

/** A growable list of ops; zero-initialise, release with rules_ops_free(). */
typedef struct rules_ops {
    rules_op_t *items;
    size_t n, cap;
} rules_ops_t;

/** Release all items of *ops and zero it; NULL is fine. */
void rules_ops_free(rules_ops_t *ops);

/**
 * Evaluate every data query of set that reads row->table and append one op per (bucket, output
 * row) to *out (duplicates within one call are merged: the same bucket, type and id appear
 * once, the last query wins). version is the rule version put before '#' in bucket ids (NULL:
 * no prefix). Returns 0, RULES_ENOMEM, or RULES_EEVAL when SQLite failed on some query (err
 * names the table and SQLite's message; the other queries were still evaluated and their ops
 * are in *out). Free *out with rules_ops_free() in every case.
 */
int rules_eval_row(rules_set_t *set, const char *version, const rules_row_t *row, rules_ops_t *out,
                   rules_error_t *err);

/** One parameter-lookup entry: key (see rules_eval_request) -> one output parameter row. */
typedef struct rules_lookup {
    char *key;    /* e.g. org_data/0["u1"]: definition, query index, JSON array of values */
    char *params; /* JSON object of the row-derived output columns, e.g. {"org_id":"o1"} */
    const char *definition; /* owned by the set */
} rules_lookup_t;

/** A growable list of lookup entries; zero-initialise, release with rules_lookups_free(). */
typedef struct rules_lookups {
    rules_lookup_t *items;
    size_t n, cap;
} rules_lookups_t;

/** Release all items of *l and zero it; NULL is fine. */
void rules_lookups_free(rules_lookups_t *l);

/**
 * Evaluate every table-lookup parameter query that reads row->table and append its entries to
 * *out. The storage keeps, per source row, the latest list and answers rules_eval_request()'s
 * lookups from the union over rows. Returns 0, RULES_ENOMEM or RULES_EEVAL.
 */
int rules_eval_lookups(rules_set_t *set, const rules_row_t *row, rules_lookups_t *out,
                       rules_error_t *err);

/* ---- evaluating requests ---------------------------------------------------------------- */

/** Answers of one lookup: the callback appends each stored params JSON with rules_answer_add. */
typedef struct rules_answer rules_answer_t;

/** Append a copy of params_json (a JSON object from rules_lookup_t.params); 0 or RULES_ENOMEM. */
int rules_answer_add(rules_answer_t *ans, const char *params_json);

/**
 * Lookup callback: append to ans every params JSON stored under key (exact string match) and
 * return 0; return a negative value to fail the request (RULES_ELOOKUP is reported).
 */
typedef int (*rules_lookup_fn)(void *arg, const char *key, rules_answer_t *ans);

/** One Sync Streams subscription of a request (`streams.subscriptions[i]`). */
typedef struct rules_subscription {
    const char *stream;      /* stream name as the client wrote it */
    const char *params_json; /* JSON object text; NULL means {} */
    int override_priority;   /* 0..3, or -1 to keep the stream's priority */
} rules_subscription_t;

/** A request: JWT claims (JSON object text), client parameters (JSON object text or NULL). */
typedef struct rules_request {
    const char *claims_json;
    const char *params_json;
    rules_lookup_fn lookup; /* NULL: table-lookup queries are reported as unresolved */
    void *lookup_arg;
    size_t max_buckets;               /* 0 means 1000 */
    const rules_subscription_t *subs; /* explicit stream subscriptions, in request order */
    size_t nsubs;
    int exclude_defaults; /* `streams.include_defaults: false`: no default streams, and no
                             bucket definitions (they count as default streams) */
} rules_request_t;

/** Why a bucket is included: RULES_REASON_DEFAULT, or the index of a subscription in subs. */
#define RULES_REASON_DEFAULT (-1)

/** One bucket of a request. Strings owned by the list except definition/query (by the set). */
typedef struct rules_bucket {
    char *bucket;           /* "<version>#name[params]" */
    int priority;           /* 0..3, highest priority (lowest number) of its producers */
    const char *definition; /* bucket definition or stream name (of the first producer) */
    int query_index;        /* which parameter query (or stream query) produced it (first wins) */
    const char *query;      /* that query's SQL text as written */
    int *reasons;           /* RULES_REASON_DEFAULT or subscription indexes, in order */
    size_t nreasons;
} rules_bucket_t;

/** A subscription (or a default subscription) that could not be resolved. */
typedef struct rules_stream_error {
    char *stream;     /* the stream name as requested */
    int subscription; /* index in rules_request_t.subs, or -1 for the default subscription */
    char *message;    /* PostgreSQL style */
} rules_stream_error_t;

/** A stream (or bucket definition) the request is subscribed to, for the checkpoint line. */
typedef struct rules_stream_ref {
    const char *name; /* owned by the set */
    int is_default;   /* auto_subscribe stream, or a bucket definition */
} rules_stream_ref_t;

/** One table-lookup query that could not be answered because no callback was given. */
typedef struct rules_unresolved {
    const char *definition, *query; /* owned by the set */
    int query_index;
    char *key; /* the lookup key that would have been asked for */
} rules_unresolved_t;

/** The result of rules_eval_request(); zero-initialise, release with rules_buckets_free(). */
typedef struct rules_buckets {
    rules_bucket_t *items;
    size_t n, cap;
    rules_unresolved_t *unresolved;
    size_t nunresolved, capunresolved;
    rules_stream_ref_t *streams; /* subscribed streams in definition order (checkpoint) */
    size_t nstreams;
    rules_stream_error_t *errors; /* per subscription; unknown streams are errors too */
    size_t nerrors;
} rules_buckets_t;

/** Release *b's items and zero it; NULL is fine. */
void rules_buckets_free(rules_buckets_t *b);

/**
 * Compute the buckets of one request: run every parameter query of the bucket definitions
 * (static, json_each, table lookup through req->lookup) and every querier of the streams the
 * request subscribes to (default streams unless exclude_defaults, and req->subs), form bucket
 * ids with version as prefix, merge duplicates (highest priority wins, reasons add up) and
 * append to *out in definition order. A subscription to an unknown stream, with parameters that
 * are not a JSON object, or whose evaluation fails, becomes an entry of out->errors, not a
 * failure. Returns 0; RULES_EINVAL when the claims or parameters are not JSON objects;
 * RULES_ELOOKUP when the callback failed; RULES_ELIMIT when more than max_buckets result (err
 * names the definition); RULES_EEVAL; RULES_ENOMEM.
 */
int rules_eval_request(rules_set_t *set, const char *version, const rules_request_t *req,
                       rules_buckets_t *out, rules_error_t *err);

/* ---- checksums, ids ------------------------------------------------------------------- */

/** Op checksum of a PUT: first 4 bytes of SHA-256("put.<type>.<id>.<data>"), little-endian. */
uint32_t rules_checksum_put(const char *object_type, const char *object_id, const char *data,
                            size_t data_len);

/** Op checksum of a REMOVE: first 4 bytes of SHA-256("delete.<subkey>"), little-endian. */
uint32_t rules_checksum_delete(const char *subkey);

/* ---- write rules ------------------------------------------------------------------------ */

/** What a positional parameter of a compiled write statement must be bound to. */
typedef enum rules_bind_kind {
    RULES_BIND_NEW_ROW_JSONB = 1, /* the new row as jsonb (keys = column names) */
    RULES_BIND_OLD_ROW_JSONB,     /* the stored row as jsonb */
    RULES_BIND_USER_ID,           /* text: the token's sub */
    RULES_BIND_JWT_JSONB,         /* jsonb: the token's claims */
    RULES_BIND_PARAMS_JSONB,      /* jsonb: the client parameters ({} when none) */
} rules_bind_kind_t;

/**
 * A compiled Postgres statement: sql uses $1..$nbinds, and binds[i] says what $i+1 is. The
 * statement returns one row with one boolean column (NULL counts as false). file/line/col
 * point at the source in the rules file, for errors Postgres reports when it is prepared.
 */
typedef struct rules_pg_stmt {
    const char *sql;
    const rules_bind_kind_t *binds;
    int nbinds;
    int line, col;
} rules_pg_stmt_t;

#define RULES_OP_INSERT 1
#define RULES_OP_UPDATE 2
#define RULES_OP_DELETE 4

/** How write-back merges a sent column with the stored row (a write rule's `merge:`). */
typedef enum rules_merge {
    RULES_MERGE_CLIENT_WINS = 0,        /* the sent value is written (the default) */
    RULES_MERGE_SERVER_WINS_IF_CHANGED, /* written only if the stored value still equals `old` */
    RULES_MERGE_LWW,                    /* the later of the op's and the column's timestamps */
    RULES_MERGE_ADD,                    /* stored + (sent - old): counters */
    RULES_MERGE_MAX,                    /* the greater of stored and sent */
    RULES_MERGE_MIN,                    /* the smaller of stored and sent */
    RULES_MERGE_N
} rules_merge_t;

/** The name of strategy m as written in the rules ("client_wins", …); "?" when out of range. */
const char *rules_merge_name(rules_merge_t m);

/** Where the op timestamp of `lww` columns comes from (a write rule's `lww_timestamp:`). */
typedef enum rules_ts_source {
    RULES_TS_NONE = 0,
    RULES_TS_METADATA, /* a field of the op's `metadata` string parsed as a JSON object */
    RULES_TS_COLUMN,   /* a column of the op's data (compared in that column's type) */
} rules_ts_source_t;

/** What write-back does with a sent column the write rule does not list. */
typedef enum rules_unknown_columns {
    RULES_UNKNOWN_REJECT = 0, /* the op is rejected, naming the column (the default) */
    RULES_UNKNOWN_IGNORE,     /* the column is dropped from the op, the rest applies */
} rules_unknown_columns_t;

/** The write rules of one table; owned by the set. check/check_old have sql NULL if absent. */
typedef struct rules_write_rule {
    const char *schema, *table;
    int operations;             /* RULES_OP_* bits */
    const char *const *columns; /* writable columns (always includes "id") */
    size_t ncolumns;
    const rules_merge_t
        *merge;    /* strategy per column (parallel to columns); NULL: all client_wins */
    int merge_lww; /* some column uses lww */
    rules_ts_source_t ts_source; /* lww_timestamp: where an op's timestamp comes from */
    const char *ts_name;         /* the metadata field or column; NULL when ts_source is NONE */
    rules_unknown_columns_t unknown_columns;
    const char *lww_column;    /* NULL when absent */
    rules_pg_stmt_t check;     /* "allowed?" over the new row: insert and update */
    rules_pg_stmt_t check_old; /* "allowed?" over the stored row: update and delete */
    /* check and check_old as bare expressions for a caller's own statement: rows "new" and
     * "old" are the caller's aliases, and request values fixed parameters: $3 the user id
     * (text), $4 the claims (jsonb), $5 the client parameters (jsonb); $1 and $2 are the
     * caller's. NULL when absent. */
    const char *check_expr, *check_old_expr;
} rules_write_rule_t;

/** A named constraint: stmt returns true when the new row violates it. Owned by the set. */
typedef struct rules_constraint {
    const char *name, *schema, *table, *message;
    long expire_after; /* seconds after which an open violation expires; 0: never */
    rules_pg_stmt_t stmt;
} rules_constraint_t;

/** Number of tables with write rules; a table without write rules accepts no writes. */
size_t rules_write_count(const rules_set_t *set);

/** Write rule i, in file order. */
const rules_write_rule_t *rules_write_at(const rules_set_t *set, size_t i);

/** The write rule of schema.table (schema NULL = "public"), NULL when writes are not allowed. */
const rules_write_rule_t *rules_write_find(const rules_set_t *set, const char *schema,
                                           const char *table);

/** Number of constraints. */
size_t rules_constraint_count(const rules_set_t *set);

/** Constraint i, in file order. */
const rules_constraint_t *rules_constraint_at(const rules_set_t *set, size_t i);

/* ---- introspection (for `ferry rules explain`) ---------------------------------------------- */

/** Number of bucket sources: bucket definitions, then streams. */
size_t rules_definition_count(const rules_set_t *set);

/** Name of bucket source i (bucket definitions in file order, then streams). */
const char *rules_definition_name(const rules_set_t *set, size_t i);

/** One Sync Stream of the set. Strings owned by the set. */
typedef struct rules_stream_info {
    const char *name;
    int priority;          /* 0..3 */
    int auto_subscribe;    /* a default stream */
    int edition3;          /* compiled by the edition-3 compiler (else the alpha parser) */
    size_t nbuckets;       /* bucket kinds (queriers) it resolves to */
    int uses_subscription; /* reads subscription parameters */
} rules_stream_info_t;

/** Number of streams. */
size_t rules_stream_count(const rules_set_t *set);

/** Stream i (file order) into *out; returns 0, or -1 when i is out of range. */
int rules_stream_at(const rules_set_t *set, size_t i, rules_stream_info_t *out);

/** Name of the bucket kind j of stream i (e.g. "todos|0"), NULL when out of range. */
const char *rules_stream_bucket(const rules_set_t *set, size_t i, size_t j);

/**
 * What bucket kind j of stream i is keyed by, as one line of text: the query it comes from, the
 * tables whose rows it holds, where each parameter value comes from (request expressions quoted
 * from the query, parameter-index lookups) and the request conditions, e.g.
 * `todos|0 from query 0: rows of todos by list_id = subscription.parameter('list_id') and
 * lookup 0; lookup 0: id from lists where owner_id = auth.user_id()`. Returns a malloc'd string
 * (the caller frees it), NULL when out of range.
 */
char *rules_stream_describe(const rules_set_t *set, size_t i, size_t j);

#endif
