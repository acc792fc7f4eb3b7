/* test_oprec.c -- op records, subkeys and row copies (storage/gw_oprec.c), pure code
 *
 * An op encoded once must render as exactly the wire JSON the protocol wants, with every string
 * escaped once; its identity span must cover type, id and subkey; a malformed record must
 * render empty fields rather than read past its end. Row copies must find what they hold and
 * refuse what is cut short.
 */
#include "base/gw_buf.h"
#include "rules/rules.h"
#include "storage/gw_oprec.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

/* A whole record for op: its body encoded by gw_storage_encode_put (a PUT) or
 * gw_oprec_encode_body, then the header. */
static void record(gw_buf_t *rec, int kind, uint64_t op_id, uint32_t checksum, const char *type,
                   const char *id, const char *subkey, const char *data)
{
    gw_buf_t body = GW_BUF_INIT;
    size_t ia, ie;
    gw_oprec_encode_body(&body, kind, type, id, subkey, data, &ia, &ie);
    gw_oprec_append(rec, op_id, checksum, kind, ia, ie - ia, body.data, body.len);
    gw_buf_free(&body);
}

static char *render(const gw_buf_t *rec)
{
    gw_oprec_t r;
    ck_assert_int_eq(gw_oprec_read((const unsigned char *)rec->data, rec->len, &r), 1);
    ck_assert_uint_eq(r.size, rec->len);
    gw_buf_t out = GW_BUF_INIT;
    gw_oprec_render(&out, &r);
    gw_buf_append(&out, "", 1);
    return out.data;
}

START_TEST(test_oprec_put_renders_the_wire_json)
{
    gw_buf_t rec = GW_BUF_INIT;
    record(&rec, GW_OP_PUT, 42, 4294967295u, "todos", "a\"b", "public.todos/a\"b",
           "{\"description\":\"line\\nbreak\"}");
    char *json = render(&rec);
    ck_assert_str_eq(json, "{\"op_id\":\"42\",\"op\":\"PUT\",\"checksum\":4294967295,"
                           "\"object_type\":\"todos\",\"object_id\":\"a\\\"b\","
                           "\"subkey\":\"public.todos/a\\\"b\","
                           "\"data\":\"{\\\"description\\\":\\\"line\\\\nbreak\\\"}\"}");
    free(json);
    gw_buf_free(&rec);
}
END_TEST

START_TEST(test_oprec_remove_move_clear)
{
    gw_buf_t rec = GW_BUF_INIT;
    record(&rec, GW_OP_REMOVE, 7, 9, "t", "1", "public.t/1", NULL);
    char *json = render(&rec);
    ck_assert_str_eq(json,
                     "{\"op_id\":\"7\",\"op\":\"REMOVE\",\"checksum\":9,\"object_type\":\"t\","
                     "\"object_id\":\"1\",\"subkey\":\"public.t/1\"}");
    free(json);
    gw_buf_reset(&rec);
    gw_oprec_append(&rec, 8, 10, GW_OP_MOVE, 0, 0, "", 0);
    json = render(&rec);
    ck_assert_str_eq(json, "{\"op_id\":\"8\",\"op\":\"MOVE\",\"checksum\":10}");
    free(json);
    gw_buf_reset(&rec);
    gw_oprec_append(&rec, 18446744073709551615ull, 0, GW_OP_CLEAR, 0, 0, "", 0);
    json = render(&rec);
    ck_assert_str_eq(json, "{\"op_id\":\"18446744073709551615\",\"op\":\"CLEAR\",\"checksum\":0}");
    free(json);
    gw_buf_free(&rec);
}
END_TEST

START_TEST(test_oprec_encode_put_tail_and_identity)
{
    /* gw_storage_encode_put: the body a replicator thread encodes ahead for the writer */
    rules_op_t op = {.bucket = "1#b",
                     .object_type = "t",
                     .object_id = "x\ty",
                     .data = "{\"v\":1}",
                     .data_len = 7,
                     .checksum = 5};
    gw_buf_t out = GW_BUF_INIT;
    gw_buf_puts(&out, "prefix");
    gw_op_tail_t tail;
    gw_storage_encode_put(&out, &op, "public.t/x\ty", &tail);
    ck_assert_uint_eq(tail.len, out.len - 6);
    const char *body = out.data + 6;
    /* the identity: type, id and subkey, each a length-prefixed escaped string */
    const unsigned char *p = (const unsigned char *)body + tail.ident_off;
    const unsigned char *end = p + tail.ident_len;
    const char *s;
    size_t n;
    ck_assert_int_eq(gw_oprec_body_field(&p, end, &s, &n), 1);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(memcmp(s, "t", 1), 0);
    ck_assert_int_eq(gw_oprec_body_field(&p, end, &s, &n), 1);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(memcmp(s, "x\\ty", 4), 0); /* escaped once, when encoded */
    ck_assert_int_eq(gw_oprec_body_field(&p, end, &s, &n), 1);
    ck_assert_int_eq(memcmp(s, "public.t/x\\ty", n), 0);
    ck_assert(p == end);
    ck_assert_int_eq(gw_oprec_body_field(&p, end, &s, &n), 0); /* nothing more */
    /* the same bytes as encoding the body directly */
    gw_buf_t direct = GW_BUF_INIT;
    size_t ia, ie;
    gw_oprec_encode_body(&direct, GW_OP_PUT, "t", "x\ty", "public.t/x\ty", "{\"v\":1}", &ia, &ie);
    ck_assert_uint_eq(direct.len, tail.len);
    ck_assert_int_eq(memcmp(direct.data, body, tail.len), 0);
    ck_assert_uint_eq(ia, tail.ident_off);
    ck_assert_uint_eq(ie - ia, tail.ident_len);
    gw_buf_free(&direct);
    gw_buf_free(&out);
}
END_TEST

