/* gw_pg.h -- Postgres connections with the session settings the rules library relies on
 *
 * Every connection Ferry opens (snapshot, replication, queries, write-back) goes through
 * gw_pg_connect(), which pins TimeZone=UTC, DateStyle=ISO, IntervalStyle=postgres,
 * extra_float_digits=3 and bytea_output=hex, so row text always has the form rules.h expects.
 * Helpers here turn libpq failures into gw_err_t with the server's message; they never log.
 */
#ifndef GW_PG_H
#define GW_PG_H

#include "base/gw_err.h"

#include <libpq-fe.h>

/** The options string pinned on every connection. */
#define GW_PG_OPTIONS                                                                              \
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 "          \
    "-c bytea_output=hex"

/**
 * Connect to uri (a URI or key=value string); replication != 0 opens a logical replication
 * connection (replication=database). Returns a connection the caller closes with PQfinish(),
 * or NULL with err set (GW_EPG) and nothing to free.
 */
PGconn *gw_pg_connect(const char *uri, int replication, const char *application_name,
                      gw_err_t *err);

/**
 * gw_pg_connect() for a long-lived connection of the server: timeout_s (> 0) bounds connecting
 * (connect_timeout) and sets TCP keepalives (idle timeout_s/3, 3 probes timeout_s/9 apart) and
 * TCP_USER_TIMEOUT (timeout_s), so a peer that goes silent breaks the connection within about
 * timeout_s instead of hanging on it. 0 is gw_pg_connect() (connect_timeout 10 s, kernel TCP
 * defaults). Ownership as gw_pg_connect().
 */
PGconn *gw_pg_connect_timeout(const char *uri, int replication, const char *application_name,
                              int timeout_s, gw_err_t *err);

/** Run sql (no result rows expected); 0 or GW_EPG with the server's message in err. */
int gw_pg_exec(PGconn *conn, const char *sql, gw_err_t *err);

/**
 * Run sql expecting rows (PGRES_TUPLES_OK). Returns the result (the caller PQclear()s it) or
 * NULL with err set. Simple protocol only, so it works on replication connections too.
 */
PGresult *gw_pg_query(PGconn *conn, const char *sql, gw_err_t *err);

/** Like gw_pg_query() with text parameters ($1..$n) — not for replication connections. */
PGresult *gw_pg_query_params(PGconn *conn, const char *sql, int n, const char *const *values,
                             gw_err_t *err);

/**
 * Send sql with n text parameters without waiting for its result (one query in flight on conn;
 * fetch it with gw_pg_wait_result). 0, or GW_EPG with err set.
 */
int gw_pg_send_params(PGconn *conn, const char *sql, int n, const char *const *values,
                      gw_err_t *err);

/**
 * The result of the query sent with gw_pg_send_params: rows (caller PQclears), or NULL with err
 * set. Consumes every result of that query.
 */
PGresult *gw_pg_wait_result(PGconn *conn, const char *sql, gw_err_t *err);

/** The connection's last error as one line (trailing newline removed) into buf; returns buf. */
const char *gw_pg_error(PGconn *conn, char *buf, size_t len);

/** Quote s as an SQL literal (E'…' where needed) into a malloc'd string the caller frees. */
char *gw_pg_literal(PGconn *conn, const char *s);

/** Quote s as an identifier into a malloc'd string the caller frees. */
char *gw_pg_ident(PGconn *conn, const char *s);

#endif
