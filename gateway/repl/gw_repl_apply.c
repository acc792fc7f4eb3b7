/* gw_repl_apply.c -- a row through the rules, the apply pipeline, batches and storage commits
 *
 * gw__repl_apply_row() evaluates the rules for one source row (its ops and parameter lookups)
 * and hands the result to storage. While the pipeline runs (snapshot and streaming), results are
 * queued for the apply thread, which writes them in order; batches of source transactions are
 * committed as one storage commit (gw__repl_flush_batch), made durable by the storage's syncer
 * and only then acknowledged (gw__repl_maybe_ack).
 */
#include "repl/gw_repl_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int pipe_put(gw_repl_t *r, const char *table, const char *key, const void *copy,
                    size_t copy_len, gw_err_t *err);

/* ---- applying one row ---- */

/* Key text of a row: a single key column's value, else a JSON array of the key values. */
void gw__repl_row_key(gw_buf_t *out, size_t ncols, const int *is_key, const char *const *values,
                      const size_t *lens)
{
    gw_buf_reset(out);
    size_t nkeys = 0;
    for (size_t i = 0; i < ncols; i++)
        nkeys += is_key[i] != 0;
    if (nkeys == 1) {
        for (size_t i = 0; i < ncols; i++)
            if (is_key[i]) {
                if (values[i] != NULL)
                    gw_buf_append(out, values[i], lens[i]);
                else
                    gw_buf_puts(out, "");
            }
        if (out->data == NULL) gw_buf_puts(out, "");
        return;
    }
    gw_buf_puts(out, "[");
    int first = 1;
    for (size_t i = 0; i < ncols; i++) {
        if (!is_key[i]) continue;
        if (!first) gw_buf_puts(out, ",");
        first = 0;
        if (values[i] == NULL) {
            gw_buf_puts(out, "null");
        } else {
            char *v = gw_xmalloc(lens[i] + 1);
            memcpy(v, values[i], lens[i]);
            v[lens[i]] = '\0';
            gw_buf_json_str(out, v);
            free(v);
        }
    }
    gw_buf_puts(out, "]");
}

int gw__repl_apply_row(gw_repl_t *r, const char *schema, const char *table, const char *qname,
                       size_t ncols, const char *const *names, const uint32_t *types,
                       const char *const *values, const size_t *lens, const char *key,
                       gw_err_t *err)
{
    rules_row_t row = {.schema = schema,
                       .table = table,
                       .ncols = ncols,
                       .names = names,
                       .types = types,
                       .values = values,
                       .lens = lens};
    rules_error_t rerr = {0};
    rules_ops_free(&r->ops);
    rules_lookups_free(&r->lookups);
    int rc = rules_eval_row(r->rules, r->version, &row, &r->ops, &rerr);
    if (rc == 0) rc = rules_eval_lookups(r->rules, &row, &r->lookups, &rerr);
    if (rc != 0) {
        /* a row the rules cannot evaluate is skipped, loudly, rather than stopping replication */
        char qmsg[600];
        gw_error("repl", "could not evaluate the sync rules for a row; skipping it",
                 "table=%s error=%s", qname, gw_log_qs(rerr.message, qmsg, sizeof(qmsg)));
        return 0;
    }
    gw_buf_reset(&r->copy);
    size_t kept = gw_storage_row_encode(&r->copy, ncols, names, values, lens, COPY_MIN_BYTES);
    if (r->pipe_on)
        return pipe_put(r, qname, key, kept ? r->copy.data : NULL, kept ? r->copy.len : 0, err);
    gw_row_ref_t ref = {.table = qname, .key = key};
    return gw_storage_put_row(r->st, &ref, &r->ops, NULL, &r->lookups, kept ? r->copy.data : NULL,
                              kept ? r->copy.len : 0, err);
}

/* ---- batches and storage commits ---- */

