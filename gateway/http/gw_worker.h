/* gw_worker.h -- a small pool of threads with their own Postgres connections
 *
 * Event loops never block on Postgres. A handler fills a gw_job_t and submits it; a worker thread
 * runs job->run(job, conn) with its own libpq connection (conn is NULL when Postgres cannot be
 * reached: the job must answer 503 then), then hands the job back to the loop thread it came from,
 * where job->done(job) runs (send the response there). The pool reconnects broken connections
 * before the next job. Jobs are served in submission order.
 *
 * Deadline (postgres.timeout): a job must be answered within timeout seconds of its submission.
 * A job still queued at its deadline runs with conn NULL (it answers 503 at once); a job whose
 * run is still waiting on Postgres at its deadline has its connection cut by the pool's watchdog
 * (shutdown(2) of the socket), so the libpq call fails at once and the job answers 503 instead of
 * hanging on a dead connection. Connections are opened with that timeout (connect_timeout, TCP
 * keepalives, TCP_USER_TIMEOUT: gw_pg_connect_timeout). Start-up work no request waits for
 * (gw_workers_submit_background) has no deadline.
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
#include <stdint.h>

typedef struct gw_workers gw_workers_t;
typedef struct gw_job gw_job_t;

struct gw_job {
    h2o_multithread_message_t super; /* internal: the way back to the loop thread */
    gw_job_t *next;                  /* internal: the queue */
    h2o_multithread_receiver_t *reply_to;
    void (*run)(gw_job_t *job, PGconn *conn); /* on a worker thread */
    void (*done)(gw_job_t *job);              /* on the submitting loop thread */
    void *ud;
    uint64_t deadline_ms; /* internal: CLOCK_MONOTONIC ms by which the job must be answered */
};

/**
 * Create n workers connecting to uri (connections open lazily, on the first job) whose jobs are
 * answered within timeout_s seconds (see "Deadline" above), and register their reply receivers
 * on every loop thread of http (call before gw_http_start). Returns 0 and *out, or GW_ESYS.
 */
int gw_workers_create(const char *uri, size_t n, int timeout_s, gw_http_t *http, gw_workers_t **out,
                      gw_err_t *err);

/** Milliseconds left before job's deadline (0 when it passed); for a run() that waits. */
int gw_job_remaining_ms(const gw_job_t *job);

/** Whether job's deadline passed (its connection may have been cut: do not retry on it). */
int gw_job_expired(const gw_job_t *job);

/** Queue job from a loop thread (ctx is that thread's context). */
void gw_workers_submit(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job);

/** Queue a job no request waits for (start-up work): like gw_workers_submit, without a
 *  deadline (its connection is never cut; it still uses the timeouts of gw_pg_connect_timeout). */
void gw_workers_submit_background(gw_workers_t *w, h2o_context_t *ctx, gw_job_t *job);

/**
 * Stop and join the workers (queued jobs still run; replies to loops that already ended are
 * dropped). Call after gw_http_shutdown(). NULL is fine.
 */
void gw_workers_destroy(gw_workers_t *w);

#endif
