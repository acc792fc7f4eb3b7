/* ferry_sync.c -- the sync and upload threads: streaming, reconnects, tokens, write-back
 *
 * ferry_connect starts two threads, each with its own SQLite connection:
 *
 *   sync thread (sync_main): POST /sync/stream with libcurl. While a stream is open, the curl
 *   callback (on_stream_data) splits the NDJSON into lines and scans data lines
 *   (ferry__scan_line, no database); an apply thread (apply_main, one per stream) takes them
 *   from a 4-slot queue in order and applies them with the sync connection
 *   (ferry__oplog_apply_scanned, or ferry__oplog_line for other lines). Only the apply thread
 *   touches the sync state while it runs; the sync thread again after joining it. The loop:
 *
 *       CONNECTING --token_cb--> POST --200--> CONNECTED --lines--> ...
 *           ^                      |                        |
 *           |   401: token refused, ask again   end of body, network error, checksum
 *           +-- wait(backoff) <----+------------------------+ mismatch (RECONNECT),
 *           +-- at once <-- token_expires_in <= 30 (REFRESH: new token)
 *
 *   The backoff starts at retry_delay_ms, doubles up to 30 s, has ±20% jitter, and goes back to
 *   the start once a checkpoint arrived. The curl progress callback (at least once a second)
 *   aborts the transfer on disconnect or when the apply thread failed; the apply thread, when
 *   no line came for 100 ms, commits a 250 ms old data-line transaction and retries a
 *   checkpoint that was blocked by uploads (upload_done).
 *
 *   upload thread (upload_main): while ferry_crud has entries, POST the oldest upload_batch of
 *   them to /api/write; on 200 delete every entry the server answered for (applied, duplicate,
 *   stale, rejected: rejected ones go to on_rejected), on 401 get a new token, on 413 halve the
 *   batch, otherwise (503, network) wait and retry. When the queue is empty and the target
 *   write checkpoint is unknown, GET /write-checkpoint2.json and store it as the target unless
 *   a local write arrived meanwhile. Woken by local commits (the shared condition variable).
 */
#include "ferry_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t token_mu = PTHREAD_MUTEX_INITIALIZER;

/* A token for the next request (malloc'd), or NULL when the app has none now. */
static char *get_token(ferry_db_t *db)
{
    pthread_mutex_lock(&token_mu);
    if (!db->token || db->token_bad) {
        int expired = db->token_bad || db->token != NULL;
        char *t = db->token_cb(db->token_ud, expired);
        free(db->token);
        db->token = t && *t ? t : NULL;
        if (t && !*t) free(t);
        db->token_bad = 0;
    }
    char *out = db->token ? strdup(db->token) : NULL;
    pthread_mutex_unlock(&token_mu);
    return out;
}

static void token_refused(ferry_db_t *db, const char *tok)
{
    pthread_mutex_lock(&token_mu);
    if (db->token && tok && strcmp(db->token, tok) == 0) db->token_bad = 1;
    pthread_mutex_unlock(&token_mu);
}

static void set_error(ferry_db_t *db, const char *msg)
{
    pthread_mutex_lock(&db->mu);
    snprintf(db->status.last_error, sizeof db->status.last_error, "%.255s", msg ? msg : "");
    pthread_mutex_unlock(&db->mu);
}

static void set_state(ferry_db_t *db, ferry_state_t st)
{
    pthread_mutex_lock(&db->mu);
    int changed = db->status.state != st;
    db->status.state = st;
    if (st != FERRY_CONNECTED) db->status.downloading = 0;
    pthread_mutex_unlock(&db->mu);
    if (changed) ferry__status_changed(db);
}

/* Waits ms milliseconds or until stop; returns 1 when stopping. */
static int wait_ms(ferry_db_t *db, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&db->mu);
    while (!atomic_load(&db->stop))
        if (pthread_cond_timedwait(&db->cond, &db->mu, &ts) != 0) break;
    pthread_mutex_unlock(&db->mu);
    return atomic_load(&db->stop);
}

static int jitter(int ms)
{
    unsigned r;
    sqlite3_randomness(sizeof r, &r);
    int span = ms / 5;
    return span > 0 ? ms - span + (int)(r % (unsigned)(2 * span + 1)) : ms;
}

static struct curl_slist *headers(const char *token)
{
    char auth[4096];
    snprintf(auth, sizeof auth, "Authorization: Token %s", token);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    struct curl_slist *h2 = h ? curl_slist_append(h, "Content-Type: application/json") : NULL;
    struct curl_slist *h3 =
        h2 ? curl_slist_append(h2, "x-user-agent: libferry/" FERRY_VERSION_STRING) : NULL;
    if (!h3) curl_slist_free_all(h);
    return h3;
}

/* ---- one stream per database file --------------------------------------------------------- */

