/* gw_pgs.c -- the Postgres backend: the schema and its layout, open and close, leadership
 *
 * Tables, in the schema storage.schema (default "ferry"), created at the first start:
 *   state(k, v)                              replication state, as in the SQLite layout, plus
 *                                            "epoch" (the leader epoch) and "storage_id"
 *   buckets(id, name, checksum, count, last_op)  running totals at the latest checkpoint
 *   op_chunks(bucket_id, last_op, first_op, n, checksum, ops, commit_us, commit_lsn)
 *                                            a bucket's ops in runs of op records (gw_oprec.h),
 *                                            one row per bucket per commit, keyed by
 *                                            (bucket_id, last_op): readers seek the first chunk
 *                                            above their position in the primary key;
 *                                            commit_us (unix microseconds) and commit_lsn: the
 *                                            commit that wrote it (gw_storage.h, "Commit
 *                                            times"); NULL in schemas from before they were
 *                                            kept (added in place at the writer's open, layout 1
 *                                            still: older ferry versions leave them NULL)
 *   rows(tbl, key, members, lookups, copy)  per source row: memberships, lookups, copy
 *   lookups(key, tbl, rkey, params, from_op, to_op)  parameter-lookup entries
 *   write_checkpoints(user_key, counter, lsn, seen, seq)
 *                                            seen: unix seconds of its last write (unused ones
 *                                            are pruned after opts->wcp_retention); seq: from
 *                                            the sequence wcp_seq at each write, so a listener
 *                                            that reconnects finds the ones it missed
 *   changes(last_op, at, body)               what a commit changed when it does not fit in a
 *                                            notification (gw_pgs_notify.c)
 * and the sequence bucket_ids. Rule versions are namespaces ("2#…") exactly as in the SQLite
 * layout (gw_writer.h). The layout is state "layout"; a schema written by a newer layout, or a
 * schema holding tables that are not Ferry's, is refused with what to do.
 *
 * Leadership. Every instance opens the same storage; the one whose writer connection holds the
 * session-level advisory lock (LOCK_CLASS, hashtext(schema)) replicates (gw__pgs_lead). Taking
 * the lock increments state "epoch" under the row lock every replicated transaction takes
 * (gw_pgs_txn.c), so an instance that lost the lock can never commit replicated data. The
 * writer's session sets TCP keepalives and tcp_user_timeout on both ends so that a leader that
 * went silent (a dead host, a cut network) loses its session, and with it the lock, within
 * storage.lock_timeout; its own side gives up on the connection within the same time. A
 * builder's writer (a rule version built beside the serving one, in the same process) follows
 * the leader's epoch through a small registry keyed by the storage options.
 */
#include "storage/postgres/gw_pgs_int.h"
#include "storage/postgres/gw_pgs.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The advisory locks' first key ("Ferr"); the second is hashtext(schema) (+1 for schema
 * creation, which instances starting together serialize). */
#define LOCK_CLASS 1181049458

/* An idle leader checks its connection this often (gw__pgs_lead). */
#define HEARTBEAT_MS 1000

uint64_t gw__pgs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int gw__pgs_err(PGconn *conn, gw_err_t *err, const char *what)
{
    char msg[512];
    const char *m = conn != NULL ? PQerrorMessage(conn) : "no connection";
    snprintf(msg, sizeof(msg), "%s", m != NULL && m[0] ? m : "unknown error");
    for (char *p = msg; *p; p++)
        if (*p == '\n') *p = ' ';
    for (size_t n = strlen(msg); n > 0 && msg[n - 1] == ' '; n--)
        msg[n - 1] = '\0';
    return gw_err_set(err, GW_EPG, "storage", "could not %s: %s", what, msg);
}

const char *gw__pgs_schema(const gw_storage_opts_t *opts)
{
    return opts->schema != NULL && opts->schema[0] != '\0' ? opts->schema : "ferry";
}

int gw__pgs_lock_timeout(const gw_storage_opts_t *opts)
{
    return opts->lock_timeout > 0 ? opts->lock_timeout : 5;
}

