/* test_storage.c -- Check tests of gateway/gw_storage: chunked ops read back across chunk
 * boundaries, checksums as of older checkpoints, a WAL that stays bounded under writes, two
 * rule versions written side by side in one file (one op-id sequence, separate namespaces, the
 * switch and the drop), and the migration of a layout 3 file.
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

/* The op ids of a bucket's ops in (after, upto], read in pages of max_ops. */
static size_t read_all(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                       size_t max_ops, uint64_t *first, uint64_t *last)
{
    size_t total = 0;
    *first = 0;
    for (;;) {
        gw_buf_t out = GW_BUF_INIT;
        uint64_t l;
        int more;
        size_t n;
        ck_assert_int_eq(
            gw_storage_read_ops(r, bucket, after, upto, max_ops, 1 << 20, &out, &l, &more, &n), 0);
        if (n > 0 && *first == 0) {
            const char *p = strstr(out.data, "\"op_id\":\"");
            *first = strtoull(p + 9, NULL, 10);
        }
        ck_assert_uint_le(n, max_ops);
        total += n;
        gw_buf_free(&out);
        after = l;
        if (!more) break;
        ck_assert_uint_gt(n, 0);
    }
    *last = after;
    return total;
}

START_TEST(test_storage_reads_across_chunks_and_checkpoints)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    /* one commit of 2,500 ops in one bucket (three chunks), then ten commits of one op */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    char key[32];
    uint32_t sum_first = 0;
    for (int i = 0; i < 2500; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        put(s, "1#b", key, 10, (uint32_t)i * 2654435761u);
        sum_first += (uint32_t)i * 2654435761u;
    }
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    uint64_t cp1, lsn;
    gw_storage_checkpoint(s, &cp1, &lsn);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(gw_storage_begin(s, &err), 0);
        snprintf(key, sizeof(key), "b%d", i);
        put(s, "1#b", key, 10, 7);
        ck_assert_int_eq(gw_storage_commit(s, 200 + (uint64_t)i, &err), 0);
    }
    uint64_t cp2;
    gw_storage_checkpoint(s, &cp2, &lsn);

    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts, &r, &err), 0);
    uint64_t first, last;
    /* everything, in pages that do not line up with the chunks */
    ck_assert_uint_eq(read_all(r, "1#b", 0, cp2, 333, &first, &last), 2510);
    ck_assert_uint_eq(last, cp2);
    /* only what the first checkpoint holds */
    ck_assert_uint_eq(read_all(r, "1#b", 0, cp1, 1000, &first, &last), 2500);
    ck_assert_uint_eq(last, cp1);
    /* from the middle of the second chunk */
    ck_assert_uint_eq(read_all(r, "1#b", first + 1499, cp2, 1000, &first, &last), 1010);
    /* after the last op: nothing */
    ck_assert_uint_eq(read_all(r, "1#b", cp2, cp2, 1000, &first, &last), 0);

    /* checksums and counts as of each checkpoint */
    uint32_t cs;
    uint64_t count;
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", cp1, &cs, &count), 0);
    ck_assert_uint_eq(count, 2500);
    ck_assert_uint_eq(cs, sum_first);
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", cp2, &cs, &count), 0);
    ck_assert_uint_eq(count, 2510);
    ck_assert_uint_eq(cs, sum_first + 70);
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", cp2 - 3, &cs, &count), 0);
    ck_assert_uint_eq(count, 2507);
    ck_assert_uint_eq(cs, sum_first + 49);

    /* a REMOVE when the row leaves the bucket, in a new chunk */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    rules_ops_t none = {0};
    gw_row_ref_t ref = {.table = "public.t", .key = "a7"};
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, NULL, NULL, 0, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 300, &err), 0);
    uint64_t cp3;
    gw_storage_checkpoint(s, &cp3, &lsn);
    gw_buf_t out = GW_BUF_INIT;
    uint64_t l;
    int more;
    size_t n;
    ck_assert_int_eq(gw_storage_read_ops(r, "1#b", cp2, cp3, 10, 1 << 20, &out, &l, &more, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_nonnull(strstr(out.data, "\"op\":\"REMOVE\""));
    ck_assert_ptr_nonnull(strstr(out.data, "\"subkey\":\"public.t/a7\""));
    gw_buf_free(&out);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_wal_stays_bounded)
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

START_TEST(test_storage_refuses_other_layouts)
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

/* The op id in the first op line of bucket's ops after `after`. */
static uint64_t first_op(gw_storage_reader_t *r, const char *bucket, uint64_t after)
{
    uint64_t first, last;
    read_all(r, bucket, after, UINT64_MAX >> 1, 1000, &first, &last);
    return first;
}

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

START_TEST(test_storage_versions_side_by_side)
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
    put(s, "1#b", "k3", 10, 3);
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    /* a second writer of the same file builds version 2 beside it */
    ck_assert_int_eq(gw_storage_open_version(&opts, "2", &b, &err), 0);
    gw_storage_set_serving(b, 0);
    ck_assert_str_eq(gw_storage_version(b), "2#");
    uint64_t ids[6], lsn;
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "2#b", "k1", 20, 11); /* the same source row: version 2's own membership */
    put(b, "2#b", "k2", 20, 12);
    ck_assert_int_eq(gw_storage_commit(b, 90, &err), 0);
    gw_storage_checkpoint(b, &ids[0], &lsn);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k4", 10, 4);
    ck_assert_int_eq(gw_storage_commit(s, 110, &err), 0);
    gw_storage_checkpoint(s, &ids[1], &lsn);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    gw_row_ref_t ref = {.table = "public.t", .key = "k1"};
    ck_assert_int_eq(gw_storage_delete_row(b, &ref, &err), 0); /* REMOVE in 2#b only */
    ck_assert_int_eq(gw_storage_commit(b, 120, &err), 0);
    gw_storage_checkpoint(b, &ids[2], &lsn);
    /* one op-id sequence: every commit's ids are above the other writer's earlier ones */
    ck_assert_uint_gt(ids[1], ids[0]);
    ck_assert_uint_gt(ids[2], ids[1]);
    /* namespaces: rows, state and totals are each version's own */
    gw_storage_stats_t st;
    gw_storage_stats(s, &st);
    ck_assert_uint_eq(st.rows, 4);
    ck_assert_uint_eq(st.buckets, 1);
    gw_storage_stats(b, &st);
    ck_assert_uint_eq(st.rows, 1);
    ck_assert_uint_eq(st.ops, 3);
    char v[64];
    ck_assert_int_eq(gw_storage_state_get(b, "slot", v, sizeof(v)), 0);
    ck_assert_int_eq(gw_storage_state_get(b, "1#slot", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "ferry_1");
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl = '1#public.t'"), 4);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl = '2#public.t'"), 1);
    /* readers of this process serve the serving writer's checkpoint, in its namespace */
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts, &r, &err), 0);
    uint64_t cp, cplsn;
    int consistent;
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &cp, &cplsn, &consistent), 0);
    ck_assert_uint_eq(cp, ids[1]);
    ck_assert_str_eq(gw_storage_reader_version(r), "1#");
    uint32_t cs;
    uint64_t n;
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", cp, &cs, &n), 0);
    ck_assert_uint_eq(n, 4); /* the delete in version 2 did not touch version 1 */
    ck_assert_uint_eq(cs, 1 + 2 + 3 + 4);
    /* compaction by version 1's writer leaves version 2's buckets alone (their writer owns them) */
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "2#b", "k2", 20, 13); /* k2 again: its first PUT could become a MOVE */
    ck_assert_int_eq(gw_storage_commit(b, 125, &err), 0);
    gw_storage_compact_stats_t cst;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    gw_storage_rollback(s); /* reloads its bucket cache: it now knows version 2's buckets too */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_compact(s, &cst, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 125, &err), 0);
    ck_assert_uint_eq(cst.moved, 0);
    ck_assert_uint_eq(cst.ops_before, 4); /* version 1's ops only */
    uint64_t b_last;
    gw_storage_checkpoint(b, &b_last, &lsn);
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "2#b", b_last, &cs, &n), 0);
    ck_assert_uint_eq(n, 4);
    /* the switch: version 2's checkpoint goes above every id handed out, then it serves */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k5", 10, 5);
    ck_assert_int_eq(gw_storage_commit(s, 130, &err), 0);
    gw_storage_checkpoint(s, &ids[3], &lsn);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_advance_checkpoint(b, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(b, "serving", "2", &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    gw_storage_checkpoint(b, &ids[4], &lsn);
    ck_assert_uint_ge(ids[4], ids[3]);
    gw_storage_set_serving(s, 0);
    gw_storage_set_serving(b, 1);
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &cp, &cplsn, &consistent), 0);
    ck_assert_uint_eq(cp, ids[4]);
    ck_assert_str_eq(gw_storage_reader_version(r), "2#");
    ck_assert_uint_gt(first_op(r, "2#b", 0), 0);
    gw_storage_close(s);
    /* dropping version 1 leaves nothing of it */
    uint64_t dropped;
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_drop_version(b, "2", &dropped, &err), GW_EINVAL);
    ck_assert_int_eq(gw_storage_drop_version(b, "1", &dropped, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    ck_assert_uint_eq(dropped, 1);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM state WHERE k LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM buckets WHERE name LIKE '1#%'"), 0);
    ck_assert_int_eq(count_sql("SELECT count(*) FROM rows WHERE tbl LIKE '2#%'"), 1);
    gw_storage_reader_close(r);
    gw_storage_close(b);
}
END_TEST

START_TEST(test_storage_migrates_layout3)
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

static Suite *suite(void)
{
    Suite *s = suite_create("storage");
    TCase *tc = tcase_create("storage");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_storage_reads_across_chunks_and_checkpoints);
    tcase_add_test(tc, test_storage_wal_stays_bounded);
    tcase_add_test(tc, test_storage_refuses_other_layouts);
    tcase_add_test(tc, test_storage_versions_side_by_side);
    tcase_add_test(tc, test_storage_migrates_layout3);
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
