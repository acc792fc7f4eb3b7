/* gw_repl_diag.c -- the replicator's health: slot figures, diagnostics and metrics
 *
 * The replicator polls its slot every POLL_INTERVAL_MS (wal_status, safe_wal_size, retained
 * WAL, confirmed LSN) and the storage's totals, and warns above replication.lag_warn_seconds and
 * replication.wal_warn_bytes. Other threads read the figures through atomics and diag_lock:
 * GET /api/admin/diagnostics (gw_repl_diagnostics) and /metrics (gw_repl_metrics).
 *
 * Source health (readiness check "replication source", serving replicator only). The check is
 * live (gw__repl_source_ready, asked at every readiness request): not ready when the source sent
 * nothing for replication.timeout, whatever the replicator thread is doing (it may be blocked on
 * that very source), or while the serving version is rebuilt after its slot was lost. The state
 * below is what the diagnostics and the log show:
 *
 *   OK ---- nothing for replication.timeout (stream loop, or repl_main between tries) --> SILENT
 *    ^ ---- the serving version's slot is gone (gw__repl_rebuild) -----------------> SLOT_LOST
 *    |                                                                                   |
 *    +---- data arrives (gw__repl_heard) / the rebuilt version took over (do_switch) ----+
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

/* ---- source health ---- */

static const char *const src_names[] = {"ok", "silent", "slot lost"};

void gw__repl_source_set(gw_repl_t *r, int state, const char *reason)
{
    int old = atomic_exchange(&r->src_state, state);
    pthread_mutex_lock(&r->diag_lock);
    snprintf(r->src_reason, sizeof(r->src_reason), "%s", reason != NULL ? reason : "");
    pthread_mutex_unlock(&r->diag_lock);
    if (old == state) return;
    if (state == GW__SRC_OK)
        gw_info("repl", "the replication source is healthy again", "slot=%s was=\"%s\"", r->slot,
                src_names[old]);
    else
        gw_error("repl", reason, "slot=%s state=\"%s\"", r->slot, src_names[state]);
}

void gw__repl_heard(gw_repl_t *r)
{
    atomic_store(&r->msg_ms, gw__repl_now_ms());
    if (atomic_load(&r->src_state) == GW__SRC_SILENT) gw__repl_source_set(r, GW__SRC_OK, NULL);
}

int gw__repl_source_silent(gw_repl_t *r, char *why, size_t len)
{
    uint64_t now = gw__repl_now_ms(), msg = atomic_load(&r->msg_ms);
    if (atomic_load(&r->busy)) return 0;    /* not reading the source: no silence to count */
    if (atomic_load(&r->standby)) return 0; /* a standby does not read it: the leader does */
    if (now < msg || now - msg < (uint64_t)r->timeout_s * 1000) return 0;
    pthread_mutex_lock(&r->diag_lock);
    snprintf(
        why, len,
        "the replication source has sent nothing for %llu s (replication.timeout %ld s)%s%.300s",
        (unsigned long long)((now - msg) / 1000), r->timeout_s,
        r->diag.last_error[0] ? "; last error: " : "", r->diag.last_error);
    pthread_mutex_unlock(&r->diag_lock);
    return 1;
}

int gw__repl_source_ready(void *ud, char *reason, size_t len)
{
    gw_repl_t *r = ud;
    if (atomic_load(&r->src_state) == GW__SRC_SLOT_LOST) {
        pthread_mutex_lock(&r->diag_lock);
        snprintf(reason, len, "%s", r->src_reason);
        pthread_mutex_unlock(&r->diag_lock);
        return 0;
    }
    return !gw__repl_source_silent(r, reason, len);
}

/* ---- slot health ---- */

#define POLL_INTERVAL_MS 5000

#define WARN_INTERVAL_MS 60000

static double lag_seconds(gw_repl_t *r, uint64_t lag_bytes)
{
    /* since the newer of: the last transaction received, the last time storage held all the
     * server had sent (an idle source whose server writes other databases' WAL is not behind) */
    int64_t commit = atomic_load(&r->m_recv_commit_us), caught = atomic_load(&r->m_caught_up_us);
    if (caught > commit) commit = caught;
    if (lag_bytes == 0 || commit == 0) return 0;
    int64_t d = gw_pgo_now() - commit;
    return d > 0 ? (double)d / 1e6 : 0;
}