int gw__repl_batch_begin(gw_repl_t *r, gw_err_t *err)
{
    if (r->batch_open) return 0;
    int rc = r->pipe_on ? 0 : gw_storage_begin(r->st, err);
    if (rc == 0) {
        r->batch_open = 1;
        r->batch_changes = 0;
        r->batch_source_us = 0;
        r->batch_source_last_us = 0;
        clock_gettime(CLOCK_MONOTONIC, &r->batch_started);
    }
    return rc;
}

/* Postgres commit times count microseconds from 2000-01-01; storage keeps unix microseconds */
#define PG_EPOCH_UNIX_US (INT64_C(946684800) * 1000000)

/* Commit storage's open transaction (begun here when empty: an LSN-only checkpoint) at lsn;
 * with wait, return once durable. Runs on the apply thread, or on the replicator when the
 * pipeline is drained or off. source_us: Postgres commit time of the first transaction;
 * last_us: of the last, which the chunks of the commit carry (0: none, a snapshot). */
static int do_commit(gw_repl_t *r, uint64_t lsn, int wait, int64_t source_us, int64_t last_us,
                     gw_err_t *err)
{
    if (gw_storage_begin(r->st, err) != 0) return GW_EIO;
    if (last_us != 0) gw_storage_set_commit_time(r->st, last_us + PG_EPOCH_UNIX_US);
    if (!gw_storage_consistent(r->st) && lsn >= r->nocp_lsn && lsn > 0) {
        if (gw_storage_set_consistent(r->st, 1, err) != 0) return GW_EIO;
        char t[32];
        if (r->builder)
            gw_info("repl", "the new rule version has a consistent checkpoint", "version=%s lsn=%s",
                    r->version, gw_lsn_format(lsn, t, sizeof(t)));
        else
            gw_info("repl", "storage has a consistent checkpoint; ready to serve", "lsn=%s",
                    gw_lsn_format(lsn, t, sizeof(t)));
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = wait ? gw_storage_commit(r->st, lsn, err) : gw_storage_commit_async(r->st, lsn, err);
    if (rc != 0) return rc;
    atomic_fetch_add(&r->m_commits, 1);
    atomic_fetch_add(&r->m_commit_us, gw__repl_elapsed_us(&t0));
    gw_hist_since(&r->h_commit, &t0);
    if (source_us != 0) {
        /* Postgres commit times count microseconds from 2000-01-01 */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t now_pg = ((int64_t)now.tv_sec - 946684800) * 1000000 + now.tv_nsec / 1000;
        gw_hist_observe(&r->h_source, (double)(now_pg - source_us) / 1e3);
    }
    atomic_store(&r->m_lsn, lsn);
    if (lsn >= atomic_load(&r->m_server_wal_end)) atomic_store(&r->m_caught_up_us, gw_pgo_now());
    {
        uint64_t lo, l2;
        gw_storage_checkpoint(r->st, &lo, &l2);
        atomic_store(&r->m_last_op, lo);
    }
    if (gw_storage_consistent(r->st)) {
        gw_ready_set(r->ready_id, 1, NULL);
        atomic_store(&r->ready, 1);
    }
    return 0;
}

/* ---- apply pipeline ----
 *
 * Items (a row's evaluated ops, a delete, a commit) are queued in segments of SEG_ITEMS; the
 * apply thread takes whole segments and writes them to storage in order. At most PIPE_MAX_SEGS
 * segments wait (the replicator blocks beyond: bounded memory). The first storage error stops
 * the apply thread's writes; the replicator sees it at its next hand-over or drain and the
 * stream ends with it (the open storage transaction is then rolled back). */
enum { IT_PUT, IT_DELETE, IT_COMMIT, SEG_ITEMS = 256, PIPE_MAX_SEGS = 64 };

/* Everything an item points to lives in its segment's mem (offsets, resolved by the apply
 * thread once the segment is handed over and no longer grows): one allocation per segment,
 * freed by the apply thread, instead of several per row crossing threads. The PUT lines are
 * encoded here, on the replicator thread (gw_storage_encode_put). */
typedef struct op_rec {
    size_t bucket, type, id, data, data_len, tail, tail_len, ident_off, ident_len;
    uint32_t checksum;
} op_rec_t;

typedef struct item {
    int kind;
    const char *table;        /* interned in qnames */
    size_t key;               /* offsets in the segment's mem */
    size_t ops, nops;         /* nops op_rec_t in recs, from index ops */
    size_t lookups, nlookups; /* pairs of (key, params) string offsets in mem, from index lookups */
    size_t copy, copy_len;    /* copy_len 0: none */
    uint64_t lsn;             /* IT_COMMIT */
    int64_t source_us;        /* IT_COMMIT */
    int64_t last_us;          /* IT_COMMIT */
} item_t;

typedef struct seg {
    struct seg *next;
    size_t n;
    gw_buf_t mem;  /* strings and copies */
    gw_buf_t recs; /* op_rec_t array */
    gw_buf_t lks;  /* size_t pairs: lookup key and params offsets */
    item_t it[SEG_ITEMS];
} seg_t;

static size_t mem_put(gw_buf_t *m, const void *p, size_t n)
{
    size_t at = m->len;
    gw_buf_append(m, p, n);
    gw_buf_append(m, "", 1); /* NUL-terminated */
    return at;
}

static void seg_free(seg_t *sg)
{
    gw_buf_free(&sg->mem);
    gw_buf_free(&sg->recs);
    gw_buf_free(&sg->lks);
    free(sg);
}

/* The apply thread's views of an item (reused buffers). */
typedef struct apply_scratch {
    rules_ops_t ops;
    rules_lookups_t lookups;
    gw_op_tail_t *tails;
    size_t cap_tails;
} apply_scratch_t;

static int apply_item(gw_repl_t *r, const seg_t *sg, const item_t *it, apply_scratch_t *x,
                      gw_err_t *err)
{
    if (it->kind == IT_COMMIT) return do_commit(r, it->lsn, 0, it->source_us, it->last_us, err);
    if (gw_storage_begin(r->st, err) != 0) return GW_EIO;
    const char *mem = sg->mem.data;
    gw_row_ref_t ref = {.table = it->table, .key = mem + it->key};
    if (it->kind == IT_DELETE) return gw_storage_delete_row(r->st, &ref, err);
    if (it->nops > x->ops.cap) {
        x->ops.cap = it->nops;
        x->ops.items = gw_xrealloc(x->ops.items, x->ops.cap * sizeof(rules_op_t));
    }
    if (it->nops > x->cap_tails) {
        x->cap_tails = it->nops;
        x->tails = gw_xrealloc(x->tails, x->cap_tails * sizeof(gw_op_tail_t));
    }
    for (size_t i = 0; i < it->nops; i++) {
        op_rec_t o;
        memcpy(&o, sg->recs.data + (it->ops + i) * sizeof(op_rec_t), sizeof(o));
        x->ops.items[i] = (rules_op_t){.bucket = (char *)mem + o.bucket,
                                       .object_type = (char *)mem + o.type,
                                       .object_id = (char *)mem + o.id,
                                       .data = (char *)mem + o.data,
                                       .data_len = o.data_len,
                                       .checksum = o.checksum};
        x->tails[i] = (gw_op_tail_t){.text = mem + o.tail,
                                     .len = o.tail_len,
                                     .ident_off = o.ident_off,
                                     .ident_len = o.ident_len};
    }
    x->ops.n = it->nops;
    if (it->nlookups > x->lookups.cap) {
        x->lookups.cap = it->nlookups;
        x->lookups.items = gw_xrealloc(x->lookups.items, x->lookups.cap * sizeof(rules_lookup_t));
    }
    for (size_t i = 0; i < it->nlookups; i++) {
        size_t kp[2];
        memcpy(kp, sg->lks.data + (it->lookups + i) * sizeof(kp), sizeof(kp));
        x->lookups.items[i] =
            (rules_lookup_t){.key = (char *)mem + kp[0], .params = (char *)mem + kp[1]};
    }
    x->lookups.n = it->nlookups;
    return gw_storage_put_row(r->st, &ref, &x->ops, x->tails, &x->lookups,
                              it->copy_len ? mem + it->copy : NULL, it->copy_len, err);
}

/* Before the rows of sg from item i on (up to its next commit) are applied: open the storage
 * transaction and let a backend whose storage is a round trip away load their states at once
 * (gw_storage_prefetch). refs is scratch of SEG_ITEMS entries. */
static int prefetch_run(gw_repl_t *r, const seg_t *sg, size_t i, gw_row_ref_t *refs, gw_err_t *err)
{
    size_t n = 0;
    for (; i < sg->n && sg->it[i].kind != IT_COMMIT; i++)
        refs[n++] = (gw_row_ref_t){.table = sg->it[i].table, .key = sg->mem.data + sg->it[i].key};
    if (n == 0) return 0;
    if (gw_storage_begin(r->st, err) != 0) return GW_EIO;
    return gw_storage_prefetch(r->st, refs, n, err);
}

static void *apply_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-apply"); /* top -H, perf */
    gw_repl_t *r = arg;
    apply_scratch_t x = {0};
    int prefetch = gw_storage_has_prefetch(r->st);
    gw_row_ref_t *refs = prefetch ? gw_xmalloc(SEG_ITEMS * sizeof(*refs)) : NULL;
    pthread_mutex_lock(&r->plock);
    for (;;) {
        if (r->phead == NULL) {
            if (r->pstop) break;
            pthread_cond_wait(&r->pwork, &r->plock);
            continue;
        }
        seg_t *sg = r->phead;
        r->phead = sg->next;
        if (r->phead == NULL) r->ptail = NULL;
        r->pqueued--;
        r->pbusy = 1;
        int failed = r->pfailed;
        pthread_mutex_unlock(&r->plock);
        gw_err_t e = {0};
        int rc = 0;
        for (size_t i = 0; i < sg->n && !failed && rc == 0; i++) {
            if (prefetch && (i == 0 || sg->it[i - 1].kind == IT_COMMIT))
                rc = prefetch_run(r, sg, i, refs, &e);
            if (rc == 0) rc = apply_item(r, sg, &sg->it[i], &x, &e);
        }
        seg_free(sg);
        pthread_mutex_lock(&r->plock);
        if (rc != 0 && !r->pfailed) {
            r->pfailed = 1;
            r->perr = e;
        }
        r->pbusy = 0;
        pthread_cond_broadcast(&r->pidle);
    }
    pthread_mutex_unlock(&r->plock);
    free(x.ops.items);
    free(x.lookups.items);
    free(x.tails);
    free(refs);
    return NULL;
}

