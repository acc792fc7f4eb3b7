/* test_pgoutput.c -- the pure replication decoder (pg/gw_pgoutput.c) and LSNs (pg/gw_lsn.c)
 *
 * Messages are built here byte by byte, in the wire format of the PostgreSQL documentation
 * ("Logical Replication Message Formats", protocol version 1, and the CopyData messages of
 * START_REPLICATION), and decoded; every field must come back. Malformed input must fail with
 * GW_EINVAL and a message naming the message type, never read past the end. The fuzz target
 * (tests/fuzz/fuzz_pgoutput.c) covers arbitrary bytes; these cover meaning.
 */
#include "base/gw_arena.h"
#include "base/gw_err.h"
#include "pg/gw_lsn.h"
#include "pg/gw_pgoutput.h"

#include <check.h>
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a message builder (big-endian, as on the wire) ---- */

typedef struct msg {
    char b[1024];
    size_t n;
} msg_t;

static void b8(msg_t *m, uint8_t v)
{
    m->b[m->n++] = (char)v;
}

static void b16(msg_t *m, uint16_t v)
{
    v = htobe16(v);
    memcpy(m->b + m->n, &v, 2);
    m->n += 2;
}

static void b32(msg_t *m, uint32_t v)
{
    v = htobe32(v);
    memcpy(m->b + m->n, &v, 4);
    m->n += 4;
}

static void b64(msg_t *m, uint64_t v)
{
    v = htobe64(v);
    memcpy(m->b + m->n, &v, 8);
    m->n += 8;
}

static void bstr(msg_t *m, const char *s) /* a NUL-terminated String */
{
    memcpy(m->b + m->n, s, strlen(s) + 1);
    m->n += strlen(s) + 1;
}

static void btext(msg_t *m, const char *s) /* a 't' column: Int32 length, bytes */
{
    b8(m, 't');
    b32(m, (uint32_t)strlen(s));
    memcpy(m->b + m->n, s, strlen(s));
    m->n += strlen(s);
}

static gw_arena_t arena;
static gw_err_t err;

static void setup(void)
{
    gw_arena_init(&arena, 4096);
}

static void teardown(void)
{
    gw_arena_free(&arena);
}

static int decode(const msg_t *m, gw_pgo_msg_t *out)
{
    gw_arena_reset(&arena);
    return gw_pgo_decode(m->b, m->n, &arena, out, &err);
}

static int value_is(const gw_pgo_value_t *v, const char *text)
{
    return v->kind == 't' && v->len == strlen(text) && memcmp(v->data, text, v->len) == 0;
}

/* ---- framing ---- */

START_TEST(test_pgoutput_frame_xlogdata_and_keepalive)
{
    msg_t m = {0};
    b8(&m, 'w');
    b64(&m, 0x16B374D848ull);
    b64(&m, 0x16B374D900ull);
    b64(&m, 123456789);
    bstr(&m, "payload");
    gw_pgo_frame_t f;
    ck_assert_int_eq(gw_pgo_frame(m.b, m.n, &f, &err), 0);
    ck_assert_int_eq(f.kind, GW_PGO_XLOGDATA);
    ck_assert_uint_eq(f.wal_start, 0x16B374D848ull);
    ck_assert_uint_eq(f.wal_end, 0x16B374D900ull);
    ck_assert_int_eq(f.send_time, 123456789);
    ck_assert_uint_eq(f.payload_len, 8);
    ck_assert_str_eq(f.payload, "payload");

    msg_t k = {0};
    b8(&k, 'k');
    b64(&k, 77);
    b64(&k, 5);
    b8(&k, 1);
    ck_assert_int_eq(gw_pgo_frame(k.b, k.n, &f, &err), 0);
    ck_assert_int_eq(f.kind, GW_PGO_KEEPALIVE);
    ck_assert_uint_eq(f.wal_end, 77);
    ck_assert_int_eq(f.reply_requested, 1);
    /* a keepalive with a byte too many or too few, an XLogData without its header, an unknown
     * type, nothing at all */
    k.b[k.n++] = 0;
    ck_assert_int_eq(gw_pgo_frame(k.b, k.n, &f, &err), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "keepalive"));
    ck_assert_int_eq(gw_pgo_frame(k.b, k.n - 2, &f, &err), GW_EINVAL);
    ck_assert_int_eq(gw_pgo_frame(m.b, 20, &f, &err), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "XLogData"));
    ck_assert_int_eq(gw_pgo_frame("z", 1, &f, &err), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "0x7a"));
    ck_assert_int_eq(gw_pgo_frame("", 0, &f, &err), GW_EINVAL);
}
END_TEST

