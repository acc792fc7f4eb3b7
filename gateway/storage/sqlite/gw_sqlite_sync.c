/* gw_sqlite_sync.c -- the SQLite backend's syncer (durable commits, publication) and checkpointer
 *
 * Syncer. Commits run with synchronous=NORMAL: COMMIT appends to the WAL without syncing it. Each
 * commit queues a durable job (its checkpoint and what it changed, copied); the syncer thread
 * takes every queued job, syncs the WAL once for all of them (group commit), and only then
 * publishes each job in order: the hook (streams see the checkpoint), the checkpoint that readers
 * of this process serve (gw_storage_pub_offer, serving writer only), and the durable callback (the
 * replicator acknowledges the LSN to Postgres). So nothing is served or acknowledged before it is
 * on disk, and the writer never waits for the disk on the streaming path.
 *
 * Checkpointer. Copying the WAL into the main file runs on a thread of its own with its own
 * connection (PASSIVE: it never blocks the writer), woken when the WAL has CKPT_FRAMES new
 * frames; past CKPT_RESTART_FRAMES the writer finishes it right after a commit (gw_sqlite_txn.c).
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The checkpoint s serves as of (last_op, lsn, consistent), in its namespace. */
static gw_storage_cp_t cp_of(const gw_sqlite_t *s, uint64_t last_op, uint64_t lsn, int consistent)
{
    gw_storage_cp_t cp = {.last_op = last_op, .lsn = lsn, .consistent = consistent};
    snprintf(cp.ns, sizeof(cp.ns), "%s", s->version);
    return cp;
}

void gw__sqlite_job_free(durable_job_t *j)
{
    size_t n = j->nbuckets + j->nlookups + j->nwcps;
    for (size_t i = 0; i < n; i++)
        free(j->names[i]);
    free(j->names);
    free(j);
}

void gw__sqlite_job_publish(gw_sqlite_t *s, durable_job_t *j)
{
    if (s->hook != NULL && atomic_load(&s->serving)) {
        gw_storage_changes_t ch = {
            .last_op = j->last_op,
            .lsn = j->lsn,
            .buckets = (const char *const *)j->names,
            .nbuckets = j->nbuckets,
            .lookups = (const char *const *)j->names + j->nbuckets,
            .nlookups = j->nlookups,
            .write_checkpoints = (const char *const *)j->names + j->nbuckets + j->nlookups,
            .nwrite_checkpoints = j->nwcps,
            .consistent = j->consistent,
        };
        s->hook(&ch, s->hook_ud);
    }
    /* what readers of this process serve (a builder's writer publishes nothing) */
    gw_storage_cp_t cp = cp_of(s, j->last_op, j->lsn, j->consistent);
    gw_storage_pub_offer(s->base.opts->pub, &s->serving, &cp);
    if (s->durable_fn != NULL) s->durable_fn(j->lsn, s->durable_ud);
}

/* Sync the WAL file. A failed sync cannot be retried safely (the kernel may have dropped the
 * dirty pages): like Postgres, stop the process; a restart recovers from what is on disk. */
void gw__sqlite_wal_sync(gw_sqlite_t *s)
{
    if (s->wal_fd < 0) {
        char *wal = gw_xmalloc(strlen(s->path) + 5);
        sprintf(wal, "%s-wal", s->path);
        s->wal_fd = open(wal, O_RDWR | O_CLOEXEC);
        free(wal);
    }
    if (s->wal_fd < 0 || fdatasync(s->wal_fd) != 0) {
        gw_error("storage", "could not sync the storage WAL; stopping so that a restart recovers",
                 "path=\"%s\" error=\"%s\"", s->path, strerror(errno));
        abort();
    }
}

/* Set *stop under lock, wake the thread waiting on cond, and join it. */
static void stop_thread(pthread_t t, pthread_mutex_t *lock, pthread_cond_t *cond, int *stop)
{
    pthread_mutex_lock(lock);
    *stop = 1;
    pthread_cond_signal(cond);
    pthread_mutex_unlock(lock);
    pthread_join(t, NULL);
}

static void *sync_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-sync"); /* top -H, perf */
    gw_sqlite_t *s = arg;
    pthread_mutex_lock(&s->sync_lock);
    for (;;) {
        if (s->jobs_head == NULL) {
            if (s->sync_stop) break;
            pthread_cond_wait(&s->sync_cond, &s->sync_lock);
            continue;
        }
        durable_job_t *list = s->jobs_head;
        s->jobs_head = s->jobs_tail = NULL;
        s->sync_busy = 1;
        pthread_mutex_unlock(&s->sync_lock);
        gw__sqlite_wal_sync(s);
        for (durable_job_t *j = list; j != NULL; j = j->next)
            gw__sqlite_job_publish(s, j);
        pthread_mutex_lock(&s->sync_lock);
        s->sync_busy = 0;
        for (durable_job_t *j = list, *next; j != NULL; j = next) {
            next = j->next;
            if (j->waited)
                j->done = 1;
            else
                gw__sqlite_job_free(j);
        }
        pthread_cond_broadcast(&s->sync_done_cond);
    }
    pthread_mutex_unlock(&s->sync_lock);
    return NULL;
}

