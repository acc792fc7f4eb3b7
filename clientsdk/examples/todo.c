/* todo.c -- ferry-todo, a small offline-capable todo CLI on libferry
 *
 *   ferry-todo --db FILE --endpoint URL --token TOKEN COMMAND
 *     add TEXT [--list ID]   add a todo (to the given list, else the first list of the user)
 *     list                   print the todos: id, [x] when completed, description
 *     lists                  print the lists: id, name
 *     done ID                mark a todo completed
 *     rm ID                  delete a todo
 *     edit ID TEXT           change a todo's description
 *     sync [--wait]          upload queued writes and download changes; with --wait, wait until
 *                            fully caught up (exit 1 after FERRY_TODO_TIMEOUT seconds, default 30)
 *     status                 print the upload queue length and the last sync time
 *     conflicts              print the write conflicts the server's merge strategies recorded
 *                            for the user (when the sync rules send ferry_write_conflicts)
 *     open LIST              open a list: subscribe to the Sync Stream "list_todos" with
 *                            {"list_id": LIST} (kept in the replica, sent by every later sync),
 *                            sync until that subscription's data is in, print its todos; the
 *                            rules must define that stream (the demo's do not: see
 *                            clientsdk/README.md)
 *     close LIST             unsubscribe from it; the next sync removes its todos
 *     subscribe STREAM [JSON] / unsubscribe STREAM [JSON]
 *                            any other subscription (parameters a JSON object)
 *     subscriptions          print the subscriptions: stream, parameters, synced, server error
 *
 * add, done and rm only write the local replica: they work offline, and the next sync uploads
 * them. Schema: the demo's lists and todos (deploy/demo/schema.sql, sync-rules.yaml); todos
 * tracks previous values, so an edit uploads the description it replaced (for merge strategies
 * such as server_wins_if_changed). The user id (created_by) is the token's "sub" claim.
 */
#include <ferry.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ferry_column_t LIST_COLS[] = {
    {"org_id", FERRY_TEXT}, {"owner_id", FERRY_TEXT}, {"name", FERRY_TEXT}, {NULL, 0}};
static const ferry_column_t TODO_COLS[] = {
    {"list_id", FERRY_TEXT},      {"org_id", FERRY_TEXT},     {"description", FERRY_TEXT},
    {"completed", FERRY_INTEGER}, {"created_by", FERRY_TEXT}, {NULL, 0}};
static const ferry_index_t TODO_IDX[] = {{"list", {"list_id", NULL}}, {NULL, {NULL}}};
static const ferry_table_t TABLES[] = {{"lists", LIST_COLS, NULL, 0, 0, 0},
                                       {"todos", TODO_COLS, TODO_IDX, 0, 1, 0},
                                       {NULL, NULL, NULL, 0, 0, 0}};
static const ferry_schema_t SCHEMA = {TABLES};

static const char *g_token;

static char *token_cb(void *ud, int expired)
{
    (void)ud;
    (void)expired;
    return g_token ? strdup(g_token) : NULL;
}

static void on_rejected(void *ud, const ferry_crud_t *e, const char *code, const char *message)
{
    (void)ud;
    fprintf(stderr, "rejected: %s %s %s: %s (%s)\n", e->op, e->type, e->id, message, code);
}

/* The "sub" claim of a JWT (no verification: the server checks the token). */
static char *token_sub(const char *tok)
{
    const char *p = tok ? strchr(tok, '.') : NULL;
    const char *q = p ? strchr(p + 1, '.') : NULL;
    if (!q) return NULL;
    size_t n = (size_t)(q - p - 1), o = 0;
    unsigned char *out = malloc(n + 4);
    if (!out) return NULL;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[1 + i];
        int v = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '-' || c == '+' ? 62
                : c == '_' || c == '/' ? 63
                                       : -1;
        if (v < 0) continue;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    json_t *j = json_loadb((const char *)out, o, 0, NULL);
    free(out);
    const char *sub = json_string_value(json_object_get(j, "sub"));
    char *r = sub ? strdup(sub) : NULL;
    json_decref(j);
    return r;
}

static int usage(void)
{
    fprintf(
        stderr,
        "usage: ferry-todo --db FILE [--endpoint URL] [--token TOKEN] "
        "(add TEXT [--list ID] | list | lists | done ID | rm ID | edit ID TEXT | sync [--wait] | "
        "status | conflicts | open LIST | close LIST | subscribe STREAM [JSON] | unsubscribe "
        "STREAM [JSON] | "
        "subscriptions)\n");
    return 2;
}

static int print_rows(ferry_db_t *db, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(ferry_sqlite(db), sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "ferry-todo: %s\n", sqlite3_errmsg(ferry_sqlite(db)));
        return 1;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        int n = sqlite3_column_count(st);
        for (int i = 0; i < n; i++) {
            const unsigned char *v = sqlite3_column_text(st, i);
            printf("%s%s", i ? "\t" : "", v ? (const char *)v : "");
        }
        printf("\n");
    }
    sqlite3_finalize(st);
    return 0;
}

