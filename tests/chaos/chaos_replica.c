/* chaos_replica.c -- a libferry replica that syncs until stopped, for the reliability tests
 *
 * The reliability scenarios (tests/chaos/) keep one of these connected while they kill ferry,
 * break the network or fill disks, and compare its SQLite file with the oracle afterwards. It
 * opens DB with the schema given on the command line, connects to the gateway and syncs in the
 * background (libferry reconnects by itself), and every 200 ms writes its status to STATUS as
 * one JSON object (state, applied checkpoint, checksum failures, last error), so a test can wait
 * for a checkpoint and read the errors libferry reports to the app. SIGTERM or SIGINT ends it:
 * it disconnects, closes the file and writes the status a last time.
 *
 * usage: chaos_replica --db FILE --endpoint URL --token TOKEN --schema SPEC [--params JSON]
 *                      [--status FILE]
 *   SPEC: tables separated by ';', each "name:col,col=i,col=r" (=i INTEGER, =r REAL, else TEXT)
 * Exit: 0 after a stop, 3 when the file cannot be opened (the error is in STATUS and on stderr),
 * 2 on usage errors.
 */
#include <ferry.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_TABLES 16
#define MAX_COLS   64

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static char *token_cb(void *ud, int expired)
{
    (void)expired;
    return strdup((const char *)ud);
}

/* JSON string body of s into f (no quotes added). */
static void json_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

static void write_status(const char *path, ferry_db_t *db, const char *open_error)
{
    if (path == NULL) return;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return;
    ferry_status_t st;
    memset(&st, 0, sizeof(st));
    if (db != NULL) ferry_get_status(db, &st);
    fprintf(f,
            "{\"state\":%d,\"applied_checkpoint\":%lld,\"last_synced_at\":%lld,"
            "\"checksum_failures\":%lld,\"ops_received\":%lld,\"upload_queue\":%lld,"
            "\"time\":%lld,\"last_error\":\"",
            (int)st.state, (long long)st.applied_checkpoint, (long long)st.last_synced_at,
            (long long)st.checksum_failures, (long long)st.ops_received_total,
            (long long)st.upload_queue_length, (long long)time(NULL));
    json_text(f, open_error != NULL ? open_error : st.last_error);
    fprintf(f, "\"}\n");
    fclose(f);
    rename(tmp, path);
}

int main(int argc, char **argv)
{
    const char *dbpath = NULL, *endpoint = NULL, *token = NULL, *spec = NULL, *params = NULL;
    const char *status = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char **dst = strcmp(argv[i], "--db") == 0         ? &dbpath
                           : strcmp(argv[i], "--endpoint") == 0 ? &endpoint
                           : strcmp(argv[i], "--token") == 0    ? &token
                           : strcmp(argv[i], "--schema") == 0   ? &spec
                           : strcmp(argv[i], "--params") == 0   ? &params
                           : strcmp(argv[i], "--status") == 0   ? &status
                                                                : NULL;
        if (dst == NULL) {
            fprintf(stderr, "chaos_replica: unknown option %s\n", argv[i]);
            return 2;
        }
        *dst = argv[i + 1];
    }
    if (dbpath == NULL || endpoint == NULL || token == NULL || spec == NULL) {
        fprintf(stderr, "usage: chaos_replica --db FILE --endpoint URL --token TOKEN --schema SPEC "
                        "[--params JSON] [--status FILE]\n");
        return 2;
    }
    /* the schema: tables "name:col,col=i" separated by ';' (strings live in specbuf) */
    static ferry_table_t tables[MAX_TABLES + 1];
    static ferry_column_t cols[MAX_TABLES][MAX_COLS + 1];
    char *specbuf = strdup(spec);
    size_t nt = 0;
    for (char *save1 = NULL, *t = strtok_r(specbuf, ";", &save1); t != NULL && nt < MAX_TABLES;
         t = strtok_r(NULL, ";", &save1)) {
        char *colon = strchr(t, ':');
        if (colon != NULL) *colon = '\0';
        tables[nt].name = t;
        size_t nc = 0;
        for (char *save2 = NULL, *c = colon != NULL ? strtok_r(colon + 1, ",", &save2) : NULL;
             c != NULL && nc < MAX_COLS; c = strtok_r(NULL, ",", &save2)) {
            char *eq = strchr(c, '=');
            ferry_coltype_t type = FERRY_TEXT;
            if (eq != NULL) {
                *eq = '\0';
                type = eq[1] == 'i' ? FERRY_INTEGER : eq[1] == 'r' ? FERRY_REAL : FERRY_TEXT;
            }
            cols[nt][nc].name = c;
            cols[nt][nc].type = type;
            nc++;
        }
        tables[nt].columns = cols[nt];
        nt++;
    }
    ferry_schema_t schema = {tables};
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    ferry_db_t *db = NULL;
    ferry_error_t err;
    if (ferry_open(dbpath, &schema, &db, &err) != 0) {
        fprintf(stderr, "chaos_replica: %s\n", err.message);
        write_status(status, NULL, err.message);
        free(specbuf);
        return 3;
    }
    ferry_options_t opts = {.params_json = params, .retry_delay_ms = 300};
    int rc = ferry_connect(db, endpoint, token_cb, (void *)token, &opts);
    if (rc != 0) {
        fprintf(stderr, "chaos_replica: could not connect: %s\n", ferry_strerror(rc));
        ferry_close(db);
        free(specbuf);
        return 1;
    }
    while (!g_stop) {
        write_status(status, db, NULL);
        usleep(200000);
    }
    ferry_disconnect(db);
    write_status(status, db, NULL);
    ferry_close(db);
    free(specbuf);
    return 0;
}
