/* load_sdk.c -- ferry-load's SDK mode: many libferry clients, each with its own SQLite file
 *
 *   ferry-load-sdk --url URL --secret S [--kid K] [--aud A] [--iss I] --clients N [--users N]
 *                  [--user-prefix P] --schema SPEC [--dir DIR] [--params JSON] [--writes K]
 *                  [--write-table T --owner-column C --stamp-column C] [--expect-rows N]
 *                  [--timeout S] [--json FILE] [--quiet]
 *   (also reached as `ferry-load sdk ...`)
 *
 * SPEC names the synced tables and their columns as libferry needs them ("id" is implicit):
 * "items:body,n:int;ferry_load_ticks:owner,ts:int" (a column is TEXT unless :int or :real).
 *
 * All N clients open a fresh file DIR/client-<i>.db (DIR default /tmp/ferry-load-sdk.<pid>,
 * removed afterwards unless given) and connect at once; each ferry_db_t runs its own sync and
 * upload threads, so one process holds them all (a few hundred clients: ~3 threads each).
 * Client i is user <prefix><i mod users>, with an HS256 token signed in-process (load_token.c).
 * Measured: time from connect to the first applied full checkpoint per client (recorded by the
 * status callback on the sync thread), rows in each client's tables once all synced (and the
 * aggregate rows/s over the slowest client's time), checksum failures, the harness's peak RSS;
 * with --writes K every client then inserts K rows into --write-table (owner = its user, stamp =
 * epoch µs) through its SQLite connection and waits in ferry_wait_synced until they are uploaded
 * and the checkpoint carrying its write checkpoint is applied: the SDK write round trip. (The
 * harness also checks that libferry's queue is empty when the wait returns; a wait that returns
 * early is counted as wait_synced_early_returns and waited out.)
 * Consistent (exit 0): every client synced, no checksum failure, every client has --expect-rows
 * rows when given (else all clients of a user have the same count), every write caught up with
 * nothing rejected. Exit 3 when inconsistent, 1 on usage or setup errors.
 */
#include "load_hist.h"
#include "load_clock.h"
#include "load_token.h"

#include <ferry.h>

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_TABLES 16
#define MAX_COLS   32

static struct {
    const char *url, *secret, *kid, *aud, *iss, *prefix, *schema, *dir, *params, *json;
    const char *write_table, *owner_col, *stamp_col;
    long clients, users, writes, expect_rows, ttl;
    double timeout;
    int quiet;
} O = {.prefix = "u",
       .params = "{}",
       .owner_col = "owner",
       .stamp_col = "ts",
       .clients = 10,
       .ttl = 3600,
       .timeout = 120};

typedef struct client {
    int idx;
    char user[64], path[512];
    ferry_db_t *db;
    uint64_t t_start;
    _Atomic uint64_t t_synced; /* mono µs of the first applied full checkpoint, 0 = not yet */
    _Atomic long rejected;
    long rows[MAX_TABLES], rows_total;
    int64_t checksum_failures;
    int write_ok;
    char last_error[256];
} client_t;

static ferry_table_t TABLES[MAX_TABLES + 1];
static ferry_column_t COLS[MAX_TABLES][MAX_COLS + 1];
static int NTABLES;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ferry-load-sdk: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static long self_hwm_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f != NULL && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    if (f != NULL) fclose(f);
    return kb;
}