int ferry__sync_lock(const char *path)
{
    size_t n = strlen(path) + sizeof "-sync.lock";
    char *lp = malloc(n);
    if (!lp) return FERRY_ENOMEM;
    snprintf(lp, n, "%s-sync.lock", path);
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(lp);
    if (fd < 0) return FERRY_EINVAL;
    int rc;
    while ((rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
    }
    if (rc != 0) {
        int busy = errno == EWOULDBLOCK;
        close(fd);
        return busy ? FERRY_ESTATE : FERRY_EINVAL;
    }
    return fd;
}

void ferry__sync_unlock(int fd)
{
    if (fd >= 0) close(fd); /* closing the descriptor releases the flock */
}

/* ---- the stream --------------------------------------------------------------------------- */

/* The lines of one stream pass from the curl thread to the apply thread through a few slots:
 * the curl thread splits the body into lines and scans data lines (ferry__scan_line, no
 * database) into the next free slot; the apply thread applies the filled slots in order with the
 * sync connection. A bounded queue: the reader waits while every slot is full, so memory stays
 * at PIPE_SLOTS lines however fast the server sends. */
#define PIPE_SLOTS 4
enum { SLOT_DATA, SLOT_RAW, SLOT_END };

typedef struct slot {
    int kind;
    ferry_scan_t scan; /* SLOT_DATA */
    char *raw;         /* SLOT_RAW: a line for ferry__oplog_line (not a data line, or one the
                          scanner left to jansson) */
    size_t rawlen, rawcap;
} slot_t;

typedef struct pipe {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* a slot was filled or freed, or the apply thread failed */
    slot_t slots[PIPE_SLOTS];
    size_t head, count; /* filled slots: head .. head + count - 1 (mod PIPE_SLOTS) */
    int failed;         /* a line ended the iteration: the reader stops, the rest is dropped */
    int result;         /* that line's result (apply thread) */
    int got_checkpoint; /* apply thread */
    pthread_t thread;
} pipe_t;

typedef struct stream {
    ferry_db_t *db;
    CURL *h;
    char *buf;
    size_t len, cap;
    long status;
    int result; /* first non-zero FERRY_LINE_* or error from a line */
    int got_checkpoint;
    int resubscribe; /* ended because the subscriptions changed: reconnect at once */
    char errbody[512];
    size_t errlen;
    pipe_t *pipe; /* NULL: lines are applied on the curl thread (no second thread) */
} stream_t;

static void update_caught_up(ferry_db_t *db)
{
    ferry_sync_t *s = &db->sync;
    pthread_mutex_lock(&db->mu);
    db->caught_up = s->have_cp && s->complete_seen && !s->pending && s->applied_cp == s->cp_last_op;
    if (db->caught_up) db->status.last_error[0] = 0;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->mu);
}

static void try_pending(ferry_db_t *db);

/* Curl thread: the next free slot, waiting while all are full; NULL once the apply thread
 * failed. Returns with the slot owned by the caller until pipe_publish. */
static slot_t *pipe_next(pipe_t *pp)
{
    pthread_mutex_lock(&pp->mu);
    while (pp->count == PIPE_SLOTS && !pp->failed)
        pthread_cond_wait(&pp->cond, &pp->mu);
    slot_t *sl = pp->failed ? NULL : &pp->slots[(pp->head + pp->count) % PIPE_SLOTS];
    pthread_mutex_unlock(&pp->mu);
    return sl;
}

static void pipe_publish(pipe_t *pp)
{
    pthread_mutex_lock(&pp->mu);
    pp->count++;
    pthread_cond_broadcast(&pp->cond);
    pthread_mutex_unlock(&pp->mu);
}

/* Curl thread: one line into the queue; 0, FERRY_ENOMEM, or 1 when the apply thread failed
 * (the transfer ends; the apply thread's result counts). */
static int pipe_push(pipe_t *pp, const char *line, size_t len)
{
    slot_t *sl = pipe_next(pp);
    if (!sl) return 1;
    if (ferry__scan_line(&sl->scan, line, len) == 0) {
        sl->kind = SLOT_DATA;
    } else {
        if (len + 1 > sl->rawcap) {
            char *nr = realloc(sl->raw, len + 1);
            if (!nr) return FERRY_ENOMEM;
            sl->raw = nr;
            sl->rawcap = len + 1;
        }
        memcpy(sl->raw, line, len);
        sl->rawlen = len;
        sl->kind = SLOT_RAW;
    }
    pipe_publish(pp);
    return 0;
}

/* The apply thread: applies filled slots in order. While no line arrives it commits a data-line
 * transaction that is 250 ms old (a stalled stream must not keep the write lock) and retries a
 * checkpoint that uploads held back, at least every 100 ms. */
