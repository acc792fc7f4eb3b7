/* gw_stream.c -- POST /sync/stream: checkpoints and ops to one client, live
 *
 * A stream belongs to the loop thread that accepted it. It answers 200 application/x-ndjson and
 * then runs rounds, one per checkpoint it moves to (powersync-protocol §2.2):
 *
 *   start_round()     bucket list for the user as of checkpoint C (rules + stored lookups), each
 *                     bucket's checksum/count as of C; a full `checkpoint` line the first time
 *                     (and when a rule version switch changed its `streams`), later a
 *                     `checkpoint_diff` (updated + removed buckets, write_checkpoint) or
 *                     nothing when nothing the user has changed
 *   step() per chunk  `data` lines for each bucket with ops in (position, C], highest priority
 *                     first, at most 1000 ops / ~1 MiB per line; `partial_checkpoint_complete`
 *                     after each priority level but the last; `checkpoint_complete` at the end
 *
 *      IDLE --notification touching the stream--> ROUND --all buckets sent--> IDLE
 *
 * Backpressure: at most one h2o_send in flight; the next storage read happens in proceed(), so a
 * slow client holds at most one chunk. Each storage read is its own short read transaction.
 *
 * Wake-ups: the storage hook (replicator thread, after each commit) sends every loop thread one
 * event with the new checkpoint and the sets of changed buckets, lookup keys and write
 * checkpoints; the thread wakes only streams whose buckets, lookup keys or user key intersect.
 * A per-thread one-second timer sends {"token_expires_in":N} every 20 s (which also reveals dead
 * connections, since HTTP/1 notices a disconnect only on write) and ends streams at expiry.
 *
 * Memory: the stream struct lives in req->pool with a dispose callback (so every way a request
 * ends frees it once); output buffers are reused and released while idle. The request body is
 * parsed once and released at once (gw_http_release_body), not kept for the stream's life.
 * With a Content-Encoding, a big batch is compressed on the thread's compression worker while
 * the thread encodes the next one (flush, on_compressed); the stream holds a reference to itself
 * until the batch is back, so it outlives its request if the client leaves meanwhile.
 *
 * Limits (what one user can take from the others): client_id at most GW_CLIENT_ID_MAX bytes,
 * "parameters" at most MAX_PARAMS_BYTES of JSON, "buckets" at most
 * limits.max_buckets_per_connection entries (400 past each); only names among the user's own
 * buckets are ever stored (the client's list is kept in order and matched against the user's
 * bucket map, never hashed into a table of its own). At most
 * limits.max_streams_per_user streams per token sub across all loop threads: a new stream past it
 * ends the user's oldest (the registry below; the victim's thread ends it on an evict message).
 */
#include "api/gw_api.h"
#include "api/gw_stream_int.h"
#include "http/gw_auth.h"
#include "http/gw_compress.h"
#include "base/gw_buf.h"
#include "base/gw_log.h"
#include "base/gw_map.h"
#include "base/gw_metrics.h"
#include "storage/gw_storage.h"

#include <errno.h>
#include <jansson.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_OPS_PER_LINE   1000
#define MAX_BYTES_PER_LINE (1024 * 1024)
#define KEEPALIVE_SECONDS  20
#define MAX_PARAMS_BYTES   (16 * 1024) /* "parameters" of a sync request, as compact JSON */

/* ---- events from the replicator ---- */

typedef struct cp_event {
    _Atomic int refs;
    int rules_changed; /* a new rule version took over: every stream re-evaluates */
    uint64_t last_op, lsn;
    gw_map_t buckets, lookups, wcps; /* sets (values unused) */
    struct timespec at;
} cp_event_t;

typedef struct cp_msg {
    h2o_multithread_message_t super;
    cp_event_t *ev;
} cp_msg_t;

static void event_unref(cp_event_t *ev)
{
    if (atomic_fetch_sub(&ev->refs, 1) == 1) {
        gw_map_free(&ev->buckets);
        gw_map_free(&ev->lookups);
        gw_map_free(&ev->wcps);
        free(ev);
    }
}

/* ---- per thread ---- */

typedef struct stream stream_t;

typedef struct sthread {
    struct gw_streams *owner;
    size_t index;
    h2o_context_t *ctx;
    h2o_multithread_receiver_t rx;
    h2o_multithread_receiver_t evict_rx; /* evict_msg_t: end one of this thread's streams */
    int rx_registered;
    gw_storage_reader_t *reader;
    h2o_linklist_t streams;
    size_t nstreams;
    uint64_t last_op, lsn; /* newest checkpoint this thread knows */
    h2o_timeout_t tick;
    h2o_timeout_entry_t tick_entry;
    int tick_on;
    uint64_t ticks;
    gw_compress_ctx_t *cz;            /* this thread's compressors (http.compression) */
    gw_compress_worker_t *czw;        /* compresses this thread's big batches (NULL: here) */
    h2o_multithread_receiver_t cz_rx; /* gw_compress_job_t done by czw: stream_t.job */
} sthread_t;

/* The streams of one user, oldest first (the per-user registry). */
typedef struct ustream {
    size_t thread;
    uint64_t id;
} ustream_t;

typedef struct user_streams {
    ustream_t *v;
    size_t n, cap;
} user_streams_t;

/* "End stream id": sent to the thread that owns a stream evicted by a newer one of its user. */
typedef struct evict_msg {
    h2o_multithread_message_t super;
    uint64_t id;
} evict_msg_t;

struct gw_streams {
    gw_app_t *app;
    pthread_mutex_t lock;       /* guards attached and the receivers against the storage hook */
    pthread_mutex_t users_lock; /* guards users */
    gw_map_t users;             /* sub -> user_streams_t* */
    int attached;
    size_t nregistered;
    size_t nthreads;
    sthread_t *threads;
    _Atomic uint64_t next_id;
    /* metrics */
    _Atomic int64_t open;
    _Atomic uint64_t started, ops_sent, bytes_sent, checkpoints_sent, rejected, evicted;
    _Atomic uint64_t enc_in[3], enc_out[3]; /* by gw_encoding_t: bytes before / after */
    _Atomic uint64_t cz_batches[2];         /* compressed batches: [0] on the loop, [1] worker */
    gw_hist_t latency;                      /* storage commit to checkpoint_complete */
};

/* ---- one stream ---- */

/* Take the newest checkpoint this process serves into th. */
static void refresh_checkpoint(sthread_t *th)
{
    uint64_t last_op, lsn;
    int consistent;
    if (th->reader != NULL &&
        gw_storage_read_checkpoint(th->reader, &last_op, &lsn, &consistent) == 0 &&
        (last_op > th->last_op || (last_op == th->last_op && lsn > th->lsn))) {
        th->last_op = last_op;
        th->lsn = lsn;
    }
}

typedef struct sbucket {
    char *name;
    int priority;
    uint64_t pos;      /* ops <= pos were delivered */
    uint32_t checksum; /* as sent in the last checkpoint line */
    uint64_t count;
    int sent;               /* listed in a checkpoint line already */
    int in_round;           /* needs data in the current round */
    const char *definition; /* stream or bucket definition (owned by the rules) */
    int *reasons;           /* why it is included (see gw_stream_subs.c) */
    size_t nreasons;
} sbucket_t;

