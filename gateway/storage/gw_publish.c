/* gw_publish.c -- the publisher: committed checkpoints reported in order, once durable
 *
 * A queue of jobs (a commit's checkpoint and what it changed, copied) and a thread that takes
 * every queued job at once, runs make_durable once for all of them (group commit), and only then
 * publishes each in order: the hook, the pub, the durable callback. So nothing is served or
 * acknowledged before it is on disk, and the writer never waits for the disk on the streaming
 * path (gw_publisher_commit without wait). See gw_publish.h.
 */
#include "storage/gw_publish.h"
#include "base/gw_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct job {
    struct job *next;
    gw_storage_cp_t cp;
    char **names; /* buckets, then lookup keys, then write-checkpoint keys */
    size_t nbuckets, nlookups, nwcps;
    int own;    /* this writer's commit: the durable callback runs */
    int waited; /* the committer waits for it and frees it */
    int done;
} job_t;

struct gw_publisher {
    char thread_name[16];
    void (*make_durable)(void *ud);
    void *durable_ud_make;
    gw_storage_pub_t *pub;
    _Atomic int serving;
    gw_storage_hook_fn hook;
    void *hook_ud;
    void (*durable_fn)(uint64_t lsn, void *ud);
    void *durable_ud;
    pthread_t thread;
    int started, stop, busy;
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* jobs queued, or stop */
    pthread_cond_t done_cond; /* a batch was published */
    job_t *head, *tail;
    /* write checkpoints not yet covered by a commit's LSN (under lock) */
    struct wcp {
        char *key;
        uint64_t lsn;
    } * wcp;
    size_t nwcp, cap_wcp;
};

static void job_free(job_t *j)
{
    size_t n = j->nbuckets + j->nlookups + j->nwcps;
    for (size_t i = 0; i < n; i++)
        free(j->names[i]);
    free(j->names);
    free(j);
}

static void job_publish(gw_publisher_t *p, job_t *j)
{
    if (p->hook != NULL && atomic_load(&p->serving)) {
        gw_storage_changes_t ch = {
            .last_op = j->cp.last_op,
            .lsn = j->cp.lsn,
            .buckets = (const char *const *)j->names,
            .nbuckets = j->nbuckets,
            .lookups = (const char *const *)j->names + j->nbuckets,
            .nlookups = j->nlookups,
            .write_checkpoints = (const char *const *)j->names + j->nbuckets + j->nlookups,
            .nwrite_checkpoints = j->nwcps,
            .consistent = j->cp.consistent,
        };
        p->hook(&ch, p->hook_ud);
    }
    /* what readers of this process serve (a builder's writer publishes nothing) */
    gw_storage_pub_offer(p->pub, &p->serving, &j->cp);
    if (j->own && p->durable_fn != NULL) p->durable_fn(j->cp.lsn, p->durable_ud);
}

