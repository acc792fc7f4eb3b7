/* gw_http.c -- h2o event loops, routing, JSON errors and graceful shutdown (see gw_http.h)
 *
 * Per loop thread:
 *
 *   RUNNING --(stop message from gw_http_shutdown)--> DRAINING --(no connections left, or the
 *   grace time is over: remaining sockets shut down)--> STOPPED (context disposed, thread exits)
 *
 * RUNNING -> DRAINING happens in on_stop_message(): the thread closes its copy of the listening
 * socket, sets h2o's shutdown flag (responses in flight end with "Connection: close"), runs the
 * shutdown hooks (streams finish there) and half-closes every connection for reading, so idle
 * keep-alive connections and half-sent requests see EOF and h2o closes them. Connections are
 * tracked through the socket's on_close callback, which also keeps the open-connections gauge.
 *
 * Two listeners. http.listen serves the clients (and the probes, at PowerSync's paths); its
 * connections count against limits.max_connections. http.admin_listen (loopback, by default the
 * next port) serves only the routes registered with gw_http_admin_route (probes, /metrics, the
 * admin API) and has its own small connection cap, so probes answer while clients exhaust
 * max_connections and an orchestrator does not restart a busy but healthy ferry.
 *
 * What reaches a handler (on_req), in this order; each rule has its own reason:
 *   - HTTP/1.1 only: h2o's cleartext HTTP/2 (prior knowledge and "Upgrade: h2c") is turned off,
 *     because h2o 2.2.5 multiplexes 100 streams per connection past max_connections and has no
 *     rapid-reset mitigation. A TLS proxy in front of ferry may speak HTTP/2 to browsers.
 *   - unambiguous framing: two Content-Length headers, or Content-Length with Transfer-Encoding,
 *     get 400 and the connection is closed (h2o 2.2.5 silently picks one; a proxy that picked
 *     the other would let a second request hide in the body).
 *   - no encoded "/" or "\" in the path: 400. Routing uses h2o's normalized path (percent-
 *     decoded, dot segments resolved), so "/%6detrics" is "/metrics"; a proxy ACL must match on
 *     the normalized path too (deploy/README.md, "Behind a proxy").
 *   - a CORS preflight (OPTIONS) on a route is answered here, before any authentication: 204
 *     with the allowed methods and headers for an allowed origin, 403 (and a rate-limited log
 *     line naming the origin) for another one.
 *   - a WebSocket upgrade on a route is answered 400 with a JSON error that says to use HTTP
 *     streaming (PowerSync's RSocket transport is not implemented), with a rate-limited warning.
 *   - a method the route does not take is answered 405 and logged at info (rate-limited).
 *
 * CORS headers (http.cors): a filter on every path of the client listener adds
 * Access-Control-Allow-Origin (and Vary: Origin unless every origin is allowed) to every
 * response, the stream and the errors included, also those h2o makes itself (413), so a web app
 * can read why a request failed. The admin listener sends none: a page must not read /metrics.
 */
#include "http/gw_http.h"
#include "base/gw_log.h"
#include "base/gw_metrics.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUTES 32
#define MAX_HOOKS  8

/* Request headers a preflight may ask for without configuration: what the PowerSync web SDK and
 * fetch() send (authorization, content-type, x-user-agent; some SDK versions cache-control and
 * pragma), and user-agent, which browsers may let a script set. */
#define CORS_BASE_HEADERS                                                                          \
    "authorization, content-type, x-user-agent, user-agent, accept, cache-control, pragma"
#define CORS_MAX_AGE "3600"

typedef struct route {
    char path[128];
    unsigned methods;
    int admin;   /* also served on the admin listener */
    int no_cors; /* operator routes (/metrics, the admin API): no CORS headers, no preflight */
    int metric;
    gw_http_handler_fn fn;
    void *ud;
} route_t;

typedef struct route_handler {
    h2o_handler_t super;
    route_t *route; /* NULL: the catch-all 404 */
    struct gw_http *srv;
} route_handler_t;

typedef struct route_logger {
    h2o_logger_t super;
    route_t *route; /* NULL: fallback or catch-all */
} route_logger_t;

typedef struct tracked_sock {
    h2o_linklist_t link;
    struct loop_thread *thread;
    int fd;
    int admin; /* accepted on the admin listener */
} tracked_sock_t;

typedef struct stop_msg {
    h2o_multithread_message_t super;
} stop_msg_t;

typedef struct loop_thread {
    gw_http_t *srv;
    size_t index;
    pthread_t tid;
    int started;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    h2o_socket_t *admin_listener; /* NULL: no admin listener */
    h2o_multithread_receiver_t rx;
    stop_msg_t stop;
    h2o_linklist_t socks; /* tracked_sock_t, open connections */
    size_t nsocks;
    int draining;
    uint64_t drain_deadline; /* h2o_now() ms */
    int forced;
    int init_rc; /* set by the thread once its context exists: 0, or a GW_E code */
    int disposed;
} loop_thread_t;