static uint64_t lag_bytes(gw_repl_t *r)
{
    uint64_t lsn = atomic_load(&r->m_lsn), end = atomic_load(&r->m_server_wal_end);
    return end > lsn ? end - lsn : 0;
}

/* Read the slot's state from Postgres and storage totals; warn above the configured limits. */
void gw__repl_poll_slot(gw_repl_t *r)
{
    uint64_t now = gw__repl_now_ms();
    if (r->poll_ms != 0 && now - r->poll_ms < POLL_INTERVAL_MS) return;
    if (!r->builder) gw__repl_note_storage(r);
    double dt = r->poll_ms != 0 ? (double)(now - r->poll_ms) / 1000.0 : 0;
    r->poll_ms = now;
    gw_err_t err;
    const char *pv[1] = {r->slot};
    PGresult *res =
        r->q == NULL
            ? NULL
            : gw_pg_query_params(r->q,
                                 "SELECT coalesce(wal_status, ''), coalesce(safe_wal_size, "
                                 "-1), coalesce(pg_current_wal_lsn() - restart_lsn, 0), "
                                 "coalesce(confirmed_flush_lsn::text, '0/0'), "
                                 "pg_current_wal_lsn()::text FROM pg_replication_slots "
                                 "WHERE slot_name = $1",
                                 1, pv, &err);
    uint64_t last_op = atomic_load(&r->m_last_op);
    gw_storage_stats_t stats;
    int have_stats = gw_storage_stats(r->st, &stats) == 0;
    pthread_mutex_lock(&r->diag_lock);
    if (res != NULL && PQntuples(res) == 1) {
        r->diag.known = 1;
        snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "%s", PQgetvalue(res, 0, 0));
        r->diag.safe_wal_size = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        r->diag.retained = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
        gw_lsn_parse(PQgetvalue(res, 0, 3), &r->diag.confirmed);
        gw_lsn_parse(PQgetvalue(res, 0, 4), &r->diag.server_lsn);
    } else if (res != NULL) {
        r->diag.known = 0;
        snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "missing");
    }
    if (dt > 0 && last_op >= r->poll_last_op)
        r->diag.ops_per_s = (double)(last_op - r->poll_last_op) / dt;
    r->poll_last_op = last_op;
    if (have_stats) {
        r->diag.rows = stats.rows;
        r->diag.buckets = stats.buckets;
        r->diag.ops = stats.ops;
    }
    uint64_t retained = r->diag.retained;
    int known = r->diag.known;
    pthread_mutex_unlock(&r->diag_lock);
    PQclear(res);
    uint64_t lb = lag_bytes(r);
    double ls = lag_seconds(r, lb);
    if (ls > (double)r->lag_warn_seconds && now - r->warn_lag_ms >= WARN_INTERVAL_MS) {
        r->warn_lag_ms = now;
        gw_warn("repl", "replication lags behind Postgres",
                "slot=%s lag_seconds=%.0f "
                "lag_bytes=%llu limit_seconds=%ld",
                r->slot, ls, (unsigned long long)lb, r->lag_warn_seconds);
    }
    if (known && retained > (uint64_t)r->wal_warn_bytes &&
        now - r->warn_wal_ms >= WARN_INTERVAL_MS) {
        r->warn_wal_ms = now;
        gw_warn("repl", "the replication slot retains much WAL on the Postgres server",
                "slot=%s retained_bytes=%llu limit_bytes=%ld", r->slot,
                (unsigned long long)retained, r->wal_warn_bytes);
    }
}

/* ,"storage":{…}: the storage and this instance's part in it (a shared storage's leader,
 * epoch, notification lag, read connections). */
