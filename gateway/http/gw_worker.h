/* gw_worker.h -- a small pool of threads with their own Postgres connections
 *
 * Event loops never block on Postgres. A handler fills a gw_job_t and submits it; a worker thread
 * runs job->run(job, conn) with its own libpq connection (conn is NULL when Postgres cannot be
 * reached: the job must answer 503 then), then hands the job back to the loop thread it came from,
 * where job->done(job) runs (send the response there). The pool reconnects broken connections
 * before the next job. Jobs are served in submission order.
 *
 * Lifetimes: the submitter owns the job (usually allocated from req->pool, which outlives the
 * round trip because the request stays open until done() responds).
 */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include "base/gw_err.h"
#include "http/gw_http.h"

#include <h2o.h>
#include <libpq-fe.h>

typedef struct gw_workers gw_workers_t;
typedef struct gw_job gw_job_t;

struct gw_job {
    h2o_multithread_message_t super; /* internal: the way back to the loop thread */
    gw_job_t *next;                  /* internal: the queue */
    h2o_multithread_receiver_t *reply_to;
    void (*run)(gw_job_t *job, PGconn *conn); /* on a worker thread */
    void (*done)(gw_job_t *job);              /* on the submitting loop thread */
    void *ud;
};

/**
 * Create n workers connecting to uri (connections open lazily, on the first job) and register
 * their reply receivers on every loop thread of http (call before gw_http_start). Returns 0 and
 * *out, or GW_ESYS.
 */
int gw_workers_create(const char *uri, size_t n, gw_http_t *http, gw_workers_t **out,
                      gw_err_t *err);

/** Queue job from a loop thread (ctx is that thread's context). */
void gw_workers_submit(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job);

/**
 * Stop and join the workers (queued jobs still run; replies to loops that already ended are
 * dropped). Call after gw_http_shutdown(). NULL is fine.
 */
void gw_workers_destroy(gw_workers_t *w);

#endif
