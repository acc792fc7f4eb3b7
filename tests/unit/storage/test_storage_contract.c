/* test_storage_contract.c -- what bucket storage means, for every backend (storage/gw_storage.h)
 *
 * Each test runs once per backend this build registers (a Check loop test over `backends`), on a
 * fresh, empty storage that the backend's fixture makes and removes. The tests use the contract
 * only, never a backend's own means (files, SQL): what only one backend has is tested in that
 * backend's file (test_storage_sqlite.c). A backend without a fixture here fails
 * test_storage_every_backend_has_a_fixture, so a new backend cannot skip the suite.
 *
 * Checked: ops across chunks and checkpoints, reading in pages; checksums and counts as of older
 * checkpoints; REMOVEs when a row leaves a bucket or is deleted or truncated; row copies;
 * parameter lookups as of a checkpoint; write checkpoints (visible with the LSN they wait for);
 * what the hook and the durable callback report; the published checkpoint and readers without
 * one; replication state and its shared keys; rollback; two rule versions side by side, the
 * switch and the drop; compaction keeping checksums; the commit time and LSN of every chunk.
 */
#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "rules/rules.h"
#include "storage/gw_storage.h"

#include <check.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- fixtures: a fresh storage per test, per backend ---- */

static char sqlite_dir[64], sqlite_path[128];

