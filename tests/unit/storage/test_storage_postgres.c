/* test_storage_postgres.c -- what only the Postgres backend has (storage/postgres/)
 *
 * The contract every backend keeps is test_storage_contract.c; here, with two "instances" (two
 * writers opened with options of their own, as two processes have): one leads and the other
 * does not; a writer whose epoch was taken over can never commit; another instance's commits
 * reach this one's hook and readers through notifications, also when their names overflow a
 * notification; a write checkpoint stored by a standby is reported on both sides; a writer
 * that takes the lead knows the rows the previous leader stored (deleting one removes it from
 * its buckets); a transaction aborted under the writer (an error in its session it did not see)
 * never commits: nothing of it is stored or acknowledged, and the writer goes on from what
 * storage holds; a state value that cannot be read (the session is gone) is -1, not "absent";
 * write checkpoints unused for longer than the retention are pruned; a schema from before
 * chunks kept their commit gets the columns in place.
 *
 * Each test uses a schema of its own in FERRY_TEST_STORAGE_URI (tests/run.sh sets it).
 */
#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "rules/rules.h"
#include "storage/gw_storage.h"
#include "storage/postgres/gw_pgs_int.h"

#include <check.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char schema[64];
static gw_storage_pub_t *pub_a, *pub_b;
static gw_storage_opts_t opts_a, opts_b; /* two instances: their own options and pubs */
static gw_err_t err;

/* Run sql on the test database (a side connection); the first value of the result ("" none). */
static char *side_sql(const char *sql, char *buf, size_t len)
{
    PGconn *c = PQconnectdb(getenv("FERRY_TEST_STORAGE_URI"));
    PGresult *res = PQexec(c, sql);
    snprintf(buf, len, "%s",
             PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0)
                                                                          : "");
    PQclear(res);
    PQfinish(c);
    return buf;
}

static void setup(void)
{
    const char *uri = getenv("FERRY_TEST_STORAGE_URI");
    ck_assert_msg(uri != NULL && uri[0] != '\0',
                  "FERRY_TEST_STORAGE_URI must name a Postgres database (tests/run.sh sets it)");
    snprintf(schema, sizeof(schema), "pgs_%d", (int)getpid());
    pub_a = gw_storage_pub_new();
    pub_b = gw_storage_pub_new();
    opts_a = (gw_storage_opts_t){
        .kind = "postgres", .uri = uri, .schema = schema, .lock_timeout = 5, .pub = pub_a};
    opts_b = opts_a;
    opts_b.pub = pub_b;
}

static void teardown(void)
{
    char sql[160], b[8];
    snprintf(sql, sizeof(sql),
             "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s CASCADE", schema);
    side_sql(sql, b, sizeof(b));
    gw_storage_pub_free(pub_a);
    gw_storage_pub_free(pub_b);
}

static gw_storage_t *open_at(const gw_storage_opts_t *o)
{
    gw_storage_t *s;
    int rc = gw_storage_open(o, &s, &err);
    ck_assert_msg(rc == 0, "open: %s", err.message);
    ck_assert_int_eq(gw_storage_set_version(s, "1", &err), 0);
    return s;
}

static void put(gw_storage_t *s, const char *bucket, const char *key, uint32_t cs)
{
    char data[64];
    snprintf(data, sizeof(data), "{\"id\":\"%s\"}", key);
    rules_op_t op = {.bucket = (char *)bucket,
                     .object_type = "t",
                     .object_id = (char *)key,
                     .data = data,
                     .data_len = strlen(data),
                     .checksum = cs};
    rules_ops_t ops = {.items = &op, .n = 1, .cap = 1};
    gw_row_ref_t ref = {.table = "public.t", .key = key};
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &ops, NULL, NULL, NULL, 0, &err), 0);
}

/* What a hook saw (names space-separated). */
typedef struct sink {
    pthread_mutex_t lock;
    uint64_t last_op;
    size_t nbuckets;
    gw_buf_t buckets, wcps;
} sink_t;

