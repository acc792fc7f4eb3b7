/* gw_compact.h -- compaction of a writer's buckets, the same for every backend (storage/ only)
 *
 * powersync-protocol §3.4: a PUT/REMOVE followed later by a PUT/REMOVE of the same (object_type,
 * object_id, subkey) becomes {"op_id":"N","op":"MOVE","checksum":C}; the longest prefix of
 * REMOVE/MOVE/CLEAR ops becomes one {"op_id":"N","op":"CLEAR","checksum":SUM} at the prefix's last
 * op id. Checksums are unchanged, counts shrink. The algorithm works on chunks of op records
 * (gw_oprec.h); the backend reads and writes them through a gw_compact_io_t.
 */
#ifndef GW_COMPACT_H
#define GW_COMPACT_H

#include "storage/gw_writer.h"

/** The backend's chunk I/O for one compaction (inside its transaction). */
typedef struct gw_compact_io {
    /* The ids of bucket_id's chunks whose ops are all <= upto, in op order: 0 and a malloc'd
     * array in *ids (caller frees) of *n, or a negative code. */
    int (*chunk_ids)(void *ud, int64_t bucket_id, uint64_t upto, int64_t **ids, size_t *n,
                     gw_err_t *err);
    /* A chunk's records into out (reset first). */
    int (*chunk_load)(void *ud, int64_t chunk, gw_buf_t *out, gw_err_t *err);
    /* Replace a chunk's records (first op, count and checksum sum of the new records given). */
    int (*chunk_store)(void *ud, int64_t chunk, const gw_buf_t *ops, uint64_t first, uint64_t n,
                       uint32_t checksum, gw_err_t *err);
    /* Delete a chunk. */
    int (*chunk_delete)(void *ud, int64_t chunk, gw_err_t *err);
    /* Insert a chunk (as gw_writer_io_t.chunk_insert). */
    int (*chunk_insert)(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                        uint32_t checksum, const gw_buf_t *ops, gw_err_t *err);
    /* Write a bucket's totals now (its count shrank). */
    int (*bucket_flush)(void *ud, gw_wbucket_t *b, gw_err_t *err);
} gw_compact_io_t;

/**
 * Compact every bucket of w's own version up to its committed checkpoint (w->last_op), inside a
 * transaction whose queued ops were flushed. Fills *out (target = that checkpoint). 0 or the
 * io's error (the transaction must then be rolled back).
 */
int gw_compact_writer(gw_writer_t *w, const gw_compact_io_t *io, void *ud,
                      gw_storage_compact_stats_t *out, gw_err_t *err);

#endif
