/* test_base.c -- unit tests of the gateway's base (base/): errors, arenas, buffers, logging */
#include "base/gw_arena.h"
#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "base/gw_log.h"
#include "base/gw_metrics.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_base_err_set_and_format)
{
    gw_err_t err;
    char buf[256];
    ck_assert_int_eq(gw_err_set(&err, GW_ECONFIG, "f.yaml:1:2", "bad %s", "thing"), GW_ECONFIG);
    ck_assert_str_eq(gw_err_format(&err, buf, sizeof(buf)), "f.yaml:1:2: bad thing");
    ck_assert_str_eq(gw_err_name(GW_EADDRINUSE), "GW_EADDRINUSE");
    ck_assert_str_eq(gw_err_name(-999), "GW_EUNKNOWN");
    ck_assert_int_eq(gw_err_set(NULL, GW_EIO, NULL, "x"), GW_EIO);
}
END_TEST

START_TEST(test_base_arena_alloc_reset)
{
    gw_arena_t a;
    gw_arena_init(&a, 256);
    char *p = gw_arena_strndup(&a, "hello world", 5);
    ck_assert_str_eq(p, "hello");
    ck_assert_uint_eq((uintptr_t)p % 16, 0);
    void *big = gw_arena_alloc(&a, 10000); /* larger than a chunk: its own chunk */
    memset(big, 1, 10000);
    for (int i = 0; i < 100; i++)
        ck_assert_ptr_nonnull(gw_arena_alloc(&a, 24));
    gw_arena_reset(&a);
    ck_assert_uint_eq(a.used_total, 0);
    ck_assert_str_eq(gw_arena_strndup(&a, "again", 5), "again");
    gw_arena_free(&a);
    ck_assert_ptr_null(a.head);
}
END_TEST

START_TEST(test_base_buf_json_escapes)
{
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_json_str(&b, "a\"b\\c\n\x01");
    ck_assert_str_eq(b.data, "\"a\\\"b\\\\c\\n\\u0001\"");
    gw_buf_reset(&b);
    gw_buf_printf(&b, "%d-%s", 42, "x");
    ck_assert_str_eq(b.data, "42-x");
    gw_buf_free(&b);
}
END_TEST

START_TEST(test_base_log_parse_level_and_quote)
{
    gw_log_level_t l;
    ck_assert_int_eq(gw_log_parse_level("warn", &l), 0);
    ck_assert_int_eq(l, GW_LOG_WARN);
    ck_assert_int_eq(gw_log_parse_level("verbose", &l), -1);
    char q[64];
    ck_assert_str_eq(gw_log_qs("a \"b\"\n", q, sizeof(q)), "\"a \\\"b\\\"\\n\"");
}
END_TEST

/* A live readiness check is asked at every render: not ready with its reason, then ready. */
static int live_state = 0;
static int live_check(void *ud, char *reason, size_t len)
{
    (void)ud;
    if (live_state) return 1;
    snprintf(reason, len, "the source has sent nothing for %d s", 31);
    return 0;
}

START_TEST(test_base_ready_live_check)
{
    int fixed = gw_ready_register("fixed", "starting");
    gw_ready_set(fixed, 1, NULL);
    gw_ready_register_fn("source", live_check, NULL);
    gw_buf_t b = GW_BUF_INIT;
    live_state = 0;
    ck_assert_int_eq(gw_ready_render(&b), 0);
    ck_assert_ptr_nonnull(strstr(b.data,
                                 "\"source\":{\"ready\":false,\"reason\":\"the source has sent "
                                 "nothing for 31 s\"}"));
    ck_assert_ptr_nonnull(strstr(b.data, "\"fixed\":{\"ready\":true}"));
    gw_buf_reset(&b);
    live_state = 1; /* nothing set it: the next render asks again */
    ck_assert_int_eq(gw_ready_render(&b), 1);
    ck_assert_ptr_nonnull(strstr(b.data, "\"source\":{\"ready\":true}"));
    gw_buf_free(&b);
}
END_TEST

static Suite *base_suite(void)
{
    Suite *s = suite_create("base");
    TCase *tc = tcase_create("base");
    tcase_add_test(tc, test_base_err_set_and_format);
    tcase_add_test(tc, test_base_arena_alloc_reset);
    tcase_add_test(tc, test_base_buf_json_escapes);
    tcase_add_test(tc, test_base_log_parse_level_and_quote);
    tcase_add_test(tc, test_base_ready_live_check);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(base_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