static void *apply_main(void *arg)
{
    stream_t *st = arg;
    pipe_t *pp = st->pipe;
    ferry_db_t *db = st->db;
    pthread_setname_np(pthread_self(), "ferry-apply");
    for (;;) {
        pthread_mutex_lock(&pp->mu);
        while (pp->count == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 100000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&pp->cond, &pp->mu, &ts) != 0 && pp->count == 0 &&
                !pp->failed) {
                pthread_mutex_unlock(&pp->mu);
                if (ferry__oplog_flush_due(&db->sync) != 0) {
                    pthread_mutex_lock(&pp->mu);
                    pp->failed = 1;
                    pp->result = FERRY_ESQLITE;
                    pthread_cond_broadcast(&pp->cond);
                    continue;
                }
                try_pending(db);
                pthread_mutex_lock(&pp->mu);
            }
        }
        slot_t *sl = &pp->slots[pp->head];
        int failed = pp->failed;
        pthread_mutex_unlock(&pp->mu);
        if (sl->kind == SLOT_END) break;
        if (!failed) {
            int rc = sl->kind == SLOT_DATA ? ferry__oplog_apply_scanned(db, &db->sync, &sl->scan)
                                           : ferry__oplog_line(db, &db->sync, sl->raw, sl->rawlen);
            if (db->sync.have_cp) pp->got_checkpoint = 1;
            update_caught_up(db);
            if (rc != 0) {
                pthread_mutex_lock(&pp->mu);
                pp->failed = 1;
                pp->result = rc;
                pthread_mutex_unlock(&pp->mu);
            }
        }
        /* one large line must not keep its buffers large */
        if (sl->scan.arena_cap > (1u << 22)) ferry__scan_free(&sl->scan);
        if (sl->rawcap > (1u << 22)) {
            free(sl->raw);
            sl->raw = NULL;
            sl->rawcap = 0;
        }
        pthread_mutex_lock(&pp->mu);
        pp->head = (pp->head + 1) % PIPE_SLOTS;
        pp->count--;
        pthread_cond_broadcast(&pp->cond);
        pthread_mutex_unlock(&pp->mu);
    }
    return NULL;
}

/* Starts the apply thread; NULL when it cannot (lines are then applied on the curl thread). */
static pipe_t *pipe_start(stream_t *st)
{
    pipe_t *pp = calloc(1, sizeof *pp);
    if (!pp) return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&pp->mu, NULL);
    pthread_cond_init(&pp->cond, &ca);
    pthread_condattr_destroy(&ca);
    st->pipe = pp;
    if (pthread_create(&pp->thread, NULL, apply_main, st) != 0) {
        pthread_cond_destroy(&pp->cond);
        pthread_mutex_destroy(&pp->mu);
        free(pp);
        st->pipe = NULL;
    }
    return st->pipe;
}

/* After the transfer: the apply thread applies what is queued, then ends; its result and
 * checkpoint flag become the stream's. */
static void pipe_stop(stream_t *st)
{
    pipe_t *pp = st->pipe;
    if (!pp) return;
    slot_t *sl;
    pthread_mutex_lock(&pp->mu);
    while (pp->count == PIPE_SLOTS)
        pthread_cond_wait(&pp->cond, &pp->mu);
    sl = &pp->slots[(pp->head + pp->count) % PIPE_SLOTS];
    pthread_mutex_unlock(&pp->mu);
    sl->kind = SLOT_END;
    pipe_publish(pp);
    pthread_join(pp->thread, NULL);
    if (pp->result && st->result >= 0) st->result = pp->result;
    if (pp->got_checkpoint) st->got_checkpoint = 1;
    for (int i = 0; i < PIPE_SLOTS; i++) {
        ferry__scan_free(&pp->slots[i].scan);
        free(pp->slots[i].raw);
    }
    pthread_cond_destroy(&pp->cond);
    pthread_mutex_destroy(&pp->mu);
    free(pp);
    st->pipe = NULL;
}