int gw__pgs_schema_valid(const char *schema)
{
    if (schema[0] == '\0' || strlen(schema) > 63 || (schema[0] >= '0' && schema[0] <= '9'))
        return 0;
    for (const char *p = schema; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    return 1;
}

PGconn *gw__pgs_connect(const char *uri, int lock_timeout, const char *app, gw_err_t *err)
{
    int lt = lock_timeout > 0 ? lock_timeout : 5;
    /* silent for lt seconds: probes after 1 s of silence, one a second, lt - 1 of them; data
     * unacknowledged for lt seconds ends the connection as well (both ends) */
    char count[16], user_ms[24], connect_s[16], options[512];
    snprintf(count, sizeof(count), "%d", lt > 1 ? lt - 1 : 1);
    snprintf(user_ms, sizeof(user_ms), "%d", lt * 1000);
    snprintf(connect_s, sizeof(connect_s), "%d", lt > 2 ? lt : 2);
    snprintf(options, sizeof(options),
             "-c tcp_keepalives_idle=1 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=%s "
             "-c tcp_user_timeout=%s -c synchronous_commit=on -c statement_timeout=0 "
             "-c idle_in_transaction_session_timeout=0 -c lock_timeout=0 -c TimeZone=UTC "
             "-c client_min_messages=warning",
             count, user_ms);
    const char *keys[] = {"dbname",           "application_name",
                          "connect_timeout",  "keepalives",
                          "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout",
                          "options",          NULL};
    const char *vals[] = {uri, app, connect_s, "1", "1", "1", count, user_ms, options, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL) {
        gw_err_set(err, GW_ENOMEM, "storage", "could not allocate a connection");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        gw__pgs_err(c, err, "connect to the storage database");
        gw_err_detail(err, "Check storage.uri; the storage database must be reachable from "
                           "every instance.");
        PQfinish(c);
        return NULL;
    }
    return c;
}

void gw__pgs_ns_range(const char *ns, char *lo, char *hi, size_t len)
{
    gw_writer_ns_range(ns, lo, hi, len);
    if (ns[0] == '\0') snprintf(hi, len, "%s", "\xf4\x8f\xbf\xbf\xf4\x8f\xbf\xbf");
}

/* A state value by its stored key (no namespace: the backend's own keys "epoch", "leader",
 * "storage_id"); 1 found, 0 not. */
static int raw_state_get(gw_pgs_t *s, const char *key, char *buf, size_t len)
{
    const char *pv[1] = {key};
    gw_err_t err;
    PGresult *res = gw__pgs_exec(s, PS_STATE_GET, 1, pv, NULL, NULL, 0, &err);
    int found = res != NULL && PQntuples(res) == 1;
    if (found) snprintf(buf, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return found;
}

/* ---- the schema ---- */

static const char schema_sql[] =
    "CREATE SCHEMA IF NOT EXISTS %1$s;"
    "CREATE TABLE IF NOT EXISTS %1$s.state (k text COLLATE \"C\" PRIMARY KEY, v text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS %1$s.buckets (id int8 PRIMARY KEY,"
    "  name text COLLATE \"C\" NOT NULL UNIQUE,"
    "  checksum int8 NOT NULL, count int8 NOT NULL, last_op int8 NOT NULL)"
    "  WITH (fillfactor = 70);"
    "CREATE SEQUENCE IF NOT EXISTS %1$s.bucket_ids;"
    "CREATE TABLE IF NOT EXISTS %1$s.op_chunks (bucket_id int8 NOT NULL, last_op int8 NOT NULL,"
    "  first_op int8 NOT NULL, n int8 NOT NULL, checksum int8 NOT NULL, ops bytea NOT NULL,"
    "  commit_us int8, commit_lsn int8, PRIMARY KEY (bucket_id, last_op));"
    "CREATE TABLE IF NOT EXISTS %1$s.rows (tbl text COLLATE \"C\" NOT NULL,"
    "  key text COLLATE \"C\" NOT NULL,"
    "  members bytea, lookups text NOT NULL DEFAULT '', copy bytea, PRIMARY KEY (tbl, key))"
    "  WITH (fillfactor = 80);"
    "CREATE TABLE IF NOT EXISTS %1$s.lookups (key text COLLATE \"C\" NOT NULL,"
    "  tbl text COLLATE \"C\" NOT NULL, rkey text COLLATE \"C\" NOT NULL, params text NOT NULL,"
    "  from_op int8 NOT NULL, to_op int8);"
    "CREATE INDEX IF NOT EXISTS lookups_by_key ON %1$s.lookups (key, from_op);"
    "CREATE INDEX IF NOT EXISTS lookups_by_row ON %1$s.lookups (tbl, rkey) WHERE to_op IS NULL;"
    "CREATE SEQUENCE IF NOT EXISTS %1$s.wcp_seq;"
    "CREATE TABLE IF NOT EXISTS %1$s.write_checkpoints (user_key text COLLATE \"C\" PRIMARY KEY,"
    "  counter int8 NOT NULL, lsn int8 NOT NULL, seen int8 NOT NULL DEFAULT 0,"
    "  seq int8 NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS %1$s.changes (last_op int8 PRIMARY KEY,"
    "  at timestamptz NOT NULL DEFAULT now(), body text NOT NULL);"
    "INSERT INTO %1$s.state (k, v) VALUES ('layout', '%2$d'), ('epoch', '0'), ('next_op', '1'),"
    "  ('storage_id', md5(random()::text || clock_timestamp()::text)) ON CONFLICT (k) DO NOTHING;";

/* Run sql on c; 0, or GW_EPG naming what. */
static int exec(PGconn *c, const char *sql, const char *what, gw_err_t *err)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    PQclear(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : gw__pgs_err(c, err, what);
}

/* What the schema holds: *tables (relations of any kind), *layout (-1: no state table, 0: a
 * state table without a layout). 0 or GW_EPG. */
static int inspect(PGconn *c, const char *schema, int *tables, int *layout, gw_err_t *err)
{
    const char *pv[1] = {schema};
    PGresult *res = PQexecParams(
        c,
        "SELECT (SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace "
        "WHERE n.nspname = $1 AND k.relkind IN ('r', 'p', 'v', 'm', 'f')), "
        "to_regclass(quote_ident($1) || '.state') IS NOT NULL",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return gw__pgs_err(c, err, "look at the storage schema");
    }
    *tables = atoi(PQgetvalue(res, 0, 0));
    int has_state = PQgetvalue(res, 0, 1)[0] == 't';
    PQclear(res);
    *layout = -1;
    if (!has_state) return 0;
    char *q = PQescapeIdentifier(c, schema, strlen(schema));
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql, "SELECT v FROM %s.state WHERE k = 'layout'", q != NULL ? q : "\"\"");
    PQfreemem(q);
    res = PQexec(c, sql.data);
    gw_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* a table named state that is not Ferry's */
        PQclear(res);
        *layout = 0;
        return 0;
    }
    *layout = PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    return 0;
}