struct gw_http {
    h2o_globalconf_t config;
    h2o_hostconf_t *hostconf;
    int listen_fd;
    int admin_fd; /* -1: no admin listener */
    char address[300];
    char admin_address[300];
    long max_connections;
    _Atomic long admin_open; /* connections on the admin listener */
    size_t nthreads;
    loop_thread_t *threads;
    route_t routes[MAX_ROUTES];
    size_t nroutes;
    struct {
        gw_http_shutdown_fn fn;
        void *ud;
    } hooks[MAX_HOOKS];
    size_t nhooks;
    struct {
        gw_http_thread_fn fn;
        void *ud;
    } start_hooks[MAX_HOOKS], stop_hooks[MAX_HOOKS];
    size_t nstart_hooks, nstop_hooks;
    pthread_mutex_t init_lock;
    pthread_cond_t init_cond;
    size_t ninit;
    unsigned grace_ms;
    int metric_not_found;
    int metric_other;
    /* CORS (http.cors); the strings belong to the config, which outlives the server */
    int cors_any;         /* "*" is among the allowed origins */
    char **cors_origins;  /* the allowed origins */
    size_t cors_norigins; /* 0 and !cors_any: no origin is allowed */
    char *cors_headers;   /* Access-Control-Allow-Headers value (owned) */
};

typedef struct cors_filter {
    h2o_filter_t super;
    gw_http_t *srv;
    route_t *route; /* NULL: the catch-all 404 and h2o's own errors */
} cors_filter_t;

/* ---- responses ---- */

const char *gw_http_status_code(int status)
{
    switch (status) {
    case 400:
        return "bad_request";
    case 401:
        return "unauthorized";
    case 403:
        return "forbidden";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 413:
        return "payload_too_large";
    case 429:
        return "too_many_requests";
    case 503:
        return "unavailable";
    default:
        return status >= 500 ? "internal" : "error";
    }
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    default:
        return status >= 500 ? "Internal Server Error" : "Error";
    }
}

void gw_http_send_json(h2o_req_t *req, int status, const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    h2o_send_inline(req, body, len);
}

/*
 * HTTP/1 in h2o 2.2.5 keeps the whole request (head and body) in the socket's input buffer until
 * the response ends, and only then consumes it to read the next request. For a request with a
 * body h2o has already copied the head (method, path, headers) into req->pool, so once the body
 * is parsed nothing points into the buffer: consume it all (which frees it) and make the
 * connection close after the response, so h2o never looks at that buffer again.
 */
void gw_http_release_body(h2o_req_t *req)
{
    if (req->entity.base == NULL || req->version >= 0x200) return;
    if (req->conn->callbacks->get_socket == NULL) return;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL || sock->input == NULL || sock->input->size == 0) return;
    req->http1_is_persistent = 0;
    req->entity = h2o_iovec_init(NULL, 0);
    h2o_buffer_consume(&sock->input, sock->input->size);
}

/* {"error":{"code":…,"description":…}} into b */
static void error_body(gw_buf_t *b, const char *code, const char *desc)
{
    gw_buf_puts(b, "{\"error\":{\"code\":");
    gw_buf_json_str(b, code);
    gw_buf_puts(b, ",\"description\":");
    gw_buf_json_str(b, desc);
    gw_buf_puts(b, "}}");
}

void gw_http_send_error(h2o_req_t *req, int status, const char *code, const char *fmt, ...)
{
    char desc[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof(desc), fmt, ap);
    va_end(ap);
    gw_buf_t b = GW_BUF_INIT;
    error_body(&b, code != NULL ? code : gw_http_status_code(status), desc);
    gw_http_send_json(req, status, b.data, b.len);
    gw_buf_free(&b);
}

/* ---- the JSON error filter for responses h2o generates itself (413, 400 on bodies) ---- */

typedef struct json_error_ostream {
    h2o_ostream_t super;
    h2o_iovec_t body;
    int sent;
} json_error_ostream_t;

static void json_error_do_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs,
                               size_t bufcnt, h2o_send_state_t state)
{
    json_error_ostream_t *o = (json_error_ostream_t *)self;
    (void)bufs;
    (void)bufcnt;
    if (!o->sent) {
        o->sent = 1;
        h2o_ostream_send_next(self, req, &o->body, 1, state);
    } else {
        h2o_ostream_send_next(self, req, NULL, 0, state);
    }
}

static void json_error_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    if (req->res.status >= 400) {
        const char *desc = req->res.status == 413 ? "the request body is too large"
                                                  : "the request could not be read";
        gw_buf_t b = GW_BUF_INIT;
        error_body(&b, gw_http_status_code(req->res.status), desc);
        json_error_ostream_t *o = (json_error_ostream_t *)h2o_add_ostream(req, sizeof(*o), slot);
        o->body = h2o_strdup(&req->pool, b.data, b.len);
        o->sent = 0;
        o->super.do_send = json_error_do_send;
        gw_buf_free(&b);
        req->res.content_length = o->body.len;
        h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
                       H2O_STRLIT("application/json"), 1);
        slot = &o->super.next;
    }
    h2o_setup_next_ostream(req, slot);
    (void)self;
}

/* ---- routing ---- */

