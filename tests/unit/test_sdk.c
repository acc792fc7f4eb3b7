/* test_sdk.c -- unit tests of libferry: lines, checksums, oplog semantics, triggers, watches
 *
 * Lines are fed straight to the sync engine (ferry__oplog_line) on a real SQLite file, so the
 * tests cover the same code the sync thread runs, without a network.
 */
#include "clientsdk/src/ferry_int.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const ferry_column_t T_COLS[] = {
    {"description", FERRY_TEXT}, {"done", FERRY_INTEGER}, {"score", FERRY_REAL}, {NULL, 0}};
static const ferry_column_t L_COLS[] = {{"name", FERRY_TEXT}, {NULL, 0}};
static const ferry_table_t TABLES[] = {{"todos", T_COLS, NULL, 0, 0, 0},
                                       {"drafts", L_COLS, NULL, 1, 0, 0},
                                       {NULL, NULL, NULL, 0, 0, 0}};
static const ferry_schema_t SCHEMA = {TABLES};

static char path[64];
static ferry_db_t *db;
static sqlite3 *sconn;

/* The replica at path: the app's ferry_db_t and the sync engine on its own connection. */
static void open_replica(void)
{
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry__open_conn(path, &sconn, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db, &db->sync, sconn), 0);
}

static void close_replica(void)
{
    ferry__oplog_free(&db->sync);
    sqlite3_close_v2(sconn);
    db->sync.conn = NULL;
    ferry_close(db);
}

/* Closes the replica and opens the same file again: an app that stopped and started. */
static void reopen(void)
{
    close_replica();
    open_replica();
}

static void setup(void)
{
    snprintf(path, sizeof path, "/tmp/ferry-test-sdk.%d.db", (int)getpid());
    unlink(path);
    open_replica();
}

static void teardown(void)
{
    close_replica();
    char p[80];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

static int line(const char *l)
{
    int rc = ferry__oplog_line(db, &db->sync, l, strlen(l));
    if (rc < 0) fprintf(stderr, "line failed: %s\n", db->sync.errmsg);
    return rc;
}

/* One text value from the app connection ("" for no row, "NULL" for NULL). */
static char result[4096];
static const char *q(const char *sql)
{
    sqlite3_stmt *st;
    result[0] = 0;
    ck_assert_msg(sqlite3_prepare_v2(ferry_sqlite(db), sql, -1, &st, NULL) == SQLITE_OK, "%s: %s",
                  sql, sqlite3_errmsg(ferry_sqlite(db)));
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(st, 0);
        n += (size_t)snprintf(result + n, sizeof result - n, "%s%s", n ? "," : "",
                              v ? (const char *)v : "NULL");
    }
    sqlite3_finalize(st);
    return result;
}

static char buf[8192];
static const char *op(const char *id, const char *kind, const char *obj, const char *sub,
                      const char *data, long long ck)
{
    static char o[1024];
    if (strcmp(kind, "PUT") == 0)
        snprintf(o, sizeof o,
                 "{\"op_id\":\"%s\",\"op\":\"PUT\",\"object_type\":\"todos\",\"object_id\":\"%s\","
                 "\"subkey\":\"%s\",\"checksum\":%lld,\"data\":\"%s\"}",
                 id, obj, sub, ck, data);
    else if (strcmp(kind, "REMOVE") == 0)
        snprintf(
            o, sizeof o,
            "{\"op_id\":\"%s\",\"op\":\"REMOVE\",\"object_type\":\"todos\",\"object_id\":\"%s\","
            "\"subkey\":\"%s\",\"checksum\":%lld}",
            id, obj, sub, ck);
    else
        snprintf(o, sizeof o, "{\"op_id\":\"%s\",\"op\":\"%s\",\"checksum\":%lld}", id, kind, ck);
    return o;
}

static const char *data_line(const char *bucket, const char *ops)
{
    snprintf(buf, sizeof buf,
             "{\"data\":{\"bucket\":\"%s\",\"after\":\"0\",\"has_more\":false,\"data\":[%s]}}",
             bucket, ops);
    return buf;
}

/* ---- checksums and parsing ---------------------------------------------------------------- */

START_TEST(test_sdk_ck_parse_signed_and_unsigned)
{
    uint32_t v;
    json_t *j = json_integer(2582164875LL);
    ck_assert_int_eq(ferry__ck_parse(j, &v), 0);
    ck_assert_uint_eq(v, 2582164875u);
    json_decref(j);
    j = json_integer(-1712802421LL); /* the same value as signed int32 */
    ck_assert_int_eq(ferry__ck_parse(j, &v), 0);
    ck_assert_uint_eq(v, 2582164875u);
    json_decref(j);
    j = json_real(-721471609.0);
    ck_assert_int_eq(ferry__ck_parse(j, &v), 0);
    ck_assert_uint_eq(v, (uint32_t)-721471609);
    json_decref(j);
    j = json_integer(4294967296LL);
    ck_assert_int_eq(ferry__ck_parse(j, &v), -1);
    json_decref(j);
    j = json_integer(-2147483649LL);
    ck_assert_int_eq(ferry__ck_parse(j, &v), -1);
    json_decref(j);
    j = json_real(1.5);
    ck_assert_int_eq(ferry__ck_parse(j, &v), -1);
    json_decref(j);
    j = json_string("5");
    ck_assert_int_eq(ferry__ck_parse(j, &v), -1);
    json_decref(j);
}
END_TEST

START_TEST(test_sdk_ck_add_wraps)
{
    ck_assert_uint_eq(ferry__ck_add(4294967295u, 2), 1);
    ck_assert_uint_eq(ferry__ck_add(2582164875u, 3003552978u), 1290750557u); /* protocol §2.2 */
    ck_assert_uint_eq(ferry__ck_add((uint32_t)-5, 5), 0);
}
END_TEST

START_TEST(test_sdk_parse_id_strings_only)
{
    int64_t v;
    json_t *j = json_string("9223372036854775807");
    ck_assert_int_eq(ferry__parse_id(j, &v), 0);
    ck_assert(v == INT64_MAX);
    json_decref(j);
    j = json_string("9223372036854775808");
    ck_assert_int_eq(ferry__parse_id(j, &v), -1);
    json_decref(j);
    j = json_integer(5); /* a JSON number is not an op id (protocol §8.1) */
    ck_assert_int_eq(ferry__parse_id(j, &v), -1);
    json_decref(j);
    j = json_string("-1");
    ck_assert_int_eq(ferry__parse_id(j, &v), -1);
    json_decref(j);
}
END_TEST

/* ---- lines ---------------------------------------------------------------------------------- */

START_TEST(test_sdk_line_unknown_ignored_and_shape_checked)
{
    ck_assert_int_eq(line("{\"foo\":{\"x\":1}}"), 0);
    ck_assert_int_eq(line("   "), 0);
    ck_assert_int_eq(line("{\"a\":1,\"b\":2}"), FERRY_EPROTO);
    ck_assert_int_eq(line("{\"checkpoint\":"), FERRY_EPROTO);
    ck_assert_int_eq(line("[1]"), FERRY_EPROTO);
    /* op ids as numbers are rejected */
    ck_assert_int_eq(line("{\"checkpoint\":{\"last_op_id\":2,\"buckets\":[]}}"), FERRY_EPROTO);
    ck_assert_int_eq(line("{\"checkpoint_diff\":{\"last_op_id\":\"2\",\"updated_buckets\":[],"
                          "\"removed_buckets\":[]}}"),
                     FERRY_EPROTO); /* diff before checkpoint */
    ck_assert_int_eq(line("{\"token_expires_in\":3600}"), 0);
    ck_assert_int_eq(line("{\"token_expires_in\":20}"), FERRY_LINE_REFRESH);
    ck_assert_int_eq(line("{\"token_expires_in\":0}"), FERRY_LINE_REFRESH);
}
END_TEST

/* The example session of protocol §2.2, with the real checksums. */
START_TEST(test_sdk_line_session_applies)
{
    ck_assert_int_eq(
        line("{\"checkpoint\":{\"last_op_id\":\"2\",\"buckets\":[{\"bucket\":\"global[]\","
             "\"checksum\":1290750557,\"count\":2,\"priority\":3}]}}"),
        0);
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "a", "s-a", "{\\\"id\\\":\\\"a\\\",\\\"description\\\":\\\"Test 1\\\"}",
                2582164875LL));
    strcat(ops, op("2", "PUT", "b", "s-b",
                   "{\\\"id\\\":\\\"b\\\",\\\"description\\\":\\\"Test 2\\\"}", 3003552978LL));
    ck_assert_int_eq(line(data_line("global[]", ops)), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "0"); /* not before checkpoint_complete */
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT id || ':' || description FROM todos ORDER BY id"),
                     "a:Test 1,b:Test 2");
    ck_assert_str_eq(q("SELECT last_op || ':' || ((add_checksum + op_checksum) % 4294967296) FROM "
                       "ferry_buckets"),
                     "2:1290750557");
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_crud"), "0"); /* server data is not queued */
    char *body = ferry__request_body(db, &db->sync);
    ck_assert_ptr_nonnull(strstr(body, "\"buckets\":[{\"name\":\"global[]\",\"after\":\"2\"}]"));
    free(body);
}
END_TEST

/* ---- Sync Streams subscriptions ------------------------------------------------------------ */

static char subs_text[2048];
/* "stream params priority synced error" per subscription, ";"-separated */
static const char *subs_list(void)
{
    ferry_subscription_t *v;
    size_t n, o = 0;
    ck_assert_int_eq(ferry_subscriptions(db, &v, &n), 0);
    subs_text[0] = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(subs_text + o, sizeof subs_text - o, "%s%s %s %d %d %s", i ? ";" : "",
                              v[i].stream, v[i].params_json, v[i].priority, v[i].synced,
                              v[i].error ? v[i].error : "-");
    ferry_subscriptions_free(v, n);
    return subs_text;
}

/* the "streams" member of the request body, compact */
static const char *body_streams(void)
{
    static char out[2048];
    char *body = ferry__request_body(db, &db->sync);
    ck_assert_ptr_nonnull(body);
    json_t *j = json_loads(body, 0, NULL);
    char *s = json_dumps(json_object_get(j, "streams"), JSON_COMPACT | JSON_PRESERVE_ORDER);
    snprintf(out, sizeof out, "%s", s ? s : "(none)");
    free(s);
    json_decref(j);
    free(body);
    return out;
}

