/* gw_repl_source.c -- the replicator's source checks and its replication slot
 *
 * CHECK: the source must have wal_level=logical, a role that may replicate, the publication, and
 * every table the rules read in it with a usable replica identity; each problem is logged once
 * with the SQL that fixes it and shown by readiness. The source must also be the one the storage
 * was built from (its system identifier and database). SLOT: the permanent slot
 * "<slot_prefix>_<version>" is created before any table is read, and its creation stored, so a
 * slot that vanishes later (dropped, WAL lost) is noticed instead of silently recreated.
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

/* ---- source check ---- */

static int table_matches(const rules_table_t *t, const char *schema, const char *name)
{
    const char *ts = t->schema != NULL ? t->schema : "public";
    if (strcmp(ts, schema) != 0) return 0;
    size_t n = strlen(t->name);
    if (n > 0 && t->name[n - 1] == '%') return strncmp(t->name, name, n - 1) == 0;
    return strcmp(t->name, name) == 0;
}

int gw__repl_is_tracked(gw_repl_t *r, const char *schema, const char *name)
{
    size_t n = rules_table_count(r->rules);
    for (size_t i = 0; i < n; i++) {
        const rules_table_t *t = rules_table_at(r->rules, i);
        if ((t->uses & (RULES_USE_DATA | RULES_USE_LOOKUP)) && table_matches(t, schema, name))
            return 1;
    }
    return 0;
}

static void source_problem(gw_repl_t *r, const char *what, const char *fix)
{
    gw_error("repl", what, "fix=\"%s\"", fix);
    char reason[512];
    snprintf(reason, sizeof(reason), "%s; fix: %s", what, fix);
    gw_ready_set(r->ready_id, gw_storage_consistent(r->st), reason);
}

void gw__repl_free_tables(gw_repl_t *r)
{
    for (size_t i = 0; i < r->ntables; i++) {
        free(r->tables[i].schema);
        free(r->tables[i].name);
        free(r->tables[i].qname);
        free(r->tables[i].sql_ident);
    }
    free(r->tables);
    r->tables = NULL;
    r->ntables = 0;
}

/*
 * The storage belongs to one database of one cluster: refuse to serve (or extend) it from another,
 * e.g. after the database was re-created, since its slot, LSNs and rows would all be wrong.
 */
static int check_same_source(gw_repl_t *r, gw_err_t *err)
{
    PGresult *res = gw_pg_query(r->q,
                                "SELECT (SELECT system_identifier FROM pg_control_system())::text"
                                " || '/' || (SELECT oid FROM pg_database WHERE datname = "
                                "current_database())::text",
                                err);
    if (res == NULL) return GW_EPG;
    char id[128], stored[128] = "";
    snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    int got = gw__repl_state_read(r->st, GW_STATE_SOURCE_ID, stored, sizeof(stored), err);
    if (got < 0) return err->code;
    if (got && stored[0] != '\0') {
        if (strcmp(stored, id) == 0) return 0;
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "the storage file was built from another database (source %s, now %s)", stored,
                 id);
        /* nothing in this storage may be served any more */
        atomic_store(&r->ready, 0);
        gw_error("repl", msg,
                 "fix=\"stop ferry, delete the storage file (storage.path) and start "
                 "it again to rebuild from this database\"");
        gw_ready_set(r->ready_id, 0, msg);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    int rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, GW_STATE_SOURCE_ID, id, err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    return rc;
}

/*
 * Whether the publication would replicate Ferry's own storage tables (storage in a schema of the
 * source database): 1 with what and the fix. The storage names itself with a random id stored in
 * its state table; finding that id in the source database proves it is the same database.
 */