static int method_bit(h2o_req_t *req)
{
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) return GW_HTTP_GET;
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"))) return GW_HTTP_HEAD;
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) return GW_HTTP_POST;
    return 0;
}

static int exact_path(const route_t *r, h2o_req_t *req)
{
    size_t n = strlen(r->path);
    return req->path_normalized.len == n && memcmp(req->path_normalized.base, r->path, n) == 0;
}

static void on_sock_close(void *data);

/* The tracked connection of req (NULL for a connection we did not accept). */
static tracked_sock_t *req_sock(h2o_req_t *req)
{
    if (req->conn->callbacks->get_socket == NULL) return NULL;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    return sock != NULL && sock->on_close.cb == on_sock_close ? sock->on_close.data : NULL;
}

static int header_is(const char *p, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && strncasecmp(p, name, l) == 0;
}

/*
 * 1 when the request head declares its body ambiguously: Content-Length twice, or together with
 * Transfer-Encoding, or Transfer-Encoding twice. h2o 2.2.5 keeps neither header in req->headers
 * (it consumed them to read the body), so this reads the head itself: it is still at the start
 * of the socket's input buffer while the request is handled (h2o consumes it after the
 * response), and h2o already parsed it, so every line ends in LF.
 */
static int ambiguous_framing(h2o_req_t *req)
{
    if (req->version >= 0x200 || req->conn->callbacks->get_socket == NULL) return 0;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL || sock->input == NULL) return 0;
    const char *p = sock->input->bytes, *end = p + sock->input->size;
    const char *nl = memchr(p, '\n', (size_t)(end - p)); /* the request line */
    int cl = 0, te = 0;
    for (p = nl != NULL ? nl + 1 : end; p < end;) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl != NULL ? nl : end;
        size_t n = (size_t)(eol - p);
        if (n > 0 && p[n - 1] == '\r') n--;
        if (n == 0) break; /* the end of the head */
        const char *colon = memchr(p, ':', n);
        if (colon != NULL && p[0] != ' ' && p[0] != '\t') {
            size_t nl_ = (size_t)(colon - p);
            cl += header_is(p, nl_, "content-length");
            te += header_is(p, nl_, "transfer-encoding");
        }
        p = eol + 1;
    }
    return cl > 1 || te > 1 || (cl > 0 && te > 0);
}

/* 1 when the raw path (before any '?') holds a percent-encoded '/' or '\'. */
static int encoded_slash(h2o_req_t *req)
{
    const char *p = req->path.base;
    size_t n = req->path.len;
    const char *q = memchr(p, '?', n);
    if (q != NULL) n = (size_t)(q - p);
    for (size_t i = 0; i + 2 < n; i++)
        if (p[i] == '%' && ((p[i + 1] == '2' && (p[i + 2] == 'f' || p[i + 2] == 'F')) ||
                            (p[i + 1] == '5' && (p[i + 2] == 'c' || p[i + 2] == 'C'))))
            return 1;
    return 0;
}

/* ---- CORS ---- */

static h2o_iovec_t req_header(h2o_req_t *req, const char *name, size_t len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, len, -1);
    return i < 0 ? h2o_iovec_init(NULL, 0) : req->headers.entries[i].value;
}

/* 1 when origin (as the request sent it) is one of http.cors.allowed_origins. */
static int origin_allowed(const gw_http_t *h, h2o_iovec_t origin)
{
    if (h->cors_any) return 1;
    for (size_t i = 0; i < h->cors_norigins; i++) {
        const char *o = h->cors_origins[i];
        size_t n = strlen(o);
        /* schemes and host names compare without case, as browsers send them lowercased */
        if (origin.len == n && strncasecmp(origin.base, o, n) == 0) return 1;
    }
    return 0;
}

/* The CORS response headers of req: Access-Control-Allow-Origin for an allowed origin (or "*"),
 * Vary: Origin whenever the answer depends on the origin. None on the admin listener. */
static void cors_response_headers(gw_http_t *h, h2o_req_t *req);

static void cors_setup(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    cors_filter_t *f = (cors_filter_t *)self;
    if (f->route == NULL || !f->route->no_cors) cors_response_headers(f->srv, req);
    h2o_setup_next_ostream(req, slot);
}

static void send_no_content(h2o_req_t *req)
{
    req->res.status = 204;
    req->res.reason = "No Content";
    req->res.content_length = 0;
    h2o_send_inline(req, "", 0);
}

static void methods_text(unsigned methods, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s", (methods & GW_HTTP_GET) ? "GET, " : "",
             (methods & GW_HTTP_HEAD) ? "HEAD, " : "", (methods & GW_HTTP_POST) ? "POST, " : "");
    size_t n = strlen(buf);
    if (n >= 2) buf[n - 2] = '\0';
}