START_TEST(test_sdk_subscriptions_stored_sent_and_answered)
{
    ferry_error_t err;
    ck_assert_str_eq(body_streams(), "{\"include_defaults\":true,\"subscriptions\":[]}");
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "{\"list_id\":\"l1\",\"a\":1}", -1, &err),
                     0);
    ck_assert_int_eq(atomic_exchange(&db->subs_changed, 0), 1);
    /* the same parameters in another key order: the same subscription, its priority updated */
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "{\"a\":1, \"list_id\":\"l1\"}", 0, &err),
                     0);
    ck_assert_int_eq(atomic_exchange(&db->subs_changed, 0), 1);
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "{\"a\":1,\"list_id\":\"l1\"}", 0, &err), 0);
    ck_assert_int_eq(atomic_exchange(&db->subs_changed, 0), 0); /* nothing changed */
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "{\"list_id\":\"l2\"}", -1, &err), 0);
    ck_assert_int_eq(ferry_subscribe(db, "nope", NULL, -1, &err), 0);
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "[1]", -1, &err), FERRY_EINVAL);
    ck_assert_str_eq(err.message,
                     "subscription parameters must be a JSON object or null: not an object");
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", "{", -1, &err), FERRY_EINVAL);
    ck_assert_int_eq(ferry_subscribe(db, "list_todos", NULL, 4, &err), FERRY_EINVAL);
    ck_assert_int_eq(ferry_subscribe(db, "", NULL, -1, &err), FERRY_EINVAL);
    ck_assert_str_eq(subs_list(), "list_todos {\"a\":1,\"list_id\":\"l1\"} 0 0 -;"
                                  "list_todos {\"list_id\":\"l2\"} -1 0 -;nope null -1 0 -");
    ck_assert_str_eq(body_streams(),
                     "{\"include_defaults\":true,\"subscriptions\":["
                     "{\"stream\":\"list_todos\",\"parameters\":{\"a\":1,\"list_id\":\"l1\"},"
                     "\"override_priority\":0},"
                     "{\"stream\":\"list_todos\",\"parameters\":{\"list_id\":\"l2\"},"
                     "\"override_priority\":null},"
                     "{\"stream\":\"nope\",\"parameters\":null,\"override_priority\":null}]}");
    /* the server answers by index: subscription 2 is an error, the others sync */
    ck_assert_int_eq(
        line("{\"checkpoint\":{\"last_op_id\":\"2\",\"buckets\":[{\"bucket\":\"1#list_todos|0["
             "\\\"l1\\\"]\","
             "\"checksum\":0,\"count\":0,\"priority\":0,\"subscriptions\":[{\"sub\":0}]}],"
             "\"streams\":[{\"name\":\"list_todos\",\"is_default\":false,\"errors\":[]},"
             "{\"name\":\"nope\",\"is_default\":false,\"errors\":[{\"subscription\":2,"
             "\"message\":\"stream \\\"nope\\\" is not defined\"},{\"subscription\":\"default\","
             "\"message\":\"x\"}]}]}}"),
        0);
    ck_assert_str_eq(q("SELECT group_concat(ifnull(error, '-'), '|') FROM ferry_subscriptions"),
                     "-|-|stream \"nope\" is not defined");
    ck_assert_str_eq(q("SELECT sum(synced) FROM ferry_subscriptions"), "0");
    ck_assert_int_eq(ferry_wait_for_subscriptions(db, 0), FERRY_ESTATE);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(subs_list(), "list_todos {\"a\":1,\"list_id\":\"l1\"} 0 1 -;"
                                  "list_todos {\"list_id\":\"l2\"} -1 1 -;"
                                  "nope null -1 0 stream \"nope\" is not defined");
    ck_assert_int_eq(ferry_wait_for_subscriptions(db, 0), 0);
    /* an app restart: the subscriptions and their state are read back, and sent again */
    reopen();
    ck_assert_str_eq(subs_list(), "list_todos {\"a\":1,\"list_id\":\"l1\"} 0 1 -;"
                                  "list_todos {\"list_id\":\"l2\"} -1 1 -;"
                                  "nope null -1 0 stream \"nope\" is not defined");
    ck_assert_ptr_nonnull(strstr(body_streams(), "{\"stream\":\"nope\""));
    /* unsubscribing (any key order); a subscription that does not exist is no error */
    ck_assert_int_eq(ferry_unsubscribe(db, "list_todos", "{\"list_id\":\"l1\",\"a\":1}", &err), 0);
    ck_assert_int_eq(atomic_exchange(&db->subs_changed, 0), 1);
    ck_assert_int_eq(ferry_unsubscribe(db, "list_todos", "{\"list_id\":\"l9\"}", &err), 0);
    ck_assert_int_eq(atomic_exchange(&db->subs_changed, 0), 0);
    ck_assert_int_eq(ferry_unsubscribe(db, "nope", "null", &err), 0);
    ck_assert_str_eq(body_streams(),
                     "{\"include_defaults\":true,\"subscriptions\":["
                     "{\"stream\":\"list_todos\",\"parameters\":{\"list_id\":\"l2\"},"
                     "\"override_priority\":null}]}");
    /* the errors of a later checkpoint are those of its own request's subscriptions */
    ck_assert_int_eq(line("{\"checkpoint\":{\"last_op_id\":\"3\",\"buckets\":[],\"streams\":[]}}"),
                     0);
    ck_assert_str_eq(subs_list(), "list_todos {\"list_id\":\"l2\"} -1 1 -");
    db->opt.exclude_default_streams = 1;
    ck_assert_ptr_nonnull(strstr(body_streams(), "\"include_defaults\":false"));
}
END_TEST

/* ---- oplog semantics ---------------------------------------------------------------------------
 */

static void cp(const char *last, const char *buckets)
{
    char l[2048];
    snprintf(l, sizeof l, "{\"checkpoint\":{\"last_op_id\":\"%s\",\"buckets\":[%s]}}", last,
             buckets);
    ck_assert_int_eq(line(l), 0);
}

START_TEST(test_sdk_oplog_row_in_two_buckets_remove_from_one)
{
    /* row x is in buckets A and B; B's copy is newer (op 2) and wins; REMOVE from B makes A's
     * copy visible; REMOVE from A too deletes the row */
    cp("2", "{\"bucket\":\"A\",\"checksum\":10},{\"bucket\":\"B\",\"checksum\":20}");
    ck_assert_int_eq(
        line(data_line("A", op("1", "PUT", "x", "k", "{\\\"description\\\":\\\"from A\\\"}", 10))),
        0);
    ck_assert_int_eq(
        line(data_line("B", op("2", "PUT", "x", "k", "{\\\"description\\\":\\\"from B\\\"}", 20))),
        0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'x'"), "from B");
    ck_assert_int_eq(line("{\"checkpoint_diff\":{\"last_op_id\":\"3\",\"updated_buckets\":[{"
                          "\"bucket\":\"B\",\"checksum\":25}],\"removed_buckets\":[]}}"),
                     0);
    ck_assert_int_eq(line(data_line("B", op("3", "REMOVE", "x", "k", NULL, 5))), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'x'"), "from A");
    ck_assert_int_eq(line("{\"checkpoint_diff\":{\"last_op_id\":\"4\",\"updated_buckets\":[{"
                          "\"bucket\":\"A\",\"checksum\":17}],\"removed_buckets\":[]}}"),
                     0);
    ck_assert_int_eq(line(data_line("A", op("4", "REMOVE", "x", "k", NULL, 7))), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "0");
}
END_TEST

START_TEST(test_sdk_oplog_move_and_clear)
{
    /* ops 1 (a), 2 (b); then CLEAR at op 3 replaces them (checksum = their sum), PUT b at op 4;
     * a MOVE adds its checksum only */
    cp("2", "{\"bucket\":\"g\",\"checksum\":300}");
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "a", "a", "{\\\"description\\\":\\\"A\\\"}", 100));
    strcat(ops, op("2", "PUT", "b", "b", "{\\\"description\\\":\\\"B\\\"}", 200));
    ck_assert_int_eq(line(data_line("g", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id) FROM todos"), "a,b");
    /* CLEAR(3, 300) + PUT b(4, 50) + MOVE(5, 7): checksum 300 + 50 + 7 */
    ck_assert_int_eq(line("{\"checkpoint_diff\":{\"last_op_id\":\"5\",\"updated_buckets\":[{"
                          "\"bucket\":\"g\",\"checksum\":357}],\"removed_buckets\":[]}}"),
                     0);
    snprintf(ops, sizeof ops, "%s,", op("3", "CLEAR", NULL, NULL, NULL, 300));
    strcat(ops, op("4", "PUT", "b", "b", "{\\\"description\\\":\\\"B2\\\"}", 50));
    strcat(ops, ",");
    strcat(ops, op("5", "MOVE", NULL, NULL, NULL, 7));
    ck_assert_int_eq(line(data_line("g", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"5\"}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id || ':' || description) FROM todos"), "b:B2");
    ck_assert_int_eq(db->status.checksum_failures, 0);
}
END_TEST

START_TEST(test_sdk_oplog_checksum_wraparound_and_mismatch)
{
    /* two ops whose sum wraps past 2^32; the bucket checksum sent signed */
    cp("2", "{\"bucket\":\"w\",\"checksum\":-2}"); /* (4294967295 + 4294967295) mod 2^32 */
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,", op("1", "PUT", "a", "a", "{}", 4294967295LL));
    strcat(ops, op("2", "PUT", "b", "b", "{}", -1));
    ck_assert_int_eq(line(data_line("w", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "2");
    /* a wrong checksum: the bucket is dropped (rows stay until a valid checkpoint) */
    cp("3", "{\"bucket\":\"w\",\"checksum\":12}");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"),
                     FERRY_LINE_RECONNECT);
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_buckets"), "0");
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "2");
    ck_assert_int_eq(db->status.checksum_failures, 1);
    char *body = ferry__request_body(db, &db->sync);
    ck_assert_ptr_nonnull(strstr(body, "\"buckets\":[]"));
    free(body);
}
END_TEST

START_TEST(test_sdk_oplog_absent_bucket_deleted_and_priority_zero_first)
{
    cp("2", "{\"bucket\":\"hi\",\"checksum\":1,\"priority\":0},{\"bucket\":\"lo\",\"checksum\":2}");
    ck_assert_int_eq(
        line(data_line("hi", op("1", "PUT", "h", "h", "{\\\"description\\\":\\\"urgent\\\"}", 1))),
        0);
    /* a pending local write blocks priority 3, not priority 0 */
    ck_assert_str_eq(q("SELECT 1 FROM (SELECT 1)"), "1");
    ck_assert_int_eq(sqlite3_exec(ferry_sqlite(db),
                                  "INSERT INTO todos(id, description) VALUES ('local', 'mine')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(
        line("{\"partial_checkpoint_complete\":{\"last_op_id\":\"2\",\"priority\":0}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id) FROM (SELECT id FROM todos ORDER BY id)"),
                     "h,local");
    ck_assert_int_eq(
        line(data_line("lo", op("2", "PUT", "l", "l", "{\\\"description\\\":\\\"later\\\"}", 2))),
        0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id) FROM (SELECT id FROM todos ORDER BY id)"),
                     "h,local");
    ck_assert_int_eq(db->sync.pending, 1);
    /* the upload finished and the server acknowledged write checkpoint 7 */
    ck_assert_int_eq(
        sqlite3_exec(ferry_sqlite(db),
                     "DELETE FROM ferry_crud; UPDATE ferry_kv SET value = 7 WHERE key = 'target'",
                     NULL, NULL, NULL),
        SQLITE_OK);
    /* the write checkpoint is not seen yet */
    ck_assert_int_eq(ferry__publish_try_pending(db, &db->sync), 0);
    ck_assert_int_eq(line("{\"checkpoint_diff\":{\"last_op_id\":\"2\",\"write_checkpoint\":\"7\","
                          "\"updated_buckets\":[],\"removed_buckets\":[]}}"),
                     0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    /* the local-only row the server never accepted disappears; server rows are shown */
    ck_assert_str_eq(q("SELECT group_concat(id) FROM (SELECT id FROM todos ORDER BY id)"), "h,l");
    /* a full checkpoint without "lo" deletes it and its row */
    cp("3", "{\"bucket\":\"hi\",\"checksum\":1,\"priority\":0}");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id) FROM todos"), "h");
    ck_assert_str_eq(q("SELECT group_concat(name) FROM ferry_buckets"), "hi");
}
END_TEST

/* ---- local writes -----------------------------------------------------------------------------
 */

/* ---- one stream per database file (the resume bug of 60_sdk.sh) ------------------------------ */

/* Two sync connections streaming into one file -- what happened when the test's kill -9 hit the
 * shell running ferry-todo instead of ferry-todo itself, so the "killed" client kept syncing
 * next to the resumed one: each stores ops the other stored already, the stored op's checksum
 * moves to add_checksum and the new one is added again, and the bucket never validates (the
 * bucket dropped by one is refilled by the other). */
START_TEST(test_sdk_two_streams_into_one_file_break_checksums)
{
    ferry_db_t *db2;
    sqlite3 *c2;
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db2, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry__open_conn(path, &c2, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db2, &db2->sync, c2), 0);
    const char *cpl =
        "{\"checkpoint\":{\"last_op_id\":\"2\",\"buckets\":[{\"bucket\":\"b\",\"checksum\":30}]}}";
    ck_assert_int_eq(line(cpl), 0);
    ck_assert_int_eq(ferry__oplog_line(db2, &db2->sync, cpl, strlen(cpl)), 0);
    char l1[8192];
    snprintf(l1, sizeof l1, "%s", data_line("b", op("1", "PUT", "a", "a", "{}", 10)));
    ck_assert_int_eq(line(l1), 0);                                           /* stream 1 */
    ck_assert_int_eq(ferry__oplog_line(db2, &db2->sync, l1, strlen(l1)), 0); /* stream 2: again */
    ck_assert_int_eq(line(data_line("b", op("2", "PUT", "c", "c", "{}", 20))), 0);
    ck_assert_str_eq(q("SELECT (add_checksum + op_checksum) % 4294967296 FROM ferry_buckets"),
                     "40");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"),
                     FERRY_LINE_RECONNECT);
    ferry__oplog_free(&db2->sync);
    sqlite3_close_v2(c2);
    db2->sync.conn = NULL;
    ferry_close(db2);

    /* hence one stream per file: the lock the sync thread takes */
    int fd = ferry__sync_lock(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ferry__sync_lock(path), FERRY_ESTATE);
    ferry__sync_unlock(fd);
    fd = ferry__sync_lock(path);
    ck_assert_int_ge(fd, 0);
    ferry__sync_unlock(fd);
    char lp[96];
    snprintf(lp, sizeof lp, "%s-sync.lock", path);
    unlink(lp);
}
END_TEST

static char *tok_cb(void *ud, int expired)
{
    (void)ud;
    (void)expired;
    return strdup("t");
}

static int status_has(ferry_db_t *d, const char *needle)
{
    for (int i = 0; i < 300; i++) {
        ferry_status_t st;
        ferry_get_status(d, &st);
        if (strstr(st.last_error, needle)) return 1;
        usleep(10000);
    }
    return 0;
}

/* The sync threads of two ferry_db_t of one file: the second waits until the first is gone. */
START_TEST(test_sdk_second_connection_waits_for_the_first)
{
    ferry_db_t *db2;
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db2, &err) == 0, "%s", err.message);
    ferry_options_t o = {.retry_delay_ms = 20};
    /* nothing listens on port 1 of loopback: both keep retrying, offline */
    ck_assert_int_eq(ferry_connect(db2, "http://127.0.0.1:1", tok_cb, NULL, &o), 0);
    ck_assert(status_has(db2, "could not stream"));
    ferry_db_t *db3;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db3, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry_connect(db3, "http://127.0.0.1:1", tok_cb, NULL, &o), 0);
    ck_assert(status_has(db3, "another connection is syncing this database file"));
    ferry_disconnect(db2);
    ck_assert(status_has(db3, "could not stream"));
    ferry_disconnect(db3);
    ferry_close(db3);
    ferry_close(db2);
    char lp[96];
    snprintf(lp, sizeof lp, "%s-sync.lock", path);
    unlink(lp);
}
END_TEST