static int storage_in_publication(gw_repl_t *r, char *msg, size_t msglen, char *fix, size_t fixlen)
{
    gw_storage_info_t info;
    gw_storage_info(r->st, &info);
    char schema[80] = "", id[80] = "";
    if (sscanf(info.location, "%79s %79s", schema, id) != 2) return 0;
    char *qs = gw_pg_ident(r->q, schema);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT CASE WHEN to_regclass('%s.state') IS NULL THEN NULL ELSE "
             "(SELECT v FROM %s.state WHERE k = 'storage_id') END",
             qs, qs);
    free(qs);
    gw_err_t err;
    PGresult *res = gw_pg_query(r->q, sql, &err);
    int same = res != NULL && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), id) == 0;
    PQclear(res);
    if (!same) return 0;
    const char *pv[2] = {r->publication, schema};
    res = gw_pg_query_params(r->q,
                             "SELECT (SELECT puballtables FROM pg_publication WHERE pubname = $1) "
                             "OR EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 "
                             "AND schemaname = $2)",
                             2, pv, &err);
    int in = res != NULL && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!in) return 0;
    snprintf(msg, msglen,
             "publication \"%s\" would replicate Ferry's own storage tables (schema \"%s\" of "
             "this database)",
             r->publication, schema);
    snprintf(fix, fixlen,
             "publish only the application's tables (CREATE PUBLICATION %s FOR TABLE ...), or "
             "put storage in another database (storage.uri)",
             r->publication);
    return 1;
}