/* OPTIONS on route r: a CORS preflight (204 or 403), or a plain OPTIONS (204 with Allow). */
static int answer_options(gw_http_t *h, route_t *r, h2o_req_t *req)
{
    h2o_iovec_t origin = req_header(req, H2O_STRLIT("origin"));
    if (origin.base == NULL) {
        char allow[64];
        methods_text(r->methods, allow, sizeof(allow));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
        send_no_content(req);
        return 0;
    }
    if (!origin_allowed(h, origin)) {
        static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
        unsigned long long suppressed;
        if (gw_log_limit_take(&limit, &suppressed)) {
            char qo[300];
            gw_warn(
                "http", "CORS preflight from an origin that is not allowed",
                "route=%s origin=%s suppressed=%llu hint=\"add it to http.cors.allowed_origins\"",
                r->path,
                gw_log_qsn(origin.base, origin.len > 200 ? 200 : origin.len, qo, sizeof(qo)),
                suppressed);
        }
        gw_http_send_error(req, 403, "origin_not_allowed",
                           "the origin is not in http.cors.allowed_origins");
        return 0;
    }
    /* GET and POST, as the PowerSync service answers: the browser checks the method it wants */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-allow-methods"),
                          0, NULL, H2O_STRLIT("GET, POST"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-allow-headers"),
                          0, NULL, h->cors_headers, strlen(h->cors_headers));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-max-age"), 0,
                          NULL, H2O_STRLIT(CORS_MAX_AGE));
    send_no_content(req);
    return 0;
}

/* 1 when req asks to switch to WebSocket (Upgrade: websocket). */
static int websocket_upgrade(h2o_req_t *req)
{
    h2o_iovec_t u = req->upgrade;
    if (u.base == NULL) u = req_header(req, H2O_STRLIT("upgrade"));
    return u.base != NULL && u.len >= 9 && strncasecmp(u.base, "websocket", 9) == 0;
}

static int answer_websocket(route_t *r, h2o_req_t *req)
{
    static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
    unsigned long long suppressed;
    if (gw_log_limit_take(&limit, &suppressed)) {
        h2o_iovec_t ua = req_header(req, H2O_STRLIT("x-user-agent"));
        char qa[300];
        gw_warn(
            "http",
            "WebSocket upgrade refused: Ferry speaks HTTP streaming only; set the client's "
            "connectionMethod to SyncStreamConnectionMethod.HTTP",
            "route=%s x_user_agent=%s suppressed=%llu", r->path,
            gw_log_qsn(ua.base != NULL ? ua.base : "", ua.len > 200 ? 200 : ua.len, qa, sizeof(qa)),
            suppressed);
    }
    req->http1_is_persistent = 0;
    gw_http_send_error(req, 400, "websocket_not_supported",
                       "Ferry does not speak WebSocket (RSocket); connect with HTTP streaming: "
                       "connectionMethod: SyncStreamConnectionMethod.HTTP");
    return 0;
}

static void log_wrong_method(route_t *r, h2o_req_t *req)
{
    static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
    unsigned long long suppressed;
    if (!gw_log_limit_take(&limit, &suppressed)) return;
    char qm[80], allow[64];
    methods_text(r->methods, allow, sizeof(allow));
    gw_info(
        "http", "method not allowed on this route",
        "route=%s method=%s allowed=\"%s\" suppressed=%llu", r->path,
        gw_log_qsn(req->method.base, req->method.len > 16 ? 16 : req->method.len, qm, sizeof(qm)),
        allow, suppressed);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    route_t *r = ((route_handler_t *)self)->route;
    if (ambiguous_framing(req)) {
        req->http1_is_persistent = 0; /* what follows the body must not be read as a request */
        gw_http_send_error(req, 400, "bad_request",
                           "ambiguous request framing: Content-Length twice, or together with "
                           "Transfer-Encoding");
        return 0;
    }
    if (encoded_slash(req)) {
        gw_http_send_error(req, 400, "bad_request",
                           "the path holds an encoded \"/\" or \"\\\"; send it unencoded");
        return 0;
    }
    tracked_sock_t *ts = req_sock(req);
    if (r != NULL && ts != NULL && ts->admin && !r->admin) r = NULL; /* client routes: not here */
    if (r == NULL || !exact_path(r, req)) {
        gw_http_send_error(req, 404, "not_found", "no route for %.*s %.*s", (int)req->method.len,
                           req->method.base,
                           (int)(req->path_normalized.len > 200 ? 200 : req->path_normalized.len),
                           req->path_normalized.base);
        return 0;
    }
    gw_http_t *h = ((route_handler_t *)self)->srv;
    if (websocket_upgrade(req)) return answer_websocket(r, req);
    if (!r->no_cors && h2o_memis(req->method.base, req->method.len, H2O_STRLIT("OPTIONS")))
        return answer_options(h, r, req);
    if ((method_bit(req) & (int)r->methods) == 0) {
        log_wrong_method(r, req);
        gw_http_send_error(req, 405, "method_not_allowed", "%s does not accept %.*s", r->path,
                           (int)(req->method.len > 16 ? 16 : req->method.len), req->method.base);
        return 0;
    }
    return r->fn(req, r->ud);
}

static void on_log(h2o_logger_t *self, h2o_req_t *req)
{
    route_logger_t *l = (route_logger_t *)self;
    gw_http_t *srv = NULL;
    (void)srv;
    int metric;
    if (l->route != NULL && exact_path(l->route, req))
        metric = l->route->metric;
    else if (l->route == NULL && req->res.status == 404)
        metric = gw_metrics_route("not_found");
    else if (l->route != NULL)
        metric = gw_metrics_route("not_found");
    else
        metric = gw_metrics_route("other");
    gw_metrics_request(metric, req->res.status);
}