static void sqlite_up(gw_storage_opts_t *o)
{
    snprintf(sqlite_dir, sizeof(sqlite_dir), "/tmp/ferry-test-contract.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(sqlite_dir));
    snprintf(sqlite_path, sizeof(sqlite_path), "%s/storage.db", sqlite_dir);
    o->path = sqlite_path;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void sqlite_down(void)
{
    nftw(sqlite_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Postgres: a schema of its own per test in the database FERRY_TEST_STORAGE_URI names (tests/run.sh
 * starts a throwaway cluster for the unit tests), dropped afterwards. */
static char pg_schema[64];

static void pg_up(gw_storage_opts_t *o)
{
    const char *uri = getenv("FERRY_TEST_STORAGE_URI");
    ck_assert_msg(uri != NULL && uri[0] != '\0',
                  "FERRY_TEST_STORAGE_URI must name a Postgres database (tests/run.sh sets it)");
    snprintf(pg_schema, sizeof(pg_schema), "contract_%d", (int)getpid());
    o->uri = uri;
    o->schema = pg_schema;
    o->lock_timeout = 5;
}

static void pg_down(void)
{
    PGconn *c = PQconnectdb(getenv("FERRY_TEST_STORAGE_URI"));
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s CASCADE", pg_schema);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

typedef struct backend {
    const char *kind;
    void (*up)(gw_storage_opts_t *opts); /* fill opts for a fresh, empty storage */
    void (*down)(void);                  /* remove it */
} backend_t;

static const backend_t backends[] = {
    {"sqlite", sqlite_up, sqlite_down},
    {"postgres", pg_up, pg_down},
};
#define NBACKENDS ((int)(sizeof(backends) / sizeof(backends[0])))

/* The storage of the running test (each test runs in its own process). */
static const backend_t *cur;
static gw_storage_pub_t *pub;
static gw_storage_opts_t opts; /* with pub: a process that writes and serves */
static gw_storage_opts_t bare; /* without: a reader in another process (ferry debug) */

static void up(int i)
{
    cur = &backends[i];
    pub = gw_storage_pub_new();
    opts = (gw_storage_opts_t){.kind = cur->kind, .pub = pub};
    cur->up(&opts);
    bare = opts;
    bare.pub = NULL;
}

static void teardown(void)
{
    if (cur != NULL) cur->down();
    gw_storage_pub_free(pub);
    cur = NULL;
}

/* ---- helpers ---- */

static gw_err_t err;

/* A writer serving rule version 1 (as the replicator makes it), leading the storage. */
static gw_storage_t *writer(void)
{
    gw_storage_t *s;
    int rc = gw_storage_open(&opts, &s, &err);
    ck_assert_msg(rc == 0, "open: %s", err.message);
    rc = gw_storage_lead(s, &err);
    ck_assert_msg(rc == 1, "lead: %d %s", rc, err.message);
    ck_assert_int_eq(gw_storage_set_version(s, "1", &err), 0);
    return s;
}

static gw_storage_reader_t *reader(const gw_storage_opts_t *o)
{
    gw_storage_reader_t *r;
    ck_assert_int_eq(gw_storage_reader_open(o, &r, &err), 0);
    return r;
}

/* The data JSON of row key with a value of data_len bytes; malloc'd. */
static char *row_data(const char *key, size_t data_len)
{
    char *data = malloc(data_len + 64);
    int n = snprintf(data, data_len + 64, "{\"id\":\"%s\",\"v\":\"", key);
    memset(data + n, 'x', data_len);
    strcpy(data + n + data_len, "\"}");
    return data;
}

/* Store row `key` of "public.t" in the buckets named in a NULL-terminated list (none: the row is
 * in no bucket), with checksum cs on each op. */
static void put_in(gw_storage_t *s, const char *key, uint32_t cs, const char *const *buckets)
{
    rules_op_t ops[8];
    size_t n = 0;
    char *data = row_data(key, 10);
    for (; buckets != NULL && buckets[n] != NULL; n++)
        ops[n] = (rules_op_t){.bucket = (char *)buckets[n],
                              .object_type = "t",
                              .object_id = (char *)key,
                              .data = data,
                              .data_len = strlen(data),
                              .checksum = cs};
    rules_ops_t list = {.items = ops, .n = n, .cap = n};
    gw_row_ref_t ref = {.table = "public.t", .key = key};
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &list, NULL, NULL, NULL, 0, &err), 0);
    free(data);
}

static void put(gw_storage_t *s, const char *bucket, const char *key, uint32_t cs)
{
    const char *b[2] = {bucket, NULL};
    put_in(s, key, cs, b);
}

static uint64_t checkpoint(gw_storage_t *s)
{
    uint64_t last, lsn;
    gw_storage_checkpoint(s, &last, &lsn);
    return last;
}

/* Read bucket's ops in (after, upto] in pages of max_ops; the number of ops, their lines in *all
 * (caller frees), the first and last op id. */
static size_t read_all(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                       size_t max_ops, gw_buf_t *all, uint64_t *first, uint64_t *last)
{
    size_t total = 0;
    *first = 0;
    for (;;) {
        gw_buf_t out = GW_BUF_INIT;
        uint64_t l;
        int more;
        size_t n;
        ck_assert_int_eq(
            gw_storage_read_ops(r, bucket, after, upto, max_ops, 1 << 20, &out, &l, &more, &n), 0);
        if (n > 0 && *first == 0) *first = strtoull(strstr(out.data, "\"op_id\":\"") + 9, NULL, 10);
        ck_assert_uint_le(n, max_ops);
        if (all != NULL && n > 0) {
            if (all->len > 0) gw_buf_puts(all, ",");
            gw_buf_append(all, out.data, out.len);
        }
        total += n;
        gw_buf_free(&out);
        after = l;
        if (!more) break;
        ck_assert_uint_gt(n, 0);
    }
    *last = after;
    if (all != NULL) gw_buf_append(all, "", 1);
    return total;
}

static void checksum(gw_storage_reader_t *r, const char *bucket, uint64_t as_of, uint32_t *cs,
                     uint64_t *count)
{
    ck_assert_int_eq(gw_storage_bucket_checksum(r, bucket, as_of, cs, count), 0);
}

/* Occurrences of needle in hay. */
static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; p != NULL && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ---- the hook and the durable callback ---- */

typedef struct seen {
    pthread_mutex_t lock;
    int commits;
    uint64_t last_op, lsn, durable_lsn;
    char buckets[1024], lookups[1024], wcps[1024]; /* the last commit's, space separated */
} seen_t;

static seen_t seen = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void join(char *out, size_t len, const char *const *v, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? " " : "", v[i]);
}

static void on_commit(const gw_storage_changes_t *ch, void *ud)
{
    seen_t *s = ud;
    pthread_mutex_lock(&s->lock);
    s->commits++;
    s->last_op = ch->last_op;
    s->lsn = ch->lsn;
    join(s->buckets, sizeof(s->buckets), ch->buckets, ch->nbuckets);
    join(s->lookups, sizeof(s->lookups), ch->lookups, ch->nlookups);
    join(s->wcps, sizeof(s->wcps), ch->write_checkpoints, ch->nwrite_checkpoints);
    pthread_mutex_unlock(&s->lock);
}

static void on_durable(uint64_t lsn, void *ud)
{
    seen_t *s = ud;
    pthread_mutex_lock(&s->lock);
    s->durable_lsn = lsn;
    pthread_mutex_unlock(&s->lock);
}

/* ---- tests ---- */

START_TEST(test_storage_every_backend_has_a_fixture)
{
    (void)_i;
    size_t n = 0;
    for (const char *const *k = gw_storage_kinds(); *k != NULL; k++, n++) {
        int found = 0;
        for (int b = 0; b < NBACKENDS; b++)
            found |= strcmp(backends[b].kind, *k) == 0;
        ck_assert_msg(found, "backend \"%s\" has no fixture in this suite", *k);
    }
    ck_assert_uint_gt(n, 0);
    ck_assert_str_eq(gw_storage_kinds()[0], "sqlite"); /* the default comes first */
    ck_assert(gw_storage_kind_known(NULL) && gw_storage_kind_known("sqlite"));
    ck_assert(!gw_storage_kind_known("mongodb"));
    gw_storage_opts_t o = {.kind = "mongodb", .path = "/nonexistent"};
    gw_storage_t *s;
    ck_assert_int_eq(gw_storage_open(&o, &s, &err), GW_ECONFIG);
    ck_assert_ptr_nonnull(strstr(err.message, "\"mongodb\""));
}
END_TEST

START_TEST(test_storage_ops_across_chunks_and_checkpoints)
{
    up(_i);
    gw_storage_t *s = writer();
    /* one commit of 2,500 ops in one bucket (more than a chunk holds), then ten of one op */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    char key[32];
    uint32_t sum_first = 0;
    for (int i = 0; i < 2500; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        put(s, "1#b", key, (uint32_t)i * 2654435761u);
        sum_first += (uint32_t)i * 2654435761u;
    }
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    uint64_t cp1 = checkpoint(s);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(gw_storage_begin(s, &err), 0);
        snprintf(key, sizeof(key), "b%d", i);
        put(s, "1#b", key, 7);
        ck_assert_int_eq(gw_storage_commit(s, 200 + (uint64_t)i, &err), 0);
    }
    uint64_t cp2 = checkpoint(s), lsn;
    gw_storage_checkpoint(s, &cp2, &lsn);
    ck_assert_uint_eq(lsn, 209);

    gw_storage_reader_t *r = reader(&opts);
    uint64_t first, last;
    gw_buf_t all = GW_BUF_INIT;
    /* everything, in pages that do not line up with chunks */
    ck_assert_uint_eq(read_all(r, "1#b", 0, cp2, 333, &all, &first, &last), 2510);
    ck_assert_uint_eq(last, cp2);
    ck_assert_int_eq(count_of(all.data, "\"op\":\"PUT\""), 2510);
    ck_assert_ptr_nonnull(strstr(all.data, "\"object_type\":\"t\",\"object_id\":\"a7\","
                                           "\"subkey\":\"public.t/a7\",\"data\":\""));
    gw_buf_free(&all);
    /* only what the first checkpoint holds */
    ck_assert_uint_eq(read_all(r, "1#b", 0, cp1, 1000, NULL, &first, &last), 2500);
    ck_assert_uint_eq(last, cp1);
    /* from the middle */
    ck_assert_uint_eq(read_all(r, "1#b", first + 1499, cp2, 1000, NULL, &first, &last), 1010);
    /* after the last op, and an unknown bucket: nothing */
    ck_assert_uint_eq(read_all(r, "1#b", cp2, cp2, 1000, NULL, &first, &last), 0);
    ck_assert_uint_eq(read_all(r, "1#nope", 0, cp2, 1000, NULL, &first, &last), 0);
    /* op ids strictly increase in a bucket */
    gw_buf_t lines = GW_BUF_INIT;
    read_all(r, "1#b", 0, cp2, 1000, &lines, &first, &last);
    uint64_t prev = 0;
    for (const char *p = lines.data; (p = strstr(p, "\"op_id\":\"")) != NULL; p += 9) {
        uint64_t id = strtoull(p + 9, NULL, 10);
        ck_assert_uint_gt(id, prev);
        prev = id;
    }
    gw_buf_free(&lines);

    /* checksums and counts as of each checkpoint, and in between */
    uint32_t cs;
    uint64_t count;
    checksum(r, "1#b", cp1, &cs, &count);
    ck_assert_uint_eq(count, 2500);
    ck_assert_uint_eq(cs, sum_first);
    checksum(r, "1#b", cp2, &cs, &count);
    ck_assert_uint_eq(count, 2510);
    ck_assert_uint_eq(cs, sum_first + 70);
    checksum(r, "1#b", cp2 - 3, &cs, &count);
    ck_assert_uint_eq(count, 2507);
    ck_assert_uint_eq(cs, sum_first + 49);
    checksum(r, "1#nope", cp2, &cs, &count);
    ck_assert_uint_eq(count, 0);

    gw_storage_stats_t st;
    ck_assert_int_eq(gw_storage_stats(s, &st), 0);
    ck_assert_uint_eq(st.rows, 2510);
    ck_assert_uint_eq(st.ops, 2510);
    ck_assert_uint_eq(st.buckets, 1);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

/* Wall clock in unix microseconds. */
static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct commits {
    gw_storage_chunk_commit_t v[16];
    size_t n;
} commits_t;

static int collect_commit(void *ud, const gw_storage_chunk_commit_t *c)
{
    commits_t *cs = ud;
    ck_assert_uint_lt(cs->n, 16);
    cs->v[cs->n++] = *c;
    return 0;
}

/* Every chunk carries its commit: the storage's clock at commit (within the test's bounds)
 * unless a commit time was given (the source transaction's), and the commit's LSN; read apart
 * from the ops, in op order, only the chunks holding ops in (after, upto]. */
START_TEST(test_storage_chunks_carry_their_commit_time)
{
    up(_i);
    gw_storage_t *s = writer();
    int64_t t0 = now_us();
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "a", 1);
    put(s, "1#b", "b", 2);
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    int64_t t1 = now_us();
    uint64_t cp1 = checkpoint(s);
    /* a commit told its source time (one hour ago, as Postgres committed it) */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "c", 3);
    put(s, "1#other", "d", 4);
    int64_t source = t0 - 3600 * INT64_C(1000000);
    gw_storage_set_commit_time(s, source);
    ck_assert_int_eq(gw_storage_commit(s, 200, &err), 0);
    uint64_t cp2 = checkpoint(s);
    /* the next commit is not told one: the clock again, not the last source time */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "e", 5);
    ck_assert_int_eq(gw_storage_commit(s, 300, &err), 0);
    int64_t t3 = now_us();
    uint64_t cp3 = checkpoint(s);

    gw_storage_reader_t *r = reader(&bare);
    commits_t c = {0};
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", 0, cp3, collect_commit, &c), 0);
    ck_assert_uint_eq(c.n, 3);
    ck_assert_uint_eq(c.v[0].first_op, cp1 - 1);
    ck_assert_uint_eq(c.v[0].last_op, cp1);
    ck_assert_int_ge(c.v[0].commit_us, t0);
    ck_assert_int_le(c.v[0].commit_us, t1);
    ck_assert_uint_eq(c.v[0].lsn, 100);
    ck_assert_uint_eq(c.v[1].last_op, cp2 - 1); /* "c"; "d" is in the other bucket */
    ck_assert_int_eq(c.v[1].commit_us, source);
    ck_assert_uint_eq(c.v[1].lsn, 200);
    ck_assert_uint_eq(c.v[2].last_op, cp3);
    ck_assert_int_ge(c.v[2].commit_us, t1);
    ck_assert_int_le(c.v[2].commit_us, t3);
    ck_assert_uint_eq(c.v[2].lsn, 300);
    /* only the chunks with ops in (after, upto]; an unknown bucket has none */
    c.n = 0;
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#b", cp1, cp2, collect_commit, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_int_eq(c.v[0].commit_us, source);
    c.n = 0;
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#other", 0, cp3, collect_commit, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_uint_eq(c.v[0].first_op, cp2);
    ck_assert_int_eq(c.v[0].commit_us, source);
    c.n = 0;
    ck_assert_int_eq(gw_storage_chunk_commits(r, "1#nope", 0, cp3, collect_commit, &c), 0);
    ck_assert_uint_eq(c.n, 0);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