static void on_hook(const gw_storage_changes_t *ch, void *ud)
{
    sink_t *k = ud;
    pthread_mutex_lock(&k->lock);
    if (ch->last_op > k->last_op) k->last_op = ch->last_op;
    k->nbuckets += ch->nbuckets;
    for (size_t i = 0; i < ch->nbuckets; i++) {
        gw_buf_puts(&k->buckets, ch->buckets[i]);
        gw_buf_puts(&k->buckets, " ");
    }
    for (size_t i = 0; i < ch->nwrite_checkpoints; i++) {
        gw_buf_puts(&k->wcps, ch->write_checkpoints[i]);
        gw_buf_puts(&k->wcps, " ");
    }
    pthread_mutex_unlock(&k->lock);
}

/* Wait (at most 10 s) until the sink saw checkpoint last_op; 1 when it did. */
static int wait_for(sink_t *k, uint64_t last_op)
{
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&k->lock);
        int ok = k->last_op >= last_op;
        pthread_mutex_unlock(&k->lock);
        if (ok) return 1;
        usleep(10000);
    }
    return 0;
}

/* Wait (at most 5 s) until s's listener listens: a commit of a namespace that is not served
 * (the tests' version "1") reaches a standby only through its notification. */
static void wait_listening(gw_storage_t *s)
{
    for (int i = 0; i < 500; i++) {
        gw_storage_info_t in;
        gw_storage_info(s, &in);
        if (in.reachable) return;
        usleep(10000);
    }
}

START_TEST(test_pg_one_leader_and_fencing)
{
    gw_storage_t *a = open_at(&opts_a), *b = open_at(&opts_b);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_lead(b, &err), 0);
    gw_storage_info_t ia, ib;
    gw_storage_info(a, &ia);
    gw_storage_info(b, &ib);
    ck_assert(ia.shared && ia.leader && !ib.leader);
    ck_assert_uint_eq(ia.epoch, 1);
    ck_assert_str_eq(ib.leader_instance, ia.instance);
    /* a standby writes no replicated data */
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    gw_row_ref_t ref = {.table = "public.t", .key = "x"};
    ck_assert_int_eq(gw_storage_delete_row(b, &ref, &err), GW_EUNAVAIL);
    ck_assert_int_eq(gw_storage_state_set(b, "lsn", "1", &err), GW_EUNAVAIL);
    gw_storage_rollback(b);
    /* the leader commits; then its epoch is taken over under it: it can never commit again */
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k1", 1);
    ck_assert_int_eq(gw_storage_commit(a, 10, &err), 0);
    char sql[200], v[32];
    snprintf(sql, sizeof(sql), "UPDATE %s.state SET v = '7' WHERE k = 'epoch' RETURNING v", schema);
    side_sql(sql, v, sizeof(v));
    ck_assert_int_eq(gw_storage_begin(a, &err), GW_EUNAVAIL);
    ck_assert_ptr_nonnull(strstr(err.message, "another instance leads the storage now (epoch 7"));
    gw_storage_info(a, &ia);
    ck_assert(!ia.leader);
    /* its session let go of the lock: the other instance takes the lead, epoch 8 */
    ck_assert_int_eq(gw_storage_lead(b, &err), 1);
    gw_storage_info(b, &ib);
    ck_assert_uint_eq(ib.epoch, 8);
    ck_assert_int_eq(gw_storage_lead(a, &err), 0);
    /* the new leader continues the op ids */
    uint64_t last, lsn;
    gw_storage_checkpoint(b, &last, &lsn);
    ck_assert_uint_eq(last, 1);
    ck_assert_uint_eq(lsn, 10);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "1#b", "k2", 2);
    ck_assert_int_eq(gw_storage_commit(b, 20, &err), 0);
    gw_storage_checkpoint(b, &last, &lsn);
    ck_assert_uint_eq(last, 2);
    gw_storage_close(a);
    gw_storage_close(b);
}
END_TEST

