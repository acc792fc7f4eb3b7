/* gw_compress.c -- zstd and gzip content-coding of streams, batch by batch (see gw_compress.h)
 *
 * Callers: api/gw_stream.c compresses each batch of a /sync/stream response here just before
 * h2o_send: a small one on its loop thread with the thread's context, a big one on the loop
 * thread's worker (gw_compress_worker_*, the end of this file). Invariant: after
 * gw_compress_batch() returns, out decodes (together with what went before) to exactly the input so
 * far, line for line.
 */
#include "http/gw_compress.h"
#include "base/gw_err.h"
#include "base/gw_log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

struct gw_compress_ctx {
    ZSTD_CCtx *zstd;
    z_stream gz;
    int gz_ready;
    int zstd_level, gzip_level;
};

/* ---- negotiation ---- */

/* The q-value of one Accept-Encoding element's parameters ("; q=0.5"); 1 without one. */
static double qvalue(const char *p, const char *end)
{
    while (p < end) {
        while (p < end && (*p == ';' || *p == ' ' || *p == '\t'))
            p++;
        if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            char tmp[16];
            size_t n = (size_t)(end - p - 2);
            if (n >= sizeof(tmp)) n = sizeof(tmp) - 1;
            memcpy(tmp, p + 2, n);
            tmp[n] = '\0';
            return strtod(tmp, NULL);
        }
        while (p < end && *p != ';')
            p++;
    }
    return 1.0;
}

gw_encoding_t gw_compress_negotiate(const char *accept, size_t len, int zstd_ok, int gzip_ok)
{
    if (accept == NULL) return GW_ENC_IDENTITY;
    int zstd = 0, gzip = 0;
    const char *p = accept, *end = accept + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t elen = comma != NULL ? (size_t)(comma - p) : (size_t)(end - p);
        while (elen > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            elen--;
        }
        const char *semi = memchr(p, ';', elen);
        size_t n = semi != NULL ? (size_t)(semi - p) : elen;
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        double q = semi != NULL ? qvalue(semi, p + elen) : 1.0;
        if (q > 0) {
            if (n == 4 && strncasecmp(p, "zstd", 4) == 0) zstd = 1;
            if ((n == 4 && strncasecmp(p, "gzip", 4) == 0) ||
                (n == 6 && strncasecmp(p, "x-gzip", 6) == 0))
                gzip = 1;
        }
        p = comma != NULL ? comma + 1 : end;
    }
    if (zstd && zstd_ok) return GW_ENC_ZSTD;
    if (gzip && gzip_ok) return GW_ENC_GZIP;
    return GW_ENC_IDENTITY;
}

const char *gw_compress_token(gw_encoding_t enc)
{
    switch (enc) {
    case GW_ENC_ZSTD:
        return "zstd";
    case GW_ENC_GZIP:
        return "gzip";
    default:
        return NULL;
    }
}

/* ---- contexts ---- */

gw_compress_ctx_t *gw_compress_ctx_new(int zstd_level, int gzip_level)
{
    gw_compress_ctx_t *c = gw_xcalloc(1, sizeof(*c));
    c->zstd_level = zstd_level;
    c->gzip_level = gzip_level;
    return c;
}

void gw_compress_ctx_free(gw_compress_ctx_t *c)
{
    if (c == NULL) return;
    ZSTD_freeCCtx(c->zstd);
    if (c->gz_ready) deflateEnd(&c->gz);
    free(c);
}

/* ---- one batch ---- */

static int zstd_batch(gw_compress_ctx_t *c, const void *in, size_t n, gw_buf_t *out)
{
    if (n == 0) return 0; /* no frame for nothing: the frames so far are complete */
    if (c->zstd == NULL) {
        c->zstd = ZSTD_createCCtx();
        if (c->zstd == NULL) return GW_ENOMEM;
        ZSTD_CCtx_setParameter(c->zstd, ZSTD_c_compressionLevel, c->zstd_level);
        ZSTD_CCtx_setParameter(c->zstd, ZSTD_c_checksumFlag, 0);
        /* At level 1 and below (the fast strategy), a 1 KiB-entry hash table instead of the
         * level's 16K: every batch is its own frame, so the table is cleared for each one, and
         * the small one stays in L1. On batches of sync lines this compressed 1.5x faster and
         * smaller too (6.09x against 5.76x on 64 KiB batches, 6.08x against 5.68x on 1 MiB):
         * the lines repeat their keys at short distance. */
        if (c->zstd_level <= 1) ZSTD_CCtx_setParameter(c->zstd, ZSTD_c_hashLog, 10);
    }
    size_t bound = ZSTD_compressBound(n);
    char *dst = gw_buf_space(out, bound);
    size_t r = ZSTD_compress2(c->zstd, dst, bound, in, n);
    if (ZSTD_isError(r)) {
        ZSTD_CCtx_reset(c->zstd, ZSTD_reset_session_only);
        return GW_EIO;
    }
    gw_buf_added(out, r);
    return 0;
}

