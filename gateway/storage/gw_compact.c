/* gw_compact.c -- compaction of a writer's buckets, the same for every backend (gw_compact.h)
 *
 * Per bucket of the writer's own version with ops since its last compaction, over its chunks up
 * to the committed checkpoint: first MOVEs (newest chunk first, so an identity already seen has a
 * later op), then the leading CLEAR. A chunk is rewritten only when it changed. Another
 * version's buckets are left to that version's writer.
 */
#include "storage/gw_compact.h"
#include "base/gw_map.h"

#include <stdlib.h>
#include <string.h>

/* Replace chunk id's records with ops, with their first op id, count and checksum sum. */
static int store(const gw_compact_io_t *io, void *ud, int64_t id, const gw_buf_t *ops,
                 gw_err_t *err)
{
    uint64_t first = 0, n = 0;
    uint32_t sum = 0;
    gw_oprec_t r;
    for (size_t off = 0; gw_oprec_read((const unsigned char *)ops->data + off, ops->len - off, &r);
         off += r.size) {
        if (n++ == 0) first = r.op_id;
        sum += r.checksum;
    }
    return io->chunk_store(ud, id, ops, first, n, sum, err);
}

/* MOVE: every PUT/REMOVE <= upto with a later PUT/REMOVE of the same row in the bucket. Chunks
 * are visited newest first; a chunk is rewritten only when one of its ops became a MOVE. */
static int compact_moves(const gw_compact_io_t *io, void *ud, const int64_t *ids, size_t nids,
                         uint64_t *moved, gw_err_t *err)
{
    gw_map_t seen;
    gw_map_init(&seen);
    gw_buf_t in = GW_BUF_INIT, out = GW_BUF_INIT, key = GW_BUF_INIT;
    size_t *offs = NULL, cap = 0;
    int rc = 0;
    for (size_t c = nids; c-- > 0 && rc == 0;) {
        rc = io->chunk_load(ud, ids[c], &in, err);
        size_t n = 0;
        gw_oprec_t r;
        for (size_t off = 0;
             rc == 0 && gw_oprec_read((const unsigned char *)in.data + off, in.len - off, &r);
             off += r.size) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                offs = gw_xrealloc(offs, cap * sizeof(*offs));
            }
            offs[n++] = off;
        }
        /* newest op first: an identity already seen has a later op, so this one moves */
        unsigned char *is_move = gw_xcalloc(n ? n : 1, 1);
        size_t nmove = 0;
        for (size_t i = n; i-- > 0;) {
            gw_oprec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
            if (r.op != GW_OP_PUT && r.op != GW_OP_REMOVE) continue;
            /* the identity's three strings joined by 0x1f (they are escaped: no control bytes;
             * the body's length prefixes hold NULs, and map keys are C strings) */
            gw_buf_reset(&key);
            const unsigned char *ip = (const unsigned char *)r.ident, *ie = ip + r.ident_len;
            const char *str;
            size_t n;
            for (int f = 0; f < 3 && gw_oprec_body_field(&ip, ie, &str, &n); f++) {
                if (f > 0) gw_buf_append(&key, "\x1f", 1);
                gw_buf_append(&key, str, n);
            }
            if (key.data == NULL) gw_buf_puts(&key, "");
            if (gw_map_get(&seen, key.data) == NULL) {
                gw_map_put(&seen, key.data, (void *)1);
            } else {
                is_move[i] = 1;
                nmove++;
            }
        }
        if (nmove > 0) {
            gw_buf_reset(&out);
            for (size_t i = 0; i < n; i++) {
                gw_oprec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
                if (is_move[i]) {
                    gw_oprec_append(&out, r.op_id, r.checksum, GW_OP_MOVE, 0, 0, "", 0);
                } else {
                    gw_buf_append(&out, in.data + offs[i], r.size);
                }
            }
            rc = store(io, ud, ids[c], &out, err);
            *moved += nmove;
        }
        free(is_move);
    }
    gw_map_free(&seen);
    gw_buf_free(&in);
    gw_buf_free(&out);
    gw_buf_free(&key);
    free(offs);
    return rc;
}