/* "t1:a,b:int;t2:c" -> TABLES/COLS (the strings stay in the option's copy) */
static void parse_schema(char *spec)
{
    for (char *save = NULL, *t = strtok_r(spec, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
        if (NTABLES == MAX_TABLES) die("at most %d tables in --schema", MAX_TABLES);
        char *colon = strchr(t, ':');
        if (colon == NULL || colon == t) die("--schema: \"%s\" is not TABLE:col,col,...", t);
        *colon = '\0';
        int n = 0;
        for (char *s2 = NULL, *c = strtok_r(colon + 1, ",", &s2); c; c = strtok_r(NULL, ",", &s2)) {
            if (n == MAX_COLS) die("at most %d columns per table", MAX_COLS);
            ferry_coltype_t ty = FERRY_TEXT;
            char *k = strchr(c, ':');
            if (k != NULL) {
                *k++ = '\0';
                if (strcmp(k, "int") == 0)
                    ty = FERRY_INTEGER;
                else if (strcmp(k, "real") == 0)
                    ty = FERRY_REAL;
                else if (strcmp(k, "text") != 0)
                    die("--schema: unknown type \"%s\" (int, real or text)", k);
            }
            COLS[NTABLES][n++] = (ferry_column_t){c, ty};
        }
        COLS[NTABLES][n] = (ferry_column_t){NULL, 0};
        TABLES[NTABLES] = (ferry_table_t){t, COLS[NTABLES], NULL, 0, 0, 0};
        NTABLES++;
    }
    TABLES[NTABLES] = (ferry_table_t){NULL, NULL, NULL, 0, 0, 0};
    if (NTABLES == 0) die("--schema names no table");
}

static void usage(void)
{
    fputs("usage: ferry-load-sdk --url http://HOST:PORT --secret S [--kid K] [--aud A] [--iss I]\n"
          "  --clients N [--users N] [--user-prefix P] --schema 'T:col,col:int;T2:col'\n"
          "  [--dir DIR] [--params JSON] [--expect-rows N] [--timeout S] [--json FILE] [--quiet]\n"
          "  [--writes K --write-table T [--owner-column C] [--stamp-column C]]\n",
          stderr);
    exit(1);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--quiet") == 0) {
            O.quiet = 1;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
#define S(name, f)                                                                                 \
    if (strcmp(a, name) == 0) {                                                                    \
        O.f = v;                                                                                   \
        continue;                                                                                  \
    }
#define L(name, f)                                                                                 \
    if (strcmp(a, name) == 0) {                                                                    \
        O.f = strtol(v, NULL, 10);                                                                 \
        continue;                                                                                  \
    }
        S("--url", url);
        S("--secret", secret);
        S("--kid", kid);
        S("--aud", aud);
        S("--iss", iss);
        S("--user-prefix", prefix);
        S("--schema", schema);
        S("--dir", dir);
        S("--params", params);
        S("--json", json);
        S("--write-table", write_table);
        S("--owner-column", owner_col);
        S("--stamp-column", stamp_col);
        L("--clients", clients);
        L("--users", users);
        L("--writes", writes);
        L("--expect-rows", expect_rows);
        L("--ttl", ttl);
#undef S
#undef L
        if (strcmp(a, "--timeout") == 0) {
            O.timeout = strtod(v, NULL);
            continue;
        }
        fprintf(stderr, "ferry-load-sdk: unknown option %s\n", a);
        usage();
    }
    if (O.url == NULL || O.secret == NULL || O.schema == NULL)
        die("--url, --secret and --schema are required");
    if (strncmp(O.url, "http://127.", 11) != 0 && strncmp(O.url, "http://localhost", 16) != 0)
        die("\"%s\" is not a loopback URL (the SDK mode loads loopback only)", O.url);
    if (O.clients < 1 || O.clients > 2000) die("--clients must be between 1 and 2000");
    if (O.users <= 0) O.users = O.clients;
    if (O.writes > 0 && O.write_table == NULL) die("--writes needs --write-table");
}

static char *token_cb(void *ud, int expired)
{
    client_t *c = ud;
    (void)expired;
    char tok[1024];
    load_token_cfg_t tc = {O.secret, O.kid, O.aud, O.iss, O.ttl};
    if (load_token_sign(&tc, c->user, tok, sizeof tok) < 0) return NULL;
    return strdup(tok);
}

static void status_cb(void *ud, const ferry_status_t *st)
{
    client_t *c = ud;
    if (st->last_synced_at != 0 && atomic_load(&c->t_synced) == 0)
        atomic_store(&c->t_synced, mono_us());
}

static void rejected_cb(void *ud, const ferry_crud_t *e, const char *code, const char *msg)
{
    client_t *c = ud;
    (void)e;
    atomic_fetch_add(&c->rejected, 1);
    snprintf(c->last_error, sizeof c->last_error, "rejected: %s %s", code ? code : "",
             msg ? msg : "");
}