/* The data-line scanner (no jansson tree) must store exactly what jansson would: escapes,
 * \u sequences with surrogate pairs, raw UTF-8, unknown keys skipped, null subkey; and hand
 * anything else to jansson (which then reports the error). */
START_TEST(test_sdk_data_line_scanner_matches_jansson)
{
    cp("3", "{\"bucket\":\"s\",\"checksum\":6}");
    const char *l =
        " { \"data\" : { \"after\":\"0\", \"x\":{\"a\":[1,2.5e3,true,null,{\"b\":\"\\u00e9\"}]},"
        " \"bucket\" : \"s\", \"data\" : [ "
        "{\"op_id\":\"1\",\"op\":\"PUT\",\"object_type\":\"todos\","
        "\"object_id\":\"a\",\"subkey\":null,\"checksum\":1,\"extra\":[[]],"
        "\"data\":\"{\\\"description\\\":\\\"caf\\u00e9 \\ud83d\\ude00 \xc3\xa9 \\\\\\\" \\/ "
        "\\\\t\\\"}\"},"
        "{\"op\":\"PUT\",\"op_id\":\"2\",\"object_type\":\"todos\",\"object_id\":\"b\","
        "\"checksum\":-4294967296}"
        " ] , \"has_more\" : false } } ";
    /* the second op's checksum is out of range: the scanner gives up, jansson reports it */
    ck_assert_int_eq(ferry__oplog_line(db, &db->sync, l, strlen(l)), FERRY_EPROTO);
    ck_assert_ptr_nonnull(strstr(db->sync.errmsg, "invalid op in bucket \"s\""));
    char l2[2048];
    snprintf(l2, sizeof l2, "%s", l);
    char *bad = strstr(l2, "-4294967296");
    memcpy(bad, "5          ", 11); /* a valid checksum, blanks keep the length */
    ck_assert_int_eq(ferry__oplog_line(db, &db->sync, l2, strlen(l2)), 0);
    ck_assert_int_eq(line("{\"data\":{\"bucket\":\"s\",\"data\":[{\"op_id\":\"3\",\"op\":\"MOVE\","
                          "\"checksum\":0.0}]}}"),
                     0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_str_eq(
        q("SELECT row_type || '/' || row_id || '/' || subkey FROM ferry_oplog WHERE row_id = 'a'"),
        "todos/a/null");
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'a'"),
                     "caf\xc3\xa9 \xf0\x9f\x98\x80 \xc3\xa9 \" / \t");
    ck_assert_str_eq(q("SELECT data FROM ferry_oplog WHERE row_id = 'a'"),
                     "{\"description\":\"caf\xc3\xa9 \xf0\x9f\x98\x80 \xc3\xa9 \\\" / \\t\"}");
    ck_assert_str_eq(
        q("SELECT count(*) || ':' || ifnull(min(description), 'null') FROM todos WHERE id = 'b'"),
        "1:null");
    /* shapes the scanner does not take, handled (or refused) the same as before */
    ck_assert_int_eq(
        line(
            "{\"data\":{\"bucket\":\"s\",\"data\":[{\"op_id\":4,\"op\":\"PUT\",\"checksum\":1}]}}"),
        FERRY_EPROTO);
    ck_assert_int_eq(line("{\"data\":{\"bucket\":\"s\",\"data\":[]}} x"), FERRY_EPROTO);
    ck_assert_int_eq(line("{\"data\":{\"bucket\":\"s\",\"data\":[{\"op_id\":\"4\",\"op\":\"PUT\","
                          "\"object_type\":\"todos\",\"checksum\":1}]}}"),
                     FERRY_EPROTO);
    ck_assert_int_eq(
        line("{\"data\":{\"bucket\":\"s\",\"data\":[{\"op_id\":\"4\",\"op\":\"PUT\",\"object_"
             "type\":\"todos\",\"object_id\":\"a\",\"checksum\":1,\"data\":\"\\ud800\"}]}}"),
        FERRY_EPROTO);
}
END_TEST

/* The sync thread lets data lines share a transaction (batch_ops): nothing of them is visible
 * before the commit, positions and ops commit together, and any other line commits first. */