static void *publisher_main(void *arg)
{
    gw_publisher_t *p = arg;
    pthread_setname_np(pthread_self(), p->thread_name); /* top -H, perf */
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->head == NULL) {
            if (p->stop) break;
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        job_t *list = p->head;
        p->head = p->tail = NULL;
        p->busy = 1;
        pthread_mutex_unlock(&p->lock);
        if (p->make_durable != NULL) p->make_durable(p->durable_ud_make);
        for (job_t *j = list; j != NULL; j = j->next)
            job_publish(p, j);
        pthread_mutex_lock(&p->lock);
        p->busy = 0;
        for (job_t *j = list, *next; j != NULL; j = next) {
            next = j->next;
            if (j->waited)
                j->done = 1;
            else
                job_free(j);
        }
        pthread_cond_broadcast(&p->done_cond);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

gw_publisher_t *gw_publisher_new(const char *thread, void (*make_durable)(void *ud), void *ud,
                                 gw_storage_pub_t *pub)
{
    gw_publisher_t *p = gw_xcalloc(1, sizeof(*p));
    snprintf(p->thread_name, sizeof(p->thread_name), "%s", thread);
    p->make_durable = make_durable;
    p->durable_ud_make = ud;
    p->pub = pub;
    atomic_store(&p->serving, 1);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    pthread_cond_init(&p->done_cond, NULL);
    if (pthread_create(&p->thread, NULL, publisher_main, p) == 0) p->started = 1;
    return p;
}

void gw_publisher_free(gw_publisher_t *p)
{
    if (p == NULL) return;
    if (p->started) { /* the thread publishes every queued job before it ends */
        pthread_mutex_lock(&p->lock);
        p->stop = 1;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    pthread_cond_destroy(&p->done_cond);
    for (size_t i = 0; i < p->nwcp; i++)
        free(p->wcp[i].key);
    free(p->wcp);
    free(p);
}

void gw_publisher_set_hook(gw_publisher_t *p, gw_storage_hook_fn fn, void *ud)
{
    pthread_mutex_lock(&p->lock); /* the thread takes this lock between batches */
    p->hook = fn;
    p->hook_ud = ud;
    pthread_mutex_unlock(&p->lock);
}

void gw_publisher_get_hook(const gw_publisher_t *p, gw_storage_hook_fn *fn, void **ud)
{
    *fn = p->hook;
    *ud = p->hook_ud;
}

void gw_publisher_set_durable_fn(gw_publisher_t *p, void (*fn)(uint64_t lsn, void *ud), void *ud)
{
    pthread_mutex_lock(&p->lock);
    p->durable_fn = fn;
    p->durable_ud = ud;
    pthread_mutex_unlock(&p->lock);
}

void gw_publisher_set_serving(gw_publisher_t *p, int on, const gw_storage_cp_t *cp)
{
    gw_storage_pub_serve(p->pub, &p->serving, on, cp);
}

int gw_publisher_serving(const gw_publisher_t *p)
{
    return atomic_load(&p->serving);
}

/* Append a waiting write checkpoint; lock held. */
static void wcp_push(gw_publisher_t *p, char *key, uint64_t lsn)
{
    if (p->nwcp == p->cap_wcp) {
        p->cap_wcp = p->cap_wcp ? p->cap_wcp * 2 : 16;
        p->wcp = gw_xrealloc(p->wcp, p->cap_wcp * sizeof(*p->wcp));
    }
    p->wcp[p->nwcp].key = key;
    p->wcp[p->nwcp].lsn = lsn;
    p->nwcp++;
}

void gw_publisher_add_wcp(gw_publisher_t *p, const char *key, uint64_t lsn)
{
    pthread_mutex_lock(&p->lock);
    wcp_push(p, gw_xstrdup(key), lsn);
    pthread_mutex_unlock(&p->lock);
}

void gw_publisher_move_wcps(gw_publisher_t *from, gw_publisher_t *to)
{
    pthread_mutex_lock(&from->lock);
    pthread_mutex_lock(&to->lock);
    for (size_t i = 0; i < from->nwcp; i++)
        wcp_push(to, from->wcp[i].key, from->wcp[i].lsn);
    from->nwcp = 0;
    pthread_mutex_unlock(&to->lock);
    pthread_mutex_unlock(&from->lock);
}

void gw_publisher_commit(gw_publisher_t *p, const gw_storage_cp_t *cp, const char *const *buckets,
                         size_t nbuckets, const char *const *lookups, size_t nlookups, int own,
                         int wait)
{
    job_t *j = gw_xcalloc(1, sizeof(*j));
    j->cp = *cp;
    j->own = own;
    j->nbuckets = nbuckets;
    j->nlookups = nlookups;
    pthread_mutex_lock(&p->lock);
    /* the write checkpoints this commit's LSN reaches are reported with it */
    size_t keep = 0, nwcps = 0;
    for (size_t i = 0; i < p->nwcp; i++)
        nwcps += p->wcp[i].lsn <= cp->lsn;
    j->names = gw_xmalloc((nbuckets + nlookups + nwcps + 1) * sizeof(char *));
    for (size_t i = 0; i < nbuckets; i++)
        j->names[i] = gw_xstrdup(buckets[i]);
    for (size_t i = 0; i < nlookups; i++)
        j->names[nbuckets + i] = gw_xstrdup(lookups[i]);
    for (size_t i = 0; i < p->nwcp; i++) {
        if (p->wcp[i].lsn <= cp->lsn)
            j->names[nbuckets + nlookups + j->nwcps++] = p->wcp[i].key;
        else
            p->wcp[keep++] = p->wcp[i];
    }
    p->nwcp = keep;
    if (!p->started) {
        /* no thread (it could not start): make durable and publish here */
        pthread_mutex_unlock(&p->lock);
        if (p->make_durable != NULL) p->make_durable(p->durable_ud_make);
        job_publish(p, j);
        job_free(j);
        return;
    }
    j->waited = wait;
    if (p->tail != NULL)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cond);
    while (wait && !j->done)
        pthread_cond_wait(&p->done_cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
    if (wait) job_free(j);
}

void gw_publisher_settle(gw_publisher_t *p)
{
    pthread_mutex_lock(&p->lock);
    while (p->started && (p->head != NULL || p->busy))
        pthread_cond_wait(&p->done_cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