static void storage_json(gw_buf_t *out, const gw_storage_info_t *s)
{
    gw_buf_puts(out, ",\"storage\":{\"kind\":");
    gw_buf_json_str(out, s->kind != NULL ? s->kind : "");
    gw_buf_puts(out, ",\"where\":");
    gw_buf_json_str(out, s->where);
    gw_buf_printf(out, ",\"role\":\"%s\",\"reachable\":%s", s->leader ? "leader" : "standby",
                  s->reachable ? "true" : "false");
    if (s->shared) {
        gw_buf_printf(out, ",\"epoch\":%llu,\"instance\":", (unsigned long long)s->epoch);
        gw_buf_json_str(out, s->instance);
        gw_buf_puts(out, ",\"leader\":");
        gw_buf_json_str(out, s->leader_instance);
        if (s->notify_lag_us >= 0)
            gw_buf_printf(out, ",\"notify_lag_ms\":%.3f", (double)s->notify_lag_us / 1000.0);
        else
            gw_buf_puts(out, ",\"notify_lag_ms\":null");
        gw_buf_printf(out, ",\"relayed_commits\":%llu,\"catchups\":%llu,\"read_connections\":%llu",
                      (unsigned long long)s->relayed, (unsigned long long)s->catchups,
                      (unsigned long long)s->read_conns);
    }
    gw_buf_puts(out, "}");
}

void gw_repl_diagnostics(gw_repl_t *r, gw_buf_t *out)
{
    uint64_t lsn = atomic_load(&r->m_lsn), lb = lag_bytes(r);
    char t1[32], t2[32], t3[32];
    pthread_mutex_lock(&r->diag_lock);
    gw_buf_puts(out, "{\"slot\":");
    gw_buf_json_str(out, r->slot);
    gw_buf_puts(out, ",\"rules_version\":");
    gw_buf_json_str(out, r->version);
    gw_buf_puts(out, ",\"phase\":");
    gw_buf_json_str(out, gw__repl_phase_names[atomic_load(&r->m_phase)]);
    gw_buf_printf(out,
                  ",\"ready\":%s,\"stored_lsn\":\"%s\",\"confirmed_lsn\":\"%s\","
                  "\"server_lsn\":\"%s\",\"lag_bytes\":%llu,\"lag_seconds\":%.3f,",
                  atomic_load(&r->ready) ? "true" : "false", gw_lsn_format(lsn, t1, sizeof(t1)),
                  gw_lsn_format(r->diag.confirmed, t2, sizeof(t2)),
                  gw_lsn_format(r->diag.server_lsn, t3, sizeof(t3)), (unsigned long long)lb,
                  lag_seconds(r, lb));
    gw_buf_puts(out, "\"wal_status\":");
    gw_buf_json_str(out, r->diag.wal_status);
    if (r->diag.safe_wal_size >= 0)
        gw_buf_printf(out, ",\"safe_wal_size\":%lld", (long long)r->diag.safe_wal_size);
    else
        gw_buf_puts(out, ",\"safe_wal_size\":null");
    uint64_t size = gw_storage_size(r->sopts);
    gw_buf_printf(out,
                  ",\"retained_wal_bytes\":%llu,\"ops_per_second\":%.1f,\"last_op\":\"%llu\","
                  "\"storage_bytes\":%llu,\"buckets\":%llu,\"rows\":%llu,\"ops\":%llu,"
                  "\"changes\":%llu,\"transactions\":%llu,\"last_error\":",
                  (unsigned long long)r->diag.retained, r->diag.ops_per_s,
                  (unsigned long long)atomic_load(&r->m_last_op), (unsigned long long)size,
                  (unsigned long long)r->diag.buckets, (unsigned long long)r->diag.rows,
                  (unsigned long long)r->diag.ops, (unsigned long long)atomic_load(&r->m_changes),
                  (unsigned long long)atomic_load(&r->m_txns));
    if (r->diag.last_error[0] != '\0')
        gw_buf_json_str(out, r->diag.last_error);
    else
        gw_buf_puts(out, "null");
    uint64_t msg = atomic_load(&r->msg_ms);
    pthread_mutex_unlock(&r->diag_lock);
    char why[512] = "";
    int st = atomic_load(&r->src_state);
    if (st == GW__SRC_OK && gw__repl_source_silent(r, why, sizeof(why))) st = GW__SRC_SILENT;
    pthread_mutex_lock(&r->diag_lock);
    if (why[0] == '\0') snprintf(why, sizeof(why), "%s", st != GW__SRC_OK ? r->src_reason : "");
    gw_buf_puts(out, ",\"source\":{\"state\":");
    gw_buf_json_str(out, src_names[st]);
    gw_buf_puts(out, ",\"reason\":");
    if (why[0] != '\0')
        gw_buf_json_str(out, why);
    else
        gw_buf_puts(out, "null");
    if (msg != 0)
        gw_buf_printf(out, ",\"last_message_seconds\":%.1f",
                      (double)(gw__repl_now_ms() - msg) / 1000.0);
    else
        gw_buf_puts(out, ",\"last_message_seconds\":null");
    gw_buf_printf(out, ",\"timeout_seconds\":%ld}", r->timeout_s);
    storage_json(out, &r->diag.storage);
    pthread_mutex_unlock(&r->diag_lock);
    /* a new rule version being built beside this one (the replicator thread sets and clears
     * next; a builder lives until that thread destroys it, after the switch or a discard) */
    pthread_mutex_lock(&r->next_lock);
    gw_repl_t *b = r->next;
    if (b != NULL) {
        pthread_mutex_lock(&b->diag_lock);
        gw_buf_puts(out, ",\"building\":{\"rules_version\":");
        gw_buf_json_str(out, b->version);
        gw_buf_puts(out, ",\"slot\":");
        gw_buf_json_str(out, b->slot);
        gw_buf_puts(out, ",\"phase\":");
        gw_buf_json_str(out, gw__repl_phase_names[atomic_load(&b->m_phase)]);
        gw_buf_printf(out,
                      ",\"consistent\":%s,\"snapshot_rows\":%llu,\"snapshot_rows_estimated\":%llu,"
                      "\"stored_lsn\":\"%s\",\"last_error\":",
                      gw_storage_consistent(b->st) ? "true" : "false",
                      (unsigned long long)atomic_load(&b->m_snapshot_rows),
                      (unsigned long long)atomic_load(&b->m_snapshot_estimate),
                      gw_lsn_format(atomic_load(&b->m_lsn), t1, sizeof(t1)));
        if (b->diag.last_error[0] != '\0')
            gw_buf_json_str(out, b->diag.last_error);
        else
            gw_buf_puts(out, "null");
        gw_buf_puts(out, "}");
        pthread_mutex_unlock(&b->diag_lock);
    }
    pthread_mutex_unlock(&r->next_lock);
    gw_buf_puts(out, "}");
}