START_TEST(test_pgoutput_status_update_bytes)
{
    char out[34];
    ck_assert_uint_eq(gw_pgo_status_update(out, 0x0102030405060708ull, 2, 3, -1, 1), 34);
    ck_assert_int_eq(out[0], 'r');
    uint64_t v;
    memcpy(&v, out + 1, 8);
    ck_assert_uint_eq(be64toh(v), 0x0102030405060708ull);
    ck_assert_int_eq(out[1], 0x01); /* big-endian */
    memcpy(&v, out + 9, 8);
    ck_assert_uint_eq(be64toh(v), 2);
    memcpy(&v, out + 17, 8);
    ck_assert_uint_eq(be64toh(v), 3);
    memcpy(&v, out + 25, 8);
    ck_assert_int_eq((int64_t)be64toh(v), -1);
    ck_assert_int_eq(out[33], 1);
    gw_pgo_status_update(out, 0, 0, 0, 0, 0);
    ck_assert_int_eq(out[33], 0);
    /* the protocol's clock: microseconds since 2000-01-01 (later than 2020-01-01) */
    ck_assert_int_gt(gw_pgo_now(), (int64_t)631152000 * 1000000);
}
END_TEST

/* ---- messages ---- */

START_TEST(test_pgoutput_begin_commit_origin_type)
{
    msg_t m = {0};
    gw_pgo_msg_t out;
    b8(&m, 'B');
    b64(&m, 1000);
    b64(&m, 42);
    b32(&m, 7);
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_BEGIN);
    ck_assert_uint_eq(out.u.begin.final_lsn, 1000);
    ck_assert_int_eq(out.u.begin.commit_time, 42);
    ck_assert_uint_eq(out.u.begin.xid, 7);
    m.n = 0;
    b8(&m, 'C');
    b8(&m, 0);
    b64(&m, 990);
    b64(&m, 1000);
    b64(&m, 43);
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_COMMIT);
    ck_assert_uint_eq(out.u.commit.commit_lsn, 990);
    ck_assert_uint_eq(out.u.commit.end_lsn, 1000);
    ck_assert_int_eq(out.u.commit.commit_time, 43);
    m.n = 0;
    b8(&m, 'O');
    b64(&m, 5);
    bstr(&m, "node_a");
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_str_eq(out.u.origin.name, "node_a");
    m.n = 0;
    b8(&m, 'Y');
    b32(&m, 16385);
    bstr(&m, "public");
    bstr(&m, "mood");
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_TYPE);
    ck_assert_uint_eq(out.u.type.oid, 16385);
    ck_assert_str_eq(out.u.type.typname, "mood");
}
END_TEST

