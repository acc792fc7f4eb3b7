/* fuzz_sdk.c -- libFuzzer target: libferry's line scanner and checkpoint handling
 *
 * Every input is a stream: lines separated by newlines, as a server (or anything on the path)
 * could send them. Each line goes to the data-line scanner alone (ferry__scan_line, which must
 * either take it whole or give up) and then to the sync engine on a real replica
 * (ferry__oplog_line: checkpoints, checkpoint_diff, data lines through the scanner or jansson,
 * partial and full checkpoint_complete with checksum validation and publishing into the app's
 * tables), the way the sync thread feeds them, with the open transaction flushed at the end.
 * The replica lives in a file under $TMPDIR (or /tmp) and is emptied between inputs. Any result
 * is fine (libferry answers bad lines with FERRY_EPROTO and the stream reconnects) except a
 * crash, a leak or a hang.
 */
#include "clientsdk/src/ferry_int.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const ferry_column_t T_COLS[] = {
    {"description", FERRY_TEXT}, {"done", FERRY_INTEGER}, {"score", FERRY_REAL}, {NULL, 0}};
static const ferry_column_t L_COLS[] = {{"name", FERRY_TEXT}, {NULL, 0}};
static const ferry_table_t TABLES[] = {{"todos", T_COLS, NULL, 0, 0, 0},
                                       {"lists", L_COLS, NULL, 0, 0, 0},
                                       {NULL, NULL, NULL, 0, 0, 0}};
static const ferry_schema_t SCHEMA = {TABLES};

static ferry_db_t *g_db;
static sqlite3 *g_conn;
static ferry_scan_t g_scan;

static void init(void)
{
    char path[256];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/ferry-fuzz-sdk.%d.db", dir != NULL ? dir : "/tmp",
             (int)getpid());
    unlink(path);
    ferry_error_t err;
    if (ferry_open(path, &SCHEMA, &g_db, &err) != 0) abort();
    if (ferry__open_conn(path, &g_conn, NULL, &err) != 0) abort();
    if (ferry__oplog_init(g_db, &g_db->sync, g_conn) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_db == NULL) init();
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl != NULL ? nl : end) - p);
        if (ferry__scan_line(&g_scan, p, len) < -1) __builtin_trap();
        int rc = ferry__oplog_line(g_db, &g_db->sync, p, len);
        if (rc < 0) ferry__oplog_reset_connection(&g_db->sync); /* the stream would reconnect */
        p += len + (nl != NULL);
    }
    ferry__oplog_flush(&g_db->sync);
    /* a fresh replica for the next input */
    ferry__oplog_reset_connection(&g_db->sync);
    sqlite3_exec(g_conn,
                 "DELETE FROM ferry_buckets; DELETE FROM ferry_oplog; DELETE FROM ferry_updated;"
                 "DELETE FROM todos; DELETE FROM lists; DELETE FROM ferry_crud;",
                 NULL, NULL, NULL);
    return 0;
}