/* A held read transaction: its reads answer as outside one, nest, do not block the writer, and
 * see one snapshot until the outermost release; afterwards reads see the writer's new commits. */
START_TEST(test_storage_read_hold_is_one_snapshot)
{
    up(_i);
    gw_storage_t *s = writer();
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#a", "x", 5);
    put(s, "1#b", "y", 7);
    ck_assert_int_eq(gw_storage_commit(s, 10, &err), 0);
    uint64_t cp1 = checkpoint(s);
    gw_storage_reader_t *r = reader(&opts);
    uint32_t cs;
    uint64_t count, first, last;
    ck_assert_int_eq(gw_storage_read_hold(r), 0);
    ck_assert_int_eq(gw_storage_read_hold(r), 0); /* nests */
    checksum(r, "1#a", cp1, &cs, &count);
    ck_assert_uint_eq(cs, 5);
    ck_assert_uint_eq(count, 1);
    checksum(r, "1#b", cp1, &cs, &count);
    ck_assert_uint_eq(cs, 7);
    /* the writer commits meanwhile (not blocked by the held read) */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#a", "z", 11);
    ck_assert_int_eq(gw_storage_commit(s, 20, &err), 0);
    uint64_t cp2 = checkpoint(s);
    ck_assert_uint_gt(cp2, cp1);
    gw_storage_read_release(r); /* the inner one: still the same snapshot */
    ck_assert_uint_eq(read_all(r, "1#a", 0, cp2, 100, NULL, &first, &last), 1);
    checksum(r, "1#a", cp2, &cs, &count);
    ck_assert_uint_eq(count, 1);
    gw_storage_read_release(r);
    /* released: the new commit is visible */
    ck_assert_uint_eq(read_all(r, "1#a", 0, cp2, 100, NULL, &first, &last), 2);
    checksum(r, "1#a", cp2, &cs, &count);
    ck_assert_uint_eq(count, 2);
    ck_assert_uint_eq(cs, 16);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_removes_when_rows_leave)
{
    up(_i);
    gw_storage_t *s = writer();
    const char *both[] = {"1#a", "1#b", NULL}, *only_a[] = {"1#a", NULL};
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put_in(s, "k1", 5, both);
    put_in(s, "k2", 6, both);
    put_in(s, "k3", 7, both);
    ck_assert_int_eq(gw_storage_commit(s, 10, &err), 0);
    uint64_t cp1 = checkpoint(s);
    /* k1 leaves b; k2 is deleted; a truncate removes what is left */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put_in(s, "k1", 5, only_a);
    gw_row_ref_t k2 = {.table = "public.t", .key = "k2"};
    ck_assert_int_eq(gw_storage_delete_row(s, &k2, &err), 0);
    gw_row_ref_t never = {.table = "public.t", .key = "never-stored"};
    ck_assert_int_eq(gw_storage_delete_row(s, &never, &err), 0); /* nothing to remove */
    ck_assert_int_eq(gw_storage_commit(s, 20, &err), 0);
    uint64_t cp2 = checkpoint(s);
    gw_storage_reader_t *r = reader(&opts);
    gw_buf_t b = GW_BUF_INIT;
    uint64_t first, last;
    ck_assert_uint_eq(read_all(r, "1#b", cp1, cp2, 100, &b, &first, &last), 2);
    ck_assert_int_eq(count_of(b.data, "\"op\":\"REMOVE\""), 2);
    ck_assert_ptr_nonnull(strstr(b.data, "\"object_id\":\"k1\",\"subkey\":\"public.t/k1\"}"));
    /* a REMOVE carries the delete checksum of the row's subkey */
    char want[64];
    snprintf(want, sizeof(want), "\"checksum\":%u", rules_checksum_delete("public.t/k2"));
    ck_assert_ptr_nonnull(strstr(b.data, want));
    gw_buf_free(&b);
    gw_buf_t a = GW_BUF_INIT;
    ck_assert_uint_eq(read_all(r, "1#a", cp1, cp2, 100, &a, &first, &last), 2); /* k1 PUT again */
    ck_assert_int_eq(count_of(a.data, "\"op\":\"PUT\""), 1);
    ck_assert_int_eq(count_of(a.data, "\"op\":\"REMOVE\""), 1);
    gw_buf_free(&a);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_truncate(s, "public.t", &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 30, &err), 0);
    uint64_t cp3 = checkpoint(s);
    gw_buf_t t = GW_BUF_INIT;
    ck_assert_uint_eq(read_all(r, "1#a", cp2, cp3, 100, &t, &first, &last), 2); /* k1, k3 */
    ck_assert_int_eq(count_of(t.data, "\"op\":\"REMOVE\""), 2);
    gw_buf_free(&t);
    gw_storage_stats_t st;
    gw_storage_stats(s, &st);
    ck_assert_uint_eq(st.rows, 0);
    /* a row stored again after the truncate is new: PUTs only */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k3", 7);
    ck_assert_int_eq(gw_storage_commit(s, 40, &err), 0);
    gw_buf_t n = GW_BUF_INIT;
    ck_assert_uint_eq(read_all(r, "1#b", cp3, checkpoint(s), 100, &n, &first, &last), 1);
    ck_assert_int_eq(count_of(n.data, "\"op\":\"PUT\""), 1);
    gw_buf_free(&n);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_row_copies)
{
    up(_i);
    gw_storage_t *s = writer();
    const char *names[3] = {"id", "big", "gone"};
    char big[300];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    const char *values[3] = {"1", big, NULL};
    gw_buf_t copy = GW_BUF_INIT;
    ck_assert_uint_eq(gw_storage_row_encode(&copy, 3, names, values, NULL, 0), 3);
    rules_ops_t none = {0};
    gw_row_ref_t ref = {.table = "public.t", .key = "1"};
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, NULL, copy.data, copy.len, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 1, &err), 0);
    void *got;
    size_t len;
    ck_assert_int_eq(gw_storage_row_copy(s, &ref, &got, &len), 1);
    ck_assert_uint_eq(len, copy.len);
    ck_assert_int_eq(memcmp(got, copy.data, len), 0);
    const char *v;
    size_t vl;
    ck_assert_int_eq(gw_storage_row_find(got, len, "big", &v, &vl), 1);
    ck_assert_uint_eq(vl, strlen(big));
    free(got);
    gw_row_ref_t other = {.table = "public.t", .key = "2"};
    ck_assert_int_eq(gw_storage_row_copy(s, &other, &got, &len), 0);
    /* a later state without a copy drops it */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, NULL, NULL, 0, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 2, &err), 0);
    ck_assert_int_eq(gw_storage_row_copy(s, &ref, &got, &len), 0);
    gw_buf_free(&copy);
    gw_storage_close(s);
}
END_TEST