/* Appends to the partial line in st->buf; -1 (result FERRY_ENOMEM) when it cannot grow. */
static int buf_append(stream_t *st, const char *p, size_t n)
{
    if (st->len + n > st->cap) {
        size_t cap = st->cap ? st->cap : 65536;
        while (cap < st->len + n)
            cap *= 2;
        char *nb = realloc(st->buf, cap);
        if (!nb) {
            st->result = FERRY_ENOMEM;
            return -1;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, p, n);
    st->len += n;
    return 0;
}

/* One complete line: queued for the apply thread, or applied here without one; non-zero (in
 * st->result) ends the iteration. */
static int stream_line(stream_t *st, const char *line, size_t len)
{
    int rc;
    if (st->pipe) {
        rc = pipe_push(st->pipe, line, len);
    } else {
        rc = ferry__oplog_line(st->db, &st->db->sync, line, len);
        if (st->db->sync.have_cp) st->got_checkpoint = 1;
        update_caught_up(st->db);
    }
    if (rc != 0) st->result = rc;
    return rc;
}

static size_t on_stream_data(char *p, size_t size, size_t nmemb, void *ud)
{
    stream_t *st = ud;
    size_t n = size * nmemb;
    if (st->status == 0) {
        curl_easy_getinfo(st->h, CURLINFO_RESPONSE_CODE, &st->status);
        if (st->status == 200) set_state(st->db, FERRY_CONNECTED);
    }
    if (st->status != 200) {
        size_t k =
            n < sizeof st->errbody - 1 - st->errlen ? n : sizeof st->errbody - 1 - st->errlen;
        memcpy(st->errbody + st->errlen, p, k);
        st->errlen += k;
        st->errbody[st->errlen] = 0;
        return n;
    }
    /* complete lines are handled where curl put them; only a line split across chunks is
     * assembled in st->buf (copying and searching the whole buffer on every chunk made the
     * cost quadratic in the line length, and the lines of an initial sync are ~250 KB) */
    const char *q = p, *end = p + n;
    if (st->len) {
        const char *nl = memchr(q, '\n', n);
        size_t take = nl ? (size_t)(nl - q) : n;
        if (buf_append(st, q, take)) return 0;
        if (!nl) return n;
        q = nl + 1;
        size_t ll = st->len;
        st->len = 0;
        if (stream_line(st, st->buf, ll)) return 0; /* end this iteration */
    }
    for (;;) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        if (!nl) break;
        if (stream_line(st, q, (size_t)(nl - q))) return 0;
        q = nl + 1;
    }
    /* keep the buffer from staying huge after one big line */
    if (st->cap > (1u << 22)) {
        free(st->buf);
        st->buf = NULL;
        st->cap = 0;
    }
    if (q < end && buf_append(st, q, (size_t)(end - q))) return 0;
    return n;
}

static void try_pending(ferry_db_t *db)
{
    if (atomic_exchange(&db->upload_done, 0)) {
        int rc = ferry__publish_try_pending(db, &db->sync);
        if (rc < 0) set_error(db, db->sync.errmsg);
        if (rc > 0) ferry__status_changed(db);
        update_caught_up(db);
        ferry__oplog_checkpoint(&db->sync);
    }
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    stream_t *st = ud;
    if (atomic_load(&st->db->stop)) return 1;
    if (atomic_load(&st->db->subs_changed)) { /* a new request with the new subscriptions */
        st->resubscribe = 1;
        return 1;
    }
    if (st->pipe) { /* the apply thread flushes and retries; only end when it failed */
        pthread_mutex_lock(&st->pipe->mu);
        int failed = st->pipe->failed;
        pthread_mutex_unlock(&st->pipe->mu);
        return failed;
    }
    /* a stalled stream must not keep the write lock: commit the lines stored so far */
    if (ferry__oplog_flush_due(&st->db->sync) != 0) {
        st->result = FERRY_ESQLITE;
        return 1;
    }
    if (st->status == 200) try_pending(st->db);
    return 0;
}