START_TEST(test_sdk_data_lines_share_a_transaction)
{
    db->sync.batch_ops = 3;
    cp("4", "{\"bucket\":\"t\",\"checksum\":10}");
    ck_assert_int_eq(line(data_line("t", op("1", "PUT", "a", "a", "{}", 1))), 0);
    ck_assert_int_eq(db->sync.in_tx, 1);
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog"), "0"); /* not committed yet */
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_buckets"), "0");
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,", op("2", "PUT", "b", "b", "{}", 2));
    strcat(ops, op("3", "PUT", "c", "c", "{}", 3));
    ck_assert_int_eq(line(data_line("t", ops)), 0); /* 3 ops: committed */
    ck_assert_int_eq(db->sync.in_tx, 0);
    ck_assert_str_eq(q("SELECT count(*) || ':' || max(last_op) FROM ferry_oplog, ferry_buckets"),
                     "3:3");
    ck_assert_int_eq(line(data_line("t", op("4", "PUT", "d", "d", "{}", 4))), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog"), "3");
    ck_assert_int_eq(line("{\"token_expires_in\":600}"), 0); /* any other line commits */
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog"), "4");
    ck_assert_int_eq(line(data_line("t", op("5", "MOVE", "", "", "", 0))), 0);
    ck_assert_int_eq(ferry__oplog_flush(&db->sync), 0);
    ck_assert_int_eq(ferry__oplog_flush(&db->sync), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_str_eq(q("SELECT group_concat(id) FROM (SELECT id FROM todos ORDER BY id)"),
                     "a,b,c,d");
}
END_TEST

/* A new bucket is published set-based; alone (no other bucket holds ops) it walks the row index,
 * so of two ops of one row (two subkeys) the higher op id must still win, whatever the subkeys'
 * order; with another bucket holding a higher op of the row, that op wins. */
START_TEST(test_sdk_publish_new_bucket_highest_op_wins)
{
    cp("3", "{\"bucket\":\"n\",\"checksum\":6}");
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "a", "z", "{\\\"description\\\":\\\"old\\\"}", 1));
    strcat(ops, op("2", "PUT", "a", "b", "{\\\"description\\\":\\\"new\\\"}", 2));
    strcat(ops, ",");
    strcat(ops, op("3", "PUT", "c", "c", "{\\\"description\\\":\\\"c\\\"}", 3));
    ck_assert_int_eq(line(data_line("n", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_str_eq(
        q("SELECT group_concat(id || '=' || description) FROM (SELECT * FROM todos ORDER BY id)"),
        "a=new,c=c");
    /* a second new bucket, not alone: its higher op of a wins, bucket n's rows stay */
    cp("5", "{\"bucket\":\"n\",\"checksum\":6},{\"bucket\":\"m\",\"checksum\":9}");
    snprintf(ops, sizeof ops, "%s", op("4", "PUT", "d", "d", "{\\\"description\\\":\\\"d\\\"}", 4));
    strcat(ops, ",");
    strcat(ops, op("5", "PUT", "a", "a", "{\\\"description\\\":\\\"from m\\\"}", 5));
    ck_assert_int_eq(line(data_line("m", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"5\"}}"), 0);
    ck_assert_str_eq(
        q("SELECT group_concat(id || '=' || description) FROM (SELECT * FROM todos ORDER BY id)"),
        "a=from m,c=c,d=d");
}
END_TEST

/* ---- storing PUTs in batches (ferry_ops): the conflict path ---------------------------------- */

/* 40 PUTs in one line (one batch): keys r5, r20 and r35 are stored already (and r35
 * was published), r7 comes twice in the line. Only those ops are replaced one by one: the key
 * keeps one op, the newest; the replaced op's checksum moves from op_checksum to add_checksum;
 * the published row takes the new data. */
static void put_ops(char *ops, size_t cap, const char *const *ids, const int *rows, int n,
                    const char *tag, long long ck0)
{
    ops[0] = 0;
    for (int i = 0; i < n; i++) {
        char obj[16], data[64];
        snprintf(obj, sizeof obj, "r%d", rows[i]);
        snprintf(data, sizeof data, "{\\\"description\\\":\\\"%s %d\\\"}", tag, i);
        size_t len = strlen(ops);
        snprintf(ops + len, cap - len, "%s%s", i ? "," : "",
                 op(ids[i], "PUT", obj, obj, data, ck0 + i));
    }
}

START_TEST(test_sdk_put_batch_conflict_replaces_and_moves_checksum)
{
    static char ops[16384], l[20000];
    /* line 1: r5 (op 1, ck 1000), r20 (op 2, ck 1001), r35 (op 3, ck 1002) */
    const char *ids1[] = {"1", "2", "3"};
    const int rows1[] = {5, 20, 35};
    cp("3", "{\"bucket\":\"c\",\"checksum\":3003}");
    put_ops(ops, sizeof ops, ids1, rows1, 3, "old", 1000);
    snprintf(l, sizeof l, "{\"data\":{\"bucket\":\"c\",\"data\":[%s]}}", ops);
    ck_assert_int_eq(line(l), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'r35'"), "old 2");
    /* line 2: ops 10..49 for rows 0..39, except that position 8 is r7 again (op 18) */
    char idbuf[40][8];
    const char *ids2[40];
    int rows2[40];
    long long sum2 = 0;
    for (int i = 0; i < 40; i++) {
        snprintf(idbuf[i], sizeof idbuf[i], "%d", 10 + i);
        ids2[i] = idbuf[i];
        rows2[i] = i == 8 ? 7 : i;
        sum2 += 2000 + i;
    }
    put_ops(ops, sizeof ops, ids2, rows2, 40, "new", 2000);
    char cpl[256];
    snprintf(cpl, sizeof cpl, "{\"bucket\":\"c\",\"checksum\":%lld}", 3003 + sum2);
    cp("49", cpl);
    snprintf(l, sizeof l, "{\"data\":{\"bucket\":\"c\",\"data\":[%s]}}", ops);
    ck_assert_int_eq(line(l), 0);
    /* one op per key: rows 0..39 (r8 never came), r5/r20/r35 replaced, r7 holds its second op */
    ck_assert_str_eq(q("SELECT count(*) || ':' || count(DISTINCT row_id) FROM ferry_oplog"),
                     "39:39");
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog WHERE row_id = 'r8'"), "0");
    ck_assert_str_eq(q("SELECT group_concat(row_id || '=' || op_id || '/' || hash, ' ') FROM "
                       "(SELECT * FROM ferry_oplog WHERE row_id IN ('r5', 'r7', 'r20', 'r35') "
                       "ORDER BY row_id)"),
                     "r20=30/2020 r35=45/2035 r5=15/2005 r7=18/2008");
    /* moved: the three stored ops (1000 + 1001 + 1002) and r7's first op of this line (2007) */
    char want[64];
    snprintf(want, sizeof want, "%lld:%lld", 1000LL + 1001 + 1002 + 2007, sum2 - 2007);
    ck_assert_str_eq(q("SELECT add_checksum || ':' || op_checksum FROM ferry_buckets"), want);
    ck_assert_str_eq(q("SELECT count FROM ferry_buckets"), "43");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"49\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM (SELECT * FROM "
                       "todos WHERE id IN ('r5', 'r7', 'r20', 'r35') ORDER BY id)"),
                     "r20=new 20 r35=new 35 r5=new 5 r7=new 8");
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "39");
}
END_TEST

/* A subkey "<prefix>/<object_id>" is stored as its prefix's number (a BLOB of digits), any other
 * as text; both kinds still identify their op: a PUT of the same subkey replaces it, a REMOVE
 * removes it, two prefixes of one row are two ops, and the text comes back in SQL. */
#define DECODED                                                                                    \
    "CASE typeof(subkey) WHEN 'blob' THEN (SELECT prefix FROM ferry_subkeys WHERE "                \
    "id = CAST(subkey AS TEXT)) || '/' || row_id ELSE subkey END"
START_TEST(test_sdk_subkeys_numbered_by_prefix)
{
    cp("4", "{\"bucket\":\"c\",\"checksum\":10}");
    char ops[4096];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "a", "public.todos/a", "{\\\"description\\\":\\\"a1\\\"}", 1));
    snprintf(ops + strlen(ops), sizeof ops - strlen(ops), "%s,",
             op("2", "PUT", "b", "public.todos/b", "{\\\"description\\\":\\\"b\\\"}", 2));
    snprintf(ops + strlen(ops), sizeof ops - strlen(ops), "%s,",
             op("3", "PUT", "c", "other", "{\\\"description\\\":\\\"c\\\"}", 3));
    strcat(ops, op("4", "PUT", "a", "public.lists/a", "{\\\"description\\\":\\\"a4\\\"}", 4));
    ck_assert_int_eq(line(data_line("c", ops)), 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || prefix, ' ') FROM ferry_subkeys"),
                     "1=public.todos 2=public.lists");
    ck_assert_str_eq(q("SELECT group_concat(op_id || ':' || typeof(subkey) || ':' || " DECODED
                       ", ' ') FROM (SELECT * FROM ferry_oplog ORDER BY op_id)"),
                     "1:blob:public.todos/a 2:blob:public.todos/b 3:text:other "
                     "4:blob:public.lists/a");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'a'"), "a4");
    /* op 5 replaces op 1 (same subkey), op 6 removes b: 1 + ... + 6 = 21 */
    ck_assert_int_eq(
        line("{\"checkpoint_diff\":{\"last_op_id\":\"6\",\"updated_buckets\":[{\"bucket\":"
             "\"c\",\"checksum\":21}],\"removed_buckets\":[]}}"),
        0);
    snprintf(ops, sizeof ops, "%s,",
             op("5", "PUT", "a", "public.todos/a", "{\\\"description\\\":\\\"a5\\\"}", 5));
    strcat(ops, op("6", "REMOVE", "b", "public.todos/b", NULL, 6));
    ck_assert_int_eq(line(data_line("c", ops)), 0);
    ck_assert_str_eq(q("SELECT group_concat(op_id || ':' || " DECODED ", ' ') FROM (SELECT * FROM "
                       "ferry_oplog ORDER BY op_id)"),
                     "3:other 4:public.lists/a 5:public.todos/a");
    ck_assert_str_eq(q("SELECT add_checksum || ':' || op_checksum FROM ferry_buckets"), "9:12");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"6\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM (SELECT * FROM "
                       "todos ORDER BY id)"),
                     "a=a5 c=c");
}
END_TEST

/* A file whose oplog held ops before subkeys were numbered keeps text subkeys: opening it does
 * not start numbering, and a PUT of a stored key still replaces it. */
START_TEST(test_sdk_subkeys_stay_text_in_older_files)
{
    ck_assert_int_eq(sqlite3_exec(sconn, "DROP TABLE ferry_subkeys", NULL, NULL, NULL), SQLITE_OK);
    cp("1", "{\"bucket\":\"c\",\"checksum\":1}");
    ck_assert_int_eq(line(data_line("c", op("1", "PUT", "x", "public.todos/x",
                                            "{\\\"description\\\":\\\"x1\\\"}", 1))),
                     0);
    ck_assert_str_eq(q("SELECT typeof(subkey) || ':' || subkey FROM ferry_oplog"),
                     "text:public.todos/x");
    reopen(); /* still no ferry_subkeys: the oplog is not empty */
    ck_assert_str_eq(q("SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_subkeys'"), "0");
    cp("2", "{\"bucket\":\"c\",\"checksum\":3}");
    ck_assert_int_eq(line(data_line("c", op("2", "PUT", "x", "public.todos/x",
                                            "{\\\"description\\\":\\\"x2\\\"}", 2))),
                     0);
    ck_assert_str_eq(q("SELECT op_id || ':' || typeof(subkey) || ':' || subkey FROM ferry_oplog"),
                     "2:text:public.todos/x");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'x'"), "x2");
}
END_TEST

/* ---- a first sync without the oplog's key index (bulk) ------------------------------------- */

