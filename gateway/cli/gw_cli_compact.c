/* gw_cli_compact.c -- `ferry compact --config FILE`: compact the running server's storage now
 *
 * Reads the same config as the server and POSTs to its admin API (/api/admin/compact, see
 * api/gw_admin.c) over loopback with libcurl, with admin.token as the bearer token. The server
 * compacts on its replicator thread and answers with what it did, which is printed.
 */
#include "base/gw_buf.h"
#include "cli/gw_cli.h"
#include "config/gw_config.h"

#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

/* How long the server may take (its own wait for the replicator is 300 s). */
#define COMPACT_WAIT_S 300

static size_t collect(char *data, size_t size, size_t n, void *ud)
{
    gw_buf_append(ud, data, size * n);
    return size * n;
}

static void compact_usage(FILE *out)
{
    fprintf(out, "usage: ferry compact --config FILE\n"
                 "  asks the running ferry (http.listen of FILE) to compact bucket storage now;\n"
                 "  needs admin.token in FILE\n");
}

int gw_cli_compact(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'}, {0}};
    const char *config = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'h':
            compact_usage(stdout);
            return 0;
        default:
            compact_usage(stderr);
            return 2;
        }
    }
    const char *path = gw_cli_config_path(config);
    if (path == NULL || optind < argc) {
        compact_usage(stderr);
        return 2;
    }
    gw_config_t cfg;
    gw_err_t err;
    char msg[1024];
    if (gw_config_load(&cfg, path, &err) != 0) {
        fprintf(stderr, "ferry compact: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    if (cfg.admin.token == NULL || cfg.admin.token[0] == '\0') {
        fprintf(stderr, "ferry compact: %s has no admin.token, so the admin API is disabled\n",
                path);
        gw_config_free(&cfg);
        return 1;
    }
    char host[256], url[512], auth[1024];
    int port;
    if (gw_config_parse_listen(cfg.http.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ferry compact: cannot parse http.listen \"%s\"\n", cfg.http.listen);
        gw_config_free(&cfg);
        return 1;
    }
    /* a server listening on every address is reached over loopback */
    const char *h = strcmp(host, "0.0.0.0") == 0 || host[0] == '\0' ? "127.0.0.1"
                    : strcmp(host, "::") == 0                       ? "::1"
                                                                    : host;
    snprintf(url, sizeof(url),
             strchr(h, ':') != NULL ? "http://[%s]:%d/api/admin/compact"
                                    : "http://%s:%d/api/admin/compact",
             h, port);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg.admin.token);
    gw_config_free(&cfg);
    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        fprintf(stderr, "ferry compact: could not initialise libcurl\n");
        return 1;
    }
    gw_buf_t body = GW_BUF_INIT;
    struct curl_slist *hdrs = curl_slist_append(NULL, auth);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)COMPACT_WAIT_S + 30);
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    int rc = 0;
    if (cc != CURLE_OK) {
        fprintf(stderr, "ferry compact: could not reach %s: %s\n", url, curl_easy_strerror(cc));
        rc = 1;
    } else if (status != 200) {
        fprintf(stderr, "ferry compact: the server answered %ld: %.*s\n", status, (int)body.len,
                body.data != NULL ? body.data : "");
        rc = 1;
    } else {
        printf("%.*s\n", (int)body.len, body.data != NULL ? body.data : "");
    }
    gw_buf_free(&body);
    return rc;
}
