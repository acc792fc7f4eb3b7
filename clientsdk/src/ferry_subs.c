/* ferry_subs.c -- Sync Streams subscriptions: kept in the replica, sent in every request
 *
 * An app subscribes to a stream with parameters (ferry_subscribe); the subscription is a row of
 * ferry_subscriptions (stream, canonical parameters JSON, override priority), so it survives
 * restarts of the app and of the server. Every request of the sync thread carries
 *
 *     "streams": {"include_defaults": true, "subscriptions": [{"stream", "parameters",
 *                 "override_priority"}, ...]}
 *
 * in row order; the sync state remembers which row each index of that request was (sub_ids),
 * because the server answers by index: the first checkpoint's "streams" entries carry errors
 * {"subscription": index, "message"} (stored in the row's error column), and a row is marked
 * synced when a full checkpoint of a request that carried it is applied (in that checkpoint's
 * transaction). A change of the subscriptions while a stream is open ends that stream and opens a
 * new one at once, as the official clients do (the server computes buckets per request): the
 * curl progress callback sees db->subs_changed (ferry_sync.c).
 *
 * Threads: ferry_subscribe / ferry_unsubscribe / ferry_subscriptions use the app connection
 * (app thread); the ferry__subs_* functions run on the sync connection (sync or apply thread).
 */
#include "ferry_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Canonical parameters: a JSON object with sorted keys, or "null". Returns a malloc'd string,
 * or NULL with err filled (not an object, not JSON, out of memory). */
static char *canonical_params(const char *params_json, ferry_error_t *err)
{
    if (!params_json || strcmp(params_json, "null") == 0) {
        char *s = strdup("null");
        if (!s) ferry__seterr(err, FERRY_ENOMEM, "out of memory");
        return s;
    }
    json_error_t je;
    json_t *j = json_loads(params_json, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(j)) {
        ferry__seterr(err, FERRY_EINVAL,
                      "subscription parameters must be a JSON object or null: %.150s",
                      j ? "not an object" : je.text);
        json_decref(j);
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    if (!s) ferry__seterr(err, FERRY_ENOMEM, "out of memory");
    return s;
}

static int sub_sqlerr(ferry_db_t *db, ferry_error_t *err, const char *what)
{
    ferry__seterr(err, FERRY_ESQLITE, "could not %s: %s", what, sqlite3_errmsg(db->app));
    return FERRY_ESQLITE;
}

/* Runs a write on the app connection; returns 0 and sets *changed to the rows changed. */
static int sub_write(ferry_db_t *db, const char *sql, const char *stream, const char *params,
                     int priority, int *changed, ferry_error_t *err, const char *what)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->app, sql, -1, &st, NULL) != SQLITE_OK)
        return sub_sqlerr(db, err, what);
    sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, params, -1, SQLITE_STATIC);
    if (sqlite3_bind_parameter_count(st) >= 3) {
        if (priority < 0)
            sqlite3_bind_null(st, 3);
        else
            sqlite3_bind_int(st, 3, priority);
    }
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return sub_sqlerr(db, err, what);
    *changed = sqlite3_changes(db->app);
    return 0;
}

int ferry_subscribe(ferry_db_t *db, const char *stream, const char *params_json, int priority,
                    ferry_error_t *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!db || !stream || !*stream || priority < -1 || priority > 3) {
        ferry__seterr(err, FERRY_EINVAL, "a stream name and a priority of -1 to 3 are required");
        return FERRY_EINVAL;
    }
    char *params = canonical_params(params_json, err);
    if (!params) return err && err->code ? err->code : FERRY_EINVAL;
    int changed = 0;
    /* a new row, or a changed priority (the same priority changes nothing) */
    int rc = sub_write(db,
                       "INSERT INTO ferry_subscriptions(stream, params, priority) VALUES (?1, ?2, "
                       "?3) ON CONFLICT(stream, params) DO UPDATE SET priority = excluded.priority "
                       "WHERE priority IS NOT excluded.priority",
                       stream, params, priority, &changed, err, "store a subscription");
    free(params);
    if (rc == 0 && changed) atomic_store(&db->subs_changed, 1);
    return rc;
}

int ferry_unsubscribe(ferry_db_t *db, const char *stream, const char *params_json,
                      ferry_error_t *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!db || !stream || !*stream) {
        ferry__seterr(err, FERRY_EINVAL, "a stream name is required");
        return FERRY_EINVAL;
    }
    char *params = canonical_params(params_json, err);
    if (!params) return err && err->code ? err->code : FERRY_EINVAL;
    int changed = 0;
    int rc = sub_write(db, "DELETE FROM ferry_subscriptions WHERE stream = ?1 AND params = ?2",
                       stream, params, -1, &changed, err, "remove a subscription");
    free(params);
    if (rc == 0 && changed) atomic_store(&db->subs_changed, 1);
    return rc;
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? strdup((const char *)s) : NULL;
}

void ferry_subscriptions_free(ferry_subscription_t *subs, size_t n)
{
    if (!subs) return;
    for (size_t i = 0; i < n; i++) {
        free(subs[i].stream);
        free(subs[i].params_json);
        free(subs[i].error);
    }
    free(subs);
}

