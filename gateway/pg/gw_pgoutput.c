/* gw_pgoutput.c -- decode CopyData frames and pgoutput v1 messages (see gw_pgoutput.h)
 *
 * A cursor (rd_t) walks the input with bounds checks on every read; the first failed read sets
 * an error naming the message type and offset, and every later read returns zeroes, so decoders
 * are straight-line code that checks rd.bad once at the end.
 */
#include "pg/gw_pgoutput.h"

#include <endian.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

typedef struct rd {
    const char *p;
    size_t len, off;
    int bad;
    const char *what;
} rd_t;

static int need(rd_t *r, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = 1;
        return 0;
    }
    return 1;
}

static uint8_t u8(rd_t *r)
{
    if (!need(r, 1)) return 0;
    return (uint8_t)r->p[r->off++];
}

static uint16_t u16(rd_t *r)
{
    uint16_t v = 0;
    if (need(r, 2)) {
        memcpy(&v, r->p + r->off, 2);
        r->off += 2;
    }
    return be16toh(v);
}

static uint32_t u32(rd_t *r)
{
    uint32_t v = 0;
    if (need(r, 4)) {
        memcpy(&v, r->p + r->off, 4);
        r->off += 4;
    }
    return be32toh(v);
}

static uint64_t u64(rd_t *r)
{
    uint64_t v = 0;
    if (need(r, 8)) {
        memcpy(&v, r->p + r->off, 8);
        r->off += 8;
    }
    return be64toh(v);
}

/* A NUL-terminated string inside the buffer; "" when bad. */
static const char *cstr(rd_t *r)
{
    if (r->bad) return "";
    const char *s = r->p + r->off;
    const char *nul = memchr(s, '\0', r->len - r->off);
    if (nul == NULL) {
        r->bad = 1;
        return "";
    }
    r->off += (size_t)(nul - s) + 1;
    return s;
}

static const char *bytes(rd_t *r, uint32_t n)
{
    if (!need(r, n)) return NULL;
    const char *s = r->p + r->off;
    r->off += n;
    return s;
}

static void tuple(rd_t *r, gw_arena_t *a, gw_pgo_tuple_t *t)
{
    t->ncols = u16(r);
    t->cols = NULL;
    if (r->bad) return;
    /* every column takes at least one byte: refuse counts the input cannot hold */
    if (t->ncols > r->len - r->off) {
        r->bad = 1;
        return;
    }
    t->cols = gw_arena_alloc(a, sizeof(gw_pgo_value_t) * (t->ncols ? t->ncols : 1));
    for (uint16_t i = 0; i < t->ncols && !r->bad; i++) {
        gw_pgo_value_t *v = &t->cols[i];
        v->kind = (char)u8(r);
        v->data = NULL;
        v->len = 0;
        switch (v->kind) {
        case 'n':
        case 'u':
            break;
        case 't':
        case 'b':
            v->len = u32(r);
            v->data = bytes(r, v->len);
            break;
        default:
            r->bad = 1;
        }
    }
}

static int fail(rd_t *r, gw_err_t *err)
{
    return gw_err_set(err, GW_EINVAL, "pgoutput", "malformed %s message (at byte %zu of %zu)",
                      r->what, r->off, r->len);
}

int gw_pgo_frame(const char *buf, size_t len, gw_pgo_frame_t *out, gw_err_t *err)
{
    rd_t r = {.p = buf, .len = len, .what = "replication"};
    memset(out, 0, sizeof(*out));
    char kind = (char)u8(&r);
    if (kind == 'w') {
        r.what = "XLogData";
        out->kind = GW_PGO_XLOGDATA;
        out->wal_start = u64(&r);
        out->wal_end = u64(&r);
        out->send_time = (int64_t)u64(&r);
        if (r.bad) return fail(&r, err);
        out->payload = buf + r.off;
        out->payload_len = len - r.off;
        return 0;
    }
    if (kind == 'k') {
        r.what = "keepalive";
        out->kind = GW_PGO_KEEPALIVE;
        out->wal_end = u64(&r);
        out->send_time = (int64_t)u64(&r);
        out->reply_requested = u8(&r) != 0;
        if (r.bad || r.off != len) return fail(&r, err);
        return 0;
    }
    if (r.bad) return gw_err_set(err, GW_EINVAL, "pgoutput", "empty replication message");
    return gw_err_set(err, GW_EINVAL, "pgoutput", "unexpected replication message type 0x%02x",
                      (unsigned char)kind);
}

static void put64(char *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
}

size_t gw_pgo_status_update(char out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                            int64_t now_pg_us, int reply_now)
{
    out[0] = 'r';
    put64(out + 1, written);
    put64(out + 9, flushed);
    put64(out + 17, applied);
    put64(out + 25, (uint64_t)now_pg_us);
    out[33] = reply_now ? 1 : 0;
    return 34;
}