struct stream {
    h2o_generator_t gen; /* first member */
    h2o_req_t *req;
    sthread_t *th;
    h2o_linklist_t link;
    uint64_t id;
    char *sub, *client_id, *user_key, *claims_json, *params_json;
    gw_subs_t subs; /* Sync Streams subscriptions of the request */
    long long exp;
    int fd;         /* the connection's socket, to notice a client that hung up (-1: unknown) */
    int registered; /* listed in the user registry */
    int pre_expiry_sent;
    struct timespec started;
    uint64_t last_keepalive_ms;
    /* buckets */
    sbucket_t *b;
    size_t nb;
    gw_map_t by_name;     /* name -> index+1 */
    gw_map_t lookup_keys; /* lookup keys the bucket list depends on */
    int reeval;
    rules_buckets_t first_nb; /* the list the open computed (limit check), for the first round */
    int have_first_nb;
    uint64_t first_nb_cp; /* as of this checkpoint */
    /* checkpoint state */
    int have_checkpoint;    /* a checkpoint line was sent */
    uint64_t cp_op, cp_lsn; /* the checkpoint of the current / last round */
    uint64_t wcp;           /* sticky write checkpoint (0: none) */
    int dirty;              /* a newer checkpoint touches this stream */
    struct timespec wake_at;
    int wake_timed;
    /* the round */
    int in_round;
    size_t *order; /* bucket indexes in send order */
    size_t norder, cur;
    uint64_t round_ops;
    /* output */
    gw_buf_t pending, inflight;
    gw_buf_t wire;           /* inflight compressed (an encoding other than identity) */
    gw_compress_stream_t cz; /* the response's Content-Encoding and its state */
    gw_compress_job_t job;   /* inflight -> wire on the thread's worker (while job_busy) */
    int job_busy, job_final; /* a job is in flight (the stream holds a reference); its batch ends */
    int busy, closed, finishing, final_sent;
    uint64_t ops_sent, bytes_sent, lines;
    const char *end_reason;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void record_latency(gw_streams_t *g, const struct timespec *since)
{
    gw_hist_since(&g->latency, since);
}

static void flush(stream_t *s);
static int pump(stream_t *s);
static h2o_iovec_t encoded(stream_t *s, int rc, int *failed);

static void stream_log_end(stream_t *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double secs =
        (double)(now.tv_sec - s->started.tv_sec) + (double)(now.tv_nsec - s->started.tv_nsec) / 1e9;
    char user[300];
    gw_info("stream", "stream ended",
            "conn=s%llu user=%s buckets=%zu ops=%llu bytes=%llu lines=%llu encoding=%s "
            "wire_bytes=%llu duration_s=%.3f reason=%s",
            (unsigned long long)s->id, gw_log_qs(s->sub, user, sizeof(user)), s->nb,
            (unsigned long long)s->ops_sent, (unsigned long long)s->bytes_sent,
            (unsigned long long)s->lines,
            s->cz.enc != GW_ENC_IDENTITY ? gw_compress_token(s->cz.enc) : "identity",
            (unsigned long long)(s->cz.enc != GW_ENC_IDENTITY ? s->cz.out : s->bytes_sent), secs,
            s->end_reason ? s->end_reason : "client closed");
}

static void user_unregister(gw_streams_t *g, const char *sub, size_t thread, uint64_t id);

static void stream_dispose(void *p)
{
    stream_t *s = p;
    if (s->registered) user_unregister(s->th->owner, s->sub, s->th->index, s->id);
    if (s->th != NULL) {
        h2o_linklist_unlink(&s->link);
        s->th->nstreams--;
        atomic_fetch_sub(&s->th->owner->open, 1);
        stream_log_end(s);
    }
    for (size_t i = 0; i < s->nb; i++) {
        free(s->b[i].name);
        free(s->b[i].reasons);
    }
    free(s->b);
    free(s->order);
    rules_buckets_free(&s->first_nb);
    gw__subs_free(&s->subs);
    gw_map_free(&s->by_name);
    gw_map_free(&s->lookup_keys);
    gw_buf_free(&s->pending);
    gw_buf_free(&s->inflight);
    gw_buf_free(&s->wire);
    free(s->sub);
    free(s->client_id);
    free(s->user_key);
    free(s->claims_json);
    free(s->params_json);
}

/* ---- output ---- */

static void line_end(stream_t *s)
{
    gw_buf_append(&s->pending, "\n", 1);
    s->lines++;
}

/*
 * With a Content-Encoding, compress the batch in s->inflight into s->wire (the whole batch, and
 * the end of the encoding when final) and return what to send; identity sends inflight itself.
 * A compressor failure ends the stream (the client reconnects) rather than send a broken one.
 */
static h2o_iovec_t encode(stream_t *s, int final, int *failed)
{
    *failed = 0;
    if (s->cz.enc == GW_ENC_IDENTITY) return h2o_iovec_init(s->inflight.data, s->inflight.len);
    gw_buf_reset(&s->wire);
    int rc =
        gw_compress_batch(s->th->cz, &s->cz, s->inflight.data, s->inflight.len, final, &s->wire);
    return encoded(s, rc, failed);
}

/* The result of compressing s->inflight into s->wire (rc: gw_compress_batch's), counted. */
static h2o_iovec_t encoded(stream_t *s, int rc, int *failed)
{
    *failed = rc != 0;
    if (rc != 0) {
        gw_error("stream", "could not compress the stream; ending it", "conn=s%llu encoding=%s",
                 (unsigned long long)s->id, gw_compress_token(s->cz.enc));
        return h2o_iovec_init(NULL, 0);
    }
    gw_streams_t *g = s->th->owner;
    atomic_fetch_add(&g->enc_in[s->cz.enc], s->inflight.len);
    atomic_fetch_add(&g->enc_out[s->cz.enc], s->wire.len);
    atomic_fetch_add(&g->cz_batches[s->job_busy], 1);
    return h2o_iovec_init(s->wire.data, s->wire.len);
}

/* Send one encoded batch (s->busy is set: on_proceed follows), or end a failed stream. */
static void send_batch(stream_t *s, h2o_iovec_t iov, int final, int failed)
{
    if (failed) {
        s->final_sent = 1;
        h2o_send(s->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    h2o_send(s->req, &iov, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

/*
 * A compressed batch this big goes to the thread's worker; the loop thread encodes the next one
 * meanwhile. Smaller ones (a live change, a keepalive) are compressed in place: the hop to the
 * worker and back would only add to their latency.
 */
#define OFFLOAD_MIN_BYTES (32 * 1024)

static void flush(stream_t *s)
{
    if (s->closed || s->busy || s->final_sent) return;
    int failed;
    if (s->pending.len == 0) {
        if (s->finishing) {
            s->final_sent = 1;
            gw_buf_reset(&s->inflight);
            h2o_iovec_t iov = encode(s, 1, &failed);
            if (iov.len > 0) {
                s->busy = 1;
                h2o_send(s->req, &iov, 1, H2O_SEND_STATE_FINAL);
            } else {
                h2o_send(s->req, NULL, 0, failed ? H2O_SEND_STATE_ERROR : H2O_SEND_STATE_FINAL);
            }
        } else {
            /* idle: do not keep big buffers */
            if (s->inflight.cap > 65536) gw_buf_free(&s->inflight);
            if (s->wire.cap > 65536) gw_buf_free(&s->wire);
        }
        return;
    }
    gw_buf_t t = s->inflight;
    s->inflight = s->pending;
    s->pending = t;
    gw_buf_reset(&s->pending);
    s->busy = 1;
    s->bytes_sent += s->inflight.len;
    atomic_fetch_add(&s->th->owner->bytes_sent, s->inflight.len);
    int final = s->finishing && !s->in_round;
    if (final) s->final_sent = 1;
    if (s->cz.enc != GW_ENC_IDENTITY && s->th->czw != NULL &&
        s->inflight.len >= OFFLOAD_MIN_BYTES) {
        /* the stream stays alive until the done message, even if the client goes meanwhile */
        h2o_mem_addref_shared(s);
        gw_buf_reset(&s->wire);
        s->job = (gw_compress_job_t){.done_rx = &s->th->cz_rx,
                                     .st = &s->cz,
                                     .in = s->inflight.data,
                                     .n = s->inflight.len,
                                     .last = final,
                                     .out = &s->wire};
        s->job_busy = 1;
        s->job_final = final;
        gw_compress_worker_post(s->th->czw, &s->job);
        pump(s); /* the next batch, while this one is compressed */
        return;
    }
    h2o_iovec_t iov = encode(s, final, &failed);
    send_batch(s, iov, final, failed);
}

/* Batches the worker compressed: send each (s->busy is still set), unless its client left. */
static void on_compressed(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    (void)rx;
    while (!h2o_linklist_is_empty(messages)) {
        gw_compress_job_t *job =
            H2O_STRUCT_FROM_MEMBER(gw_compress_job_t, super.link, messages->next);
        h2o_linklist_unlink(&job->super.link);
        stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, job, job);
        int failed = 0;
        h2o_iovec_t iov = {NULL, 0};
        if (!s->closed) iov = encoded(s, job->rc, &failed); /* counted while job_busy: a worker's */
        s->job_busy = 0; /* s->job is free again before anything can post the next batch */
        if (!s->closed) send_batch(s, iov, s->job_final, failed);
        h2o_mem_release_shared(s); /* disposes a stream whose client left meanwhile */
    }
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_t *s = (stream_t *)gen;
    s->busy = 0;
    gw_buf_reset(&s->inflight);
    pump(s);
    flush(s);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_t *s = (stream_t *)gen;
    s->closed = 1;
}

/* ---- buckets of the user ---- */

typedef struct lookup_arg {
    stream_t *s;
    rules_answer_t *ans;
} lookup_arg_t;

/* The rules a bucket list is evaluated with (one per evaluation; see gw_app_active). */
static __thread const gw_active_t *tl_active;

static int add_answer(void *ud, const char *params)
{
    return rules_answer_add(((lookup_arg_t *)ud)->ans, params) == 0 ? 0 : -1;
}

static int lookup_cb(void *arg, const char *key, rules_answer_t *ans)
{
    stream_t *s = arg;
    gw_map_put(&s->lookup_keys, key, (void *)1);
    lookup_arg_t la = {s, ans};
    return gw_storage_lookup(s->th->reader, tl_active->version, key, s->cp_op, add_answer, &la) == 0
               ? 0
               : -1;
}

/*
 * Compute the user's buckets as of s->cp_op into *out. On too many buckets fill msg with the
 * definitions and counts and return RULES_ELIMIT.
 */
static int eval_buckets(stream_t *s, rules_buckets_t *out, char *msg, size_t msglen)
{
    gw_app_t *app = s->th->owner->app;
    size_t limit = (size_t)app->cfg->limits.max_buckets_per_connection;
    gw_map_free(&s->lookup_keys);
    gw_map_init(&s->lookup_keys);
    rules_request_t rq = {.claims_json = s->claims_json,
                          .params_json = s->params_json,
                          .lookup = lookup_cb,
                          .lookup_arg = s,
                          .max_buckets = limit * 4 + 16};
    gw__subs_request(&s->subs, &rq);
    rules_error_t rerr = {0};
    const gw_active_t *a = gw_app_active(app);
    tl_active = a;
    int rc = rules_eval_request(a->rules, a->version, &rq, out, &rerr);
    if (rc == 0 && out->n > limit) rc = RULES_ELIMIT;
    if (rc == RULES_ELIMIT) {
        /* name each definition and how many buckets it produced */
        gw_buf_t b = GW_BUF_INIT;
        gw_buf_printf(&b, "too many buckets for one connection: more than %zu (", limit);
        size_t ndefs = rules_definition_count(a->rules);
        int first = 1;
        for (size_t d = 0; d < ndefs; d++) {
            const char *name = rules_definition_name(a->rules, d);
            size_t n = 0;
            for (size_t i = 0; i < out->n; i++)
                n += strcmp(out->items[i].definition, name) == 0;
            if (n > 0) {
                gw_buf_printf(&b, "%s\"%s\": %zu", first ? "" : ", ", name, n);
                first = 0;
            }
        }
        gw_buf_printf(&b, "%s); raise limits.max_buckets_per_connection or narrow the rules",
                      first ? rerr.message : "");
        snprintf(msg, msglen, "%s", b.data);
        gw_buf_free(&b);
    } else if (rc != 0) {
        snprintf(msg, msglen, "%s", rerr.message[0] ? rerr.message : rules_strerror(rc));
    }
    return rc;
}

static int cmp_order(const void *a, const void *b, void *arg)
{
    const stream_t *s = arg;
    const sbucket_t *x = &s->b[*(const size_t *)a], *y = &s->b[*(const size_t *)b];
    if (x->priority != y->priority) return x->priority - y->priority;
    return strcmp(x->name, y->name);
}

static void bucket_json(stream_t *s, gw_buf_t *out, const sbucket_t *b)
{
    gw_buf_puts(out, "{\"bucket\":");
    gw_buf_json_str(out, b->name);
    gw_buf_puts(out, ",\"checksum\":");
    gw_buf_u64(out, b->checksum);
    gw_buf_puts(out, ",\"count\":");
    gw_buf_u64(out, b->count);
    gw_buf_puts(out, ",\"priority\":");
    gw_buf_u64(out, (uint64_t)b->priority);
    gw__subs_bucket_json(&s->subs, b->definition, b->reasons, b->nreasons, out);
    gw_buf_puts(out, "}");
}

static void wcp_json(stream_t *s, gw_buf_t *out)
{
    if (s->wcp > 0)
        gw_buf_printf(out, ",\"write_checkpoint\":\"%llu\"", (unsigned long long)s->wcp);
}

/*
 * Start a round for the thread's newest checkpoint. Returns 1 when output was produced, 0 when
 * nothing changed for this user, -1 when the stream must end (error already queued/logged).
 * Its reads (lookups, every bucket's checksum) share one storage read transaction.
 */
static int start_round_reads(stream_t *s);
static int start_round(stream_t *s)
{
    int held = gw_storage_read_hold(s->th->reader) == 0;
    int rc = start_round_reads(s);
    if (held) gw_storage_read_release(s->th->reader);
    return rc;
}

static int start_round_reads(stream_t *s)
{
    sthread_t *th = s->th;
    gw_storage_reader_t *r = th->reader;
    s->dirty = 0;
    if (th->last_op < gw_app_active(th->owner->app)->since_op)
        refresh_checkpoint(th); /* a new rule version took over and its event is on the way */
    uint64_t cp_op = th->last_op, cp_lsn = th->lsn;
    int first = !s->have_checkpoint, full = first; /* full: a `checkpoint` line, not a diff */
    s->cp_op = cp_op;
    s->cp_lsn = cp_lsn;
    /* 1. the bucket list (only when it may have changed) */
    char **removed = NULL;
    size_t nremoved = 0;
    gw_buf_t streams_line = GW_BUF_INIT; /* a full checkpoint's "streams" */
    if (first || s->reeval) {
        rules_buckets_t nb = {0};
        char msg[1024];
        if (s->have_first_nb && first && s->first_nb_cp == cp_op) {
            nb = s->first_nb; /* computed by the open as of this checkpoint: not twice */
            memset(&s->first_nb, 0, sizeof(s->first_nb));
        } else if (eval_buckets(s, &nb, msg, sizeof(msg)) != 0) {
            char user[300], qmsg[1200];
            gw_warn("stream", "could not compute the buckets of a user; ending the stream",
                    "conn=s%llu user=%s error=%s", (unsigned long long)s->id,
                    gw_log_qs(s->sub, user, sizeof(user)), gw_log_qs(msg, qmsg, sizeof(qmsg)));
            rules_buckets_free(&nb);
            s->end_reason = "bucket_error";
            s->finishing = 1;
            return -1;
        }
        rules_buckets_free(&s->first_nb); /* (unused when the checkpoint moved meanwhile) */
        s->have_first_nb = 0;
        s->reeval = 0;
        /* keep positions of buckets that stay; drop the others */
        sbucket_t *b = gw_xcalloc(nb.n + 1, sizeof(sbucket_t));
        gw_map_t by_name;
        gw_map_init(&by_name);
        for (size_t i = 0; i < nb.n; i++) {
            b[i].name = gw_xstrdup(nb.items[i].bucket);
            b[i].priority = nb.items[i].priority;
            b[i].definition = nb.items[i].definition;
            b[i].reasons = nb.items[i].reasons;
            b[i].nreasons = nb.items[i].nreasons;
            nb.items[i].reasons = NULL;
            uintptr_t old = (uintptr_t)gw_map_get(&s->by_name, b[i].name);
            if (old != 0) {
                sbucket_t *o = &s->b[old - 1];
                b[i].pos = o->pos;
                b[i].checksum = o->checksum;
                b[i].count = o->count;
                b[i].sent = o->sent && o->priority == b[i].priority &&
                            o->nreasons == b[i].nreasons &&
                            memcmp(o->reasons, b[i].reasons, b[i].nreasons * sizeof(int)) == 0;
            }
            gw_map_put(&by_name, b[i].name, (void *)(uintptr_t)(i + 1));
        }
        for (size_t i = 0; i < s->nb; i++) {
            if (gw_map_get(&by_name, s->b[i].name) == NULL && s->b[i].sent) {
                removed = gw_xrealloc(removed, (nremoved + 1) * sizeof(char *));
                removed[nremoved++] = s->b[i].name;
                s->b[i].name = NULL;
            }
            free(s->b[i].name);
            free(s->b[i].reasons);
        }
        full = gw__subs_streams_json(&s->subs, &nb, &streams_line) || first;
        free(s->b);
        gw_map_free(&s->by_name);
        s->b = b;
        s->nb = nb.n;
        s->by_name = by_name;
        rules_buckets_free(&nb);
    }
    /* 2. checksums as of the checkpoint; which buckets changed */
    size_t nupdated = 0;
    for (size_t i = 0; i < s->nb; i++) {
        sbucket_t *b = &s->b[i];
        uint32_t cs;
        uint64_t count;
        if (gw__cks_get(b->name, cp_op, &cs, &count)) {
            /* read before, as of the same checkpoint */
        } else if (gw_storage_bucket_checksum(r, b->name, cp_op, &cs, &count) == 0) {
            gw__cks_put(b->name, cp_op, cs, count);
        } else {
            gw_error("stream", "could not read bucket checksums; ending the stream", "conn=s%llu",
                     (unsigned long long)s->id);
            s->end_reason = "storage_error";
            s->finishing = 1;
            for (size_t k = 0; k < nremoved; k++)
                free(removed[k]);
            free(removed);
            gw_buf_free(&streams_line);
            return -1;
        }
        b->in_round = !b->sent || cs != b->checksum || count != b->count;
        b->checksum = cs;
        b->count = count;
        nupdated += b->in_round;
    }
    /* 3. the write checkpoint visible at this position (sticky: it only grows) */
    uint64_t wcp = 0;
    int wcp_changed = 0;
    if (s->user_key != NULL && gw_storage_read_write_checkpoint(r, s->user_key, cp_lsn, &wcp) &&
        wcp > s->wcp) {
        s->wcp = wcp;
        wcp_changed = 1;
    }
    if (!full && nupdated == 0 && nremoved == 0 && !wcp_changed) {
        gw_buf_free(&streams_line);
        return 0;
    }
    /* 4. the checkpoint line */
    gw_buf_t *o = &s->pending;
    if (full) {
        gw_buf_printf(o, "{\"checkpoint\":{\"last_op_id\":\"%llu\"", (unsigned long long)cp_op);
        wcp_json(s, o);
        gw_buf_puts(o, ",\"buckets\":[");
        for (size_t i = 0; i < s->nb; i++) {
            if (i > 0) gw_buf_puts(o, ",");
            bucket_json(s, o, &s->b[i]);
        }
        gw_buf_puts(o, "]");
        if (streams_line.len > 0) gw_buf_append(o, streams_line.data, streams_line.len);
        gw_buf_puts(o, "}}");
    } else {
        gw_buf_printf(o, "{\"checkpoint_diff\":{\"last_op_id\":\"%llu\"",
                      (unsigned long long)cp_op);
        wcp_json(s, o);
        gw_buf_puts(o, ",\"updated_buckets\":[");
        int n = 0;
        for (size_t i = 0; i < s->nb; i++) {
            if (!s->b[i].in_round) continue;
            if (n++ > 0) gw_buf_puts(o, ",");
            bucket_json(s, o, &s->b[i]);
        }
        gw_buf_puts(o, "],\"removed_buckets\":[");
        for (size_t i = 0; i < nremoved; i++) {
            if (i > 0) gw_buf_puts(o, ",");
            gw_buf_json_str(o, removed[i]);
        }
        gw_buf_puts(o, "]}}");
    }
    line_end(s);
    gw_buf_free(&streams_line);
    for (size_t i = 0; i < nremoved; i++)
        free(removed[i]);
    free(removed);
    for (size_t i = 0; i < s->nb; i++)
        s->b[i].sent = 1;
    s->have_checkpoint = 1;
    atomic_fetch_add(&th->owner->checkpoints_sent, 1);
    /* 5. the order of the data: highest priority (lowest number) first */
    free(s->order);
    s->order = gw_xcalloc(s->nb + 1, sizeof(size_t));
    s->norder = 0;
    for (size_t i = 0; i < s->nb; i++)
        if (s->b[i].in_round) s->order[s->norder++] = i;
    qsort_r(s->order, s->norder, sizeof(size_t), cmp_order, s);
    s->cur = 0;
    s->round_ops = 0;
    s->in_round = 1;
    return 1;
}

/* Finish the round: complete line, every position at the checkpoint. */
static void end_round(stream_t *s)
{
    /* compaction past this checkpoint may have turned ops we sent into MOVE/CLEAR ops beyond it:
     * completing it could fail the client's checksums, so move on to a newer one (§2.2, §3.4) */
    char buf[32];
    uint64_t target = 0;
    if (gw_storage_read_state(s->th->reader, "compact_target", buf, sizeof(buf)))
        target = strtoull(buf, NULL, 10);
    if (target > s->cp_op) {
        uint64_t last_op, lsn;
        int consistent;
        if (gw_storage_read_checkpoint(s->th->reader, &last_op, &lsn, &consistent) == 0 &&
            last_op > s->th->last_op) {
            s->th->last_op = last_op;
            s->th->lsn = lsn;
        }
        s->in_round = 0;
        s->dirty = 1;
        return;
    }
    gw_buf_printf(&s->pending, "{\"checkpoint_complete\":{\"last_op_id\":\"%llu\"}}",
                  (unsigned long long)s->cp_op);
    line_end(s);
    for (size_t i = 0; i < s->nb; i++)
        if (s->b[i].pos < s->cp_op) s->b[i].pos = s->cp_op;
    s->in_round = 0;
    if (s->wake_timed) {
        record_latency(s->th->owner, &s->wake_at);
        s->wake_timed = 0;
    }
}

/* Produce one unit of output for the round (a data chunk, a partial or complete line). */
static int round_step(stream_t *s)
{
    while (s->cur < s->norder) {
        sbucket_t *b = &s->b[s->order[s->cur]];
        gw_buf_t *o = &s->pending;
        size_t mark = o->len;
        size_t body = o->len;
        uint64_t last = b->pos;
        int more = 0;
        size_t nops = 0;
        /* (a bucket the client has up to the checkpoint needs no read: a reconnect) */
        if (b->pos < s->cp_op) {
            gw_buf_puts(o, "{\"data\":{\"bucket\":");
            gw_buf_json_str(o, b->name);
            gw_buf_printf(o, ",\"after\":\"%llu\",\"data\":[", (unsigned long long)b->pos);
            body = o->len;
        }
        if (b->pos < s->cp_op &&
            gw_storage_read_ops(s->th->reader, b->name, b->pos, s->cp_op, MAX_OPS_PER_LINE,
                                MAX_BYTES_PER_LINE, o, &last, &more, &nops) != 0) {
            o->len = mark;
            o->data[mark] = '\0';
            gw_error("stream", "could not read ops; ending the stream", "conn=s%llu",
                     (unsigned long long)s->id);
            s->end_reason = "storage_error";
            s->finishing = 1;
            s->in_round = 0;
            return 1;
        }
        (void)body;
        if (nops > 0) {
            gw_buf_printf(o, "],\"next_after\":\"%llu\",\"has_more\":%s}}",
                          (unsigned long long)last, more ? "true" : "false");
            line_end(s);
            b->pos = last;
            s->ops_sent += nops;
            s->round_ops += nops;
            atomic_fetch_add(&s->th->owner->ops_sent, nops);
        } else {
            o->len = mark;
            if (o->data != NULL) o->data[mark] = '\0';
        }
        if (!more) {
            int prio = b->priority;
            s->cur++;
            /* a priority level is complete: say so unless it is the last level */
            if (s->cur < s->norder && s->b[s->order[s->cur]].priority != prio) {
                gw_buf_printf(o,
                              "{\"partial_checkpoint_complete\":{\"last_op_id\":\"%llu\","
                              "\"priority\":%d}}",
                              (unsigned long long)s->cp_op, prio);
                line_end(s);
            }
        }
        if (nops > 0 || o->len > 0) return 1;
    }
    end_round(s);
    return 1;
}

/* Fill the pending buffer with the next output, if any; returns 1 when something was added. */
static int pump(stream_t *s)
{
    if (s->closed || s->final_sent) return 0;
    size_t before = s->pending.len;
    while (s->pending.len < 64 * 1024) {
        if (s->in_round) {
            round_step(s);
            if (s->pending.len > before) break;
            continue;
        }
        if (s->finishing) break;
        if (!s->dirty && s->have_checkpoint) break;
        if (start_round(s) == 0 && !s->in_round) break;
    }
    return s->pending.len > before;
}

/* ---- wake-ups ---- */

static int touches(stream_t *s, const cp_event_t *ev)
{
    if (s->user_key != NULL && gw_map_get(&ev->wcps, s->user_key) != NULL) return 1;
    if (ev->lookups.n > 0 && s->lookup_keys.n > 0) {
        const gw_map_t *small = ev->lookups.n < s->lookup_keys.n ? &ev->lookups : &s->lookup_keys;
        const gw_map_t *big = small == &ev->lookups ? &s->lookup_keys : &ev->lookups;
        for (size_t i = 0; i < small->cap; i++)
            if (small->slots[i].key != NULL && gw_map_get(big, small->slots[i].key) != NULL) {
                s->reeval = 1;
                return 1;
            }
    }
    if (ev->buckets.n < s->nb) {
        for (size_t i = 0; i < ev->buckets.cap; i++)
            if (ev->buckets.slots[i].key != NULL &&
                gw_map_get(&s->by_name, ev->buckets.slots[i].key) != NULL)
                return 1;
    } else {
        for (size_t i = 0; i < s->nb; i++)
            if (gw_map_get(&ev->buckets, s->b[i].name) != NULL) return 1;
    }
    return 0;
}

static void on_events(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    sthread_t *th = H2O_STRUCT_FROM_MEMBER(sthread_t, rx, rx);
    while (!h2o_linklist_is_empty(messages)) {
        cp_msg_t *m = H2O_STRUCT_FROM_MEMBER(cp_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        cp_event_t *ev = m->ev;
        free(m);
        if (ev->last_op > th->last_op || (ev->last_op == th->last_op && ev->lsn > th->lsn)) {
            th->last_op = ev->last_op;
            th->lsn = ev->lsn;
        }
        if (ev->rules_changed) refresh_checkpoint(th);
        for (h2o_linklist_t *n = th->streams.next; n != &th->streams; n = n->next) {
            stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, link, n);
            if (s->closed || s->finishing) continue;
            if (ev->rules_changed)
                s->reeval = 1; /* also a stream still in its first round */
            else if (!s->have_checkpoint || !touches(s, ev))
                continue;
            s->dirty = 1;
            if (!s->wake_timed) {
                s->wake_at = ev->at;
                s->wake_timed = 1;
            }
            if (!s->busy && !s->in_round) {
                pump(s);
                flush(s);
            }
        }
        event_unref(ev);
    }
}

/* Send ev (refs 0, ownership passes) to every loop thread; freed at once when none listens. */
static void broadcast(gw_streams_t *g, cp_event_t *ev)
{
    pthread_mutex_lock(&g->lock);
    if (!g->attached || g->threads == NULL) {
        pthread_mutex_unlock(&g->lock);
        event_unref(ev); /* refs start at 0: free now */
        return;
    }
    atomic_store(&ev->refs, (int)g->nthreads);
    for (size_t i = 0; i < g->nthreads; i++) {
        cp_msg_t *m = gw_xcalloc(1, sizeof(*m));
        m->ev = ev;
        h2o_multithread_send_message(&g->threads[i].rx, &m->super);
    }
    pthread_mutex_unlock(&g->lock);
}

static void storage_hook(const gw_storage_changes_t *ch, void *ud)
{
    gw_streams_t *g = ud;
    if (!ch->consistent) return;
    cp_event_t *ev = gw_xcalloc(1, sizeof(*ev));
    ev->last_op = ch->last_op;
    ev->lsn = ch->lsn;
    clock_gettime(CLOCK_MONOTONIC, &ev->at);
    gw_map_init(&ev->buckets);
    gw_map_init(&ev->lookups);
    gw_map_init(&ev->wcps);
    for (size_t i = 0; i < ch->nbuckets; i++)
        gw_map_put(&ev->buckets, ch->buckets[i], (void *)1);
    for (size_t i = 0; i < ch->nlookups; i++)
        gw_map_put(&ev->lookups, ch->lookups[i], (void *)1);
    for (size_t i = 0; i < ch->nwrite_checkpoints; i++)
        gw_map_put(&ev->wcps, ch->write_checkpoints[i], (void *)1);
    broadcast(g, ev);
}

void gw_stream_rules_changed(const gw_active_t *now, void *ud)
{
    gw_app_t *app = ud;
    gw_streams_t *g = app->streams;
    (void)now;
    cp_event_t *ev = gw_xcalloc(1, sizeof(*ev));
    ev->rules_changed = 1;
    clock_gettime(CLOCK_MONOTONIC, &ev->at);
    gw_map_init(&ev->buckets);
    gw_map_init(&ev->lookups);
    gw_map_init(&ev->wcps);
    broadcast(g, ev);
}

/* ---- streams per user ---- */

/* End stream s on its own thread (a newer stream of its user took its place). */
static void evict(stream_t *s)
{
    if (s->closed || s->final_sent || s->finishing) return;
    s->end_reason = "evicted";
    s->finishing = 1;
    s->in_round = 0;
    atomic_fetch_add(&s->th->owner->evicted, 1);
    flush(s);
}

static void on_evict(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    sthread_t *th = H2O_STRUCT_FROM_MEMBER(sthread_t, evict_rx, rx);
    while (!h2o_linklist_is_empty(messages)) {
        evict_msg_t *m = H2O_STRUCT_FROM_MEMBER(evict_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        for (h2o_linklist_t *n = th->streams.next; n != &th->streams; n = n->next) {
            stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, link, n);
            if (s->id == m->id) {
                evict(s);
                break;
            }
        }
        free(m); /* a stream that ended meanwhile is simply not found */
    }
}

/*
 * List stream s under its user; when the user now has more than max streams, take the oldest
 * off the list and end it (on its own thread: directly, else by message). Loop thread of s.
 */
static void user_register(stream_t *s, size_t max)
{
    gw_streams_t *g = s->th->owner;
    ustream_t victim = {0, 0};
    pthread_mutex_lock(&g->users_lock);
    user_streams_t *u = gw_map_get(&g->users, s->sub);
    if (u == NULL) {
        u = gw_xcalloc(1, sizeof(*u));
        gw_map_put(&g->users, s->sub, u);
    }
    if (u->n == u->cap) {
        u->cap = u->cap ? u->cap * 2 : 4;
        u->v = gw_xrealloc(u->v, u->cap * sizeof(ustream_t));
    }
    u->v[u->n++] = (ustream_t){s->th->index, s->id};
    s->registered = 1;
    if (u->n > max) {
        victim = u->v[0];
        memmove(u->v, u->v + 1, (u->n - 1) * sizeof(ustream_t));
        u->n--;
    }
    pthread_mutex_unlock(&g->users_lock);
    if (victim.id == 0) return;
    char user[300];
    gw_info("stream", "too many streams for one user; ending the oldest",
            "conn=s%llu user=%s evicted=s%llu max_streams_per_user=%zu", (unsigned long long)s->id,
            gw_log_qs(s->sub, user, sizeof(user)), (unsigned long long)victim.id, max);
    if (victim.thread == s->th->index) {
        for (h2o_linklist_t *n = s->th->streams.next; n != &s->th->streams; n = n->next) {
            stream_t *o = H2O_STRUCT_FROM_MEMBER(stream_t, link, n);
            if (o->id == victim.id) {
                o->registered = 0;
                evict(o);
                break;
            }
        }
        return;
    }
    pthread_mutex_lock(&g->lock);
    if (g->attached) {
        evict_msg_t *m = gw_xcalloc(1, sizeof(*m));
        m->id = victim.id;
        h2o_multithread_send_message(&g->threads[victim.thread].evict_rx, &m->super);
    }
    pthread_mutex_unlock(&g->lock);
}

/* Take stream (thread, id) off its user's list, if it is still there. Any thread. */
static void user_unregister(gw_streams_t *g, const char *sub, size_t thread, uint64_t id)
{
    pthread_mutex_lock(&g->users_lock);
    user_streams_t *u = gw_map_get(&g->users, sub);
    for (size_t i = 0; u != NULL && i < u->n; i++) {
        if (u->v[i].thread == thread && u->v[i].id == id) {
            memmove(u->v + i, u->v + i + 1, (u->n - i - 1) * sizeof(ustream_t));
            u->n--;
            break;
        }
    }
    if (u != NULL && u->n == 0) {
        gw_map_del(&g->users, sub);
        free(u->v);
        free(u);
    }
    pthread_mutex_unlock(&g->users_lock);
}

/* ---- keepalives and expiry ---- */

static void send_expires(stream_t *s, long long left)
{
    gw_buf_printf(&s->pending, "{\"token_expires_in\":%lld}", left);
    line_end(s);
    s->last_keepalive_ms = mono_ms();
}

/*
 * HTTP/1 in h2o does not read while a response is in progress, so a client that hung up shows
 * only when we write. Peek at the socket instead: 0 bytes means the peer closed.
 */
static int peer_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sthread_t *th = H2O_STRUCT_FROM_MEMBER(sthread_t, tick_entry, entry);
    long long now = (long long)time(NULL);
    uint64_t ms = mono_ms();
    th->ticks++;
    for (h2o_linklist_t *n = th->streams.next; n != &th->streams; n = n->next) {
        stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, link, n);
        if (s->closed || s->final_sent) continue;
        /* each stream is looked at every second tick; a hung-up client gets a write now, which
         * fails and ends the stream, instead of waiting for the next keepalive */
        if (s->fd >= 0 && !s->busy && (s->id + th->ticks) % 2 == 0 && peer_closed(s->fd)) {
            s->end_reason = "client closed";
            send_expires(s, s->exp - now > 0 ? s->exp - now : 0);
            flush(s);
            continue;
        }
        long long left = s->exp - now;
        if (left <= 0) {
            send_expires(s, 0);
            s->end_reason = "token_expired";
            s->finishing = 1;
            s->in_round = 0;
            flush(s);
            continue;
        }
        /* every 20 s, and once 20 s before expiry (the client then fetches a new token) */
        int pre = left <= KEEPALIVE_SECONDS && !s->pre_expiry_sent;
        if (pre || ms - s->last_keepalive_ms >= KEEPALIVE_SECONDS * 1000) {
            s->pre_expiry_sent |= pre;
            send_expires(s, left);
            flush(s);
        }
    }
    h2o_timeout_link(th->ctx->loop, &th->tick, &th->tick_entry);
}

/* ---- the request ---- */

static char *json_text_or(json_t *v, const char *dflt)
{
    if (v == NULL || json_is_null(v)) return gw_xstrdup(dflt);
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *out = gw_xstrdup(t != NULL ? t : dflt);
    free(t);
    return out;
}

static int on_sync_stream(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    gw_streams_t *g = app->streams;
    auth_token_t *tok;
    if (gw_app_authenticate(app, req, &tok) != 0) {
        atomic_fetch_add(&g->rejected, 1);
        return 0;
    }
    if (!gw_repl_ready(app->repl)) {
        auth_token_release(tok);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("5"));
        gw_http_send_error(req, 503, "unavailable",
                           "replication has no consistent checkpoint yet; retry later");
        return 0;
    }
    /* the body: {"buckets":[{"name","after"}], "client_id", "parameters", …}; positions scanned
     * into a list (gw__req_body: a reconnect sends hundreds) */
    json_t *body = NULL;
    gw_positions_t after;
    memset(&after, 0, sizeof(after));
    gw_subs_t subs;
    memset(&subs, 0, sizeof(subs));
    if (req->entity.base != NULL && req->entity.len > 0) {
        json_error_t jerr;
        body = gw__req_body(req->entity.base, req->entity.len, app->cfg, &after, &subs, &jerr);
        if (body == NULL || !json_is_object(body)) {
            auth_token_release(tok);
            json_decref(body);
            gw__positions_free(&after);
            gw__subs_free(&subs);
            gw_http_send_error(req, 400, "bad_request",
                               "the request body is not a JSON object (line %d, column %d: %s)",
                               jerr.line, jerr.column, body ? "not an object" : jerr.text);
            return 0;
        }
    }
    json_t *jb = body ? json_object_get(body, "buckets") : NULL;
    json_t *jparams = body ? json_object_get(body, "parameters") : NULL;
    json_t *jclient = body ? json_object_get(body, "client_id") : NULL;
    if ((jb != NULL && !json_is_array(jb) && !json_is_null(jb)) ||
        (jparams != NULL && !json_is_object(jparams) && !json_is_null(jparams)) ||
        (jclient != NULL && !json_is_string(jclient) && !json_is_null(jclient))) {
        auth_token_release(tok);
        json_decref(body);
        gw__positions_free(&after);
        gw__subs_free(&subs);
        gw_http_send_error(req, 400, "bad_request",
                           "\"buckets\" must be an array, \"parameters\" an object and "
                           "\"client_id\" a string");
        return 0;
    }
    /* what one request may ask for: the stream keeps these for its whole life */
    size_t max_buckets = (size_t)app->cfg->limits.max_buckets_per_connection;
    char *params_json = json_text_or(jparams, "{}");
    char problem[200] = "";
    if (json_is_string(jclient) && json_string_length(jclient) > GW_CLIENT_ID_MAX)
        snprintf(problem, sizeof(problem), "\"client_id\" is longer than %d bytes",
                 GW_CLIENT_ID_MAX);
    else if (strlen(params_json) > MAX_PARAMS_BYTES)
        snprintf(problem, sizeof(problem), "\"parameters\" is longer than %d bytes as JSON",
                 MAX_PARAMS_BYTES);
    else if (json_array_size(jb) > max_buckets || after.n > max_buckets)
        snprintf(problem, sizeof(problem),
                 "\"buckets\" lists more than %zu buckets (limits.max_buckets_per_connection)",
                 max_buckets);
    char user_key[GW_USER_KEY_MAX];
    if (problem[0] == '\0' && json_is_string(jclient) &&
        gw_app_user_key(tok->sub, json_string_value(jclient), user_key, sizeof(user_key)) != 0)
        snprintf(problem, sizeof(problem), "the token's subject is too long");
    if (problem[0] != '\0') {
        auth_token_release(tok);
        json_decref(body);
        gw__positions_free(&after);
        gw__subs_free(&subs);
        free(params_json);
        atomic_fetch_add(&g->rejected, 1);
        gw_http_send_error(req, 400, "bad_request", "%s", problem);
        return 0;
    }

    stream_t *s = h2o_mem_alloc_shared(&req->pool, sizeof(*s), stream_dispose);
    memset(s, 0, sizeof(*s));
    const char *scode;
    char smsg[300];
    int sub_rc = gw__subs_parse(body, app->cfg, &subs, &scode, smsg, sizeof(smsg));
    s->subs = subs; /* the stream owns them now (stream_dispose frees them) */
    if (sub_rc != 0) {
        char user[300], qmsg[700];
        gw_warn("stream", "rejected a stream", "user=%s error=%s",
                gw_log_qs(tok->sub, user, sizeof(user)), gw_log_qs(smsg, qmsg, sizeof(qmsg)));
        auth_token_release(tok);
        json_decref(body);
        free(params_json);
        gw__positions_free(&after);
        atomic_fetch_add(&g->rejected, 1);
        gw_http_send_error(req, 400, scode, "%s", smsg);
        return 0;
    }
    s->gen.proceed = on_proceed;
    s->gen.stop = on_stop;
    s->req = req;
    s->fd = -1;
    if (req->conn->callbacks->get_socket != NULL) {
        h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
        if (sock != NULL) s->fd = h2o_socket_get_fd(sock);
    }
    s->id = atomic_fetch_add(&g->next_id, 1) + 1;
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    s->last_keepalive_ms = mono_ms();
    s->sub = gw_xstrdup(tok->sub);
    s->exp = tok->exp;
    s->claims_json = json_text_or(tok->claims, "{}");
    s->params_json = params_json;
    if (jclient != NULL && json_is_string(jclient)) {
        s->client_id = gw_xstrdup(json_string_value(jclient));
        s->user_key = gw_xstrdup(user_key);
    }
    auth_token_release(tok);
    gw_map_init(&s->by_name);
    gw_map_init(&s->lookup_keys);
    size_t ti = gw_http_thread_index(app->http, req->conn->ctx);
    sthread_t *th = &g->threads[ti];

    /* the newest checkpoint: what this thread heard, or storage itself */
    uint64_t last_op, lsn;
    int consistent;
    if (gw_storage_read_checkpoint(th->reader, &last_op, &lsn, &consistent) == 0 &&
        (last_op > th->last_op || (last_op == th->last_op && lsn > th->lsn))) {
        th->last_op = last_op;
        th->lsn = lsn;
    }
    s->th = th;
    /* the bucket list first: an over-limit user gets a 400 before the stream starts */
    s->cp_op = th->last_op;
    s->cp_lsn = th->lsn;
    rules_buckets_t nb = {0};
    char msg[1024];
    int rc = eval_buckets(s, &nb, msg, sizeof(msg));
    if (rc == 0) {
        s->first_nb = nb; /* the first round uses it */
        s->first_nb_cp = s->cp_op;
        s->have_first_nb = 1;
    } else {
        rules_buckets_free(&nb);
    }
    if (rc != 0) {
        char user[300], qmsg[1200];
        gw_warn("stream", "rejected a stream", "user=%s error=%s",
                gw_log_qs(s->sub, user, sizeof(user)), gw_log_qs(msg, qmsg, sizeof(qmsg)));
        s->th = NULL; /* not linked: dispose must not unlink */
        json_decref(body);
        gw__positions_free(&after);
        atomic_fetch_add(&g->rejected, 1);
        gw_http_send_error(req, 400, rc == RULES_ELIMIT ? "too_many_buckets" : "bad_request", "%s",
                           msg);
        return 0;
    }
    h2o_linklist_insert(&th->streams, &s->link);
    th->nstreams++;
    atomic_fetch_add(&g->open, 1);
    atomic_fetch_add(&g->started, 1);
    /* positions the client already has (the scanner's, or from the tree), matched against the
     * user's own buckets (by_name, after the first evaluation): the client's names go into no
     * table, and a request lists at most limits.max_buckets_per_connection of them */
    size_t i;
    json_t *e;
    json_array_foreach(jb, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *ja = json_object_get(e, "after");
        uint64_t a = 0;
        if (json_is_string(ja))
            a = strtoull(json_string_value(ja), NULL, 10);
        else if (json_is_integer(ja) && json_integer_value(ja) > 0)
            a = (uint64_t)json_integer_value(ja);
        if (name != NULL) gw__positions_add(&after, name, strlen(name), a);
    }
    json_decref(body);
    gw_http_release_body(req);
    s->reeval = 1;
    start_round(s);
    for (size_t k = 0; k < after.n; k++) { /* in the order sent: a repeated name's last wins */
        uintptr_t idx = (uintptr_t)gw_map_get(&s->by_name, gw__position_name(&after, k));
        if (idx != 0) s->b[idx - 1].pos = after.v[k].after;
    }
    gw__positions_free(&after);
    char user[300], client[300];
    gw_info("stream", "stream started",
            "conn=s%llu user=%s client=%s buckets=%zu subscriptions=%zu checkpoint=%llu",
            (unsigned long long)s->id, gw_log_qs(s->sub, user, sizeof(user)),
            gw_log_qs(s->client_id ? s->client_id : "-", client, sizeof(client)), s->nb, s->subs.n,
            (unsigned long long)s->cp_op);
    user_register(s, (size_t)app->cfg->limits.max_streams_per_user);

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/x-ndjson"));
    /* a proxy must pass every batch on at once (nginx buffers unless told) */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL,
                          H2O_STRLIT("no"));
    const gw_config_t *cfg = app->cfg;
    if (cfg->http.compression.enabled && s->th->cz != NULL) {
        ssize_t ae = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT_ENCODING, -1);
        s->cz.enc = ae < 0 ? GW_ENC_IDENTITY
                           : gw_compress_negotiate(req->headers.entries[ae].value.base,
                                                   req->headers.entries[ae].value.len, 1, 1);
    }
    const char *token = gw_compress_token(s->cz.enc);
    if (token != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_ENCODING, NULL, token,
                       strlen(token));
    if (cfg->http.compression.enabled)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_VARY, NULL,
                       H2O_STRLIT("Accept-Encoding"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-store"));
    h2o_start_response(req, &s->gen);
    /* the checkpoint line goes out at once (clients wait for the first line) */
    flush(s);
    return 0;
}

