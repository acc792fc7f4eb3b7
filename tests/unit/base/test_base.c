/* test_base.c -- unit tests of the gateway's base (base/): errors, arenas, buffers, logging */
#include "base/gw_arena.h"
#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "base/gw_log.h"
#include "base/gw_map.h"
#include "base/gw_metrics.h"

#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
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
    gw_buf_reset(&b);
    gw_buf_u64(&b, 0);
    gw_buf_puts(&b, ",");
    gw_buf_u64(&b, 18446744073709551615ULL);
    gw_buf_puts(&b, ",");
    gw_buf_u64(&b, 4294967295U);
    ck_assert_str_eq(b.data, "0,18446744073709551615,4294967295");
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

/* A client_id built to forge a log line: a newline and a whole fake logfmt line, terminal
 * escapes (ESC, the 8-bit CSI as a raw byte and as UTF-8), a backslash that would otherwise
 * eat the closing quote. Quoted, it stays one value on one line with no control byte. */
START_TEST(test_base_log_qs_escapes_everything_a_client_sends)
{
    char q[256];
    const char *forged = "x\" level=error msg=\"forged\"\nts=1 level=info\r\t\x1b[2J\x9b\xc2\x9b\\";
    gw_log_qs(forged, q, sizeof(q));
    ck_assert_str_eq(q,
                     "\"x\\\" level=error msg=\\\"forged\\\"\\nts=1 level=info\\r\\t\\x1b[2J\\x9b"
                     "\\u009b\\\\\"");
    for (const char *p = q; *p; p++)
        ck_assert_msg((unsigned char)*p >= 0x20 && (unsigned char)*p != 0x7f,
                      "control byte 0x%02x in %s", (unsigned char)*p, q);
    /* the only unescaped quotes are the first and the last */
    for (size_t i = 1; i + 1 < strlen(q); i++)
        if (q[i] == '"') ck_assert_int_eq(q[i - 1], '\\');
    /* valid UTF-8 passes; invalid bytes and DEL are escaped; NULL is "" */
    ck_assert_str_eq(gw_log_qs("caf\xc3\xa9 \x7f \xff", q, sizeof(q)),
                     "\"caf\xc3\xa9 \\x7f \\xff\"");
    ck_assert_str_eq(gw_log_qs(NULL, q, sizeof(q)), "\"\"");
    ck_assert_str_eq(gw_log_qsn("a\0b", 3, q, sizeof(q)), "\"a\\x00b\"");
    /* too long: cut at a whole escape, marked, still closed */
    char small[12];
    ck_assert_str_eq(gw_log_qs("abcdefghijklmnop", small, sizeof(small)), "\"abcdef...\"");
    ck_assert_str_eq(gw_log_qs("\n\n\n\n\n\n", small, sizeof(small)), "\"\\n\\n\\n...\"");
    ck_assert_str_eq(gw_log_qs("abcdefghi", small, sizeof(small)), "\"abcdefghi\"");
}
END_TEST

START_TEST(test_base_log_limit_one_line_per_interval)
{
    gw_log_limit_t l = GW_LOG_LIMIT_INIT(60000);
    unsigned long long sup = 99;
    ck_assert_int_eq(gw_log_limit_take(&l, &sup), 1);
    ck_assert_uint_eq(sup, 0);
    for (int i = 0; i < 1000; i++)
        ck_assert_int_eq(gw_log_limit_take(&l, &sup), 0);
    ck_assert_uint_eq(atomic_load(&l.suppressed), 1000);
    atomic_store(&l.next_ms, 0); /* the interval is over */
    ck_assert_int_eq(gw_log_limit_take(&l, &sup), 1);
    ck_assert_uint_eq(sup, 1000);
    ck_assert_uint_eq(atomic_load(&l.suppressed), 0);
}
END_TEST

/* SipHash-2-4 against the paper's test vectors (key 00..0f; messages 00.. of 0 and 15 bytes) */
START_TEST(test_base_siphash_reference_vectors)
{
    uint8_t key[16], msg[15];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 15; i++)
        msg[i] = (uint8_t)i;
    ck_assert_uint_eq(gw_siphash(key, msg, 0, 2, 4), 0x726fdb47dd0e0e31ULL);
    ck_assert_uint_eq(gw_siphash(key, msg, 8, 2, 4), 0x93f5f5799a932462ULL);
    ck_assert_uint_eq(gw_siphash(key, msg, 15, 2, 4), 0xa129ca6149be45e5ULL);
}
END_TEST

/* Longest run of occupied slots: what one lookup may have to probe. */
static size_t longest_run(const gw_map_t *m)
{
    size_t best = 0, run = 0;
    for (size_t i = 0; i < 2 * m->cap; i++) { /* twice round: runs wrap */
        if (m->slots[i % m->cap].key != NULL) {
            if (++run > best) best = run;
        } else {
            run = 0;
        }
    }
    return best > m->cap ? m->cap : best;
}

/*
 * Hash flooding: 3000 keys whose unkeyed FNV-1a hashes share their low 12 bits (so with FNV
 * slots, every one lands in one cluster of a 4096-slot map) spread out under the keyed hash
 * like random keys do.
 */
START_TEST(test_base_map_keyed_hash_spreads_fnv_collisions)
{
    enum { N = 3000 };
    static char keys[N][12];
    size_t n = 0;
    for (unsigned long i = 0; n < N; i++) {
        char k[12];
        snprintf(k, sizeof(k), "b%lu", i);
        if ((gw_hash(k, strlen(k)) & 4095) == 7) memcpy(keys[n++], k, sizeof(k));
    }
    gw_map_t colliding, random;
    gw_map_init(&colliding);
    gw_map_init(&random);
    for (size_t i = 0; i < N; i++) {
        gw_map_put(&colliding, keys[i], (void *)(i + 1));
        char r[24];
        snprintf(r, sizeof(r), "r%zu", i * 7919);
        gw_map_put(&random, r, (void *)1);
    }
    ck_assert_uint_eq(colliding.cap, 4096);
    size_t worst = longest_run(&colliding), base = longest_run(&random);
    ck_assert_msg(worst < 300, "colliding keys form a run of %zu slots (random keys: %zu)", worst,
                  base);
    for (size_t i = 0; i < N; i++)
        ck_assert_ptr_eq(gw_map_get(&colliding, keys[i]), (void *)(i + 1));
    for (size_t i = 0; i < N; i += 2)
        ck_assert_ptr_eq(gw_map_del(&colliding, keys[i]), (void *)(i + 1));
    for (size_t i = 1; i < N; i += 2)
        ck_assert_ptr_eq(gw_map_get(&colliding, keys[i]), (void *)(i + 1));
    gw_map_free(&colliding);
    gw_map_free(&random);
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
    tcase_add_test(tc, test_base_log_qs_escapes_everything_a_client_sends);
    tcase_add_test(tc, test_base_log_limit_one_line_per_interval);
    tcase_add_test(tc, test_base_siphash_reference_vectors);
    tcase_add_test(tc, test_base_map_keyed_hash_spreads_fnv_collisions);
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
