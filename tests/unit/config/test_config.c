/* test_config.c -- unit tests of the configuration (config/gw_config.c)
 *
 * The cases assert the exact "file:line:col: message" text for every kind of bad input.
 */
#include "config/gw_config.h"
#include "base/gw_err.h"
#include "base/gw_log.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static const char *example_path(void)
{
    const char *root = getenv("FERRY_SRC");
    static char path[1024];
    snprintf(path, sizeof(path), "%s/deploy/ferry.example.yaml", root != NULL ? root : ".");
    return path;
}

/* 1-based line of the first line of path containing needle, 0 when none. */
static int line_of(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0, found = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        n++;
        if (strstr(line, needle) != NULL) {
            found = n;
            break;
        }
    }
    if (f != NULL) fclose(f);
    return found;
}

/* Load text as "f.yaml" from folder "/cfg"; return the formatted error ("" on success). */
static const char *load_err(const char *text)
{
    static char msg[1200];
    gw_config_t cfg;
    gw_err_t err;
    gw_err_clear(&err);
    if (gw_config_load_string(&cfg, text, strlen(text), "f.yaml", "/cfg", &err) == 0) {
        gw_config_free(&cfg);
        return "";
    }
    ck_assert_int_eq(err.code, GW_ECONFIG);
    return gw_err_format(&err, msg, sizeof(msg));
}

#define MINIMAL "postgres:\n  uri: \"postgresql://x@127.0.0.1/app\"\n"

START_TEST(test_config_load_full_example)
{
    gw_config_t cfg;
    gw_err_t err;
    setenv("FERRY_DEV_SECRET", "s3cret-from-env", 1);
    int rc = gw_config_load(&cfg, example_path(), &err);
    char msg[1200];
    ck_assert_msg(rc == 0, "example failed: %s", gw_err_format(&err, msg, sizeof(msg)));
    ck_assert_int_eq(cfg.log_level, GW_LOG_INFO);
    ck_assert_str_eq(cfg.http.listen, "127.0.0.1:8080");
    ck_assert_int_eq(cfg.http.threads, 2);
    ck_assert_int_eq(cfg.http.max_request_body, 1048576);
    ck_assert_str_eq(cfg.postgres.uri, "postgresql://ferry@127.0.0.1:5432/app");
    ck_assert_str_eq(cfg.replication.publication, "ferry");
    ck_assert_int_eq(cfg.replication.snapshot_chunk_rows, 10000);
    ck_assert_int_eq(cfg.auth.n_audience, 1);
    ck_assert_str_eq(cfg.auth.audience[0], "ferry");
    ck_assert_str_eq(cfg.auth.issuer, "https://auth.example.com/");
    ck_assert_int_eq(cfg.auth.n_keys, 6);
    ck_assert_str_eq(cfg.auth.keys[0].kid, "dev");
    ck_assert_str_eq(cfg.auth.keys[0].alg, "HS256");
    ck_assert_str_eq(cfg.auth.keys[0].secret, "s3cret-from-env");
    ck_assert_str_eq(
        cfg.auth.keys[1].secret_base64url,
        "YW4tZXhhbXBsZS1oczUxMi1zZWNyZXQtb2YtYXQtbGVhc3Qtc2l4dHktZm91ci1ieXRlcy0wMTIzNDU2Nzg5YWI");
    /* relative paths resolve against the config file's folder */
    ck_assert_ptr_nonnull(strstr(cfg.auth.keys[2].pem_file, "deploy/keys/rsa-1.pub.pem"));
    ck_assert_ptr_nonnull(strstr(cfg.storage.path, "deploy/./var/ferry-storage.db"));
    ck_assert_str_eq(cfg.auth.keys[5].jwks_uri, "https://auth.example.com/.well-known/jwks.json");
    ck_assert_int_eq(cfg.auth.keys[0].line, line_of(example_path(), "kid: dev,"));
    ck_assert_int_eq(cfg.auth.keys[0].col, 7);
    ck_assert_int_eq(cfg.limits.max_connections, 10000);
    ck_assert_int_eq(cfg.limits.max_subscriptions_per_connection, 100);
    ck_assert_int_eq(cfg.limits.max_subscription_parameter_bytes, 4096);
    gw_config_free(&cfg);
    unsetenv("FERRY_DEV_SECRET");
}
END_TEST