static void add_logger(h2o_pathconf_t *pc, route_t *r)
{
    route_logger_t *l = (route_logger_t *)h2o_create_logger(pc, sizeof(*l));
    l->super.log_access = on_log;
    l->route = r;
}

/* ---- accepting and tracking connections ---- */

static void on_sock_close(void *data)
{
    tracked_sock_t *t = data;
    h2o_linklist_unlink(&t->link);
    t->thread->nsocks--;
    if (t->admin)
        atomic_fetch_sub(&t->thread->srv->admin_open, 1);
    else
        gw_metrics_connections(-1);
    free(t);
}

static void reject_busy(int fd)
{
    static const char resp[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Retry-After: 5\r\nConnection: close\r\nContent-Length: 86\r\n\r\n"
        "{\"error\":{\"code\":\"unavailable\",\"description\":\"too many connections, retry "
        "later\"}}";
    ssize_t w = write(fd, resp, sizeof(resp) - 1);
    (void)w;
}

/* Connections the admin listener takes at once (probes and scrapes are short). */
#define ADMIN_MAX_CONNECTIONS 64

static void on_accept(h2o_socket_t *listener, const char *err)
{
    loop_thread_t *th = listener->data;
    int admin = listener == th->admin_listener;
    if (err != NULL) return;
    for (int i = 0; i < 32; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL) return;
        if (admin ? atomic_load(&th->srv->admin_open) >= ADMIN_MAX_CONNECTIONS
                  : gw_metrics_open_connections() >= th->srv->max_connections) {
            reject_busy(h2o_socket_get_fd(sock));
            h2o_socket_close(sock);
            continue;
        }
        tracked_sock_t *t = gw_xcalloc(1, sizeof(*t));
        t->thread = th;
        t->fd = h2o_socket_get_fd(sock);
        t->admin = admin;
        h2o_linklist_insert(&th->socks, &t->link);
        th->nsocks++;
        if (admin)
            atomic_fetch_add(&th->srv->admin_open, 1);
        else
            gw_metrics_connections(+1);
        sock->on_close.cb = on_sock_close;
        sock->on_close.data = t;
        h2o_accept(&th->accept_ctx, sock);
    }
}

/* ---- shutdown ---- */

static void shutdown_all(loop_thread_t *th, int how)
{
    for (h2o_linklist_t *n = th->socks.next; n != &th->socks; n = n->next) {
        tracked_sock_t *t = H2O_STRUCT_FROM_MEMBER(tracked_sock_t, link, n);
        shutdown(t->fd, how);
    }
}

static void on_stop_message(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    loop_thread_t *th = H2O_STRUCT_FROM_MEMBER(loop_thread_t, rx, rx);
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
    }
    if (th->draining) return;
    th->draining = 1;
    th->drain_deadline = h2o_now(th->ctx.loop) + th->srv->grace_ms;
    if (th->listener != NULL) {
        h2o_socket_read_stop(th->listener);
        h2o_socket_close(th->listener);
        th->listener = NULL;
    }
    if (th->admin_listener != NULL) {
        h2o_socket_read_stop(th->admin_listener);
        h2o_socket_close(th->admin_listener);
        th->admin_listener = NULL;
    }
    h2o_context_request_shutdown(&th->ctx);
    for (size_t i = 0; i < th->srv->nhooks; i++)
        th->srv->hooks[i].fn(&th->ctx, th->index, th->srv->hooks[i].ud);
    shutdown_all(th, SHUT_RD);
}

/*
 * Everything of h2o a loop uses is created and destroyed on that loop's own thread: h2o keeps
 * per-thread (TLS) recycle allocators for socket buffers and memory pools, and a context made on
 * another thread would share that thread's allocators between loops.
 */