/* A schema from before chunks kept their commit: add op_chunks.commit_us and commit_lsn (NULL,
 * "unknown", for the stored chunks; no rewrite). Only when missing: ALTER TABLE locks the table
 * against every reader. 0 or GW_EPG. */
static int add_chunk_commit(PGconn *c, const char *schema, const char *schema_q, gw_err_t *err)
{
    const char *pv[1] = {schema};
    PGresult *res = PQexecParams(c,
                                 "SELECT 1 FROM pg_attribute a JOIN pg_class k ON k.oid = "
                                 "a.attrelid JOIN pg_namespace n ON n.oid = k.relnamespace "
                                 "WHERE n.nspname = $1 AND k.relname = 'op_chunks' AND "
                                 "a.attname = 'commit_us' AND NOT a.attisdropped",
                                 1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return gw__pgs_err(c, err, "look at the storage schema");
    }
    int has = PQntuples(res) > 0;
    PQclear(res);
    if (has) return 0;
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql,
                  "ALTER TABLE %1$s.op_chunks ADD COLUMN IF NOT EXISTS commit_us int8, "
                  "ADD COLUMN IF NOT EXISTS commit_lsn int8",
                  schema_q);
    int rc = exec(c, sql.data, "add the commit time to the stored chunks", err);
    gw_buf_free(&sql);
    if (rc == 0)
        gw_info("storage", "added the commit time to the stored chunks", "schema=%s", schema);
    return rc;
}

