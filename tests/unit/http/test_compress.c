/* test_compress.c -- unit tests of http/gw_compress.c: negotiation, batches that decode to
 * exactly their input with nothing held back (zstd frames, one gzip member across batches), and
 * the worker thread: jobs done in order, their done messages on an h2o loop, none lost at a stop */
#include "http/gw_compress.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

static gw_encoding_t neg(const char *h)
{
    return gw_compress_negotiate(h, h != NULL ? strlen(h) : 0, 1, 1);
}

START_TEST(test_compress_negotiate_prefers_zstd_then_gzip)
{
    ck_assert_int_eq(neg(NULL), GW_ENC_IDENTITY);
    ck_assert_int_eq(neg(""), GW_ENC_IDENTITY);
    ck_assert_int_eq(neg("gzip, deflate, br, zstd"), GW_ENC_ZSTD);
    ck_assert_int_eq(neg("gzip, deflate"), GW_ENC_GZIP);
    ck_assert_int_eq(neg("x-gzip"), GW_ENC_GZIP);
    ck_assert_int_eq(neg("zstd;q=0, gzip;q=0.1"), GW_ENC_GZIP);
    ck_assert_int_eq(neg("zstd; q=0 , gzip;q=0"), GW_ENC_IDENTITY);
    ck_assert_int_eq(neg("br, deflate, *"), GW_ENC_IDENTITY);
    ck_assert_int_eq(neg("zstdx, gzipped"), GW_ENC_IDENTITY);
    ck_assert_int_eq(neg(" ZSTD "), GW_ENC_ZSTD);
    ck_assert_int_eq(gw_compress_negotiate("zstd, gzip", 10, 0, 1), GW_ENC_GZIP);
    ck_assert_int_eq(gw_compress_negotiate("zstd, gzip", 10, 0, 0), GW_ENC_IDENTITY);
}
END_TEST

static const char *batches[] = {
    "{\"checkpoint\":{\"last_op_id\":\"3\",\"buckets\":[]}}\n",
    "{\"data\":{\"bucket\":\"b\",\"data\":[{\"op_id\":\"1\",\"op\":\"PUT\"},{\"op_id\":\"2\","
    "\"op\":"
    "\"PUT\"}]}}\n{\"checkpoint_complete\":{\"last_op_id\":\"3\"}}\n",
    "",
    "{\"token_expires_in\":3600}\n",
};

START_TEST(test_compress_batch_zstd_frames_decode_at_once)
{
    gw_compress_ctx_t *c = gw_compress_ctx_new(3, 6);
    gw_compress_stream_t st = {.enc = GW_ENC_ZSTD};
    ZSTD_DStream *d = ZSTD_createDStream();
    ZSTD_initDStream(d);
    char got[4096];
    size_t ngot = 0, want = 0;
    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
        gw_buf_t out = GW_BUF_INIT;
        ck_assert_int_eq(gw_compress_batch(c, &st, batches[i], strlen(batches[i]),
                                           i + 1 == sizeof(batches) / sizeof(batches[0]), &out),
                         0);
        want += strlen(batches[i]);
        ZSTD_inBuffer in = {out.data, out.len, 0};
        while (in.pos < in.size) {
            ZSTD_outBuffer o = {got + ngot, sizeof(got) - ngot, 0};
            ck_assert(!ZSTD_isError(ZSTD_decompressStream(d, &o, &in)));
            ngot += o.pos;
        }
        /* everything of this batch is decoded from this batch's bytes alone */
        ck_assert_uint_eq(ngot, want);
        gw_buf_free(&out);
    }
    ck_assert_uint_eq(st.in, want);
    ZSTD_freeDStream(d);
    gw_compress_ctx_free(c);
}
END_TEST

START_TEST(test_compress_batch_gzip_one_member_with_trailer)
{
    gw_compress_ctx_t *c = gw_compress_ctx_new(3, 6);
    gw_compress_stream_t st = {.enc = GW_ENC_GZIP};
    z_stream z;
    memset(&z, 0, sizeof(z));
    ck_assert_int_eq(inflateInit2(&z, 16 + 15), Z_OK);
    char got[4096];
    size_t want = 0;
    int rc = Z_OK;
    size_t n = sizeof(batches) / sizeof(batches[0]);
    for (size_t i = 0; i <= n; i++) {
        gw_buf_t out = GW_BUF_INIT;
        const char *b = i < n ? batches[i] : "";
        ck_assert_int_eq(gw_compress_batch(c, &st, b, strlen(b), i == n, &out), 0);
        want += strlen(b);
        z.next_in = (Bytef *)out.data;
        z.avail_in = (uInt)out.len;
        z.next_out = (Bytef *)got + z.total_out;
        z.avail_out = (uInt)(sizeof(got) - z.total_out);
        rc = inflate(&z, Z_SYNC_FLUSH);
        ck_assert(rc == Z_OK || rc == Z_STREAM_END || (rc == Z_BUF_ERROR && out.len == 0));
        ck_assert_uint_eq(z.total_out, want); /* nothing held back */
        gw_buf_free(&out);
    }
    ck_assert_int_eq(rc, Z_STREAM_END); /* the trailer's CRC and length were checked */
    inflateEnd(&z);
    gw_compress_ctx_free(c);
}
END_TEST

/* ---- the worker ---- */

enum { NJOBS = 24, JOB_BYTES = 100000 };

typedef struct done_state {
    int ndone;
    int order[NJOBS];
} done_state_t;

static done_state_t g_done;
static gw_compress_job_t g_jobs[NJOBS];

