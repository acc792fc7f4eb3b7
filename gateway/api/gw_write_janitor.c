/* gw_write_janitor.c -- write-back's background pass: history retention, violations' lifecycle
 *
 * One thread (ferry-wjan) with its own Postgres connection wakes every
 * write_back.recheck_interval seconds, once ferry's tables exist, and
 *   1. trims ferry_write_history of entries older than write_back.history.keep (in runs of
 *      10,000 rows, so no transaction holds many locks for long);
 *   2. re-checks open violations (gw__write_recheck with no row: every open one, oldest first,
 *      up to 1,000 a pass), which covers what write-back cannot see: deletes and plain-SQL
 *      changes of the rows involved;
 *   3. expires open violations older than their constraint's expire_after;
 *   4. counts the open violations for /metrics.
 * At its first pass it warns when the publication carries ferry_write_history (every recorded
 * op would then travel the replication stream for nothing).
 *
 * A violation's states (ferry_violations):
 *
 *      open --gw__write_recheck: the constraint finds nothing now--> resolved (resolved_at)
 *        |
 *        +--expire(): older than constraints.<name>.expire_after--> expired (expired_at)
 *
 * gw__write_recheck also runs in the write transaction, for every op write-back applies to a
 * table with constraints (gw_write_batch.c): the open violations whose row or conflicting ids
 * include the written row are checked again over the rows as they are now.
 *
 * The thread stops with the server (on_shutdown wakes it); it is detached, its connection kept
 * in the module state until the process ends.
 */
#include "api/gw_write_int.h"
#include "base/gw_log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- violations: re-check ------------------------------------------------------------------- */

/* The write rule whose label ("table", "schema.table") is label. */
static const rules_write_rule_t *rule_of(const rules_set_t *set, const char *label)
{
    char buf[256];
    for (size_t i = 0; i < rules_write_count(set); i++)
        if (strcmp(gw__write_table_label(rules_write_at(set, i), buf, sizeof(buf)), label) == 0)
            return rules_write_at(set, i);
    return NULL;
}

static const rules_constraint_t *constraint_of(const rules_set_t *set, const char *name)
{
    for (size_t k = 0; k < rules_constraint_count(set); k++)
        if (strcmp(rules_constraint_at(set, k)->name, name) == 0)
            return rules_constraint_at(set, k);
    return NULL;
}