START_TEST(test_pg_commits_reach_other_instances)
{
    gw_storage_t *a = open_at(&opts_a), *b = open_at(&opts_b);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    sink_t kb = {.lock = PTHREAD_MUTEX_INITIALIZER};
    gw_storage_set_hook(b, on_hook, &kb);
    wait_listening(b);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#one", "k1", 5);
    put(a, "1#two", "k2", 6);
    ck_assert_int_eq(gw_storage_commit(a, 100, &err), 0);
    uint64_t last, lsn;
    gw_storage_checkpoint(a, &last, &lsn);
    ck_assert_msg(wait_for(&kb, last), "the standby's hook never saw checkpoint %llu",
                  (unsigned long long)last);
    pthread_mutex_lock(&kb.lock);
    ck_assert_ptr_nonnull(strstr(kb.buckets.data, "1#one "));
    ck_assert_ptr_nonnull(strstr(kb.buckets.data, "1#two "));
    pthread_mutex_unlock(&kb.lock);
    /* the standby's readers serve the relayed checkpoint */
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_b, &r, &err), 0);
    uint64_t cp, cplsn;
    int consistent;
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &cp, &cplsn, &consistent), 0);
    ck_assert_uint_eq(cp, last);
    ck_assert_uint_eq(cplsn, 100);
    uint32_t cs;
    uint64_t n;
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#two", cp, &cs, &n), 0);
    ck_assert_uint_eq(cs, 6);
    /* a commit touching more bucket names than a notification holds: the names come from the
     * changes table */
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    char bucket[160], key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(bucket, sizeof(bucket), "1#a_rather_long_bucket_definition_name[\"%04d\"]", i);
        snprintf(key, sizeof(key), "m%d", i);
        put(a, bucket, key, 1);
    }
    ck_assert_int_eq(gw_storage_commit(a, 200, &err), 0);
    gw_storage_checkpoint(a, &last, &lsn);
    ck_assert(wait_for(&kb, last));
    pthread_mutex_lock(&kb.lock);
    ck_assert_ptr_nonnull(
        strstr(kb.buckets.data, "1#a_rather_long_bucket_definition_name[\"0000\"] "));
    ck_assert_ptr_nonnull(
        strstr(kb.buckets.data, "1#a_rather_long_bucket_definition_name[\"0299\"] "));
    ck_assert_uint_eq(kb.nbuckets, 302);
    pthread_mutex_unlock(&kb.lock);
    gw_storage_info_t ib;
    gw_storage_info(b, &ib);
    ck_assert_uint_ge(ib.relayed, 2);
    ck_assert_uint_ge(ib.read_conns, 1);
    gw_storage_reader_close(r);
    gw_storage_close(a);
    gw_storage_close(b);
    gw_buf_free(&kb.buckets);
    gw_buf_free(&kb.wcps);
}
END_TEST

START_TEST(test_pg_write_checkpoint_on_a_standby)
{
    gw_storage_t *a = open_at(&opts_a), *b = open_at(&opts_b);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    sink_t ka = {.lock = PTHREAD_MUTEX_INITIALIZER}, kb = {.lock = PTHREAD_MUTEX_INITIALIZER};
    gw_storage_set_hook(a, on_hook, &ka);
    gw_storage_set_hook(b, on_hook, &kb);
    /* both listen (what was stored before an instance started is not news to it) */
    wait_listening(a);
    wait_listening(b);
    /* the standby stores it (any instance does) for source position 500 */
    uint64_t counter = 0;
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(b, "u1/c1", 500, &counter, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    ck_assert_uint_eq(counter, 1);
    /* the leader's commit reaching 500 reports it on both instances (whether the leader hears
     * of the write checkpoint before or after that commit) */
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k1", 1);
    ck_assert_int_eq(gw_storage_commit(a, 500, &err), 0);
    uint64_t last, lsn;
    gw_storage_checkpoint(a, &last, &lsn);
    ck_assert(wait_for(&kb, last));
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&ka.lock);
        int seen = ka.wcps.data != NULL && strstr(ka.wcps.data, "u1/c1 ") != NULL;
        pthread_mutex_unlock(&ka.lock);
        if (seen) break;
        usleep(20000);
    }
    pthread_mutex_lock(&ka.lock);
    ck_assert_ptr_nonnull(ka.wcps.data);
    ck_assert_ptr_nonnull(strstr(ka.wcps.data, "u1/c1 "));
    pthread_mutex_unlock(&ka.lock);
    pthread_mutex_lock(&kb.lock);
    ck_assert_ptr_nonnull(kb.wcps.data);
    ck_assert_ptr_nonnull(strstr(kb.wcps.data, "u1/c1 "));
    pthread_mutex_unlock(&kb.lock);
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_a, &r, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 500, &counter), 1);
    ck_assert_uint_eq(counter, 1);
    gw_storage_reader_close(r);
    gw_storage_close(a);
    gw_storage_close(b);
    gw_buf_free(&ka.buckets);
    gw_buf_free(&ka.wcps);
    gw_buf_free(&kb.buckets);
    gw_buf_free(&kb.wcps);
}
END_TEST