int64_t gw_pgo_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return ((int64_t)tv.tv_sec - 946684800LL) * 1000000LL + tv.tv_usec;
}

int gw_pgo_decode(const char *buf, size_t len, gw_arena_t *arena, gw_pgo_msg_t *out, gw_err_t *err)
{
    rd_t r = {.p = buf, .len = len, .what = "pgoutput"};
    memset(out, 0, sizeof(*out));
    char kind = (char)u8(&r);
    if (r.bad) return gw_err_set(err, GW_EINVAL, "pgoutput", "empty pgoutput message");
    out->kind = (gw_pgo_kind_t)kind;
    switch (kind) {
    case 'B':
        r.what = "Begin";
        out->u.begin.final_lsn = u64(&r);
        out->u.begin.commit_time = (int64_t)u64(&r);
        out->u.begin.xid = u32(&r);
        break;
    case 'C':
        r.what = "Commit";
        out->u.commit.flags = u8(&r);
        out->u.commit.commit_lsn = u64(&r);
        out->u.commit.end_lsn = u64(&r);
        out->u.commit.commit_time = (int64_t)u64(&r);
        break;
    case 'O':
        r.what = "Origin";
        out->u.origin.lsn = u64(&r);
        out->u.origin.name = cstr(&r);
        break;
    case 'R': {
        r.what = "Relation";
        out->u.relation.relid = u32(&r);
        out->u.relation.nspname = cstr(&r);
        out->u.relation.relname = cstr(&r);
        out->u.relation.replident = (char)u8(&r);
        uint16_t n = u16(&r);
        if (r.bad || n > len - r.off) {
            r.bad = 1;
            break;
        }
        out->u.relation.ncols = n;
        out->u.relation.cols = gw_arena_alloc(arena, sizeof(gw_pgo_column_t) * (n ? n : 1));
        for (uint16_t i = 0; i < n && !r.bad; i++) {
            gw_pgo_column_t *c = &out->u.relation.cols[i];
            c->flags = u8(&r);
            c->name = cstr(&r);
            c->type_oid = u32(&r);
            c->typmod = (int32_t)u32(&r);
        }
        break;
    }
    case 'Y':
        r.what = "Type";
        out->u.type.oid = u32(&r);
        out->u.type.nspname = cstr(&r);
        out->u.type.typname = cstr(&r);
        break;
    case 'I':
        r.what = "Insert";
        out->u.insert.relid = u32(&r);
        if (u8(&r) != 'N') r.bad = 1;
        tuple(&r, arena, &out->u.insert.newtup);
        break;
    case 'U': {
        r.what = "Update";
        out->u.update.relid = u32(&r);
        char k = (char)u8(&r);
        if (k == 'K' || k == 'O') {
            out->u.update.oldkind = k;
            tuple(&r, arena, &out->u.update.oldtup);
            k = (char)u8(&r);
        }
        if (k != 'N') r.bad = 1;
        tuple(&r, arena, &out->u.update.newtup);
        break;
    }
    case 'D': {
        r.what = "Delete";
        out->u.del.relid = u32(&r);
        char k = (char)u8(&r);
        if (k != 'K' && k != 'O') r.bad = 1;
        out->u.del.oldkind = k;
        tuple(&r, arena, &out->u.del.oldtup);
        break;
    }
    case 'T': {
        r.what = "Truncate";
        uint32_t n = u32(&r);
        out->u.truncate.options = u8(&r);
        if (r.bad || n > (len - r.off) / 4) {
            r.bad = 1;
            break;
        }
        out->u.truncate.nrels = n;
        out->u.truncate.relids = gw_arena_alloc(arena, sizeof(uint32_t) * (n ? n : 1));
        for (uint32_t i = 0; i < n; i++)
            out->u.truncate.relids[i] = u32(&r);
        break;
    }
    case 'M':
        r.what = "Message";
        out->u.message.flags = u8(&r);
        out->u.message.lsn = u64(&r);
        out->u.message.prefix = cstr(&r);
        out->u.message.len = u32(&r);
        out->u.message.content = bytes(&r, out->u.message.len);
        break;
    default:
        return gw_err_set(err, GW_EINVAL, "pgoutput", "unexpected pgoutput message type 0x%02x",
                          (unsigned char)kind);
    }
    if (r.bad) return fail(&r, err);
    if (r.off != len) {
        return gw_err_set(err, GW_EINVAL, "pgoutput",
                          "malformed %s message (%zu unexpected trailing bytes)", r.what,
                          len - r.off);
    }
    return 0;
}
