/* gw_serve.c -- `ferry serve`: load the config, start the HTTP server, run until a signal
 *
 * Start-up order: config -> logging -> open-files limit -> metrics -> sync rules (a bad file stops
 * here with its diagnostics) -> storage -> HTTP (bind first, so a port conflict fails fast and
 * clearly) -> routes -> replicator thread -> loop threads. The main thread then waits in sigwait()
 * for SIGTERM/SIGINT (blocked in every thread), and shutdown runs in reverse: stop accepting,
 * finish or close streams, join the loops, stop the replicator (it commits nothing half-done),
 * release everything, exit 0 within 5 s.
 */
#include "base/gw_buf.h"
#include "cli/gw_cli.h"
#include "cli/gw_cli_int.h"
#include "config/gw_config.h"
#include "http/gw_http.h"
#include "base/gw_log.h"
#include "api/gw_api.h"
#include "http/gw_auth.h"
#include "base/gw_metrics.h"
#include "repl/gw_repl.h"
#include "config/gw_rules.h"
#include "storage/gw_storage.h"
#include "base/gw_version.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Raise the open-files soft limit to the hard limit; many streams need many descriptors. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t before = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = before;
    }
    gw_info("main", "open-files limit", "soft_before=%llu soft=%llu hard=%llu",
            (unsigned long long)before, (unsigned long long)rl.rlim_cur,
            (unsigned long long)rl.rlim_max);
}

gw_storage_opts_t gw_cli_storage_opts(const gw_config_t *cfg, gw_storage_pub_t *pub)
{
    return (gw_storage_opts_t){.kind = cfg->storage.kind,
                               .path = cfg->storage.path,
                               .uri = cfg->storage.uri,
                               .schema = cfg->storage.schema,
                               .read_uri = cfg->storage.read_uri,
                               .lock_timeout = (int)cfg->storage.lock_timeout,
                               .wcp_retention = cfg->write_back.checkpoint_retention,
                               .pub = pub};
}

/* Create the folder that will hold path when it is missing (one level, like the demo's var/). */
static void ensure_parent_dir(const char *path)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir) return;
    *slash = '\0';
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        gw_warn("main", "could not create the storage folder", "dir=%s error=\"%s\"", dir,
                strerror(errno));
}

/* One summary a person can read at a glance: a logfmt line, and a short block on a terminal. */
static void print_summary(const gw_config_t *cfg, gw_http_t *http, rules_set_t *rules,
                          gw_repl_t *repl)
{
    size_t ntables = rules_table_count(rules);
    gw_info("main", "ferry is up",
            "listen=%s rules=%s rule_version=%s bucket_definitions=%zu tables=%zu "
            "write_rules=%zu constraints=%zu publication=%s storage=%s",
            gw_http_address(http), cfg->sync_rules.path, gw_repl_version(repl),
            rules_definition_count(rules), ntables, rules_write_count(rules),
            rules_constraint_count(rules), cfg->replication.publication,
            strcmp(cfg->storage.kind, "postgres") == 0 ? cfg->storage.schema : cfg->storage.path);
    if (!isatty(STDERR_FILENO)) return;
    fprintf(stderr,
            "\n  ferry %s is up\n"
            "    endpoint     http://%s  (POST /sync/stream, POST /api/write)\n"
            "    sync rules   %s: %zu bucket definitions over %zu tables, %zu write rules\n"
            "    replication  publication \"%s\", rule version %s; readiness: "
            "http://%s/probes/readiness\n"
            "    metrics      http://%s/metrics\n\n",
            gw_version(), gw_http_address(http), cfg->sync_rules.path,
            rules_definition_count(rules), ntables, rules_write_count(rules),
            cfg->replication.publication, gw_repl_version(repl), gw_http_address(http),
            gw_http_address(http));
}

static void serve_usage(FILE *out)
{
    fprintf(out, "usage: ferry serve --config FILE\n"
                 "  --config FILE   the configuration (default: $FERRY_CONFIG)\n");
}

