/* test_storage_sqlite.c -- what only the SQLite backend has (storage/sqlite/)
 *
 * The contract every backend keeps is test_storage_contract.c; here: the WAL stays bounded under
 * a long run of writes, files of other layouts are refused and layout 3 is migrated in place,
 * rule versions' namespaces as they lie in the file, the size on disk, and the chunks' commit
 * columns added in place to an older file.
 *
 * Each test opens a storage file in its own temporary directory and removes it afterwards.
 */
#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "storage/gw_storage.h"
#include "rules/rules.h"

#include <check.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static char path[128];
static gw_storage_pub_t *pub;
static gw_storage_opts_t opts;

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/ferry-test-storage.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/storage.db", dir);
    pub = gw_storage_pub_new();
    opts = (gw_storage_opts_t){.kind = "sqlite", .path = path, .pub = pub};
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void teardown(void)
{
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    gw_storage_pub_free(pub);
}

/* Store row `key` of table "public.t" with one op in bucket with data of data_len bytes. */
static void put(gw_storage_t *s, const char *bucket, const char *key, size_t data_len,
                uint32_t checksum)
{
    char *data = malloc(data_len + 32);
    int n = snprintf(data, data_len + 32, "{\"id\":\"%s\",\"v\":\"", key);
    memset(data + n, 'x', data_len);
    strcpy(data + n + data_len, "\"}");
    rules_op_t op = {.bucket = (char *)bucket,
                     .object_type = "t",
                     .object_id = (char *)key,
                     .data = data,
                     .data_len = strlen(data),
                     .checksum = checksum};
    rules_ops_t ops = {.items = &op, .n = 1, .cap = 1};
    gw_row_ref_t ref = {.table = "public.t", .key = key};
    gw_err_t err;
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &ops, NULL, NULL, NULL, 0, &err), 0);
    free(data);
}

START_TEST(test_storage_sqlite_wal_stays_bounded)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    char wal[160], key[32];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    off_t peak = 0;
    /* about 100 MB of ops over 100 commits, as a long catch-up writes them */
    for (int c = 0; c < 100; c++) {
        ck_assert_int_eq(gw_storage_begin(s, &err), 0);
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof(key), "k%d", c * 500 + i);
            put(s, "1#big", key, 2000, 1);
        }
        ck_assert_int_eq(gw_storage_commit(s, (uint64_t)c + 1, &err), 0);
        struct stat st;
        if (stat(wal, &st) == 0 && st.st_size > peak) peak = st.st_size;
    }
    /* the WAL restarts once checkpointed: it never holds much more than the threshold at which
     * the writer waits for a checkpoint (12,288 frames of 4 KB + 24 bytes: 50.6 MB) plus one
     * commit (1 MB here); without the writer's checkpoints it passed 100 MB */
    ck_assert_msg(peak < 64 * 1024 * 1024, "WAL grew to %lld bytes", (long long)peak);
    gw_storage_stats_t stats;
    gw_storage_stats(s, &stats);
    ck_assert_uint_eq(stats.rows, 50000);
    ck_assert_uint_eq(stats.ops, 50000);
    ck_assert_uint_eq(stats.buckets, 1);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_sqlite_refuses_other_layouts)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    gw_storage_close(s);
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0); /* its own layout: fine */
    gw_storage_close(s);
    /* rows without the layout mark: written by an older ferry */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(db,
                     "DELETE FROM state WHERE k = 'layout'; INSERT INTO rows(tbl, key, "
                     "members, lookups) VALUES ('public.t', '1', x'', '')",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), GW_EIO);
    char msg[512];
    ck_assert_ptr_nonnull(strstr(gw_err_format(&err, msg, sizeof(msg)), "older ferry"));
}
END_TEST

static int64_t count_sql(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *q;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return n;
}

