/* gw_repl_stream.c -- the pgoutput stream loop: decode, merge TOAST, evaluate, acknowledge
 *
 * gw__repl_stream() runs START_REPLICATION from the stored LSN and turns each message into
 * storage work: Relation messages describe tables, Insert/Update/Delete become rows through
 * gw__repl_apply_row() (unchanged-TOAST values merged from the stored copy or re-read by key,
 * invariant 4), Truncate removes a table's rows, Commit closes a source transaction into the
 * open batch, and logical messages and keepalives outside a transaction make LSN-only
 * checkpoints. When nothing is waiting the loop flushes the batch (a commit is never held back),
 * runs tasks from other threads, compacts, drops retired versions and looks after rule versions.
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
#include <jansson.h>
#include <sys/select.h>

/* ---- compaction ---- */

/* Compact storage in its own transaction every replication.compact_interval seconds. */
static int maybe_compact(gw_repl_t *r, gw_err_t *err)
{
    uint64_t now = gw__repl_now_ms();
    if (r->compact_interval <= 0 || r->compact_ms == 0 ||
        now - r->compact_ms < (uint64_t)r->compact_interval * 1000)
        return 0;
    r->compact_ms = now;
    gw_storage_compact_stats_t st;
    int rc = gw__repl_pipe_drain(r, err);
    if (rc == 0) rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_compact(r->st, &st, err);
    if (rc == 0)
        rc = gw_storage_commit(r->st, 0, err);
    else
        gw_storage_rollback(r->st);
    if (rc == 0)
        gw_info("repl", "compacted bucket storage",
                "buckets=%llu moved=%llu cleared=%llu ops_before=%llu ops_after=%llu ms=%llu",
                (unsigned long long)st.buckets, (unsigned long long)st.moved,
                (unsigned long long)st.cleared, (unsigned long long)st.ops_before,
                (unsigned long long)st.ops_after, (unsigned long long)(gw__repl_now_ms() - now));
    return rc;
}

/* ---- streaming ---- */

static int send_status(gw_repl_t *r, uint64_t lsn, int reply, gw_err_t *err)
{
    char msg[34];
    gw_pgo_status_update(msg, lsn, lsn, lsn, gw_pgo_now(), reply);
    if (PQputCopyData(r->rc, msg, sizeof(msg)) != 1 || PQflush(r->rc) != 0) {
        char m[256];
        return gw_err_set(err, GW_EPG, "repl", "could not send a status update: %s",
                          gw_pg_error(r->rc, m, sizeof(m)));
    }
    clock_gettime(CLOCK_MONOTONIC, &r->last_status);
    return 0;
}

/* Acknowledge the durable LSN to Postgres when it moved (invariant 1). */
int gw__repl_maybe_ack(gw_repl_t *r, gw_err_t *err)
{
    uint64_t d = atomic_load(&r->durable_lsn);
    if (d <= r->acked_lsn || r->test_replay) return 0;
    r->acked_lsn = d;
    return send_status(r, d, 0, err);
}

static rel_t *find_rel(gw_repl_t *r, uint32_t relid)
{
    char k[16];
    snprintf(k, sizeof(k), "%u", relid);
    return gw_map_get(&r->rels, k);
}

static void on_relation(gw_repl_t *r, const gw_pgo_msg_t *m)
{
    char k[16];
    snprintf(k, sizeof(k), "%u", m->u.relation.relid);
    rel_t *old = gw_map_del(&r->rels, k);
    if (old != NULL) gw__repl_free_rel(NULL, old, NULL);
    rel_t *rel = gw_xcalloc(1, sizeof(*rel));
    rel->relid = m->u.relation.relid;
    rel->schema = gw_xstrdup(m->u.relation.nspname);
    rel->name = gw_xstrdup(m->u.relation.relname);
    size_t ql = strlen(rel->schema) + strlen(rel->name) + 2;
    rel->qname = gw_xmalloc(ql);
    snprintf(rel->qname, ql, "%s.%s", rel->schema, rel->name);
    rel->tracked = gw__repl_is_tracked(r, rel->schema, rel->name);
    rel->replident = m->u.relation.replident;
    rel->ncols = m->u.relation.ncols;
    rel->names = gw_xcalloc(rel->ncols + 1, sizeof(char *));
    rel->types = gw_xcalloc(rel->ncols + 1, sizeof(uint32_t));
    rel->is_key = gw_xcalloc(rel->ncols + 1, sizeof(int));
    for (size_t i = 0; i < rel->ncols; i++) {
        rel->names[i] = gw_xstrdup(m->u.relation.cols[i].name);
        rel->types[i] = m->u.relation.cols[i].type_oid;
        rel->is_key[i] = (m->u.relation.cols[i].flags & 1) != 0;
    }
    gw_map_put(&r->rels, k, rel);
}

