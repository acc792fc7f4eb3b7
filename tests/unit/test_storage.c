/* test_storage.c -- Check tests of gateway/gw_storage: chunked ops read back across chunk
 * boundaries, checksums as of older checkpoints, and a WAL that stays bounded under writes.
 *
 * Each test opens a storage file in its own temporary directory and removes it afterwards.
 */
#include "gateway/gw_buf.h"
#include "gateway/gw_err.h"
#include "gateway/gw_storage.h"
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

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/ferry-test-storage.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/storage.db", dir);
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
        ck_assert_int_eq(gw_storage_read_ops(r, bucket, after, upto, max_ops, 1 << 20, &out, &l,
                                             &more, &n),
                         0);
        if (n > 0 && *first == 0) {
            const char *p = strstr(out.data, "\"op_id\":\"");
            *first = strtoull(p + 9, NULL, 10);
        }
        ck_assert_uint_le(n, max_ops);
        total += n;
        gw_buf_free(&out);
        after = l;
        if (!more)
            break;
        ck_assert_uint_gt(n, 0);
    }
    *last = after;
    return total;
}

START_TEST(test_storage_reads_across_chunks_and_checkpoints)
{
    gw_storage_t *s;
    gw_err_t err;
    ck_assert_int_eq(gw_storage_open(path, &s, &err), 0);
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
    ck_assert_int_eq(gw_storage_reader_open(path, &r, &err), 0);
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
    ck_assert_int_eq(gw_storage_open(path, &s, &err), 0);
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
        if (stat(wal, &st) == 0 && st.st_size > peak)
            peak = st.st_size;
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
    ck_assert_int_eq(gw_storage_open(path, &s, &err), 0);
    gw_storage_close(s);
    ck_assert_int_eq(gw_storage_open(path, &s, &err), 0); /* its own layout: fine */
    gw_storage_close(s);
    /* rows without the layout mark: written by an older ferry */
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db,
                                  "DELETE FROM state WHERE k = 'layout'; INSERT INTO rows(tbl, key, "
                                  "members, lookups) VALUES ('public.t', '1', x'', '')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    ck_assert_int_eq(gw_storage_open(path, &s, &err), GW_EIO);
    char msg[512];
    ck_assert_ptr_nonnull(strstr(gw_err_format(&err, msg, sizeof(msg)), "older ferry"));
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