/* ---- lifecycle ---- */

static void on_thread_start(h2o_context_t *ctx, size_t index, void *ud)
{
    gw_streams_t *g = ud;
    sthread_t *th = &g->threads[index];
    th->ctx = ctx;
    gw_err_t err;
    if (gw_storage_reader_open(g->app->storage, &th->reader, &err) != 0) {
        char msg[1024];
        gw_error("stream", "could not open storage for reading", "error=\"%s\"",
                 gw_err_format(&err, msg, sizeof(msg)));
    }
    pthread_mutex_lock(&g->lock);
    h2o_multithread_register_receiver(ctx->queue, &th->rx, on_events);
    h2o_multithread_register_receiver(ctx->queue, &th->evict_rx, on_evict);
    th->rx_registered = 1;
    if (++g->nregistered == g->nthreads) g->attached = 1;
    pthread_mutex_unlock(&g->lock);
    const gw_config_t *cfg = g->app->cfg;
    if (cfg->http.compression.enabled) {
        int zl = (int)cfg->http.compression.zstd_level, gl = (int)cfg->http.compression.gzip_level;
        th->cz = gw_compress_ctx_new(zl, gl);
        h2o_multithread_register_receiver(ctx->queue, &th->cz_rx, on_compressed);
        th->czw = gw_compress_worker_start(zl, gl, &err);
        if (th->czw == NULL) { /* batches are then compressed on this thread: slower, still right */
            char msg[1024];
            gw_warn("stream", "compressing streams on the loop thread", "error=\"%s\"",
                    gw_err_format(&err, msg, sizeof(msg)));
        }
    }
    h2o_timeout_init(ctx->loop, &th->tick, 1000);
    th->tick_entry.cb = on_tick;
    h2o_timeout_link(ctx->loop, &th->tick, &th->tick_entry);
    th->tick_on = 1;
}

