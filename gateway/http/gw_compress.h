/* gw_compress.h -- Content-Encoding for long streams: zstd or gzip, flushed at every batch
 *
 * A stream's response is compressed batch by batch (one batch = the lines one h2o_send carries)
 * and every batch is complete on the wire when it is sent: nothing waits in a compressor for the
 * next batch, so a checkpoint reaches the client as fast as without compression.
 *
 * Memory: a stream keeps no compressor of its own. Each batch is compressed independently with
 * a compressor of the loop thread (gw_compress_ctx_t, one per thread, reused), so an idle
 * compressed stream costs a few bytes (gw_compress_stream_t) and the window of one batch is
 * never kept between batches:
 *   - zstd: every batch is one complete zstd frame; a zstd content-coding is "one or more
 *     frames" (RFC 8878, 3.1), which browsers, curl and zstd itself decode in sequence.
 *   - gzip: one gzip member for the whole response (some decoders read only the first member):
 *     its header goes out with the first batch; every batch is raw deflate from a freshly reset
 *     compressor ending in a sync flush (byte-aligned, no final block, no reference to earlier
 *     batches, so the concatenation is one valid deflate stream); the end adds an empty final
 *     block and the CRC-32 and length trailer, which the stream state keeps up to date.
 *
 * Thread model: a context is used by one thread at a time; stream state belongs to its stream.
 *
 * Workers: compressing a big batch costs about as much CPU as encoding it, so a loop thread that
 * did both in turn synced a compressed stream at half the speed of an identity one. A loop thread
 * hands its big batches to its own worker thread (gw_compress_worker_t, with its own context)
 * and encodes the stream's next batch meanwhile; the worker tells the loop thread through an h2o
 * receiver when a job is done. A stream has at most one job in flight, so its state is touched
 * by one thread at a time: the worker from post to the done message, the loop thread otherwise.
 */
#ifndef GW_COMPRESS_H
#define GW_COMPRESS_H

#include "base/gw_buf.h"
#include "base/gw_err.h"

#include <h2o.h>

#include <stddef.h>
#include <stdint.h>

typedef enum gw_encoding {
    GW_ENC_IDENTITY = 0,
    GW_ENC_ZSTD,
    GW_ENC_GZIP,
} gw_encoding_t;

/** Per-stream state of a compressed response (no allocation; zero-initialise). */
typedef struct gw_compress_stream {
    gw_encoding_t enc;
    int started;      /* gzip: the header was written */
    uint32_t crc;     /* gzip: CRC-32 of the uncompressed bytes so far */
    uint32_t isize;   /* gzip: their length mod 2^32 */
    uint64_t in, out; /* bytes before and after compression */
} gw_compress_stream_t;

/** The compressors of one thread, created on first use. */
typedef struct gw_compress_ctx gw_compress_ctx_t;

/**
 * The encoding to answer an Accept-Encoding header value (len bytes, NULL: no header) with:
 * zstd when it is accepted (q > 0), then gzip (or x-gzip), else identity. zstd_ok/gzip_ok turn
 * either off (no compression at all: both 0).
 */
gw_encoding_t gw_compress_negotiate(const char *accept, size_t len, int zstd_ok, int gzip_ok);

/** The Content-Encoding token of enc ("zstd", "gzip"), or NULL for identity. */
const char *gw_compress_token(gw_encoding_t enc);

/**
 * A new per-thread context compressing at the given levels (zstd 1..19, gzip 1..9). The caller
 * owns it and frees it with gw_compress_ctx_free(). Aborts on OOM, like the rest of the gateway.
 */
gw_compress_ctx_t *gw_compress_ctx_new(int zstd_level, int gzip_level);

/** Free a context made by gw_compress_ctx_new() (NULL is fine). */
void gw_compress_ctx_free(gw_compress_ctx_t *c);

/**
 * Compress n bytes of in (one batch) for stream st and append the result to out (owned by the
 * caller); with last set, also end the response (gzip trailer). n may be 0. Returns 0, or
 * GW_EIO (GW_ENOMEM) when the compression library failed (out then holds nothing new).
 */
int gw_compress_batch(gw_compress_ctx_t *c, gw_compress_stream_t *st, const void *in, size_t n,
                      int last, gw_buf_t *out);

/** One batch to compress on a worker; the caller owns it, its stream state and its buffers. */
typedef struct gw_compress_job {
    h2o_multithread_message_t super;     /* sent to done_rx once rc and out are final */
    h2o_multithread_receiver_t *done_rx; /* a receiver of the posting loop thread */
    gw_compress_stream_t *st;
    const void *in;
    size_t n;
    int last;
    gw_buf_t *out; /* the result is appended, as by gw_compress_batch() */
    int rc;        /* gw_compress_batch()'s result */
    struct gw_compress_job *next;
} gw_compress_job_t;

typedef struct gw_compress_worker gw_compress_worker_t;

/**
 * Start a worker thread compressing at the given levels. The caller owns the worker and ends it
 * with gw_compress_worker_stop(). Returns NULL (err set) when the thread cannot start.
 */
gw_compress_worker_t *gw_compress_worker_start(int zstd_level, int gzip_level, gw_err_t *err);

/**
 * Queue job (its fields set, done_rx registered and kept registered until the message arrives).
 * Jobs run in the order posted. Every posted job gets its done message, also across a stop.
 */
void gw_compress_worker_post(gw_compress_worker_t *w, gw_compress_job_t *job);

/**
 * Finish every queued job (each sends its done message), end the thread and free the worker.
 * NULL is fine. The done messages are then in their receivers, for the caller to drain.
 */
void gw_compress_worker_stop(gw_compress_worker_t *w);

#endif
