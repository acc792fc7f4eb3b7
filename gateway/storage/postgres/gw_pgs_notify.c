/* gw_pgs_notify.c -- the Postgres backend's publication: NOTIFY at commit, the listener that
 * relays other instances' commits, and the gate that waits for a hot standby
 *
 * Every instance serves. The leader's storage commit carries a NOTIFY on the channel
 * "<schema>.changes" (sent by Postgres at COMMIT, so never for a commit that did not happen):
 *
 *   c <instance> <epoch> <last_op> <lsn> <consistent> <ns> <wall ms>\n     the checkpoint
 *   b <len> <bucket>\n ...                                              buckets that got ops
 *   l <len> <lookup key>\n ...                                           lookup keys changed
 *   x\n                 the names did not fit (8000 bytes): they are in changes(last_op = …)
 *
 * and a write checkpoint stored on any instance carries "w <instance> <lsn> <user key>". Each
 * instance's listener thread (its own connection, LISTEN) relays the others' notifications to its
 * publisher, so its streams wake for exactly the buckets, lookups and write checkpoints they
 * touch, as on the leader. After a reconnect, and every SAFETY_POLL_MS in case a notification was
 * missed, it catches up from storage: the checkpoint stored, buckets whose last_op is above the
 * last relayed checkpoint, lookup entries opened or closed since, write checkpoints since.
 *
 * The gate. With storage.read_uri, readers read a hot standby of the storage database, so no
 * checkpoint may reach them (through the hook or the pub) before the standby has replayed it:
 * commits, own and relayed, queue at the gate, whose thread asks the standby for the checkpoint
 * it holds and lets through every commit at or below it. The durable callback (acknowledging the
 * source) does not wait for the standby. Without read_uri the gate is the publisher itself.
 */
#include "storage/postgres/gw_pgs_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A notification's payload must stay below 8000 bytes. */
#define PAYLOAD_MAX 7800
/* The listener looks at the stored checkpoint this often, in case a notification was missed. */
#define SAFETY_POLL_MS 5000
/* The gate asks the standby again after this long when a commit waits. */
#define GATE_POLL_MS 20

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- payloads ---- */

static void put_name(gw_buf_t *out, char kind, const char *name)
{
    gw_buf_printf(out, "%c %zu ", kind, strlen(name));
    gw_buf_puts(out, name);
    gw_buf_append(out, "\n", 1);
}

void gw__pgs_notify_payload(gw_pgs_t *s, const gw_storage_cp_t *cp, gw_buf_t *payload,
                            gw_buf_t *body)
{
    gw_buf_reset(payload);
    gw_buf_reset(body);
    gw_buf_printf(payload, "c %s %llu %llu %llu %d %s %llu\n", s->instance,
                  (unsigned long long)s->epoch, (unsigned long long)cp->last_op,
                  (unsigned long long)cp->lsn, cp->consistent, cp->ns[0] ? cp->ns : "-",
                  (unsigned long long)wall_ms());
    for (size_t i = 0; i < s->w.ntouched; i++)
        put_name(body, 'b', s->w.touched[i]);
    for (size_t i = 0; i < s->w.nlookup_keys; i++)
        put_name(body, 'l', s->w.lookup_keys[i]);
    if (payload->len + body->len <= PAYLOAD_MAX) {
        if (body->len > 0) gw_buf_append(payload, body->data, body->len);
        gw_buf_reset(body);
    } else {
        gw_buf_puts(payload, "x\n"); /* the names go to the changes table */
    }
}

void gw__pgs_notify_wcp(gw_pgs_t *s, const char *user_key, uint64_t lsn, gw_buf_t *out)
{
    gw_buf_reset(out);
    gw_buf_printf(out, "w %s %llu ", s->instance, (unsigned long long)lsn);
    gw_buf_puts(out, user_key);
}

/* A parsed "c" line and its names (pointers into the payload copy, NUL-terminated in place). */
typedef struct parsed {
    char instance[96];
    uint64_t epoch;
    gw_storage_cp_t cp;
    uint64_t wall;
    const char **buckets, **lookups;
    size_t nb, nl, cap_b, cap_l;
    int overflow;
} parsed_t;