static int loop_init(loop_thread_t *th)
{
    gw_http_t *h = th->srv;
    h2o_context_init(&th->ctx, h2o_evloop_create(), &h->config);
    th->accept_ctx.ctx = &th->ctx;
    th->accept_ctx.hosts = h->config.hosts;
    h2o_multithread_register_receiver(th->ctx.queue, &th->rx, on_stop_message);
    int fd = dup(h->listen_fd);
    if (fd < 0) return GW_ESYS;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    th->listener = h2o_evloop_socket_create(th->ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    th->listener->data = th;
    h2o_socket_read_start(th->listener, on_accept);
    if (h->admin_fd >= 0) {
        int afd = dup(h->admin_fd);
        if (afd < 0) return GW_ESYS;
        fcntl(afd, F_SETFD, FD_CLOEXEC);
        th->admin_listener = h2o_evloop_socket_create(th->ctx.loop, afd, H2O_SOCKET_FLAG_DONT_READ);
        th->admin_listener->data = th;
        h2o_socket_read_start(th->admin_listener, on_accept);
    }
    for (size_t i = 0; i < h->nstart_hooks; i++)
        h->start_hooks[i].fn(&th->ctx, th->index, h->start_hooks[i].ud);
    return 0;
}

static void loop_dispose(loop_thread_t *th)
{
    gw_http_t *h = th->srv;
    for (size_t i = 0; i < h->nstop_hooks; i++)
        h->stop_hooks[i].fn(&th->ctx, th->index, h->stop_hooks[i].ud);
    if (th->listener != NULL) {
        h2o_socket_close(th->listener);
        th->listener = NULL;
    }
    if (th->admin_listener != NULL) {
        h2o_socket_close(th->admin_listener);
        th->admin_listener = NULL;
    }
    /* let the loop run the close callbacks of sockets closed above */
    h2o_evloop_run(th->ctx.loop, 0);
    /* h2o_context_request_shutdown() arms HTTP/2's graceful-shutdown timer even with no HTTP/2
     * connection; disarm it or h2o_context_dispose() asserts */
    if (h2o_timeout_is_linked(&th->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&th->ctx.http2._graceful_shutdown_timeout);
    h2o_multithread_unregister_receiver(th->ctx.queue, &th->rx);
    if (th->nsocks > 0) {
        /* connections we had to abandon still hold timers: disposing would assert */
        gw_warn("http", "leaving an event loop with connections open", "thread=%zu connections=%zu",
                th->index, th->nsocks);
        return;
    }
    h2o_evloop_t *loop = th->ctx.loop;
    h2o_context_dispose(&th->ctx);
    h2o_evloop_destroy(loop);
    th->disposed = 1;
}

static void *loop_main(void *arg)
{
    loop_thread_t *th = arg;
    gw_http_t *h = th->srv;
    int rc = loop_init(th);
    pthread_mutex_lock(&h->init_lock);
    th->init_rc = rc != 0 ? rc : 1;
    h->ninit++;
    pthread_cond_broadcast(&h->init_cond);
    pthread_mutex_unlock(&h->init_lock);
    if (rc != 0) return NULL;
    for (;;) {
        if (h2o_evloop_run(th->ctx.loop, 50) != 0) {
            /* epoll_wait interrupted (SIGSTOP/SIGCONT, a debugger attaching): just go on */
            if (errno == EINTR) continue;
            gw_error("http", "the event loop failed", "thread=%zu error=\"%s\"", th->index,
                     strerror(errno));
            break;
        }
        if (!th->draining) continue;
        if (th->nsocks == 0) break;
        uint64_t now = h2o_now(th->ctx.loop);
        if (!th->forced && now >= th->drain_deadline) {
            th->forced = 1;
            gw_warn("http", "closing connections still open after the grace time",
                    "thread=%zu connections=%zu", th->index, th->nsocks);
            shutdown_all(th, SHUT_RDWR);
        } else if (th->forced && now >= th->drain_deadline + 1000) {
            gw_warn("http", "abandoning connections that did not close",
                    "thread=%zu connections=%zu", th->index, th->nsocks);
            break;
        }
    }
    loop_dispose(th);
    return NULL;
}

/* ---- lifecycle ---- */

/* Bind and listen on addr (the config key named by key); *out is the non-blocking socket. */
static int bind_listener(const char *key, const char *addr, int *out, gw_err_t *err)
{
    char host[256];
    int port;
    if (gw_config_parse_listen(addr, host, sizeof(host), &port) != 0)
        return gw_err_set(err, GW_ECONFIG, key, "\"%s\" is not \"host:port\"", addr);
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0)
        return gw_err_set(err, GW_ECONFIG, key, "could not resolve \"%s\": %s", host,
                          gai_strerror(rc));
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    if (fd < 0) {
        freeaddrinfo(res);
        return gw_err_set(err, GW_ESYS, key, "could not create a socket: %s", strerror(errno));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        int e = errno;
        close(fd);
        freeaddrinfo(res);
        if (e == EADDRINUSE) {
            gw_err_set(err, GW_EADDRINUSE, key,
                       "could not listen on %s: the address is already in use", addr);
            gw_err_detail(err,
                          "Another process (perhaps another ferry) listens there; stop it or set "
                          "%s to a free port.",
                          key);
            return GW_EADDRINUSE;
        }
        return gw_err_set(err, GW_ESYS, key, "could not listen on %s: %s", addr, strerror(e));
    }
    freeaddrinfo(res);
    if (listen(fd, 4096) != 0) {
        int e = errno;
        close(fd);
        return gw_err_set(err, GW_ESYS, key, "could not listen on %s: %s", addr, strerror(e));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    *out = fd;
    return 0;
}

static void cors_response_headers(gw_http_t *h, h2o_req_t *req)
{
    tracked_sock_t *ts = req_sock(req);
    if (ts != NULL && ts->admin) return;
    if (h->cors_any) {
        h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN,
                       H2O_STRLIT("*"), 1);
        return;
    }
    h2o_set_header_token(&req->pool, &req->res.headers, H2O_TOKEN_VARY, H2O_STRLIT("Origin"));
    h2o_iovec_t origin = req_header(req, H2O_STRLIT("origin"));
    if (origin.base != NULL && origin_allowed(h, origin))
        h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN,
                       origin.base, origin.len, 1);
}

