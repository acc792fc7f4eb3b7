/* gw_auth.h -- the gateway's side of authentication: auth/ configured from ferry.yaml
 *
 * gw_auth_create() turns the parsed configuration (auth.* and auth.keys[], see gw_config.h) into
 * an auth_ctx_t with a background JWKS refresh thread whose results are logged (mod=auth).
 * gw_auth_verify_header() takes an Authorization header value and returns the verified token or
 * the stable error code and description the HTTP layer answers with 401:
 *   {"error":{"code":"expired","description":"token expired 42 seconds ago"}}
 * Descriptions never contain the token. Both are safe to call from any thread.
 */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include "auth/auth.h"
#include "base/gw_err.h"
#include "config/gw_config.h"

#include <h2o.h>

/**
 * Build the auth context from cfg->auth. JWKS files must load; a JWKS URL that is down at start
 * is logged and retried. Returns 0 and *out (the caller owns it; release with
 * gw_auth_destroy()), or GW_ECONFIG with err->message "ferry.yaml:LINE:COL: ..." naming the
 * offending auth.keys entry.
 */
int gw_auth_create(const gw_config_t *cfg, auth_ctx_t **out, gw_err_t *err);

/** Same as gw_auth_create() but with options for tools: hmac_only keeps only the auth.keys
 *  entries with a secret (no JWKS fetch), background 0 starts no refresh thread. */
int gw_auth_create_opts(const gw_config_t *cfg, int hmac_only, int background, auth_ctx_t **out,
                        gw_err_t *err);

/** Stop the refresh thread and free ctx (NULL is fine). */
void gw_auth_destroy(auth_ctx_t *ctx);

/**
 * Verify an Authorization header value (value may be NULL when the header is absent; len is its
 * length). Returns 0 and *tok (a reference the caller releases with auth_token_release()), or
 * GW_EAUTH with *code a static stable code string ("malformed", "expired", "bad_signature",
 * "unknown_kid", "alg_mismatch", "bad_audience", "bad_issuer", "lifetime_too_long",
 * "missing_claim", "not_yet_valid") and err->message the description for the response;
 * err->detail may hold more for the log (for unknown_kid: the key ids we know). GW_ENOMEM with
 * *code "internal" when memory ran out. log_fields (may be NULL, e.g. "conn=c7f3a") is added to
 * the one log line written for unknown_kid (info); other rejections are logged at debug.
 */
int gw_auth_verify_header(auth_ctx_t *ctx, const char *value, size_t len, auth_token_t **tok,
                          const char **code, gw_err_t *err, const char *log_fields);

/**
 * Verify req's Authorization header with ctx (a loop thread). Returns 0 and *tok (release with
 * auth_token_release), or sends 401 {"error":{"code":…,"description":…}} and returns -1.
 */
int gw_auth_request(auth_ctx_t *ctx, h2o_req_t *req, auth_token_t **tok);

/** Map an auth/ error code to the gateway's (GW_EAUTH for token problems, GW_ECONFIG for key
 *  definitions, GW_EIO, GW_ENOMEM). */
int gw_auth_map_err(int auth_code);

#endif