/* Runs one write statement with up to three text parameters; returns rows changed or -1. */
static int write1(ferry_db_t *db, const char *sql, const char *a, const char *b, const char *c,
                  const char *d, const char *e)
{
    sqlite3 *s = ferry_sqlite(db);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    const char *v[] = {a, b, c, d, e};
    for (int i = 0; i < 5 && i < sqlite3_bind_parameter_count(st); i++)
        sqlite3_bind_text(st, i + 1, v[i], -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "ferry-todo: %s\n", sqlite3_errmsg(s));
        return -1;
    }
    return sqlite3_changes(s);
}

static int timeout_secs(void)
{
    const char *t = getenv("FERRY_TODO_TIMEOUT");
    return t && atoi(t) > 0 ? atoi(t) : 30;
}

static int cmd_sync(ferry_db_t *db, const char *endpoint, int wait)
{
    if (!endpoint || !g_token) {
        fprintf(stderr, "ferry-todo: sync needs --endpoint and --token\n");
        return 2;
    }
    ferry_options_t opt = {.on_rejected = on_rejected, .retry_delay_ms = 300};
    int rc = ferry_connect(db, endpoint, token_cb, NULL, &opt);
    if (rc) {
        fprintf(stderr, "ferry-todo: could not connect: %s\n", ferry_strerror(rc));
        return 1;
    }
    int secs = wait ? timeout_secs() : 5;
    rc = ferry_wait_synced(db, secs * 1000);
    ferry_status_t st;
    ferry_get_status(db, &st);
    ferry_disconnect(db);
    printf("%s: received %lld ops, queue %lld, checksum failures %lld, checkpoint %lld%s%s\n",
           rc == 0 ? "synced" : "not synced", (long long)st.ops_received_total,
           (long long)st.upload_queue_length, (long long)st.checksum_failures,
           (long long)st.applied_checkpoint, st.last_error[0] ? ", last error: " : "",
           st.last_error);
    return rc == 0 || !wait ? 0 : 1;
}

/* open LIST: connect, then subscribe while connected (the stream reopens with it, as an app's
 * would), wait until the subscription's data is applied and the replica caught up, print the
 * list's todos. */
static int cmd_open(ferry_db_t *db, const char *endpoint, const char *list)
{
    if (!endpoint || !g_token) {
        fprintf(stderr, "ferry-todo: open needs --endpoint and --token\n");
        return 2;
    }
    json_t *p = json_pack("{s:s}", "list_id", list);
    char *params = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    if (!params) return 1;
    ferry_options_t opt = {.on_rejected = on_rejected, .retry_delay_ms = 300};
    ferry_error_t err;
    int rc = ferry_connect(db, endpoint, token_cb, NULL, &opt);
    if (rc == 0) rc = ferry_wait_for_first_sync(db, timeout_secs() * 1000);
    if (rc == 0 && (rc = ferry_subscribe(db, "list_todos", params, -1, &err)) != 0)
        fprintf(stderr, "ferry-todo: %s\n", err.message);
    if (rc == 0) rc = ferry_wait_for_subscriptions(db, timeout_secs() * 1000);
    if (rc == 0) rc = ferry_wait_synced(db, timeout_secs() * 1000);
    ferry_status_t st;
    ferry_get_status(db, &st);
    ferry_disconnect(db);
    free(params);
    if (rc != 0) {
        fprintf(stderr, "ferry-todo: could not open list \"%s\": %s%s%s\n", list,
                ferry_strerror(rc), st.last_error[0] ? ": " : "", st.last_error);
        return 1;
    }
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(ferry_sqlite(db),
                           "SELECT id, CASE WHEN completed THEN '[x]' ELSE '[ ]' END, description "
                           "FROM todos WHERE list_id = ?1 ORDER BY id",
                           -1, &q, NULL) != SQLITE_OK)
        return 1;
    sqlite3_bind_text(q, 1, list, -1, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW)
        printf("%s\t%s\t%s\n", sqlite3_column_text(q, 0), sqlite3_column_text(q, 1),
               sqlite3_column_text(q, 2));
    sqlite3_finalize(q);
    return 0;
}