static const char *has_key_index(void)
{
    return q(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = 'ferry_oplog_key'");
}

/* A first sync stores its ops without the key index, even a key twice; publishing takes the
 * later op; then the index is built, the older op removed and its checksum moved; later ops
 * find their keys again. */
START_TEST(test_sdk_bulk_first_sync_then_index)
{
    ck_assert_str_eq(has_key_index(), "1"); /* made at open */
    cp("3", "{\"bucket\":\"A\",\"checksum\":6}");
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v1\\\"}", 1));
    snprintf(ops + strlen(ops), sizeof ops - strlen(ops), "%s,",
             op("2", "PUT", "y", "public.todos/y", "{\\\"description\\\":\\\"y\\\"}", 2));
    strcat(ops, op("3", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v3\\\"}", 3));
    ck_assert_int_eq(line(data_line("A", ops)), 0);
    ck_assert_str_eq(has_key_index(), "0");
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog"), "3"); /* x twice, for now */
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM (SELECT * FROM "
                       "todos ORDER BY id)"),
                     "x=v3 y=y");
    /* told, then indexed: x's older op is gone, its checksum moved to add_checksum */
    ck_assert_str_eq(has_key_index(), "1");
    ck_assert_str_eq(q("SELECT group_concat(row_id || ':' || op_id, ' ') FROM (SELECT * FROM "
                       "ferry_oplog ORDER BY op_id)"),
                     "y:2 x:3");
    ck_assert_str_eq(q("SELECT add_checksum || ':' || op_checksum FROM ferry_buckets"), "1:5");
    /* the next checkpoint: x replaced through the index, y removed */
    ck_assert_int_eq(
        line("{\"checkpoint_diff\":{\"last_op_id\":\"5\",\"updated_buckets\":[{\"bucket\":"
             "\"A\",\"checksum\":15}],\"removed_buckets\":[]}}"),
        0);
    snprintf(ops, sizeof ops, "%s,",
             op("4", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v4\\\"}", 4));
    strcat(ops, op("5", "REMOVE", "y", "public.todos/y", NULL, 5));
    ck_assert_int_eq(line(data_line("A", ops)), 0);
    ck_assert_str_eq(q("SELECT group_concat(row_id || ':' || op_id, ' ') FROM ferry_oplog"), "x:4");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"5\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM todos"), "x=v4");
}
END_TEST

/* What needs the index builds it first: a REMOVE during a first sync, and publishing two new
 * buckets that share a row (the row's highest op across buckets is looked up by it). */
START_TEST(test_sdk_bulk_left_when_the_index_is_needed)
{
    cp("4", "{\"bucket\":\"A\",\"checksum\":1},{\"bucket\":\"B\",\"checksum\":9}");
    ck_assert_int_eq(line(data_line("A", op("1", "PUT", "r", "public.todos/r",
                                            "{\\\"description\\\":\\\"from A\\\"}", 1))),
                     0);
    ck_assert_int_eq(line(data_line("B", op("2", "PUT", "r", "public.todos/r",
                                            "{\\\"description\\\":\\\"from B\\\"}", 2))),
                     0);
    ck_assert_str_eq(has_key_index(), "0");
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("3", "PUT", "s", "public.todos/s", "{\\\"description\\\":\\\"s\\\"}", 3));
    strcat(ops, op("4", "REMOVE", "s", "public.todos/s", NULL, 4));
    ck_assert_int_eq(line(data_line("B", ops)), 0);
    ck_assert_str_eq(has_key_index(), "1"); /* built for the REMOVE */
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM todos"),
                     "r=from B");
    teardown();
    setup();
    cp("2", "{\"bucket\":\"A\",\"checksum\":1},{\"bucket\":\"B\",\"checksum\":2}");
    ck_assert_int_eq(line(data_line("A", op("1", "PUT", "r", "public.todos/r",
                                            "{\\\"description\\\":\\\"from A\\\"}", 1))),
                     0);
    ck_assert_int_eq(line(data_line("B", op("2", "PUT", "r", "public.todos/r",
                                            "{\\\"description\\\":\\\"from B\\\"}", 2))),
                     0);
    ck_assert_str_eq(has_key_index(), "0");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ck_assert_str_eq(has_key_index(), "1");
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM todos"),
                     "r=from B");
    /* a table with a small share of a first sync's ops (here 2 of 10: the others are of a type
     * the schema does not have, kept for later) is published through the index */
    teardown();
    setup();
    cp("10", "{\"bucket\":\"A\",\"checksum\":55}");
    static char ops10[8192];
    ops10[0] = 0;
    for (int i = 1; i <= 10; i++) {
        char id[8], obj[8], sub[32], o[512];
        snprintf(id, sizeof id, "%d", i);
        snprintf(obj, sizeof obj, "t%d", i);
        snprintf(sub, sizeof sub, "public.x/t%d", i);
        if (i <= 2)
            snprintf(o, sizeof o, "%s",
                     op(id, "PUT", obj, sub, "{\\\"description\\\":\\\"todo\\\"}", i));
        else
            snprintf(o, sizeof o,
                     "{\"op_id\":\"%d\",\"op\":\"PUT\",\"object_type\":\"tags\","
                     "\"object_id\":\"t%d\",\"subkey\":\"s\",\"checksum\":%d,\"data\":\"{}\"}",
                     i, i, i);
        snprintf(ops10 + strlen(ops10), sizeof ops10 - strlen(ops10), "%s%s", i > 1 ? "," : "", o);
    }
    ck_assert_int_eq(line(data_line("A", ops10)), 0);
    ck_assert_str_eq(has_key_index(), "0");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"10\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(has_key_index(), "1");
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM (SELECT * FROM "
                       "todos ORDER BY id)"),
                     "t1=todo t2=todo");
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_oplog WHERE row_type = 'tags'"), "8");
}
END_TEST

/* A first sync interrupted before it was published: opening the file again builds the index
 * (dropping the older op of a key stored twice), and the sync completes where it stopped. */
START_TEST(test_sdk_bulk_interrupted_then_reopened)
{
    const char *cpl = "{\"bucket\":\"A\",\"checksum\":10}";
    cp("4", cpl);
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("1", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v1\\\"}", 1));
    strcat(ops, op("2", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v2\\\"}", 2));
    ck_assert_int_eq(line(data_line("A", ops)), 0);
    ck_assert_str_eq(has_key_index(), "0");
    reopen(); /* the app stopped here */
    ck_assert_str_eq(has_key_index(), "1");
    ck_assert_str_eq(q("SELECT group_concat(row_id || ':' || op_id, ' ') FROM ferry_oplog"), "x:2");
    ck_assert_str_eq(q("SELECT last_op || ':' || add_checksum || ':' || op_checksum FROM "
                       "ferry_buckets"),
                     "2:1:2");
    /* reconnected: the same checkpoint, the rest of the bucket */
    cp("4", cpl);
    snprintf(ops, sizeof ops, "%s,",
             op("3", "PUT", "y", "public.todos/y", "{\\\"description\\\":\\\"y\\\"}", 3));
    strcat(ops, op("4", "PUT", "x", "public.todos/x", "{\\\"description\\\":\\\"v4\\\"}", 4));
    ck_assert_int_eq(line(data_line("A", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || description, ' ') FROM (SELECT * FROM "
                       "todos ORDER BY id)"),
                     "x=v4 y=y");
}
END_TEST

/* ---- publishing a whole bucket with a second reader ------------------------------------------ */

/* One first sync of 3000 ops (6 of the reader's blocks) into a fresh file, the reader used from
 * reader_min ops on; returns the app table as text. Row kinds by i % 8: plain, simple escapes,
 * a \u escape, a real, a nested value, a missing column, every other time a PUT again of the
 * row of i - 6 (the later op wins), an exponent and a null; and (bad) a data string that is not
 * JSON at i == 1234. */
static char table_dump[262144];
static const char *first_sync_3000(int reader_min, int bad, int *used)
{
    teardown();
    setup();
    db->sync.pub_reader_min = reader_min;
    cp("3000", "{\"bucket\":\"big\",\"checksum\":3000}");
    static char l[65536];
    for (int base = 0; base < 3000; base += 100) {
        size_t n = (size_t)snprintf(l, sizeof l, "{\"data\":{\"bucket\":\"big\",\"data\":[");
        for (int i = base; i < base + 100; i++) {
            char obj[16], data[160], id[16];
            int row = i % 16 == 6 ? i - 6 : i;
            snprintf(obj, sizeof obj, "r%05d", row);
            snprintf(id, sizeof id, "%d", i + 1);
            switch (i % 8) {
            case 0:
                snprintf(data, sizeof data, "{\\\"description\\\":\\\"d %d\\\",\\\"done\\\":%d}", i,
                         i % 3);
                break;
            case 1:
                snprintf(data, sizeof data,
                         "{\\\"description\\\":\\\"a\\\\nb \\\\\\\"q\\\\\\\" %d\\\"}", i);
                break;
            case 2:
                snprintf(data, sizeof data,
                         "{\\\"description\\\":\\\"\\\\u00e9 %d\\\",\\\"done\\\":1}", i);
                break;
            case 3:
                snprintf(data, sizeof data, "{\\\"description\\\":\\\"r\\\",\\\"score\\\":%d.25}",
                         i);
                break;
            case 4:
                snprintf(data, sizeof data, "{\\\"description\\\":{\\\"n\\\":%d},\\\"done\\\":-%d}",
                         i, i);
                break;
            case 5:
                snprintf(data, sizeof data, "{\\\"done\\\":%d}", i);
                break;
            case 6:
                snprintf(data, sizeof data, "{\\\"description\\\":\\\"again %d\\\"}", i);
                break;
            default:
                snprintf(data, sizeof data, "{\\\"score\\\":1e3,\\\"description\\\":null}");
                break;
            }
            if (bad && i == 1234) snprintf(data, sizeof data, "not json");
            n += (size_t)snprintf(l + n, sizeof l - n, "%s%s", i > base ? "," : "",
                                  op(id, "PUT", obj, obj, data, 1));
        }
        snprintf(l + n, sizeof l - n, "]}}");
        ck_assert_int_eq(line(l), 0);
    }
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"3000\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    *used = db->sync.pub_reader_used;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(ferry_sqlite(db),
                                        "SELECT id, typeof(description), "
                                        "description, typeof(done), done, typeof(score), score "
                                        "FROM todos ORDER BY id",
                                        -1, &st, NULL),
                     SQLITE_OK);
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && n < sizeof table_dump - 512)
        for (int c = 0; c < 7; c++) {
            const unsigned char *v = sqlite3_column_text(st, c);
            n += (size_t)snprintf(table_dump + n, sizeof table_dump - n, "%s%c",
                                  v ? (const char *)v : "NULL", c == 6 ? '\n' : '|');
        }
    sqlite3_finalize(st);
    return table_dump;
}

