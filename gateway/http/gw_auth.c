/* gw_auth.c -- configure auth/ from ferry.yaml and verify request tokens (see gw_auth.h)
 *
 * The only file of the gateway that talks to the auth library's setup: it copies auth.* options
 * and auth.keys[] into auth_key_spec_t/auth_opts_t (each key's "ferry.yaml:LINE:COL" travels
 * along, so configuration errors point at the entry), routes JWKS refresh reports into the log,
 * and turns auth errors into the gateway's convention. The auth library itself never logs.
 * gw_auth_request() is where every client request is authenticated (401 on failure).
 */
#include "http/gw_auth.h"
#include "http/gw_http.h"

#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gw_auth_map_err(int auth_code)
{
    switch (auth_code) {
    case AUTH_OK:
        return GW_OK;
    case AUTH_ENOMEM:
        return GW_ENOMEM;
    case AUTH_EINVAL:
        return GW_ECONFIG;
    case AUTH_EIO:
        return GW_EIO;
    default:
        return GW_EAUTH;
    }
}

static void on_refresh(void *arg, const char *source, int rc, const auth_err_t *err, size_t n)
{
    (void)arg;
    char qs[512], qm[600];
    gw_log_qs(source, qs, sizeof(qs));
    if (rc == 0) {
        gw_debug("auth", "jwks loaded", "source=%s keys=%zu", qs, n);
    } else {
        gw_log_qs(err ? err->message : auth_err_code_str(rc), qm, sizeof(qm));
        gw_warn("auth", "could not refresh jwks, keeping the previous keys",
                "source=%s keys=%zu error=%s", qs, n, qm);
    }
}

int gw_auth_create_opts(const gw_config_t *cfg, int hmac_only, int background, auth_ctx_t **out,
                        gw_err_t *err)
{
    *out = NULL;
    size_t n = cfg->auth.n_keys;
    auth_key_spec_t *specs = gw_xcalloc(n ? n : 1, sizeof(*specs));
    char(*where)[300] = gw_xcalloc(n ? n : 1, sizeof(*where));
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_auth_key_cfg_t *k = &cfg->auth.keys[i];
        if (hmac_only && k->secret == NULL && k->secret_base64url == NULL) continue;
        auth_key_spec_t *s = &specs[used];
        snprintf(where[used], sizeof(where[used]), "%s:%d:%d", cfg->path ? cfg->path : "config",
                 k->line, k->col);
        s->kid = k->kid;
        s->alg = k->alg;
        s->secret = k->secret;
        s->secret_base64url = k->secret_base64url;
        s->pem = k->pem;
        s->pem_file = k->pem_file;
        s->jwks_file = k->jwks_file;
        s->jwks_uri = k->jwks_uri;
        s->where = where[used];
        used++;
    }
    auth_opts_t o = {0};
    o.audience = (const char *const *)cfg->auth.audience;
    o.n_audience = cfg->auth.n_audience;
    o.issuer = cfg->auth.issuer;
    o.max_lifetime = cfg->auth.max_lifetime;
    o.leeway = cfg->auth.leeway;
    o.jwks_refresh_interval = cfg->auth.jwks_refresh_interval;
    o.min_kid_refresh_gap = -1;
    o.max_token_bytes = cfg->auth.max_token_bytes;
    o.cache_entries = cfg->auth.cache_entries;
    o.background_refresh = background;
    o.on_refresh = on_refresh;
    auth_err_t aerr;
    int rc = auth_ctx_create(specs, used, &o, out, &aerr);
    free(specs);
    free(where);
    if (rc != 0) {
        int code = gw_auth_map_err(rc);
        if (code == GW_EIO || code == GW_EAUTH)
            code = GW_ECONFIG; /* a JWKS file that cannot be read is a configuration problem */
        gw_err_set(err, code, NULL, "%s", aerr.message);
        if (aerr.detail[0] != '\0') gw_err_detail(err, "%s", aerr.detail);
        return code;
    }
    return 0;
}

int gw_auth_create(const gw_config_t *cfg, auth_ctx_t **out, gw_err_t *err)
{
    return gw_auth_create_opts(cfg, 0, 1, out, err);
}

void gw_auth_destroy(auth_ctx_t *ctx)
{
    auth_ctx_destroy(ctx);
}

int gw_auth_verify_header(auth_ctx_t *ctx, const char *value, size_t len, auth_token_t **tok,
                          const char **code, gw_err_t *err, const char *log_fields)
{
    *tok = NULL;
    const char *jwt;
    size_t jwt_len;
    auth_err_t aerr;
    int rc = auth_header_token(value, value ? len : 0, &jwt, &jwt_len, &aerr);
    if (rc == 0) rc = auth_verify(ctx, jwt, jwt_len, tok, &aerr);
    if (rc == 0) {
        *code = NULL;
        gw_err_clear(err);
        return 0;
    }
    *code = rc == AUTH_ENOMEM ? "internal" : auth_err_code_str(rc);
    int gw = rc == AUTH_ENOMEM ? GW_ENOMEM : GW_EAUTH;
    gw_err_set(err, gw, NULL, "%s", aerr.message);
    if (aerr.detail[0] != '\0') gw_err_detail(err, "%s", aerr.detail);
    char qm[400], qd[600];
    gw_log_qs(aerr.message, qm, sizeof(qm));
    gw_log_qs(aerr.detail, qd, sizeof(qd));
    /* an unknown kid may mean keys were rotated, so it is worth a line at info; anyone can send
     * such tokens, so at most one line per 10 s, counting the ones left out */
    static gw_log_limit_t unknown_kid = GW_LOG_LIMIT_INIT(10000);
    unsigned long long suppressed;
    if (rc == AUTH_EUNKNOWNKID && gw_log_limit_take(&unknown_kid, &suppressed))
        gw_info("auth", "token rejected", "%s%scode=%s error=%s detail=%s suppressed=%llu",
                log_fields ? log_fields : "", log_fields ? " " : "", *code, qm, qd, suppressed);
    else
        gw_debug("auth", "token rejected", "%s%scode=%s error=%s", log_fields ? log_fields : "",
                 log_fields ? " " : "", *code, qm);
    return gw;
}

int gw_auth_request(auth_ctx_t *ctx, h2o_req_t *req, auth_token_t **tok)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    const char *value = i >= 0 ? req->headers.entries[i].value.base : NULL;
    size_t len = i >= 0 ? req->headers.entries[i].value.len : 0;
    const char *code = NULL;
    gw_err_t err;
    gw_err_clear(&err);
    if (gw_auth_verify_header(ctx, value, len, tok, &code, &err, NULL) == 0) return 0;
    gw_http_send_error(req, 401, code != NULL ? code : "unauthorized", "%s",
                       err.message[0] != '\0' ? err.message : "authentication failed");
    return -1;
}