START_TEST(test_pg_new_leader_knows_the_rows_stored_before)
{
    /* b opens first: it knows no rows yet; a stores one and goes away */
    gw_storage_t *b = open_at(&opts_b), *a = open_at(&opts_a);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k1", 9);
    ck_assert_int_eq(gw_storage_commit(a, 10, &err), 0);
    gw_storage_close(a);
    int led = 0; /* the server lets go of a's lock when its session has ended */
    for (int i = 0; i < 500 && led != 1; i++) {
        led = gw_storage_lead(b, &err);
        if (led != 1) usleep(10000);
    }
    ck_assert_int_eq(led, 1);
    /* deleting the row removes it from its bucket: a REMOVE that cancels the PUT's checksum */
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    gw_row_ref_t ref = {.table = "public.t", .key = "k1"};
    ck_assert_int_eq(gw_storage_delete_row(b, &ref, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 20, &err), 0);
    uint64_t last, lsn;
    gw_storage_checkpoint(b, &last, &lsn);
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_b, &r, &err), 0);
    uint32_t cs;
    uint64_t n;
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", last, &cs, &n), 0);
    ck_assert_uint_eq(n, 2);
    gw_buf_t ops = GW_BUF_INIT;
    uint64_t pos;
    int more;
    size_t nops;
    ck_assert_int_eq(gw_storage_read_ops(r, "1#b", 0, last, 100, 1 << 20, &ops, &pos, &more, &nops),
                     0);
    ck_assert_ptr_nonnull(strstr(ops.data, "\"op\":\"REMOVE\""));
    gw_buf_free(&ops);
    gw_storage_reader_close(r);
    gw_storage_close(b);
}
END_TEST

/* The durable callback's LSNs (the source is acknowledged up to the largest). */
static _Atomic uint64_t durable_max;
static void on_durable(uint64_t lsn, void *ud)
{
    (void)ud;
    if (lsn > durable_max) durable_max = lsn;
}