/* rows in libferry's upload queue (its ferry_crud table, only read here) */
static long queue_rows(ferry_db_t *db)
{
    sqlite3_stmt *s;
    long n = -1;
    if (sqlite3_prepare_v2(ferry_sqlite(db), "SELECT count(*) FROM ferry_crud", -1, &s, NULL) ==
            SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

static double msf(uint64_t us)
{
    return us / 1000.0;
}

static void json_hist(FILE *f, const char *name, const load_hist_t *h)
{
    fprintf(
        f,
        "  \"%s\": {\"count\": %llu, \"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
        "\"max\": %.3f},\n",
        name, (unsigned long long)h->count, msf(h->count ? h->min : 0),
        msf(load_hist_quantile(h, .5)), msf(load_hist_quantile(h, .9)),
        msf(load_hist_quantile(h, .99)), msf(h->max));
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    char *spec = strdup(O.schema);
    if (spec == NULL) die("out of memory");
    parse_schema(spec);
    ferry_schema_t schema = {TABLES};
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    char dirbuf[256];
    int own_dir = O.dir == NULL;
    if (own_dir) {
        snprintf(dirbuf, sizeof dirbuf, "/tmp/ferry-load-sdk.%ld", (long)getpid());
        O.dir = dirbuf;
    }
    if (mkdir(O.dir, 0755) != 0 && errno != EEXIST)
        die("could not create %s: %s", O.dir, strerror(errno));
    client_t *cl = calloc((size_t)O.clients, sizeof *cl);
    load_hist_t *h_sync = calloc(1, sizeof *h_sync), *h_write = calloc(1, sizeof *h_write);
    if (cl == NULL || h_sync == NULL || h_write == NULL) die("out of memory");
    for (long i = 0; i < O.clients; i++) {
        client_t *c = &cl[i];
        c->idx = (int)i;
        snprintf(c->user, sizeof c->user, "%s%ld", O.prefix, i % O.users);
        snprintf(c->path, sizeof c->path, "%s/client-%ld.db", O.dir, i);
        unlink(c->path);
        ferry_error_t err;
        if (ferry_open(c->path, &schema, &c->db, &err) != 0) die("client %ld: %s", i, err.message);
    }
    uint64_t t0 = mono_us(), deadline = t0 + (uint64_t)(O.timeout * 1e6);
    for (long i = 0; i < O.clients; i++) {
        client_t *c = &cl[i];
        ferry_options_t opt = {
            .params_json = O.params, .on_status = status_cb, .on_rejected = rejected_cb, .ud = c};
        c->t_start = mono_us();
        if (ferry_connect(c->db, O.url, token_cb, c, &opt) != 0)
            die("client %ld: ferry_connect failed", i);
    }
    /* wait for every first sync (or the deadline), with a progress line a second */
    long synced = 0;
    uint64_t last_progress = t0;
    for (;;) {
        synced = 0;
        for (long i = 0; i < O.clients; i++)
            synced += atomic_load(&cl[i].t_synced) != 0;
        if (synced == O.clients || mono_us() > deadline) break;
        if (!O.quiet && mono_us() - last_progress >= 1000000) {
            last_progress = mono_us();
            fprintf(stderr, "[%6.1fs] %ld/%ld clients synced\n", (last_progress - t0) / 1e6, synced,
                    O.clients);
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    uint64_t last_sync = 0;
    for (long i = 0; i < O.clients; i++) {
        uint64_t t = atomic_load(&cl[i].t_synced);
        if (t != 0) {
            load_hist_add(h_sync, t - cl[i].t_start);
            if (t - t0 > last_sync) last_sync = t - t0;
        }
    }
    /* rows per client and table */
    long rows_all = 0, rmin = -1, rmax = 0;
    int64_t cks = 0;
    for (long i = 0; i < O.clients; i++) {
        client_t *c = &cl[i];
        for (int t = 0; t < NTABLES; t++) {
            char sql[256];
            sqlite3_stmt *s;
            snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\"", TABLES[t].name);
            if (sqlite3_prepare_v2(ferry_sqlite(c->db), sql, -1, &s, NULL) == SQLITE_OK &&
                sqlite3_step(s) == SQLITE_ROW)
                c->rows[t] = sqlite3_column_int64(s, 0);
            sqlite3_finalize(s);
            c->rows_total += c->rows[t];
        }
        ferry_status_t st;
        ferry_get_status(c->db, &st);
        c->checksum_failures = st.checksum_failures;
        if (st.last_error[0] && c->last_error[0] == '\0')
            snprintf(c->last_error, sizeof c->last_error, "%s", st.last_error);
        cks += st.checksum_failures;
        rows_all += c->rows_total;
        if (rmin < 0 || c->rows_total < rmin) rmin = c->rows_total;
        if (c->rows_total > rmax) rmax = c->rows_total;
    }
    long hwm_after_sync = self_hwm_kb();
    /* same user, same rows (when --expect-rows is not given) */
    int rows_ok = 1;
    for (long i = 0; i < O.clients; i++) {
        if (O.expect_rows > 0 && cl[i].rows_total != O.expect_rows) rows_ok = 0;
        if (O.expect_rows <= 0 && i >= O.users && cl[i].rows_total != cl[i % O.users].rows_total)
            rows_ok = 0;
    }
    /* local writes: every client inserts K rows, then waits until caught up */
    long writes_ok = 0, rejected = 0, early = 0;
    if (O.writes > 0 && synced == O.clients) {
        char sql[512];
        snprintf(sql, sizeof sql, "INSERT INTO \"%s\" (id, \"%s\", \"%s\") VALUES (?, ?, ?)",
                 O.write_table, O.owner_col, O.stamp_col);
        uint64_t *tw = calloc((size_t)O.clients, sizeof *tw);
        if (tw == NULL) die("out of memory");
        for (long i = 0; i < O.clients; i++) {
            sqlite3_stmt *s;
            if (sqlite3_prepare_v2(ferry_sqlite(cl[i].db), sql, -1, &s, NULL) != SQLITE_OK)
                die("client %ld: %s", i, sqlite3_errmsg(ferry_sqlite(cl[i].db)));
            tw[i] = mono_us();
            for (long k = 0; k < O.writes; k++) {
                char id[37];
                ferry_uuid(id);
                sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
                sqlite3_bind_text(s, 2, cl[i].user, -1, SQLITE_STATIC);
                sqlite3_bind_int64(s, 3, (sqlite3_int64)real_us());
                if (sqlite3_step(s) != SQLITE_DONE)
                    die("client %ld: %s", i, sqlite3_errmsg(ferry_sqlite(cl[i].db)));
                sqlite3_reset(s);
            }
            sqlite3_finalize(s);
        }
        for (long i = 0; i < O.clients; i++) {
            /* ferry_wait_synced, then the queue itself (ferry_crud, read-only): a wait that
             * returns while our writes are still queued is counted (early_returns) and waited
             * out, so the figure is the time until the writes really are uploaded and synced */
            uint64_t until = deadline + 30000000;
            int ok = 0;
            while (!ok && mono_us() < until) {
                int left = (int)((until - mono_us()) / 1000) + 1;
                if (ferry_wait_synced(cl[i].db, left) != 0) break;
                long q = queue_rows(cl[i].db);
                if (q == 0)
                    ok = 1;
                else {
                    early++;
                    struct timespec ts = {0, 1000000};
                    nanosleep(&ts, NULL);
                }
            }
            if (ok) {
                cl[i].write_ok = 1;
                writes_ok++;
                load_hist_add(h_write, mono_us() - tw[i]);
            }
            rejected += atomic_load(&cl[i].rejected);
        }
        free(tw);
    }
    double elapsed = (mono_us() - t0) / 1e6;
    long hwm = self_hwm_kb();
    int consistent = synced == O.clients && cks == 0 && rows_ok && rows_all > 0 &&
                     (O.writes <= 0 || (writes_ok == O.clients && rejected == 0));
    const char *err = "";
    for (long i = 0; i < O.clients && !err[0]; i++)
        if (atomic_load(&cl[i].t_synced) == 0 || cl[i].last_error[0]) err = cl[i].last_error;
    for (long i = 0; i < O.clients; i++)
        ferry_close(cl[i].db);
    double span = last_sync / 1e6;
    double rows_s = span > 0 ? rows_all / span : 0;

    printf("ferry-load sdk: %ld libferry clients (%ld users), %.2f s\n", O.clients, O.users,
           elapsed);
    printf("  %-34s %ld of %ld, %lld checksum failures%s%s\n", "clients synced", synced, O.clients,
           (long long)cks, err[0] ? "; last error: " : "", err);
    printf("  %-34s p50 %.1f  p90 %.1f  p99 %.1f  max %.1f ms\n", "time to first full sync",
           msf(load_hist_quantile(h_sync, .5)), msf(load_hist_quantile(h_sync, .9)),
           msf(load_hist_quantile(h_sync, .99)), msf(h_sync->max));
    printf("  %-34s %ld in all, per client %ld..%ld; %.0f rows/s over %.3f s\n", "rows in SQLite",
           rows_all, rmin, rmax, rows_s, span);
    if (O.writes > 0)
        printf(
            "  %-34s %ld of %ld clients caught up, %ld rejected; p50 %.1f  p99 %.1f  max %.1f ms\n",
            "local writes to synced", writes_ok, O.clients, rejected,
            msf(load_hist_quantile(h_write, .5)), msf(load_hist_quantile(h_write, .99)),
            msf(h_write->max));
    if (early > 0)
        printf("  %-34s %ld time(s) ferry_wait_synced returned 0 with writes still in ferry_crud\n",
               "WARNING libferry", early);
    printf("  %-34s %.1f MB after the sync, %.1f MB at the end (%.0f KB per client)\n",
           "harness peak RSS", hwm_after_sync / 1024.0, hwm / 1024.0, (double)hwm / O.clients);
    printf("  %-34s %s\n", "consistent", consistent ? "yes" : "NO");
    if (O.json != NULL) {
        FILE *f = fopen(O.json, "w");
        if (f == NULL) die("could not write %s: %s", O.json, strerror(errno));
        fprintf(f, "{\n  \"scenario\": \"sdk\",\n  \"clients\": %ld,\n  \"users\": %ld,\n",
                O.clients, O.users);
        fprintf(f, "  \"elapsed_s\": %.3f,\n  \"consistent\": %s,\n  \"synced\": %ld,\n", elapsed,
                consistent ? "true" : "false", synced);
        fprintf(f, "  \"checksum_failures\": %lld,\n", (long long)cks);
        json_hist(f, "time_to_first_sync_ms", h_sync);
        json_hist(f, "write_to_synced_ms", h_write);
        fprintf(f,
                "  \"rows\": {\"total\": %ld, \"per_client_min\": %ld, \"per_client_max\": %ld, "
                "\"per_s\": %.1f, \"span_s\": %.6f},\n",
                rows_all, rmin, rmax, rows_s, span);
        fprintf(
            f,
            "  \"writes\": {\"per_client\": %ld, \"clients_caught_up\": %ld, \"rejected\": %ld, "
            "\"wait_synced_early_returns\": %ld},\n",
            O.writes, writes_ok, rejected, early);
        fprintf(f, "  \"harness_rss_kb\": {\"peak_after_sync\": %ld, \"peak\": %ld},\n",
                hwm_after_sync, hwm);
        fprintf(f, "  \"per_client\": [");
        for (long i = 0; i < O.clients; i++)
            fprintf(f, "%s{\"user\": \"%s\", \"rows\": %ld, \"synced\": %s}", i ? ", " : "",
                    cl[i].user, cl[i].rows_total, cl[i].t_synced ? "true" : "false");
        fprintf(f, "]\n}\n");
        fclose(f);
    }
    if (own_dir) {
        for (long i = 0; i < O.clients; i++) {
            char p[600];
            static const char *const sfx[] = {"", "-wal", "-shm", "-sync.lock", "-journal"};
            for (size_t k = 0; k < sizeof sfx / sizeof sfx[0]; k++) {
                snprintf(p, sizeof p, "%s%s", cl[i].path, sfx[k]);
                unlink(p);
            }
        }
        rmdir(O.dir);
    }
    free(cl);
    free(h_sync);
    free(h_write);
    free(spec);
    return consistent ? 0 : 3;
}