/* The storage's lines: its kind and this instance's role; with a shared storage the epoch, the
 * notification lag, relays, catch-ups and read connections. */
static void storage_metrics(gw_buf_t *out, const gw_storage_info_t *s)
{
    gw_buf_puts(out, "# HELP ferry_storage_info The storage backend and this instance's role in it."
                     "\n# TYPE ferry_storage_info gauge\n");
    gw_buf_printf(out, "ferry_storage_info{kind=\"%s\",role=\"%s\",instance=\"%s\"} 1\n",
                  s->kind != NULL ? s->kind : "", s->leader ? "leader" : "standby", s->instance);
    gw_buf_puts(out,
                "# HELP ferry_storage_leader Whether this instance replicates into the storage."
                "\n# TYPE ferry_storage_leader gauge\n");
    gw_buf_printf(out, "ferry_storage_leader %d\n", s->leader ? 1 : 0);
    gw_buf_puts(out, "# HELP ferry_storage_reachable Whether the storage database answers.\n"
                     "# TYPE ferry_storage_reachable gauge\n");
    gw_buf_printf(out, "ferry_storage_reachable %d\n", s->reachable ? 1 : 0);
    if (!s->shared) return;
    gw_buf_puts(out, "# HELP ferry_storage_epoch The leader epoch (increments at each takeover).\n"
                     "# TYPE ferry_storage_epoch gauge\n");
    gw_buf_printf(out, "ferry_storage_epoch %llu\n", (unsigned long long)s->epoch);
    gw_buf_puts(out, "# HELP ferry_storage_notify_lag_seconds From the leader's storage commit to "
                     "this instance relaying it (wall clocks), the last one.\n"
                     "# TYPE ferry_storage_notify_lag_seconds gauge\n");
    gw_buf_printf(out, "ferry_storage_notify_lag_seconds %.6f\n",
                  s->notify_lag_us >= 0 ? (double)s->notify_lag_us / 1e6 : 0.0);
    gw_buf_puts(out, "# TYPE ferry_storage_relayed_commits_total counter\n");
    gw_buf_printf(out, "ferry_storage_relayed_commits_total %llu\n",
                  (unsigned long long)s->relayed);
    gw_buf_puts(out, "# TYPE ferry_storage_catchups_total counter\n");
    gw_buf_printf(out, "ferry_storage_catchups_total %llu\n", (unsigned long long)s->catchups);
    gw_buf_puts(out, "# HELP ferry_storage_read_connections Readers' connections to the storage "
                     "database open in this instance.\n"
                     "# TYPE ferry_storage_read_connections gauge\n");
    gw_buf_printf(out, "ferry_storage_read_connections %llu\n", (unsigned long long)s->read_conns);
}

