/* gw_probes.c -- the probes and metrics: GET /probes/liveness, /probes/readiness, /metrics
 *
 * Liveness answers while the process runs; readiness is the AND of the conditions modules
 * register with gw_ready_register (replication registers "consistent checkpoint"), 200 or 503
 * with each condition and its reason; /metrics is the Prometheus text of every collector. The
 * paths are PowerSync's, so the same health checks work against either service. All three are
 * served on the admin listener (outside limits.max_connections) as well as on http.listen.
 */
#include "api/gw_api.h"
#include "base/gw_buf.h"
#include "base/gw_metrics.h"

static int on_liveness(h2o_req_t *req, void *ud)
{
    (void)ud;
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b, "{\"alive\":true,\"uptime_seconds\":%.3f}", gw_metrics_uptime());
    gw_http_send_json(req, 200, b.data, b.len);
    gw_buf_free(&b);
    return 0;
}

static int on_readiness(h2o_req_t *req, void *ud)
{
    (void)ud;
    gw_buf_t b = GW_BUF_INIT;
    int ready = gw_ready_render(&b);
    gw_http_send_json(req, ready ? 200 : 503, b.data, b.len);
    gw_buf_free(&b);
    return 0;
}

static int on_metrics(h2o_req_t *req, void *ud)
{
    (void)ud;
    gw_buf_t b = GW_BUF_INIT;
    gw_metrics_render(&b);
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = b.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/plain; version=0.0.4"));
    h2o_send_inline(req, b.data, b.len);
    gw_buf_free(&b);
    return 0;
}

void gw_probes_register(gw_app_t *app)
{
    gw_http_admin_route(app->http, "/probes/liveness", "liveness", GW_HTTP_GET | GW_HTTP_HEAD,
                        on_liveness, NULL);
    gw_http_admin_route(app->http, "/probes/readiness", "readiness", GW_HTTP_GET | GW_HTTP_HEAD,
                        on_readiness, NULL);
    gw_http_admin_route(app->http, "/metrics", "metrics", GW_HTTP_GET | GW_HTTP_HEAD, on_metrics,
                        NULL);
}