static void parsed_free(parsed_t *p)
{
    free(p->buckets);
    free(p->lookups);
}

static void push(const char ***v, size_t *n, size_t *cap, const char *s)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 32;
        *v = gw_xrealloc(*v, *cap * sizeof(**v));
    }
    (*v)[(*n)++] = s;
}

/* Parse the names of a payload body (from p on) into out; p is modified. 0, or -1 malformed. */
static int parse_names(char *p, char *end, parsed_t *out)
{
    while (p < end) {
        char kind = *p;
        if (kind == 'x' && (p + 1 == end || p[1] == '\n')) {
            out->overflow = 1;
            p += 2;
            continue;
        }
        if ((kind != 'b' && kind != 'l') || p + 2 >= end || p[1] != ' ') return -1;
        char *num = p + 2, *sp;
        unsigned long long len = strtoull(num, &sp, 10);
        if (sp == num || *sp != ' ' || len > (unsigned long long)(end - sp - 1)) return -1;
        char *name = sp + 1;
        if (name + len >= end + 1 || (name + len < end && name[len] != '\n')) return -1;
        name[len] = '\0';
        if (kind == 'b')
            push(&out->buckets, &out->nb, &out->cap_b, name);
        else
            push(&out->lookups, &out->nl, &out->cap_l, name);
        p = name + len + 1;
    }
    return 0;
}

/* Parse a "c" payload (modified in place). 0, or -1 when malformed. */
static int parse_commit(char *payload, parsed_t *out)
{
    memset(out, 0, sizeof(*out));
    char *nl = strchr(payload, '\n');
    if (nl == NULL) return -1;
    *nl = '\0';
    char ns[48];
    unsigned long long epoch, last, lsn, wall;
    int consistent;
    if (sscanf(payload, "c %95s %llu %llu %llu %d %47s %llu", out->instance, &epoch, &last, &lsn,
               &consistent, ns, &wall) != 7)
        return -1;
    out->epoch = epoch;
    out->cp.last_op = last;
    out->cp.lsn = lsn;
    out->cp.consistent = consistent != 0;
    snprintf(out->cp.ns, sizeof(out->cp.ns), "%.39s", strcmp(ns, "-") == 0 ? "" : ns);
    out->wall = wall;
    return parse_names(nl + 1, nl + 1 + strlen(nl + 1), out);
}

/* ---- the gate ---- */

typedef struct gate_job {
    struct gate_job *next;
    int serve; /* a set_serving(1, cp) to apply in order */
    gw_storage_cp_t cp;
    char **names;
    size_t nb, nl;
} gate_job_t;

struct gw_pgs_gate {
    pthread_t thread;
    int started, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond, idle_cond;
    gate_job_t *head, *tail;
    int busy;
    PGconn *conn; /* the standby (read_uri) */
    uint64_t next_try_ms;
};

static void gate_job_free(gate_job_t *j)
{
    for (size_t i = 0; i < j->nb + j->nl; i++)
        free(j->names[i]);
    free(j->names);
    free(j);
}

/* The checkpoint of namespace ns the standby holds: 1 and *last_op, *lsn; 0 when it cannot
 * tell (unreachable: try again later). */
static int standby_cp(gw_pgs_t *s, const char *ns, uint64_t *last_op, uint64_t *lsn)
{
    struct gw_pgs_gate *g = s->gate;
    if (g->conn == NULL || PQstatus(g->conn) != CONNECTION_OK) {
        if (gw__pgs_now_ms() < g->next_try_ms) return 0;
        if (g->conn != NULL) PQfinish(g->conn);
        gw_err_t err;
        g->conn = gw__pgs_connect(s->base.opts->read_uri, gw__pgs_lock_timeout(s->base.opts),
                                  "ferry gate", &err);
        if (g->conn == NULL) {
            g->next_try_ms = gw__pgs_now_ms() + 1000;
            return 0;
        }
    }
    char k1[64], k2[64];
    snprintf(k1, sizeof(k1), "%slast_op", ns);
    snprintf(k2, sizeof(k2), "%slsn", ns);
    const char *pv[2] = {k1, k2};
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql,
                  "SELECT (SELECT v FROM %1$s.state WHERE k = $1), (SELECT v FROM %1$s.state "
                  "WHERE k = $2)",
                  s->schema_q);
    PGresult *res = PQexecParams(g->conn, sql.data, 2, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&sql);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        *last_op = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
        *lsn = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
    } else {
        g->next_try_ms = gw__pgs_now_ms() + 1000;
    }
    PQclear(res);
    return ok;
}