/* Hand the segment being filled to the apply thread (waits while the queue is full). */
static int pipe_hand(gw_repl_t *r, gw_err_t *err)
{
    seg_t *sg = r->pcur;
    r->pcur = NULL;
    uint64_t w0 = gw__repl_busy_begin(r); /* a slow disk is not a silent source */
    pthread_mutex_lock(&r->plock);
    while (sg != NULL && r->pqueued >= PIPE_MAX_SEGS && !r->pfailed)
        pthread_cond_wait(&r->pidle, &r->plock);
    if (sg != NULL) {
        if (r->ptail != NULL)
            r->ptail->next = sg;
        else
            r->phead = sg;
        r->ptail = sg;
        r->pqueued++;
        pthread_cond_signal(&r->pwork);
    }
    int failed = r->pfailed;
    if (failed && err != NULL) *err = r->perr;
    pthread_mutex_unlock(&r->plock);
    gw__repl_busy_end(r, w0);
    return failed ? GW_EIO : 0;
}

/* Wait until the apply thread has written everything queued; then the replicator may use the
 * storage writer itself until it queues again. 0, or the apply thread's error. */
int gw__repl_pipe_drain(gw_repl_t *r, gw_err_t *err)
{
    if (!r->pipe_on) return 0;
    int rc = pipe_hand(r, err);
    uint64_t w0 = gw__repl_busy_begin(r);
    pthread_mutex_lock(&r->plock);
    while ((r->phead != NULL || r->pbusy) && !r->pfailed)
        pthread_cond_wait(&r->pidle, &r->plock);
    if (r->pfailed) {
        if (err != NULL) *err = r->perr;
        rc = GW_EIO;
    }
    pthread_mutex_unlock(&r->plock);
    gw__repl_busy_end(r, w0);
    return rc;
}

