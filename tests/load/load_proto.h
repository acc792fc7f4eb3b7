/* load_proto.h -- the raw client's reader: HTTP/1.1 response, chunked encoding, NDJSON lines
 *
 * One load_proto_t per stream, fed with the bytes read from its socket (no I/O here). It parses
 * the status line and headers, undoes chunked encoding, splits NDJSON lines and follows the
 * PowerSync line types (powersync-protocol §2): it tracks the checkpoint's buckets and their
 * checksums, adds up each bucket's op checksums like a client does (CLEAR resets), and checks
 * them at every (partial_)checkpoint_complete. Lines are parsed with a few memmem() scans,
 * never into a JSON tree, so a stream costs its struct, a bucket table and a line carry buffer
 * that is only allocated while a line spans reads (freed again when it is large).
 *
 * Ownership: the caller owns the load_proto_t and the load_stats_t; load_proto_free() releases
 * what the reader allocated inside it.
 */
#ifndef LOAD_PROTO_H
#define LOAD_PROTO_H

#include <stddef.h>
#include <stdint.h>

/* Counters one process adds up over all its streams (plain fields: one writer). */
typedef struct load_stats {
    uint64_t bytes, lines, ops, data_lines, checkpoints, diffs, keepalives, completes;
    uint64_t checksum_ok, checksum_fail, protocol_errors, stamped_ops;
    uint64_t decoded_bytes; /* body bytes after Content-Encoding (zstd, gzip) is undone */
} load_stats_t;

typedef struct load_bucket {
    uint64_t hash; /* FNV-1a of the bucket name as it appears on the wire */
    uint32_t want, have;
    int32_t priority;
} load_bucket_t;

enum { LOAD_P_HEADERS, LOAD_P_BODY, LOAD_P_END, LOAD_P_ERROR };

typedef struct load_proto {
    int phase, status, chunked;
    int ch_state;
    uint64_t ch_left;
    int64_t body_left; /* Content-Length left, -1 when unknown */
    char *carry;
    size_t carry_len, carry_cap;
    load_bucket_t *bk;
    uint32_t nbk, capbk;
    uint64_t last_op_id;
    uint32_t completes;        /* checkpoint_complete lines seen */
    uint64_t write_checkpoint; /* the latest write_checkpoint a checkpoint(_diff) line carried */
    const char *err;           /* static text when phase == LOAD_P_ERROR */
    int enc;                   /* Content-Encoding: 0 none, 1 zstd, 2 gzip */
    void *dec;                 /* the decoder of enc (ZSTD_DStream or z_stream), owned */
} load_proto_t;

/* What the reader tells its caller while it feeds lines. */
typedef struct load_proto_cb {
    void *ctx;
    /** A checkpoint_complete was read (ok: every bucket's checksum matched); nonzero stops feeding.
     */
    int (*on_complete)(void *ctx, load_proto_t *p, int ok);
    /** An op's row carried the stamp column (its value, µs since the epoch); NULL: not looked for.
     */
    void (*on_stamp)(void *ctx, uint64_t stamp_us);
} load_proto_cb_t;

/** Name of the row column holding a commit stamp (default "ts"); set once before feeding. */
void load_proto_set_stamp_column(const char *name);

/** Reset p for a new response (keeps nothing from before). */
void load_proto_init(load_proto_t *p);

/** Free what the reader allocated in p; p may be initialised again afterwards. */
void load_proto_free(load_proto_t *p);

/**
 * Feed n bytes read from the socket. Returns 0 to go on, 1 when on_complete asked to stop, 2 when
 * the response ended (final chunk or Content-Length reached), -1 on an error (p->err says which:
 * a non-200 status, a malformed response, a line over 64 MiB).
 */
int load_proto_feed(load_proto_t *p, const char *data, size_t n, load_stats_t *st,
                    const load_proto_cb_t *cb);

/** Handle one complete NDJSON line (no newline); exposed for tests of the line parser. */
int load_proto_line(load_proto_t *p, const char *line, size_t len, load_stats_t *st,
                    const load_proto_cb_t *cb);

#endif
