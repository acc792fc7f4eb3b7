/* gw_worker.c -- Postgres worker threads for the event loops (see gw_worker.h)
 *
 * One mutex-protected FIFO feeds every worker. Replies travel back through an h2o multithread
 * receiver per loop thread, registered when that thread starts (gw_http_on_thread_start).
 *
 * Deadlines: every job carries the time by which it must be answered (its submission plus
 * postgres.timeout). A worker that takes a job past its deadline runs it with conn NULL. While a
 * job runs, its worker publishes (under the pool's lock) the deadline and a duplicate of its
 * connection's socket; the watchdog thread wakes at the earliest published deadline and, for a
 * worker still busy then, calls shutdown(2) on that duplicate. The duplicate shares the socket
 * with libpq's descriptor, so the blocked libpq call returns an error at once, while the
 * descriptor number the watchdog holds can never have been reused for another file (the worker
 * closes it only after taking it back under the lock). Invariant: a worker's dup_fd is >= 0
 * only between publishing and withdrawing it, both under lock.
 */
#include "http/gw_worker.h"
#include "base/gw_log.h"
#include "pg/gw_pg.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

typedef struct wslot {
    struct gw_workers *pool;
    size_t index;
    pthread_t tid;
    uint64_t deadline_ms; /* of the running job; 0 when idle (guarded by pool->lock) */
    int dup_fd;           /* duplicate of the running job's socket, or -1 (guarded) */
    int cut;              /* the watchdog cut this job's connection (guarded) */
} wslot_t;