/* CLEAR: the longest prefix of REMOVE/MOVE/CLEAR ops (all <= upto) becomes one CLEAR op at the
 * prefix's last op id, at the start of the chunk that holds the rest (or alone). */
static int compact_clear(gw_writer_t *w, const gw_compact_io_t *io, void *ud, gw_wbucket_t *b,
                         const int64_t *ids, size_t nids, uint64_t *cleared, gw_err_t *err)
{
    gw_buf_t in = GW_BUF_INIT, out = GW_BUF_INIT;
    uint64_t n = 0, last = 0;
    uint32_t sum = 0;
    int only_clear = 1, rc = 0, stopped = 0;
    size_t c = 0, stop_off = 0; /* the chunk and offset of the first op kept */
    for (; c < nids && rc == 0 && !stopped; c++) {
        rc = io->chunk_load(ud, ids[c], &in, err);
        gw_oprec_t r;
        for (size_t off = 0;
             rc == 0 && gw_oprec_read((const unsigned char *)in.data + off, in.len - off, &r);
             off += r.size) {
            if (r.op == GW_OP_PUT) {
                stopped = 1;
                stop_off = off;
                break;
            }
            last = r.op_id;
            sum += r.checksum;
            only_clear &= r.op == GW_OP_CLEAR;
            n++;
        }
    }
    /* c is one past the last chunk read; `in` holds it */
    if (rc == 0 && n > 0 && !(n == 1 && only_clear)) {
        size_t ndel = stopped ? c - 1 : c; /* chunks wholly inside the prefix */
        for (size_t i = 0; i < ndel && rc == 0; i++)
            rc = io->chunk_delete(ud, ids[i], err);
        gw_oprec_append(&out, last, sum, GW_OP_CLEAR, 0, 0, "", 0);
        if (rc == 0 && stopped) {
            /* the CLEAR replaces the prefix part of the chunk that holds the first PUT */
            gw_buf_append(&out, in.data + stop_off, in.len - stop_off);
            rc = store(io, ud, ids[c - 1], &out, err);
        } else if (rc == 0) {
            rc = io->chunk_insert(ud, b->id, last, last, 1, sum, &out, err);
        }
        if (rc == 0) {
            b->count -= n - 1;
            atomic_fetch_sub(&w->n_ops, n - 1);
            *cleared += n;
        }
    }
    gw_buf_free(&in);
    gw_buf_free(&out);
    return rc;
}

int gw_compact_writer(gw_writer_t *w, const gw_compact_io_t *io, void *ud,
                      gw_storage_compact_stats_t *out, gw_err_t *err)
{
    gw_storage_compact_stats_t cs = {0};
    uint64_t upto = w->last_op;
    cs.target = upto;
    int rc = 0;
    for (size_t id = 0; id < w->by_id_cap && rc == 0; id++) {
        gw_wbucket_t *b = w->by_id[id];
        if (b == NULL || !gw_writer_own_name(w, b->name)) /* another version's writer owns it */
            continue;
        cs.ops_before += b->count;
        if (b->last_op <= b->compacted || b->count < 2) {
            cs.ops_after += b->count;
            continue;
        }
        cs.buckets++;
        uint64_t before = b->count;
        size_t nids = 0;
        int64_t *ids = NULL;
        rc = io->chunk_ids(ud, b->id, upto, &ids, &nids, err);
        if (rc == 0) rc = compact_moves(io, ud, ids, nids, &cs.moved, err);
        if (rc == 0) rc = compact_clear(w, io, ud, b, ids, nids, &cs.cleared, err);
        free(ids);
        if (rc == 0) {
            b->compacted = upto;
            if (b->count != before) {
                b->dirty = 1;
                rc = io->bucket_flush(ud, b, err);
            }
        }
        cs.ops_after += b->count;
    }
    if (out != NULL) *out = cs;
    return rc;
}
