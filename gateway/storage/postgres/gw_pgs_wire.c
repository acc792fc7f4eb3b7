/* gw_pgs_wire.c -- values of the Postgres wire format: binary arrays, int8s
 *
 * The writer sends a transaction's rows, lookups and chunks as a few statements whose parameters
 * are one-dimensional arrays in the binary format (no escaping, bytea as it is): a header of
 * five int4s (dimensions 1, has-nulls, element type, length, lower bound 1) and, per element, an
 * int4 length (-1 for NULL) and the bytes. Every multi-byte integer is big-endian.
 */
#include "storage/postgres/gw_pgs_int.h"

#include <arpa/inet.h>
#include <endian.h>
#include <stdlib.h>
#include <string.h>

static void put_i32(gw_buf_t *b, int32_t v)
{
    uint32_t be = htonl((uint32_t)v);
    gw_buf_append(b, &be, 4);
}

void gw__pgs_elem_i64(gw_buf_t *elems, int64_t v)
{
    put_i32(elems, 8);
    uint64_t be = htobe64((uint64_t)v);
    gw_buf_append(elems, &be, 8);
}

void gw__pgs_elem_bytes(gw_buf_t *elems, const void *p, size_t n)
{
    put_i32(elems, (int32_t)n);
    if (n > 0) gw_buf_append(elems, p, n);
}

void gw__pgs_elem_null(gw_buf_t *elems)
{
    put_i32(elems, -1);
}

void gw__pgs_array(gw_buf_t *out, uint32_t oid, size_t n, const gw_buf_t *elems)
{
    gw_buf_reset(out);
    if (n == 0) { /* an empty array has no dimensions */
        put_i32(out, 0);
        put_i32(out, 0);
        put_i32(out, (int32_t)oid);
        return;
    }
    put_i32(out, 1); /* dimensions */
    put_i32(out, 1); /* may hold NULLs (the server checks the elements) */
    put_i32(out, (int32_t)oid);
    put_i32(out, (int32_t)n);
    put_i32(out, 1); /* lower bound */
    if (elems->len > 0) gw_buf_append(out, elems->data, elems->len);
}

void gw__pgs_param_i64(char buf[8], int64_t v)
{
    uint64_t be = htobe64((uint64_t)v);
    memcpy(buf, &be, 8);
}

int64_t gw__pgs_get_i64(const PGresult *res, int row, int col)
{
    const char *v = PQgetvalue(res, row, col);
    if (PQfformat(res, col) == 1 && PQgetlength(res, row, col) == 8) {
        uint64_t be;
        memcpy(&be, v, 8);
        return (int64_t)be64toh(be);
    }
    return strtoll(v, NULL, 10);
}