/* One stream iteration; returns the delay before the next one in ms (0: at once). */
static int stream_once(ferry_db_t *db, int *backoff)
{
    char msg[512];
    set_state(db, FERRY_CONNECTING);
    if (db->sync_lock_fd == -1) {
        int fd = ferry__sync_lock(db->path);
        if (fd == FERRY_ESTATE) {
            set_error(db,
                      "another connection is syncing this database file; waiting for it to end");
            return *backoff;
        }
        db->sync_lock_fd = fd >= 0 ? fd : -2; /* -2: no lock file possible, sync unlocked */
    }
    char *token = get_token(db);
    if (!token) {
        set_error(db, "no token: the token callback returned none");
        return *backoff;
    }
    ferry__oplog_reset_connection(&db->sync);
    atomic_store(&db->subs_changed, 0); /* the body below carries every change until now */
    char *body = ferry__request_body(db, &db->sync);
    char url[2048];
    snprintf(url, sizeof url, "%s/sync/stream", db->endpoint);
    stream_t st = {.db = db};
    struct curl_slist *hdr = headers(token);
    st.h = curl_easy_init();
    if (!body || !hdr || !st.h) {
        free(body);
        free(token);
        curl_slist_free_all(hdr);
        curl_easy_cleanup(st.h);
        set_error(db, "out of memory");
        return *backoff;
    }
    curl_easy_setopt(st.h, CURLOPT_URL, url);
    curl_easy_setopt(st.h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(st.h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(st.h, CURLOPT_WRITEFUNCTION, on_stream_data);
    curl_easy_setopt(st.h, CURLOPT_BUFFERSIZE, 262144L); /* fewer, larger chunks of lines */
    curl_easy_setopt(st.h, CURLOPT_WRITEDATA, &st);
    curl_easy_setopt(st.h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(st.h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(st.h, CURLOPT_XFERINFODATA, &st);
    curl_easy_setopt(st.h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(st.h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(st.h, CURLOPT_LOW_SPEED_LIMIT, 1L); /* keepalives come every ~20 s */
    curl_easy_setopt(st.h, CURLOPT_LOW_SPEED_TIME, 60L);
    /* every encoding this libcurl decodes (zstd, gzip, …): ferry compresses streams, flushed at
     * every batch of lines, so nothing waits in the decoder either */
    curl_easy_setopt(st.h, CURLOPT_ACCEPT_ENCODING, "");
    pipe_start(&st);
    CURLcode cc = curl_easy_perform(st.h);
    pipe_stop(&st);
    int frc = ferry__oplog_flush(&db->sync);
    if (frc && st.result >= 0) st.result = frc;
    if (st.status == 0) curl_easy_getinfo(st.h, CURLINFO_RESPONSE_CODE, &st.status);
    curl_easy_cleanup(st.h);
    curl_slist_free_all(hdr);
    free(body);
    free(st.buf);
    int delay = *backoff;
    if (st.got_checkpoint) *backoff = db->opt.retry_delay_ms;
    if (atomic_load(&db->stop)) {
        free(token);
        return 0;
    }
    if (st.resubscribe && st.result >= 0) {
        delay = 0; /* not an error: the subscriptions changed */
    } else if (st.result == FERRY_LINE_REFRESH) {
        token_refused(db, token);
        delay = 0;
    } else if (st.result == FERRY_LINE_RECONNECT) {
        set_error(db, db->sync.errmsg);
        delay = db->opt.retry_delay_ms;
    } else if (st.result < 0) {
        set_error(db, db->sync.errmsg[0] ? db->sync.errmsg : ferry_strerror(st.result));
    } else if (st.status == 401) {
        token_refused(db, token);
        snprintf(msg, sizeof msg, "the server refused the token: %.200s", st.errbody);
        set_error(db, msg);
    } else if (st.status != 200 && st.status != 0) {
        snprintf(msg, sizeof msg, "could not open the sync stream: HTTP %ld %.200s", st.status,
                 st.errbody);
        set_error(db, msg);
    } else if (cc != CURLE_OK) {
        snprintf(msg, sizeof msg, "could not stream from \"%.150s\": %.100s", url,
                 curl_easy_strerror(cc));
        set_error(db, msg);
    } else {
        set_error(db, "the server ended the sync stream");
    }
    free(token);
    if (delay > 0 && !st.got_checkpoint) {
        *backoff *= 2;
        if (*backoff > 30000) *backoff = 30000;
    }
    return delay;
}

static void *sync_main(void *arg)
{
    ferry_db_t *db = arg;
    int backoff = db->opt.retry_delay_ms;
    while (!atomic_load(&db->stop)) {
        int delay = stream_once(db, &backoff);
        set_state(db, FERRY_CONNECTING);
        pthread_mutex_lock(&db->mu);
        db->caught_up = 0;
        pthread_mutex_unlock(&db->mu);
        if (delay > 0) {
            int left = jitter(delay);
            while (left > 0 && !atomic_load(&db->stop)) {
                int step = left < 200 ? left : 200;
                if (wait_ms(db, step)) break;
                left -= step;
                try_pending(db);
            }
        }
    }
    ferry__sync_unlock(db->sync_lock_fd);
    db->sync_lock_fd = -1;
    set_state(db, FERRY_DISCONNECTED);
    return NULL;
}

/* ---- uploads ------------------------------------------------------------------------------- */

typedef struct resp {
    char *p;
    size_t len;
    int oom;
} resp_t;

static size_t on_resp(char *p, size_t size, size_t nmemb, void *ud)
{
    resp_t *r = ud;
    size_t n = size * nmemb;
    if (r->len + n > (1u << 24)) return 0;
    char *np = realloc(r->p, r->len + n + 1);
    if (!np) {
        r->oom = 1;
        return 0;
    }
    memcpy(np + r->len, p, n);
    r->p = np;
    r->len += n;
    r->p[r->len] = 0;
    return n;
}

static int on_upload_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    return atomic_load(&((ferry_db_t *)ud)->stop) ? 1 : 0;
}

/* A plain request; returns the HTTP status (0 on network error, message in msg). */
static long http(ferry_db_t *db, const char *token, const char *path, const char *body, resp_t *r,
                 char *msg, size_t msgcap)
{
    char url[2048];
    snprintf(url, sizeof url, "%s%s", db->endpoint, path);
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = headers(token);
    long status = 0;
    if (!h || !hdr) {
        snprintf(msg, msgcap, "out of memory");
        curl_easy_cleanup(h);
        curl_slist_free_all(hdr);
        return 0;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_resp);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_upload_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, db);
    CURLcode cc = curl_easy_perform(h);
    if (cc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(msg, msgcap, "could not reach \"%.150s\": %.100s", url, curl_easy_strerror(cc));
    curl_easy_cleanup(h);
    curl_slist_free_all(hdr);
    return status;
}

static int64_t queue_len(sqlite3 *c)
{
    sqlite3_stmt *st;
    int64_t n = -1;
    if (sqlite3_prepare_v2(c, "SELECT count(*) FROM ferry_crud", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    return n;
}

/* Posts one batch; returns the number of entries acknowledged, 0 when none (retry later), or
 * a negative code (401: FERRY_EAUTH; 413: FERRY_EINVAL). */
static int upload_batch(ferry_db_t *db, sqlite3 *c, int batch, char *msg, size_t msgcap)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c,
                           "SELECT id, tx_id, op, type, row_id, data, old, metadata FROM "
                           "ferry_crud ORDER BY id LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK) {
        snprintf(msg, msgcap, "could not read the upload queue: %s", sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    sqlite3_bind_int(st, 1, batch);
    json_t *arr = json_array();
    int n = 0;
    while (arr && sqlite3_step(st) == SQLITE_ROW) {
        const char *data = (const char *)sqlite3_column_text(st, 5);
        json_t *d = data ? json_loads(data, 0, NULL) : json_null();
        json_t *e =
            json_pack("{s:I,s:s,s:s,s:s,s:o}", "op_id", (json_int_t)sqlite3_column_int64(st, 0),
                      "op", (const char *)sqlite3_column_text(st, 2), "type",
                      (const char *)sqlite3_column_text(st, 3), "id",
                      (const char *)sqlite3_column_text(st, 4), "data", d ? d : json_null());
        const char *old = (const char *)sqlite3_column_text(st, 6);
        const char *meta = (const char *)sqlite3_column_text(st, 7);
        if (e && old) { /* "old" and "metadata" feed the server's merge strategies */
            json_t *o = json_loads(old, 0, NULL);
            if (json_is_object(o)) json_object_set(e, "old", o);
            json_decref(o);
        }
        if (e && meta) json_object_set_new(e, "metadata", json_string(meta));
        if (!e || json_array_append_new(arr, e)) {
            json_decref(arr);
            arr = NULL;
            break;
        }
        n++;
    }
    sqlite3_finalize(st);
    if (!arr) {
        snprintf(msg, msgcap, "out of memory");
        return FERRY_ENOMEM;
    }
    if (n == 0) {
        json_decref(arr);
        return 0;
    }
    json_t *req = json_pack("{s:s,s:o}", "client_id", db->client_id, "batch", arr);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    char *token = get_token(db);
    if (!body || !token) {
        free(body);
        free(token);
        snprintf(msg, msgcap,
                 token ? "out of memory" : "no token: the token callback returned none");
        return token ? FERRY_ENOMEM : FERRY_EAUTH;
    }
    resp_t r = {0};
    long status = http(db, token, "/api/write", body, &r, msg, msgcap);
    free(body);
    int acked = 0;
    if (status == 401) {
        token_refused(db, token);
        snprintf(msg, msgcap, "the server refused the token for /api/write");
        acked = FERRY_EAUTH;
    } else if (status == 413) {
        snprintf(msg, msgcap, "the upload batch was too large (HTTP 413)");
        acked = FERRY_EINVAL;
    } else if (status == 200) {
        json_t *root = json_loads(r.p ? r.p : "", 0, NULL);
        json_t *res = json_object_get(root, "results");
        size_t i;
        json_t *e;
        sqlite3_stmt *get = NULL, *del = NULL;
        int ok =
            json_is_array(res) && sqlite3_exec(c, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
        if (ok && (sqlite3_prepare_v2(c,
                                      "SELECT id, tx_id, op, type, row_id, data FROM ferry_crud "
                                      "WHERE id = ?",
                                      -1, &get, NULL) != SQLITE_OK ||
                   sqlite3_prepare_v2(c, "DELETE FROM ferry_crud WHERE id = ?", -1, &del, NULL) !=
                       SQLITE_OK))
            ok = 0;
        if (ok) json_array_foreach(res, i, e)
            {
                json_t *idv = json_object_get(e, "op_id");
                const char *stt = json_string_value(json_object_get(e, "status"));
                int64_t opid;
                if (json_is_integer(idv))
                    opid = json_integer_value(idv);
                else if (ferry__parse_id(idv, &opid))
                    continue;
                if (!stt || (strcmp(stt, "applied") && strcmp(stt, "duplicate") &&
                             strcmp(stt, "stale") && strcmp(stt, "rejected")))
                    continue;
                if (strcmp(stt, "rejected") == 0) {
                    sqlite3_bind_int64(get, 1, opid);
                    if (sqlite3_step(get) == SQLITE_ROW) {
                        ferry_crud_t ce = {0};
                        ce.op_id = opid;
                        ce.tx_id = sqlite3_column_int64(get, 1);
                        snprintf(ce.op, sizeof ce.op, "%s",
                                 (const char *)sqlite3_column_text(get, 2));
                        ce.type = (char *)sqlite3_column_text(get, 3);
                        ce.id = (char *)sqlite3_column_text(get, 4);
                        ce.data = (char *)sqlite3_column_text(get, 5);
                        const char *code = json_string_value(json_object_get(e, "code"));
                        const char *m = json_string_value(json_object_get(e, "message"));
                        pthread_mutex_lock(&db->mu);
                        db->rejected_total++;
                        pthread_mutex_unlock(&db->mu);
                        if (db->opt.on_rejected)
                            db->opt.on_rejected(db->opt.ud, &ce, code ? code : "rejected",
                                                m ? m : "");
                    }
                    sqlite3_reset(get);
                }
                sqlite3_bind_int64(del, 1, opid);
                if (sqlite3_step(del) == SQLITE_DONE) acked += sqlite3_changes(c);
                sqlite3_reset(del);
            }
        sqlite3_finalize(get);
        sqlite3_finalize(del);
        if (ok && sqlite3_exec(c, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(c, "ROLLBACK", NULL, NULL, NULL);
            acked = 0;
        }
        if (!ok) snprintf(msg, msgcap, "could not read the answer of /api/write");
        json_decref(root);
    } else if (status != 0) {
        snprintf(msg, msgcap, "could not upload: HTTP %ld %.200s", status, r.p ? r.p : "");
    }
    free(r.p);
    free(token);
    return acked;
}

/* Fetches a write checkpoint and stores it as the target unless a write arrived meanwhile.
 * Returns 0, or -1 (message in msg). */
static int fetch_write_checkpoint(ferry_db_t *db, sqlite3 *c, char *msg, size_t msgcap)
{
    char *token = get_token(db);
    if (!token) {
        snprintf(msg, msgcap, "no token: the token callback returned none");
        return -1;
    }
    char path[128];
    snprintf(path, sizeof path, "/write-checkpoint2.json?client_id=%s", db->client_id);
    resp_t r = {0};
    long status = http(db, token, path, NULL, &r, msg, msgcap);
    int rc = -1;
    if (status == 200) {
        json_t *root = json_loads(r.p ? r.p : "", 0, NULL);
        int64_t wcp;
        if (!ferry__parse_id(json_object_get(json_object_get(root, "data"), "write_checkpoint"),
                             &wcp)) {
            if (sqlite3_exec(c, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK) {
                if (queue_len(c) == 0 && ferry__kv_get_int(c, "target", -1) == FERRY_TARGET_UNKNOWN)
                    ferry__kv_set_int(c, "target", wcp);
                rc = sqlite3_exec(c, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
                if (rc) sqlite3_exec(c, "ROLLBACK", NULL, NULL, NULL);
            }
        } else {
            snprintf(msg, msgcap, "invalid answer from /write-checkpoint2.json");
        }
        json_decref(root);
    } else if (status == 401) {
        token_refused(db, token);
        snprintf(msg, msgcap, "the server refused the token for /write-checkpoint2.json");
    } else if (status != 0) {
        snprintf(msg, msgcap, "could not get a write checkpoint: HTTP %ld", status);
    }
    free(r.p);
    free(token);
    return rc;
}

static void *upload_main(void *arg)
{
    ferry_db_t *db = arg;
    sqlite3 *c = NULL;
    ferry_error_t err;
    char msg[300];
    if (ferry__open_conn(db->path, &c, NULL, &err) != 0) {
        set_error(db, err.message);
        return NULL;
    }
    int batch = db->opt.upload_batch;
    int backoff = db->opt.retry_delay_ms;
    while (!atomic_load(&db->stop)) {
        msg[0] = 0;
        pthread_mutex_lock(&db->mu);
        uint64_t commits = db->app_commits; /* every commit before this scan is seen by it */
        pthread_mutex_unlock(&db->mu);
        int64_t n = queue_len(c);
        int64_t target = ferry__kv_get_int(c, "target", -1);
        pthread_mutex_lock(&db->mu);
        int changed = db->status.upload_queue_length != n;
        db->status.upload_queue_length = n < 0 ? 0 : n;
        db->target = target;
        db->scanned_commits = commits;
        pthread_cond_broadcast(&db->cond);
        pthread_mutex_unlock(&db->mu);
        if (changed) ferry__status_changed(db);
        int delay = 0;
        if (n > 0) {
            int rc = upload_batch(db, c, batch, msg, sizeof msg);
            if (rc == FERRY_EINVAL && batch > 1) {
                batch /= 2;
            } else if (rc <= 0) {
                delay = backoff;
                backoff = backoff * 2 > 30000 ? 30000 : backoff * 2;
            } else {
                backoff = db->opt.retry_delay_ms;
            }
        } else if (n == 0 && target == FERRY_TARGET_UNKNOWN) {
            if (fetch_write_checkpoint(db, c, msg, sizeof msg) != 0) {
                delay = backoff;
                backoff = backoff * 2 > 30000 ? 30000 : backoff * 2;
            } else {
                backoff = db->opt.retry_delay_ms;
                atomic_store(&db->upload_done, 1);
            }
        } else {
            /* idle: wait for a local write (the commit hook broadcasts) */
            if (n == 0) atomic_store(&db->upload_done, 1);
            wait_ms(db, 1000);
            continue;
        }
        if (msg[0]) set_error(db, msg);
        if (delay > 0) wait_ms(db, jitter(delay));
    }
    sqlite3_close_v2(c);
    return NULL;
}

/* ---- public -------------------------------------------------------------------------------- */

int ferry_connect(ferry_db_t *db, const char *endpoint, ferry_token_cb token_cb, void *token_ud,
                  const ferry_options_t *options)
{
    if (!db || !endpoint || !*endpoint || !token_cb) return FERRY_EINVAL;
    size_t el = strlen(endpoint);
    if (endpoint[el - 1] == '/' || el > 1500) return FERRY_EINVAL;
    if (db->connected) return FERRY_ESTATE;
    ferry_options_t o = {0};
    if (options) o = *options;
    if (o.retry_delay_ms <= 0) o.retry_delay_ms = 1000;
    if (o.upload_batch <= 0) o.upload_batch = 100;
    db->endpoint = strdup(endpoint);
    db->params_json = o.params_json ? strdup(o.params_json) : NULL;
    if (!db->endpoint || (o.params_json && !db->params_json)) goto nomem;
    o.params_json = NULL;
    db->opt = o;
    db->token_cb = token_cb;
    db->token_ud = token_ud;
    atomic_store(&db->stop, 0);
    atomic_store(&db->upload_done, 1);
    ferry_error_t err;
    sqlite3 *c;
    if (ferry__open_conn(db->path, &c, NULL, &err) != 0) goto nomem;
    if (ferry__oplog_init(db, &db->sync, c) != 0) {
        sqlite3_close_v2(c);
        goto nomem;
    }
    db->sync.batch_ops = 20000;
    pthread_mutex_lock(&db->mu);
    db->caught_up = 0;
    db->target = -2;
    db->sync_lock_fd = -1;
    db->status.state = FERRY_CONNECTING;
    db->status.ops_received_total = 0;
    pthread_mutex_unlock(&db->mu);
    if (pthread_create(&db->sync_thread, NULL, sync_main, db) != 0) {
        ferry__oplog_free(&db->sync);
        sqlite3_close_v2(c);
        goto nomem;
    }
    if (pthread_create(&db->upload_thread, NULL, upload_main, db) != 0) {
        atomic_store(&db->stop, 1);
        pthread_join(db->sync_thread, NULL);
        ferry__oplog_free(&db->sync);
        sqlite3_close_v2(c);
        goto nomem;
    }
    db->connected = 1;
    return 0;
nomem:
    free(db->endpoint);
    free(db->params_json);
    db->endpoint = db->params_json = NULL;
    return FERRY_ENOMEM;
}

void ferry_disconnect(ferry_db_t *db)
{
    if (!db || !db->connected) return;
    atomic_store(&db->stop, 1);
    pthread_mutex_lock(&db->mu);
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->mu);
    pthread_join(db->sync_thread, NULL);
    pthread_join(db->upload_thread, NULL);
    sqlite3 *c = db->sync.conn;
    ferry__oplog_free(&db->sync);
    sqlite3_close_v2(c);
    db->sync.conn = NULL;
    free(db->endpoint);
    free(db->params_json);
    free(db->token);
    db->endpoint = db->params_json = db->token = NULL;
    db->token_bad = 0;
    db->connected = 0;
    pthread_mutex_lock(&db->mu);
    db->status.state = FERRY_DISCONNECTED;
    db->status.downloading = 0;
    db->caught_up = 0;
    pthread_mutex_unlock(&db->mu);
}

int ferry__sync_wait(ferry_db_t *db, int timeout_ms, int (*done)(ferry_db_t *))
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout_ms >= 0) {
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&db->mu);
    while (!done(db)) {
        if (timeout_ms < 0)
            pthread_cond_wait(&db->cond, &db->mu);
        else if (pthread_cond_timedwait(&db->cond, &db->mu, &ts) != 0) {
            rc = done(db) ? 0 : FERRY_ETIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

static int first_sync_done(ferry_db_t *db)
{
    return db->synced_ever;
}

static int synced_done(ferry_db_t *db)
{
    return db->caught_up && db->scanned_commits >= db->app_commits &&
           db->status.upload_queue_length == 0 && db->target != -2 &&
           db->target != FERRY_TARGET_UNKNOWN &&
           (db->target < 0 || db->conn_applied_write_cp >= db->target);
}

int ferry_wait_for_first_sync(ferry_db_t *db, int timeout_ms)
{
    if (!db) return FERRY_EINVAL;
    return ferry__sync_wait(db, timeout_ms, first_sync_done);
}

int ferry_wait_synced(ferry_db_t *db, int timeout_ms)
{
    if (!db) return FERRY_EINVAL;
    if (!db->connected) return FERRY_ESTATE;
    return ferry__sync_wait(db, timeout_ms, synced_done);
}