static void on_done(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    (void)rx;
    while (!h2o_linklist_is_empty(messages)) {
        gw_compress_job_t *job =
            H2O_STRUCT_FROM_MEMBER(gw_compress_job_t, super.link, messages->next);
        h2o_linklist_unlink(&job->super.link);
        g_done.order[g_done.ndone++] = (int)(job - g_jobs);
    }
}

/* A batch of JOB_BYTES lines that differ per job and per stream (heap; the caller frees it). */
static char *make_batch(int job)
{
    char *b = malloc(JOB_BYTES + 1);
    size_t n = 0;
    while (n < JOB_BYTES) {
        int w = snprintf(b + n, JOB_BYTES + 1 - n, "{\"data\":{\"job\":%d,\"at\":%zu}}\n", job, n);
        n += (size_t)w;
    }
    b[JOB_BYTES] = '\0';
    return b;
}

START_TEST(test_compress_worker_jobs_in_order_and_none_lost_at_stop)
{
    h2o_evloop_t *loop = h2o_evloop_create();
    h2o_multithread_queue_t *q = h2o_multithread_create_queue(loop);
    h2o_multithread_receiver_t rx;
    h2o_multithread_register_receiver(q, &rx, on_done);
    gw_err_t err;
    gw_compress_worker_t *w = gw_compress_worker_start(1, 1, &err);
    ck_assert_ptr_nonnull(w);
    memset(&g_done, 0, sizeof(g_done));
    /* two streams, zstd and gzip, a job each at a time as in api/gw_stream.c, the second half
     * posted just before the stop */
    gw_compress_stream_t st[2] = {{.enc = GW_ENC_ZSTD}, {.enc = GW_ENC_GZIP}};
    gw_buf_t out[NJOBS];
    char *in[NJOBS];
    for (int i = 0; i < NJOBS; i++) {
        in[i] = make_batch(i);
        out[i] = (gw_buf_t)GW_BUF_INIT;
        g_jobs[i] = (gw_compress_job_t){.done_rx = &rx,
                                        .st = &st[i % 2],
                                        .in = in[i],
                                        .n = JOB_BYTES,
                                        .last = i >= NJOBS - 2,
                                        .out = &out[i],
                                        .rc = -1};
    }
    for (int i = 0; i < NJOBS / 2; i++) {
        gw_compress_worker_post(w, &g_jobs[i]);
        for (int k = 0; k < 300 && g_done.ndone <= i; k++) /* one job in flight at a time */
            h2o_evloop_run(loop, 100);
        ck_assert_int_eq(g_done.ndone, i + 1);
    }
    for (int i = NJOBS / 2; i < NJOBS; i++)
        gw_compress_worker_post(w, &g_jobs[i]);
    gw_compress_worker_stop(w); /* finishes the queued jobs: each sends its message */
    for (int k = 0; k < 300 && g_done.ndone < NJOBS; k++)
        h2o_evloop_run(loop, 100);
    ck_assert_int_eq(g_done.ndone, NJOBS);
    for (int i = 0; i < NJOBS; i++)
        ck_assert_int_eq(g_done.order[i], i); /* in the order posted */
    /* each stream's output decodes to exactly its input */
    for (int s = 0; s < 2; s++) {
        gw_buf_t all = GW_BUF_INIT, want = GW_BUF_INIT;
        for (int i = s; i < NJOBS; i += 2) {
            ck_assert_int_eq(g_jobs[i].rc, 0);
            gw_buf_append(&all, out[i].data, out[i].len);
            gw_buf_append(&want, in[i], JOB_BYTES);
        }
        char *got = malloc(want.len + 1);
        size_t ngot = 0;
        if (s == 0) {
            ZSTD_DStream *d = ZSTD_createDStream();
            ZSTD_initDStream(d);
            ZSTD_inBuffer ib = {all.data, all.len, 0};
            while (ib.pos < ib.size) {
                ZSTD_outBuffer ob = {got + ngot, want.len + 1 - ngot, 0};
                ck_assert(!ZSTD_isError(ZSTD_decompressStream(d, &ob, &ib)));
                ngot += ob.pos;
            }
            ZSTD_freeDStream(d);
        } else {
            z_stream z;
            memset(&z, 0, sizeof(z));
            ck_assert_int_eq(inflateInit2(&z, 16 + 15), Z_OK);
            z.next_in = (Bytef *)all.data;
            z.avail_in = (uInt)all.len;
            z.next_out = (Bytef *)got;
            z.avail_out = (uInt)(want.len + 1);
            ck_assert_int_eq(inflate(&z, Z_FINISH), Z_STREAM_END); /* CRC and length checked */
            ngot = z.total_out;
            inflateEnd(&z);
        }
        ck_assert_uint_eq(ngot, want.len);
        ck_assert(memcmp(got, want.data, want.len) == 0);
        ck_assert_uint_eq(st[s].in, want.len);
        free(got);
        gw_buf_free(&all);
        gw_buf_free(&want);
    }
    for (int i = 0; i < NJOBS; i++) {
        free(in[i]);
        gw_buf_free(&out[i]);
    }
    h2o_multithread_unregister_receiver(q, &rx);
    h2o_multithread_destroy_queue(q);
    h2o_evloop_destroy(loop);
}
END_TEST

static Suite *compress_suite(void)
{
    Suite *s = suite_create("compress");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_compress_negotiate_prefers_zstd_then_gzip);
    tcase_add_test(tc, test_compress_batch_zstd_frames_decode_at_once);
    tcase_add_test(tc, test_compress_batch_gzip_one_member_with_trailer);
    tcase_add_test(tc, test_compress_worker_jobs_in_order_and_none_lost_at_stop);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(compress_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