START_TEST(test_config_defaults_and_env_default)
{
    gw_config_t cfg;
    gw_err_t err;
    unsetenv("FERRY_TEST_UNSET");
    const char *text = "postgres:\n  uri: \"${FERRY_TEST_UNSET:-postgresql://d@127.0.0.1/x}\"\n"
                       "storage:\n  path: data/s.db\n";
    ck_assert_int_eq(gw_config_load_string(&cfg, text, strlen(text), "f.yaml", "/cfg", &err), 0);
    ck_assert_str_eq(cfg.postgres.uri, "postgresql://d@127.0.0.1/x");
    ck_assert_str_eq(cfg.storage.path, "/cfg/data/s.db");
    ck_assert_str_eq(cfg.sync_rules.path, "/cfg/sync-rules.yaml");
    ck_assert_str_eq(cfg.http.listen, "127.0.0.1:8080");
    ck_assert_int_eq(cfg.auth.leeway, 60);
    ck_assert_int_eq(cfg.auth.max_token_bytes, 16384);
    ck_assert_int_eq(cfg.limits.max_buckets_per_connection, 1000);
    /* Sync Streams limits: the defaults deploy/ferry.example.yaml and rules/README.md document */
    ck_assert_int_eq(cfg.limits.max_subscriptions_per_connection, 100);
    ck_assert_int_eq(cfg.limits.max_subscription_parameter_bytes, 4096);
    /* the limits one user runs into (issue 19) */
    ck_assert_int_eq(cfg.write_back.max_ops_per_batch, 1000);
    ck_assert_int_eq(cfg.write_back.max_batches_per_user, 4);
    ck_assert_int_eq(cfg.write_back.statement_timeout, 30);
    ck_assert_int_eq(cfg.write_back.batch_timeout, 0);
    ck_assert_int_eq(cfg.write_back.checkpoint_retention, 90L * 86400);
    ck_assert_int_eq(cfg.limits.max_streams_per_user, 10);
    ck_assert_ptr_null(cfg.http.admin_listen); /* 127.0.0.1:<listen port + 1> */
    gw_config_free(&cfg);
}
END_TEST

/* The security limits are read from the file, and out-of-range values are refused. */
START_TEST(test_config_write_back_and_stream_limits)
{
    gw_config_t cfg;
    gw_err_t err;
    const char *text = MINIMAL "write_back:\n  max_ops_per_batch: 250\n  max_batches_per_user: 2\n"
                               "  statement_timeout: 5\n  batch_timeout: 8\n"
                               "  checkpoint_retention: 3600\n"
                               "limits:\n  max_streams_per_user: 3\n"
                               "http:\n  admin_listen: \"127.0.0.1:9999\"\n";
    ck_assert_int_eq(gw_config_load_string(&cfg, text, strlen(text), "f.yaml", "/cfg", &err), 0);
    ck_assert_int_eq(cfg.write_back.max_ops_per_batch, 250);
    ck_assert_int_eq(cfg.write_back.max_batches_per_user, 2);
    ck_assert_int_eq(cfg.write_back.statement_timeout, 5);
    ck_assert_int_eq(cfg.write_back.batch_timeout, 8);
    ck_assert_int_eq(cfg.write_back.checkpoint_retention, 3600);
    ck_assert_int_eq(cfg.limits.max_streams_per_user, 3);
    ck_assert_str_eq(cfg.http.admin_listen, "127.0.0.1:9999");
    gw_config_free(&cfg);
    ck_assert_str_ne(load_err(MINIMAL "write_back:\n  batch_timeout: -1\n"), "");
    ck_assert_str_ne(load_err(MINIMAL "write_back:\n  max_ops_per_batch: 0\n"), "");
    ck_assert_str_ne(load_err(MINIMAL "write_back:\n  checkpoint_retention: 59\n"), "");
}
END_TEST

START_TEST(test_config_rejects_syntax_error)
{
    ck_assert_str_eq(load_err(MINIMAL "http:\n  listen: [1, 2\n"),
                     "f.yaml:5:1: syntax error: did not find expected ',' or ']' while parsing "
                     "a flow sequence");
}
END_TEST