START_TEST(test_sdk_publish_reader_matches_one_thread)
{
    for (int bad = 0; bad <= 1; bad++) {
        int used = -1;
        char *one = strdup(first_sync_3000(1000000, bad, &used));
        ck_assert_int_eq(used, 0);
        const char *two = first_sync_3000(1, bad, &used);
        ck_assert_int_eq(used, 1); /* the reader published todos */
        size_t k = 0;
        while (one[k] && one[k] == two[k])
            k++;
        ck_assert_msg(one[k] == two[k],
                      "bad=%d: the tables differ at byte %zu: \"%.80s\" vs "
                      "\"%.80s\"",
                      bad, k, one + k, two + k);
        /* spot checks that the dump holds what the rows say */
        ck_assert_ptr_nonnull(strstr(one, "r00003|text|r|null|NULL|real|3.25\n"));
        ck_assert_ptr_nonnull(strstr(one, "r00004|text|{\"n\":4}|integer|-4|null|NULL\n"));
        ck_assert_ptr_null(strstr(one, "r00006|")); /* i = 6 wrote r00000 again */
        ck_assert_ptr_null(strstr(one, "r00022|"));
        ck_assert_ptr_nonnull(strstr(one, "r00008|text|d 8|integer|2|"));
        ck_assert_ptr_nonnull(strstr(one, "r00024|text|d 24|integer|0|"));
        ck_assert_ptr_nonnull(strstr(one, "r00014|text|again 14|"));
        ck_assert_ptr_nonnull(strstr(one, "r00007|null|NULL|null|NULL|real|1000.0\n"));
        ck_assert_ptr_nonnull(strstr(one, "r00002|text|\xc3\xa9 2|integer|1|"));
        /* r00000 was written by i = 0 and again by i = 6: the later op wins */
        ck_assert_ptr_nonnull(strstr(one, "r00000|text|again 6|null|NULL|null|NULL\n"));
        if (bad) /* the row that is not JSON: no values, the others all there */
            ck_assert_ptr_nonnull(strstr(one, "r01234|null|NULL|null|NULL|null|NULL\n"));
        free(one);
    }
}
END_TEST

/* ---- the C JSON row reader (ferry_jok / ferry_col) against json_extract ---------------------- */

/* Each case: a row's data, a key, whether the C reader takes the row (ferry_jok). ferry_col
 * must return what json_extract returns, value and type, or fail where it fails: read in C when
 * the reader takes the row, by json_extract itself when it does not; so the reader must refuse
 * every row where it could differ. */
static const struct {
    const char *data, *key;
    int jok;
} JROWS[] = {
    {"{\"a\":\"plain\",\"b\":1}", "a", 1},
    {"{\"a\":\"plain\",\"b\":1}", "b", 1},
    {"{\"a\":\"plain\",\"b\":1}", "missing", 1},
    {" { \"a\" :\t\"spaced\" ,\r\n \"b\" : -42 } ", "b", 1},
    {" { \"a\" :\t\"spaced\" ,\r\n \"b\" : -42 } ", "a", 1},
    {"{\"e\":\"q\\\"b\\\\s\\/n\\nt\\tr\\rb\\bf\\f\"}", "e", 1},
    {"{\"u\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}", "u", 1},
    {"{\"x\":\"\\u00e9\"}", "x", 0}, /* \u escapes: json_extract's */
    {"{\"x\":\"a\\ud83d\\ude00\"}", "x", 0},
    {"{\"k\\\"ey\":1}", "k\"ey", 0}, /* an escaped key */
    {"{\"t\":true,\"f\":false,\"n\":null}", "t", 1},
    {"{\"t\":true,\"f\":false,\"n\":null}", "f", 1},
    {"{\"t\":true,\"f\":false,\"n\":null}", "n", 1},
    {"{\"i\":0}", "i", 1},
    {"{\"i\":-0}", "i", 1},
    {"{\"i\":999999999999999999}", "i", 1}, /* 18 digits */
    {"{\"i\":-999999999999999999}", "i", 1},
    {"{\"i\":9223372036854775807}", "i", 0}, /* 19 digits */
    {"{\"i\":12345678901234567890123}", "i", 0},
    {"{\"r\":1.5}", "r", 0}, /* reals */
    {"{\"r\":1e3}", "r", 0},
    {"{\"r\":-2.5E-3}", "r", 0},
    {"{\"o\":{\"a\":1},\"s\":\"x\"}", "s", 0}, /* nested values */
    {"{\"o\":[1,2],\"s\":\"x\"}", "o", 0},
    {"{\"d\":\"first\",\"d\":\"second\"}", "d", 1}, /* duplicate keys: the first */
    {"{}", "a", 1},
    {"{\"a\":\"x\"} trailing", "a", 0}, /* malformed */
    {"{\"a\":\"unterminated}", "a", 0},
    {"{\"a\":01}", "a", 0},
    {"{\"a\":+1}", "a", 0},
    {"{\"a\":tru}", "a", 0},
    {"{\"a\":\"bad \\x escape\"}", "a", 0},
    {"{\"a\":\"ctl \x01 char\"}", "a", 0},
    {"{\"a\" \"b\"}", "a", 0},
    {"{\"a\":1,}", "a", 0},
    {"[1,2]", "a", 0},
    {"\"text\"", "a", 0},
    {"", "a", 0},
};

/* One value of a one-column statement on the sync connection for data d and key k: its
 * SQLite type (0 when the statement failed) and text. */
static int jvalue(const char *sql, const char *d, const char *k, char *text, size_t cap)
{
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(sconn, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, d, -1, SQLITE_STATIC);
    if (k) sqlite3_bind_text(st, 2, k, -1, SQLITE_STATIC);
    int type = 0;
    text[0] = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        type = sqlite3_column_type(st, 0);
        const unsigned char *v = sqlite3_column_text(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        ck_assert_int_lt(n, (int)cap);
        if (v) memcpy(text, v, (size_t)n + 1);
    }
    sqlite3_finalize(st);
    return type;
}

START_TEST(test_sdk_row_reader_matches_json_extract)
{
    for (size_t i = 0; i < sizeof JROWS / sizeof JROWS[0]; i++) {
        char vc[256], vj[256], ok[8];
        const char *d = JROWS[i].data, *k = JROWS[i].key;
        ck_assert_msg(jvalue("SELECT ferry_jok(?1)", d, NULL, ok, sizeof ok) == SQLITE_INTEGER &&
                          atoi(ok) == JROWS[i].jok,
                      "case %zu (%s): ferry_jok %s", i, d, ok);
        int tc = jvalue("SELECT ferry_col(?1, ?2)", d, k, vc, sizeof vc);
        int tj = jvalue("SELECT json_extract(?1, '$.\"' || ?2 || '\"')", d, k, vj, sizeof vj);
        ck_assert_msg(tc == tj, "case %zu (%s): type %d, json_extract %d", i, d, tc, tj);
        ck_assert_msg(strcmp(vc, vj) == 0, "case %zu (%s): \"%s\", json_extract \"%s\"", i, d, vc,
                      vj);
    }
    /* a key of a malformed row: both fail (publishing then takes the rows one by one) */
    char v[64];
    ck_assert_int_eq(jvalue("SELECT ferry_col(?1, 'a')", "{\"a\":1,}", NULL, v, sizeof v), 0);
    ck_assert_int_eq(jvalue("SELECT ferry_col(?1, 'a')", "{\"a\":1.5}", NULL, v, sizeof v),
                     SQLITE_FLOAT);
    /* end to end: a new bucket published set-based; each row's description (a text column)
     * equals what json_extract makes of its data, whichever of the two read it */
    const char *rows[] = {"{\\\"description\\\":\\\"tab\\\\there\\\",\\\"done\\\":1}",
                          "{\\\"description\\\":\\\"\\\\u00e9t\\\\u00e9\\\",\\\"done\\\":2}",
                          "{\\\"description\\\":{\\\"nested\\\":[1]},\\\"done\\\":3}",
                          "{\\\"description\\\":12,\\\"score\\\":2.5}",
                          "{\\\"description\\\":\\\"dup\\\",\\\"description\\\":\\\"second\\\"}"};
    char ops[4096] = "";
    for (int i = 0; i < 5; i++) {
        char id[8], obj[8];
        snprintf(id, sizeof id, "%d", i + 1);
        snprintf(obj, sizeof obj, "j%d", i);
        if (i) strcat(ops, ",");
        strcat(ops, op(id, "PUT", obj, obj, rows[i], 1));
    }
    cp("5", "{\"bucket\":\"j\",\"checksum\":5}");
    ck_assert_int_eq(line(data_line("j", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"5\"}}"), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM todos t JOIN ferry_oplog o ON o.row_id = t.id WHERE "
                       "t.description IS CAST(json_extract(o.data, '$.description') AS TEXT) AND "
                       "t.done IS json_extract(o.data, '$.done') AND "
                       "t.score IS json_extract(o.data, '$.score')"),
                     "5");
    ck_assert_str_eq(
        q("SELECT group_concat(description, '|') FROM (SELECT * FROM todos ORDER BY id)"),
        "tab\there|\xc3\xa9t\xc3\xa9|{\"nested\":[1]}|12|dup");
}
END_TEST

/* ---- the oplog layout migration -------------------------------------------------------------- */

/* A file written by the first release: the oplog keyed by a "type/id/subkey" string, with a
 * unique (bucket, key) index and a (row_type, row_id, op_id) index. Opening it rewrites the
 * oplog once into one table and one index; every op keeps its bucket, ids, subkey (even one
 * holding '/'), op id, checksum, data and arrival order (rowids renumbered in that order), and
 * syncing goes on from there. */