/* Whether the standby holds cp. */
static int reached(const gw_storage_cp_t *cp, uint64_t last_op, uint64_t lsn)
{
    return last_op > cp->last_op || (last_op == cp->last_op && lsn >= cp->lsn);
}

static void gate_release(gw_pgs_t *s, gate_job_t *j)
{
    if (j->serve)
        gw_publisher_set_serving(s->publisher, 1, &j->cp);
    else
        gw_publisher_commit(s->publisher, &j->cp, (const char *const *)j->names, j->nb,
                            (const char *const *)j->names + j->nb, j->nl, 0, 0);
}

static void *gate_main(void *arg)
{
    gw_pgs_t *s = arg;
    struct gw_pgs_gate *g = s->gate;
    pthread_setname_np(pthread_self(), "ferry-gate");
    pthread_mutex_lock(&g->lock);
    for (;;) {
        if (g->head == NULL) {
            g->busy = 0;
            pthread_cond_broadcast(&g->idle_cond);
            if (g->stop) break;
            pthread_cond_wait(&g->cond, &g->lock);
            continue;
        }
        g->busy = 1;
        gate_job_t *j = g->head;
        pthread_mutex_unlock(&g->lock);
        uint64_t last_op = 0, lsn = 0;
        int pass = standby_cp(s, j->cp.ns, &last_op, &lsn) && reached(&j->cp, last_op, lsn);
        pthread_mutex_lock(&g->lock);
        if (!pass) {
            if (g->stop) { /* closing: what the standby lacks is not served here any more */
                g->head = j->next;
                if (g->head == NULL) g->tail = NULL;
                gate_job_free(j);
                continue;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += GATE_POLL_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&g->cond, &g->lock, &ts);
            continue;
        }
        /* release j and every following job the standby holds as well (j is freed first: its
         * namespace is compared from a copy) */
        char ns[sizeof(j->cp.ns)];
        memcpy(ns, j->cp.ns, sizeof(ns));
        for (int first = 1; g->head != NULL; first = 0) {
            gate_job_t *h = g->head;
            if (!first && (strcmp(h->cp.ns, ns) != 0 || !reached(&h->cp, last_op, lsn))) break;
            g->head = h->next;
            if (g->head == NULL) g->tail = NULL;
            pthread_mutex_unlock(&g->lock);
            gate_release(s, h);
            gate_job_free(h);
            pthread_mutex_lock(&g->lock);
        }
    }
    pthread_mutex_unlock(&g->lock);
    if (g->conn != NULL) PQfinish(g->conn);
    g->conn = NULL;
    return NULL;
}

/* The publisher's durable callback: the one the replicator installed (without a gate). */
static void durable_relay(uint64_t lsn, void *ud)
{
    gw_pgs_t *s = ud;
    pthread_mutex_lock(&s->info_lock);
    void (*fn)(uint64_t, void *) = s->durable_fn;
    void *fud = s->durable_ud;
    pthread_mutex_unlock(&s->info_lock);
    if (fn != NULL) fn(lsn, fud);
}

