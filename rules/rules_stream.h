/* rules_stream.h -- Sync Streams inside librules: SQL AST, compiled plan, evaluation
 *
 * Sync Streams (`streams:` in a sync config) are compiled in three steps, each in its own file:
 *
 *   rules_stream_parse.c    the stream SQL (a Postgres SELECT with joins, subqueries, CTEs) into
 *                           an AST (sx_t, ssel_t) whose nodes remember their source text
 *   rules_stream_compile.c  edition 3: the AST into expressions over result sets (sexpr_t), the
 *                           WHERE clause into a disjunction of conjunctions, each conjunction
 *                           into a querier graph: a row evaluator (which bucket a row of the
 *                           selected table goes to), point lookups (parameter indexes built from
 *                           rows of the other tables) and a resolver (from a request to bucket
 *                           parameters through those lookups), de-duplicated and named as the
 *                           PowerSync reference compiler names them (`stream|N`)
 *   rules_stream_alpha.c    editions 1-2: the older "alpha" stream form into the same plan
 *   rules_stream_eval.c     rows -> ops, rows -> lookup entries, requests -> buckets
 *
 * Everything here is owned by the rules_set_t (allocated from its arena) and immutable after
 * rules_compile() returns. Locations are byte offsets into one source text (a YAML scalar),
 * mapped to file positions through the text's rposmap_t.
 */
#ifndef RULES_STREAM_H
#define RULES_STREAM_H

#include "rules_int.h"

/* ---- arena: allocations freed together (rules_stream_parse.c) ------------------------- */

typedef struct rablk rablk_t;
typedef struct rarena {
    rablk_t *head;
} rarena_t;