/* Create or check the schema in one transaction (instances starting together take turns). */
static int init_schema(PGconn *c, const char *schema, const char *schema_q, gw_err_t *err)
{
    if (exec(c, "BEGIN", "begin a storage transaction", err) != 0) return GW_EPG;
    char lock[160];
    const char *pv[1] = {schema};
    snprintf(lock, sizeof(lock), "SELECT pg_advisory_xact_lock(%d, hashtext($1) + 1)", LOCK_CLASS);
    PGresult *res = PQexecParams(c, lock, 1, NULL, pv, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    PQclear(res);
    int tables = 0, layout = -1, rc = ok ? 0 : gw__pgs_err(c, err, "lock the storage schema");
    if (rc == 0) rc = inspect(c, schema, &tables, &layout, err);
    if (rc == 0 && layout > GW_PGS_LAYOUT) {
        rc = gw_err_set(err, GW_EIO, "storage",
                        "storage schema \"%s\" was written by a newer ferry (layout %d; this one "
                        "knows layout %d)",
                        schema, layout, GW_PGS_LAYOUT);
        gw_err_detail(err, "Run the newer ferry here as well (upgrade instances one at a time; "
                           "a newer ferry reads an older layout, not the other way round), or set "
                           "storage.schema to another schema.");
    } else if (rc == 0 && (layout == 0 || (layout < 0 && tables > 0))) {
        rc = gw_err_set(err, GW_EIO, "storage",
                        "storage schema \"%s\" holds tables that are not Ferry's (%d, and no "
                        "Ferry layout)",
                        schema, tables);
        gw_err_detail(err, "Set storage.schema to a schema of Ferry's own (it is created at the "
                           "first start), or drop that schema if it is a leftover.");
    }
    if (rc == 0) {
        gw_buf_t sql = GW_BUF_INIT;
        gw_buf_printf(&sql, schema_sql, schema_q, GW_PGS_LAYOUT);
        rc = exec(c, sql.data, "create the storage schema", err);
        gw_buf_free(&sql);
        if (rc != 0)
            gw_err_detail(err, "The storage role needs CREATE on the database (or create the "
                               "schema for it: CREATE SCHEMA <schema> AUTHORIZATION <role>).");
    }
    if (rc == 0 && layout > 0) rc = add_chunk_commit(c, schema, schema_q, err);
    if (rc == 0 && layout < 0) {
        /* smaller and faster to decompress than pglz where the server has lz4 */
        gw_buf_t sql = GW_BUF_INIT;
        gw_buf_printf(&sql, "ALTER TABLE %s.op_chunks ALTER COLUMN ops SET COMPRESSION lz4",
                      schema_q);
        exec(c, "SAVEPOINT lz4", "", NULL);
        if (exec(c, sql.data, "", NULL) != 0)
            exec(c, "ROLLBACK TO SAVEPOINT lz4", "", NULL);
        else
            exec(c, "RELEASE SAVEPOINT lz4", "", NULL);
        gw_buf_free(&sql);
        gw_info("storage", "created the storage schema", "schema=%s", schema);
    }
    if (rc == 0) return exec(c, "COMMIT", "create the storage schema", err);
    exec(c, "ROLLBACK", "", NULL);
    return rc;
}

/* ---- the epoch registry: builders follow their process's leader ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reg {
    const gw_storage_opts_t *opts;
    uint64_t epoch;
} reg[8];

static void reg_set(const gw_storage_opts_t *opts, uint64_t epoch)
{
    pthread_mutex_lock(&reg_lock);
    size_t free_slot = 8;
    for (size_t i = 0; i < 8; i++) {
        if (reg[i].opts == opts) {
            reg[i].epoch = epoch;
            if (epoch == 0) reg[i].opts = NULL;
            pthread_mutex_unlock(&reg_lock);
            return;
        }
        if (reg[i].opts == NULL && free_slot == 8) free_slot = i;
    }
    if (epoch != 0 && free_slot < 8) reg[free_slot] = (struct reg){opts, epoch};
    pthread_mutex_unlock(&reg_lock);
}

uint64_t gw__pgs_leader_epoch(const gw_storage_opts_t *opts)
{
    uint64_t e = 0;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < 8; i++)
        if (reg[i].opts == opts) e = reg[i].epoch;
    pthread_mutex_unlock(&reg_lock);
    return e;
}

/* ---- open and close ---- */

/* Connect s's writer connection and prepare its statements. */
static int writer_connect(gw_pgs_t *s, gw_err_t *err)
{
    if (s->conn != NULL) PQfinish(s->conn);
    s->prepared = 0;
    s->conn = gw__pgs_connect(s->base.opts->uri, gw__pgs_lock_timeout(s->base.opts),
                              "ferry storage", err);
    if (s->conn == NULL) return GW_EUNAVAIL;
    if (gw__pgs_prepare(s, err) != 0) {
        PQfinish(s->conn);
        s->conn = NULL;
        return GW_EPG;
    }
    s->last_rt_ms = gw__pgs_now_ms();
    return 0;
}

int gw__pgs_open(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                 gw_err_t *err)
{
    if (opts->uri == NULL || opts->uri[0] == '\0')
        return gw_err_set(err, GW_ECONFIG, "storage.uri",
                          "the postgres storage needs storage.uri (a Postgres connection URI)");
    const char *schema = gw__pgs_schema(opts);
    if (!gw__pgs_schema_valid(schema))
        return gw_err_set(err, GW_ECONFIG, "storage.schema",
                          "\"%s\" must be a lowercase name of letters, digits and _", schema);
    gw_pgs_t *s = gw_xcalloc(1, sizeof(*s));
    s->base.type = &gw_pgs_type;
    s->base.opts = opts;
    gw_writer_init(&s->w, &gw__pgs_writer_io, s);
    gw_map_init(&s->rows);
    gw_map_init(&s->closed);
    pthread_mutex_init(&s->info_lock, NULL);
    s->schema = gw_xstrdup(schema);
    size_t ql = strlen(schema) + 3;
    s->schema_q = gw_xmalloc(ql);
    snprintf(s->schema_q, ql, "\"%s\"", schema); /* a valid name needs no escaping */
    size_t cl = strlen(schema) + 16;
    s->channel_raw = gw_xmalloc(cl);
    snprintf(s->channel_raw, cl, "%s.changes", schema);
    s->channel = gw_xmalloc(cl + 2);
    snprintf(s->channel, cl + 2, "\"%s\"", s->channel_raw);
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    static _Atomic unsigned opened;
    snprintf(s->instance, sizeof(s->instance), "%.40s:%d:%04lx%u", host, (int)getpid(),
             (unsigned long)((ts.tv_nsec ^ (long)getpid()) & 0xffff), atomic_fetch_add(&opened, 1));
    s->notify_lag_us = -1;
    int rc = 0;
    s->conn = gw__pgs_connect(opts->uri, gw__pgs_lock_timeout(opts), "ferry storage", err);
    if (s->conn == NULL) rc = GW_EIO;
    if (rc == 0) rc = init_schema(s->conn, schema, s->schema_q, err);
    if (rc == 0) rc = gw__pgs_prepare(s, err);
    char serving[32] = "";
    if (rc == 0) {
        snprintf(s->storage_id, sizeof(s->storage_id), "%s", "");
        raw_state_get(s, "storage_id", s->storage_id, sizeof(s->storage_id));
        char db[128] = "";
        snprintf(db, sizeof(db), "%s", PQdb(s->conn) != NULL ? PQdb(s->conn) : "");
        snprintf(s->where, sizeof(s->where), "%s in %s", schema, db);
        if (version == NULL &&
            gw__pgs_state_get(&s->base, GW_STATE_SERVING, serving, sizeof(serving)) < 0)
            rc = gw__pgs_err(s->conn, err, "read the serving rule version");
        gw_writer_set_version(&s->w, version != NULL ? version : serving);
        if (rc == 0) rc = gw__pgs_load_cache(s, err);
    }
    if (rc != 0) {
        if (err->code == GW_EPG) err->code = GW_EIO;
        gw__pgs_close(&s->base);
        return rc == GW_EPG ? GW_EIO : rc;
    }
    s->last_rt_ms = gw__pgs_now_ms();
    /* the row filter: a builder's writer needs it now (a new version has few rows); the serving
     * writer builds it when it takes the lead (a standby never stores rows) */
    if (version != NULL) gw__pgs_filter_build(s);
    s->publisher = gw_publisher_new("ferry-pubs", NULL, NULL, opts->pub);
    gw__pgs_gate_start(s);
    if (version == NULL) gw__pgs_listen_start(s); /* the serving writer relays other instances */
    *out = &s->base;
    return 0;
}

void gw__pgs_close(gw_storage_t *st)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (s == NULL) return;
    if (s->in_txn) gw__pgs_rollback(&s->base);
    gw__pgs_listen_stop(s);
    gw_publisher_free(s->publisher); /* reports every queued commit first */
    gw__pgs_gate_stop(s);
    if (s->conn != NULL) PQfinish(s->conn);
    gw__pgs_clear_txn(s);
    gw_map_free(&s->rows);
    gw_map_free(&s->closed);
    free(s->lk);
    for (int i = 0; i < 8; i++)
        gw_buf_free(&s->chunks[i]);
    gw_writer_free(&s->w);
    pthread_mutex_destroy(&s->info_lock);
    free(s->schema);
    free(s->schema_q);
    free(s->channel);
    free(s->channel_raw);
    free(s);
}