void gw_repl_metrics(gw_buf_t *out, void *arg)
{
    gw_repl_t *r = arg;
    uint64_t lsn = atomic_load(&r->m_lsn), end = atomic_load(&r->m_server_wal_end);
    gw_buf_puts(out,
                "# HELP ferry_replication_phase Replicator phase (0 check, 1 slot, 2 snapshot, "
                "3 streaming, 4 retrying, 5 standby, 6 rebuilding).\n# TYPE "
                "ferry_replication_phase gauge\n");
    gw_buf_printf(out, "ferry_replication_phase %d\n", atomic_load(&r->m_phase));
    gw_buf_puts(out, "# TYPE ferry_snapshot_rows_total counter\n");
    gw_buf_printf(out, "ferry_snapshot_rows_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_snapshot_rows));
    gw_buf_puts(out, "# TYPE ferry_snapshot_rows_estimated gauge\n");
    gw_buf_printf(out, "ferry_snapshot_rows_estimated %llu\n",
                  (unsigned long long)atomic_load(&r->m_snapshot_estimate));
    gw_buf_puts(out, "# TYPE ferry_replication_changes_total counter\n");
    gw_buf_printf(out, "ferry_replication_changes_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_changes));
    gw_buf_puts(out, "# TYPE ferry_replication_transactions_total counter\n");
    gw_buf_printf(out, "ferry_replication_transactions_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_txns));
    gw_buf_puts(out, "# TYPE ferry_storage_commits_total counter\n");
    gw_buf_printf(out, "ferry_storage_commits_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_commits));
    gw_buf_puts(out, "# HELP ferry_storage_commit_seconds_total Time spent committing to storage "
                     "(writing the WAL; the syncer thread syncs it).\n"
                     "# TYPE ferry_storage_commit_seconds_total counter\n");
    gw_buf_printf(out, "ferry_storage_commit_seconds_total %.6f\n",
                  (double)atomic_load(&r->m_commit_us) / 1e6);
    gw_hist_render(out, &r->h_commit, "ferry_storage_commit_duration_seconds",
                   "Duration of each storage commit (writing the WAL; the syncer thread "
                   "syncs it).");
    gw_hist_render(out, &r->h_source, "ferry_replication_source_to_storage_seconds",
                   "From a Postgres commit to the storage commit that holds it (the "
                   "first transaction of each batch).");
    gw_buf_puts(out, "# HELP ferry_replication_lag_bytes WAL the server has sent past our last "
                     "commit.\n# TYPE ferry_replication_lag_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_lag_bytes %llu\n",
                  (unsigned long long)(end > lsn ? end - lsn : 0));
    gw_buf_puts(out, "# HELP ferry_replication_lag_seconds Age of the transaction being applied "
                     "while behind.\n# TYPE ferry_replication_lag_seconds gauge\n");
    gw_buf_printf(out, "ferry_replication_lag_seconds %.3f\n",
                  lag_seconds(r, end > lsn ? end - lsn : 0));
    gw_buf_puts(out, "# HELP ferry_replication_stored_lsn Source position of the last storage "
                     "commit.\n# TYPE ferry_replication_stored_lsn gauge\n");
    gw_buf_printf(out, "ferry_replication_stored_lsn %llu\n", (unsigned long long)lsn);
    gw_buf_puts(out, "# HELP ferry_replication_source_state Health of the replication source (0 "
                     "ok, 1 silent, 2 unreachable, 3 slot lost).\n"
                     "# TYPE ferry_replication_source_state gauge\n");
    gw_buf_printf(out, "ferry_replication_source_state %d\n", atomic_load(&r->src_state));
    uint64_t msg = atomic_load(&r->msg_ms);
    gw_buf_puts(out, "# HELP ferry_replication_last_message_age_seconds Time since the source "
                     "last sent anything (data or keepalive).\n"
                     "# TYPE ferry_replication_last_message_age_seconds gauge\n");
    gw_buf_printf(out, "ferry_replication_last_message_age_seconds %.1f\n",
                  msg != 0 ? (double)(gw__repl_now_ms() - msg) / 1000.0 : 0.0);
    gw_buf_puts(out, "# TYPE ferry_replication_last_op gauge\n");
    gw_buf_printf(out, "ferry_replication_last_op %llu\n",
                  (unsigned long long)atomic_load(&r->m_last_op));
    pthread_mutex_lock(&r->diag_lock);
    gw_buf_puts(out, "# HELP ferry_replication_slot_info The replication slot and its wal_status."
                     "\n# TYPE ferry_replication_slot_info gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_info{slot=\"%s\",wal_status=\"%s\"} 1\n", r->slot,
                  r->diag.wal_status);
    gw_buf_puts(out, "# HELP ferry_replication_slot_retained_bytes WAL the slot keeps on the "
                     "server.\n# TYPE ferry_replication_slot_retained_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_retained_bytes %llu\n",
                  (unsigned long long)r->diag.retained);
    gw_buf_puts(out, "# HELP ferry_replication_slot_safe_wal_size_bytes WAL that may still be "
                     "written before the slot is lost (-1: unlimited).\n"
                     "# TYPE ferry_replication_slot_safe_wal_size_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_safe_wal_size_bytes %lld\n",
                  (long long)r->diag.safe_wal_size);
    gw_buf_puts(out, "# TYPE ferry_replication_confirmed_lsn gauge\n");
    gw_buf_printf(out, "ferry_replication_confirmed_lsn %llu\n",
                  (unsigned long long)r->diag.confirmed);
    gw_buf_puts(out, "# TYPE ferry_storage_ops_per_second gauge\n");
    gw_buf_printf(out, "ferry_storage_ops_per_second %.1f\n", r->diag.ops_per_s);
    gw_buf_puts(out, "# TYPE ferry_storage_buckets gauge\n");
    gw_buf_printf(out, "ferry_storage_buckets %llu\n", (unsigned long long)r->diag.buckets);
    gw_buf_puts(out, "# TYPE ferry_storage_rows gauge\n");
    gw_buf_printf(out, "ferry_storage_rows %llu\n", (unsigned long long)r->diag.rows);
    gw_buf_puts(out, "# TYPE ferry_storage_ops gauge\n");
    gw_buf_printf(out, "ferry_storage_ops %llu\n", (unsigned long long)r->diag.ops);
    storage_metrics(out, &r->diag.storage);
    pthread_mutex_unlock(&r->diag_lock);
    gw_buf_puts(out, "# HELP ferry_rules_version_building A new rule version being built beside "
                     "the serving one (1 with its version and phase; none while there is none).\n"
                     "# TYPE ferry_rules_version_building gauge\n");
    pthread_mutex_lock(&r->next_lock);
    if (r->next != NULL)
        gw_buf_printf(out, "ferry_rules_version_building{version=\"%s\",phase=\"%s\"} 1\n",
                      r->next->version, gw__repl_phase_names[atomic_load(&r->next->m_phase)]);
    pthread_mutex_unlock(&r->next_lock);
}