static const unsigned char gzip_header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};

static int gzip_batch(gw_compress_ctx_t *c, gw_compress_stream_t *st, const void *in, size_t n,
                      int last, gw_buf_t *out)
{
    size_t start = out->len;
    if (!st->started) {
        gw_buf_append(out, gzip_header, sizeof(gzip_header));
        st->started = 1;
    }
    if (n > 0) {
        if (!c->gz_ready) {
            memset(&c->gz, 0, sizeof(c->gz));
            /* raw deflate (negative window bits): the gzip framing is written here */
            if (deflateInit2(&c->gz, c->gzip_level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
                goto fail;
            c->gz_ready = 1;
        } else if (deflateReset(&c->gz) != Z_OK) {
            goto fail;
        }
        c->gz.next_in = (Bytef *)in;
        c->gz.avail_in = (uInt)n;
        do {
            size_t room = deflateBound(&c->gz, (uLong)n) + 16;
            c->gz.next_out = (Bytef *)gw_buf_space(out, room);
            c->gz.avail_out = (uInt)room;
            int rc = deflate(&c->gz, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR) goto fail;
            gw_buf_added(out, room - c->gz.avail_out);
        } while (c->gz.avail_out == 0 || c->gz.avail_in > 0);
        st->crc = (uint32_t)crc32(st->crc, in, (uInt)n);
        st->isize += (uint32_t)n;
    }
    if (last) {
        unsigned char t[10] = {0x03, 0x00}; /* an empty final block (fixed Huffman) */
        for (int i = 0; i < 4; i++) {
            t[2 + i] = (unsigned char)(st->crc >> (8 * i));
            t[6 + i] = (unsigned char)(st->isize >> (8 * i));
        }
        gw_buf_append(out, t, sizeof(t));
    }
    return 0;
fail:
    out->len = start;
    if (out->data != NULL) out->data[start] = '\0';
    return GW_EIO;
}

int gw_compress_batch(gw_compress_ctx_t *c, gw_compress_stream_t *st, const void *in, size_t n,
                      int last, gw_buf_t *out)
{
    size_t before = out->len;
    int rc = 0;
    switch (st->enc) {
    case GW_ENC_ZSTD:
        rc = zstd_batch(c, in, n, out);
        break;
    case GW_ENC_GZIP:
        rc = gzip_batch(c, st, in, n, last, out);
        break;
    default:
        gw_buf_append(out, in, n);
        break;
    }
    if (rc == 0) {
        st->in += n;
        st->out += out->len - before;
    }
    return rc;
}

/* ---- workers ---- */

struct gw_compress_worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    gw_compress_job_t *head, *tail; /* queued jobs, guarded by lock */
    int stopping;                   /* guarded by lock */
    gw_compress_ctx_t *ctx;         /* the worker thread's own */
    const char *hold;               /* FERRY_TEST_COMPRESS_HOLD, or NULL */
};

/* Fault injection for tests: while the file FERRY_TEST_COMPRESS_HOLD names exists, a job waits
 * before it is compressed (until the worker is stopped), so a test acts at a point it chooses
 * while a batch is on the worker: a client hanging up, ferry shutting down. */
static void test_hold(gw_compress_worker_t *w)
{
    if (w->hold == NULL || access(w->hold, F_OK) != 0) return;
    gw_info("http", "test hold: compression paused", "file=%s", w->hold);
    for (;;) {
        pthread_mutex_lock(&w->lock);
        int stopping = w->stopping;
        pthread_mutex_unlock(&w->lock);
        if (stopping || access(w->hold, F_OK) != 0) return;
        usleep(50000);
    }
}

static void *worker_main(void *arg)
{
    gw_compress_worker_t *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->wake, &w->lock);
        gw_compress_job_t *job = w->head;
        if (job == NULL) break; /* stopping, and nothing left */
        w->head = job->next;
        if (w->head == NULL) w->tail = NULL;
        pthread_mutex_unlock(&w->lock);
        test_hold(w);
        job->rc = gw_compress_batch(w->ctx, job->st, job->in, job->n, job->last, job->out);
        h2o_multithread_send_message(job->done_rx, &job->super);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

gw_compress_worker_t *gw_compress_worker_start(int zstd_level, int gzip_level, gw_err_t *err)
{
    gw_compress_worker_t *w = gw_xcalloc(1, sizeof(*w));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    w->ctx = gw_compress_ctx_new(zstd_level, gzip_level);
    w->hold = getenv("FERRY_TEST_COMPRESS_HOLD");
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        gw_err_set(err, GW_EIO, "http.compression", "could not start a compression thread: %s",
                   strerror(rc));
        gw_compress_ctx_free(w->ctx);
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
    }
    return w;
}

void gw_compress_worker_post(gw_compress_worker_t *w, gw_compress_job_t *job)
{
    job->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->tail != NULL)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void gw_compress_worker_stop(gw_compress_worker_t *w)
{
    if (w == NULL) return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    gw_compress_ctx_free(w->ctx);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