START_TEST(test_pg_aborted_transaction_never_commits)
{
    gw_storage_t *a = open_at(&opts_a);
    gw_storage_set_durable_fn(a, on_durable, NULL);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k1", 7);
    ck_assert_int_eq(gw_storage_commit(a, 10, &err), 0);
    uint64_t last1, lsn1;
    gw_storage_checkpoint(a, &last1, &lsn1);
    ck_assert_uint_eq(lsn1, 10);

    /* the next transaction's session fails behind the writer's back: the server aborts it */
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k2", 11);
    put(a, "1#c", "k3", 13);
    PGresult *res = PQexec(((gw_pgs_t *)a)->conn, "SELECT 1 / 0");
    ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
    PQclear(res);
    ck_assert_int_ne(gw_storage_commit(a, 20, &err), 0);
    ck_assert_msg(strstr(err.message, "storage") != NULL, "the error says what failed: %s",
                  err.message);
    uint64_t last2, lsn2;
    gw_storage_checkpoint(a, &last2, &lsn2);
    ck_assert_uint_eq(lsn2, 10); /* the checkpoint did not move */
    ck_assert_uint_eq(last2, last1);
    ck_assert_uint_le(durable_max, 10); /* nothing past the first commit was acknowledged */
    char b[64], sql[200];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.rows", schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "1");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.buckets WHERE name = '1#c'", schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "0");

    /* the same changes again (the source resends them): stored once, totals as if the failed
     * attempt never happened */
    int led = 0;
    for (int i = 0; i < 500 && led != 1; i++) {
        led = gw_storage_lead(a, &err);
        if (led != 1) usleep(10000);
    }
    ck_assert_int_eq(led, 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "k2", 11);
    put(a, "1#c", "k3", 13);
    ck_assert_int_eq(gw_storage_commit(a, 20, &err), 0);
    uint64_t last3, lsn3;
    gw_storage_checkpoint(a, &last3, &lsn3);
    ck_assert_uint_eq(lsn3, 20);
    ck_assert_uint_eq(durable_max, 20);
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_a, &r, &err), 0);
    uint32_t cs;
    uint64_t n;
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#b", last3, &cs, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(cs, 7 + 11);
    ck_assert_int_eq(gw_storage_bucket_checksum(r, "1#c", last3, &cs, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(cs, 13);
    gw_storage_reader_close(r);
    gw_storage_close(a);
}
END_TEST

START_TEST(test_pg_unreadable_state_is_not_absent)
{
    gw_storage_t *a = open_at(&opts_a);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(a, "slot_created", "1", &err), 0);
    ck_assert_int_eq(gw_storage_commit(a, 10, &err), 0);
    char v[16];
    ck_assert_int_eq(gw_storage_state_get(a, "slot_created", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "1");
    ck_assert_int_eq(gw_storage_state_get(a, "nothing", v, sizeof(v)), 0);
    /* the session goes away (as in a storage outage): a value that cannot be read is -1, never
     * "absent" (the replicator once took it for a slot never created and dropped its own) */
    char sql[96], b[16];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)::text",
             PQbackendPID(((gw_pgs_t *)a)->conn));
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "true");
    snprintf(v, sizeof(v), "junk");
    ck_assert_int_eq(gw_storage_state_get(a, "slot_created", v, sizeof(v)), -1);
    ck_assert_str_eq(v, "");
    ck_assert_int_eq(gw_storage_state_get(a, "nothing", v, sizeof(v)), -1);
    /* the lead again (a new session): read as stored */
    int led = 0;
    for (int i = 0; i < 500 && led != 1; i++) {
        led = gw_storage_lead(a, &err);
        if (led != 1) usleep(10000);
    }
    ck_assert_int_eq(led, 1);
    ck_assert_int_eq(gw_storage_state_get(a, "slot_created", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "1");
    gw_storage_close(a);
}
END_TEST

static void store_wcp(gw_storage_t *s, const char *key, uint64_t lsn)
{
    uint64_t counter;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, key, lsn, &counter, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, lsn, &err), 0);
}

/* Write checkpoints not written for longer than the retention are forgotten (by a writer, when
 * it stores another one; as test_storage_sqlite_prunes_unused_write_checkpoints); recent ones
 * stay; a client that comes back starts again at 1. */
