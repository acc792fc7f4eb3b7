/* gw_pg.c -- Postgres connection helpers (see gw_pg.h) */
#include "pg/gw_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *gw_pg_error(PGconn *conn, char *buf, size_t len)
{
    const char *m = conn != NULL ? PQerrorMessage(conn) : "no connection";
    snprintf(buf, len, "%s", m != NULL && m[0] != '\0' ? m : "unknown error");
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *p = buf; *p != '\0'; p++)
        if (*p == '\n') *p = ' ';
    return buf;
}

PGconn *gw_pg_connect_timeout(const char *uri, int replication, const char *application_name,
                              int timeout_s, gw_err_t *err)
{
    const char *keys[12], *vals[12];
    char connect_timeout[16], idle[16], interval[16], user_timeout[24];
    int n = 0;
    keys[n] = "dbname";
    vals[n++] = uri;
    keys[n] = "options";
    vals[n++] = GW_PG_OPTIONS;
    keys[n] = "application_name";
    vals[n++] = application_name != NULL ? application_name : "ferry";
    /* libpq's connect_timeout: below 2 s it uses 2 */
    snprintf(connect_timeout, sizeof(connect_timeout), "%d", timeout_s > 0 ? timeout_s : 10);
    keys[n] = "connect_timeout";
    vals[n++] = connect_timeout;
    if (timeout_s > 0) {
        /* a peer that went silent is noticed within about two thirds of timeout_s on an idle
         * connection (keepalive probes) and within timeout_s when data waits unacknowledged
         * (TCP_USER_TIMEOUT), instead of the kernel's defaults of hours and minutes */
        snprintf(idle, sizeof(idle), "%d", timeout_s / 3 > 0 ? timeout_s / 3 : 1);
        snprintf(interval, sizeof(interval), "%d", timeout_s / 9 > 0 ? timeout_s / 9 : 1);
        snprintf(user_timeout, sizeof(user_timeout), "%d", timeout_s * 1000);
        keys[n] = "keepalives";
        vals[n++] = "1";
        keys[n] = "keepalives_idle";
        vals[n++] = idle;
        keys[n] = "keepalives_interval";
        vals[n++] = interval;
        keys[n] = "keepalives_count";
        vals[n++] = "3";
        keys[n] = "tcp_user_timeout";
        vals[n++] = user_timeout;
    }
    if (replication) {
        keys[n] = "replication";
        vals[n++] = "database";
    }
    keys[n] = NULL;
    vals[n] = NULL;
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (conn == NULL) {
        gw_err_set(err, GW_ENOMEM, "postgres", "could not allocate a connection");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char msg[512];
        gw_err_set(err, GW_EPG, "postgres", "could not connect to postgres: %s",
                   gw_pg_error(conn, msg, sizeof(msg)));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

PGconn *gw_pg_connect(const char *uri, int replication, const char *application_name, gw_err_t *err)
{
    return gw_pg_connect_timeout(uri, replication, application_name, 0, err);
}

static int result_err(PGconn *conn, PGresult *res, const char *sql, gw_err_t *err)
{
    char msg[512];
    const char *m = res != NULL ? PQresultErrorMessage(res) : NULL;
    if (m == NULL || m[0] == '\0')
        m = gw_pg_error(conn, msg, sizeof(msg));
    else {
        snprintf(msg, sizeof(msg), "%s", m);
        size_t n = strlen(msg);
        while (n > 0 && msg[n - 1] == '\n')
            msg[--n] = '\0';
        m = msg;
    }
    char what[64];
    snprintf(what, sizeof(what), "%.40s", sql);
    for (char *p = what; *p; p++)
        if (*p == '\n') *p = ' ';
    return gw_err_set(err, GW_EPG, "postgres", "%s (while running \"%s%s\")", m, what,
                      strlen(sql) > 40 ? "…" : "");
}

int gw_pg_exec(PGconn *conn, const char *sql, gw_err_t *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = result_err(conn, res, sql, err);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    return 0;
}

PGresult *gw_pg_query(PGconn *conn, const char *sql, gw_err_t *err)
{
    PGresult *res = PQexec(conn, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        result_err(conn, res, sql, err);
        PQclear(res);
        return NULL;
    }
    return res;
}

PGresult *gw_pg_query_params(PGconn *conn, const char *sql, int n, const char *const *values,
                             gw_err_t *err)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, values, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        result_err(conn, res, sql, err);
        PQclear(res);
        return NULL;
    }
    return res;
}

int gw_pg_send_params(PGconn *conn, const char *sql, int n, const char *const *values,
                      gw_err_t *err)
{
    if (PQsendQueryParams(conn, sql, n, NULL, values, NULL, NULL, 0) != 1) {
        result_err(conn, NULL, sql, err);
        return GW_EPG;
    }
    return 0;
}

PGresult *gw_pg_wait_result(PGconn *conn, const char *sql, gw_err_t *err)
{
    PGresult *res = PQgetResult(conn);
    for (PGresult *more; (more = PQgetResult(conn)) != NULL;)
        PQclear(more);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        result_err(conn, res, sql, err);
        PQclear(res);
        return NULL;
    }
    return res;
}

char *gw_pg_literal(PGconn *conn, const char *s)
{
    char *q = PQescapeLiteral(conn, s, strlen(s));
    if (q == NULL) return NULL;
    char *out = gw_xstrdup(q);
    PQfreemem(q);
    return out;
}

char *gw_pg_ident(PGconn *conn, const char *s)
{
    char *q = PQescapeIdentifier(conn, s, strlen(s));
    if (q == NULL) return NULL;
    char *out = gw_xstrdup(q);
    PQfreemem(q);
    return out;
}