START_TEST(test_pgoutput_relation)
{
    msg_t m = {0};
    b8(&m, 'R');
    b32(&m, 16384);
    bstr(&m, "public");
    bstr(&m, "todos");
    b8(&m, 'f');
    b16(&m, 2);
    b8(&m, 1);
    bstr(&m, "id");
    b32(&m, 25);
    b32(&m, (uint32_t)-1);
    b8(&m, 0);
    bstr(&m, "done");
    b32(&m, 16);
    b32(&m, (uint32_t)-1);
    gw_pgo_msg_t out;
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_RELATION);
    ck_assert_uint_eq(out.u.relation.relid, 16384);
    ck_assert_str_eq(out.u.relation.nspname, "public");
    ck_assert_str_eq(out.u.relation.relname, "todos");
    ck_assert_int_eq(out.u.relation.replident, 'f');
    ck_assert_uint_eq(out.u.relation.ncols, 2);
    ck_assert_int_eq(out.u.relation.cols[0].flags, 1);
    ck_assert_str_eq(out.u.relation.cols[0].name, "id");
    ck_assert_uint_eq(out.u.relation.cols[0].type_oid, 25);
    ck_assert_int_eq(out.u.relation.cols[0].typmod, -1);
    ck_assert_str_eq(out.u.relation.cols[1].name, "done");
    ck_assert_uint_eq(out.u.relation.cols[1].type_oid, 16);
    /* a column name without its terminating NUL */
    m.n -= 9;
    m.b[m.n - 1] = 'x';
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "Relation"));
}
END_TEST

START_TEST(test_pgoutput_insert_update_delete_tuples)
{
    msg_t m = {0};
    gw_pgo_msg_t out;
    /* Insert: text, NULL, unchanged TOAST */
    b8(&m, 'I');
    b32(&m, 16384);
    b8(&m, 'N');
    b16(&m, 3);
    btext(&m, "t1");
    b8(&m, 'n');
    b8(&m, 'u');
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_INSERT);
    ck_assert_uint_eq(out.u.insert.relid, 16384);
    ck_assert_uint_eq(out.u.insert.newtup.ncols, 3);
    ck_assert(value_is(&out.u.insert.newtup.cols[0], "t1"));
    ck_assert_int_eq(out.u.insert.newtup.cols[1].kind, 'n');
    ck_assert_ptr_null(out.u.insert.newtup.cols[1].data);
    ck_assert_int_eq(out.u.insert.newtup.cols[2].kind, 'u');
    /* Update with the old key (the key changed) */
    m.n = 0;
    b8(&m, 'U');
    b32(&m, 16384);
    b8(&m, 'K');
    b16(&m, 1);
    btext(&m, "old");
    b8(&m, 'N');
    b16(&m, 2);
    btext(&m, "new");
    btext(&m, "");
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.u.update.oldkind, 'K');
    ck_assert(value_is(&out.u.update.oldtup.cols[0], "old"));
    ck_assert(value_is(&out.u.update.newtup.cols[0], "new"));
    ck_assert(value_is(&out.u.update.newtup.cols[1], "")); /* empty text is not NULL */
    /* Update without an old tuple */
    m.n = 0;
    b8(&m, 'U');
    b32(&m, 1);
    b8(&m, 'N');
    b16(&m, 1);
    btext(&m, "v");
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.u.update.oldkind, 0);
    ck_assert(value_is(&out.u.update.newtup.cols[0], "v"));
    /* Delete with the full old row (REPLICA IDENTITY FULL) */
    m.n = 0;
    b8(&m, 'D');
    b32(&m, 9);
    b8(&m, 'O');
    b16(&m, 2);
    btext(&m, "a");
    btext(&m, "b");
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_DELETE);
    ck_assert_int_eq(out.u.del.oldkind, 'O');
    ck_assert(value_is(&out.u.del.oldtup.cols[1], "b"));
    /* a text value longer than the message */
    m.n = 0;
    b8(&m, 'I');
    b32(&m, 1);
    b8(&m, 'N');
    b16(&m, 1);
    b8(&m, 't');
    b32(&m, 1000);
    bstr(&m, "short");
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "Insert"));
    /* an unknown column kind, and a missing 'N' */
    m.n = 0;
    b8(&m, 'I');
    b32(&m, 1);
    b8(&m, 'N');
    b16(&m, 1);
    b8(&m, 'x');
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    m.n = 0;
    b8(&m, 'I');
    b32(&m, 1);
    b8(&m, 'Q');
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
}
END_TEST