void gw__pgs_gate_start(gw_pgs_t *s)
{
    if (s->base.opts->read_uri == NULL || s->base.opts->read_uri[0] == '\0') {
        gw_publisher_set_durable_fn(s->publisher, durable_relay, s);
        return;
    }
    struct gw_pgs_gate *g = gw_xcalloc(1, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    pthread_cond_init(&g->idle_cond, NULL);
    s->gate = g;
    if (pthread_create(&g->thread, NULL, gate_main, s) == 0) g->started = 1;
}

void gw__pgs_gate_stop(gw_pgs_t *s)
{
    struct gw_pgs_gate *g = s->gate;
    if (g == NULL) return;
    if (g->started) {
        pthread_mutex_lock(&g->lock);
        g->stop = 1;
        pthread_cond_broadcast(&g->cond);
        pthread_mutex_unlock(&g->lock);
        pthread_join(g->thread, NULL);
    }
    for (gate_job_t *j = g->head, *next; j != NULL; j = next) {
        next = j->next;
        gate_job_free(j);
    }
    if (g->conn != NULL) PQfinish(g->conn);
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cond);
    pthread_cond_destroy(&g->idle_cond);
    free(g);
    s->gate = NULL;
}

static void gate_push(gw_pgs_t *s, gate_job_t *j)
{
    struct gw_pgs_gate *g = s->gate;
    pthread_mutex_lock(&g->lock);
    if (g->tail != NULL)
        g->tail->next = j;
    else
        g->head = j;
    g->tail = j;
    pthread_cond_signal(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

/* Note cp as the newest checkpoint handed on; 0 when it is not newer than the last one (a relay
 * of a commit this process already knows). */
static int cp_advance(gw_pgs_t *s, const gw_storage_cp_t *cp, int force)
{
    pthread_mutex_lock(&s->info_lock);
    int newer = cp->last_op > s->pub_cp.last_op ||
                (cp->last_op == s->pub_cp.last_op && cp->lsn > s->pub_cp.lsn) ||
                strcmp(cp->ns, s->pub_cp.ns) != 0 || cp->consistent != s->pub_cp.consistent;
    if (newer) s->pub_cp = *cp;
    pthread_mutex_unlock(&s->info_lock);
    return newer || force;
}

void gw__pgs_gate_commit(gw_pgs_t *s, const gw_storage_cp_t *cp, const char *const *buckets,
                         size_t nb, const char *const *lookups, size_t nl, int flags)
{
    int own = (flags & GW_PGS_OWN) != 0;
    if (!cp_advance(s, cp, own || (flags & GW_PGS_FORCE) != 0)) return;
    if (s->gate == NULL || !s->gate->started) {
        gw_publisher_commit(s->publisher, cp, buckets, nb, lookups, nl, own,
                            (flags & GW_PGS_WAIT) != 0);
        return;
    }
    if (own) durable_relay(cp->lsn, s); /* on the primary: the source may be acknowledged */
    gate_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->cp = *cp;
    j->nb = nb;
    j->nl = nl;
    j->names = gw_xmalloc((nb + nl + 1) * sizeof(char *));
    for (size_t i = 0; i < nb; i++)
        j->names[i] = gw_xstrdup(buckets[i]);
    for (size_t i = 0; i < nl; i++)
        j->names[nb + i] = gw_xstrdup(lookups[i]);
    gate_push(s, j);
}

void gw__pgs_gate_serve(gw_pgs_t *s, int on, const gw_storage_cp_t *cp)
{
    if (on) cp_advance(s, cp, 1);
    if (s->gate == NULL || !s->gate->started || !on) {
        gw_publisher_set_serving(s->publisher, on, cp);
        return;
    }
    gate_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->serve = 1;
    j->cp = *cp;
    gate_push(s, j);
}

void gw__pgs_gate_settle(gw_pgs_t *s)
{
    struct gw_pgs_gate *g = s->gate;
    if (g != NULL && g->started) {
        pthread_mutex_lock(&g->lock);
        while (g->head != NULL || g->busy)
            pthread_cond_wait(&g->idle_cond, &g->lock);
        pthread_mutex_unlock(&g->lock);
    }
    gw_publisher_settle(s->publisher);
}

/* ---- the listener ---- */

typedef struct listener {
    gw_pgs_t *s;
    PGconn *conn;
    gw_storage_cp_t last; /* the last checkpoint relayed or caught up to */
    uint64_t wcp_mark;    /* the highest write_checkpoints.seq seen */
    int wcp_looked;       /* looked at them once (a start notes the mark only) */
    uint64_t poll_ms;
} listener_t;

/* Relay a checkpoint another instance committed. */
static void relay(listener_t *l, const gw_storage_cp_t *cp, const char *const *buckets, size_t nb,
                  const char *const *lookups, size_t nl)
{
    gw__pgs_gate_commit(l->s, cp, buckets, nb, lookups, nl, 0);
    l->last = *cp;
    atomic_fetch_add(&l->s->relayed, 1);
}

/* Column 0 of a query's rows appended to *v (*nv of them so far); with lsns, column 1 of each
 * into *lsns as well. 0, or -1 (the connection failed). */
static int collect(PGconn *c, const char *sql, int n, const char *const *pv, char ***v, size_t *nv,
                   uint64_t **lsns)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return -1;
    }
    size_t add = (size_t)PQntuples(res);
    *v = gw_xrealloc(*v, (*nv + add + 1) * sizeof(char *));
    if (lsns != NULL) *lsns = gw_xrealloc(*lsns, (add + 1) * sizeof(uint64_t));
    for (size_t i = 0; i < add; i++) {
        (*v)[*nv + i] = gw_xstrdup(PQgetvalue(res, (int)i, 0));
        if (lsns != NULL) (*lsns)[i] = strtoull(PQgetvalue(res, (int)i, 1), NULL, 10);
    }
    *nv += add;
    PQclear(res);
    return 0;
}