/* A free item slot (hands full segments over). The caller fills it completely. */
static item_t *pipe_slot(gw_repl_t *r, gw_err_t *err, int *rc)
{
    *rc = 0;
    if (r->pcur != NULL && r->pcur->n == SEG_ITEMS) *rc = pipe_hand(r, err);
    if (*rc != 0) return NULL;
    if (r->pcur == NULL) r->pcur = gw_xcalloc(1, sizeof(seg_t));
    item_t *it = &r->pcur->it[r->pcur->n++];
    memset(it, 0, sizeof(*it));
    return it;
}

static const char *intern(gw_repl_t *r, const char *name)
{
    char *v = gw_map_get(&r->qnames, name);
    if (v == NULL) {
        v = gw_xstrdup(name);
        gw_map_put(&r->qnames, name, v);
    }
    return v;
}

/* Queue a row's new state: r->ops (with their lines encoded here), r->lookups and copy are
 * copied into the segment. */
static int pipe_put(gw_repl_t *r, const char *table, const char *key, const void *copy,
                    size_t copy_len, gw_err_t *err)
{
    int rc;
    item_t *it = pipe_slot(r, err, &rc);
    if (it == NULL) return rc;
    seg_t *sg = r->pcur;
    it->kind = IT_PUT;
    it->table = intern(r, table);
    it->key = mem_put(&sg->mem, key, strlen(key));
    char subkey[2048];
    gw_storage_subkey(table, key, subkey, sizeof(subkey));
    it->ops = sg->recs.len / sizeof(op_rec_t);
    it->nops = r->ops.n;
    for (size_t i = 0; i < r->ops.n; i++) {
        const rules_op_t *o = &r->ops.items[i];
        op_rec_t rec = {0};
        rec.bucket = mem_put(&sg->mem, o->bucket, strlen(o->bucket));
        rec.type = mem_put(&sg->mem, o->object_type, strlen(o->object_type));
        rec.id = mem_put(&sg->mem, o->object_id, strlen(o->object_id));
        rec.data = mem_put(&sg->mem, o->data, o->data_len);
        rec.data_len = o->data_len;
        rec.checksum = o->checksum;
        gw_op_tail_t t;
        rec.tail = sg->mem.len;
        gw_storage_encode_put(&sg->mem, o, subkey, &t);
        rec.tail_len = t.len;
        rec.ident_off = t.ident_off;
        rec.ident_len = t.ident_len;
        gw_buf_append(&sg->recs, &rec, sizeof(rec));
    }
    it->lookups = sg->lks.len / (2 * sizeof(size_t));
    it->nlookups = r->lookups.n;
    for (size_t i = 0; i < r->lookups.n; i++) {
        size_t kp[2] = {
            mem_put(&sg->mem, r->lookups.items[i].key, strlen(r->lookups.items[i].key)),
            mem_put(&sg->mem, r->lookups.items[i].params, strlen(r->lookups.items[i].params))};
        gw_buf_append(&sg->lks, kp, sizeof(kp));
    }
    if (copy != NULL && copy_len > 0) {
        it->copy = mem_put(&sg->mem, copy, copy_len);
        it->copy_len = copy_len;
    }
    return 0;
}