START_TEST(test_oprec_malformed_records)
{
    gw_buf_t rec = GW_BUF_INIT;
    record(&rec, GW_OP_PUT, 1, 2, "t", "1", "public.t/1", "{}");
    gw_oprec_t r;
    /* cut anywhere: the header or the line does not fit */
    for (size_t n = 0; n < rec.len; n++)
        ck_assert_int_eq(gw_oprec_read((const unsigned char *)rec.data, n, &r), 0);
    /* an identity span outside the line */
    gw_buf_t bad = GW_BUF_INIT;
    gw_oprec_append(&bad, 1, 2, GW_OP_PUT, 3, 100, "abcd", 4);
    ck_assert_int_eq(gw_oprec_read((const unsigned char *)bad.data, bad.len, &r), 0);
    /* a body whose field lengths lie: rendered with empty fields, never past the record */
    gw_buf_reset(&bad);
    unsigned char line[8] = {200, 0, 0, 0, 'x', 'y', 'z', 'w'};
    gw_oprec_append(&bad, 5, 6, GW_OP_PUT, 0, 0, (const char *)line, sizeof(line));
    char *json = render(&bad);
    ck_assert_str_eq(json, "{\"op_id\":\"5\",\"op\":\"PUT\",\"checksum\":6,\"object_type\":\"\","
                           "\"object_id\":\"\",\"subkey\":\"\"}");
    free(json);
    gw_buf_free(&bad);
    gw_buf_free(&rec);
}
END_TEST

START_TEST(test_oprec_subkey)
{
    char buf[64];
    gw_storage_subkey("public.todos", "42", buf, sizeof(buf));
    ck_assert_str_eq(buf, "public.todos/42");
    gw_storage_subkey("public.todos", "[\"a\",1]", buf, sizeof(buf));
    ck_assert_str_eq(buf, "public.todos/[\"a\",1]");
    char small[10];
    gw_storage_subkey("public.todos", "42", small, sizeof(small)); /* truncated, terminated */
    ck_assert_str_eq(small, "public.to");
    gw_storage_subkey("pub", "123456789", small, sizeof(small));
    ck_assert_str_eq(small, "pub/12345");
}
END_TEST

START_TEST(test_oprec_row_copies)
{
    const char *names[4] = {"id", "short", "long", "nothing"};
    char long_value[300];
    memset(long_value, 'L', sizeof(long_value) - 1);
    long_value[sizeof(long_value) - 1] = '\0';
    const char *values[4] = {"1", "abc", long_value, NULL};
    gw_buf_t all = GW_BUF_INIT, big = GW_BUF_INIT;
    ck_assert_uint_eq(gw_storage_row_encode(&all, 4, names, values, NULL, 0), 4);
    /* only values of at least 256 bytes, NULLs dropped */
    ck_assert_uint_eq(gw_storage_row_encode(&big, 4, names, values, NULL, 256), 1);
    const char *v;
    size_t len;
    ck_assert_int_eq(gw_storage_row_find(all.data, all.len, "short", &v, &len), 1);
    ck_assert_uint_eq(len, 3);
    ck_assert_int_eq(memcmp(v, "abc", 3), 0);
    ck_assert_int_eq(gw_storage_row_find(all.data, all.len, "nothing", &v, &len), 1);
    ck_assert_ptr_null(v); /* SQL NULL */
    ck_assert_int_eq(gw_storage_row_find(all.data, all.len, "missing", &v, &len), 0);
    ck_assert_int_eq(gw_storage_row_find(big.data, big.len, "short", &v, &len), 0);
    ck_assert_int_eq(gw_storage_row_find(big.data, big.len, "long", &v, &len), 1);
    ck_assert_uint_eq(len, strlen(long_value));
    /* lengths given (values need not be NUL-terminated) */
    gw_buf_t sized = GW_BUF_INIT;
    const size_t lens[1] = {2};
    const char *cut[1] = {"abcdef"};
    gw_storage_row_encode(&sized, 1, names, cut, lens, 0);
    ck_assert_int_eq(gw_storage_row_find(sized.data, sized.len, "id", &v, &len), 1);
    ck_assert_uint_eq(len, 2);
    /* cut short anywhere: never found past the end */
    for (size_t n = 0; n < big.len; n++)
        ck_assert_int_eq(gw_storage_row_find(big.data, n, "long", &v, &len), 0);
    gw_buf_free(&all);
    gw_buf_free(&big);
    gw_buf_free(&sized);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("oprec");
    TCase *tc = tcase_create("oprec");
    tcase_add_test(tc, test_oprec_put_renders_the_wire_json);
    tcase_add_test(tc, test_oprec_remove_move_clear);
    tcase_add_test(tc, test_oprec_encode_put_tail_and_identity);
    tcase_add_test(tc, test_oprec_malformed_records);
    tcase_add_test(tc, test_oprec_subkey);
    tcase_add_test(tc, test_oprec_row_copies);
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