START_TEST(test_pg_prunes_unused_write_checkpoints)
{
    opts_a.wcp_retention = 3600;
    gw_storage_t *a = open_at(&opts_a);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    store_wcp(a, "old/x", 10);
    store_wcp(a, "old/x", 11); /* counter 2 */
    store_wcp(a, "recent/y", 12);
    gw_storage_close(a);
    /* "old/x" last used two hours ago */
    char sql[200], b[16];
    snprintf(sql, sizeof(sql),
             "UPDATE %s.write_checkpoints SET seen = seen - 7200 WHERE user_key = 'old/x' "
             "RETURNING 'x'",
             schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "x");
    a = open_at(&opts_a); /* a writer prunes at its first write checkpoint, then hourly */
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    store_wcp(a, "new/z", 13);
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_a, &r, &err), 0);
    uint64_t got = 0;
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "old/x", 100, &got), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "recent/y", 100, &got), 1);
    ck_assert_uint_eq(got, 1);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "new/z", 100, &got), 1);
    snprintf(sql, sizeof(sql), "SELECT count(*)::text FROM %s.write_checkpoints", schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "2");
    /* a client that comes back starts again at 1 (it was at 2) */
    store_wcp(a, "old/x", 14);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "old/x", 100, &got), 1);
    ck_assert_uint_eq(got, 1);
    gw_storage_reader_close(r);
    gw_storage_close(a);
    opts_a.wcp_retention = 0;
}
END_TEST

static int collect_commit(void *ud, const gw_storage_chunk_commit_t *c)
{
    gw_storage_chunk_commit_t *v = ud;
    v[v[0].first_op == 0 ? 0 : 1] = *c;
    return 0;
}

/* A schema from before chunks kept their commit gets the columns when a writer opens it (layout
 * 1 still); its chunks read as "unknown", new ones carry their commit. A reader of a schema not
 * yet migrated reads every chunk as unknown. */
START_TEST(test_pg_adds_chunk_commit_times)
{
    gw_storage_t *a = open_at(&opts_a);
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "a", 1);
    ck_assert_int_eq(gw_storage_commit(a, 10, &err), 0);
    gw_storage_close(a);
    char sql[320], b[16];
    snprintf(sql, sizeof(sql),
             "ALTER TABLE %s.op_chunks DROP COLUMN commit_us, DROP COLUMN commit_lsn; SELECT 'x'",
             schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "x");
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(&opts_a, &r, &err), 0);
    gw_storage_chunk_commit_t v[2] = {{0}};
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", 0, 100, collect_commit, v), 0);
    ck_assert_uint_eq(v[0].first_op, 1);
    ck_assert_int_eq(v[0].commit_us, 0);
    gw_storage_reader_close(r);

    a = open_at(&opts_a);
    snprintf(sql, sizeof(sql),
             "SELECT count(*)::text FROM information_schema.columns WHERE table_schema = '%s' "
             "AND table_name = 'op_chunks' AND column_name IN ('commit_us', 'commit_lsn')",
             schema);
    ck_assert_str_eq(side_sql(sql, b, sizeof(b)), "2");
    ck_assert_int_eq(gw_storage_lead(a, &err), 1);
    ck_assert_int_eq(gw_storage_begin(a, &err), 0);
    put(a, "1#b", "b", 2);
    gw_storage_set_commit_time(a, 1234567);
    ck_assert_int_eq(gw_storage_commit(a, 20, &err), 0);
    ck_assert_int_eq(gw_storage_reader_open(&opts_a, &r, &err), 0);
    memset(v, 0, sizeof(v));
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", 0, 100, collect_commit, v), 0);
    ck_assert_int_eq(v[0].commit_us, 0); /* the older chunk: unknown */
    ck_assert_uint_eq(v[0].lsn, 0);
    ck_assert_uint_eq(v[1].first_op, 2);
    ck_assert_int_eq(v[1].commit_us, 1234567);
    ck_assert_uint_eq(v[1].lsn, 20);
    gw_storage_reader_close(r);
    gw_storage_close(a);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("storage_postgres");
    TCase *tc = tcase_create("postgres");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_pg_one_leader_and_fencing);
    tcase_add_test(tc, test_pg_commits_reach_other_instances);
    tcase_add_test(tc, test_pg_write_checkpoint_on_a_standby);
    tcase_add_test(tc, test_pg_new_leader_knows_the_rows_stored_before);
    tcase_add_test(tc, test_pg_aborted_transaction_never_commits);
    tcase_add_test(tc, test_pg_unreadable_state_is_not_absent);
    tcase_add_test(tc, test_pg_prunes_unused_write_checkpoints);
    tcase_add_test(tc, test_pg_adds_chunk_commit_times);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