START_TEST(test_config_rejects_unknown_key_with_suggestion)
{
    ck_assert_str_eq(load_err(MINIMAL "http:\n  listn: \"127.0.0.1:1\"\n"),
                     "f.yaml:4:3: unknown key \"listn\" (did you mean \"listen\"?)");
    ck_assert_str_eq(load_err(MINIMAL "zzzqqq: 1\n"), "f.yaml:3:1: unknown key \"zzzqqq\"");
    ck_assert_str_eq(load_err(MINIMAL "auth:\n  keys:\n    - { kid: a, algo: HS256 }\n"),
                     "f.yaml:5:17: unknown key \"algo\" (did you mean \"alg\"?)");
}
END_TEST

START_TEST(test_config_rejects_wrong_type)
{
    ck_assert_str_eq(load_err(MINIMAL "http:\n  threads: two\n"),
                     "f.yaml:4:12: \"http.threads\" must be an integer (got \"two\")");
    ck_assert_str_eq(load_err(MINIMAL "http:\n  threads: 100000\n"),
                     "f.yaml:4:12: \"http.threads\" must be between 0 and 256 (got 100000)");
    ck_assert_str_eq(load_err(MINIMAL "http: 5\n"), "f.yaml:3:7: \"http\" must be a mapping");
    ck_assert_str_eq(load_err(MINIMAL "http:\n  listen: [a]\n"),
                     "f.yaml:4:11: \"http.listen\" must be a string");
    ck_assert_str_eq(load_err(MINIMAL "http:\n  listen: \"localhost\"\n"),
                     "f.yaml:4:11: \"http.listen\" must be \"host:port\" (got \"localhost\")");
    ck_assert_str_eq(load_err(MINIMAL "log_level: loud\n"),
                     "f.yaml:3:12: \"log_level\" must be one of debug, info, warn, error (got "
                     "\"loud\")");
    ck_assert_str_eq(load_err(MINIMAL "auth:\n  keys: {kid: a}\n"),
                     "f.yaml:4:9: \"auth.keys\" must be a list");
}
END_TEST

START_TEST(test_config_rejects_missing_required_key)
{
    ck_assert_str_eq(load_err("http:\n  threads: 1\n"),
                     "f.yaml:1:1: missing required key \"postgres.uri\"");
    ck_assert_str_eq(load_err("postgres:\n  other: 1\n"), "f.yaml:2:3: unknown key \"other\"");
    ck_assert_str_eq(load_err("http:\n  threads: 1\npostgres:\n  uri:\n"),
                     "f.yaml:4:7: \"postgres.uri\" must not be empty");
    ck_assert_str_eq(load_err(""), "f.yaml:1:1: the configuration is empty (see "
                                   "deploy/ferry.example.yaml)");
}
END_TEST

START_TEST(test_config_rejects_unset_variable)
{
    unsetenv("FERRY_TEST_UNSET");
    ck_assert_str_eq(load_err("postgres:\n  uri: \"${FERRY_TEST_UNSET}\"\n"),
                     "f.yaml:2:8: environment variable \"FERRY_TEST_UNSET\" is not set (write "
                     "${FERRY_TEST_UNSET:-default} to give a default)");
    ck_assert_str_eq(load_err("postgres:\n  uri: \"${1BAD}\"\n"),
                     "f.yaml:2:8: malformed variable reference \"${1BAD}\" in \"postgres.uri\"");
}
END_TEST

START_TEST(test_config_rejects_duplicate_key)
{
    ck_assert_str_eq(load_err(MINIMAL "http:\n  threads: 1\n  threads: 2\n"),
                     "f.yaml:5:3: duplicate key \"threads\"");
}
END_TEST

START_TEST(test_config_substitutes_and_escapes)
{
    gw_config_t cfg;
    gw_err_t err;
    setenv("FERRY_TEST_HOST", "127.0.0.9", 1);
    const char *text = "postgres:\n  uri: \"postgresql://u@${FERRY_TEST_HOST}/$${lit}\"\n";
    ck_assert_int_eq(gw_config_load_string(&cfg, text, strlen(text), "f.yaml", "/cfg", &err), 0);
    ck_assert_str_eq(cfg.postgres.uri, "postgresql://u@127.0.0.9/${lit}");
    gw_config_free(&cfg);
    unsetenv("FERRY_TEST_HOST");
}
END_TEST