int gw__repl_check_source(gw_repl_t *r, gw_err_t *err)
{
    char msg[512], fix[512];
    int rc0 = check_same_source(r, err);
    if (rc0 != 0) return rc0;
    if (gw_storage_consistent(r->st) && !atomic_load(&r->ready)) {
        gw_ready_set(r->ready_id, 1, NULL);
        atomic_store(&r->ready, 1);
    }
    PGresult *res = gw_pg_query(r->q, "SHOW wal_level", err);
    if (res == NULL) return GW_EPG;
    int ok = strcmp(PQgetvalue(res, 0, 0), "logical") == 0;
    snprintf(msg, sizeof(msg), "wal_level is \"%s\", logical replication needs \"logical\"",
             PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!ok) {
        source_problem(r, msg, "ALTER SYSTEM SET wal_level = logical; then restart postgres");
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    res = gw_pg_query(r->q,
                      "SELECT rolreplication OR rolsuper, current_user FROM pg_roles WHERE "
                      "rolname = current_user",
                      err);
    if (res == NULL) return GW_EPG;
    ok = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    char *role = gw_xstrdup(PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "?");
    PQclear(res);
    if (!ok) {
        snprintf(msg, sizeof(msg), "role \"%s\" may not replicate", role);
        snprintf(fix, sizeof(fix), "ALTER ROLE \"%s\" REPLICATION;", role);
        free(role);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    free(role);
    const char *pv[1] = {r->publication};
    res = gw_pg_query_params(r->q,
                             "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM "
                             "pg_publication WHERE pubname = $1",
                             1, pv, err);
    if (res == NULL) return GW_EPG;
    int exists = PQntuples(res) == 1;
    ok = exists && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!exists) {
        snprintf(msg, sizeof(msg), "publication \"%s\" does not exist", r->publication);
        snprintf(fix, sizeof(fix), "CREATE PUBLICATION %s FOR ALL TABLES;", r->publication);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (!ok) {
        snprintf(msg, sizeof(msg),
                 "publication \"%s\" must publish insert, update, delete and truncate",
                 r->publication);
        snprintf(fix, sizeof(fix),
                 "ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');",
                 r->publication);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (storage_in_publication(r, msg, sizeof(msg), fix, sizeof(fix))) {
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    /* every table the rules read must exist in the publication and have a usable identity */
    size_t nrt = rules_table_count(r->rules);
    for (size_t i = 0; i < nrt; i++) {
        const rules_table_t *t = rules_table_at(r->rules, i);
        if (!(t->uses & (RULES_USE_DATA | RULES_USE_LOOKUP))) continue;
        const char *schema = t->schema != NULL ? t->schema : "public";
        size_t n = strlen(t->name);
        if (n > 0 && t->name[n - 1] == '%')
            continue; /* patterns match whatever the publication has */
        const char *p2[3] = {r->publication, schema, t->name};
        res = gw_pg_query_params(
            r->q,
            "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
            "AND i.indisprimary), EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname "
            "= $1 AND p.schemaname = $2 AND p.tablename = $3) FROM pg_class c JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relname = $3",
            3, p2, err);
        if (res == NULL) return GW_EPG;
        if (PQntuples(res) == 0) {
            PQclear(res);
            gw_warn("repl", "a table the sync rules read does not exist; its rules match nothing",
                    "table=%s.%s", schema, t->name);
            continue;
        }
        char ident = PQgetvalue(res, 0, 0)[0];
        int has_pk = PQgetvalue(res, 0, 1)[0] == 't';
        int published = PQgetvalue(res, 0, 2)[0] == 't';
        PQclear(res);
        if (!published) {
            snprintf(msg, sizeof(msg), "table \"%s.%s\" is not in publication \"%s\"", schema,
                     t->name, r->publication);
            snprintf(fix, sizeof(fix), "ALTER PUBLICATION %s ADD TABLE \"%s\".\"%s\";",
                     r->publication, schema, t->name);
            source_problem(r, msg, fix);
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
        if (ident == 'n' || (ident == 'd' && !has_pk)) {
            snprintf(msg, sizeof(msg),
                     "table \"%s.%s\" has no primary key or replica identity, so its updates "
                     "and deletes cannot be replicated",
                     schema, t->name);
            snprintf(fix, sizeof(fix),
                     "ALTER TABLE \"%s\".\"%s\" ADD PRIMARY KEY (id); or ALTER TABLE "
                     "\"%s\".\"%s\" REPLICA IDENTITY FULL;",
                     schema, t->name, schema, t->name);
            source_problem(r, msg, fix);
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
    }
    /* the tables to snapshot: published tables the rules read, in name order */
    gw__repl_free_tables(r);
    res = gw_pg_query_params(r->q,
                             "SELECT schemaname, tablename FROM pg_publication_tables WHERE "
                             "pubname = $1 ORDER BY 1, 2",
                             1, pv, err);
    if (res == NULL) return GW_EPG;
    r->tables = gw_xcalloc((size_t)PQntuples(res) + 1, sizeof(snap_table_t));
    for (int i = 0; i < PQntuples(res); i++) {
        const char *s = PQgetvalue(res, i, 0), *n = PQgetvalue(res, i, 1);
        if (!gw__repl_is_tracked(r, s, n)) continue;
        snap_table_t *t = &r->tables[r->ntables++];
        t->schema = gw_xstrdup(s);
        t->name = gw_xstrdup(n);
        size_t ql = strlen(s) + strlen(n) + 2;
        t->qname = gw_xmalloc(ql);
        snprintf(t->qname, ql, "%s.%s", s, n);
        char *qs = gw_pg_ident(r->q, s), *qn = gw_pg_ident(r->q, n);
        size_t il = strlen(qs) + strlen(qn) + 2;
        t->sql_ident = gw_xmalloc(il);
        snprintf(t->sql_ident, il, "%s.%s", qs, qn);
        free(qs);
        free(qn);
    }
    PQclear(res);
    return 0;
}

/* ---- slot ---- */

/*
 * On a storage several instances share, this instance leads (it holds the storage's lock), so a
 * walsender still streaming its slot belongs to an instance that lost the lead: one whose host
 * died keeps it until wal_sender_timeout. End it (pg_terminate_backend: the same role, or
 * pg_signal_backend) and wait until the slot is free. 0, or GW_EUNAVAIL.
 */
static int free_slot(gw_repl_t *r, gw_err_t *err)
{
    const char *pv[1] = {r->slot};
    for (int i = 0; i < 100; i++) {
        PGresult *res = gw_pg_query_params(
            r->q,
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = $1 AND active AND active_pid IS NOT NULL",
            1, pv, err);
        if (res == NULL) return GW_EPG;
        int busy = PQntuples(res) > 0;
        if (busy && i == 0)
            gw_warn("repl", "ended the walsender of an instance that no longer leads",
                    "slot=%s pid=%s", r->slot, PQgetvalue(res, 0, 0));
        PQclear(res);
        if (!busy) return 0;
        usleep(100000);
    }
    return gw_err_set(err, GW_EUNAVAIL, "repl",
                      "replication slot \"%s\" stayed in use after its walsender was ended",
                      r->slot);
}

/* End a walsender that still holds slot for an earlier connection of this process (the network
 * went silent, so Postgres has not noticed that connection is gone: it would keep the slot
 * until wal_sender_timeout). Returns 1 when the slot is free now (waiting up to 15 s: on a lossy
 * link the ended walsender may need seconds of retransmissions to get its last message out
 * before it exits), 0 when it is not. */
static int end_own_walsender(gw_repl_t *r, const char *pid)
{
    gw_err_t err;
    const char *pv[2] = {pid, r->slot};
    PGresult *res = gw_pg_query_params(r->q, "SELECT pg_terminate_backend($1::int)", 1, pv, &err);
    PQclear(res);
    gw_info("repl",
            "ended this process's previous replication connection, which postgres still held",
            "slot=%s pid=%s", r->slot, pid);
    for (int i = 0; i < 150 && !atomic_load(&r->stop); i++) {
        res = gw_pg_query_params(
            r->q, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active", 1, pv + 1,
            &err);
        int active = res == NULL || PQntuples(res) > 0;
        PQclear(res);
        if (!active) return 1;
        usleep(100000);
    }
    return 0;
}

int gw__repl_ensure_slot(gw_repl_t *r, gw_err_t *err)
{
    char created[8] = "";
    /* never guessed: a slot taken for a leftover of a crash is dropped below, and the changes
     * between storage's position and a new slot's start are then lost (a storage outage once
     * did exactly that) */
    if (gw__repl_state_read(r->st, "slot_created", created, sizeof(created), err) < 0)
        return err->code;
    {
        /* storage that holds a position streamed from the slot: the slot was ours, whatever the
         * flag says (a second guard against dropping it) */
        uint64_t lo, at;
        gw_storage_checkpoint(r->st, &lo, &at);
        if (at > 0 && gw_storage_consistent(r->st)) snprintf(created, sizeof(created), "1");
    }
    const char *pv[1] = {r->slot};
    PGresult *res =
        gw_pg_query_params(r->q,
                           "SELECT s.wal_status, s.database = current_database(), s.active, "
                           "coalesce(a.application_name, ''), coalesce(s.active_pid, 0)::text, "
                           "coalesce(s.confirmed_flush_lsn - '0/0'::pg_lsn, 0)::text "
                           "FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = "
                           "s.active_pid WHERE s.slot_name = $1",
                           1, pv, err);
    if (res == NULL) return GW_EPG;
    int exists = PQntuples(res) == 1;
    int lost = exists && strcmp(PQgetvalue(res, 0, 0), "lost") == 0;
    int same_db = exists && PQgetvalue(res, 0, 1)[0] == 't';
    int active = exists && PQgetvalue(res, 0, 2)[0] == 't';
    int ours = active && strcmp(PQgetvalue(res, 0, 3), r->appname) == 0;
    char pid[32];
    snprintf(pid, sizeof(pid), "%s", exists ? PQgetvalue(res, 0, 4) : "0");
    uint64_t confirmed = exists ? strtoull(PQgetvalue(res, 0, 5), NULL, 10) : 0;
    PQclear(res);
    if (exists && !same_db) {
        char msg[512], fix[256];
        snprintf(msg, sizeof(msg),
                 "replication slot \"%s\" belongs to another database (another ferry?)", r->slot);
        snprintf(fix, sizeof(fix), "set replication.slot_prefix to a name no other ferry uses");
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (ours && !lost && !end_own_walsender(r, pid))
        return gw_err_set(err, GW_EUNAVAIL, "repl",
                          "replication slot \"%s\" is still held by this process's previous "
                          "connection",
                          r->slot);
    uint64_t stored_op, stored_lsn;
    gw_storage_checkpoint(r->st, &stored_op, &stored_lsn);
    if (exists && !lost && created[0] == '1' && gw_storage_consistent(r->st) &&
        confirmed > stored_lsn) {
        /* the slot was acknowledged past what storage holds (storage restored from an older
         * backup, or a bug): Postgres would start after the changes in between, which storage
         * never got. Never stream over that gap: rebuild from a new snapshot. */
        char msg[512], a[32], b[32];
        snprintf(msg, sizeof(msg),
                 "replication slot \"%s\" was acknowledged up to %s but storage holds changes "
                 "only up to %s (the ones between would never be sent again)",
                 r->slot, gw_lsn_format(confirmed, a, sizeof(a)),
                 gw_lsn_format(stored_lsn, b, sizeof(b)));
        gw_error("repl", msg, NULL);
        if (!r->builder) return gw__repl_rebuild(r, msg, err);
        r->slot_lost = 1; /* the serving replicator starts the build again */
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (exists && !lost && created[0] == '1') return active && r->shared ? free_slot(r, err) : 0;
    if (created[0] == '1') {
        /* our slot vanished (dropped, or its WAL was removed, or the source failed over to a
         * standby, which has no slots): the stream cannot resume from it */
        char msg[512];
        snprintf(msg, sizeof(msg), "replication slot \"%s\" %s", r->slot,
                 exists ? "lost WAL it needed (wal_status = lost)"
                        : "does not exist any more (dropped, or postgres failed over to a server "
                          "without it)");
        if (!r->builder && gw_storage_consistent(r->st))
            return gw__repl_rebuild(r, msg, err); /* a new version from a new snapshot */
        if (r->builder) r->slot_lost = 1; /* the serving replicator starts the build again */
        source_problem(r, msg,
                       r->builder ? "the build starts again from a new snapshot"
                                  : "delete the storage (the file at storage.path, or "
                                    "storage.schema in storage.uri) so ferry rebuilds it from a "
                                    "new snapshot");
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (exists) {
        /* our leftover from a crash between creating the slot and storing that fact */
        if (active) {
            char msg[512];
            snprintf(msg, sizeof(msg), "replication slot \"%s\" is in use by another process",
                     r->slot);
            source_problem(r, msg, "stop the other ferry or set replication.slot_prefix");
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT pg_drop_replication_slot('%s')", r->slot);
        if (gw_pg_exec(r->q, sql, err) != 0) return GW_EPG;
    }
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput NOEXPORT_SNAPSHOT",
             r->slot);
    res = gw_pg_query(r->rc, sql, err);
    if (res == NULL) return GW_EPG;
    char lsntext[64];
    snprintf(lsntext, sizeof(lsntext), "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    int rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, "slot_created", "1", err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    if (rc == 0)
        gw_info("repl", "created the replication slot", "slot=%s consistent_point=%s", r->slot,
                lsntext);
    return rc;
}

/* ---- dropping slots (retired rule versions) ---- */

/* Drop the slot slot when it exists and is not in use: 1 when it is gone, 0 when it is still
 * there (in use: try again later), -1 on an error. */
int gw__repl_drop_slot(gw_repl_t *r, const char *slot)
{
    const char *pv[1] = {slot};
    gw_err_t err;
    PGresult *res = gw_pg_query_params(
        r->q,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = "
        "$1 AND NOT active",
        1, pv, &err);
    if (res == NULL) return -1;
    PQclear(res);
    res = gw_pg_query_params(r->q, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", 1, pv,
                             &err);
    int gone = res != NULL && PQntuples(res) == 0;
    if (res == NULL) gone = -1;
    PQclear(res);
    return gone;
}