/* Delete a row: queued while streaming, else directly. */
int gw__repl_store_delete(gw_repl_t *r, const char *table, const char *key, gw_err_t *err)
{
    if (!r->pipe_on) {
        gw_row_ref_t ref = {.table = table, .key = key};
        return gw_storage_delete_row(r->st, &ref, err);
    }
    int rc;
    item_t *it = pipe_slot(r, err, &rc);
    if (it == NULL) return rc;
    it->kind = IT_DELETE;
    it->table = intern(r, table);
    it->key = mem_put(&r->pcur->mem, key, strlen(key));
    return 0;
}

/* For the replicator's own storage writes while streaming: drain, and open a transaction. */
int gw__repl_storage_direct(gw_repl_t *r, gw_err_t *err)
{
    if (!r->pipe_on) return 0;
    if (gw__repl_pipe_drain(r, err) != 0) return GW_EIO;
    return gw_storage_begin(r->st, err);
}

static void free_qname(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    free(value);
}

int gw__repl_pipe_start(gw_repl_t *r, gw_err_t *err)
{
    pthread_mutex_init(&r->plock, NULL);
    pthread_cond_init(&r->pwork, NULL);
    pthread_cond_init(&r->pidle, NULL);
    r->phead = r->ptail = r->pcur = NULL;
    r->pqueued = 0;
    r->pbusy = r->pstop = r->pfailed = 0;
    gw_map_init(&r->qnames);
    if (pthread_create(&r->apply_tid, NULL, apply_main, r) != 0) {
        pthread_mutex_destroy(&r->plock);
        pthread_cond_destroy(&r->pwork);
        pthread_cond_destroy(&r->pidle);
        gw_map_free(&r->qnames);
        return gw_err_set(err, GW_ESYS, "repl", "could not start the apply thread");
    }
    r->pipe_on = 1;
    return 0;
}