START_TEST(test_config_parse_listen)
{
    char host[64];
    int port;
    ck_assert_int_eq(gw_config_parse_listen("127.0.0.1:8080", host, sizeof(host), &port), 0);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_int_eq(port, 8080);
    ck_assert_int_eq(gw_config_parse_listen("[::1]:9", host, sizeof(host), &port), 0);
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(port, 9);
    ck_assert_int_eq(gw_config_parse_listen("host:0", host, sizeof(host), &port), GW_EINVAL);
    ck_assert_int_eq(gw_config_parse_listen("host:70000", host, sizeof(host), &port), GW_EINVAL);
    ck_assert_int_eq(gw_config_parse_listen(":80", host, sizeof(host), &port), GW_EINVAL);
    ck_assert_int_eq(gw_config_parse_listen("::1:80", host, sizeof(host), &port), GW_EINVAL);
}
END_TEST

START_TEST(test_config_storage_kind)
{
    gw_config_t cfg;
    gw_err_t err;
    ck_assert_int_eq(gw_config_load_string(&cfg, MINIMAL, strlen(MINIMAL), "f.yaml", "/cfg", &err),
                     0);
    ck_assert_str_eq(cfg.storage.kind, "sqlite"); /* the default */
    ck_assert_str_eq(cfg.storage.path, "/cfg/ferry-storage.db");
    gw_config_free(&cfg);
    const char *sq = MINIMAL "storage:\n  kind: sqlite\n  path: s.db\n";
    ck_assert_int_eq(gw_config_load_string(&cfg, sq, strlen(sq), "f.yaml", "/cfg", &err), 0);
    ck_assert_str_eq(cfg.storage.path, "/cfg/s.db");
    gw_config_free(&cfg);
    ck_assert_str_eq(load_err(MINIMAL "storage:\n  kind: mongodb\n"),
                     "f.yaml:4:9: \"storage.kind\" must be one of: sqlite, postgres (got "
                     "\"mongodb\")");
    /* postgres: a URI is required, the schema and lock timeout have defaults and limits */
    ck_assert_str_eq(load_err(MINIMAL "storage:\n  kind: postgres\n"),
                     "f.yaml: storage.uri is required with storage.kind: postgres (a Postgres "
                     "connection URI for Ferry's tables; it may be postgres.uri)");
    const char *pg = MINIMAL "storage:\n  kind: postgres\n  uri: postgresql://db/app\n";
    ck_assert_int_eq(gw_config_load_string(&cfg, pg, strlen(pg), "f.yaml", "/cfg", &err), 0);
    ck_assert_str_eq(cfg.storage.schema, "ferry");
    ck_assert_int_eq(cfg.storage.lock_timeout, 5);
    ck_assert_ptr_null(cfg.storage.read_uri);
    gw_config_free(&cfg);
    ck_assert_str_eq(load_err(MINIMAL "storage:\n  kind: postgres\n  uri: x\n  schema: Ferry\n"),
                     "f.yaml:6:11: \"storage.schema\" must be a lowercase name of letters, digits "
                     "and _ (at most 63) (got \"Ferry\")");
    ck_assert_ptr_nonnull(
        strstr(load_err(MINIMAL "storage:\n  kind: postgres\n  uri: x\n  lock_timeout: 1\n"),
               "storage.lock_timeout"));
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_config_load_full_example);
    tcase_add_test(tc, test_config_defaults_and_env_default);
    tcase_add_test(tc, test_config_write_back_and_stream_limits);
    tcase_add_test(tc, test_config_rejects_syntax_error);
    tcase_add_test(tc, test_config_rejects_unknown_key_with_suggestion);
    tcase_add_test(tc, test_config_rejects_wrong_type);
    tcase_add_test(tc, test_config_rejects_missing_required_key);
    tcase_add_test(tc, test_config_rejects_unset_variable);
    tcase_add_test(tc, test_config_rejects_duplicate_key);
    tcase_add_test(tc, test_config_substitutes_and_escapes);
    tcase_add_test(tc, test_config_parse_listen);
    tcase_add_test(tc, test_config_storage_kind);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
