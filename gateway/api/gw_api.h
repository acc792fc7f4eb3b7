/* gw_app.h -- what request handlers share: config, auth, rules, replicator, workers
 *
 * `ferry serve` builds one gw_app_t and passes it as the user data of every route. Everything in
 * it is created before the loops start and destroyed after they stopped, so handlers may use it
 * without locks (each member is thread-safe where it says so).
 */
#ifndef GW_API_H
#define GW_API_H

#include "auth/auth.h"
#include "config/gw_config.h"
#include "http/gw_http.h"
#include "repl/gw_repl.h"
#include "http/gw_worker.h"
#include "rules/rules.h"

typedef struct gw_streams gw_streams_t;

typedef struct gw_app {
    const gw_config_t *cfg;
    gw_http_t *http;
    auth_ctx_t *auth; /* thread-safe */
    gw_repl_t *repl;  /* gw_repl_submit / gw_repl_ready / gw_repl_active are thread-safe */
    gw_workers_t *workers;
    gw_streams_t *streams; /* gw_stream.c's state */
} gw_app_t;

/**
 * The sync and write rules serving now, with their rule version (the bucket-id prefix). A
 * handler takes it once per request (or batch) and uses that one throughout: a rules change
 * swaps it while requests run, and the old one stays valid.
 */
static inline const gw_active_t *gw_app_active(gw_app_t *app)
{
    return gw_repl_active(app->repl);
}

/**
 * Verify the request's Authorization header. Returns 0 and *tok (release with
 * auth_token_release), or sends 401 {"error":{"code":…,"description":…}} and returns -1.
 * conn names the connection in the one log line a rejection may write.
 */
int gw_app_authenticate(gw_app_t *app, h2o_req_t *req, auth_token_t **tok);

/** "<sub>/<client_id>": the write-checkpoint key of a user's client, into buf; returns buf. */
const char *gw_app_user_key(const char *sub, const char *client_id, char *buf, size_t len);

/** Register the write-checkpoint route (GET /write-checkpoint2.json). */
void gw_wcp_register(gw_app_t *app);

/**
 * Create a write checkpoint for user_key on a worker thread (conn from the worker): reads
 * pg_current_wal_lsn(), emits the replication marker, stores the counter through the replicator
 * and waits for it (at most 5 s). Returns 0 and *counter, GW_EUNAVAIL, or GW_EPG.
 */
int gw_wcp_create_blocking(gw_app_t *app, PGconn *conn, const char *user_key, uint64_t *counter,
                           gw_err_t *err);

/** Register the admin API routes (gw_admin.c). */
void gw_admin_register(gw_app_t *app);

/** Register the write-back route POST /api/write (gw_write.c). */
void gw_write_register(gw_app_t *app);

/**
 * Create the streams' shared state before storage is handed to the replicator, and install the
 * storage hook that wakes streams after every commit (gw_stream.c). Caller frees with
 * gw_streams_free() after gw_stream_detach().
 */
gw_streams_t *gw_streams_new(gw_storage_t *storage);

/** Register POST /sync/stream and the per-thread machinery (before gw_http_start). */
void gw_stream_register(gw_app_t *app);

/** After gw_http_shutdown(): make sure no notification is sent any more (each loop thread
 *  already released its receiver and reader when it stopped). */
void gw_stream_detach(gw_app_t *app);

/** Free what gw_streams_new() made (after the replicator stopped). NULL is fine. */
void gw_streams_free(gw_streams_t *s);

/**
 * A new rule version took over (gw_repl_on_switch callback; ud is the gw_app_t): every stream
 * re-evaluates its bucket list with the new rules at the new checkpoint, so clients move to the
 * new buckets through an ordinary checkpoint_diff.
 */
void gw_stream_rules_changed(const gw_active_t *now, void *ud);

/** Append the streams' Prometheus lines (a gw_metrics collector; ud is the gw_streams_t). */
void gw_stream_metrics(gw_buf_t *out, void *ud);

#endif
