/* gw_config.h -- Ferry's configuration: one YAML file, parsed and validated in one call
 *
 * gw_config_load() reads the file with libyaml, substitutes ${VAR} and ${VAR:-default} in
 * scalar values, resolves relative paths against the file's folder, rejects unknown keys (with a
 * "did you mean" suggestion), wrong types and out-of-range values, and reports every problem as
 * "FILE:LINE:COL: message". The accepted keys are a static table in gw_config.c; every one of them
 * is documented in deploy/ferry.example.yaml (`ferry config keys` lists them, and a test checks
 * the example names each one).
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include "base/gw_err.h"
#include "base/gw_log.h"

#include <stdio.h>

/** One entry of auth.keys; which fields are set depends on the key kind (see deploy/README). */
typedef struct gw_auth_key_cfg {
    char *kid;
    char *alg;
    char *secret;
    char *secret_base64url;
    char *pem;
    char *pem_file;  /* resolved against the config folder */
    char *jwks_file; /* resolved against the config folder */
    char *jwks_uri;
    int line, col; /* position of the entry in the config file, for error messages */
} gw_auth_key_cfg_t;

typedef struct gw_config {
    char *path; /* the file as given */
    char *dir;  /* its folder, for relative paths */
    gw_log_level_t log_level;
    struct {
        char *listen;       /* "host:port"; "[::1]:port" for IPv6 */
        char *admin_listen; /* probes, metrics, admin API; NULL: 127.0.0.1:<listen port + 1> */
        long threads;       /* 0: number of CPUs */
        long max_request_body;
        struct {
            char **allowed_origins; /* "*" or "scheme://host[:port]"; default ["*"]; [] none */
            size_t n_allowed_origins;
            char **allowed_headers; /* request headers allowed beyond the built-in ones */
            size_t n_allowed_headers;
        } cors;
        struct {
            int enabled;     /* compress /sync/stream when the client accepts it (1) */
            long zstd_level; /* 1..19 (1) */
            long gzip_level; /* 1..9 (1) */
        } compression;
    } http;
    struct {
        char *uri;
        long pool_size; /* worker threads with their own connections (write-back, checkpoints) */
        long timeout;   /* seconds a request may wait on Postgres before it is answered 503 */
    } postgres;
    struct {
        char *publication;
        char *slot_prefix;
        long snapshot_chunk_rows;
        long lag_warn_seconds; /* warn when replication lags more than this */
        long wal_warn_bytes;   /* warn when the slot retains more WAL than this */
        long compact_interval; /* seconds between compaction runs; 0 disables */
        long timeout;          /* seconds of silence after which the source counts as lost */
    } replication;
    struct {
        char *kind;        /* the backend: "sqlite" (default) or "postgres" */
        char *path;        /* sqlite: the storage file */
        char *uri;         /* postgres: the storage database */
        char *schema;      /* postgres: the schema of Ferry's tables ("ferry") */
        char *read_uri;    /* postgres: readers' database, a hot standby (NULL: uri) */
        long lock_timeout; /* postgres: seconds until a silent leader's lock is freed (5) */
    } storage;
    struct {
        char **audience;
        size_t n_audience;
        char *issuer;
        long max_lifetime;
        long leeway;
        long jwks_refresh_interval;
        long max_token_bytes;
        long cache_entries;
        gw_auth_key_cfg_t *keys;
        size_t n_keys;
    } auth;
    struct {
        char *path;
    } sync_rules;
    struct {
        char *token; /* bearer token of /api/admin/; unset disables the admin API */
    } admin;
    struct {
        long max_connections;
        long max_buckets_per_connection;
        long max_streams_per_user;             /* a new stream past it ends the user's oldest */
        long max_subscriptions_per_connection; /* Sync Streams subscriptions of one request */
        long max_subscription_parameter_bytes; /* JSON text of one subscription's parameters */
    } limits;
    struct {
        long max_ops_per_batch;    /* more in one POST /api/write: 413 */
        long max_batches_per_user; /* queued or running per user; past it 429 */
        long statement_timeout;    /* seconds per statement of a batch; 0: none */
        long batch_timeout;        /* seconds a batch may take in all, checked between its
                                      ops; 0: none (postgres.timeout still cuts it) */
        long checkpoint_retention; /* seconds a client's write checkpoint outlives its use */
        long recheck_interval;     /* seconds between background passes: history trimming,
                                      violations re-checked and expired */
        struct {
            long keep; /* seconds ferry_write_history keeps an op; 0: no history */
        } history;
    } write_back;
} gw_config_t;

/** Fill *cfg with defaults only (no file); release with gw_config_free(). */
void gw_config_defaults(gw_config_t *cfg);

/**
 * Load and validate the YAML file at path into *cfg (defaults first, then the file).
 * Returns 0, or GW_ECONFIG with err->where = "path:line:col" and err->message set; on failure
 * *cfg holds nothing to free. On success the caller owns *cfg and releases it with
 * gw_config_free().
 */
int gw_config_load(gw_config_t *cfg, const char *path, gw_err_t *err);

/** Same as gw_config_load() but from a string; name is used in messages, dir for paths. */
int gw_config_load_string(gw_config_t *cfg, const char *text, size_t len, const char *name,
                          const char *dir, gw_err_t *err);

/** Release everything *cfg owns; *cfg is zeroed. */
void gw_config_free(gw_config_t *cfg);

/** Print every accepted key as a dotted path ("http.listen", "auth.keys[].kid"), one a line. */
void gw_config_print_keys(FILE *out);

/**
 * Split "host:port" or "[v6]:port" into host (copied into host, size hostlen) and *port.
 * Returns 0, or GW_EINVAL when the text is not of that form or the port is not 1..65535.
 */
int gw_config_parse_listen(const char *listen, char *host, size_t hostlen, int *port);

#endif