START_TEST(test_storage_sqlite_versions_are_prefixes_in_the_file)
{
    gw_storage_t *s, *b;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_int_eq(gw_storage_set_version(s, "1", &err), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(s, "serving", "1", &err), 0);
    ck_assert_int_eq(gw_storage_state_set(s, "slot", "ferry_1", &err), 0);
    put(s, "1#b", "k1", 10, 1);
    put(s, "1#b", "k2", 10, 2);
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    ck_assert_int_eq(gw_storage_open_version(&opts, "2", &b, &err), 0);
    gw_storage_set_serving(b, 0);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "2#b", "k1", 20, 11);
    ck_assert_int_eq(gw_storage_state_set(b, "slot", "ferry_2", &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 90, &err), 0);
    /* rows, state and buckets carry their version's prefix; shared keys none */
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl = '1#public.t'"), 2);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl = '2#public.t'"), 1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k IN ('1#slot', '2#slot')"), 2);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k = 'serving' AND v = '1'"), 1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k = 'next_op'"), 1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM buckets WHERE name LIKE '2#%'"), 1);
    gw_storage_close(s);
    uint64_t dropped;
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_drop_version(b, "1", &dropped, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM buckets WHERE name LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM op_chunks WHERE bucket_id NOT IN "
                               "(SELECT id FROM buckets)"),
                     0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl LIKE '2#%'"), 1);
    gw_storage_close(b);
}
END_TEST

START_TEST(test_storage_sqlite_size_is_the_file_and_its_wal)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_uint_eq(gw_storage_size(&opts), 0); /* no file yet */
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    char key[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        put(s, "1#big", key, 2000, 1);
    }
    ck_assert_int_eq(gw_storage_commit(s, 1, &err), 0);
    struct stat db, wal;
    char walpath[160];
    snprintf(walpath, sizeof(walpath), "%s-wal", path);
    ck_assert_int_eq(stat(path, &db), 0);
    off_t wal_size = stat(walpath, &wal) == 0 ? wal.st_size : 0;
    ck_assert_uint_eq(gw_storage_size(&opts), (uint64_t)(db.st_size + wal_size));
    ck_assert_uint_gt(gw_storage_size(&opts), 200 * 2000);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_sqlite_migrates_layout3)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    gw_storage_close(s);
    /* what a layout 3 file of rule version 5 held: unprefixed rows, lookups and state */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_exec(
            db,
            "UPDATE state SET v = '3' WHERE k = 'layout';"
            "INSERT INTO state(k, v) VALUES ('rules_version', '5'), ('last_op', '42'),"
            " ('lsn', '7'), ('consistent', '1'), ('next_op', '43'), ('slot', 'f_5');"
            "INSERT INTO rows(tbl, key, members, lookups) VALUES ('public.t', '1', x'', '');"
            "INSERT INTO lookups(key, tbl, rkey, params, from_op) VALUES "
            " ('by[\"a\"]', 'public.t', '1', '{}', 3)",
            NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_str_eq(gw_storage_version(s), "5#");
    uint64_t last_op, lsn;
    gw_storage_checkpoint(s, &last_op, &lsn);
    ck_assert_uint_eq(last_op, 42);
    ck_assert_uint_eq(lsn, 7);
    ck_assert_int_eq(gw_storage_consistent(s), 1);
    char v[32];
    ck_assert_int_eq(gw_storage_state_get(s, "serving", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "5");
    ck_assert_int_eq(gw_storage_state_get(s, "slot", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "f_5");
    gw_storage_stats_t st;
    gw_storage_stats(s, &st);
    ck_assert_uint_eq(st.rows, 1);
    gw_storage_close(s);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl = '5#public.t'"), 1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM lookups WHERE key = '5#by[\"a\"]' AND "
                               "tbl = '5#public.t'"),
                     1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k = 'layout' AND v = '4'"), 1);
}
END_TEST

/* Run sql on the storage file through a connection of its own. */
static void exec_on_file(const char *sql)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "?");
    sqlite3_close(db);
}

static void store_wcp(gw_storage_t *s, const char *key, uint64_t lsn)
{
    gw_err_t err;
    uint64_t counter;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, key, lsn, &counter, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, lsn, &err), 0);
}

/* Write checkpoints not written for longer than the retention are forgotten (by the writer,
 * when it stores another one); recent ones stay; a file from before "seen" existed gets it. */