START_TEST(test_sdk_oplog_layout_migrated_once)
{
    teardown();
    snprintf(path, sizeof path, "/tmp/ferry-test-sdk.%d.db", (int)getpid());
    sqlite3 *c;
    ck_assert_int_eq(sqlite3_open(path, &c), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(
            c,
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE ferry_kv(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
            "CREATE TABLE ferry_crud(id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " tx_id INTEGER NOT NULL, op TEXT NOT NULL, type TEXT NOT NULL,"
            " row_id TEXT NOT NULL, data TEXT);"
            "CREATE TABLE ferry_buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
            " last_op INTEGER NOT NULL DEFAULT 0, add_checksum INTEGER NOT NULL DEFAULT 0,"
            " op_checksum INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,"
            " priority INTEGER NOT NULL DEFAULT 3);"
            "CREATE TABLE ferry_oplog(bucket INTEGER NOT NULL, key TEXT NOT NULL,"
            " op_id INTEGER NOT NULL, row_type TEXT NOT NULL, row_id TEXT NOT NULL,"
            " data TEXT, hash INTEGER NOT NULL, UNIQUE(bucket, key));"
            "CREATE INDEX ferry_oplog_row ON ferry_oplog(row_type, row_id, op_id);"
            "CREATE TABLE ferry_updated(row_type TEXT NOT NULL, row_id TEXT NOT NULL,"
            " bucket INTEGER NOT NULL, PRIMARY KEY(row_type, row_id, bucket)) WITHOUT ROWID;"
            "INSERT INTO ferry_kv VALUES ('client_id', '00000000-0000-4000-8000-000000000001');"
            "INSERT INTO ferry_buckets(id, name, last_op, add_checksum, op_checksum, count)"
            " VALUES (1, 'old', 7, 5, 60, 4);"
            /* arrival order is not key order; b's subkey holds slashes */
            "INSERT INTO ferry_oplog(rowid, bucket, key, op_id, row_type, row_id, data, hash)"
            " VALUES (10, 1, 'todos/z/z', 3, 'todos', 'z', '{\"description\":\"Z\"}', 10),"
            " (11, 1, 'todos/b/x/y/z', 5, 'todos', 'b', '{\"description\":\"B\",\"done\":1}', 20),"
            " (12, 1, 'todos/a/null', 7, 'todos', 'a', NULL, 30);",
            NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(c);
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry__open_conn(path, &sconn, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db, &db->sync, sconn), 0);
    const char *ops_now = "1:1/todos/z/z/3/10/{\"description\":\"Z\"}/todos/z/z "
                          "2:1/todos/b/x/y/z/5/20/{\"description\":\"B\",\"done\":1}/todos/b/x/y/z "
                          "3:1/todos/a/null/7/30/-/todos/a/null";
    const char *dump =
        "SELECT group_concat(rowid || ':' || bucket || '/' || row_type || '/' || "
        "row_id || '/' || subkey || '/' || op_id || '/' || hash || '/' || "
        "ifnull(data, '-') || '/' || row_type || '/' || row_id || '/' || subkey, ' ') "
        "FROM (SELECT rowid, * FROM "
        "ferry_oplog ORDER BY rowid)";
    ck_assert_str_eq(q(dump), ops_now);
    ck_assert_str_eq(
        q("SELECT group_concat(name) FROM sqlite_schema WHERE tbl_name = 'ferry_oplog' "
          "AND type = 'index'"),
        "ferry_oplog_key");
    ck_assert_str_eq(q("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'ferry_oplog_old%'"),
                     "0");
    /* the new table todos was filled from the migrated oplog (a's op has no data: id only) */
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || ifnull(description, '-'), ' ') FROM "
                       "(SELECT * FROM todos ORDER BY id)"),
                     "a=- b=B z=Z");
    ck_assert_str_eq(q("SELECT client_id FROM (SELECT value AS client_id FROM ferry_kv WHERE "
                       "key = 'client_id')"),
                     "00000000-0000-4000-8000-000000000001");
    char root[32];
    snprintf(root, sizeof root, "%s",
             q("SELECT rootpage FROM sqlite_schema WHERE name = 'ferry_oplog'"));
    reopen(); /* opened again: already in the new layout, not rewritten */
    ck_assert_str_eq(q("SELECT rootpage FROM sqlite_schema WHERE name = 'ferry_oplog'"), root);
    ck_assert_str_eq(q(dump), ops_now);
    /* and syncing goes on: a PUT of b's key (subkey with slashes) replaces the migrated op,
     * its checksum moving to add_checksum; the bucket validates (5 + 60 + 40 - 20 + 20 = 105) */
    cp("8", "{\"bucket\":\"old\",\"checksum\":105}");
    ck_assert_int_eq(line(data_line("old", op("8", "PUT", "b", "x/y/z",
                                              "{\\\"description\\\":\\\"B2\\\"}", 40))),
                     0);
    ck_assert_str_eq(q("SELECT add_checksum || ':' || op_checksum || ':' || count(*) FROM "
                       "ferry_buckets, ferry_oplog WHERE row_id = 'b'"),
                     "25:80:1");
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"8\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT description FROM todos WHERE id = 'b'"), "B2");
}
END_TEST

/* A file of the two-B-tree layout's first version: the oplog had a virtual column key
 * (type/id/subkey), which SQLite computed for every inserted op. Opening drops it and keeps
 * every op (the table is not rewritten: the rowids stay). */
START_TEST(test_sdk_oplog_virtual_key_dropped)
{
    teardown();
    snprintf(path, sizeof path, "/tmp/ferry-test-sdk.%d.db", (int)getpid());
    sqlite3 *c;
    ck_assert_int_eq(sqlite3_open(path, &c), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(
            c,
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE ferry_oplog(bucket INTEGER NOT NULL, row_type TEXT NOT NULL,"
            " row_id TEXT NOT NULL, subkey TEXT NOT NULL, op_id INTEGER NOT NULL,"
            " hash INTEGER NOT NULL, data TEXT, key TEXT GENERATED ALWAYS AS"
            " (row_type || '/' || row_id || '/' || subkey));"
            "CREATE UNIQUE INDEX ferry_oplog_key ON ferry_oplog(row_type, row_id, bucket,"
            " subkey);"
            "CREATE TABLE ferry_buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
            " last_op INTEGER NOT NULL DEFAULT 0, add_checksum INTEGER NOT NULL DEFAULT 0,"
            " op_checksum INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,"
            " priority INTEGER NOT NULL DEFAULT 3);"
            "INSERT INTO ferry_buckets(id, name, last_op, op_checksum, count)"
            " VALUES (1, 'v', 2, 3, 2);"
            "INSERT INTO ferry_oplog(rowid, bucket, row_type, row_id, subkey, op_id, hash, data)"
            " VALUES (5, 1, 'todos', 'p', 'x/y', 1, 1, '{\"description\":\"P\"}'),"
            " (9, 1, 'todos', 'q', 'q', 2, 2, '{\"done\":1}');",
            NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(c);
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SCHEMA, &db, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry__open_conn(path, &sconn, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db, &db->sync, sconn), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM pragma_table_xinfo('ferry_oplog') WHERE name = 'key'"),
                     "0");
    ck_assert_str_eq(
        q("SELECT group_concat(name) FROM sqlite_schema WHERE tbl_name = 'ferry_oplog' "
          "AND type = 'index'"),
        "ferry_oplog_key");
    ck_assert_str_eq(
        q("SELECT group_concat(rowid || ':' || row_id || '/' || subkey || '/' || op_id || "
          "'/' || ifnull(data, '-'), ' ') FROM (SELECT rowid, * FROM ferry_oplog ORDER BY rowid)"),
        "5:p/x/y/1/{\"description\":\"P\"} 9:q/q/2/{\"done\":1}");
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || ifnull(description, '-') || '/' || "
                       "ifnull(done, '-'), ' ') "
                       "FROM (SELECT * FROM todos ORDER BY id)"),
                     "p=P/- q=-/1");
    /* storing goes on in the new layout: a PUT replacing p's op, one for a new row */
    cp("4", "{\"bucket\":\"v\",\"checksum\":15}"); /* 3 - 1 + 4 + 8, and 1 moved */
    char ops[2048];
    snprintf(ops, sizeof ops, "%s,",
             op("3", "PUT", "p", "x/y", "{\\\"description\\\":\\\"P2\\\"}", 4));
    strcat(ops, op("4", "PUT", "r", "r", "{}", 8));
    ck_assert_int_eq(line(data_line("v", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"4\"}}"), 0);
    ck_assert_int_eq(db->status.checksum_failures, 0);
    ck_assert_str_eq(q("SELECT group_concat(id || '=' || ifnull(description, '-'), ' ') FROM "
                       "(SELECT * FROM todos ORDER BY id)"),
                     "p=P2 q=- r=-");
}
END_TEST

/* The WAL checkpoint after a publish waits until the app was told (on_status, and the waiters
 * of ferry_wait_for_first_sync): then it runs, before line_complete returns. Seen from the
 * database file, which a checkpoint grows (the published pages were only in the WAL before). */
static off_t file_size(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 ? sb.st_size : -1;
}

static off_t size_at_status;
static int frames_at_status;
static void status_cb(void *ud, const ferry_status_t *st)
{
    (void)ud;
    if (st->applied_checkpoint == 200) {
        size_at_status = file_size(path);
        frames_at_status = db->sync.wal_frames;
    }
}

START_TEST(test_sdk_publish_checkpoint_after_status)
{
    db->sync.checkpoint_frames = 3;
    db->opt.on_status = status_cb;
    static char ops[65536];
    char l[70000];
    size_t n = 0;
    for (int i = 1; i <= 200; i++) {
        char id[12], obj[16];
        snprintf(id, sizeof id, "%d", i);
        snprintf(obj, sizeof obj, "r%d", i);
        n += (size_t)snprintf(ops + n, sizeof ops - n, "%s%s", i > 1 ? "," : "",
                              op(id, "PUT", obj, "s",
                                 "{\\\"description\\\":\\\"a longer text "
                                 "to fill some pages of the database\\\"}",
                                 1));
    }
    cp("200", "{\"bucket\":\"w\",\"checksum\":200}");
    snprintf(l, sizeof l, "{\"data\":{\"bucket\":\"w\",\"data\":[%s]}}", ops);
    ck_assert_int_eq(line(l), 0);
    ck_assert_int_eq(
        sqlite3_wal_checkpoint_v2(ferry_sqlite(db), NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL),
        SQLITE_OK);
    off_t before = file_size(path);
    db->sync.wal_frames = 0;
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"200\"}}"), 0);
    ck_assert_str_eq(q("SELECT count(*) FROM todos"), "200");
    ck_assert_int_gt(size_at_status, 0);
    ck_assert_int_eq(size_at_status, before); /* told before the checkpoint */
    ck_assert_int_ge(frames_at_status, 3);
    ck_assert_int_gt(file_size(path), before); /* then checkpointed */
    ck_assert_int_eq(db->sync.wal_frames, 0);
    db->opt.on_status = NULL;
}
END_TEST

START_TEST(test_sdk_triggers_record_put_patch_delete)
{
    sqlite3 *a = ferry_sqlite(db);
    ck_assert_int_eq(ferry_begin(db, NULL), 0);
    ck_assert_int_eq(
        sqlite3_exec(a,
                     "INSERT INTO todos(id, description, done) VALUES ('t1', 'milk', 0);"
                     "INSERT INTO todos(id, description) VALUES ('t2', 'eggs')",
                     NULL, NULL, NULL),
        SQLITE_OK);
    ck_assert_int_eq(ferry_commit(db, NULL), 0);
    ck_assert_int_eq(
        sqlite3_exec(a,
                     "UPDATE todos SET done = 1, score = 2.5 WHERE id = 't1';"
                     "UPDATE todos SET description = 'eggs' WHERE id = 't2';" /* no change */
                     "DELETE FROM todos WHERE id = 't2';"
                     "INSERT INTO drafts(id, name) VALUES ('d', 'local only')",
                     NULL, NULL, NULL),
        SQLITE_OK);
    ck_assert_str_eq(q("SELECT op || ' ' || row_id || ' ' || ifnull(data, '-') || ' ' || tx_id "
                       "FROM ferry_crud ORDER BY id"),
                     "PUT t1 {\"description\":\"milk\",\"done\":0} 1,"
                     "PUT t2 {\"description\":\"eggs\"} 1,"
                     "PATCH t1 {\"done\":1,\"score\":2.5} 2,"
                     "DELETE t2 - 3");
    ck_assert_int_eq(ferry_queue_length(db), 4);
    ferry_crud_t *e;
    size_t n;
    ck_assert_int_eq(ferry_queue_peek(db, 2, &e, &n), 0);
    ck_assert_int_eq((int)n, 2);
    ck_assert_str_eq(e[1].op, "PUT");
    ck_assert_str_eq(e[1].id, "t2");
    ferry_crud_free(e, n);
    ck_assert_str_eq(q("SELECT value FROM ferry_kv WHERE key = 'target'"), "9223372036854775807");
    /* ids cannot change */
    ck_assert_int_ne(
        sqlite3_exec(a, "UPDATE todos SET id = 'zz' WHERE id = 't1'", NULL, NULL, NULL), SQLITE_OK);
}
END_TEST

