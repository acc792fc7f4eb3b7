/* gw_api.h -- the routes of the API and what their handlers share (the api/ folder's contract)
 *
 * `ferry serve` builds one gw_app_t and passes it as the user data of every route. Everything in
 * it is created before the loops start and destroyed after they stopped, so handlers may use it
 * without locks (each member is thread-safe where it says so). Each route module registers its
 * routes here: probes (gw_probes.c), the sync stream (gw_stream.c), write checkpoints
 * (gw_wcp.c), write-back (gw_write*.c), the admin API (gw_admin.c). The modules share nothing but
 * this header; each includes what it uses from the folders below (storage/, pg/, …) itself.
 */
#ifndef GW_API_H
#define GW_API_H

#include "auth/auth.h"
#include "config/gw_config.h"
#include "http/gw_auth.h"
#include "http/gw_http.h"
#include "http/gw_worker.h"
#include "repl/gw_repl.h"
#include "rules/rules.h"

#include <stdio.h>

typedef struct gw_streams gw_streams_t;
/* How storage is opened (storage/gw_storage.h, included where readers are opened). */
typedef struct gw_storage_opts gw_storage_opts_t;

typedef struct gw_app {
    const gw_config_t *cfg;
    gw_http_t *http;
    auth_ctx_t *auth; /* thread-safe */
    gw_repl_t *repl;  /* gw_repl_submit / gw_repl_ready / gw_repl_active are thread-safe */
    const gw_storage_opts_t *storage; /* how to open storage readers */
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
 */
static inline int gw_app_authenticate(gw_app_t *app, h2o_req_t *req, auth_token_t **tok)
{
    return gw_auth_request(app->auth, req, tok);
}

/** Most bytes of a client_id (sync stream, write checkpoint, write-back); longer gets 400. */
#define GW_CLIENT_ID_MAX 200

/** Size of a buffer for a user key (gw_app_user_key). */
#define GW_USER_KEY_MAX 1024

/**
 * The write-checkpoint key of a user's client into buf (len bytes, GW_USER_KEY_MAX): the token's
 * sub with '%' and '/' percent-encoded, then '/', then the client_id. The first '/' always ends
 * the sub, so ("bob/x", "y") and ("bob", "x/y") never share a key; a sub without '/' or '%' keeps
 * the key earlier releases used. Returns 0, or -1 when the key does not fit in len (the request
 * then gets 400: one length rule everywhere keys are made).
 */
static inline int gw_app_user_key(const char *sub, const char *client_id, char *buf, size_t len)
{
    size_t o = 0;
    for (const char *p = sub != NULL ? sub : ""; *p; p++) {
        if (o + 4 > len) return -1;
        if (*p == '%' || *p == '/') {
            o += (size_t)snprintf(buf + o, len - o, "%%%02X", (unsigned char)*p);
        } else {
            buf[o++] = *p;
        }
    }
    int n = snprintf(buf + o, len - o, "/%s", client_id != NULL ? client_id : "");
    return n < 0 || (size_t)n >= len - o ? -1 : 0;
}

/** Register GET /probes/liveness, /probes/readiness and /metrics (gw_probes.c). */
void gw_probes_register(gw_app_t *app);

/** Register the write-checkpoint routes (GET /write-checkpoint2.json, POST
 *  /sync/checkpoint-request). */
void gw_wcp_register(gw_app_t *app);

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
