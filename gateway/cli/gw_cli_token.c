/* gw_cli_token.c -- `ferry token`: print a development token signed with the configured HMAC key
 *
 *   ferry token --config FILE --sub USER [--claim key=value]... [--ttl SECONDS] [--kid KID]
 *
 * Claims: "sub", "iat" now, "exp" now + ttl (default 3600, at most auth.max_lifetime), "aud" the
 * first of auth.audience and "iss" auth.issuer when configured. Each --claim adds key=value,
 * the value as JSON when it parses as JSON (`regions=["eu"]`, `n=3`, `admin=true`), else as a
 * string; a --claim may also replace one of the claims above (tests use `--claim exp=1`).
 * The token is signed by the auth library with the auth.keys entry that has a secret (the one
 * whose kid is --kid, else the first); public-key entries are never fetched or used. Prints the
 * token and a newline on stdout, nothing else. Exit 0, 1 when it cannot sign, 2 on usage errors.
 */
#include "http/gw_auth.h"
#include "cli/gw_cli.h"
#include "config/gw_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int usage(void)
{
    fprintf(stderr, "usage: ferry token --config FILE --sub USER [--claim key=value]... "
                    "[--ttl SECONDS] [--kid KID]\n");
    return 2;
}

int gw_cli_token(int argc, char **argv)
{
    const char *config = NULL, *sub = NULL, *kid = NULL;
    long ttl = 3600;
    json_t *extra = json_object();
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            json_decref(extra);
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ferry token: unknown option or missing value for \"%s\"\n", a);
            goto out_usage;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) {
            config = v;
        } else if (strcmp(a, "--sub") == 0) {
            sub = v;
        } else if (strcmp(a, "--kid") == 0) {
            kid = v;
        } else if (strcmp(a, "--ttl") == 0) {
            char *end;
            errno = 0;
            ttl = strtol(v, &end, 10);
            if (errno != 0 || *end != '\0' || end == v || ttl <= 0) {
                fprintf(stderr, "ferry token: --ttl must be a positive number of seconds\n");
                goto out_usage;
            }
        } else if (strcmp(a, "--claim") == 0) {
            const char *eq = strchr(v, '=');
            if (eq == NULL || eq == v) {
                fprintf(stderr, "ferry token: --claim must be key=value\n");
                goto out_usage;
            }
            char *key = strndup(v, (size_t)(eq - v));
            json_t *val = json_loads(eq + 1, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
            if (val == NULL) val = json_string(eq + 1);
            if (key == NULL || val == NULL || json_object_set_new(extra, key, val) != 0) {
                free(key);
                fprintf(stderr, "ferry token: claim \"%.*s\" is not valid UTF-8\n", (int)(eq - v),
                        v);
                goto out_usage;
            }
            free(key);
        } else {
            fprintf(stderr, "ferry token: unknown option \"%s\"\n", a);
            goto out_usage;
        }
    }
    config = gw_cli_config_path(config);
    if (config == NULL || sub == NULL) {
        fprintf(stderr, "ferry token: %s\n",
                config == NULL ? "no configuration given (use --config FILE or set FERRY_CONFIG)"
                               : "--sub USER is required");
        goto out_usage;
    }

    rc = 1;
    gw_config_t cfg;
    gw_err_t err;
    char msg[1200];
    if (gw_config_load(&cfg, config, &err) != 0) {
        fprintf(stderr, "ferry token: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        json_decref(extra);
        return 1;
    }
    if (ttl > cfg.auth.max_lifetime) {
        fprintf(stderr, "ferry token: --ttl %ld exceeds auth.max_lifetime (%ld)\n", ttl,
                cfg.auth.max_lifetime);
        rc = 2;
        goto out_cfg;
    }
    auth_ctx_t *ctx = NULL;
    if (gw_auth_create_opts(&cfg, 1, 0, &ctx, &err) != 0) {
        if (strstr(err.message, "no keys configured") != NULL)
            fprintf(stderr, "ferry token: no HMAC key in auth.keys (an entry with alg HS256, "
                            "HS384 or HS512 and a secret signs development tokens)\n");
        else
            fprintf(stderr, "ferry token: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        goto out_cfg;
    }
    long long now = (long long)time(NULL);
    json_t *claims = json_object();
    json_object_set_new(claims, "sub", json_string(sub));
    json_object_set_new(claims, "iat", json_integer(now));
    json_object_set_new(claims, "exp", json_integer(now + ttl));
    if (cfg.auth.n_audience > 0)
        json_object_set_new(claims, "aud", json_string(cfg.auth.audience[0]));
    if (cfg.auth.issuer != NULL) json_object_set_new(claims, "iss", json_string(cfg.auth.issuer));
    json_object_update(claims, extra);
    char *tok = NULL;
    auth_err_t aerr;
    if (auth_sign_hmac(ctx, kid, claims, &tok, &aerr) != 0) {
        fprintf(stderr, "ferry token: %s\n", aerr.message);
        if (aerr.detail[0]) fprintf(stderr, "DETAIL: %s\n", aerr.detail);
    } else {
        printf("%s\n", tok);
        rc = fflush(stdout) == 0 ? 0 : 1;
        free(tok);
    }
    json_decref(claims);
    gw_auth_destroy(ctx);
out_cfg:
    gw_config_free(&cfg);
    json_decref(extra);
    return rc;
out_usage:
    json_decref(extra);
    return usage();
}
