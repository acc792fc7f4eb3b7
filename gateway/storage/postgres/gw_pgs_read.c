/* gw_pgs_read.c -- the Postgres backend's readers: checkpoints, checksums, ops, lookups
 *
 * A reader is one connection (to storage.read_uri when set, else storage.uri) with its prepared
 * statements, used by one thread: the streams open one per HTTP thread, so an instance holds a
 * handful of read connections whatever the number of streams. Every call is one short statement
 * (its own snapshot): a bucket's checksum as of a checkpoint reads the bucket's totals and the
 * chunks after the checkpoint in one query; ops are read a few chunks per query, in key order,
 * and rendered to wire JSON from their records (gw_oprec_render).
 *
 * Between gw_storage_read_hold and its release the reads share one REPEATABLE READ, READ ONLY
 * transaction (one snapshot, as the contract asks); a statement that fails inside it, or a
 * connection that breaks, ends it, and the reads that follow run on their own again.
 *
 * A reader whose connection broke answers GW_EUNAVAIL and connects again at the next call (at
 * most once a second), so a storage that went away and came back is picked up without anyone
 * reopening the reader.
 */
#include "storage/postgres/gw_pgs_int.h"

#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    RD_CP,      /* the serving version and its checkpoint */
    RD_STATE,   /* one state value */
    RD_BUCKET,  /* a bucket's totals and the chunks after a checkpoint */
    RD_ID,      /* a bucket's id */
    RD_OPS,     /* a bucket's chunks after a position */
    RD_LOOKUP,  /* lookup entries valid at a checkpoint */
    RD_BUCKETS, /* every bucket name */
    RD_WCP,     /* a write checkpoint */
    RD_COUNT
};

static const char *const rd_sql[RD_COUNT] = {
    [RD_CP] = "WITH sv AS (SELECT coalesce((SELECT v FROM %1$s.state WHERE k = 'serving'), '') AS "
              "v), ns AS (SELECT v, CASE WHEN v = '' THEN '' ELSE v || '#' END AS p FROM sv) "
              "SELECT ns.p, (SELECT v FROM %1$s.state WHERE k = ns.p || 'last_op'), (SELECT v "
              "FROM %1$s.state WHERE k = ns.p || 'lsn'), (SELECT v FROM %1$s.state WHERE k = "
              "ns.p || 'consistent') FROM ns",
    [RD_STATE] = "SELECT v FROM %1$s.state WHERE k = $1",
    [RD_BUCKET] = "SELECT b.id, b.checksum, b.count, b.last_op, c.first_op, c.n, c.checksum, "
                  "CASE WHEN c.first_op <= $2 THEN c.ops END FROM %1$s.buckets b LEFT JOIN "
                  "%1$s.op_chunks c ON c.bucket_id = b.id AND c.last_op > $2 WHERE b.name = $1",
    [RD_ID] = "SELECT id FROM %1$s.buckets WHERE name = $1",
    [RD_OPS] = "SELECT first_op, ops FROM %1$s.op_chunks WHERE bucket_id = $1 AND last_op > $2 "
               "ORDER BY last_op LIMIT $3",
    [RD_LOOKUP] =
        "SELECT params FROM %1$s.lookups WHERE key = $3::text || $1::text AND from_op <= $2 AND "
        "(to_op IS NULL OR to_op > $2)",
    [RD_BUCKETS] = "SELECT name FROM %1$s.buckets ORDER BY name",
    [RD_WCP] = "SELECT counter, lsn FROM %1$s.write_checkpoints WHERE user_key = $1",
};

typedef struct gw_pgs_reader {
    gw_storage_reader_t base; /* first: the contract's head */
    PGconn *conn;
    char schema_q[72];
    char ns[40];          /* the served rule version's namespace, as of the last checkpoint read */
    gw_map_t ids;         /* bucket name -> id + 1 (ids never change for a name) */
    uint64_t next_try_ms; /* when a broken connection may be tried again */
    int hold;             /* gw__pgs_read_hold depth */
    int in_txn;           /* the held transaction is open on conn */
    int prepared;         /* conn holds the prepared statements */
} reader_t;

static _Atomic uint64_t read_conns;

uint64_t gw__pgs_read_conns(void)
{
    return atomic_load(&read_conns);
}

static void disconnect(reader_t *r)
{
    if (r->conn == NULL) return;
    PQfinish(r->conn);
    r->conn = NULL;
    r->in_txn = 0;
    r->prepared = 0;
    atomic_fetch_sub(&read_conns, 1);
}