/* Resolve a tuple into values/lens; 'u' values from old tuple or stored copy. 0 when complete. */
static int resolve_tuple(gw_repl_t *r, rel_t *rel, const gw_pgo_tuple_t *tup,
                         const gw_pgo_tuple_t *old, const char *key, const char **values,
                         size_t *lens, void **copy_out)
{
    void *copy = NULL;
    size_t copy_len = 0;
    int have_copy = -1;
    for (size_t i = 0; i < rel->ncols; i++) {
        const gw_pgo_value_t *v = i < tup->ncols ? &tup->cols[i] : NULL;
        if (v == NULL || v->kind == 'n') {
            values[i] = NULL;
            lens[i] = 0;
        } else if (v->kind == 't' || v->kind == 'b') {
            values[i] = v->data;
            lens[i] = v->len;
        } else { /* 'u': unchanged TOAST */
            if (old != NULL && i < old->ncols && (old->cols[i].kind == 't')) {
                values[i] = old->cols[i].data;
                lens[i] = old->cols[i].len;
                continue;
            }
            if (have_copy < 0) {
                gw_row_ref_t ref = {.table = rel->qname, .key = key};
                have_copy = gw_storage_row_copy(r->st, &ref, &copy, &copy_len);
            }
            const char *val;
            size_t len;
            if (have_copy > 0 && gw_storage_row_find(copy, copy_len, rel->names[i], &val, &len)) {
                values[i] = val;
                lens[i] = len;
            } else {
                free(copy);
                *copy_out = NULL;
                return -1;
            }
        }
    }
    *copy_out = copy;
    return 0;
}

/* Re-read a row by key when its TOAST values cannot be merged (invariant 4). */
static int reread_row(gw_repl_t *r, rel_t *rel, const char *key, gw_err_t *err)
{
    gw_buf_t sql = GW_BUF_INIT;
    size_t nk = 0;
    const char *params[64];
    char *qs = gw_pg_ident(r->q, rel->schema), *qn = gw_pg_ident(r->q, rel->name);
    gw_buf_printf(&sql, "SELECT * FROM %s.%s WHERE ", qs, qn);
    free(qs);
    free(qn);
    /* the key text: one value, or a JSON array of values (see gw__repl_row_key) */
    size_t nkeys = 0;
    for (size_t i = 0; i < rel->ncols; i++)
        nkeys += rel->is_key[i] != 0;
    json_t *arr = nkeys == 1 ? NULL : json_loads(key, 0, NULL);
    if (nkeys > 64 || (nkeys != 1 && (!json_is_array(arr) || json_array_size(arr) != nkeys))) {
        json_decref(arr);
        gw_buf_free(&sql);
        gw_error("repl", "cannot re-read a row with unchanged TOAST values; skipping it",
                 "table=%s key_columns=%zu", rel->qname, nkeys);
        return 0;
    }
    for (size_t i = 0; i < rel->ncols; i++) {
        if (!rel->is_key[i]) continue;
        char *qc = gw_pg_ident(r->q, rel->names[i]);
        gw_buf_printf(&sql, "%s%s::text IS NOT DISTINCT FROM $%zu", nk > 0 ? " AND " : "", qc,
                      nk + 1);
        free(qc);
        params[nk] = arr == NULL ? key : json_string_value(json_array_get(arr, nk));
        nk++;
    }
    PGresult *res = gw_pg_query_params(r->q, sql.data, (int)nk, params, err);
    gw_buf_free(&sql);
    json_decref(arr);
    if (res == NULL) return GW_EPG;
    int rc = 0;
    if (PQntuples(res) == 1) {
        int ncols = PQnfields(res);
        const char **names = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        const char **values = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        size_t *lens = gw_xcalloc((size_t)ncols + 1, sizeof(size_t));
        uint32_t *types = gw_xcalloc((size_t)ncols + 1, sizeof(uint32_t));
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = PQftype(res, c);
            values[c] = PQgetisnull(res, 0, c) ? NULL : PQgetvalue(res, 0, c);
            lens[c] = (size_t)PQgetlength(res, 0, c);
        }
        rc = gw__repl_apply_row(r, rel->schema, rel->name, rel->qname, (size_t)ncols, names, types,
                                values, lens, key, err);
        free(names);
        free(values);
        free(lens);
        free(types);
    }
    PQclear(res);
    return rc;
}