/* The loop ended: stop events for every thread, drop this thread's receiver and reader. */
static void on_thread_stop(h2o_context_t *ctx, size_t index, void *ud)
{
    gw_streams_t *g = ud;
    sthread_t *th = &g->threads[index];
    (void)ctx;
    gw__cks_free();
    if (th->cz != NULL) {
        /* every job gets its done message; a stream still waiting for one is released here */
        gw_compress_worker_stop(th->czw);
        th->czw = NULL;
        while (!h2o_linklist_is_empty(&th->cz_rx._messages)) {
            gw_compress_job_t *job =
                H2O_STRUCT_FROM_MEMBER(gw_compress_job_t, super.link, th->cz_rx._messages.next);
            h2o_linklist_unlink(&job->super.link);
            stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, job, job);
            s->job_busy = 0;
            h2o_mem_release_shared(s);
        }
        h2o_multithread_unregister_receiver(th->cz_rx.queue, &th->cz_rx);
    }
    gw_compress_ctx_free(th->cz);
    th->cz = NULL;
    pthread_mutex_lock(&g->lock);
    g->attached = 0;
    if (th->rx_registered) {
        while (!h2o_linklist_is_empty(&th->rx._messages)) {
            cp_msg_t *m = H2O_STRUCT_FROM_MEMBER(cp_msg_t, super.link, th->rx._messages.next);
            h2o_linklist_unlink(&m->super.link);
            event_unref(m->ev);
            free(m);
        }
        h2o_multithread_unregister_receiver(th->rx.queue, &th->rx);
        while (!h2o_linklist_is_empty(&th->evict_rx._messages)) {
            evict_msg_t *m =
                H2O_STRUCT_FROM_MEMBER(evict_msg_t, super.link, th->evict_rx._messages.next);
            h2o_linklist_unlink(&m->super.link);
            free(m);
        }
        h2o_multithread_unregister_receiver(th->evict_rx.queue, &th->evict_rx);
        th->rx_registered = 0;
    }
    pthread_mutex_unlock(&g->lock);
    if (th->tick_on) {
        h2o_timeout_unlink(&th->tick_entry);
        h2o_timeout_dispose(th->ctx->loop, &th->tick);
        th->tick_on = 0;
    }
    gw_storage_reader_close(th->reader);
    th->reader = NULL;
}