static void add_cors_filter(gw_http_t *h, h2o_pathconf_t *pc, route_t *r)
{
    cors_filter_t *f = (cors_filter_t *)h2o_create_filter(pc, sizeof(*f));
    f->super.on_setup_ostream = cors_setup;
    f->srv = h;
    f->route = r;
}

static h2o_pathconf_t *register_path(gw_http_t *h, const char *path, route_t *r)
{
    h2o_pathconf_t *pc = h2o_config_register_path(h->hostconf, path, 0);
    route_handler_t *hd = (route_handler_t *)h2o_create_handler(pc, sizeof(*hd));
    hd->super.on_req = on_req;
    hd->route = r;
    hd->srv = h;
    add_logger(pc, r);
    add_cors_filter(h, pc, r);
    return pc;
}

/* The admin listener's address: http.admin_listen, or loopback on the port after
 * http.listen's. Returns 1 when it was derived (a default that may fail quietly), 0 when
 * configured, -1 when it is turned off ("off"). */
static int admin_address(const gw_config_t *cfg, char *buf, size_t len)
{
    const char *a = cfg->http.admin_listen;
    if (a != NULL && strcmp(a, "off") == 0) return -1;
    if (a != NULL && a[0] != '\0') {
        snprintf(buf, len, "%s", a);
        return 0;
    }
    char host[256];
    int port = 0;
    gw_config_parse_listen(cfg->http.listen, host, sizeof(host), &port);
    snprintf(buf, len, "127.0.0.1:%d", port < 65535 ? port + 1 : 65534);
    return 1;
}

static void cors_configure(gw_http_t *h, const gw_config_t *cfg)
{
    h->cors_origins = cfg->http.cors.allowed_origins;
    h->cors_norigins = cfg->http.cors.n_allowed_origins;
    for (size_t i = 0; i < h->cors_norigins; i++)
        if (strcmp(h->cors_origins[i], "*") == 0) h->cors_any = 1;
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_puts(&b, CORS_BASE_HEADERS);
    for (size_t i = 0; i < cfg->http.cors.n_allowed_headers; i++) {
        gw_buf_puts(&b, ", ");
        for (const char *p = cfg->http.cors.allowed_headers[i]; *p != '\0'; p++) {
            char c = (char)tolower((unsigned char)*p);
            gw_buf_append(&b, &c, 1);
        }
    }
    h->cors_headers = gw_xstrdup(b.len > 0 ? b.data : "");
    gw_buf_free(&b);
}

int gw_http_create(gw_http_t **out, const gw_config_t *cfg, gw_err_t *err)
{
    gw_http_t *h = gw_xcalloc(1, sizeof(*h));
    h->listen_fd = -1;
    h->admin_fd = -1;
    int rc = bind_listener("http.listen", cfg->http.listen, &h->listen_fd, err);
    if (rc != 0) {
        free(h);
        return rc;
    }
    snprintf(h->address, sizeof(h->address), "%s", cfg->http.listen);
    int derived = admin_address(cfg, h->admin_address, sizeof(h->admin_address));
    if (derived >= 0) {
        gw_err_t aerr;
        gw_err_clear(&aerr);
        rc = bind_listener("http.admin_listen", h->admin_address, &h->admin_fd, &aerr);
        if (rc != 0 && !derived) {
            if (err != NULL) *err = aerr;
            close(h->listen_fd);
            free(h);
            return rc;
        }
        if (rc != 0) {
            char msg[600], q[700];
            gw_warn("http", "no admin listener: probes and metrics are served on http.listen only",
                    "admin_addr=%s error=%s", h->admin_address,
                    gw_log_qs(gw_err_format(&aerr, msg, sizeof(msg)), q, sizeof(q)));
            h->admin_address[0] = '\0';
        }
    } else {
        h->admin_address[0] = '\0';
    }
    long n = cfg->http.threads;
    if (n <= 0) {
        n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n <= 0) n = 1;
    }
    h->nthreads = (size_t)n;
    h->max_connections = cfg->limits.max_connections;
    h->grace_ms = 3000;
    h2o_config_init(&h->config);
    h->config.max_request_entity_size = (size_t)cfg->http.max_request_body;
    /* HTTP/1.1 only: no "Upgrade: h2c", no prior-knowledge HTTP/2 on the cleartext listener
     * (this one setting turns off both in h2o 2.2.5) */
    h->config.http1.upgrade_to_http2 = 0;
    h->config.server_name = h2o_iovec_init(H2O_STRLIT("ferry"));
    h->hostconf =
        h2o_config_register_host(&h->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    /* h2o's own error responses (413, broken bodies) are bound to the fallback path */
    h2o_pathconf_t *fb = &h->hostconf->fallback_path;
    h2o_filter_t *f = h2o_create_filter(fb, sizeof(*f));
    f->on_setup_ostream = json_error_setup;
    add_logger(fb, NULL);
    add_cors_filter(h, fb, NULL);
    cors_configure(h, cfg);
    h->metric_not_found = gw_metrics_route("not_found");
    h->metric_other = gw_metrics_route("other");
    *out = h;
    return 0;
}