static int ok_result(PGresult *res)
{
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* Whether constraint con still finds rows for the stored row of violation (row_id, user, and
 * jwt/params: the writer's claims and client parameters as recorded, NULL when not kept: "{}");
 * 1 yes, 0 no (also when the row is gone), -1 failed (*failed set). */
static int still_violated(PGconn *conn, const rules_write_rule_t *r, const rules_constraint_t *con,
                          const char *row_id, const char *user, const char *jwt, const char *params,
                          PGresult **failed)
{
    char *qt = gw__write_qualified(conn, r);
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql, "SELECT to_jsonb(t)::text FROM %s AS t WHERE t.\"id\" = $1", qt);
    gw_buf_append(&sql, "", 1);
    free(qt);
    const char *v[1] = {row_id};
    PGresult *res = PQexecParams(conn, sql.data, 1, NULL, v, NULL, NULL, 0);
    gw_buf_free(&sql);
    if (!ok_result(res)) {
        *failed = res;
        return -1;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    const char *values[16];
    int n = con->stmt.nbinds < 16 ? con->stmt.nbinds : 16;
    for (int i = 0; i < n; i++) {
        switch (con->stmt.binds[i]) {
        case RULES_BIND_NEW_ROW_JSONB:
            values[i] = PQgetvalue(res, 0, 0);
            break;
        case RULES_BIND_USER_ID: /* the writer the violation was recorded for */
            values[i] = user;
            break;
        case RULES_BIND_JWT_JSONB: /* as the write that raised it saw them */
            values[i] = jwt != NULL ? jwt : "{}";
            break;
        case RULES_BIND_PARAMS_JSONB:
            values[i] = params != NULL ? params : "{}";
            break;
        default:
            values[i] = NULL;
        }
    }
    PGresult *chk = PQexecParams(conn, con->stmt.sql, n, NULL, values, NULL, NULL, 0);
    PQclear(res);
    if (!ok_result(chk)) {
        *failed = chk;
        return -1;
    }
    int violated = PQntuples(chk) > 0 && !PQgetisnull(chk, 0, 0) && PQgetvalue(chk, 0, 0)[0] == 't';
    PQclear(chk);
    return violated;
}

int gw__write_recheck(PGconn *conn, const rules_set_t *set, const char *label, const char *id,
                      size_t *resolved, PGresult **failed)
{
    *failed = NULL;
    const char *v[2] = {label, id};
    PGresult *open = PQexecParams(
        conn,
        "SELECT id, constraint_name, table_name, row_id, user_id, (request->'jwt')::text, "
        "(request->'parameters')::text FROM ferry_violations WHERE "
        "resolved_at IS NULL AND expired_at IS NULL AND ($2::text IS NULL OR (table_name = $1 "
        "AND (row_id = $2 OR conflicting_ids ? $2))) ORDER BY created_at LIMIT 1000",
        2, NULL, v, NULL, NULL, 0);
    if (!ok_result(open)) {
        *failed = open;
        return -1;
    }
    for (int i = 0; i < PQntuples(open); i++) {
        const rules_constraint_t *con = constraint_of(set, PQgetvalue(open, i, 1));
        const rules_write_rule_t *r = rule_of(set, PQgetvalue(open, i, 2));
        if (con == NULL || r == NULL) continue; /* no longer in the rules: left as it is */
        int still = still_violated(conn, r, con, PQgetvalue(open, i, 3), PQgetvalue(open, i, 4),
                                   PQgetisnull(open, i, 5) ? NULL : PQgetvalue(open, i, 5),
                                   PQgetisnull(open, i, 6) ? NULL : PQgetvalue(open, i, 6), failed);
        if (still < 0) {
            PQclear(open);
            return -1;
        }
        if (still) continue;
        const char *vid[1] = {PQgetvalue(open, i, 0)};
        PGresult *u = PQexecParams(conn,
                                   "UPDATE ferry_violations SET resolved_at = now() WHERE id = $1 "
                                   "AND resolved_at IS NULL",
                                   1, NULL, vid, NULL, NULL, 0);
        if (!ok_result(u)) {
            *failed = u;
            PQclear(open);
            return -1;
        }
        if (atoi(PQcmdTuples(u)) > 0) {
            (*resolved)++;
            atomic_fetch_add(&gw__write_mod.violations_resolved, 1);
        }
        PQclear(u);
    }
    PQclear(open);
    return 0;
}

/* ---- the background pass ---------------------------------------------------------------- */

static struct {
    pthread_t thread;
    PGconn *conn;
    int warned_publication;
} jan;

/* Run sql with values; 0, or -1 with the problem logged. Rows affected into *n when given. */
static int run(PGconn *conn, const char *what, const char *sql, int nv, const char *const *v,
               long *n)
{
    PGresult *res = PQexecParams(conn, sql, nv, NULL, v, NULL, NULL, 0);
    int ok = ok_result(res);
    if (!ok) {
        char q[600];
        const char *m = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        gw_warn("write", "background pass failed", "step=%s error=%s", what,
                gw_log_qs(m != NULL ? m : PQerrorMessage(conn), q, sizeof(q)));
    } else if (n != NULL) {
        *n = atol(PQcmdTuples(res));
    }
    PQclear(res);
    return ok ? 0 : -1;
}

static void trim_history(PGconn *conn, long keep)
{
    char secs[32];
    snprintf(secs, sizeof(secs), "%ld", keep);
    const char *v[1] = {secs};
    long n = 10000;
    while (n >= 10000 && !gw__write_stopping()) {
        if (run(conn, "history",
                "DELETE FROM ferry_write_history WHERE id IN (SELECT id FROM "
                "ferry_write_history WHERE at < now() - make_interval(secs => $1::float8) "
                "ORDER BY id LIMIT 10000)",
                1, v, &n) != 0)
            return;
        atomic_fetch_add(&gw__write_mod.history_trimmed, (uint_fast64_t)n);
    }
}

static void expire(PGconn *conn, const rules_set_t *set)
{
    for (size_t k = 0; k < rules_constraint_count(set); k++) {
        const rules_constraint_t *con = rules_constraint_at(set, k);
        if (con->expire_after <= 0) continue;
        char secs[32];
        snprintf(secs, sizeof(secs), "%ld", con->expire_after);
        const char *v[2] = {con->name, secs};
        long n = 0;
        if (run(conn, "expire",
                "UPDATE ferry_violations SET expired_at = now() WHERE constraint_name = $1 AND "
                "resolved_at IS NULL AND expired_at IS NULL AND created_at < now() - "
                "make_interval(secs => $2::float8)",
                2, v, &n) == 0)
            atomic_fetch_add(&gw__write_mod.violations_expired, (uint_fast64_t)n);
    }
}

static void count_open(PGconn *conn)
{
    PGresult *res = PQexec(conn, "SELECT count(*) FROM ferry_violations WHERE resolved_at IS NULL "
                                 "AND expired_at IS NULL");
    if (ok_result(res) && PQntuples(res) == 1)
        atomic_store(&gw__write_mod.violations_open, (uint_fast64_t)atoll(PQgetvalue(res, 0, 0)));
    PQclear(res);
}

static void warn_publication(PGconn *conn, const char *publication)
{
    const char *v[1] = {publication};
    PGresult *res = PQexecParams(conn,
                                 "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND "
                                 "tablename = 'ferry_write_history'",
                                 1, NULL, v, NULL, NULL, 0);
    if (ok_result(res) && PQntuples(res) > 0) {
        char q[300];
        gw_warn("write",
                "the publication includes ferry_write_history; every recorded write-back op is "
                "also sent through replication for nothing",
                "publication=%s hint=%s", gw_log_qs(publication, q, sizeof(q)),
                "\"publish the app's tables by name (CREATE PUBLICATION … FOR TABLE …), or set "
                "write_back.history.keep: 0\"");
    }
    PQclear(res);
}

/* One pass; 0, or -1 when the connection is gone (reconnect next time). */
static int pass(PGconn *conn)
{
    const gw_config_t *cfg = gw__write_mod.app->cfg;
    const rules_set_t *set = gw_app_active(gw__write_mod.app)->rules;
    if (!jan.warned_publication) {
        jan.warned_publication = 1;
        if (cfg->write_back.history.keep > 0) warn_publication(conn, cfg->replication.publication);
    }
    if (cfg->write_back.history.keep > 0) trim_history(conn, cfg->write_back.history.keep);
    if (rules_constraint_count(set) > 0) {
        size_t resolved = 0;
        PGresult *failed = NULL;
        if (gw__write_recheck(conn, set, NULL, NULL, &resolved, &failed) != 0) {
            char q[600];
            const char *m =
                failed != NULL ? PQresultErrorField(failed, PG_DIAG_MESSAGE_PRIMARY) : NULL;
            gw_warn("write", "background pass failed", "step=recheck error=%s",
                    gw_log_qs(m != NULL ? m : PQerrorMessage(conn), q, sizeof(q)));
        }
        PQclear(failed);
        if (resolved > 0)
            gw_info("write", "violations resolved by a re-check", "resolved=%zu", resolved);
        expire(conn, set);
    }
    count_open(conn);
    return PQstatus(conn) == CONNECTION_OK ? 0 : -1;
}

static void *janitor_main(void *ud)
{
    (void)ud;
    pthread_setname_np(pthread_self(), "ferry-wjan"); /* top -H */
    const gw_config_t *cfg = gw__write_mod.app->cfg;
    long interval = cfg->write_back.recheck_interval > 0 ? cfg->write_back.recheck_interval : 60;
    while (!gw__write_wait(interval)) {
        pthread_mutex_lock(&gw__write_mod.lock);
        int tables = gw__write_mod.tables_done;
        pthread_mutex_unlock(&gw__write_mod.lock);
        if (!tables) continue; /* write-back is not ready yet: nothing of ours to look after */
        if (jan.conn == NULL) {
            gw_err_t err;
            jan.conn = gw_pg_connect(cfg->postgres.uri, 0, "ferry write-back janitor", &err);
            if (jan.conn == NULL) continue; /* the workers report an unreachable Postgres */
        }
        if (pass(jan.conn) != 0) {
            PQfinish(jan.conn);
            jan.conn = NULL;
        }
    }
    return NULL;
}

void gw__write_janitor_start(void)
{
    if (pthread_create(&jan.thread, NULL, janitor_main, NULL) == 0)
        pthread_detach(jan.thread);
    else
        gw_warn("write", "could not start the background pass", "detail=%s",
                "\"history is not trimmed and violations are not re-checked\"");
}