/* Drain and stop the apply thread. Returns rc (the caller's result so far, err already set) or,
 * when rc is 0, the apply thread's error in err. */
int gw__repl_pipe_stop(gw_repl_t *r, int rc, gw_err_t *err)
{
    if (!r->pipe_on) return rc;
    gw_err_t perr;
    int prc = gw__repl_pipe_drain(r, &perr);
    if (rc == 0 && prc != 0) {
        *err = perr;
        rc = prc;
    }
    pthread_mutex_lock(&r->plock);
    r->pstop = 1;
    pthread_cond_signal(&r->pwork);
    pthread_mutex_unlock(&r->plock);
    pthread_join(r->apply_tid, NULL);
    if (r->pcur != NULL) { /* left when the apply thread failed */
        seg_free(r->pcur);
        r->pcur = NULL;
    }
    pthread_mutex_destroy(&r->plock);
    pthread_cond_destroy(&r->pwork);
    pthread_cond_destroy(&r->pidle);
    gw_map_each(&r->qnames, free_qname, NULL);
    gw_map_free(&r->qnames);
    r->pipe_on = 0;
    return rc;
}

/* Commit the open batch at batch_lsn. While streaming the commit is queued (the syncer makes
 * it durable while the next batch is built); with wait, it is made here and this returns once
 * durable. Acknowledged to Postgres only once durable (gw__repl_maybe_ack), never before. */
int gw__repl_flush_batch_mode(gw_repl_t *r, int wait, gw_err_t *err)
{
    if (!r->batch_open) return 0;
    uint64_t lsn = r->batch_lsn;
    int64_t source_us = r->batch_source_us, last_us = r->batch_source_last_us;
    r->batch_open = 0;
    if (lsn > r->pos_lsn) r->pos_lsn = lsn;
    int rc = 0;
    if (r->pipe_on && !wait) {
        item_t *it = pipe_slot(r, err, &rc);
        if (it != NULL) {
            it->kind = IT_COMMIT;
            it->lsn = lsn;
            it->source_us = source_us;
            it->last_us = last_us;
            rc = pipe_hand(r, err); /* never hold a commit back */
        }
    } else {
        rc = gw__repl_pipe_drain(r, err);
        if (rc == 0) rc = do_commit(r, lsn, wait, source_us, last_us, err);
    }
    if (rc == 0) rc = gw__repl_maybe_ack(r, err);
    return rc;
}

/* The streaming path: the syncer makes the batch durable while the next one is built. */
int gw__repl_flush_batch(gw_repl_t *r, gw_err_t *err)
{
    return gw__repl_flush_batch_mode(r, 0, err);
}