static int on_change(gw_repl_t *r, const gw_pgo_msg_t *m, gw_err_t *err)
{
    uint32_t relid = m->kind == GW_PGO_INSERT   ? m->u.insert.relid
                     : m->kind == GW_PGO_UPDATE ? m->u.update.relid
                                                : m->u.del.relid;
    rel_t *rel = find_rel(r, relid);
    if (rel == NULL)
        return gw_err_set(err, GW_EINVAL, "repl", "change for unknown relation %u", relid);
    if (!rel->tracked) return 0;
    int rc = gw__repl_batch_begin(r, err);
    if (rc != 0) return rc;
    r->batch_changes++;
    atomic_fetch_add(&r->m_changes, 1);
    const char **values = gw_arena_alloc(&r->arena, sizeof(char *) * (rel->ncols + 1));
    size_t *lens = gw_arena_alloc(&r->arena, sizeof(size_t) * (rel->ncols + 1));
    const gw_pgo_tuple_t *keytup = NULL;
    if (m->kind == GW_PGO_DELETE)
        keytup = &m->u.del.oldtup;
    else if (m->kind == GW_PGO_UPDATE && m->u.update.oldkind != 0)
        keytup = &m->u.update.oldtup;
    char *oldkey = NULL;
    if (keytup != NULL) {
        for (size_t i = 0; i < rel->ncols; i++) {
            const gw_pgo_value_t *v = i < keytup->ncols ? &keytup->cols[i] : NULL;
            values[i] = v != NULL && v->kind == 't' ? v->data : NULL;
            lens[i] = v != NULL && v->kind == 't' ? v->len : 0;
        }
        /* with REPLICA IDENTITY FULL every column is flagged key in the Relation message */
        gw__repl_row_key(&r->key, rel->ncols, rel->is_key, values, lens);
        oldkey = gw_arena_strndup(&r->arena, r->key.data, r->key.len);
    }
    if (m->kind == GW_PGO_DELETE) return gw__repl_store_delete(r, rel->qname, oldkey, err);
    const gw_pgo_tuple_t *tup =
        m->kind == GW_PGO_INSERT ? &m->u.insert.newtup : &m->u.update.newtup;
    /* key of the new row (key columns are never unchanged-TOAST) */
    for (size_t i = 0; i < rel->ncols; i++) {
        const gw_pgo_value_t *v = i < tup->ncols ? &tup->cols[i] : NULL;
        values[i] = v != NULL && v->kind == 't' ? v->data : NULL;
        lens[i] = v != NULL && v->kind == 't' ? v->len : 0;
    }
    gw__repl_row_key(&r->key, rel->ncols, rel->is_key, values, lens);
    char *newkey = gw_arena_strndup(&r->arena, r->key.data, r->key.len);
    if (oldkey != NULL && strcmp(oldkey, newkey) != 0) {
        /* the key changed: delete the old row, insert the new one */
        rc = gw__repl_store_delete(r, rel->qname, oldkey, err);
        if (rc != 0) return rc;
    }
    const gw_pgo_tuple_t *old =
        m->kind == GW_PGO_UPDATE && m->u.update.oldkind == 'O' ? &m->u.update.oldtup : NULL;
    void *copy = NULL;
    for (size_t i = 0; i < tup->ncols; i++)
        if (tup->cols[i].kind == 'u') {
            /* the stored copy is read from the writer: let the apply thread catch up */
            if (gw__repl_pipe_drain(r, err) != 0) return GW_EIO;
            break;
        }
    if (resolve_tuple(r, rel, tup, old, newkey, values, lens, &copy) != 0)
        return reread_row(r, rel, newkey, err);
    rc = gw__repl_apply_row(r, rel->schema, rel->name, rel->qname, rel->ncols,
                            (const char *const *)rel->names, rel->types, values, lens, newkey, err);
    free(copy);
    return rc;
}

