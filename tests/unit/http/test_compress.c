/* test_compress.c -- unit tests of http/gw_compress.c: negotiation, and batches that decode to
 * exactly their input with nothing held back (zstd frames, one gzip member across batches) */
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

static Suite *compress_suite(void)
{
    Suite *s = suite_create("compress");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_compress_negotiate_prefers_zstd_then_gzip);
    tcase_add_test(tc, test_compress_batch_zstd_frames_decode_at_once);
    tcase_add_test(tc, test_compress_batch_gzip_one_member_with_trailer);
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
