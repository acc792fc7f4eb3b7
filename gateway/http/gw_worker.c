/* gw_worker.c -- Postgres worker threads for the event loops (see gw_worker.h)
 *
 * One mutex-protected FIFO feeds every worker. Replies travel back through an h2o multithread
 * receiver per loop thread, registered when that thread starts (gw_http_on_thread_start).
 */
#include "http/gw_worker.h"
#include "base/gw_log.h"
#include "pg/gw_pg.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct gw_workers {
    char *uri;
    gw_http_t *http;
    size_t n;
    pthread_t *tids;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    gw_job_t *head, *tail;
    int stopping;
    size_t nrx;
    h2o_multithread_receiver_t *rx; /* one per loop thread */
    int *rx_live;                   /* guarded by lock: the loop can still take replies */
};

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

static void *worker_main(void *arg)
{
    gw_workers_t *w = arg;
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
        if (conn == NULL && !w->stopping) {
            gw_err_t err;
            conn = gw_pg_connect(w->uri, 0, "ferry worker", &err);
            if (conn == NULL) {
                char msg[512];
                gw_warn("worker", "could not connect to postgres", "error=\"%s\"",
                        gw_err_format(&err, msg, sizeof(msg)));
            }
        }
        job->run(job, conn);
        if (conn != NULL && PQstatus(conn) != CONNECTION_OK) {
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

int gw_workers_create(const char *uri, size_t n, gw_http_t *http, gw_workers_t **out, gw_err_t *err)
{
    gw_workers_t *w = gw_xcalloc(1, sizeof(*w));
    w->uri = gw_xstrdup(uri);
    w->http = http;
    w->n = n > 0 ? n : 1;
    w->nrx = gw_http_threads(http);
    w->rx = gw_xcalloc(w->nrx, sizeof(h2o_multithread_receiver_t));
    w->rx_live = gw_xcalloc(w->nrx, sizeof(int));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    gw_http_on_thread_start(http, on_thread_start, w);
    gw_http_on_thread_stop(http, on_thread_stop, w);
    w->tids = gw_xcalloc(w->n, sizeof(pthread_t));
    for (size_t i = 0; i < w->n; i++) {
        if (pthread_create(&w->tids[i], NULL, worker_main, w) != 0) {
            w->n = i;
            gw_workers_destroy(w);
            return gw_err_set(err, GW_ESYS, "worker", "could not start worker threads");
        }
    }
    *out = w;
    return 0;
}

void gw_workers_submit(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job)
{
    size_t idx = gw_http_thread_index(w->http, ctx);
    job->reply_to = &w->rx[idx < w->nrx ? idx : 0];
    job->next = NULL;
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

void gw_workers_destroy(gw_workers_t *w)
{
    if (w == NULL) return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < w->n; i++)
        pthread_join(w->tids[i], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->tids);
    free(w->rx);
    free(w->rx_live);
    free(w->uri);
    free(w);
}
