/* bench_sdk.c -- libferry benchmark: initial sync rows/s, client RSS, local write latency
 *
 *   bench_sdk ENDPOINT TOKEN DBFILE   prints "BENCH name value unit note" lines
 *
 * Opens a fresh replica with the bench schema (items: owner, body, n), connects, waits for the
 * first full checkpoint and reports rows/s end to end (request to applied), the peak RSS, then
 * times 2000 single-row local inserts (row + upload-queue entry, autocommit) while disconnected.
 * The limit in the same run: the same rows (read back into memory first) inserted with one
 * prepared statement in one transaction into a plain table of a fresh SQLite file (DBFILE.raw,
 * WAL, synchronous=NORMAL): what SQLite alone does on this machine, no network, no parsing.
 */
#include <ferry.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const ferry_column_t COLS[] = {
    {"owner", FERRY_TEXT}, {"body", FERRY_TEXT}, {"n", FERRY_INTEGER}, {NULL, 0}};
static const ferry_table_t TABLES[] = {{"items", COLS, NULL, 0, 0, 0}, {NULL, NULL, NULL, 0, 0, 0}};
static const ferry_schema_t SCHEMA = {TABLES};

static char *tok(void *ud, int expired)
{
    (void)expired;
    return strdup(ud);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long rss_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0) v = atol(line + strlen(key));
    if (f) fclose(f);
    return v;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the rows of items inserted into DBFILE.raw by SQLite alone: rows/s (0 when it could not) */