/* One statement without results on r's connection; 1 when it succeeded. */
static int exec_simple(reader_t *r, const char *sql)
{
    PGresult *res = PQexec(r->conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok;
}

/* Connect and prepare (when not connected, or not prepared yet); 0, or GW_EUNAVAIL with err.
 * A connection that works but cannot prepare (a hot standby that has not replayed the schema's
 * creation yet) is kept and prepared again at the next call, without waiting. */
static int connect_reader(reader_t *r, gw_err_t *err)
{
    if (r->conn != NULL) {
        if (PQstatus(r->conn) == CONNECTION_OK) {
            if (r->prepared) return 0;
            if (!exec_simple(r, "DEALLOCATE ALL")) {
                disconnect(r);
                return gw_err_set(err, GW_EUNAVAIL, "storage",
                                  "the storage database is not reachable");
            }
        } else {
            disconnect(r);
            r->next_try_ms = 0; /* it just broke: try once at once */
        }
    }
    if (r->conn == NULL) {
        if (gw__pgs_now_ms() < r->next_try_ms)
            return gw_err_set(err, GW_EUNAVAIL, "storage", "the storage database is not reachable");
        const gw_storage_opts_t *o = r->base.opts;
        const char *uri = o->read_uri != NULL && o->read_uri[0] != '\0' ? o->read_uri : o->uri;
        r->conn = gw__pgs_connect(uri, gw__pgs_lock_timeout(o), "ferry reader", err);
        if (r->conn == NULL) {
            r->next_try_ms = gw__pgs_now_ms() + 1000;
            return GW_EUNAVAIL;
        }
        atomic_fetch_add(&read_conns, 1);
    }
    for (int i = 0; i < RD_COUNT; i++) {
        gw_buf_t sql = GW_BUF_INIT;
        gw_buf_printf(&sql, rd_sql[i], r->schema_q);
        char name[16];
        snprintf(name, sizeof(name), "ferry_r%d", i);
        PGresult *res = PQprepare(r->conn, name, sql.data, 0, NULL);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        gw_buf_free(&sql);
        if (!ok) {
            gw__pgs_err(r->conn, err, "prepare storage reads");
            if (PQstatus(r->conn) != CONNECTION_OK) {
                disconnect(r);
                r->next_try_ms = gw__pgs_now_ms() + 1000;
            }
            return GW_EUNAVAIL;
        }
    }
    r->prepared = 1;
    return 0;
}

/* Run statement i (text parameters) with binary results; NULL when it failed. A connection found
 * broken (the storage database restarted since the last call) is made again and the statement
 * run once more, so an idle stream picks up where it was when storage comes back. */
static PGresult *run(reader_t *r, int i, int n, const char *const *values)
{
    char name[16];
    snprintf(name, sizeof(name), "ferry_r%d", i);
    for (int attempt = 0; attempt < 2; attempt++) {
        gw_err_t err;
        if (connect_reader(r, &err) != 0) return NULL;
        PGresult *res = PQexecPrepared(r->conn, name, n, values, NULL, NULL, 1);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) return res;
        PQclear(res);
        if (PQstatus(r->conn) == CONNECTION_OK) {
            static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
            unsigned long long more;
            if (gw_log_limit_take(&limit, &more)) {
                char q[400];
                gw_warn("storage", "a storage read failed", "statement=%d error=%s suppressed=%llu",
                        i, gw_log_qs(PQerrorMessage(r->conn), q, sizeof(q)), more);
            }
            if (r->in_txn) { /* the held transaction is aborted: the next reads run alone */
                exec_simple(r, "ROLLBACK");
                r->in_txn = 0;
            }
            return NULL;
        }
        disconnect(r);
    }
    return NULL;
}

