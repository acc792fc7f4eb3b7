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

PGconn *gw_pg_connect(const char *uri, int replication, const char *application_name, gw_err_t *err)
{
    const char *keys[6], *vals[6];
    int n = 0;
    keys[n] = "dbname";
    vals[n++] = uri;
    keys[n] = "options";
    vals[n++] = GW_PG_OPTIONS;
    keys[n] = "application_name";
    vals[n++] = application_name != NULL ? application_name : "ferry";
    keys[n] = "connect_timeout";
    vals[n++] = "10";
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