START_TEST(test_pgoutput_truncate_and_message)
{
    msg_t m = {0};
    gw_pgo_msg_t out;
    b8(&m, 'T');
    b32(&m, 2);
    b8(&m, 1);
    b32(&m, 100);
    b32(&m, 200);
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_TRUNCATE);
    ck_assert_uint_eq(out.u.truncate.nrels, 2);
    ck_assert_int_eq(out.u.truncate.options, 1);
    ck_assert_uint_eq(out.u.truncate.relids[0], 100);
    ck_assert_uint_eq(out.u.truncate.relids[1], 200);
    /* more relations announced than sent */
    m.n -= 4;
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "Truncate"));
    m.n = 0;
    b8(&m, 'M');
    b8(&m, 0);
    b64(&m, 0xABCDEFull);
    bstr(&m, "ferry");
    b32(&m, 16);
    memcpy(m.b + m.n, "write-checkpoint", 16);
    m.n += 16;
    ck_assert_int_eq(decode(&m, &out), 0);
    ck_assert_int_eq(out.kind, GW_PGO_MESSAGE);
    ck_assert_int_eq(out.u.message.flags, 0);
    ck_assert_uint_eq(out.u.message.lsn, 0xABCDEFull);
    ck_assert_str_eq(out.u.message.prefix, "ferry");
    ck_assert_uint_eq(out.u.message.len, 16);
    ck_assert_int_eq(memcmp(out.u.message.content, "write-checkpoint", 16), 0);
}
END_TEST

START_TEST(test_pgoutput_rejects_trailing_and_unknown)
{
    msg_t m = {0};
    gw_pgo_msg_t out;
    b8(&m, 'B');
    b64(&m, 1);
    b64(&m, 2);
    b32(&m, 3);
    b8(&m, 0xEE); /* one byte too many */
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "Begin"));
    ck_assert_ptr_nonnull(strstr(err.message, "trailing"));
    /* every prefix of a Begin is malformed, never a crash */
    for (size_t n = 1; n < 21; n++) {
        msg_t p = m;
        p.n = n;
        ck_assert_int_eq(decode(&p, &out), GW_EINVAL);
    }
    m.n = 0;
    b8(&m, 'Z');
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "0x5a"));
    m.n = 0;
    ck_assert_int_eq(decode(&m, &out), GW_EINVAL);
}
END_TEST

START_TEST(test_pgoutput_lsn_text)
{
    char buf[32];
    ck_assert_str_eq(gw_lsn_format(0x16B374D848ull, buf, sizeof(buf)), "16/B374D848");
    ck_assert_str_eq(gw_lsn_format(0, buf, sizeof(buf)), "0/0");
    uint64_t v = 1;
    ck_assert_int_eq(gw_lsn_parse("16/B374D848", &v), 0);
    ck_assert_uint_eq(v, 0x16B374D848ull);
    ck_assert_int_eq(gw_lsn_parse("0/0", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(gw_lsn_parse("FFFFFFFF/FFFFFFFF", &v), 0);
    ck_assert_uint_eq(v, UINT64_MAX);
    ck_assert_int_eq(gw_lsn_parse("16/B374D848x", &v), GW_EINVAL);
    ck_assert_int_eq(gw_lsn_parse("16", &v), GW_EINVAL);
    ck_assert_int_eq(gw_lsn_parse("", &v), GW_EINVAL);
    ck_assert_int_eq(gw_lsn_parse(NULL, &v), GW_EINVAL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("pgoutput");
    TCase *tc = tcase_create("decoder");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_pgoutput_frame_xlogdata_and_keepalive);
    tcase_add_test(tc, test_pgoutput_status_update_bytes);
    tcase_add_test(tc, test_pgoutput_begin_commit_origin_type);
    tcase_add_test(tc, test_pgoutput_relation);
    tcase_add_test(tc, test_pgoutput_insert_update_delete_tuples);
    tcase_add_test(tc, test_pgoutput_truncate_and_message);
    tcase_add_test(tc, test_pgoutput_rejects_trailing_and_unknown);
    tcase_add_test(tc, test_pgoutput_lsn_text);
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