int gw__pgs_read_hold(gw_storage_reader_t *rd)
{
    reader_t *r = (reader_t *)rd;
    if (r->hold == 0) {
        gw_err_t err;
        if (connect_reader(r, &err) != 0) return GW_EUNAVAIL;
        if (!exec_simple(r, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")) {
            if (PQstatus(r->conn) != CONNECTION_OK) disconnect(r);
            return GW_EUNAVAIL;
        }
        r->in_txn = 1;
    }
    r->hold++;
    return 0;
}

void gw__pgs_read_release(gw_storage_reader_t *rd)
{
    reader_t *r = (reader_t *)rd;
    if (r->hold == 0 || --r->hold > 0) return;
    if (r->in_txn && r->conn != NULL && !exec_simple(r, "COMMIT") &&
        PQstatus(r->conn) != CONNECTION_OK)
        disconnect(r);
    r->in_txn = 0;
}

int gw__pgs_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err)
{
    if (opts->uri == NULL || opts->uri[0] == '\0')
        return gw_err_set(err, GW_ECONFIG, "storage.uri", "the postgres storage needs storage.uri");
    const char *schema = gw__pgs_schema(opts);
    if (!gw__pgs_schema_valid(schema))
        return gw_err_set(err, GW_ECONFIG, "storage.schema",
                          "\"%s\" must be a lowercase name of letters, digits and _", schema);
    reader_t *r = gw_xcalloc(1, sizeof(*r));
    r->base.type = &gw_pgs_type;
    r->base.opts = opts;
    snprintf(r->schema_q, sizeof(r->schema_q), "\"%s\"", schema);
    gw_map_init(&r->ids);
    /* a reader that cannot connect now still opens: it connects at its first use */
    gw_err_t cerr;
    connect_reader(r, &cerr);
    *out = &r->base;
    return 0;
}

void gw__pgs_reader_close(gw_storage_reader_t *rd)
{
    reader_t *r = (reader_t *)rd;
    if (r == NULL) return;
    disconnect(r);
    gw_map_free(&r->ids);
    free(r);
}

const char *gw__pgs_reader_version(const gw_storage_reader_t *rd)
{
    return ((const reader_t *)rd)->ns;
}

int gw__pgs_read_checkpoint(gw_storage_reader_t *rd, uint64_t *last_op, uint64_t *lsn,
                            int *consistent)
{
    reader_t *r = (reader_t *)rd;
    *last_op = *lsn = 0;
    *consistent = 0;
    gw_storage_cp_t cp;
    if (gw_storage_pub_get(r->base.opts->pub, &cp)) {
        /* this process publishes what it committed, or relayed, once the readers' database
         * holds it (the gate) */
        *last_op = cp.last_op;
        *lsn = cp.lsn;
        *consistent = cp.consistent;
        snprintf(r->ns, sizeof(r->ns), "%s", cp.ns);
        return 0;
    }
    PGresult *res = run(r, RD_CP, 0, NULL);
    if (res == NULL || PQntuples(res) != 1) {
        PQclear(res);
        return GW_EUNAVAIL;
    }
    snprintf(r->ns, sizeof(r->ns), "%s", PQgetvalue(res, 0, 0));
    *last_op = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
    *lsn = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
    *consistent = PQgetvalue(res, 0, 3)[0] == '1';
    PQclear(res);
    return 0;
}