/* Catch up from storage: relay the stored checkpoint with every bucket, lookup key and write
 * checkpoint changed since the last one relayed. 0, or -1 (the connection failed). */
static int catch_up(listener_t *l)
{
    gw_pgs_t *s = l->s;
    PGconn *c = l->conn;
    gw_buf_t sql = GW_BUF_INIT;
    /* the checkpoint first: what is read after it may only be newer */
    gw_buf_printf(&sql,
                  "WITH sv AS (SELECT coalesce((SELECT v FROM %1$s.state WHERE k = 'serving'), "
                  "'') AS v), ns AS (SELECT v, CASE WHEN v = '' THEN '' ELSE v || '#' END AS p "
                  "FROM sv) SELECT ns.v, (SELECT v FROM %1$s.state WHERE k = ns.p || 'last_op'), "
                  "(SELECT v FROM %1$s.state WHERE k = ns.p || 'lsn'), (SELECT v FROM %1$s.state "
                  "WHERE k = ns.p || 'consistent') FROM ns",
                  s->schema_q);
    PGresult *res = PQexec(c, sql.data);
    gw_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        PQclear(res);
        return -1;
    }
    gw_storage_cp_t cp = {0};
    const char *serving = PQgetvalue(res, 0, 0);
    if (serving[0] == '\0') {
        /* no version recorded as served (a storage being set up, or a writer that names its
         * version itself): nothing to relay; an empty namespace published here would replace
         * the real one under this process's readers */
        PQclear(res);
        l->poll_ms = gw__pgs_now_ms();
        return 0;
    }
    snprintf(cp.ns, sizeof(cp.ns), "%s#", serving);
    cp.last_op = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
    cp.lsn = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
    cp.consistent = PQgetvalue(res, 0, 3)[0] == '1';
    PQclear(res);
    l->poll_ms = gw__pgs_now_ms();
    int moved = cp.last_op > l->last.last_op ||
                (cp.last_op == l->last.last_op && cp.lsn > l->last.lsn) ||
                strcmp(cp.ns, l->last.ns) != 0 || cp.consistent != l->last.consistent;
    char **names = NULL;
    size_t n = 0, nb = 0, nl = 0, nw = 0;
    char after[24], lo[48], hi[48];
    snprintf(after, sizeof(after), "%llu", (unsigned long long)l->last.last_op);
    gw__pgs_ns_range(cp.ns, lo, hi, sizeof(lo));
    const char *pv[3] = {after, lo, hi};
    int rc = 0;
    if (moved && l->last.last_op > 0) { /* after a start, streams read everything anyway */
        gw_buf_printf(&sql,
                      "SELECT name FROM %s.buckets WHERE last_op > $1::int8 AND name >= $2 AND "
                      "name < $3",
                      s->schema_q);
        rc = collect(c, sql.data, 3, pv, &names, &n, NULL);
        nb = n;
        gw_buf_free(&sql);
        gw_buf_printf(&sql,
                      "SELECT DISTINCT key FROM %s.lookups WHERE key >= $2 AND key < $3 AND "
                      "(from_op > $1::int8 OR to_op > $1::int8)",
                      s->schema_q);
        if (rc == 0) rc = collect(c, sql.data, 3, pv, &names, &n, NULL);
        nl = n - nb;
        gw_buf_free(&sql);
    }
    /* the write checkpoints stored since the last look (whether or not the checkpoint moved) */
    char mark[24];
    snprintf(mark, sizeof(mark), "%llu", (unsigned long long)l->wcp_mark);
    const char *wv[1] = {mark};
    gw_buf_printf(&sql,
                  "SELECT user_key, lsn, seq FROM %s.write_checkpoints WHERE seq > $1::int8 "
                  "ORDER BY seq",
                  s->schema_q);
    PGresult *wres = rc == 0 ? PQexecParams(c, sql.data, 1, NULL, wv, NULL, NULL, 0) : NULL;
    gw_buf_free(&sql);
    if (rc == 0 && PQresultStatus(wres) != PGRES_TUPLES_OK) rc = -1;
    for (int i = 0; rc == 0 && i < PQntuples(wres); i++) {
        /* the first look (a start) only notes where the sequence is: nobody here waits yet */
        if (l->wcp_looked) {
            gw_publisher_add_wcp(s->publisher, PQgetvalue(wres, i, 0),
                                 strtoull(PQgetvalue(wres, i, 1), NULL, 10));
            nw++;
        }
        l->wcp_mark = strtoull(PQgetvalue(wres, i, 2), NULL, 10);
    }
    PQclear(wres);
    if (rc == 0) l->wcp_looked = 1;
    if (rc == 0 && moved) {
        relay(l, &cp, (const char *const *)names, nb, (const char *const *)names + nb, nl);
        atomic_fetch_add(&s->catchups, 1);
    } else if (rc == 0 && nw > 0) {
        /* write checkpoints only: report them with the checkpoint handed on last */
        pthread_mutex_lock(&s->info_lock);
        gw_storage_cp_t last = s->pub_cp;
        pthread_mutex_unlock(&s->info_lock);
        gw__pgs_gate_commit(s, &last, NULL, 0, NULL, 0, GW_PGS_FORCE);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* Names of an overflowing commit from the changes table into p (the body is kept in *body). */
static int read_changes(listener_t *l, parsed_t *p, char **body)
{
    char last[24];
    snprintf(last, sizeof(last), "%llu", (unsigned long long)p->cp.last_op);
    const char *pv[1] = {last};
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql, "SELECT body FROM %s.changes WHERE last_op = $1::int8", l->s->schema_q);
    PGresult *res = PQexecParams(l->conn, sql.data, 1, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&sql);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        *body = gw_xstrdup(PQgetvalue(res, 0, 0));
        ok = parse_names(*body, *body + strlen(*body), p) == 0;
    }
    PQclear(res);
    return ok ? 0 : -1;
}

