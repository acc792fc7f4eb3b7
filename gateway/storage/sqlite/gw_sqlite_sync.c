/* gw_sqlite_sync.c -- the SQLite backend's durable commits, publication and checkpointer
 *
 * Durable commits. Commits run with synchronous=NORMAL: COMMIT appends to the WAL without syncing
 * it. Each commit is handed to the publisher (storage/gw_publish.h), whose thread ("ferry-sync")
 * syncs the WAL once for every batch of queued commits (group commit), and only then reports
 * each in order: the hook, the checkpoint readers of this process serve, the durable callback.
 * So nothing is served or acknowledged before it is on disk, and the writer never waits for the
 * disk on the streaming path.
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

gw_storage_cp_t gw__sqlite_cp(const gw_sqlite_t *s, uint64_t last_op, uint64_t lsn, int consistent)
{
    gw_storage_cp_t cp = {.last_op = last_op, .lsn = lsn, .consistent = consistent};
    snprintf(cp.ns, sizeof(cp.ns), "%s", s->w.version);
    return cp;
}

/* Sync the WAL file (the publisher's make_durable, before it publishes a batch of commits). A
 * failed sync cannot be retried safely (the kernel may have dropped the dirty pages): like
 * Postgres, stop the process; a restart recovers from what is on disk. */
static void wal_sync(void *ud)
{
    gw_sqlite_t *s = ud;
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

void gw__sqlite_settle(gw_storage_t *st)
{
    gw_publisher_settle(((gw_sqlite_t *)st)->publisher);
}

void gw__sqlite_move_pending(gw_storage_t *from_st, gw_storage_t *to_st)
{
    gw_publisher_move_wcps(((gw_sqlite_t *)from_st)->publisher, ((gw_sqlite_t *)to_st)->publisher);
}

void gw__sqlite_set_durable_fn(gw_storage_t *st, void (*fn)(uint64_t lsn, void *ud), void *ud)
{
    gw_publisher_set_durable_fn(((gw_sqlite_t *)st)->publisher, fn, ud);
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
    gw_storage_cp_t cp = gw__sqlite_cp(s, s->w.last_op, s->w.lsn, s->w.consistent);
    gw_publisher_set_serving(s->publisher, on, &cp);
}

/* ---- the threads ---- */

void gw__sqlite_threads_start(gw_sqlite_t *s)
{
    s->publisher = gw_publisher_new("ferry-sync", wal_sync, s, s->base.opts->pub);
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
    gw_publisher_free(s->publisher);
    s->publisher = NULL;
    if (s->ckpt_started) stop_thread(s->ckpt_thread, &s->ckpt_lock, &s->ckpt_cond, &s->ckpt_stop);
    s->ckpt_started = 0;
}
