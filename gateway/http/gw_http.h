/* gw_http.h -- the HTTP server: h2o event loops, routes, JSON responses, graceful stop
 *
 * One client listening socket is bound once (no SO_REUSEPORT, so a second ferry on the same
 * port fails clearly) and shared by N event-loop threads, beside an admin listener for probes,
 * metrics and the admin API (see gw_http.c). HTTP/1.1 only. Routes are registered before
 * gw_http_start(); each is an exact path with allowed methods; anything else gets a JSON 404 (or
 * 405). Every JSON error response has one shape: {"error":{"code":"…","description":"…"}},
 * including the 413 that h2o itself emits for oversized bodies (rewritten by a filter).
 *
 * Thread model: handlers run on the loop thread that accepted the connection and must not block
 * (Postgres work goes to worker threads). Each loop creates and disposes its own h2o context on
 * its own thread (h2o's recycle allocators are thread-local). gw_http_shutdown() is called from
 * the main thread.
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include "config/gw_config.h"
#include "base/gw_err.h"

#include <h2o.h>

typedef struct gw_http gw_http_t;

enum {
    GW_HTTP_GET = 1,
    GW_HTTP_HEAD = 2,
    GW_HTTP_POST = 4,
};

/** A route handler: answer req (now or later); return 0. Runs on a loop thread. */
typedef int (*gw_http_handler_fn)(h2o_req_t *req, void *ud);

/** Called on each loop thread when shutdown begins (close streams there); ctx is that thread's. */
typedef void (*gw_http_shutdown_fn)(h2o_context_t *ctx, size_t thread_index, void *ud);

/**
 * Bind the listening socket of cfg->http.listen and prepare h2o. Returns 0 and *out (owned by the
 * caller, release with gw_http_destroy), or GW_EADDRINUSE / GW_ESYS / GW_ECONFIG with err set.
 */
int gw_http_create(gw_http_t **out, const gw_config_t *cfg, gw_err_t *err);

/**
 * Add an exact-path route on the client listener (http.listen); metric names the route in
 * /metrics. Call before gw_http_start.
 */
void gw_http_route(gw_http_t *h, const char *path, const char *metric, unsigned methods,
                   gw_http_handler_fn fn, void *ud);

/**
 * Add an exact-path route served on both listeners: the admin listener (http.admin_listen,
 * outside limits.max_connections) and the client listener. For probes, /metrics, the admin API.
 */
void gw_http_admin_route(gw_http_t *h, const char *path, const char *metric, unsigned methods,
                         gw_http_handler_fn fn, void *ud);

/** Called on each loop thread before its loop runs (register h2o receivers there). */
typedef void (*gw_http_thread_fn)(h2o_context_t *ctx, size_t thread_index, void *ud);

/** Register a hook run on every loop thread when it starts. Call before gw_http_start. */
void gw_http_on_thread_start(gw_http_t *h, gw_http_thread_fn fn, void *ud);

/**
 * Register a hook run on every loop thread after its loop ended and before its context is
 * disposed (unregister receivers there). Call before gw_http_start.
 */
void gw_http_on_thread_stop(gw_http_t *h, gw_http_thread_fn fn, void *ud);

/** The loop thread index of ctx (a context of this server), or 0. */
size_t gw_http_thread_index(gw_http_t *h, h2o_context_t *ctx);

/** Register a hook run on every loop thread when shutdown begins. Call before gw_http_start. */
void gw_http_on_shutdown(gw_http_t *h, gw_http_shutdown_fn fn, void *ud);

/** Start the loop threads. Returns 0 or GW_ESYS with err set. */
int gw_http_start(gw_http_t *h, gw_err_t *err);

/** The bound address ("127.0.0.1:8080"), valid until gw_http_destroy. */
const char *gw_http_address(const gw_http_t *h);

/** The admin listener's bound address, or "" when there is none. */
const char *gw_http_admin_address(const gw_http_t *h);

/** Number of loop threads. */
size_t gw_http_threads(const gw_http_t *h);

/** Loop thread i's context (for h2o_multithread messages); valid between start and shutdown. */
h2o_context_t *gw_http_context(gw_http_t *h, size_t i);

/**
 * Stop accepting, let in-flight responses finish, close idle connections, and join the threads;
 * each thread runs its stop hooks and disposes its own h2o context before it exits. Returns once
 * every thread exited (at most about grace_ms + 1 s).
 */
void gw_http_shutdown(gw_http_t *h, unsigned grace_ms);

/** Release everything; the server must be shut down (or never started). */
void gw_http_destroy(gw_http_t *h);

/**
 * The request body was parsed and is not needed any more, though the response (a long stream)
 * goes on: free h2o's input buffer that holds it now instead of when the response ends, and close
 * the connection after the response (h2o would read the next request from that buffer).
 * req->entity is empty afterwards. Call before the response starts.
 */
void gw_http_release_body(h2o_req_t *req);

/** Send a complete response with Content-Type application/json; body is copied. */
void gw_http_send_json(h2o_req_t *req, int status, const char *body, size_t len);

/** Send {"error":{"code":code,"description":…}} with status; printf-style description. */
void gw_http_send_error(h2o_req_t *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** The stable error code string used for an HTTP status ("not_found" for 404, …). */
const char *gw_http_status_code(int status);

#endif