static int cmd_subscriptions(ferry_db_t *db)
{
    ferry_subscription_t *v;
    size_t n;
    if (ferry_subscriptions(db, &v, &n) != 0) return 1;
    for (size_t i = 0; i < n; i++)
        printf("%s\t%s\t%s\t%s\n", v[i].stream, v[i].params_json,
               v[i].synced ? "synced" : "not synced", v[i].error ? v[i].error : "");
    ferry_subscriptions_free(v, n);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *endpoint = NULL, *list = NULL;
    int wait = 0, i = 1;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    int nargs = 0;
    if (!args) return 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--endpoint") == 0 && i + 1 < argc)
            endpoint = argv[++i];
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            g_token = argv[++i];
        else if (strcmp(argv[i], "--list") == 0 && i + 1 < argc)
            list = argv[++i];
        else if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else
            args[nargs++] = argv[i];
    }
    if (!path || nargs == 0) {
        free(args);
        return usage();
    }
    ferry_db_t *db;
    ferry_error_t err;
    if (ferry_open(path, &SCHEMA, &db, &err) != 0) {
        fprintf(stderr, "ferry-todo: %s\n", err.message);
        free(args);
        return 1;
    }
    const char *cmd = args[0];
    int rc = 0;
    char *user = token_sub(g_token);
    if (strcmp(cmd, "add") == 0 && nargs == 2) {
        char id[37];
        ferry_uuid(id);
        char chosen[256] = "";
        if (list) {
            snprintf(chosen, sizeof chosen, "%s", list);
        } else {
            sqlite3_stmt *st;
            if (sqlite3_prepare_v2(ferry_sqlite(db),
                                   "SELECT id FROM lists ORDER BY owner_id IS NOT ?1, "
                                   "org_id IS NOT NULL, id LIMIT 1",
                                   -1, &st, NULL) == SQLITE_OK) {
                sqlite3_bind_text(st, 1, user ? user : "", -1, SQLITE_STATIC);
                if (sqlite3_step(st) == SQLITE_ROW)
                    snprintf(chosen, sizeof chosen, "%s", sqlite3_column_text(st, 0));
                sqlite3_finalize(st);
            }
        }
        if (!chosen[0]) {
            fprintf(stderr, "ferry-todo: no list to add to; run \"sync\" first or pass --list\n");
            rc = 1;
        } else if (write1(
                       db,
                       "INSERT INTO todos(id, list_id, org_id, description, completed, created_by) "
                       "SELECT ?1, ?2, (SELECT org_id FROM lists WHERE id = ?2), ?3, 0, ?4",
                       id, chosen, args[1], user ? user : "", NULL) != 1) {
            rc = 1;
        } else {
            printf("%s\n", id);
        }
    } else if (strcmp(cmd, "list") == 0 && nargs == 1) {
        rc = print_rows(db, "SELECT id, CASE WHEN completed THEN '[x]' ELSE '[ ]' END, "
                            "description FROM todos ORDER BY id");
    } else if (strcmp(cmd, "lists") == 0 && nargs == 1) {
        rc = print_rows(db, "SELECT id, name FROM lists ORDER BY id");
    } else if ((strcmp(cmd, "done") == 0 || strcmp(cmd, "rm") == 0) && nargs == 2) {
        int n = write1(db,
                       cmd[0] == 'd' ? "UPDATE todos SET completed = 1 WHERE id = ?1"
                                     : "DELETE FROM todos WHERE id = ?1",
                       args[1], NULL, NULL, NULL, NULL);
        if (n == 0) fprintf(stderr, "ferry-todo: no todo \"%s\"\n", args[1]);
        rc = n == 1 ? 0 : 1;
    } else if (strcmp(cmd, "edit") == 0 && nargs == 3) {
        int n = write1(db, "UPDATE todos SET description = ?2 WHERE id = ?1", args[1], args[2],
                       NULL, NULL, NULL);
        if (n == 0) fprintf(stderr, "ferry-todo: no todo \"%s\"\n", args[1]);
        rc = n == 1 ? 0 : 1;
    } else if (strcmp(cmd, "sync") == 0 && nargs == 1) {
        rc = cmd_sync(db, endpoint, wait);
    } else if (strcmp(cmd, "open") == 0 && nargs == 2) {
        rc = cmd_open(db, endpoint, args[1]);
    } else if ((strcmp(cmd, "close") == 0 && nargs == 2) ||
               ((strcmp(cmd, "subscribe") == 0 || strcmp(cmd, "unsubscribe") == 0) &&
                (nargs == 2 || nargs == 3))) {
        char params[512] = "null";
        const char *stream = args[1];
        if (cmd[0] == 'c') {
            json_t *p = json_pack("{s:s}", "list_id", args[1]);
            char *t = p ? json_dumps(p, JSON_COMPACT) : NULL;
            snprintf(params, sizeof params, "%s", t ? t : "null");
            free(t);
            json_decref(p);
            stream = "list_todos";
        } else if (nargs == 3) {
            snprintf(params, sizeof params, "%s", args[2]);
        }
        ferry_error_t err;
        rc = cmd[0] == 's' ? ferry_subscribe(db, stream, params, -1, &err)
                           : ferry_unsubscribe(db, stream, params, &err);
        if (rc != 0) fprintf(stderr, "ferry-todo: %s\n", err.message);
        rc = rc ? 1 : 0;
    } else if (strcmp(cmd, "subscriptions") == 0 && nargs == 1) {
        rc = cmd_subscriptions(db);
    } else if (strcmp(cmd, "conflicts") == 0 && nargs == 1) {
        char *json = NULL;
        rc = ferry_write_conflicts(db, &json) == 0 ? 0 : 1;
        if (json) printf("%s\n", json);
        free(json);
    } else if (strcmp(cmd, "status") == 0 && nargs == 1) {
        ferry_status_t st;
        ferry_get_status(db, &st);
        printf("queue %lld, last synced at %lld, checkpoint %lld\n",
               (long long)ferry_queue_length(db), (long long)st.last_synced_at,
               (long long)st.applied_checkpoint);
    } else {
        rc = usage();
    }
    free(user);
    free(args);
    ferry_close(db);
    return rc;
}