int gw_cli_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'}, {0}};
    const char *config_flag = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_flag = optarg;
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ferry serve: unexpected argument \"%s\"\n", argv[optind]);
        serve_usage(stderr);
        return 2;
    }
    const char *path = gw_cli_config_path(config_flag);
    if (path == NULL) {
        fprintf(stderr, "ferry serve: no configuration given (use --config FILE or set "
                        "FERRY_CONFIG)\n");
        serve_usage(stderr);
        return 2;
    }

    gw_config_t cfg;
    gw_err_t err;
    char msg[1024];
    if (gw_config_load(&cfg, path, &err) != 0) {
        fprintf(stderr, "ferry: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    gw_log_set_level(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    gw_info("main", "starting ferry", "version=%s revision=%s config=%s", gw_version(),
            gw_revision(), path);
    raise_nofile();
    gw_metrics_init();

    /* everything below is released in one place, in reverse order (NULL is fine for each) */
    rules_set_t *rules = NULL;
    gw_storage_pub_t *pub = NULL;
    gw_storage_opts_t sopts = {0};
    gw_storage_t *storage = NULL;
    gw_repl_t *repl = NULL;
    gw_streams_t *streams = NULL;
    auth_ctx_t *auth = NULL;
    gw_http_t *http = NULL;
    gw_workers_t *workers = NULL;
    gw_app_t app = {.cfg = &cfg};
    int status = 1, started = 0;
    char rules_hash[32];
    gw_buf_t rules_text = GW_BUF_INIT;

    if (gw_rules_load_text(cfg.sync_rules.path, &rules, rules_hash, sizeof(rules_hash), &rules_text,
                           stderr, &err) != 0)
        goto fail;
    gw_buf_append(&rules_text, "", 1); /* NUL-terminated: the storage keeps it */
    /* storage: readers of this process serve what the serving writer published (durable) */
    pub = gw_storage_pub_new();
    sopts = gw_cli_storage_opts(&cfg, pub);
    if (strcmp(cfg.storage.kind, "sqlite") == 0) ensure_parent_dir(cfg.storage.path);
    if (gw_storage_open(&sopts, &storage, &err) != 0) goto fail;
    streams = gw_streams_new(storage);
    if (gw_repl_create(&cfg, rules, rules_hash, rules_text.data, storage, &repl, &err) != 0)
        goto fail;
    storage = NULL; /* the replicator owns it now */
    gw_info("main", "sync rules loaded", "file=%s version=%s", cfg.sync_rules.path,
            gw_repl_version(repl));
    if (gw_auth_create(&cfg, &auth, &err) != 0 || gw_http_create(&http, &cfg, &err) != 0 ||
        gw_workers_create(cfg.postgres.uri, (size_t)cfg.postgres.pool_size,
                          (int)cfg.postgres.timeout, http, &workers, &err) != 0)
        goto fail;
    app = (gw_app_t){.cfg = &cfg,
                     .http = http,
                     .auth = auth,
                     .repl = repl,
                     .storage = &sopts,
                     .workers = workers,
                     .streams = streams};
    gw_probes_register(&app);
    gw_wcp_register(&app);
    gw_stream_register(&app);
    gw_write_register(&app);
    gw_admin_register(&app);
    gw_metrics_add_collector(gw_repl_metrics, repl);
    gw_repl_on_switch(repl, gw_stream_rules_changed, &app);

    started = 1;
    if (gw_repl_start(repl, &err) != 0 || gw_http_start(http, &err) != 0) goto fail;
    gw_info("main", "listening", "addr=%s admin_addr=%s threads=%zu", gw_http_address(http),
            gw_http_admin_address(http)[0] != '\0' ? gw_http_admin_address(http) : "-",
            gw_http_threads(http));
    print_summary(&cfg, http, gw_repl_active(repl)->rules, repl);

    int sig = 0;
    sigwait(&sigs, &sig);
    gw_info("main", "shutting down", "signal=%s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    status = 0;

fail:
    if (status != 0) {
        gw_err_format(&err, msg, sizeof(msg));
        gw_error("main", msg, NULL);
        if (err.detail[0] != '\0')
            fprintf(stderr, "ferry: %s\n       %s\n", msg, err.detail);
        else
            fprintf(stderr, "ferry: %s\n", msg);
    }
    if (started) gw_http_shutdown(http, status == 0 ? 3000 : 0);
    if (streams != NULL && app.streams != NULL) gw_stream_detach(&app);
    gw_workers_destroy(workers);
    gw_http_destroy(http);
    gw_auth_destroy(auth);
    gw_repl_destroy(repl);
    gw_storage_close(storage);
    gw_streams_free(streams);
    gw_storage_pub_free(pub);
    rules_unref(rules);
    gw_buf_free(&rules_text);
    gw_config_free(&cfg);
    if (status != 0) return 1;
    gw_info("main", "stopped", NULL);
    return 0;
}