static void on_notify(listener_t *l, const char *payload)
{
    gw_pgs_t *s = l->s;
    char *copy = gw_xstrdup(payload);
    if (copy[0] == 'w' && copy[1] == ' ') {
        char inst[96];
        unsigned long long lsn;
        int off = 0;
        if (sscanf(copy, "w %95s %llu %n", inst, &lsn, &off) == 2 && off > 0 &&
            strcmp(inst, s->instance) != 0) {
            gw_publisher_add_wcp(s->publisher, copy + off, lsn);
            /* a commit past its LSN (this process's own, or one relayed) may have been handed
             * on already: report it with that checkpoint now */
            pthread_mutex_lock(&s->info_lock);
            gw_storage_cp_t cp = s->pub_cp;
            pthread_mutex_unlock(&s->info_lock);
            if (cp.lsn >= lsn) gw__pgs_gate_commit(s, &cp, NULL, 0, NULL, 0, GW_PGS_FORCE);
        }
        free(copy);
        return;
    }
    parsed_t p;
    if (parse_commit(copy, &p) != 0) {
        gw_warn("storage", "ignored a malformed storage notification", "bytes=%zu",
                strlen(payload));
        parsed_free(&p);
        free(copy);
        return;
    }
    pthread_mutex_lock(&s->info_lock);
    if (p.epoch >= s->epoch) {
        s->epoch = p.epoch;
        snprintf(s->leader_instance, sizeof(s->leader_instance), "%s", p.instance);
    }
    pthread_mutex_unlock(&s->info_lock);
    char *body = NULL;
    if (strcmp(p.instance, s->instance) == 0) {
        l->last = p.cp; /* this process's own commit, published already */
    } else if (p.overflow && read_changes(l, &p, &body) != 0) {
        catch_up(l); /* the names are gone: every bucket changed since */
    } else {
        atomic_store(&s->notify_lag_us, (int64_t)(wall_ms() - p.wall) * 1000);
        relay(l, &p.cp, p.buckets, p.nb, p.lookups, p.nl);
    }
    free(body);
    parsed_free(&p);
    free(copy);
}

