/* rules_func.c -- the sync-rules functions SQLite does not have built in
 *
 * Registered on every evaluation connection (rules_eval.c) and on the compiler's check
 * connection: base64(x), uuid_blob(text), json_keys(json), and the PostGIS helpers st_x, st_y,
 * st_astext and st_asgeojson over hex-encoded (E)WKB as Postgres prints geometry columns.
 * The geometry functions understand points only and return NULL for anything else.
 * All functions are deterministic and return NULL for a NULL argument. Sync Streams also use
 * ps_bool, ps_not, ps_json_contains, ps_json_each_arg and ps_jnum, which give expressions the
 * reference's JavaScript semantics where SQLite's differ (see rules_stream_compile.c).
 */
#include "rules_int.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void fn_base64(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return;
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = sqlite3_value_type(argv[0]) == SQLITE_BLOB
                                 ? sqlite3_value_blob(argv[0])
                                 : sqlite3_value_text(argv[0]);
    int n = sqlite3_value_bytes(argv[0]);
    rbuf_t b = {0};
    rb_reserve(&b, (size_t)(n / 3 + 1) * 4);
    for (int i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n) v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        rb_putc(&b, tab[v >> 18 & 63]);
        rb_putc(&b, tab[v >> 12 & 63]);
        rb_putc(&b, i + 1 < n ? tab[v >> 6 & 63] : '=');
        rb_putc(&b, i + 2 < n ? tab[v & 63] : '=');
    }
    sqlite3_result_text(ctx, b.p ? b.p : "", (int)b.n, SQLITE_TRANSIENT);
    rb_free(&b);
}

static int hexv(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void fn_uuid_blob(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return;
    const char *s = (const char *)sqlite3_value_text(argv[0]);
    unsigned char out[16];
    int n = 0;
    for (; s && *s && n < 32; s++) {
        if (*s == '-' || *s == '{' || *s == '}') continue;
        int h = hexv(*s);
        if (h < 0) break;
        if (n % 2 == 0)
            out[n / 2] = (unsigned char)(h << 4);
        else
            out[n / 2] |= (unsigned char)h;
        n++;
    }
    if (n != 32 || (s && *s && *s != '}')) {
        sqlite3_result_error(ctx, "uuid_blob(): not a valid UUID", -1);
        return;
    }
    sqlite3_result_blob(ctx, out, 16, SQLITE_TRANSIENT);
}

static void fn_json_keys(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return;
    const char *s = (const char *)sqlite3_value_text(argv[0]);
    json_t *j = json_loads(s ? s : "", JSON_DECODE_ANY, NULL);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        sqlite3_result_error(ctx, "json_keys(): argument is not a JSON object", -1);
        return;
    }
    rbuf_t b = {0};
    rb_putc(&b, '[');
    const char *k;
    json_t *v;
    int first = 1;
    json_object_foreach(j, k, v)
    {
        (void)v;
        if (!first) rb_putc(&b, ',');
        first = 0;
        rj_string(&b, k, strlen(k));
    }
    rb_putc(&b, ']');
    json_decref(j);
    sqlite3_result_text(ctx, b.p, (int)b.n, SQLITE_TRANSIENT);
    rb_free(&b);
}