uint64_t gw__pgs_size(const gw_storage_opts_t *opts)
{
    if (opts->uri == NULL || !gw__pgs_schema_valid(gw__pgs_schema(opts))) return 0;
    gw_err_t err;
    PGconn *c = gw__pgs_connect(opts->uri, gw__pgs_lock_timeout(opts), "ferry size", &err);
    if (c == NULL) return 0;
    const char *pv[1] = {gw__pgs_schema(opts)};
    PGresult *res = PQexecParams(c,
                                 "SELECT coalesce(sum(pg_total_relation_size(k.oid)), 0) FROM "
                                 "pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE "
                                 "n.nspname = $1 AND k.relkind IN ('r', 'S')",
                                 1, NULL, pv, NULL, NULL, 0);
    uint64_t size = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                        ? strtoull(PQgetvalue(res, 0, 0), NULL, 10)
                        : 0;
    PQclear(res);
    PQfinish(c);
    return size;
}

/* ---- leadership ---- */

/* Take the lead: the advisory lock is ours; increment the epoch and load the current state. */
static int take_lead(gw_pgs_t *s, gw_err_t *err)
{
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql,
                  "UPDATE %1$s.state SET v = (v::int8 + 1)::text WHERE k = 'epoch' RETURNING v",
                  s->schema_q);
    int rc = exec(s->conn, "BEGIN", "begin a storage transaction", err);
    PGresult *res = rc == 0 ? PQexec(s->conn, sql.data) : NULL;
    gw_buf_free(&sql);
    if (rc == 0 && (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1))
        rc = gw__pgs_err(s->conn, err, "take the storage's lead");
    uint64_t epoch = rc == 0 ? strtoull(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    if (rc == 0) {
        const char *pv[2] = {"leader", s->instance};
        res = gw__pgs_exec(s, PS_STATE_SET, 2, pv, NULL, NULL, 0, err);
        if (res == NULL) rc = GW_EPG;
        PQclear(res);
    }
    if (rc == 0) rc = exec(s->conn, "COMMIT", "take the storage's lead", err);
    if (rc != 0) {
        exec(s->conn, "ROLLBACK", "", NULL);
        return rc;
    }
    /* the state as the previous leader left it (its last commit came before our increment),
     * and a row filter that knows every row it stored */
    rc = gw__pgs_load_cache(s, err);
    if (rc != 0) return rc;
    gw__pgs_filter_build(s);
    pthread_mutex_lock(&s->info_lock);
    s->epoch = epoch;
    snprintf(s->leader_instance, sizeof(s->leader_instance), "%s", s->instance);
    pthread_mutex_unlock(&s->info_lock);
    s->leader = 1;
    s->follower = 0;
    reg_set(s->base.opts, epoch);
    gw_info("storage", "this instance leads the storage now", "epoch=%llu instance=%s",
            (unsigned long long)epoch, s->instance);
    return 0;
}