/** Zeroed memory that lives until ra_free(); aborts on OOM. */
void *ra_alloc(rarena_t *a, size_t n);
char *ra_strndup(rarena_t *a, const char *s, size_t n);
char *ra_strdup(rarena_t *a, const char *s);
char *ra_printf(rarena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ra_free(rarena_t *a);

/* ---- source texts and diagnostics ----------------------------------------------------- */

/** One query text (a YAML scalar): its text and how offsets map to the file. */
typedef struct ssrc {
    rposmap_t pm;
    const char *text;
} ssrc_t;

/* ---- AST ------------------------------------------------------------------------------ */

typedef enum sxkind {
    SX_NULL = 1,
    SX_BOOL,
    SX_STR,
    SX_INT,
    SX_NUM,
    SX_REF,    /* [qual.]name; name "*" for a star */
    SX_CALL,   /* [qual.]name(args) */
    SX_BIN,    /* a op b: = != < > <= >= AND OR IN "NOT IN" && || + - * / % & | << >> LIKE ... */
    SX_UN,     /* op a: NOT, -, +, "IS NULL", "IS NOT NULL", "IS TRUE", ... */
    SX_CAST,   /* CAST(a AS name), a::name */
    SX_TERN,   /* a [NOT] BETWEEN b AND c */
    SX_CASE,   /* CASE [a] WHEN args[2i] THEN args[2i+1] ... [ELSE b] END */
    SX_MEMBER, /* a -> 'k', a ->> 1: op, text (string key) or ival (index) */
    SX_SELECT, /* (SELECT ...) */
    SX_ARRAY,  /* ARRAY[args] */
    SX_LIST,   /* (a, b, ...) */
    SX_PARAM   /* $1 */
} sxkind_t;

typedef struct sx sx_t;
typedef struct ssel ssel_t;

struct sx {
    sxkind_t k;
    const ssrc_t *src;
    int off, end;     /* location in src->text */
    const char *op;   /* SX_BIN, SX_UN, SX_MEMBER, SX_TERN ("BETWEEN"/"NOT BETWEEN") */
    const char *name; /* SX_REF column, SX_CALL function, SX_CAST type (lower case) */
    const char *qual; /* SX_REF table, SX_CALL schema, or NULL */
    int qual_off;     /* location of the qualifier */
    const char *text; /* SX_STR value, SX_INT/SX_NUM digits as written, SX_MEMBER key */
    int ival;         /* SX_BOOL, SX_MEMBER index (text NULL) */
    int is_index;     /* SX_MEMBER: member is an integer */
    sx_t *a, *b, *c;
    sx_t **args; /* SX_CALL arguments, SX_ARRAY/SX_LIST items, SX_CASE when/then pairs */
    int nargs;
    int call_extra; /* SX_CALL: DISTINCT, ORDER BY, FILTER or OVER was given */
    ssel_t *sel;    /* SX_SELECT */
};

typedef struct scol {
    sx_t *expr; /* SX_REF with name "*" for a star */
    const char *alias;
    int off, end;
} scol_t;

enum { SF_TABLE = 1, SF_CALL, SF_STMT };
enum { SJ_NONE = 0, SJ_INNER, SJ_OTHER };

typedef struct sfrom {
    int kind;
    const ssrc_t *src;
    int off, end;
    const char *schema, *name; /* SF_TABLE (name may end in '%') */
    const char *alias;
    sx_t *call;            /* SF_CALL: the function call */
    ssel_t *stmt;          /* SF_STMT */
    const char **colnames; /* SF_STMT: AS alias(c1, c2) */
    int ncolnames;
    int join;              /* SJ_*: how this item is joined to the previous one */
    const char *join_name; /* "LEFT JOIN", ... for messages */
    int join_off;
    sx_t *on;
    int using_off; /* >= 0 when USING (...) was given */
} sfrom_t;

struct ssel {
    const ssrc_t *src;
    int off, end;
    scol_t *cols;
    int ncols;
    sfrom_t *from;
    int nfrom;
    sx_t *where;
    /* clauses streams do not support: offset of the keyword, -1 when absent */
    int distinct_off, group_off, having_off, order_off, limit_off, offset_off, for_off;
};

/**
 * Parse one statement of src. On a syntax error returns NULL and sets *err_off and err. Nodes
 * live in arena.
 */
ssel_t *sparse_select(rarena_t *arena, const ssrc_t *src, int *err_off, char *err, size_t errlen);

/* ---- compiled expressions ------------------------------------------------------------- */

typedef enum ekind {
    E_DATA = 1,  /* a column of a result set, or request data (auth/subscription/connection) */
    E_UNARY,     /* op: "not", "+" */
    E_BINARY,    /* op: "or" "and" "=" "is" "<" ">" "<=" ">=" "&" "|" "<<" ">>" "+" "-" "*" "/" "%"
                    "||" */
    E_BETWEEN,   /* a[0] BETWEEN a[1] AND a[2] */
    E_SCALAR_IN, /* a[0] IN (a[1..]) */
    E_CASE,      /* CASE [operand] WHEN/THEN pairs [ELSE] END */
    E_CAST,      /* op: text, integer, real, numeric, blob */
    E_FUNC,      /* op: function name ("->", "->>", "ps_json_contains", "upper", ...) */
    E_NULL,
    E_INT,    /* text: base-10 digits */
    E_DOUBLE, /* d */
    E_STRING  /* text */
} ekind_t;

enum { REQ_NONE = 0, REQ_AUTH = 1, REQ_SUBSCRIPTION = 2, REQ_CONNECTION = 3 };

typedef struct srs srs_t;

/** A reference from an expression to outside data. */
typedef struct sref {
    srs_t *rs;          /* a column of this result set, or NULL for request data */
    const char *column; /* rs != NULL */
    int req;            /* REQ_* when rs == NULL */
    const ssrc_t *src;  /* where it was written */
    int off, end;
} sref_t;

typedef struct sexpr sexpr_t;
struct sexpr {
    ekind_t k;
    const char *op;
    sexpr_t **a; /* operands; E_CASE: [operand or NULL, when0, then0, ..., else or NULL] */
    int na;
    const char *text;
    double d;
    sref_t *ref; /* E_DATA */
    const ssrc_t *src;
    int off, end;
    int request_fn; /* E_FUNC "->>" of a request function, read as the reference reads it: 1
                       for auth/subscription/connection.parameter() (as with fixed_json_extract in
                       the alpha form of editions 1-2, per the switch in edition 3), 2 for
                       auth.user_id() (the JWT "sub", always as with the switch) */
};

/* ---- result sets ---------------------------------------------------------------------- */

enum { RS_PHYS = 1, RS_TVF };
enum { TVF_STATIC = 0, TVF_CONNECTION, TVF_ROW };

struct srs {
    int kind;
    int id;
    const char *schema;        /* RS_PHYS: as written, NULL for the default schema */
    const char *table;         /* RS_PHYS: may end in '%' */
    const char *explicit_name; /* alias, or NULL */
    const char *fn;            /* RS_TVF: function name */
    sexpr_t **params;          /* RS_TVF: inputs */
    int nparams;
    int attach;   /* RS_TVF: TVF_* */
    srs_t *input; /* RS_TVF attached to a physical result set (TVF_ROW) */
    int alpha_in; /* RS_TVF of the alpha form's IN: 1 over a row array, 2 over a request
                     array (json_each values as its IN reads them, whatever fixed_json_extract
                     says; see ps_jnum in rules_func.c) */
    const ssrc_t *src;
    int off, end;
};

/* ---- the plan ------------------------------------------------------------------------- */

/** A table-valued function evaluated with each row of a data source or lookup (json_each). */
typedef struct stvf {
    const char *fn;
    sexpr_t **inputs; /* over the row's columns */
    int ninputs;
    srs_t *rs; /* the result set its outputs are referenced through */
} stvf_t;

/** Row side shared by data sources and parameter indexes. */
typedef struct sproc {
    const char *schema; /* NULL: the default schema */
    const char *table;  /* may end in '%' */
    srs_t *rs;
    sexpr_t **filters;
    int nfilters;
    sexpr_t **parts; /* partition values (bucket parameters or lookup keys), in plan order */
    int nparts;
    stvf_t **fns;
    int nfns;
    /* evaluation: one SQLite statement SELECT <outputs>, <parts> [FROM json_each(..)] WHERE .. */
    const char **cols; /* row columns bound as ?1..?ncols */
    int ncols;
    char *sql;
    int stmt; /* index in the set's statement table */
} sproc_t;

enum { SOUT_STAR = 1, SOUT_EXPR };

typedef struct sout {
    int kind;
    sexpr_t *expr;
    const char *alias;
} sout_t;

/** A row evaluator: which rows of one table go to which bucket, with which data. */
typedef struct sdata {
    sproc_t p;
    sout_t *outs;
    int nouts;
    const char *out_table;    /* object type; NULL: the row's table name */
    int alpha;                /* editions 1-2: "*" skips columns starting with "_", parameters are
                                 normalized (integral numbers as integers) */
    unsigned char *part_null; /* alpha: part i may be NULL (`x IN (SELECT ..)`: bucket [null]) */
    char *canon;              /* behaviour key: equal keys evaluate rows identically */
} sdata_t;

/** A parameter index: rows of one table -> lookup entries. */
typedef struct slookup {
    sproc_t p;
    sexpr_t **outs;
    int nouts;
    const char *lookup_name; /* "lookup" (edition 3) or the stream name (alpha) */
    char *query_id;          /* "0", "1", ... */
    int result_named;        /* alpha: the output is {"result": v}, else {"0": v, ...} */
    char *canon;
} slookup_t;

/** A bucket: the data sources whose rows it holds; its id prefix is `<version>#<name>`. */
typedef struct sbucket {
    char *name; /* e.g. "todos|0" */
    sdata_t **sources;
    int nsources;
    char *canon;
} sbucket_t;

/* parameter values of a querier */
enum { SV_REQUEST = 1, SV_LOOKUP, SV_INTERSECTION };

typedef struct sstagelk sstagelk_t;

typedef struct sval {
    int kind;
    sexpr_t *expr;       /* SV_REQUEST: over request data */
    sstagelk_t *lookup;  /* SV_LOOKUP */
    int result_index;    /* SV_LOOKUP */
    struct sval **inner; /* SV_INTERSECTION */
    int ninner;
    /* evaluation of SV_REQUEST */
    char *sql;
    int stmt;
} sval_t;

enum { SL_PARAMETER = 1, SL_TABLE_VALUED };

/** One lookup of a querier stage: a parameter index read, or json_each over request data. */
struct sstagelk {
    int kind;
    int stage, index;  /* position in the querier */
    slookup_t *lookup; /* SL_PARAMETER */
    sval_t **inst;     /* SL_PARAMETER: values of the lookup's partition keys */
    int ninst;
    /* SL_TABLE_VALUED: SELECT outputs FROM fn(inputs) WHERE filters, over request data */
    const char *fn;
    sexpr_t **fn_inputs;
    int nfn_inputs;
    srs_t *rs;
    sexpr_t **outs;
    int nouts;
    sexpr_t **filters;
    int nfilters;
    char *sql;
    int stmt;
    char *canon;
};

/** How one subscription to a stream resolves to buckets of one kind. */
typedef struct squerier {
    sexpr_t **req_filters; /* over request data; all must hold */
    int nreq_filters;
    char *filter_sql;
    int filter_stmt;
    sstagelk_t ***stages; /* stages[i][j] */
    int *nstage;
    int nstages;
    sbucket_t *bucket;
    sval_t **inst; /* one value per bucket parameter */
    int ninst;
    const char *unique_name; /* name of the resolver before buckets were shared */
    char *canon;             /* instantiation key (for merging resolvers of one stream) */
    int query_index;         /* the query of the stream it comes from (explain) */
    const char *query_text;  /* that query as written */
    /* alpha only: a variant whose parameters are all static may expand arrays */
    int alpha;
} squerier_t;

typedef struct sstream {
    const char *name;
    int priority;
    int auto_subscribe;
    int accept_dangerous;
    int alpha;
    int uses_subscription; /* some query reads subscription parameters */
    squerier_t **q;
    int nq;
    int line, col; /* of the name in the file */
} sstream_t;

/** All streams of a set. */
typedef struct splan {
    rarena_t arena;
    sdata_t **data; /* data sources, canonical order */
    int ndata;
    slookup_t **lookups; /* parameter indexes, canonical order (query id = index) */
    int nlookups;
    sbucket_t **buckets;
    int nbuckets;
    sstream_t **streams; /* file order */
    int nstreams;
} splan_t;

/* ---- compiling (rules_stream_compile.c, rules_stream_alpha.c) -------------------------- */

typedef struct sbuilder sbuilder_t;

/** Context the YAML walker hands the stream compilers. */
typedef struct scompile {
    rules_set_t *set;
    rules_diags_t *d;
    splan_t *plan;
    int edition;
    int fixed_json_extract;
    sbuilder_t *alpha; /* editions 1-2: the builder the alpha streams share (sa_builder) */
} scompile_t;

typedef struct scte scte_t;

/** Start compiling the streams of a file (edition 3); global CTEs come from `with:`. */
sbuilder_t *sc_begin(scompile_t *c);
/** Parse one CTE (global when stream is NULL, else local to the stream being built). */
void sc_cte(sbuilder_t *b, const char *name, const ssrc_t *src, int local);
/** Start a stream. */
void sc_stream(sbuilder_t *b, const char *name, int priority, int auto_subscribe,
               int accept_dangerous, int line, int col);
/** Add one query to the current stream. */
void sc_query(sbuilder_t *b, const ssrc_t *src);
/** Finish the current stream (merge its buckets, warnings). */
void sc_stream_end(sbuilder_t *b);
/** Finish: name buckets, order everything as the reference does, prepare statements. */
void sc_end(sbuilder_t *b);

/** Compile one alpha stream (editions 1-2, rules_stream_alpha.c). */
void sa_stream(scompile_t *c, const char *name, const ssrc_t *src, int priority, int auto_subscribe,
               int accept_dangerous, int line, int col);
/** Finish the alpha streams of a file: the plan's tables, statements. */
void sa_end(scompile_t *c);

/* Helpers the alpha compiler borrows from the edition-3 one (rules_stream_compile.c); all
 * allocate from the plan's arena. */
typedef struct spq spq_t;
sbuilder_t *sa_builder(scompile_t *c);
/** A query with the one table f in scope (*rs its result set, NULL when f is not a table). */
spq_t *sa_query(sbuilder_t *b, sstream_t *s, const ssrc_t *src, const sfrom_t *f, srs_t **rs);
/** Translate an expression of q (`a IN b` is a JSON-array membership test). */
sexpr_t *sa_translate(spq_t *q, const sx_t *x);
void sa_diag(spq_t *q, int warning, const ssrc_t *src, int off, const char *msg);
/** Count e's data references; *row: some read a table, *req: some read request data. */
int sa_refs(const sexpr_t *e, int *row, int *req);
sexpr_t *sa_bin(sbuilder_t *b, const char *op, sexpr_t *l, sexpr_t *r);
sexpr_t *sa_not(sbuilder_t *b, sexpr_t *e);
sexpr_t *sa_func(sbuilder_t *b, const char *fn, sexpr_t *arg);
sexpr_t *sa_column(sbuilder_t *b, srs_t *rs, const char *column, const sexpr_t *at);
/** A json_each() result set over input (TVF_ROW on row, or TVF_STATIC over request data). */
srs_t *sa_tvf(sbuilder_t *b, sexpr_t *input, int attach, srs_t *row);
/** Add a compiled stream with its data sources and parameter indexes to the plan. */
void sa_add(sbuilder_t *b, sstream_t *s, sdata_t **data, int ndata, slookup_t **lookups,
            int nlookups);

/** Report a diagnostic at a location of src. */
void s_diag(scompile_t *c, int warning, const ssrc_t *src, int off, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ---- evaluation (rules_stream_eval.c) -------------------------------------------------- */

/** Append the stream ops of row (already converted into c) to out. */
void sv_eval_row(rules_set_t *set, rctx_t *c, const char *version, const rules_row_t *row,
                 rules_ops_t *out, rules_error_t *err);
/** Append the stream lookup entries of row to out. */
void sv_eval_lookups(rules_set_t *set, rctx_t *c, const rules_row_t *row, rules_lookups_t *out,
                     rules_error_t *err);

/**
 * Append the stream buckets of a request to acc and its subscribed streams and subscription
 * errors to out. auth and conn are the token payload and client parameters as JSON text.
 * Returns 0, or a RULES_E* code for a failure of the whole request (err filled).
 */
int sv_eval_request(rules_set_t *set, rctx_t *c, const char *version, const rules_request_t *req,
                    const char *auth, const char *conn, racc_t *acc, rules_buckets_t *out,
                    rules_error_t *err);

void splan_free(splan_t *p);

#endif