void gw__sqlite_settle(gw_storage_t *st)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    pthread_mutex_lock(&s->sync_lock);
    while (s->sync_started && (s->jobs_head != NULL || s->sync_busy))
        pthread_cond_wait(&s->sync_done_cond, &s->sync_lock);
    pthread_mutex_unlock(&s->sync_lock);
}

void gw__sqlite_move_pending(gw_storage_t *from_st, gw_storage_t *to_st)
{
    gw_sqlite_t *from = (gw_sqlite_t *)from_st, *to = (gw_sqlite_t *)to_st;
    for (size_t i = 0; i < from->nwcp; i++) {
        if (to->nwcp == to->cap_wcp) {
            to->cap_wcp = to->cap_wcp ? to->cap_wcp * 2 : 16;
            to->wcp = gw_xrealloc(to->wcp, to->cap_wcp * sizeof(*to->wcp));
        }
        to->wcp[to->nwcp++] = from->wcp[i];
    }
    from->nwcp = 0;
}

void gw__sqlite_set_durable_fn(gw_storage_t *st, void (*fn)(uint64_t lsn, void *ud), void *ud)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    pthread_mutex_lock(&s->sync_lock); /* the syncer takes this lock between jobs */
    s->durable_fn = fn;
    s->durable_ud = ud;
    pthread_mutex_unlock(&s->sync_lock);
}

/* ---- checkpointer ---- */

static void *ckpt_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-ckpt"); /* top -H, perf */
    gw_sqlite_t *s = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        gw_warn("storage",
                "could not open the checkpointer's connection; the WAL grows until "
                "ferry stops",
                "error=\"%s\"", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 1000);
    /* a connection that has not read the file yet does not know it is in WAL mode, and its
     * checkpoints do nothing (log and done come back -1) */
    sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    pthread_mutex_lock(&s->ckpt_lock);
    while (!s->ckpt_stop) {
        if (!s->ckpt_wanted) {
            pthread_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
            continue;
        }
        s->ckpt_wanted = 0;
        pthread_mutex_unlock(&s->ckpt_lock);
        int log = 0, done = 0;
        pthread_mutex_lock(&s->ckpt_run);
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        pthread_mutex_unlock(&s->ckpt_run);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            gw_warn("storage", "checkpoint failed", "error=\"%s\"", sqlite3_errmsg(db));
        else
            atomic_fetch_add(&s->n_checkpoints, 1);
        if (rc == SQLITE_OK && log < 0)
            gw_warn("storage", "a checkpoint did not run (the file is not in WAL mode?)", NULL);
        pthread_mutex_lock(&s->ckpt_lock);
    }
    pthread_mutex_unlock(&s->ckpt_lock);
    sqlite3_close(db);
    return NULL;
}

/* The writer's WAL hook: after each commit, wake the checkpointer when the WAL is long. */
static int on_wal(void *ud, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    gw_sqlite_t *s = ud;
    s->wal_frames = frames;
    if (frames >= CKPT_FRAMES && s->ckpt_started) {
        pthread_mutex_lock(&s->ckpt_lock);
        s->ckpt_wanted = 1;
        pthread_cond_signal(&s->ckpt_cond);
        pthread_mutex_unlock(&s->ckpt_lock);
    }
    return SQLITE_OK;
}

void gw__sqlite_set_serving(gw_storage_t *st, int on)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    gw_storage_cp_t cp = cp_of(s, s->last_op, s->lsn, s->consistent);
    gw_storage_pub_serve(s->base.opts->pub, &s->serving, on, &cp);
}

/* ---- the threads ---- */

void gw__sqlite_threads_start(gw_sqlite_t *s)
{
    if (pthread_create(&s->sync_thread, NULL, sync_main, s) == 0) s->sync_started = 1;
    if (pthread_create(&s->ckpt_thread, NULL, ckpt_main, s) == 0) {
        s->ckpt_started = 1;
        sqlite3_wal_hook(s->db, on_wal, s);
    } else {
        /* without the thread the writer checkpoints itself, as SQLite does by default */
        sqlite3_wal_autocheckpoint(s->db, CKPT_FRAMES);
    }
}

void gw__sqlite_threads_stop(gw_sqlite_t *s)
{
    if (s->sync_started) stop_thread(s->sync_thread, &s->sync_lock, &s->sync_cond, &s->sync_stop);
    s->sync_started = 0;
    if (s->ckpt_started) stop_thread(s->ckpt_thread, &s->ckpt_lock, &s->ckpt_cond, &s->ckpt_stop);
    s->ckpt_started = 0;
}