/* Lookup callback: remember params ("" when none). */
static int collect_params(void *ud, const char *params)
{
    gw_buf_t *b = ud;
    if (b->len > 0) gw_buf_puts(b, ";");
    gw_buf_puts(b, params);
    return 0;
}

static void lookup(gw_storage_reader_t *r, const char *key, uint64_t as_of, char *out, size_t len)
{
    gw_buf_t b = GW_BUF_INIT;
    ck_assert_int_eq(gw_storage_lookup(r, "1", key, as_of, collect_params, &b), 0);
    snprintf(out, len, "%s", b.data != NULL ? b.data : "");
    gw_buf_free(&b);
}

START_TEST(test_storage_lookups_as_of_a_checkpoint)
{
    up(_i);
    gw_storage_t *s = writer();
    seen_t *sn = &seen;
    gw_storage_set_hook(s, on_commit, sn);
    rules_lookup_t l1 = {.key = "by[\"a\"]", .params = "{\"p\":1}"};
    rules_lookups_t one = {.items = &l1, .n = 1, .cap = 1};
    rules_ops_t none = {0};
    gw_row_ref_t ref = {.table = "public.m", .key = "m1"};
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, &one, NULL, 0, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 10, &err), 0);
    uint64_t cp1 = checkpoint(s);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->lookups, "by[\"a\"]");
    pthread_mutex_unlock(&sn->lock);
    /* the same entry again: nothing changes, no key reported */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, &one, NULL, 0, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 15, &err), 0);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->lookups, "");
    pthread_mutex_unlock(&sn->lock);
    /* the row moves to key b: both keys changed */
    rules_lookup_t l2 = {.key = "by[\"b\"]", .params = "{\"p\":2}"};
    rules_lookups_t two = {.items = &l2, .n = 1, .cap = 1};
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_put_row(s, &ref, &none, NULL, &two, NULL, 0, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 20, &err), 0);
    uint64_t cp2 = checkpoint(s);
    pthread_mutex_lock(&sn->lock);
    ck_assert_int_eq(count_of(sn->lookups, "by[\"a\"]"), 1);
    ck_assert_int_eq(count_of(sn->lookups, "by[\"b\"]"), 1);
    pthread_mutex_unlock(&sn->lock);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_delete_row(s, &ref, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 30, &err), 0);
    uint64_t cp3 = checkpoint(s);
    ck_assert_uint_gt(cp2, cp1);
    ck_assert_uint_gt(cp3, cp2);

    gw_storage_reader_t *r = reader(&opts);
    char got[256];
    lookup(r, "by[\"a\"]", cp1, got, sizeof(got));
    ck_assert_str_eq(got, "{\"p\":1}");
    lookup(r, "by[\"b\"]", cp1, got, sizeof(got));
    ck_assert_str_eq(got, "");
    lookup(r, "by[\"a\"]", cp2, got, sizeof(got));
    ck_assert_str_eq(got, "");
    lookup(r, "by[\"b\"]", cp2, got, sizeof(got));
    ck_assert_str_eq(got, "{\"p\":2}");
    lookup(r, "by[\"b\"]", cp3, got, sizeof(got));
    ck_assert_str_eq(got, "");
    /* NULL version: the one served as of the last checkpoint read */
    uint64_t last, lsn;
    int consistent;
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &last, &lsn, &consistent), 0);
    gw_buf_t b = GW_BUF_INIT;
    ck_assert_int_eq(gw_storage_lookup(r, NULL, "by[\"a\"]", cp1, collect_params, &b), 0);
    ck_assert_str_eq(b.data, "{\"p\":1}");
    gw_buf_free(&b);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_write_checkpoints_wait_for_their_lsn)
{
    up(_i);
    gw_storage_t *s = writer();
    seen_t *sn = &seen;
    gw_storage_set_hook(s, on_commit, sn);
    gw_storage_set_durable_fn(s, on_durable, sn);
    uint64_t counter = 0;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, "u1/c1", 500, &counter, &err), 0);
    ck_assert_uint_eq(counter, 1);
    ck_assert_int_eq(gw_storage_commit(s, 400, &err), 0);
    gw_storage_reader_t *r = reader(&opts);
    uint64_t got = 0;
    /* stored, but not visible before a checkpoint at its LSN */
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 400, &got), 0);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->wcps, "");
    ck_assert_uint_eq(sn->durable_lsn, 400);
    pthread_mutex_unlock(&sn->lock);
    /* an LSN-only commit at 500 makes it visible and names it */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 500, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 500, &got), 1);
    ck_assert_uint_eq(got, 1);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->wcps, "u1/c1");
    ck_assert_uint_eq(sn->lsn, 500);
    ck_assert_uint_eq(sn->durable_lsn, 500);
    pthread_mutex_unlock(&sn->lock);
    /* the next one counts up; another client of the user has its own */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, "u1/c1", 600, &counter, &err), 0);
    ck_assert_uint_eq(counter, 2);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, "u1/c2", 600, &counter, &err), 0);
    ck_assert_uint_eq(counter, 1);
    ck_assert_int_eq(gw_storage_commit(s, 700, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 700, &got), 1);
    ck_assert_uint_eq(got, 2);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "nobody/x", 700, &got), 0);
    pthread_mutex_lock(&sn->lock);
    ck_assert_int_eq(count_of(sn->wcps, "u1/c"), 2);
    pthread_mutex_unlock(&sn->lock);
    /* a commit's LSN never goes back */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 650, &err), 0);
    uint64_t last, lsn;
    gw_storage_checkpoint(s, &last, &lsn);
    ck_assert_uint_eq(lsn, 700);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_checkpoint_requests_are_monotonic)
{
    up(_i);
    gw_storage_t *s = writer();
    seen_t *sn = &seen;
    gw_storage_set_hook(s, on_commit, sn);
    uint64_t stored = 0, got = 0;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_request_checkpoint(s, "u1/c1", 500, 7, &stored, &err), 0);
    ck_assert_uint_eq(stored, 7);
    ck_assert_int_eq(gw_storage_commit(s, 400, &err), 0);
    gw_storage_reader_t *r = reader(&opts);
    /* like a write checkpoint: visible once a checkpoint reaches its LSN */
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 400, &got), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 500, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 500, &got), 1);
    ck_assert_uint_eq(got, 7);
    /* a stale request answers the stored id and changes nothing (no LSN moves forward) */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_request_checkpoint(s, "u1/c1", 900, 3, &stored, &err), 0);
    ck_assert_uint_eq(stored, 7);
    ck_assert_int_eq(gw_storage_request_checkpoint(s, "u1/c1", 900, 7, &stored, &err), 0);
    ck_assert_uint_eq(stored, 7);
    ck_assert_int_eq(gw_storage_commit(s, 600, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 600, &got), 1);
    ck_assert_uint_eq(got, 7);
    /* a larger one is stored with its LSN, and the hook names it once that LSN is reached */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(
        gw_storage_request_checkpoint(s, "u1/c1", 800, 9223372036854775807ULL, &stored, &err), 0);
    ck_assert_uint_eq(stored, 9223372036854775807ULL);
    ck_assert_int_eq(gw_storage_commit(s, 700, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 700, &got), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 800, &err), 0);
    ck_assert_int_eq(gw_storage_read_write_checkpoint(r, "u1/c1", 800, &got), 1);
    ck_assert_uint_eq(got, 9223372036854775807ULL);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->wcps, "u1/c1");
    pthread_mutex_unlock(&sn->lock);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_hook_and_publication)
{
    up(_i);
    gw_storage_t *s = writer();
    seen_t *sn = &seen;
    gw_storage_set_hook(s, on_commit, sn);
    gw_storage_hook_fn fn;
    void *ud;
    gw_storage_get_hook(s, &fn, &ud);
    ck_assert(fn == on_commit && ud == sn);
    /* a reader without a pub reads the committed checkpoint; with one, what was published */
    gw_storage_reader_t *served = reader(&opts), *other = reader(&bare);
    uint64_t last, lsn;
    int consistent;
    ck_assert_int_eq(gw_storage_read_checkpoint(other, &last, &lsn, &consistent), 0);
    ck_assert_uint_eq(last, 0);
    ck_assert_int_eq(consistent, 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(s, GW_STATE_SERVING, "1", &err), 0);
    put(s, "1#x", "k1", 1);
    put(s, "1#y", "k2", 2);
    ck_assert_int_eq(gw_storage_set_consistent(s, 1, &err), 0);
    ck_assert_int_eq(gw_storage_commit_async(s, 42, &err), 0);
    gw_storage_settle(s); /* durable and published */
    uint64_t cp = checkpoint(s);
    ck_assert_int_eq(gw_storage_consistent(s), 1);
    pthread_mutex_lock(&sn->lock);
    ck_assert_int_eq(sn->commits, 1);
    ck_assert_uint_eq(sn->last_op, cp);
    ck_assert_uint_eq(sn->lsn, 42);
    ck_assert(strcmp(sn->buckets, "1#x 1#y") == 0 || strcmp(sn->buckets, "1#y 1#x") == 0);
    pthread_mutex_unlock(&sn->lock);
    ck_assert_int_eq(gw_storage_read_checkpoint(served, &last, &lsn, &consistent), 0);
    ck_assert_uint_eq(last, cp);
    ck_assert_uint_eq(lsn, 42);
    ck_assert_int_eq(consistent, 1);
    ck_assert_str_eq(gw_storage_reader_version(served), "1#");
    ck_assert_int_eq(gw_storage_read_checkpoint(other, &last, &lsn, &consistent), 0);
    ck_assert_uint_eq(last, cp);
    ck_assert_int_eq(consistent, 1);
    /* a writer that does not serve publishes nothing and runs no hook */
    gw_storage_set_serving(s, 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#x", "k3", 3);
    ck_assert_int_eq(gw_storage_commit(s, 50, &err), 0);
    ck_assert_int_eq(gw_storage_read_checkpoint(served, &last, &lsn, &consistent), 0);
    ck_assert_uint_eq(last, cp);
    pthread_mutex_lock(&sn->lock);
    ck_assert_int_eq(sn->commits, 1);
    pthread_mutex_unlock(&sn->lock);
    /* serving again publishes its current checkpoint at once */
    gw_storage_set_serving(s, 1);
    ck_assert_int_eq(gw_storage_read_checkpoint(served, &last, &lsn, &consistent), 0);
    ck_assert_uint_eq(last, checkpoint(s));
    ck_assert_uint_eq(lsn, 50);
    gw_storage_reader_close(served);
    gw_storage_reader_close(other);
    gw_storage_close(s);
}
END_TEST

typedef struct each_ctx {
    char names[256];
    uint64_t total;
} each_ctx_t;

static int each_bucket(void *ud, const char *bucket, uint32_t cs, uint64_t count)
{
    each_ctx_t *e = ud;
    (void)cs;
    snprintf(e->names + strlen(e->names), sizeof(e->names) - strlen(e->names), "%s ", bucket);
    e->total += count;
    return 0;
}

START_TEST(test_storage_state_and_rollback)
{
    up(_i);
    gw_storage_t *s = writer();
    ck_assert_str_eq(gw_storage_version(s), "1#");
    ck_assert_int_eq(gw_storage_in_txn(s), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_in_txn(s), 1);
    ck_assert_int_eq(gw_storage_state_set(s, "slot", "f_1", &err), 0);         /* version 1's */
    ck_assert_int_eq(gw_storage_state_set(s, GW_STATE_SERVING, "1", &err), 0); /* shared */
    put(s, "1#b", "k1", 1);
    ck_assert_int_eq(gw_storage_commit(s, 5, &err), 0);
    ck_assert_int_eq(gw_storage_in_txn(s), 0);
    uint64_t cp = checkpoint(s);
    char v[64];
    ck_assert_int_eq(gw_storage_state_get(s, "slot", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "f_1");
    ck_assert_int_eq(gw_storage_state_get(s, "nothing", v, sizeof(v)), 0);
    /* a rolled-back transaction leaves nothing: ops, totals, state, op ids */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k2", 2);
    put(s, "1#c", "k3", 3);
    ck_assert_int_eq(gw_storage_state_set(s, "slot", "changed", &err), 0);
    gw_storage_rollback(s);
    ck_assert_int_eq(gw_storage_in_txn(s), 0);
    ck_assert_uint_eq(checkpoint(s), cp);
    ck_assert_int_eq(gw_storage_state_get(s, "slot", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "f_1");
    gw_storage_stats_t st;
    gw_storage_stats(s, &st);
    ck_assert_uint_eq(st.rows, 1);
    ck_assert_uint_eq(st.ops, 1);
    ck_assert_uint_eq(st.buckets, 1);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k2", 2);
    ck_assert_int_eq(gw_storage_commit(s, 6, &err), 0);
    ck_assert_uint_gt(checkpoint(s), cp);
    gw_storage_reader_t *r = reader(&opts);
    uint32_t cs;
    uint64_t count;
    checksum(r, "1#b", checkpoint(s), &cs, &count);
    ck_assert_uint_eq(count, 2);
    ck_assert_uint_eq(cs, 3);
    each_ctx_t e = {0};
    ck_assert_int_eq(gw_storage_each_bucket(r, checkpoint(s), each_bucket, &e), 0);
    ck_assert_str_eq(e.names, "1#b ");
    ck_assert_uint_eq(e.total, 2);
    /* readers see replication state of the served version, shared keys as they are */
    uint64_t last, lsn;
    int consistent;
    gw_storage_read_checkpoint(r, &last, &lsn, &consistent);
    ck_assert_int_eq(gw_storage_read_state(r, "slot", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "f_1");
    ck_assert_int_eq(gw_storage_read_state(r, GW_STATE_SERVING, v, sizeof(v)), 1);
    ck_assert_str_eq(v, "1");
    ck_assert(gw_storage_key_shared(GW_STATE_NEXT_OP) && !gw_storage_key_shared("slot"));
    gw_storage_reader_close(r);
    gw_storage_close(s);
    /* reopened: the same checkpoint, version and state */
    gw_storage_t *again;
    ck_assert_int_eq(gw_storage_open(&opts, &again, &err), 0);
    ck_assert_str_eq(gw_storage_version(again), "1#");
    gw_storage_checkpoint(again, &last, &lsn);
    ck_assert_uint_eq(lsn, 6);
    ck_assert_int_eq(gw_storage_state_get(again, "slot", v, sizeof(v)), 1);
    gw_storage_close(again);
}
END_TEST

/* Read a bucket's ops as of upto, as text (caller frees). */
static char *ops_text(gw_storage_reader_t *r, const char *bucket, uint64_t upto)
{
    gw_buf_t b = GW_BUF_INIT;
    uint64_t first, last;
    read_all(r, bucket, 0, upto, 1000, &b, &first, &last);
    return b.data;
}

START_TEST(test_storage_compaction_keeps_checksums)
{
    up(_i);
    gw_storage_t *s = writer();
    /* k1 written three times, k2 once then removed, k3 once: in separate commits */
    const char *in_b[] = {"1#b", NULL}, *none[] = {NULL};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(gw_storage_begin(s, &err), 0);
        put_in(s, "k1", 100 + (uint32_t)i, in_b);
        if (i == 0) put_in(s, "k2", 7, in_b);
        if (i == 1) put_in(s, "k2", 7, none);
        if (i == 2) put_in(s, "k3", 9, in_b);
        ck_assert_int_eq(gw_storage_commit(s, 10 + (uint64_t)i, &err), 0);
    }
    uint64_t before = checkpoint(s);
    gw_storage_reader_t *r = reader(&opts);
    uint32_t cs0, cs1;
    uint64_t n0, n1;
    checksum(r, "1#b", before, &cs0, &n0);
    ck_assert_uint_eq(n0, 6);
    gw_storage_compact_stats_t st;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_compact(s, &st, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 20, &err), 0);
    ck_assert_uint_eq(st.target, before);
    ck_assert_uint_eq(st.ops_before, 6);
    ck_assert_uint_lt(st.ops_after, 6);
    ck_assert_uint_gt(st.moved, 0);
    checksum(r, "1#b", checkpoint(s), &cs1, &n1);
    ck_assert_uint_eq(cs1, cs0); /* checksums stay */
    ck_assert_uint_eq(n1, st.ops_after);
    char *text = ops_text(r, "1#b", checkpoint(s));
    /* the live PUTs stay, whole; what they superseded is MOVE or folded into a CLEAR */
    ck_assert_ptr_nonnull(strstr(text, "\"object_id\":\"k1\""));
    ck_assert_ptr_nonnull(strstr(text, "\"object_id\":\"k3\""));
    ck_assert_int_eq(count_of(text, "\"op\":\"PUT\""), 2);
    ck_assert_int_eq(count_of(text, "\"object_id\":\"k2\""), 0);
    ck_assert_int_eq(count_of(text, "\"op\":\"MOVE\"") + count_of(text, "\"op\":\"CLEAR\""),
                     (int)n1 - 2);
    free(text);
    char v[32];
    ck_assert_int_eq(gw_storage_state_get(s, "compact_target", v, sizeof(v)), 1);
    ck_assert_uint_eq(strtoull(v, NULL, 10), before);
    /* compacting again changes nothing */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_compact(s, &st, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 21, &err), 0);
    ck_assert_uint_eq(st.moved + st.cleared, 0);
    /* a bucket whose every op was removed becomes one CLEAR with the same checksum */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#gone", "g1", 11);
    put(s, "1#gone", "g2", 12);
    ck_assert_int_eq(gw_storage_commit(s, 30, &err), 0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put_in(s, "g1", 0, none);
    put_in(s, "g2", 0, none);
    ck_assert_int_eq(gw_storage_commit(s, 31, &err), 0);
    checksum(r, "1#gone", checkpoint(s), &cs0, &n0);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_compact(s, NULL, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 32, &err), 0);
    checksum(r, "1#gone", checkpoint(s), &cs1, &n1);
    ck_assert_uint_eq(cs1, cs0);
    ck_assert_uint_eq(n1, 1);
    text = ops_text(r, "1#gone", checkpoint(s));
    ck_assert_int_eq(count_of(text, "\"op\":\"CLEAR\""), 1);
    free(text);
    gw_storage_reader_close(r);
    gw_storage_close(s);
}
END_TEST

START_TEST(test_storage_versions_side_by_side_and_the_switch)
{
    up(_i);
    gw_storage_t *s = writer(), *b;
    seen_t *sn = &seen;
    gw_storage_set_hook(s, on_commit, sn);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(s, GW_STATE_SERVING, "1", &err), 0);
    ck_assert_int_eq(gw_storage_state_set(s, "slot", "ferry_1", &err), 0);
    put(s, "1#b", "k1", 1);
    put(s, "1#b", "k2", 2);
    put(s, "1#b", "k3", 3);
    ck_assert_int_eq(gw_storage_commit(s, 100, &err), 0);
    /* a second writer of the same storage builds version 2 beside it */
    ck_assert_int_eq(gw_storage_open_version(gw_storage_opts(s), "2", &b, &err), 0);
    gw_storage_set_serving(b, 0);
    ck_assert_str_eq(gw_storage_version(b), "2#");
    uint64_t ids[6];
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "2#b", "k1", 11); /* the same source row: version 2's own membership */
    put(b, "2#b", "k2", 12);
    ck_assert_int_eq(gw_storage_commit(b, 90, &err), 0);
    ids[0] = checkpoint(b);
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    put(s, "1#b", "k4", 4);
    ck_assert_int_eq(gw_storage_commit(s, 110, &err), 0);
    ids[1] = checkpoint(s);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    gw_row_ref_t ref = {.table = "public.t", .key = "k1"};
    ck_assert_int_eq(gw_storage_delete_row(b, &ref, &err), 0); /* REMOVE in 2#b only */
    ck_assert_int_eq(gw_storage_commit(b, 120, &err), 0);
    ids[2] = checkpoint(b);
    /* one op-id sequence: every commit's ids are above the other writer's earlier ones */
    ck_assert_uint_gt(ids[1], ids[0]);
    ck_assert_uint_gt(ids[2], ids[1]);
    /* namespaces: rows, state and totals are each version's own */
    gw_storage_stats_t st;
    gw_storage_stats(s, &st);
    ck_assert_uint_eq(st.rows, 4);
    ck_assert_uint_eq(st.buckets, 1);
    gw_storage_stats(b, &st);
    ck_assert_uint_eq(st.rows, 1);
    ck_assert_uint_eq(st.ops, 3);
    char v[64];
    ck_assert_int_eq(gw_storage_state_get(b, "slot", v, sizeof(v)), 0);
    ck_assert_int_eq(gw_storage_state_get(b, "1#slot", v, sizeof(v)), 1); /* named explicitly */
    ck_assert_str_eq(v, "ferry_1");
    ck_assert_int_eq(gw_storage_state_get(b, GW_STATE_SERVING, v, sizeof(v)), 1); /* shared */
    ck_assert_str_eq(v, "1");
    /* readers of this process serve the serving writer's checkpoint, in its namespace; the
     * builder's commits ran no hook */
    gw_storage_reader_t *r = reader(&opts);
    uint64_t cp, cplsn;
    int consistent;
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &cp, &cplsn, &consistent), 0);
    ck_assert_uint_eq(cp, ids[1]);
    ck_assert_str_eq(gw_storage_reader_version(r), "1#");
    pthread_mutex_lock(&sn->lock);
    ck_assert_int_eq(sn->commits, 2);
    pthread_mutex_unlock(&sn->lock);
    uint32_t cs;
    uint64_t n;
    checksum(r, "1#b", cp, &cs, &n);
    ck_assert_uint_eq(n, 4); /* the delete in version 2 did not touch version 1 */
    ck_assert_uint_eq(cs, 1 + 2 + 3 + 4);
    /* compaction by version 1's writer leaves version 2's buckets alone */
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    put(b, "2#b", "k2", 13); /* k2 again: its first PUT could become a MOVE */
    ck_assert_int_eq(gw_storage_commit(b, 125, &err), 0);
    gw_storage_compact_stats_t cst;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    gw_storage_rollback(s); /* reloads its caches: it now knows version 2's buckets too */
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_compact(s, &cst, &err), 0);
    ck_assert_int_eq(gw_storage_commit(s, 125, &err), 0);
    ck_assert_uint_eq(cst.moved, 0);
    ck_assert_uint_eq(cst.ops_before, 4); /* version 1's ops only */
    checksum(r, "2#b", checkpoint(b), &cs, &n);
    ck_assert_uint_eq(n, 4);
    /* write checkpoints waiting for their LSN move to the new serving writer */
    uint64_t counter;
    ck_assert_int_eq(gw_storage_begin(s, &err), 0);
    ck_assert_int_eq(gw_storage_write_checkpoint(s, "u/c", 1000, &counter, &err), 0);
    put(s, "1#b", "k5", 5);
    ck_assert_int_eq(gw_storage_commit(s, 130, &err), 0);
    ids[3] = checkpoint(s);
    /* the switch: version 2's checkpoint goes above every id handed out, then it serves */
    gw_storage_settle(s);
    gw_storage_settle(b);
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_advance_checkpoint(b, &err), 0);
    ck_assert_int_eq(gw_storage_state_set(b, GW_STATE_SERVING, "2", &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    ids[4] = checkpoint(b);
    ck_assert_uint_ge(ids[4], ids[3]);
    gw_storage_move_pending(s, b);
    gw_storage_set_hook(b, on_commit, sn);
    gw_storage_set_hook(s, NULL, NULL);
    gw_storage_set_serving(s, 0);
    gw_storage_set_serving(b, 1);
    ck_assert_int_eq(gw_storage_read_checkpoint(r, &cp, &cplsn, &consistent), 0);
    ck_assert_uint_eq(cp, ids[4]);
    ck_assert_str_eq(gw_storage_reader_version(r), "2#");
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 1000, &err), 0);
    pthread_mutex_lock(&sn->lock);
    ck_assert_str_eq(sn->wcps, "u/c"); /* reported by the writer that serves now */
    pthread_mutex_unlock(&sn->lock);
    gw_storage_close(s);
    /* dropping version 1 leaves nothing of it, and the writer's own version cannot go */
    uint64_t dropped;
    ck_assert_int_eq(gw_storage_begin(b, &err), 0);
    ck_assert_int_eq(gw_storage_drop_version(b, "2", &dropped, &err), GW_EINVAL);
    ck_assert_int_eq(gw_storage_drop_version(b, "1", &dropped, &err), 0);
    ck_assert_int_eq(gw_storage_commit(b, 0, &err), 0);
    ck_assert_uint_eq(dropped, 1);
    checksum(r, "1#b", checkpoint(b), &cs, &n);
    ck_assert_uint_eq(n, 0);
    each_ctx_t e = {0};
    ck_assert_int_eq(gw_storage_each_bucket(r, checkpoint(b), each_bucket, &e), 0);
    ck_assert_str_eq(e.names, "2#b ");
    ck_assert_int_eq(gw_storage_read_state(r, "slot", v, sizeof(v)), 0); /* 1#slot went too */
    gw_storage_reader_close(r);
    gw_storage_close(b);
    /* reopened, the storage serves version 2 */
    ck_assert_int_eq(gw_storage_open(&opts, &s, &err), 0);
    ck_assert_str_eq(gw_storage_version(s), "2#");
    gw_storage_close(s);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("storage_contract");
    TCase *tc = tcase_create("contract");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_loop_test(tc, test_storage_every_backend_has_a_fixture, 0, 1);
    tcase_add_loop_test(tc, test_storage_ops_across_chunks_and_checkpoints, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_chunks_carry_their_commit_time, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_read_hold_is_one_snapshot, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_removes_when_rows_leave, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_row_copies, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_lookups_as_of_a_checkpoint, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_checkpoint_requests_are_monotonic, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_write_checkpoints_wait_for_their_lsn, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_hook_and_publication, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_state_and_rollback, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_compaction_keeps_checksums, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_storage_versions_side_by_side_and_the_switch, 0, NBACKENDS);
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