/* Decode a hex (E)WKB point; returns 0 and x/y, -1 when not a 2D/3D point. */
static int wkb_point(sqlite3_value *v, double *x, double *y)
{
    unsigned char buf[64];
    int n = 0;
    if (sqlite3_value_type(v) == SQLITE_BLOB) {
        n = sqlite3_value_bytes(v);
        if (n > (int)sizeof buf) return -1;
        memcpy(buf, sqlite3_value_blob(v), (size_t)n);
    } else {
        const char *s = (const char *)sqlite3_value_text(v);
        if (!s) return -1;
        size_t len = strlen(s);
        if (len % 2 || len / 2 > sizeof buf) return -1;
        for (size_t i = 0; i < len; i += 2) {
            int h = hexv(s[i]), l = hexv(s[i + 1]);
            if (h < 0 || l < 0) return -1;
            buf[n++] = (unsigned char)(h << 4 | l);
        }
    }
    if (n < 21) return -1;
    int le = buf[0] == 1;
    uint32_t type = le ? (uint32_t)buf[1] | (uint32_t)buf[2] << 8 | (uint32_t)buf[3] << 16 |
                             (uint32_t)buf[4] << 24
                       : (uint32_t)buf[4] | (uint32_t)buf[3] << 8 | (uint32_t)buf[2] << 16 |
                             (uint32_t)buf[1] << 24;
    int off = 5;
    if (type & 0x20000000u) off += 4; /* SRID */
    if ((type & 0xffff) != 1 || off + 16 > n) return -1;
    double d[2];
    for (int k = 0; k < 2; k++) {
        unsigned char t[8];
        for (int i = 0; i < 8; i++)
            t[i] = le ? buf[off + k * 8 + i] : buf[off + k * 8 + 7 - i];
        memcpy(&d[k], t, 8);
    }
    *x = d[0];
    *y = d[1];
    return 0;
}

static void fn_st(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) return;
    double x, y;
    if (wkb_point(argv[0], &x, &y) != 0) return;
    int which = (int)(intptr_t)sqlite3_user_data(ctx);
    if (which == 0)
        sqlite3_result_double(ctx, x);
    else if (which == 1)
        sqlite3_result_double(ctx, y);
    else {
        rbuf_t b = {0};
        if (which == 2) {
            rb_puts(&b, "POINT(");
            rj_double(&b, x, 0);
            rb_putc(&b, ' ');
            rj_double(&b, y, 0);
            rb_putc(&b, ')');
        } else {
            rb_puts(&b, "{\"type\":\"Point\",\"coordinates\":[");
            rj_double(&b, x, 0);
            rb_putc(&b, ',');
            rj_double(&b, y, 0);
            rb_puts(&b, "]}");
        }
        sqlite3_result_text(ctx, b.p, (int)b.n, SQLITE_TRANSIENT);
        rb_free(&b);
    }
}

/* ---- JavaScript semantics for Sync Streams (rules_stream_compile.c) ------------------- */

/* sqliteBool of the reference: NULL and blobs are false, numbers are true when not zero, text
 * is true when JavaScript's parseInt() reads a non-zero number from it */
static int js_truthy(sqlite3_value *v)
{
    switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER:
        return sqlite3_value_int64(v) != 0;
    case SQLITE_FLOAT: {
        double d = sqlite3_value_double(v);
        return d != 0 && d == d;
    }
    case SQLITE_TEXT: {
        const unsigned char *s = sqlite3_value_text(v);
        while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
            s++;
        if (*s == '+' || *s == '-') s++;
        int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
        if (hex) s += 2;
        int digits = 0, nonzero = 0;
        for (; *s; s++) {
            int d = hex ? (isxdigit(*s) ? 1 : -1) : (*s >= '0' && *s <= '9' ? 1 : -1);
            if (d < 0) break;
            digits++;
            if (*s != '0') nonzero = 1;
        }
        return digits > 0 && nonzero;
    }
    default:
        return 0;
    }
}

static void fn_ps_bool(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    sqlite3_result_int(ctx, js_truthy(argv[0]));
}

static void fn_ps_not(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    sqlite3_result_int(ctx, !js_truthy(argv[0]));
}