int gw__pgs_read_state(gw_storage_reader_t *rd, const char *key, char *buf, size_t len)
{
    reader_t *r = (reader_t *)rd;
    char k[256];
    snprintf(k, sizeof(k), "%s%s",
             gw_storage_key_shared(key) || strchr(key, '#') != NULL ? "" : r->ns, key);
    const char *pv[1] = {k};
    PGresult *res = run(r, RD_STATE, 1, pv);
    int found = res != NULL && PQntuples(res) == 1;
    if (found) snprintf(buf, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return found;
}

int gw__pgs_read_write_checkpoint(gw_storage_reader_t *rd, const char *user_key, uint64_t as_of_lsn,
                                  uint64_t *counter)
{
    reader_t *r = (reader_t *)rd;
    const char *pv[1] = {user_key};
    PGresult *res = run(r, RD_WCP, 1, pv);
    int found =
        res != NULL && PQntuples(res) == 1 && (uint64_t)gw__pgs_get_i64(res, 0, 1) <= as_of_lsn;
    if (found) *counter = (uint64_t)gw__pgs_get_i64(res, 0, 0);
    PQclear(res);
    return found;
}

int gw__pgs_bucket_checksum(gw_storage_reader_t *rd, const char *bucket, uint64_t as_of,
                            uint32_t *checksum, uint64_t *count)
{
    reader_t *r = (reader_t *)rd;
    *checksum = 0;
    *count = 0;
    char at[24];
    snprintf(at, sizeof(at), "%llu", (unsigned long long)as_of);
    const char *pv[2] = {bucket, at};
    PGresult *res = run(r, RD_BUCKET, 2, pv);
    if (res == NULL) return GW_EUNAVAIL;
    for (int i = 0; i < PQntuples(res); i++) {
        if (i == 0) {
            gw_map_put(&r->ids, bucket, (void *)(uintptr_t)(gw__pgs_get_i64(res, 0, 0) + 1));
            *checksum = (uint32_t)gw__pgs_get_i64(res, 0, 1);
            *count = (uint64_t)gw__pgs_get_i64(res, 0, 2);
        }
        if (PQgetisnull(res, i, 4)) continue; /* no chunk after the checkpoint */
        /* subtract the ops after the checkpoint: whole chunks by their totals, the chunk that
         * straddles it op by op */
        if ((uint64_t)gw__pgs_get_i64(res, i, 4) > as_of) {
            *count -= (uint64_t)gw__pgs_get_i64(res, i, 5);
            *checksum -= (uint32_t)gw__pgs_get_i64(res, i, 6);
            continue;
        }
        const unsigned char *p = (const unsigned char *)PQgetvalue(res, i, 7);
        size_t len = (size_t)PQgetlength(res, i, 7);
        gw_oprec_t rec;
        for (size_t off = 0; gw_oprec_read(p + off, len - off, &rec); off += rec.size) {
            if (rec.op_id > as_of) {
                *count -= 1;
                *checksum -= rec.checksum;
            }
        }
    }
    PQclear(res);
    return 0;
}

/* A bucket's id: 1 and *id, 0 when it has none yet, or GW_EUNAVAIL. */
static int bucket_id(reader_t *r, const char *bucket, int64_t *id)
{
    void *v = gw_map_get(&r->ids, bucket);
    if (v != NULL) {
        *id = (int64_t)(uintptr_t)v - 1;
        return 1;
    }
    const char *pv[1] = {bucket};
    PGresult *res = run(r, RD_ID, 1, pv);
    if (res == NULL) return GW_EUNAVAIL;
    int found = PQntuples(res) == 1;
    if (found) {
        *id = gw__pgs_get_i64(res, 0, 0);
        gw_map_put(&r->ids, bucket, (void *)(uintptr_t)(*id + 1));
    }
    PQclear(res);
    return found;
}

int gw__pgs_read_ops(gw_storage_reader_t *rd, const char *bucket, uint64_t after, uint64_t upto,
                     size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last, int *has_more,
                     size_t *nops)
{
    reader_t *r = (reader_t *)rd;
    *last = after;
    *has_more = 0;
    *nops = 0;
    int64_t id;
    int found = bucket_id(r, bucket, &id);
    if (found < 0) return found;
    if (found == 0) return 0;
    char idt[24], pos[24], lim[16];
    snprintf(idt, sizeof(idt), "%lld", (long long)id);
    /* a full chunk holds GW_CHUNK_MAX_OPS ops (fewer when its rows are large, or when small
     * commits wrote it): ask for what full chunks would need, then four times more per query
     * while the chunks turn out smaller (what a query returns beyond the limits is not used) */
    size_t want = max_ops / GW_CHUNK_MAX_OPS + 2;
    size_t by_bytes = max_bytes / GW_CHUNK_MAX_BYTES + 2;
    if (want > by_bytes) want = by_bytes;
    size_t bytes = 0;
    int done = 0;
    for (int query = 0; !done; query++) {
        if (query > 0 && want < 64) want = want * 4 < 64 ? want * 4 : 64;
        snprintf(lim, sizeof(lim), "%zu", want);
        snprintf(pos, sizeof(pos), "%llu", (unsigned long long)*last);
        const char *pv[3] = {idt, pos, lim};
        PGresult *res = run(r, RD_OPS, 3, pv);
        if (res == NULL) return *nops > 0 ? 0 : GW_EUNAVAIL;
        int rows = PQntuples(res);
        for (int i = 0; i < rows && !done; i++) {
            if ((uint64_t)gw__pgs_get_i64(res, i, 0) > upto) {
                done = 1;
                break;
            }
            const unsigned char *p = (const unsigned char *)PQgetvalue(res, i, 1);
            size_t len = (size_t)PQgetlength(res, i, 1);
            gw_oprec_t rec;
            for (size_t off = 0; gw_oprec_read(p + off, len - off, &rec); off += rec.size) {
                if (rec.op_id <= *last) continue;
                if (rec.op_id > upto) {
                    done = 1;
                    break;
                }
                if (*nops == max_ops || (bytes >= max_bytes && *nops > 0)) {
                    *has_more = 1;
                    done = 1;
                    break;
                }
                if (*nops > 0) gw_buf_append(out, ",", 1);
                size_t before = out->len;
                gw_oprec_render(out, &rec);
                bytes += out->len - before;
                *last = rec.op_id;
                (*nops)++;
            }
        }
        if (rows < (int)want) done = 1;
        PQclear(res);
    }
    return 0;
}

int gw__pgs_lookup(gw_storage_reader_t *rd, const char *version, const char *key, uint64_t as_of,
                   int (*fn)(void *ud, const char *params), void *ud)
{
    reader_t *r = (reader_t *)rd;
    char ns[40], at[24];
    if (version != NULL)
        snprintf(ns, sizeof(ns), "%s#", version);
    else
        snprintf(ns, sizeof(ns), "%s", r->ns);
    snprintf(at, sizeof(at), "%llu", (unsigned long long)as_of);
    const char *pv[3] = {key, at, ns};
    PGresult *res = run(r, RD_LOOKUP, 3, pv);
    if (res == NULL) return GW_EUNAVAIL;
    int rc = 0;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++)
        rc = fn(ud, PQgetvalue(res, i, 0));
    PQclear(res);
    return rc;
}