static int on_truncate(gw_repl_t *r, const gw_pgo_msg_t *m, gw_err_t *err)
{
    for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
        rel_t *rel = find_rel(r, m->u.truncate.relids[i]);
        if (rel == NULL || !rel->tracked) continue;
        int rc = gw__repl_batch_begin(r, err);
        if (rc == 0) rc = gw__repl_storage_direct(r, err);
        if (rc == 0) rc = gw_storage_truncate(r->st, rel->qname, err);
        if (rc != 0) return rc;
        gw_info("repl", "table truncated; removed its rows", "table=%s", rel->qname);
    }
    return 0;
}

static int on_xlogdata(gw_repl_t *r, const gw_pgo_frame_t *f, gw_err_t *err)
{
    gw_pgo_msg_t m;
    gw_arena_reset(&r->arena);
    int rc = gw_pgo_decode(f->payload, f->payload_len, &r->arena, &m, err);
    if (rc != 0) return rc;
    uint64_t stored_lsn = r->pos_lsn; /* everything below was applied (invariant 2) */
    switch (m.kind) {
    case GW_PGO_BEGIN:
        r->in_pg_txn = 1;
        r->skip_txn = m.u.begin.final_lsn < stored_lsn;
        atomic_store(&r->m_recv_commit_us, m.u.begin.commit_time);
        return 0;
    case GW_PGO_COMMIT:
        r->in_pg_txn = 0;
        atomic_fetch_add(&r->m_txns, 1);
        if (!r->skip_txn && r->batch_open && m.u.commit.end_lsn > r->batch_lsn)
            r->batch_lsn = m.u.commit.end_lsn;
        if (!r->skip_txn && r->batch_open && r->batch_source_us == 0)
            r->batch_source_us = m.u.commit.commit_time;
        if (!r->skip_txn && r->batch_open) r->batch_source_last_us = m.u.commit.commit_time;
        r->skip_txn = 0;
        return 0;
    case GW_PGO_RELATION:
        on_relation(r, &m);
        return 0;
    case GW_PGO_INSERT:
    case GW_PGO_UPDATE:
    case GW_PGO_DELETE:
        return r->skip_txn ? 0 : on_change(r, &m, err);
    case GW_PGO_TRUNCATE:
        return r->skip_txn ? 0 : on_truncate(r, &m, err);
    case GW_PGO_MESSAGE:
        if (!r->in_pg_txn && m.u.message.lsn > stored_lsn) {
            /* a non-transactional message (write checkpoint marker): an LSN-only checkpoint */
            rc = gw__repl_batch_begin(r, err);
            if (rc == 0 && m.u.message.lsn > r->batch_lsn) r->batch_lsn = m.u.message.lsn;
            return rc;
        }
        return 0;
    default:
        return 0;
    }
}