/* Whether the leader's connection still answers (a round trip when idle for HEARTBEAT_MS). */
static int still_leading(gw_pgs_t *s)
{
    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) return 0;
    if (gw__pgs_now_ms() - s->last_rt_ms < HEARTBEAT_MS) return 1;
    PGresult *res = PQexec(s->conn, "SELECT 1");
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    PQclear(res);
    if (ok) s->last_rt_ms = gw__pgs_now_ms();
    return ok;
}

/* Run one of the lock functions on s's connection with the schema's key: its boolean result
 * (1 true, 0 false), or -1 when it failed. */
static int lock_call(gw_pgs_t *s, const char *fn)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT %s(%d, hashtext($1))::text", fn, LOCK_CLASS);
    const char *pv[1] = {s->schema};
    PGresult *res = PQexecParams(s->conn, sql, 1, NULL, pv, NULL, NULL, 0);
    int rc = PQresultStatus(res) != PGRES_TUPLES_OK       ? -1
             : strcmp(PQgetvalue(res, 0, 0), "true") == 0 ? 1
                                                          : 0;
    PQclear(res);
    if (rc >= 0) s->last_rt_ms = gw__pgs_now_ms();
    return rc;
}

void gw__pgs_lost_lead(gw_pgs_t *s, const char *why)
{
    if (!s->leader) return;
    s->leader = 0;
    if (gw__pgs_leader_epoch(s->base.opts) == s->epoch) {
        reg_set(s->base.opts, 0);
        gw_warn("storage", "this instance no longer leads the storage", "epoch=%llu reason=\"%s\"",
                (unsigned long long)s->epoch, why);
    }
    s->follower = 0;
    /* a session that still works lets go of its lock */
    if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK) {
        PGresult *res = PQexec(s->conn, "SELECT pg_advisory_unlock_all()");
        PQclear(res);
    }
}