START_TEST(test_sdk_triggers_record_old_and_metadata)
{
    /* the same file opened with todos tracking previous values and metadata */
    close_replica();
    static const ferry_table_t TP[] = {{"todos", T_COLS, NULL, 0, 1, 1},
                                       {"drafts", L_COLS, NULL, 1, 0, 0},
                                       {NULL, NULL, NULL, 0, 0, 0}};
    static const ferry_schema_t SP = {TP};
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &SP, &db, &err) == 0, "%s", err.message);
    ck_assert_int_eq(ferry__open_conn(path, &sconn, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db, &db->sync, sconn), 0);
    sqlite3 *a = ferry_sqlite(db);
    ck_assert_int_eq(
        sqlite3_exec(a,
                     "INSERT INTO todos(id, description, done, _metadata) VALUES ('t1', 'milk', "
                     "0, '{\"ts\":1}');"
                     "UPDATE todos SET done = 1, score = 2.5, _metadata = '{\"ts\":2}' WHERE id = "
                     "'t1';"
                     "UPDATE todos SET _metadata = 'only this' WHERE id = 't1';" /* no write */
                     "UPDATE todos SET description = 'oat milk' WHERE id = 't1'",
                     NULL, NULL, NULL),
        SQLITE_OK);
    ck_assert_str_eq(q("SELECT op || ' ' || ifnull(data, '-') || ' old ' || ifnull(old, '-') || "
                       "' meta ' || ifnull(metadata, '-') FROM ferry_crud ORDER BY id"),
                     "PUT {\"description\":\"milk\",\"done\":0} old - meta {\"ts\":1},"
                     "PATCH {\"done\":1,\"score\":2.5} old {\"done\":0,\"score\":null} meta "
                     "{\"ts\":2},"
                     "PATCH {\"description\":\"oat milk\"} old {\"description\":\"milk\"} meta "
                     "only this");
    ferry_crud_t *e;
    size_t n;
    ck_assert_int_eq(ferry_queue_peek(db, 10, &e, &n), 0);
    ck_assert_int_eq((int)n, 3);
    ck_assert_ptr_null(e[0].old);
    ck_assert_str_eq(e[1].old, "{\"done\":0,\"score\":null}");
    ck_assert_str_eq(e[1].metadata, "{\"ts\":2}");
    ferry_crud_free(e, n);
}
END_TEST

static int watch_calls;
static char watch_seen[256];
static void on_watch(void *ud, const char *const *tables, size_t n)
{
    (void)ud;
    for (size_t i = 0; i < n; i++) {
        strcat(watch_seen, tables[i]);
        strcat(watch_seen, ";");
    }
    __atomic_add_fetch(&watch_calls, 1, __ATOMIC_SEQ_CST);
}

START_TEST(test_sdk_watch_local_and_sync)
{
    const char *tabs[] = {"todos", NULL};
    int id = ferry_watch(db, tabs, on_watch, NULL);
    ck_assert_int_gt(id, 0);
    const char *bad[] = {"nope", NULL};
    ck_assert_int_eq(ferry_watch(db, bad, on_watch, NULL), FERRY_EINVAL);
    sqlite3_exec(ferry_sqlite(db), "INSERT INTO drafts(id) VALUES ('x')", NULL, NULL, NULL);
    sqlite3_exec(ferry_sqlite(db), "INSERT INTO todos(id) VALUES ('x')", NULL, NULL, NULL);
    for (int i = 0; i < 200 && __atomic_load_n(&watch_calls, __ATOMIC_SEQ_CST) < 1; i++)
        usleep(10000);
    ck_assert_int_eq(watch_calls, 1);
    /* sync data for the table fires it too (the local write must be uploaded first) */
    sqlite3_exec(ferry_sqlite(db),
                 "DELETE FROM ferry_crud; DELETE FROM ferry_kv WHERE key = 'target'", NULL, NULL,
                 NULL);
    cp("1", "{\"bucket\":\"g\",\"checksum\":1}");
    ck_assert_int_eq(line(data_line("g", op("1", "PUT", "y", "y", "{}", 1))), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"1\"}}"), 0);
    for (int i = 0; i < 200 && __atomic_load_n(&watch_calls, __ATOMIC_SEQ_CST) < 2; i++)
        usleep(10000);
    ck_assert_int_eq(watch_calls, 2);
    ck_assert_str_eq(watch_seen, "todos;todos;");
    ferry_unwatch(db, id);
}
END_TEST

START_TEST(test_sdk_migration_adds_columns_and_fills_them)
{
    /* a synced row carries a column the schema does not know yet, and a table it does not know */
    cp("2", "{\"bucket\":\"g\",\"checksum\":3}");
    char ops[2048];
    snprintf(
        ops, sizeof ops, "%s,",
        op("1", "PUT", "a", "a", "{\\\"description\\\":\\\"A\\\",\\\"color\\\":\\\"red\\\"}", 1));
    strcat(ops, "{\"op_id\":\"2\",\"op\":\"PUT\",\"object_type\":\"tags\",\"object_id\":\"t\","
                "\"subkey\":\"t\",\"checksum\":2,\"data\":\"{\\\"label\\\":\\\"x\\\"}\"}");
    ck_assert_int_eq(line(data_line("g", ops)), 0);
    ck_assert_int_eq(line("{\"checkpoint_complete\":{\"last_op_id\":\"2\"}}"), 0);
    ferry__oplog_free(&db->sync);
    sqlite3_close_v2(sconn);
    ferry_close(db);
    static const ferry_column_t T2[] = {{"description", FERRY_TEXT},
                                        {"done", FERRY_INTEGER},
                                        {"score", FERRY_REAL},
                                        {"color", FERRY_TEXT},
                                        {NULL, 0}};
    static const ferry_column_t G2[] = {{"label", FERRY_TEXT}, {NULL, 0}};
    static const ferry_index_t IX[] = {{"by_color", {"color", "description DESC", NULL}},
                                       {NULL, {NULL}}};
    static const ferry_table_t TB2[] = {{"todos", T2, IX, 0, 0, 0},
                                        {"tags", G2, NULL, 0, 0, 0},
                                        {"drafts", L_COLS, NULL, 1, 0, 0},
                                        {NULL, NULL, NULL, 0, 0, 0}};
    static const ferry_schema_t S2 = {TB2};
    ferry_error_t err;
    ck_assert_msg(ferry_open(path, &S2, &db, &err) == 0, "%s", err.message);
    ck_assert_str_eq(q("SELECT color FROM todos WHERE id = 'a'"), "red");
    ck_assert_str_eq(q("SELECT label FROM tags WHERE id = 't'"), "x");
    ck_assert_str_eq(q("SELECT count(*) FROM ferry_crud"), "0");
    ck_assert_str_eq(q("SELECT count(*) FROM sqlite_master WHERE name = 'todos_by_color'"), "1");
    ck_assert_int_eq(ferry__open_conn(path, &sconn, NULL, &err), 0);
    ck_assert_int_eq(ferry__oplog_init(db, &db->sync, sconn), 0);
}
END_TEST

START_TEST(test_sdk_open_errors)
{
    ferry_db_t *d2 = NULL;
    ferry_error_t err;
    static const ferry_column_t BAD[] = {{"id", FERRY_TEXT}, {NULL, 0}};
    static const ferry_table_t TB[] = {{"x", BAD, NULL, 0, 0, 0}, {NULL, NULL, NULL, 0, 0, 0}};
    static const ferry_schema_t S = {TB};
    ck_assert_int_eq(ferry_open(path, &S, &d2, &err), FERRY_EINVAL);
    ck_assert_str_eq(err.message, "invalid column \"id\" in table \"x\"");
    ck_assert_ptr_null(d2);
    ck_assert_int_eq(ferry_open("/nonexistent/dir/x.db", &SCHEMA, &d2, &err), FERRY_ESQLITE);
    ck_assert_ptr_nonnull(strstr(err.message, "could not open database"));
    ck_assert_int_eq(ferry_connect(db, "http://127.0.0.1:1/", NULL, NULL, NULL), FERRY_EINVAL);
    ck_assert_int_eq(ferry_wait_synced(db, 10), FERRY_ESTATE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sdk");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_sdk_ck_parse_signed_and_unsigned);
    tcase_add_test(tc, test_sdk_triggers_record_old_and_metadata);
    tcase_add_test(tc, test_sdk_ck_add_wraps);
    tcase_add_test(tc, test_sdk_parse_id_strings_only);
    tcase_add_test(tc, test_sdk_line_unknown_ignored_and_shape_checked);
    tcase_add_test(tc, test_sdk_line_session_applies);
    tcase_add_test(tc, test_sdk_subscriptions_stored_sent_and_answered);
    tcase_add_test(tc, test_sdk_oplog_row_in_two_buckets_remove_from_one);
    tcase_add_test(tc, test_sdk_oplog_move_and_clear);
    tcase_add_test(tc, test_sdk_oplog_checksum_wraparound_and_mismatch);
    tcase_add_test(tc, test_sdk_oplog_absent_bucket_deleted_and_priority_zero_first);
    tcase_add_test(tc, test_sdk_two_streams_into_one_file_break_checksums);
    tcase_add_test(tc, test_sdk_second_connection_waits_for_the_first);
    tcase_add_test(tc, test_sdk_data_line_scanner_matches_jansson);
    tcase_add_test(tc, test_sdk_data_lines_share_a_transaction);
    tcase_add_test(tc, test_sdk_publish_new_bucket_highest_op_wins);
    tcase_add_test(tc, test_sdk_put_batch_conflict_replaces_and_moves_checksum);
    tcase_add_test(tc, test_sdk_subkeys_numbered_by_prefix);
    tcase_add_test(tc, test_sdk_subkeys_stay_text_in_older_files);
    tcase_add_test(tc, test_sdk_publish_reader_matches_one_thread);
    tcase_add_test(tc, test_sdk_bulk_first_sync_then_index);
    tcase_add_test(tc, test_sdk_bulk_left_when_the_index_is_needed);
    tcase_add_test(tc, test_sdk_bulk_interrupted_then_reopened);
    tcase_add_test(tc, test_sdk_row_reader_matches_json_extract);
    tcase_add_test(tc, test_sdk_oplog_layout_migrated_once);
    tcase_add_test(tc, test_sdk_oplog_virtual_key_dropped);
    tcase_add_test(tc, test_sdk_publish_checkpoint_after_status);
    tcase_add_test(tc, test_sdk_triggers_record_put_patch_delete);
    tcase_add_test(tc, test_sdk_watch_local_and_sync);
    tcase_add_test(tc, test_sdk_migration_adds_columns_and_fills_them);
    tcase_add_test(tc, test_sdk_open_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