int gw__repl_stream(gw_repl_t *r, gw_err_t *err)
{
    uint64_t last_op, lsn;
    gw_storage_checkpoint(r->st, &last_op, &lsn);
    char lsntext[32], sql[512];
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL %s (proto_version '1', publication_names '%s', "
             "messages 'true')",
             r->slot, gw_lsn_format(r->test_replay ? 0 : lsn, lsntext, sizeof(lsntext)),
             r->publication);
    PGresult *res = PQexec(r->rc, sql);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        char m[512];
        gw_err_set(err, GW_EPG, "repl", "could not start replication: %s",
                   PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                : gw_pg_error(r->rc, m, sizeof(m)));
        PQclear(res);
        return GW_EPG;
    }
    PQclear(res);
    r->acked_lsn = lsn;
    r->batch_lsn = lsn;
    r->pos_lsn = lsn;
    atomic_store(&r->m_last_op, last_op);
    atomic_store(&r->m_lsn, lsn); /* what storage holds, before this run's first commit */
    if (gw__repl_pipe_start(r, err) != 0) return GW_ESYS;
    gw_info("repl", "streaming changes", "slot=%s from=%s", r->slot, lsntext);
    r->poll_ms = 0;
    gw__repl_poll_slot(r);
    gw__repl_set_phase(
        r, 3, gw_storage_consistent(r->st) ? NULL : "waiting for the stream to pass the snapshot");
    clock_gettime(CLOCK_MONOTONIC, &r->last_status);
    int rc = 0;
    uint64_t last_lsn_only = 0, ask_ms = 0;
    /* silence: time spent waiting for the socket since the last message (time the thread spent
     * on other work does not count, so a busy replicator never takes itself for a silent source) */
    uint64_t silent_ms = 0, reply_asked_ms = 0;
    const uint64_t timeout_ms = (uint64_t)r->timeout_s * 1000;
    while (rc == 0 && !atomic_load(&r->stop) && !r->switch_wanted) {
        char *buf = NULL;
        int len = PQgetCopyData(r->rc, &buf, 1);
        if (len > 0) {
            silent_ms = reply_asked_ms = 0;
            gw__repl_heard(r);
            gw_pgo_frame_t f;
            rc = gw_pgo_frame(buf, (size_t)len, &f, err);
            if (rc == 0 && f.kind == GW_PGO_XLOGDATA) {
                atomic_store(&r->m_server_wal_end, f.wal_end);
                rc = on_xlogdata(r, &f, err);
            } else if (rc == 0 && f.kind == GW_PGO_KEEPALIVE) {
                atomic_store(&r->m_server_wal_end, f.wal_end);
                if (!r->in_pg_txn && !r->batch_open && f.wal_end > r->pos_lsn &&
                    (f.reply_requested || !gw_storage_consistent(r->st) ||
                     gw__repl_now_ms() - last_lsn_only >= 1000)) {
                    /* nothing pending: an LSN-only checkpoint at the server's position */
                    rc = gw__repl_batch_begin(r, err);
                    r->batch_lsn = f.wal_end;
                    if (rc == 0) rc = gw__repl_flush_batch(r, err);
                    last_lsn_only = gw__repl_now_ms();
                }
                if (rc == 0 && f.reply_requested) rc = send_status(r, r->acked_lsn, 0, err);
            }
            PQfreemem(buf);
            if (rc == 0) rc = gw__repl_maybe_ack(r, err);
            if (rc == 0 && r->batch_open && !r->in_pg_txn &&
                (r->batch_changes >= BATCH_MAX_CHANGES ||
                 gw__repl_elapsed_ms(&r->batch_started) >=
                     (r->shared ? BATCH_MAX_MS_SHARED : BATCH_MAX_MS))) {
                rc = gw__repl_flush_batch(r, err);
                if (rc == 0) gw__repl_poll_slot(r);
            }
            continue;
        }
        if (len == 0) {
            /* nothing more is waiting: never hold a finished transaction back */
            if (r->batch_open && !r->in_pg_txn) {
                rc = gw__repl_flush_batch(r, err);
                if (rc != 0) break;
            }
            if (!r->in_pg_txn) {
                /* the replicator's own work (tasks, compaction, retired versions, rule versions)
                 * may take a while, during which it does not read the source: that time is not
                 * the source's silence (gw__repl_source_silent looks past it) */
                uint64_t w0 = gw__repl_busy_begin(r);
                rc = gw__repl_maybe_ack(r, err);
                if (rc == 0) rc = gw__repl_run_tasks(r, err);
                if (rc == 0 && !r->batch_open) rc = maybe_compact(r, err);
                if (rc == 0 && !r->batch_open && gw__repl_now_ms() - r->old_check_ms >= 1000) {
                    r->old_check_ms = gw__repl_now_ms();
                    gw__repl_drop_retired(r);
                }
                if (rc == 0 && !r->batch_open && !r->builder) rc = gw__repl_rule_versions(r, err);
                gw__repl_busy_end(r, w0);
                if (rc == 0 && !r->batch_open && r->shared && !r->builder &&
                    gw__repl_now_ms() - r->lead_ms >= 1000)
                    rc = gw__repl_check_lead(r, err);
                if (rc != 0) break;
            }
            gw__repl_poll_slot(r);
            if (!gw_storage_consistent(r->st) && !r->in_pg_txn &&
                gw__repl_now_ms() - ask_ms >= 250) {
                /* not consistent yet and nothing arrives (an idle database): ask the server
                 * for a keepalive, whose position makes an LSN-only checkpoint past the
                 * snapshot's marks */
                ask_ms = gw__repl_now_ms();
                rc = send_status(r, r->acked_lsn, 1, err);
                if (rc != 0) break;
            }
            if (gw__repl_elapsed_ms(&r->last_status) >= STATUS_INTERVAL_MS) {
                rc = send_status(r, r->acked_lsn, 0, err);
                if (rc != 0) break;
            }
            /* an idle source still answers a status update that asks for a reply (with a
             * keepalive): ask every third of replication.timeout of silence; silence for the
             * whole timeout means the source or the network is gone (a half-open connection
             * looks exactly like this: no error, no data) */
            if (silent_ms >= timeout_ms) {
                char why[256];
                snprintf(why, sizeof(why),
                         "the replication source sent nothing for %llu s (replication.timeout); "
                         "reconnecting",
                         (unsigned long long)(silent_ms / 1000));
                gw__repl_source_set(r, GW__SRC_SILENT, why);
                rc = gw_err_set(err, GW_EPG, "repl", "%s", why);
                break;
            }
            if (silent_ms >= timeout_ms / 3 && silent_ms - reply_asked_ms >= timeout_ms / 3) {
                reply_asked_ms = silent_ms;
                rc = send_status(r, r->acked_lsn, 1, err);
                if (rc != 0) break;
            }
            int fd = PQsocket(r->rc);
            fd_set rfds;
            FD_ZERO(&rfds);
            FD_SET(fd, &rfds);
            FD_SET(r->task_fd, &rfds);
            struct timeval tv = {0, 100000};
            int maxfd = fd > r->task_fd ? fd : r->task_fd;
            struct timespec w0;
            clock_gettime(CLOCK_MONOTONIC, &w0);
            if (select(maxfd + 1, &rfds, NULL, NULL, &tv) < 0 && errno != EINTR) {
                rc = gw_err_set(err, GW_ESYS, "repl", "select failed: %s", strerror(errno));
                break;
            }
            silent_ms += gw__repl_elapsed_ms(&w0);
            if (PQconsumeInput(r->rc) == 0) {
                char m[256];
                rc = gw_err_set(err, GW_EPG, "repl", "lost the replication connection: %s",
                                gw_pg_error(r->rc, m, sizeof(m)));
            }
            continue;
        }
        char m[256];
        if (len == -1) {
            res = PQgetResult(r->rc);
            rc = gw_err_set(err, GW_EPG, "repl", "replication ended: %s",
                            res != NULL && PQresultErrorMessage(res)[0]
                                ? PQresultErrorMessage(res)
                                : "the server closed the stream");
            PQclear(res);
        } else {
            rc = gw_err_set(err, GW_EPG, "repl", "replication failed: %s",
                            gw_pg_error(r->rc, m, sizeof(m)));
        }
    }
    if (rc == 0 && r->batch_open && !r->in_pg_txn) rc = gw__repl_flush_batch(r, err);
    return gw__repl_pipe_stop(r, rc, err);
}