static void add_route(gw_http_t *h, const char *path, const char *metric, unsigned methods,
                      gw_http_handler_fn fn, void *ud, int admin)
{
    if (h->nroutes >= MAX_ROUTES) {
        gw_error("http", "too many routes", "path=%s", path);
        return;
    }
    route_t *r = &h->routes[h->nroutes++];
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->methods = methods;
    r->admin = admin;
    r->no_cors = admin && strncmp(path, "/probes/", 8) != 0;
    r->metric = gw_metrics_route(metric);
    r->fn = fn;
    r->ud = ud;
}

void gw_http_route(gw_http_t *h, const char *path, const char *metric, unsigned methods,
                   gw_http_handler_fn fn, void *ud)
{
    add_route(h, path, metric, methods, fn, ud, 0);
}

void gw_http_admin_route(gw_http_t *h, const char *path, const char *metric, unsigned methods,
                         gw_http_handler_fn fn, void *ud)
{
    add_route(h, path, metric, methods, fn, ud, 1);
}

void gw_http_on_shutdown(gw_http_t *h, gw_http_shutdown_fn fn, void *ud)
{
    if (h->nhooks < MAX_HOOKS) {
        h->hooks[h->nhooks].fn = fn;
        h->hooks[h->nhooks].ud = ud;
        h->nhooks++;
    }
}

void gw_http_on_thread_start(gw_http_t *h, gw_http_thread_fn fn, void *ud)
{
    if (h->nstart_hooks < MAX_HOOKS) {
        h->start_hooks[h->nstart_hooks].fn = fn;
        h->start_hooks[h->nstart_hooks].ud = ud;
        h->nstart_hooks++;
    }
}

void gw_http_on_thread_stop(gw_http_t *h, gw_http_thread_fn fn, void *ud)
{
    if (h->nstop_hooks < MAX_HOOKS) {
        h->stop_hooks[h->nstop_hooks].fn = fn;
        h->stop_hooks[h->nstop_hooks].ud = ud;
        h->nstop_hooks++;
    }
}

size_t gw_http_thread_index(gw_http_t *h, h2o_context_t *ctx)
{
    for (size_t i = 0; i < h->nthreads; i++)
        if (&h->threads[i].ctx == ctx) return i;
    return 0;
}

int gw_http_start(gw_http_t *h, gw_err_t *err)
{
    for (size_t i = 0; i < h->nroutes; i++)
        register_path(h, h->routes[i].path, &h->routes[i]);
    register_path(h, "/", NULL); /* everything else: JSON 404 */

    h->threads = gw_xcalloc(h->nthreads, sizeof(loop_thread_t));
    pthread_mutex_init(&h->init_lock, NULL);
    pthread_cond_init(&h->init_cond, NULL);
    size_t started = 0;
    for (size_t i = 0; i < h->nthreads; i++) {
        loop_thread_t *th = &h->threads[i];
        th->srv = h;
        th->index = i;
        h2o_linklist_init_anchor(&th->socks);
        if (pthread_create(&th->tid, NULL, loop_main, th) != 0) break;
        th->started = 1;
        started++;
    }
    /* wait until every loop has its context and receivers, so messages have somewhere to go */
    pthread_mutex_lock(&h->init_lock);
    while (h->ninit < started)
        pthread_cond_wait(&h->init_cond, &h->init_lock);
    pthread_mutex_unlock(&h->init_lock);
    for (size_t i = 0; i < h->nthreads; i++)
        if (!h->threads[i].started || h->threads[i].init_rc != 1)
            return gw_err_set(err, GW_ESYS, "http", "could not start event loop %zu", i);
    return 0;
}

const char *gw_http_address(const gw_http_t *h)
{
    return h->address;
}

const char *gw_http_admin_address(const gw_http_t *h)
{
    return h->admin_address;
}

size_t gw_http_threads(const gw_http_t *h)
{
    return h->nthreads;
}

h2o_context_t *gw_http_context(gw_http_t *h, size_t i)
{
    return i < h->nthreads && h->threads != NULL ? &h->threads[i].ctx : NULL;
}

void gw_http_shutdown(gw_http_t *h, unsigned grace_ms)
{
    if (h->threads == NULL) return;
    h->grace_ms = grace_ms;
    for (size_t i = 0; i < h->nthreads; i++) {
        loop_thread_t *th = &h->threads[i];
        if (th->started) h2o_multithread_send_message(&th->rx, &th->stop.super);
    }
    for (size_t i = 0; i < h->nthreads; i++) {
        loop_thread_t *th = &h->threads[i];
        if (th->started) {
            pthread_join(th->tid, NULL);
            th->started = 0;
        }
    }
}

void gw_http_destroy(gw_http_t *h)
{
    if (h == NULL) return;
    if (h->threads != NULL) {
        pthread_mutex_destroy(&h->init_lock);
        pthread_cond_destroy(&h->init_cond);
        free(h->threads);
    }
    h2o_config_dispose(&h->config);
    free(h->cors_headers);
    if (h->listen_fd >= 0) close(h->listen_fd);
    if (h->admin_fd >= 0) close(h->admin_fd);
    free(h);
}