int gw__pgs_each_bucket(gw_storage_reader_t *rd, uint64_t as_of,
                        int (*fn)(void *ud, const char *bucket, uint32_t checksum, uint64_t count),
                        void *ud)
{
    reader_t *r = (reader_t *)rd;
    PGresult *res = run(r, RD_BUCKETS, 0, NULL);
    if (res == NULL) return GW_EUNAVAIL;
    size_t n = (size_t)PQntuples(res);
    char **names = gw_xmalloc((n + 1) * sizeof(char *));
    for (size_t i = 0; i < n; i++)
        names[i] = gw_xstrdup(PQgetvalue(res, (int)i, 0));
    PQclear(res);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cs;
        uint64_t count;
        if (rc == 0) rc = gw__pgs_bucket_checksum(rd, names[i], as_of, &cs, &count);
        if (rc == 0) rc = fn(ud, names[i], cs, count);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* The chunks' commits: a statement of its own, not one of the reader's prepared ones (a schema
 * no writer of this version has opened yet lacks the columns: its chunks read as unknown). */
int gw__pgs_chunk_commits(gw_storage_reader_t *rd, const char *bucket, uint64_t after,
                          uint64_t upto, int (*fn)(void *ud, const gw_storage_chunk_commit_t *c),
                          void *ud)
{
    reader_t *r = (reader_t *)rd;
    gw_err_t err;
    if (connect_reader(r, &err) != 0) return GW_EUNAVAIL;
    static const char *const sql[2] = {
        "SELECT c.first_op, c.last_op, coalesce(c.commit_us, 0), coalesce(c.commit_lsn, 0) FROM "
        "%1$s.op_chunks c JOIN %1$s.buckets b ON b.id = c.bucket_id WHERE b.name = $1 AND "
        "c.last_op > $2 AND c.first_op <= $3 ORDER BY c.last_op",
        "SELECT c.first_op, c.last_op, 0, 0 FROM %1$s.op_chunks c JOIN %1$s.buckets b ON b.id = "
        "c.bucket_id WHERE b.name = $1 AND c.last_op > $2 AND c.first_op <= $3 ORDER BY "
        "c.last_op"};
    char a[24], u[24];
    snprintf(a, sizeof(a), "%llu", (unsigned long long)after);
    snprintf(u, sizeof(u), "%llu", (unsigned long long)upto);
    const char *pv[3] = {bucket, a, u};
    PGresult *res = NULL;
    for (int i = 0; i < 2; i++) {
        gw_buf_t q = GW_BUF_INIT;
        gw_buf_printf(&q, sql[i], r->schema_q);
        res = PQexecParams(r->conn, q.data, 3, NULL, pv, NULL, NULL, 0);
        gw_buf_free(&q);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) break;
        PQclear(res);
        res = NULL;
        if (PQstatus(r->conn) != CONNECTION_OK) {
            disconnect(r);
            return GW_EUNAVAIL;
        }
        if (r->in_txn) return GW_EIO; /* the held transaction is aborted */
    }
    if (res == NULL) return GW_EIO;
    int rc = 0;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        gw_storage_chunk_commit_t c = {.first_op = strtoull(PQgetvalue(res, i, 0), NULL, 10),
                                       .last_op = strtoull(PQgetvalue(res, i, 1), NULL, 10),
                                       .commit_us = strtoll(PQgetvalue(res, i, 2), NULL, 10),
                                       .lsn = strtoull(PQgetvalue(res, i, 3), NULL, 10)};
        rc = fn(ud, &c);
    }
    PQclear(res);
    return rc;
}