static void on_shutdown(h2o_context_t *ctx, size_t index, void *ud)
{
    gw_streams_t *g = ud;
    sthread_t *th = &g->threads[index];
    (void)ctx;
    for (h2o_linklist_t *n = th->streams.next; n != &th->streams; n = n->next) {
        stream_t *s = H2O_STRUCT_FROM_MEMBER(stream_t, link, n);
        s->end_reason = "server_shutdown";
        s->finishing = 1;
        s->in_round = 0;
        flush(s);
    }
    if (th->tick_on) {
        h2o_timeout_unlink(&th->tick_entry);
        h2o_timeout_dispose(th->ctx->loop, &th->tick);
        th->tick_on = 0;
    }
}

gw_streams_t *gw_streams_new(gw_storage_t *storage)
{
    gw_streams_t *g = gw_xcalloc(1, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
    pthread_mutex_init(&g->users_lock, NULL);
    gw_map_init(&g->users);
    gw_storage_set_hook(storage, storage_hook, g);
    return g;
}

void gw_stream_register(gw_app_t *app)
{
    gw_streams_t *g = app->streams;
    g->app = app;
    g->nthreads = gw_http_threads(app->http);
    g->threads = gw_xcalloc(g->nthreads, sizeof(sthread_t));
    for (size_t i = 0; i < g->nthreads; i++) {
        sthread_t *th = &g->threads[i];
        th->owner = g;
        th->index = i;
        h2o_linklist_init_anchor(&th->streams);
    }
    gw_http_on_thread_start(app->http, on_thread_start, g);
    gw_http_on_shutdown(app->http, on_shutdown, g);
    gw_http_on_thread_stop(app->http, on_thread_stop, g);
    gw_http_route(app->http, "/sync/stream", "sync_stream", GW_HTTP_POST, on_sync_stream, app);
    gw_metrics_add_collector(gw_stream_metrics, g);
}

void gw_stream_detach(gw_app_t *app)
{
    /* each loop thread released its part in on_thread_stop(); make sure no event is sent now */
    gw_streams_t *g = app->streams;
    if (g == NULL) return;
    pthread_mutex_lock(&g->lock);
    g->attached = 0;
    pthread_mutex_unlock(&g->lock);
}

static void free_user(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    user_streams_t *u = value;
    free(u->v);
    free(u);
}

void gw_streams_free(gw_streams_t *g)
{
    if (g == NULL) return;
    gw_map_each(&g->users, free_user, NULL);
    gw_map_free(&g->users);
    pthread_mutex_destroy(&g->users_lock);
    free(g->threads);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

void gw_stream_metrics(gw_buf_t *out, void *ud)
{
    gw_streams_t *g = ud;
    gw_buf_puts(out,
                "# HELP ferry_streams_open Open sync streams.\n# TYPE ferry_streams_open gauge\n");
    gw_buf_printf(out, "ferry_streams_open %lld\n", (long long)atomic_load(&g->open));
    gw_buf_puts(out, "# TYPE ferry_streams_started_total counter\n");
    gw_buf_printf(out, "ferry_streams_started_total %llu\n",
                  (unsigned long long)atomic_load(&g->started));
    gw_buf_puts(out, "# TYPE ferry_streams_rejected_total counter\n");
    gw_buf_printf(out, "ferry_streams_rejected_total %llu\n",
                  (unsigned long long)atomic_load(&g->rejected));
    gw_buf_puts(out, "# HELP ferry_streams_evicted_total Streams ended because a newer stream of "
                     "the same user passed limits.max_streams_per_user.\n"
                     "# TYPE ferry_streams_evicted_total counter\n");
    gw_buf_printf(out, "ferry_streams_evicted_total %llu\n",
                  (unsigned long long)atomic_load(&g->evicted));
    gw_buf_puts(out, "# TYPE ferry_stream_ops_sent_total counter\n");
    gw_buf_printf(out, "ferry_stream_ops_sent_total %llu\n",
                  (unsigned long long)atomic_load(&g->ops_sent));
    gw_buf_puts(out, "# TYPE ferry_stream_bytes_sent_total counter\n");
    gw_buf_printf(out, "ferry_stream_bytes_sent_total %llu\n",
                  (unsigned long long)atomic_load(&g->bytes_sent));
    gw_buf_puts(out,
                "# HELP ferry_stream_encoded_bytes_in_total Stream bytes before compression, by "
                "Content-Encoding.\n# TYPE ferry_stream_encoded_bytes_in_total counter\n");
    for (int e = GW_ENC_ZSTD; e <= GW_ENC_GZIP; e++)
        gw_buf_printf(out, "ferry_stream_encoded_bytes_in_total{encoding=\"%s\"} %llu\n",
                      gw_compress_token((gw_encoding_t)e),
                      (unsigned long long)atomic_load(&g->enc_in[e]));
    gw_buf_puts(out, "# HELP ferry_stream_encoded_bytes_out_total Stream bytes after compression, "
                     "by Content-Encoding.\n# TYPE ferry_stream_encoded_bytes_out_total counter\n");
    for (int e = GW_ENC_ZSTD; e <= GW_ENC_GZIP; e++)
        gw_buf_printf(out, "ferry_stream_encoded_bytes_out_total{encoding=\"%s\"} %llu\n",
                      gw_compress_token((gw_encoding_t)e),
                      (unsigned long long)atomic_load(&g->enc_out[e]));
    gw_buf_puts(out, "# HELP ferry_stream_compressed_batches_total Compressed stream batches, by "
                     "thread: the loop thread's own (small) or its compression worker (big).\n"
                     "# TYPE ferry_stream_compressed_batches_total counter\n");
    gw_buf_printf(out, "ferry_stream_compressed_batches_total{thread=\"loop\"} %llu\n",
                  (unsigned long long)atomic_load(&g->cz_batches[0]));
    gw_buf_printf(out, "ferry_stream_compressed_batches_total{thread=\"worker\"} %llu\n",
                  (unsigned long long)atomic_load(&g->cz_batches[1]));
    gw_buf_puts(out, "# TYPE ferry_stream_checkpoints_sent_total counter\n");
    gw_buf_printf(out, "ferry_stream_checkpoints_sent_total %llu\n",
                  (unsigned long long)atomic_load(&g->checkpoints_sent));
    gw_hist_render(out, &g->latency, "ferry_stream_commit_to_send_seconds",
                   "From storage commit to the checkpoint_complete line of a woken stream.");
}