struct gw_workers {
    char *uri;
    gw_http_t *http;
    int timeout_s;
    size_t n;
    wslot_t *slots;
    pthread_t watchdog;
    int watchdog_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;    /* jobs queued, or stopping */
    pthread_cond_t wd_cond; /* a deadline was published, or stopping */
    gw_job_t *head, *tail;
    int stopping;
    size_t nrx;
    h2o_multithread_receiver_t *rx; /* one per loop thread */
    int *rx_live;                   /* guarded by lock: the loop can still take replies */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int gw_job_remaining_ms(const gw_job_t *job)
{
    if (job->deadline_ms == 0) return 0x7fffffff; /* no deadline */
    uint64_t now = now_ms();
    if (job->deadline_ms <= now) return 0;
    uint64_t left = job->deadline_ms - now;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

int gw_job_expired(const gw_job_t *job)
{
    return job->deadline_ms != 0 && now_ms() >= job->deadline_ms;
}

static void on_reply(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    (void)rx;
    while (!h2o_linklist_is_empty(messages)) {
        gw_job_t *job = H2O_STRUCT_FROM_MEMBER(gw_job_t, super.link, messages->next);
        h2o_linklist_unlink(&job->super.link);
        job->done(job);
    }
}

static void on_thread_start(h2o_context_t *ctx, size_t index, void *ud)
{
    gw_workers_t *w = ud;
    if (index >= w->nrx) return;
    h2o_multithread_register_receiver(ctx->queue, &w->rx[index], on_reply);
    pthread_mutex_lock(&w->lock);
    w->rx_live[index] = 1;
    pthread_mutex_unlock(&w->lock);
}

/* The loop is about to dispose its context: no more replies to it (late ones are dropped). */
static void on_thread_stop(h2o_context_t *ctx, size_t index, void *ud)
{
    gw_workers_t *w = ud;
    (void)ctx;
    if (index >= w->nrx) return;
    pthread_mutex_lock(&w->lock);
    h2o_multithread_receiver_t *rx = &w->rx[index];
    if (w->rx_live[index]) {
        w->rx_live[index] = 0;
        while (!h2o_linklist_is_empty(&rx->_messages))
            h2o_linklist_unlink(rx->_messages.next);
        h2o_multithread_unregister_receiver(rx->queue, rx);
    }
    pthread_mutex_unlock(&w->lock);
}

/* ---- the watchdog ---- */

static void *watchdog_main(void *arg)
{
    gw_workers_t *w = arg;
    pthread_setname_np(pthread_self(), "ferry-wdog");
    pthread_mutex_lock(&w->lock);
    while (!w->stopping) {
        uint64_t now = now_ms(), next = 0;
        for (size_t i = 0; i < w->n; i++) {
            wslot_t *s = &w->slots[i];
            if (s->deadline_ms == 0 || s->cut) continue;
            if (s->deadline_ms <= now) {
                /* the running job's Postgres call fails at once; the job answers 503 */
                if (s->dup_fd >= 0) shutdown(s->dup_fd, SHUT_RDWR);
                s->cut = 1;
                gw_warn("worker",
                        "postgres did not answer within postgres.timeout; closed the connection",
                        "worker=%zu timeout_s=%d", i, w->timeout_s);
            } else if (next == 0 || s->deadline_ms < next) {
                next = s->deadline_ms;
            }
        }
        if (next == 0) {
            pthread_cond_wait(&w->wd_cond, &w->lock);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t wait = next - now;
        until.tv_sec += (time_t)(wait / 1000);
        until.tv_nsec += (long)(wait % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&w->wd_cond, &w->lock, &until);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- the workers ---- */

static void *worker_main(void *arg)
{
    wslot_t *slot = arg;
    gw_workers_t *w = slot->pool;
    PGconn *conn = NULL;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->cond, &w->lock);
        gw_job_t *job = w->head;
        if (job != NULL) {
            w->head = job->next;
            if (w->head == NULL) w->tail = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        if (job == NULL) break; /* stopping and nothing queued */
        if (conn != NULL && PQstatus(conn) != CONNECTION_OK) {
            PQfinish(conn);
            conn = NULL;
        }
        int left = gw_job_remaining_ms(job);
        if (conn == NULL && !w->stopping && left > 0) {
            gw_err_t err;
            /* connecting counts against the job's time (libpq takes at least 2 s) */
            conn = gw_pg_connect_timeout(
                w->uri, 0, "ferry worker",
                left / 1000 < w->timeout_s ? left / 1000 + 1 : w->timeout_s, &err);
            if (conn == NULL) {
                char msg[512];
                gw_warn("worker", "could not connect to postgres", "error=\"%s\"",
                        gw_err_format(&err, msg, sizeof(msg)));
            }
            left = gw_job_remaining_ms(job);
        }
        PGconn *use = left > 0 ? conn : NULL; /* too late: the job answers 503 at once */
        pthread_mutex_lock(&w->lock);
        slot->deadline_ms = job->deadline_ms;
        slot->cut = 0;
        slot->dup_fd = use != NULL && PQsocket(use) >= 0 ? dup(PQsocket(use)) : -1;
        pthread_cond_signal(&w->wd_cond);
        pthread_mutex_unlock(&w->lock);
        job->run(job, use);
        pthread_mutex_lock(&w->lock);
        int fd = slot->dup_fd, cut = slot->cut;
        slot->dup_fd = -1;
        slot->deadline_ms = 0;
        pthread_mutex_unlock(&w->lock);
        if (fd >= 0) close(fd);
        if (conn != NULL && (cut || PQstatus(conn) != CONNECTION_OK)) {
            PQfinish(conn);
            conn = NULL;
        }
        /* the reply goes back only while that loop still runs */
        pthread_mutex_lock(&w->lock);
        size_t idx = (size_t)(job->reply_to - w->rx);
        if (idx < w->nrx && w->rx_live[idx])
            h2o_multithread_send_message(job->reply_to, &job->super);
        pthread_mutex_unlock(&w->lock);
    }
    if (conn != NULL) PQfinish(conn);
    return NULL;
}

int gw_workers_create(const char *uri, size_t n, int timeout_s, gw_http_t *http, gw_workers_t **out,
                      gw_err_t *err)
{
    gw_workers_t *w = gw_xcalloc(1, sizeof(*w));
    w->uri = gw_xstrdup(uri);
    w->http = http;
    w->timeout_s = timeout_s > 0 ? timeout_s : 10;
    w->nrx = gw_http_threads(http);
    w->rx = gw_xcalloc(w->nrx, sizeof(h2o_multithread_receiver_t));
    w->rx_live = gw_xcalloc(w->nrx, sizeof(int));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wd_cond, &ca);
    pthread_condattr_destroy(&ca);
    gw_http_on_thread_start(http, on_thread_start, w);
    gw_http_on_thread_stop(http, on_thread_stop, w);
    size_t want = n > 0 ? n : 1;
    w->slots = gw_xcalloc(want, sizeof(wslot_t));
    if (pthread_create(&w->watchdog, NULL, watchdog_main, w) != 0) {
        gw_workers_destroy(w);
        return gw_err_set(err, GW_ESYS, "worker", "could not start the worker watchdog");
    }
    w->watchdog_started = 1;
    for (size_t i = 0; i < want; i++) {
        wslot_t *s = &w->slots[i];
        s->pool = w;
        s->index = i;
        s->dup_fd = -1;
        if (pthread_create(&s->tid, NULL, worker_main, s) != 0) {
            gw_workers_destroy(w);
            return gw_err_set(err, GW_ESYS, "worker", "could not start worker threads");
        }
        w->n = i + 1;
    }
    *out = w;
    return 0;
}

static void submit(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job, uint64_t deadline_ms)
{
    size_t idx = gw_http_thread_index(w->http, ctx);
    job->reply_to = &w->rx[idx < w->nrx ? idx : 0];
    job->next = NULL;
    job->deadline_ms = deadline_ms;
    memset(&job->super, 0, sizeof(job->super));
    pthread_mutex_lock(&w->lock);
    if (w->tail != NULL)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

void gw_workers_submit(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job)
{
    submit(w, ctx, job, now_ms() + (uint64_t)w->timeout_s * 1000);
}

void gw_workers_submit_background(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job)
{
    submit(w, ctx, job, 0);
}

void gw_workers_destroy(gw_workers_t *w)
{
    if (w == NULL) return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_cond_broadcast(&w->wd_cond);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < w->n; i++)
        pthread_join(w->slots[i].tid, NULL);
    if (w->watchdog_started) pthread_join(w->watchdog, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    pthread_cond_destroy(&w->wd_cond);
    free(w->slots);
    free(w->rx);
    free(w->rx_live);
    free(w->uri);
    free(w);
}
