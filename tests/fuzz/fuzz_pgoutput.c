/* fuzz_pgoutput.c -- libFuzzer target: arbitrary bytes as replication CopyData and pgoutput
 *
 * Each input is tried both as a CopyData frame (and its XLogData payload as pgoutput) and as a
 * bare pgoutput message. Decoding must succeed or fail with GW_EINVAL, never crash or read past
 * the input; every decoded value must lie inside the input buffer.
 */
#include "pg/gw_pgoutput.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_inside(const char *base, size_t len, const char *p, size_t n)
{
    if (p != NULL && (p < base || p + n > base + len)) __builtin_trap();
}

static void check_tuple(const char *base, size_t len, const gw_pgo_tuple_t *t)
{
    for (uint16_t i = 0; i < t->ncols; i++)
        check_inside(base, len, t->cols[i].data, t->cols[i].len);
}

static void decode(const char *buf, size_t len, gw_arena_t *a)
{
    gw_pgo_msg_t m;
    gw_err_t err;
    int rc = gw_pgo_decode(buf, len, a, &m, &err);
    if (rc != 0) {
        if (rc != GW_EINVAL) __builtin_trap();
        return;
    }
    switch (m.kind) {
    case GW_PGO_INSERT:
        check_tuple(buf, len, &m.u.insert.newtup);
        break;
    case GW_PGO_UPDATE:
        check_tuple(buf, len, &m.u.update.oldtup);
        check_tuple(buf, len, &m.u.update.newtup);
        break;
    case GW_PGO_DELETE:
        check_tuple(buf, len, &m.u.del.oldtup);
        break;
    case GW_PGO_MESSAGE:
        check_inside(buf, len, m.u.message.content, m.u.message.len);
        break;
    case GW_PGO_RELATION:
        for (uint16_t i = 0; i < m.u.relation.ncols; i++)
            if (strlen(m.u.relation.cols[i].name) > len) __builtin_trap();
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* copy so reads past the end are caught by ASan */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    gw_arena_t a;
    gw_arena_init(&a, 4096);
    gw_pgo_frame_t f;
    gw_err_t err;
    if (gw_pgo_frame(buf, size, &f, &err) == 0 && f.kind == GW_PGO_XLOGDATA)
        decode(f.payload, f.payload_len, &a);
    gw_arena_reset(&a);
    decode(buf, size, &a);
    gw_arena_free(&a);
    free(buf);
    return 0;
}