/* Connect, LISTEN and catch up; 0 or -1. */
static int listener_connect(listener_t *l)
{
    gw_pgs_t *s = l->s;
    gw_err_t err;
    if (l->conn != NULL) PQfinish(l->conn);
    l->conn = gw__pgs_connect(s->base.opts->uri, gw__pgs_lock_timeout(s->base.opts),
                              "ferry listener", &err);
    if (l->conn == NULL) return -1;
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql, "LISTEN %s", s->channel);
    PGresult *res = PQexec(l->conn, sql.data);
    gw_buf_free(&sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok || catch_up(l) != 0) {
        PQfinish(l->conn);
        l->conn = NULL;
        return -1;
    }
    return 0;
}

static void *listen_main(void *arg)
{
    gw_pgs_t *s = arg;
    pthread_setname_np(pthread_self(), "ferry-listen");
    listener_t l = {.s = s};
    pthread_mutex_lock(&s->info_lock);
    l.last = s->pub_cp;
    pthread_mutex_unlock(&s->info_lock);
    int down_logged = 0;
    while (!atomic_load(&s->listen_stop)) {
        if (l.conn == NULL || PQstatus(l.conn) != CONNECTION_OK) {
            if (listener_connect(&l) != 0) {
                atomic_store(&s->reachable, 0);
                if (!down_logged)
                    gw_warn("storage", "cannot reach the storage database; retrying every second",
                            NULL);
                down_logged = 1;
                for (int i = 0; i < 10 && !atomic_load(&s->listen_stop); i++)
                    usleep(100000);
                continue;
            }
            if (down_logged) gw_info("storage", "the storage database is reachable again", NULL);
            down_logged = 0;
            atomic_store(&s->reachable, 1);
        }
        struct pollfd pfd = {.fd = PQsocket(l.conn), .events = POLLIN};
        int n = poll(&pfd, 1, 200);
        if (n < 0 && errno != EINTR) break;
        if (n > 0 && PQconsumeInput(l.conn) == 0) {
            PQfinish(l.conn);
            l.conn = NULL;
            continue;
        }
        PGnotify *nt;
        while ((nt = PQnotifies(l.conn)) != NULL) {
            on_notify(&l, nt->extra);
            PQfreemem(nt);
        }
        if (gw__pgs_now_ms() - l.poll_ms >= SAFETY_POLL_MS && catch_up(&l) != 0) {
            PQfinish(l.conn);
            l.conn = NULL;
        }
    }
    if (l.conn != NULL) PQfinish(l.conn);
    return NULL;
}

void gw__pgs_listen_start(gw_pgs_t *s)
{
    if (s->listen_started) return;
    atomic_store(&s->listen_stop, 0);
    if (pthread_create(&s->listen_thread, NULL, listen_main, s) == 0) s->listen_started = 1;
}

void gw__pgs_listen_stop(gw_pgs_t *s)
{
    if (!s->listen_started) return;
    atomic_store(&s->listen_stop, 1);
    pthread_join(s->listen_thread, NULL);
    s->listen_started = 0;
}