int ferry_subscriptions(ferry_db_t *db, ferry_subscription_t **out, size_t *n)
{
    if (!db || !out || !n) return FERRY_EINVAL;
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->app,
                           "SELECT stream, params, ifnull(priority, -1), synced, error "
                           "FROM ferry_subscriptions ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    ferry_subscription_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0, step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? cap * 2 : 8;
            ferry_subscription_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = FERRY_ENOMEM;
                break;
            }
            v = nv;
        }
        ferry_subscription_t *s = &v[cnt++];
        s->stream = col_dup(st, 0);
        s->params_json = col_dup(st, 1);
        s->priority = sqlite3_column_int(st, 2);
        s->synced = sqlite3_column_int(st, 3);
        s->error = col_dup(st, 4);
        if (!s->stream || !s->params_json ||
            (sqlite3_column_type(st, 4) != SQLITE_NULL && !s->error)) {
            rc = FERRY_ENOMEM;
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE) rc = FERRY_ESQLITE;
    sqlite3_finalize(st);
    if (rc) {
        ferry_subscriptions_free(v, cnt);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* every subscription has synced or has an error (app connection, under db->mu) */
static int subs_done(ferry_db_t *db)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->app,
                           "SELECT count(*) FROM ferry_subscriptions WHERE NOT synced AND error IS "
                           "NULL",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    int done = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == 0;
    sqlite3_finalize(st);
    return done;
}

int ferry_wait_for_subscriptions(ferry_db_t *db, int timeout_ms)
{
    if (!db) return FERRY_EINVAL;
    if (!db->connected) return subs_done(db) ? 0 : FERRY_ESTATE;
    return ferry__sync_wait(db, timeout_ms, subs_done);
}

/* ---- the sync connection's side --------------------------------------------------------- */

int ferry__subs_request(ferry_db_t *db, ferry_sync_t *s, struct json_t *body)
{
    free(s->sub_ids);
    s->sub_ids = NULL;
    s->nsub_ids = 0;
    json_t *subs = json_array(), *streams = json_object();
    if (!subs || !streams) {
        json_decref(subs);
        json_decref(streams);
        return FERRY_ENOMEM;
    }
    sqlite3_stmt *st;
    int rc = 0;
    if (sqlite3_prepare_v2(s->conn,
                           "SELECT id, stream, params, priority FROM ferry_subscriptions ORDER BY "
                           "id",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = FERRY_ESQLITE;
    } else {
        size_t cap = 0;
        while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
            json_t *params =
                json_loads((const char *)sqlite3_column_text(st, 2), JSON_DECODE_ANY, NULL);
            json_t *e =
                json_pack("{s:s,s:o,s:o}", "stream", (const char *)sqlite3_column_text(st, 1),
                          "parameters", params ? params : json_null(), "override_priority",
                          sqlite3_column_type(st, 3) == SQLITE_NULL
                              ? json_null()
                              : json_integer(sqlite3_column_int(st, 3)));
            if (!e || json_array_append_new(subs, e) != 0) rc = FERRY_ENOMEM;
            if (rc == 0 && s->nsub_ids == cap) {
                cap = cap ? cap * 2 : 8;
                int64_t *ni = realloc(s->sub_ids, cap * sizeof *ni);
                if (!ni)
                    rc = FERRY_ENOMEM;
                else
                    s->sub_ids = ni;
            }
            if (rc == 0) s->sub_ids[s->nsub_ids++] = sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
    }
    if (rc == 0) { /* json_object_set_new takes the reference, also when it fails */
        if (json_object_set_new(streams, "include_defaults",
                                json_boolean(!db->opt.exclude_default_streams)) != 0 ||
            json_object_set_new(streams, "subscriptions", subs) != 0)
            rc = FERRY_ENOMEM;
        subs = NULL;
        if (rc == 0 && json_object_set_new(body, "streams", streams) != 0) rc = FERRY_ENOMEM;
        if (rc == 0) streams = NULL;
    }
    json_decref(subs);
    json_decref(streams);
    return rc;
}

int ferry__subs_checkpoint(ferry_sync_t *s, struct json_t *streams)
{
    if (!json_is_array(streams) || s->nsub_ids == 0) return 0;
    char **msg = calloc(s->nsub_ids, sizeof(char *));
    if (!msg) return FERRY_ENOMEM;
    size_t i, k;
    json_t *e, *er;
    json_array_foreach(streams, i, e)
    {
        json_array_foreach(json_object_get(e, "errors"), k, er)
        {
            json_t *sub = json_object_get(er, "subscription");
            const char *m = json_string_value(json_object_get(er, "message"));
            if (!json_is_integer(sub) || !m) continue; /* "default": not a subscription's */
            json_int_t j = json_integer_value(sub);
            if (j >= 0 && (size_t)j < s->nsub_ids && !msg[j]) msg[j] = (char *)m;
        }
    }
    sqlite3_stmt *st;
    int rc = 0;
    if (sqlite3_prepare_v2(s->conn, "UPDATE ferry_subscriptions SET error = ?1 WHERE id = ?2", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = FERRY_ESQLITE;
    } else {
        for (size_t j = 0; j < s->nsub_ids && rc == 0; j++) {
            if (msg[j])
                sqlite3_bind_text(st, 1, msg[j], -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 1);
            sqlite3_bind_int64(st, 2, s->sub_ids[j]);
            if (sqlite3_step(st) != SQLITE_DONE) rc = FERRY_ESQLITE;
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
    }
    free(msg);
    if (rc)
        snprintf(s->errmsg, sizeof s->errmsg, "could not store subscription errors: %s",
                 sqlite3_errmsg(s->conn));
    return rc;
}

int ferry__subs_synced(ferry_sync_t *s)
{
    if (s->nsub_ids == 0) return 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->conn,
                           "UPDATE ferry_subscriptions SET synced = 1 WHERE id = ?1 AND error IS "
                           "NULL AND NOT synced",
                           -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    int rc = 0;
    for (size_t j = 0; j < s->nsub_ids && rc == 0; j++) {
        sqlite3_bind_int64(st, 1, s->sub_ids[j]);
        if (sqlite3_step(st) != SQLITE_DONE) rc = FERRY_ESQLITE;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc;
}