static double sqlite_limit(ferry_db_t *db, const char *path)
{
    typedef struct {
        char *id, *owner, *body;
        long long n;
    } row_t;
    size_t cap = 1024, len = 0;
    row_t *rows = malloc(cap * sizeof *rows);
    sqlite3_stmt *s;
    if (rows == NULL ||
        sqlite3_prepare_v2(ferry_sqlite(db), "SELECT id, owner, body, n FROM items", -1, &s, NULL))
        return 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (len == cap && (rows = realloc(rows, (cap *= 2) * sizeof *rows)) == NULL) return 0;
        rows[len].id = strdup((const char *)sqlite3_column_text(s, 0));
        rows[len].owner = strdup((const char *)sqlite3_column_text(s, 1));
        rows[len].body = strdup((const char *)sqlite3_column_text(s, 2));
        rows[len++].n = sqlite3_column_int64(s, 3);
    }
    sqlite3_finalize(s);
    char raw[4096];
    snprintf(raw, sizeof raw, "%s.raw", path);
    unlink(raw);
    sqlite3 *r;
    double rate = 0;
    if (sqlite3_open(raw, &r) == SQLITE_OK &&
        sqlite3_exec(r,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                     "CREATE TABLE items (id TEXT PRIMARY KEY, owner TEXT, body TEXT, n INTEGER)",
                     NULL, NULL, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(r, "INSERT INTO items VALUES (?, ?, ?, ?)", -1, &s, NULL) == SQLITE_OK) {
        double t0 = now();
        sqlite3_exec(r, "BEGIN", NULL, NULL, NULL);
        for (size_t i = 0; i < len; i++) {
            sqlite3_bind_text(s, 1, rows[i].id, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 2, rows[i].owner, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 3, rows[i].body, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 4, rows[i].n);
            sqlite3_step(s);
            sqlite3_reset(s);
        }
        sqlite3_finalize(s);
        if (sqlite3_exec(r, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) rate = len / (now() - t0);
    }
    sqlite3_close(r);
    for (size_t i = 0; i < len; i++) {
        free(rows[i].id);
        free(rows[i].owner);
        free(rows[i].body);
    }
    free(rows);
    return rate;
}

/* Polls the status until every op of the first checkpoint is stored: the end of the download
 * phase (what follows until the first sync is validation and publishing). */
typedef struct phase {
    ferry_db_t *db;
    double t0, stored;
    volatile int done;
} phase_t;

static void *watch_phase(void *arg)
{
    phase_t *ph = arg;
    while (!ph->done) {
        ferry_status_t st;
        ferry_get_status(ph->db, &st);
        if (st.ops_total > 0 && st.ops_downloaded >= st.ops_total) {
            ph->stored = now() - ph->t0;
            break;
        }
        usleep(2000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_sdk ENDPOINT TOKEN DBFILE\n");
        return 2;
    }
    ferry_db_t *db;
    ferry_error_t err;
    if (ferry_open(argv[3], &SCHEMA, &db, &err)) {
        fprintf(stderr, "bench_sdk: %s\n", err.message);
        return 1;
    }
    double t0 = now();
    phase_t ph = {db, t0, 0, 0};
    pthread_t pt;
    int have_pt = pthread_create(&pt, NULL, watch_phase, &ph) == 0;
    if (ferry_connect(db, argv[1], tok, argv[2], NULL) || ferry_wait_for_first_sync(db, 600000)) {
        ferry_status_t st;
        ferry_get_status(db, &st);
        fprintf(stderr, "bench_sdk: no first sync: %s\n", st.last_error);
        return 1;
    }
    double dt = now() - t0;
    ph.done = 1;
    if (have_pt) pthread_join(pt, NULL);
    /* a first sync stores its ops without the oplog's key index and builds it once the app
     * was told (clientsdk/README.md): the time until it is there */
    double ix = -1;
    for (int i = 0; i < 60000 && ix < 0; i++) {
        sqlite3_stmt *q;
        if (sqlite3_prepare_v2(ferry_sqlite(db),
                               "SELECT count(*) FROM sqlite_schema WHERE "
                               "name = 'ferry_oplog_key'",
                               -1, &q, NULL) == SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) > 0)
            ix = now() - t0 - dt;
        sqlite3_finalize(q);
        if (ix < 0) usleep(2000);
    }
    ferry_disconnect(db);
    sqlite3_stmt *s;
    long rows = 0;
    if (sqlite3_prepare_v2(ferry_sqlite(db), "SELECT count(*) FROM items", -1, &s, NULL) ==
            SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        rows = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    printf("BENCH sdk_initial_sync_rows_per_s %.0f rows/s %ld rows in %.2f s, request to applied\n",
           rows / dt, rows, dt);
    if (ph.stored > 0)
        printf(
            "BENCH sdk_initial_sync_download_s %.2f s every op stored (then %.2f s validating and "
            "publishing)\n",
            ph.stored, dt - ph.stored);
    if (ix >= 0)
        printf("BENCH sdk_initial_sync_index_s %.2f s after applied, the oplog's key index was "
               "built (the next ops are stored after it)\n",
               ix);
    printf("BENCH sdk_client_peak_rss %ld KiB VmHWM after the initial sync and the index\n",
           rss_kb("VmHWM:"));
    /* after the RSS figure: the limit holds the rows in memory */
    double limit = sqlite_limit(db, argv[3]);
    printf(
        "BENCH sdk_sqlite_insert_limit_rows_per_s %.0f rows/s the same %ld rows, prepared INSERTs "
        "in one transaction into a fresh plain table (the limit)\n",
        limit, rows);
    enum { N = 2000 };
    static double lat[N];
    sqlite3_prepare_v2(ferry_sqlite(db),
                       "INSERT INTO items(id, owner, body, n) VALUES (?, 'me', 'local write', ?)",
                       -1, &s, NULL);
    for (int i = 0; i < N; i++) {
        char id[37];
        ferry_uuid(id);
        double a = now();
        sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(s, 2, i);
        if (sqlite3_step(s) != SQLITE_DONE) {
            fprintf(stderr, "bench_sdk: %s\n", sqlite3_errmsg(ferry_sqlite(db)));
            return 1;
        }
        sqlite3_reset(s);
        lat[i] = (now() - a) * 1e6;
    }
    sqlite3_finalize(s);
    qsort(lat, N, sizeof lat[0], cmp);
    printf(
        "BENCH sdk_local_write_p50 %.1f us insert + queue entry, autocommit, WAL (p99 %.1f us)\n",
        lat[N / 2], lat[N * 99 / 100]);
    ferry_close(db);
    return 0;
}
