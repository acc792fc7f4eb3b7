/* rules_int.h -- internals shared by the files of librules
 *
 * The compiled form of a rule set: bucket definitions with their parameter queries and data
 * queries, each query reduced to (a) SQLite SQL text over bound parameters that computes the
 * query's scalar expressions and (b) a small filter tree that the evaluator walks in C to turn
 * those scalars into bucket parameter bindings or lookup keys. Everything here is owned by the
 * rules_set_t and immutable after rules_compile() returns; evaluation state lives in rules_ctx_t.
 */
#ifndef RULES_INT_H
#define RULES_INT_H

#include "rules.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>

/* ---- growable byte buffer (rules_util.c) ---------------------------------------------- */

typedef struct rbuf {
    char *p;
    size_t n, cap;
} rbuf_t;

void rb_reserve(rbuf_t *b, size_t extra);
void rb_put(rbuf_t *b, const char *s, size_t n);
void rb_puts(rbuf_t *b, const char *s);
static inline void rb_putc(rbuf_t *b, char c)
{
    if (b->n + 2 > b->cap) rb_reserve(b, 1);
    b->p[b->n++] = c;
    b->p[b->n] = 0;
}
void rb_printf(rbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rb_free(rbuf_t *b);
/** Append s as an SQL string literal ('…', quotes doubled). */
void rb_sql_str(rbuf_t *b, const char *s);
/**
 * Append, as an SQL string literal, the JSON path of `x -> 'key'` / `x ->> 'key'` with a literal
 * key, as the reference reads it: a key starting with '$' is a path already; otherwise "$.key"
 * without fixed_json_extract (a dotted key walks), "$.\"key\"" with it (one key, escaped).
 * Both compilers use it (rules_compile.c, rules_stream_compile.c).
 */
void rb_sql_json_path(rbuf_t *b, const char *key, int fixed);
/** Append the decimal digits of v. */
void rb_int(rbuf_t *b, int64_t v);
/** NUL-terminated copy of the buffer (malloc'd). */
char *rb_strdup(const rbuf_t *b);

/** malloc/calloc/strdup that abort on failure (rules follows the gateway: OOM is fatal). */
void *rx_malloc(size_t n);
void *rx_calloc(size_t n, size_t m);
void *rx_realloc(void *p, size_t n);
char *rx_strdup(const char *s);
char *rx_strndup(const char *s, size_t n);

/* ---- values --------------------------------------------------------------------------- */

/** A SQLite-typed value; s points into memory owned by someone else (row, scratch, SQLite). */
typedef struct rval {
    int t; /* SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL */
    int64_t i;
    double d;
    const char *s;
    size_t n;
} rval_t;

/** Append s as a JSON string the way JS JSON.stringify writes it. */
void rj_string(rbuf_t *b, const char *s, size_t n);
/** Append a double as JS would print it; integral values get ".0" when dot_zero. */
void rj_double(rbuf_t *b, double d, int dot_zero);
/** Append v as JSON for row data (REAL keeps ".0"; blobs must be filtered by the caller). */
void rj_value(rbuf_t *b, const rval_t *v);
/** Append v as JSON for a bucket id / lookup key (integral REAL without ".0"). */
void rj_key_value(rbuf_t *b, const rval_t *v);
/** Load v from column i of a stepped statement (strings point into SQLite memory). */
void rv_from_column(rval_t *v, sqlite3_stmt *st, int i);
/** Bind v as parameter idx (1-based); SQLITE_STATIC. */
int rv_bind(sqlite3_stmt *st, int idx, const rval_t *v);
/** SQLite truthiness of v (numeric value non-zero). */
int rv_truthy(const rval_t *v);

/** Timestamp format options (from config). */
typedef struct rconv {
    int iso;       /* timestamps_iso8601 */
    int precision; /* sub-second digits in ISO mode: 0, 3, 6 or 9 */
} rconv_t;

/**
 * Convert a Postgres text value of type oid to *out. Unconverted text points into `text`;
 * converted text or blobs are appended to scratch, and then out->s is NULL and out->i is the
 * offset in scratch (scratch->p may move while a row is converted; resolve afterwards).
 */
void rv_from_pg(const rconv_t *cv, uint32_t oid, const char *text, size_t len, rval_t *out,
                rbuf_t *scratch);

/* ---- SQL subset: tokens, AST (rules_sql.c) -------------------------------------------- */

enum { T_EOF, T_IDENT, T_QIDENT, T_NUM, T_STR, T_OP, T_PARAM };

typedef struct rtok {
    int kind;
    int off, len; /* in the SQL text */
    char *text;   /* identifiers and strings: decoded; ops and numbers: as written */
} rtok_t;

typedef enum nkind {
    N_INT,
    N_REAL,
    N_STR,
    N_NULL,
    N_BOOL,
    N_COL,       /* a (qualifier.)column of the FROM table */
    N_BUCKET,    /* bucket.<name> */
    N_REQ,       /* request.user_id() / request.jwt() / request.parameters() */
    N_TOKPARAM,  /* token_parameters.<name> */
    N_USERPARAM, /* user_parameters.<name> */
    N_JEACH,     /* <json_each alias>.<column> */
    N_UNARY,
    N_BINARY,
    N_FUNC,
    N_CAST,
    N_ISNULL,
    N_IN,
    N_INLIST
} nkind_t;

enum { REQ_USER_ID = 1, REQ_JWT = 2, REQ_PARAMS = 3 };

/* dependency bits of an expression */
#define DEP_ROW    1
#define DEP_REQ    2
#define DEP_BUCKET 4

typedef struct rnode rnode_t;
struct rnode {
    nkind_t kind;
    int off;    /* offset of the token that names the node, in the SQL text */
    int end;    /* offset just after the node's last token */
    char *op;   /* operator as SQLite spells it ("=", "AND", "->>", "IS NOT", ...) */
    char *name; /* column / parameter / function name, cast type */
    char *qual; /* qualifier of a column ("t" in t.col), or NULL */
    char *text; /* literal text (number as written, decoded string) */
    int req;    /* REQ_* for N_REQ */
    int neg;    /* NOT IN / IS NOT NULL */
    rnode_t *a, *b;
    rnode_t **args;
    int nargs;
    int deps; /* DEP_* bits, computed by the compiler */
};

typedef struct rsel_item {
    rnode_t *expr; /* NULL for "*" */
    char *alias;   /* NULL when none */
    int off;       /* offset of the item */
} rsel_item_t;

typedef struct rselect {
    rsel_item_t *items;
    int nitems;
    int has_from;
    int from_off;
    char *schema; /* NULL: default */
    char *table;  /* may end in '%' */
    int table_quoted;
    char *alias;            /* AS alias, or NULL */
    rnode_t *json_each_arg; /* FROM json_each(<arg>) */
    rnode_t *where;
} rselect_t;

/** Kind of query being parsed, for messages. */
enum { Q_DATA, Q_PARAM };

/**
 * Parse one query of the subset. On error returns NULL and fills *err_off and err (a message).
 * The result and its nodes are allocated in a list freed by rsql_free().
 */
typedef struct rsql rsql_t;
rsql_t *rsql_parse(const char *sql, int qkind, int *err_off, char *err, size_t errlen);
rselect_t *rsql_select(rsql_t *q);
void rsql_free(rsql_t *q);

/** Levenshtein distance of two short strings (for "did you mean"). */
int rsql_distance(const char *a, const char *b);

/* ---- compiled rule set ---------------------------------------------------------------- */

/** Source of one scalar on the row side: a plain column, or a result column of the SQL. */
typedef struct rslot {
    int col; /* >= 0: index into q->cols (fast path); -1: SQL result column sqlcol */
    int sqlcol;
} rslot_t;

typedef enum fkind {
    F_TRUE,
    F_AND,
    F_OR,
    F_PRED,      /* row-only predicate: slot truthy */
    F_EQ,        /* param/key slot `p` = row value slot */
    F_IN_ROWARR, /* param/key slot `p` IN JSON array row value */
    F_IN_REQARR, /* lookups: row value = one element of the expanding request array (NULL too) */
} fkind_t;

typedef struct rfilt rfilt_t;
struct rfilt {
    fkind_t kind;
    int p;     /* bucket parameter index (data) or lookup input index (lookup) */
    rslot_t v; /* row-side value */
    rfilt_t **k;
    int nk;
};

typedef struct rout {
    char *name;
    int star;     /* "*": every row column not starting with "_" */
    rslot_t v;    /* data queries and row-derived lookup outputs */
    int from_req; /* lookup outputs computed from the request: request SQL column reqcol */
    int reqcol;
} rout_t;

typedef struct rdef rdef_t;

/** Row-side part shared by data queries and table-lookup parameter queries. */
typedef struct rrowq {
    char *schema, *table; /* table may end in '%' */
    int prefix;           /* table is a prefix pattern */
    char **cols;          /* referenced columns of the row */
    int ncols;
    char *sql; /* SELECT over ?1..?ncols, NULL when everything is a plain column */
    int nsql;  /* result columns of sql */
    int stmt;  /* index of sql in the set's statement table */
    rfilt_t *filt;
    rout_t *outs;
    int nouts;
} rrowq_t;

typedef struct rdataq {
    rdef_t *def;
    int index;
    const char *src; /* SQL as written */
    char *out_table; /* alias, or NULL: the row's table name */
    int id_out;      /* index of the "id" output, or -1 ("*" provides it) */
    rrowq_t r;
} rdataq_t;

enum { PQ_STATIC, PQ_JSON_EACH, PQ_LOOKUP };

typedef struct rparamq {
    rdef_t *def;
    int index;
    int kind;
    const char *src;
    char **names; /* output column names, in query order */
    int nnames;
    int *param_of; /* names[i] -> definition parameter index, -1 for _priority */
    int prio_out;  /* index of _priority among outputs, -1 */
    /* PQ_STATIC, PQ_JSON_EACH: one request-side SQL statement producing the outputs */
    /* PQ_LOOKUP: request-side SQL produces the lookup inputs, request outputs, predicates */
    char *req_sql;
    int req_stmt;
    int ninputs;      /* lookup inputs (first ninputs columns of req_sql) */
    int expand_input; /* index of the input that is an array to expand, -1 */
    int req_pred_col; /* column holding the AND of request-only predicates, -1 */
    rrowq_t r;        /* PQ_LOOKUP row side */
    int dangerous;    /* parameters come only from client-supplied values */
} rparamq_t;

struct rdef {
    char *name;
    int priority; /* 0..3 */
    int has_priority_key;
    int accept_dangerous;
    char **params; /* bucket parameter names, in the first query's output order */
    int nparams;
    rparamq_t **pq;
    int npq;
    rdataq_t **dq;
    int ndq;
};

typedef struct rctx rctx_t;

struct rules_set {
    int refs; /* atomic */
    int edition;
    rconv_t conv;
    int fixed_json_extract;
    char *file;
    char *text; /* copy of the YAML (queries point into per-query copies) */
    rdef_t **defs;
    int ndefs;
    rdataq_t **dqs; /* all data queries, file order */
    int ndqs;
    rparamq_t **lqs; /* all table-lookup parameter queries */
    int nlqs;
    char **stmts; /* SQL of every statement, indexed by rrowq_t.stmt / req_stmt */
    int nstmts, capstmts;
    rules_table_t *tables;
    size_t ntables;
    rules_write_rule_t *writes;
    size_t nwrites;
    rules_constraint_t *constraints;
    size_t nconstraints;
    void **owned; /* extra allocations to free with the set */
    size_t nowned, capowned;
    struct splan *splan; /* Sync Streams (rules_stream.h), NULL when the file has none */
    pthread_mutex_t pool_lock;
    rctx_t *pool; /* idle evaluation contexts */
};

/** Keep p until the set is freed; returns p. */
void *rset_own(rules_set_t *set, void *p);

/* ---- diagnostics (rules_compile.c) ---------------------------------------------------- */

void rdiag_add(rules_diags_t *d, int warning, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ---- evaluation contexts (rules_eval.c) ----------------------------------------------- */

/** A private SQLite connection with lazily prepared statements and scratch buffers; one per
 * concurrent evaluation, pooled by the set. */
struct rctx {
    rctx_t *next;
    sqlite3 *db;
    sqlite3_stmt **st;
    int nst;
    rval_t *vals; /* converted row values */
    size_t capvals;
    rbuf_t scratch; /* converted text of the row */
    rbuf_t json, key, tmp;
    json_t **hold; /* parsed JSON kept alive while its strings are in use */
    size_t nhold, caphold;
    char **strs; /* malloc'd strings kept alive likewise */
    void *md;    /* EVP_MD_CTX reused for op checksums */
    size_t nstrs, capstrs;
};

/** Borrow a context of set (NULL when SQLite cannot open one); give it back with rctx_put. */
rctx_t *rctx_get(rules_set_t *set);
void rctx_put(rules_set_t *set, rctx_t *c);
/** Drop the JSON documents and strings held for the current evaluation. */
void rctx_release_holds(rctx_t *c);
/** Keep j (a reference is taken over) / s (malloc'd, taken over) until rctx_release_holds. */
void rctx_hold_json(rctx_t *c, json_t *j);
const char *rctx_hold_str(rctx_t *c, char *s);
/** Fill err once (later calls keep the first error). */
void rctx_seterr(rules_error_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** Statement idx of the set's table, prepared on first use; NULL with err filled. */
sqlite3_stmt *rctx_stmt(rules_set_t *set, rctx_t *c, int idx, rules_error_t *err);
/** A JSON value as SQLite's json_each would give it (strings point into j or held copies). */
void rctx_rv_from_json(rctx_t *c, json_t *j, rval_t *v);
/** Parse v as a JSON array (held by c); NULL when it is not one. */
json_t *rctx_json_array(rctx_t *c, const rval_t *v);
/** Convert row's pgoutput text values into c->vals. */
void rctx_convert_row(rules_set_t *set, rctx_t *c, const rules_row_t *row);
/** Append s as a SQLite statement of set; returns its index. Takes s over. */
int rset_add_stmt(rules_set_t *set, char *sql);

/**
 * The buckets of one request while they are computed: [0] from queriers that need no parameter
 * index (the reference's "static" buckets), [1] from those that do ("dynamic"). Each list merges
 * its duplicates (highest priority wins, reasons add up); racc_finish() then lets a dynamic
 * bucket replace a static one of the same id in place, as the PowerSync service does.
 */
typedef struct racc {
    rules_bucket_t *v[2];
    size_t *seq[2]; /* order of first appearance, kept in the result */
    size_t n[2], cap[2];
    size_t max, next;
    uint32_t *idx[2]; /* open addressing over v[k] by id: index + 1, 0 empty (icap a power of 2) */
    size_t icap[2];
} racc_t;

/** Add a bucket (id copied); RULES_ELIMIT (err filled) past max buckets. */
int racc_add(racc_t *a, int dynamic, const char *id, int priority, const char *definition,
             int query_index, const char *query, int reason, rules_error_t *err);
/** Move the buckets into out (static first, dynamic ones replacing equal ids). */
void racc_finish(racc_t *a, rules_buckets_t *out);
void racc_free(racc_t *a);

/* ---- SQL functions and checksums (rules_func.c, rules_util.c) ------------------------- */

/** Register Ferry's extra SQL functions (base64, uuid_blob, json_keys, st_*) on db. */
int rfunc_register(sqlite3 *db);

/** Op checksum over the concatenated parts; evp_ctx is a reusable EVP_MD_CTX or NULL. */
uint32_t rchecksum_parts(void *evp_ctx, const char *const *parts, const size_t *lens, int n);

/* ---- write rules (rules_write.c) ------------------------------------------------------ */

/** Position mapper for a YAML scalar: offset in its value -> line/col. */
typedef struct rposmap {
    const char *text; /* whole file */
    size_t len;
    size_t start;      /* start_mark.index of the scalar node */
    int style;         /* yaml_scalar_style_t */
    const char *value; /* the scalar's value */
} rposmap_t;

void rpos_map(const rposmap_t *m, int off, int *line, int *col);

/**
 * Rewrite one Postgres SQL fragment of a write rule or constraint. cols (ncols) are the columns
 * new.<c>/old.<c> may name; allow_new/allow_old say which rows exist. On success returns a
 * malloc'd SQL text with references replaced by "new"."c", "old"."c" and $n (binds appended to
 * kinds/nkinds, reused when repeated); on error NULL with *err_off and err set.
 */
char *rwrite_rewrite(const char *sql, const char *const *cols, size_t ncols, int allow_new,
                     int allow_old, rules_bind_kind_t *kinds, int *nkinds, int *used_new,
                     int *used_old, int *err_off, char *err, size_t errlen);

#endif