START_TEST(test_storage_sqlite_prunes_unused_write_checkpoints)
{
    gw_storage_t *s;
    gw_err_t err;
    opts.wcp_retention = 3600;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    store_wcp(s, "old/x", 10);
    store_wcp(s, "recent/y", 11);
    gw_storage_close(s);
    /* as a file written before pruning existed, and "old/x" last used long ago */
    exec_on_file("ALTER TABLE write_checkpoints DROP COLUMN seen");
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    gw_storage_close(s);
    exec_on_file("UPDATE write_checkpoints SET seen = CAST(strftime('%s','now') AS INTEGER) "
                 "WHERE user_key = 'recent/y'");
    exec_on_file("UPDATE write_checkpoints SET seen = CAST(strftime('%s','now') AS INTEGER) - "
                 "7200 WHERE user_key = 'old/x'");
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    store_wcp(s, "new/z", 12);
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts, &r, &err), 0);
    uint64_t got = 0;
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "old/x", 100, &got), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "recent/y", 100, &got), 1);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "new/z", 100, &got), 1);
    ck_assert_uint_eq(got, 1);
    /* a client that comes back starts again at 1 */
    store_wcp(s, "old/x", 13);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "old/x", 100, &got), 1);
    ck_assert_uint_eq(got, 1);
    gw_storage_reader_close(r);
    gw_storage_close(s);
    opts.wcp_retention = 0;
}
END_TEST

static int collect_commit(void *ud, const gw_storage_chunk_commit_t *c)
{
    gw_storage_chunk_commit_t *v = ud;
    v[v[0].first_op == 0 ? 0 : 1] = *c;
    return 0;
}

/* A file from before chunks kept their commit gets the columns at open, in place: its chunks
 * read as "unknown", new ones carry their commit. A reader of a file not yet migrated reads
 * every chunk as unknown. */
START_TEST(test_storage_sqlite_adds_chunk_commit_times)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_int_eq(gw_storage_set_version(s, "1", &err), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "a", 10, 1);
    ck_assert_int_eq(gw_storage_commit(s, 10, &err), 0);
    gw_storage_close(s);
    exec_on_file("ALTER TABLE op_chunks DROP COLUMN commit_us;"
                 "ALTER TABLE op_chunks DROP COLUMN commit_lsn");
    gw_storage_opts_t ro = opts;
    ro.pub = NULL;
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&ro, &r, &err), 0);
    gw_storage_chunk_commit_t v[2] = {{0}};
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", 0, 100, collect_commit, v), 0);
    ck_assert_uint_eq(v[0].first_op, 1);
    ck_assert_int_eq(v[0].commit_us, 0);
    gw_storage_reader_close(r);

    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM pragma_table_info('op_chunks') WHERE name IN "
                               "('commit_us', 'commit_lsn')"),
                     2);
    ck_assert_int_eq(gw_storage_set_version(s, "1", &err), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "b", 10, 2);
    gw_storage_set_commit_time(s, 1234567);
    ck_assert_int_eq(gw_storage_commit(s, 20, &err), 0);
    ck_assert_int_eq(gw_storage_reader_open(&ro, &r, &err), 0);
    memset(v, 0, sizeof(v));
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", 0, 100, collect_commit, v), 0);
    ck_assert_int_eq(v[0].commit_us, 0); /* the older chunk: unknown */
    ck_assert_uint_eq(v[0].lsn, 0);
    ck_assert_uint_eq(v[1].first_op, 2);
    ck_assert_int_eq(v[1].commit_us, 1234567);
    ck_assert_uint_eq(v[1].lsn, 20);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("storage_sqlite");
    TCase *tc = tcase_create("sqlite");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_storage_sqlite_wal_stays_bounded);
    tcase_add_test(tc, test_storage_sqlite_refuses_other_layouts);
    tcase_add_test(tc, test_storage_sqlite_versions_are_prefixes_in_the_file);
    tcase_add_test(tc, test_storage_sqlite_size_is_the_file_and_its_wal);
    tcase_add_test(tc, test_storage_sqlite_migrates_layout3);
    tcase_add_test(tc, test_storage_sqlite_prunes_unused_write_checkpoints);
    tcase_add_test(tc, test_storage_sqlite_adds_chunk_commit_times);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