/* the reference's compare() == 0 between a JSON array element and a SQLite value */
static int json_equals_value(json_t *e, sqlite3_value *v)
{
    int t = sqlite3_value_type(v);
    switch (json_typeof(e)) {
    case JSON_INTEGER:
        if (t == SQLITE_INTEGER) return json_integer_value(e) == sqlite3_value_int64(v);
        if (t == SQLITE_FLOAT) return (double)json_integer_value(e) == sqlite3_value_double(v);
        return 0;
    case JSON_REAL:
        if (t == SQLITE_INTEGER) return json_real_value(e) == (double)sqlite3_value_int64(v);
        if (t == SQLITE_FLOAT) return json_real_value(e) == sqlite3_value_double(v);
        return 0;
    case JSON_TRUE:
    case JSON_FALSE: {
        int b = json_is_true(e);
        if (t == SQLITE_INTEGER) return sqlite3_value_int64(v) == b;
        if (t == SQLITE_FLOAT) return sqlite3_value_double(v) == b;
        return 0;
    }
    case JSON_STRING:
        return t == SQLITE_TEXT && (size_t)sqlite3_value_bytes(v) == json_string_length(e) &&
               memcmp(sqlite3_value_text(v), json_string_value(e), json_string_length(e)) == 0;
    case JSON_OBJECT:
    case JSON_ARRAY: {
        if (t != SQLITE_TEXT) return 0;
        char *s = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
        int eq = s && strcmp(s, (const char *)sqlite3_value_text(v)) == 0;
        free(s);
        return eq;
    }
    default:
        return 0;
    }
}

/* ps_json_contains(a, b): `a IN b` for a JSON array text b, as the reference evaluates it */
static void fn_ps_json_contains(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL)
        return;
    if (sqlite3_value_type(argv[1]) != SQLITE_TEXT) {
        sqlite3_result_error(ctx, "IN is only supported on JSON arrays", -1);
        return;
    }
    const char *text = (const char *)sqlite3_value_text(argv[1]);
    json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
    if (!j) j = json_loads(text, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    if (!j || !json_is_array(j)) {
        json_decref(j);
        sqlite3_result_error(ctx, "IN is only supported on JSON arrays", -1);
        return;
    }
    int found = 0;
    size_t i;
    json_t *e;
    json_array_foreach(j, i, e)
    {
        if (json_equals_value(e, argv[0])) {
            found = 1;
            break;
        }
    }
    json_decref(j);
    sqlite3_result_int(ctx, found);
}

/* json_each() input: NULL stays NULL (no rows), text passes, anything else is an error */
static void fn_ps_json_each_arg(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int t = sqlite3_value_type(argv[0]);
    if (t == SQLITE_NULL) return;
    if (t != SQLITE_TEXT) {
        sqlite3_result_error(ctx, "json_each() needs JSON text", -1);
        return;
    }
    sqlite3_result_value(ctx, argv[0]);
}

/* json_each().value as JavaScript's JSON.parse gives it: every number is a double */
static void fn_ps_jnum(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const unsigned char *type = sqlite3_value_text(argv[1]);
    if (type && strcmp((const char *)type, "integer") == 0 &&
        sqlite3_value_type(argv[0]) == SQLITE_INTEGER)
        sqlite3_result_double(ctx, (double)sqlite3_value_int64(argv[0]));
    else
        sqlite3_result_value(ctx, argv[0]);
}

int rfunc_register(sqlite3 *db)
{
    int f = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    int rc = 0;
    rc |= sqlite3_create_function(db, "base64", 1, f, NULL, fn_base64, NULL, NULL);
    rc |= sqlite3_create_function(db, "uuid_blob", 1, f, NULL, fn_uuid_blob, NULL, NULL);
    rc |= sqlite3_create_function(db, "json_keys", 1, f, NULL, fn_json_keys, NULL, NULL);
    rc |= sqlite3_create_function(db, "st_x", 1, f, (void *)0, fn_st, NULL, NULL);
    rc |= sqlite3_create_function(db, "st_y", 1, f, (void *)1, fn_st, NULL, NULL);
    rc |= sqlite3_create_function(db, "st_astext", 1, f, (void *)2, fn_st, NULL, NULL);
    rc |= sqlite3_create_function(db, "st_asgeojson", 1, f, (void *)3, fn_st, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_bool", 1, f, NULL, fn_ps_bool, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_not", 1, f, NULL, fn_ps_not, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_json_contains", 2, f, NULL, fn_ps_json_contains, NULL,
                                  NULL);
    rc |= sqlite3_create_function(db, "ps_json_each_arg", 1, f, NULL, fn_ps_json_each_arg, NULL,
                                  NULL);
    rc |= sqlite3_create_function(db, "ps_jnum", 2, f, NULL, fn_ps_jnum, NULL, NULL);
    return rc ? -1 : 0;
}