/*
 * Leadership takes two lock modes of one key: an instance becomes the leader by winning the
 * exclusive lock (pg_try_advisory_lock, which fails while anyone holds the key in any mode),
 * and then holds it shared instead. Every writer of the leading process (the serving one and a
 * builder's) holds it shared on its own connection, so the lead stays with the process through
 * a switch of rule versions, when the builder's writer serves and the old one closes, and no
 * other instance can win it until every one of them is gone.
 */
int gw__pgs_lead(gw_storage_t *st, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (s->in_txn) return s->leader;
    if (s->leader) {
        if (still_leading(s)) return 1;
        gw__pgs_lost_lead(s, "the storage connection stopped answering");
    }
    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
        int rc = writer_connect(s, err);
        if (rc != 0) return rc;
    }
    int got = lock_call(s, "pg_try_advisory_lock");
    if (got < 0) return gw__pgs_err(s->conn, err, "ask for the storage's lead");
    if (!got) {
        /* who leads, for diagnostics */
        char who[96] = "", epoch[32] = "";
        raw_state_get(s, "leader", who, sizeof(who));
        raw_state_get(s, "epoch", epoch, sizeof(epoch));
        pthread_mutex_lock(&s->info_lock);
        snprintf(s->leader_instance, sizeof(s->leader_instance), "%s", who);
        s->epoch = strtoull(epoch, NULL, 10);
        pthread_mutex_unlock(&s->info_lock);
        return 0;
    }
    int rc =
        lock_call(s, "pg_try_advisory_lock_shared") != 1 || lock_call(s, "pg_advisory_unlock") != 1
            ? gw__pgs_err(s->conn, err, "hold the storage's lead")
            : take_lead(s, err);
    if (rc != 0) {
        /* let go: another instance may manage */
        PGresult *res = PQexec(s->conn, "SELECT pg_advisory_unlock_all()");
        PQclear(res);
        return rc;
    }
    return 1;
}

int gw__pgs_follow(gw_pgs_t *s)
{
    uint64_t e = gw__pgs_leader_epoch(s->base.opts);
    if (e == 0) return s->leader;
    if (s->leader && s->epoch == e) return 1;
    if (s->conn == NULL || lock_call(s, "pg_try_advisory_lock_shared") != 1) return 0;
    s->epoch = e;
    s->leader = 1;
    s->follower = 1;
    return 1;
}

void gw__pgs_info(gw_storage_t *st, gw_storage_info_t *out)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    memset(out, 0, sizeof(*out));
    out->kind = "postgres";
    out->shared = 1;
    out->leader = s->leader;
    pthread_mutex_lock(&s->info_lock);
    out->epoch = s->epoch;
    snprintf(out->leader_instance, sizeof(out->leader_instance), "%s", s->leader_instance);
    pthread_mutex_unlock(&s->info_lock);
    snprintf(out->instance, sizeof(out->instance), "%s", s->instance);
    snprintf(out->where, sizeof(out->where), "%s", s->where);
    snprintf(out->location, sizeof(out->location), "%s %s", s->schema, s->storage_id);
    out->notify_lag_us = atomic_load(&s->notify_lag_us);
    out->relayed = atomic_load(&s->relayed);
    out->catchups = atomic_load(&s->catchups);
    out->read_conns = gw__pgs_read_conns();
    out->reachable = atomic_load(&s->reachable);
}

/* ---- publication (the publisher, storage/gw_publish.h) ---- */

void gw__pgs_set_serving(gw_storage_t *st, int on)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    gw_storage_cp_t cp = {.last_op = s->w.last_op, .lsn = s->w.lsn, .consistent = s->w.consistent};
    snprintf(cp.ns, sizeof(cp.ns), "%s", s->w.version);
    gw__pgs_gate_serve(s, on, &cp);
    if (on)
        gw__pgs_listen_start(s);
    else
        gw__pgs_listen_stop(s);
}

void gw__pgs_set_hook(gw_storage_t *st, gw_storage_hook_fn fn, void *ud)
{
    gw_publisher_set_hook(((gw_pgs_t *)st)->publisher, fn, ud);
}

void gw__pgs_get_hook(const gw_storage_t *st, gw_storage_hook_fn *fn, void **ud)
{
    gw_publisher_get_hook(((const gw_pgs_t *)st)->publisher, fn, ud);
}

void gw__pgs_set_durable_fn(gw_storage_t *st, void (*fn)(uint64_t lsn, void *ud), void *ud)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    pthread_mutex_lock(&s->info_lock);
    s->durable_fn = fn;
    s->durable_ud = ud;
    pthread_mutex_unlock(&s->info_lock);
}

void gw__pgs_settle(gw_storage_t *st)
{
    gw__pgs_gate_settle((gw_pgs_t *)st);
}

void gw__pgs_move_pending(gw_storage_t *from, gw_storage_t *to)
{
    gw_publisher_move_wcps(((gw_pgs_t *)from)->publisher, ((gw_pgs_t *)to)->publisher);
}

int gw__pgs_stats(gw_storage_t *st, gw_storage_stats_t *out)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    out->rows = atomic_load(&s->w.n_rows);
    out->buckets = atomic_load(&s->w.n_buckets);
    out->ops = atomic_load(&s->w.n_ops);
    return 0;
}

/* ---- the operations table ---- */

const gw_storage_type_t gw_pgs_type = {
    .kind = "postgres",
    .open = gw__pgs_open,
    .size = gw__pgs_size,
    .close = gw__pgs_close,
    .lead = gw__pgs_lead,
    .info = gw__pgs_info,
    .set_serving = gw__pgs_set_serving,
    .set_hook = gw__pgs_set_hook,
    .get_hook = gw__pgs_get_hook,
    .set_durable_fn = gw__pgs_set_durable_fn,
    .settle = gw__pgs_settle,
    .move_pending = gw__pgs_move_pending,
    .begin = gw__pgs_begin,
    .commit = gw__pgs_commit,
    .rollback = gw__pgs_rollback,
    .in_txn = gw__pgs_in_txn,
    .state_get = gw__pgs_state_get,
    .state_set = gw__pgs_state_set,
    .checkpoint = gw__pgs_checkpoint,
    .set_consistent = gw__pgs_set_consistent,
    .consistent = gw__pgs_consistent,
    .stats = gw__pgs_stats,
    .set_version = gw__pgs_set_version,
    .version = gw__pgs_version,
    .advance_checkpoint = gw__pgs_advance_checkpoint,
    .drop_version = gw__pgs_drop_version,
    .compact = gw__pgs_compact,
    .prefetch = gw__pgs_prefetch,
    .put_row = gw__pgs_put_row,
    .write_checkpoint = gw__pgs_write_checkpoint,
    .request_checkpoint = gw__pgs_request_checkpoint,
    .delete_row = gw__pgs_delete_row,
    .truncate = gw__pgs_truncate,
    .row_copy = gw__pgs_row_copy,
    .set_commit_time = gw__pgs_set_commit_time,
    .reader_open = gw__pgs_reader_open,
    .reader_close = gw__pgs_reader_close,
    .reader_version = gw__pgs_reader_version,
    .read_checkpoint = gw__pgs_read_checkpoint,
    .read_state = gw__pgs_read_state,
    .bucket_checksum = gw__pgs_bucket_checksum,
    .read_ops = gw__pgs_read_ops,
    .read_write_checkpoint = gw__pgs_read_write_checkpoint,
    .read_hold = gw__pgs_read_hold,
    .read_release = gw__pgs_read_release,
    .lookup = gw__pgs_lookup,
    .each_bucket = gw__pgs_each_bucket,
    .chunk_commits = gw__pgs_chunk_commits,
};
