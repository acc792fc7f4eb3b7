/* rules_func.c -- the sync-rules functions SQLite does not have built in
 *
 * Registered on every evaluation connection (rules_eval.c) and on the compiler's check
 * connection: base64(x), uuid_blob(text), json_keys(json), and the PostGIS helpers st_x, st_y,
 * st_astext and st_asgeojson over hex-encoded (E)WKB as Postgres prints geometry columns.
 * The geometry functions understand points only and return NULL for anything else.
 * All functions are deterministic and return NULL for a NULL argument. Sync Streams also use
 * ps_bool, ps_not, ps_json_contains, ps_json_each_arg and ps_jnum, which give expressions the
 * reference's JavaScript semantics where SQLite's differ (see rules_stream_compile.c); both
 * compilers use ps_jvalue/ps_jnum and ps_jnull_text for what a JSON null becomes per the
 * fixed_json_extract switch.
 */
#include "rules_int.h"

#include <ctype.h>
#include <errno.h>
#include <locale.h>
#include <jansson.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <wctype.h>

static void fn_base64(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        sqlite3_result_text(ctx, "", 0, SQLITE_STATIC); /* the reference's castAsBlob(null) */
        return;
    }
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

/* ---- JSON null and json_each() values: the fixed_json_extract switch ------------------- */

/*
 * The reference reads JSON with JavaScript, and what a JSON null becomes depends on the
 * compatibility switch fixed_json_extract (on from edition 2): with it, `->>`, json_extract()
 * and json_each().value give SQL NULL for a JSON null and `->` gives the text 'null', as SQLite
 * does; without it (edition 1), `->>`, json_extract() and json_each().value give the text
 * 'null' and `->` gives NULL. The reference walks a path one key at a time and stops at the
 * first JSON null, so '{"a":null}' -> 'a.b' ends at a JSON null too, where SQLite finds
 * nothing. ps_jnull_text() says where the walk ends at a JSON null; the compilers wrap SQLite's
 * operators in it (rules_compile.c, rules_stream_compile.c).
 */

/* Splits key into the reference's path components (jsonExtractFromRecord); returns the count. */
static int js_path(char *key, int fixed, char **comps, int max)
{
    int proper = key[0] == '$';
    if (fixed && !proper) {
        comps[0] = key;
        return 1;
    }
    int n = 0;
    for (char *s = key;;) {
        char *dot = strchr(s, '.');
        if (dot) *dot = 0;
        if (n < max) comps[n++] = s;
        if (!dot) break;
        s = dot + 1;
    }
    if (proper) { /* the "$" before the first dot */
        memmove(comps, comps + 1, sizeof(char *) * (size_t)(n - 1));
        n--;
    }
    return n;
}

/* "0", "1", ... below 2^32 - 1: an array index, and a key JavaScript orders first */
static int js_index(const char *s, unsigned long *out)
{
    if (!isdigit((unsigned char)s[0]) || (s[0] == '0' && s[1])) return 0;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || errno || v >= 4294967295UL) return 0;
    *out = v;
    return 1;
}

/* Whether the reference's walk of key over the JSON text src stops at a JSON null. */
static int js_walk_null(const char *src, size_t n, const char *key, int fixed)
{
    json_t *root = json_loadb(src, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!root)
        root = json_loadb(src, n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
    if (!root) return 0;
    char *k = rx_strdup(key);
    char *comps[64];
    int nc = k ? js_path(k, fixed, comps, 64) : 0;
    json_t *v = json_is_null(root) ? NULL : root; /* a null document gives NULL, not 'null' */
    for (int i = 0; v && i < nc && !json_is_null(v); i++) {
        unsigned long ix;
        if (json_is_object(v))
            v = json_object_get(v, comps[i]);
        else if (json_is_array(v) && js_index(comps[i], &ix))
            v = json_array_get(v, ix);
        else
            v = NULL; /* undefined: the walk ends, not at a null */
    }
    int r = v && json_is_null(v);
    free(k);
    json_decref(root);
    return r;
}

/*
 * ps_jnull_text(src, key, fixed, value): 'null' when the reference's walk of key (as written
 * after `->`/`->>` or as json_extract()'s path) over src ends at a JSON null, else value (what
 * SQLite's operator gave). Only a NULL value can be such a null (SQLite found no value, or a
 * JSON null for `->>`), so the JSON is parsed again only then.
 */
static void fn_ps_jnull_text(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[3]) == SQLITE_NULL && sqlite3_value_type(argv[0]) == SQLITE_TEXT &&
        sqlite3_value_type(argv[1]) != SQLITE_NULL) {
        const char *src = (const char *)sqlite3_value_text(argv[0]);
        int n = sqlite3_value_bytes(argv[0]);
        const char *key = (const char *)sqlite3_value_text(argv[1]);
        if (key && js_walk_null(src, (size_t)n, key, sqlite3_value_int(argv[2]))) {
            sqlite3_result_text(ctx, "null", 4, SQLITE_STATIC);
            return;
        }
    }
    sqlite3_result_value(ctx, argv[3]);
}

/* JSON.stringify's escaping of a string */
static void js_json_str(rbuf_t *b, const char *s, size_t n)
{
    rb_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            rb_puts(b, "\\\"");
            break;
        case '\\':
            rb_puts(b, "\\\\");
            break;
        case '\b':
            rb_puts(b, "\\b");
            break;
        case '\f':
            rb_puts(b, "\\f");
            break;
        case '\n':
            rb_puts(b, "\\n");
            break;
        case '\r':
            rb_puts(b, "\\r");
            break;
        case '\t':
            rb_puts(b, "\\t");
            break;
        default:
            if (c < 0x20)
                rb_printf(b, "\\u%04x", c);
            else
                rb_putc(b, (char)c);
        }
    }
    rb_putc(b, '"');
}

static int js_key_cmp(const void *pa, const void *pb)
{
    unsigned long a = 0, b = 0;
    js_index(*(const char *const *)pa, &a);
    js_index(*(const char *const *)pb, &b);
    return a < b ? -1 : a > b;
}

/*
 * A JSON value as the reference's JSONBig.stringify writes what JSON.parse read: every number a
 * double, integral ones with ".0"; object keys that are array indexes first, ascending, then the
 * others in the order written.
 */
static void js_json(rbuf_t *b, json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(j), ni = 0, k = 0;
        const char **keys = rx_calloc(n + 1, sizeof(char *));
        const char *key;
        json_t *v;
        unsigned long ix;
        json_object_foreach(j, key, v)
        {
            if (js_index(key, &ix)) keys[ni++] = key;
        }
        qsort(keys, ni, sizeof(char *), js_key_cmp);
        k = ni;
        json_object_foreach(j, key, v)
        {
            if (!js_index(key, &ix)) keys[k++] = key;
        }
        rb_putc(b, '{');
        for (size_t i = 0; i < k; i++) {
            if (i) rb_putc(b, ',');
            js_json_str(b, keys[i], strlen(keys[i]));
            rb_putc(b, ':');
            js_json(b, json_object_get(j, keys[i]));
        }
        rb_putc(b, '}');
        free(keys);
        break;
    }
    case JSON_ARRAY: {
        rb_putc(b, '[');
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (i) rb_putc(b, ',');
            js_json(b, json_array_get(j, i));
        }
        rb_putc(b, ']');
        break;
    }
    case JSON_STRING:
        js_json_str(b, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        rj_double(b, json_number_value(j), 1);
        break;
    case JSON_TRUE:
        rb_puts(b, "true");
        break;
    case JSON_FALSE:
        rb_puts(b, "false");
        break;
    case JSON_NULL:
        rb_puts(b, "null");
        break;
    }
}

/*
 * json_each().value as the reference's json_each gives it (JSON.parse, then jsonValueToSqlite):
 * ps_jnum(value, type, fixed) for streams, ps_jvalue(value, type, fixed) for bucket definitions
 * (whose integers stay integers, as SQLite reads them; the reference's doubles name the same
 * buckets). A JSON null is NULL with fixed_json_extract (fixed 1) and the text 'null' without
 * (fixed 0); an object or an array is JSON text with its numbers as doubles ('{"a":1.0}'). fixed 2
 * is the alpha form's `x IN <request array>`, which keeps only the values isJsonValue() accepts:
 * nulls stay NULL, and objects, arrays and booleans become an empty BLOB, which is no valid
 * parameter, so their rows are dropped (rules_stream_eval.c).
 */
static void fn_ps_jnum(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int doubles = sqlite3_user_data(ctx) != NULL;
    const char *type = (const char *)sqlite3_value_text(argv[1]);
    if (!type) type = "";
    if (sqlite3_value_int(argv[2]) == 2 &&
        (strcmp(type, "object") == 0 || strcmp(type, "array") == 0 || strcmp(type, "true") == 0 ||
         strcmp(type, "false") == 0)) {
        sqlite3_result_zeroblob(ctx, 0);
    } else if (doubles && strcmp(type, "integer") == 0 &&
               sqlite3_value_type(argv[0]) == SQLITE_INTEGER) {
        sqlite3_result_double(ctx, (double)sqlite3_value_int64(argv[0]));
    } else if (strcmp(type, "null") == 0) {
        if (!sqlite3_value_int(argv[2])) sqlite3_result_text(ctx, "null", 4, SQLITE_STATIC);
    } else if ((strcmp(type, "object") == 0 || strcmp(type, "array") == 0) &&
               sqlite3_value_type(argv[0]) == SQLITE_TEXT) {
        json_t *j = json_loadb((const char *)sqlite3_value_text(argv[0]),
                               (size_t)sqlite3_value_bytes(argv[0]),
                               JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, NULL);
        if (!j) {
            sqlite3_result_value(ctx, argv[0]);
            return;
        }
        rbuf_t b = {0};
        js_json(&b, j);
        json_decref(j);
        sqlite3_result_text(ctx, b.p ? b.p : "", (int)b.n, SQLITE_TRANSIENT);
        rb_free(&b);
    } else {
        sqlite3_result_value(ctx, argv[0]);
    }
}

/* ---- the reference's JavaScript functions ---------------------------------------------- */

/*
 * PowerSync evaluates sync rules in JavaScript, so its text functions count UTF-16 code units,
 * its upper()/lower() know Unicode, and a REAL turns into text the JavaScript way ("3", not
 * "3.0"). These replace SQLite's functions of the same names on evaluation connections, so
 * bucket ids, row data and checksums equal the service's (tests/rules_ref). Unicode case
 * mapping is glibc's per code point (C.UTF-8); JavaScript's few special cases that change the
 * length (German sharp s to "SS") are not reproduced.
 */
static locale_t utf8_locale(void)
{
    static locale_t loc;
    static int tried;
    if (!tried) {
        loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
        tried = 1;
    }
    return loc;
}

/* castAsText: 0 for NULL, else the text in *b */
static int js_text(sqlite3_value *v, rbuf_t *b)
{
    switch (sqlite3_value_type(v)) {
    case SQLITE_NULL:
        return 0;
    case SQLITE_INTEGER:
        rb_int(b, sqlite3_value_int64(v));
        return 1;
    case SQLITE_FLOAT:
        rj_double(b, sqlite3_value_double(v), 0);
        return 1;
    case SQLITE_BLOB:
        rb_put(b, (const char *)sqlite3_value_blob(v), (size_t)sqlite3_value_bytes(v));
        return 1;
    default:
        rb_put(b, (const char *)sqlite3_value_text(v), (size_t)sqlite3_value_bytes(v));
        if (!b->p) rb_puts(b, "");
        return 1;
    }
}

/* decode one UTF-8 code point at p (n bytes left); *len set to the bytes used */
static uint32_t utf8_next(const unsigned char *p, size_t n, int *len)
{
    if (p[0] < 0x80 || n < 2) {
        *len = 1;
        return p[0];
    }
    if ((p[0] & 0xe0) == 0xc0) {
        *len = 2;
        return ((uint32_t)(p[0] & 0x1f) << 6) | (p[1] & 0x3f);
    }
    if ((p[0] & 0xf0) == 0xe0 && n >= 3) {
        *len = 3;
        return ((uint32_t)(p[0] & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
    }
    if ((p[0] & 0xf8) == 0xf0 && n >= 4) {
        *len = 4;
        return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3f) << 12) |
               ((uint32_t)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
    }
    *len = 1;
    return 0xfffd;
}

static void utf8_put(rbuf_t *b, uint32_t c)
{
    char t[4];
    if (c < 0x80) {
        rb_putc(b, (char)c);
    } else if (c < 0x800) {
        t[0] = (char)(0xc0 | (c >> 6));
        t[1] = (char)(0x80 | (c & 0x3f));
        rb_put(b, t, 2);
    } else if (c < 0x10000) {
        t[0] = (char)(0xe0 | (c >> 12));
        t[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        t[2] = (char)(0x80 | (c & 0x3f));
        rb_put(b, t, 3);
    } else {
        t[0] = (char)(0xf0 | (c >> 18));
        t[1] = (char)(0x80 | ((c >> 12) & 0x3f));
        t[2] = (char)(0x80 | ((c >> 6) & 0x3f));
        t[3] = (char)(0x80 | (c & 0x3f));
        rb_put(b, t, 4);
    }
}

/* UTF-16 code units of a UTF-8 text */
static int64_t utf16_len(const char *s, size_t n)
{
    int64_t units = 0;
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t c = utf8_next((const unsigned char *)s + i, n - i, &l);
        units += c >= 0x10000 ? 2 : 1;
        i += (size_t)l;
    }
    return units;
}

/* JavaScript's s.substring(a, b) in UTF-16 units (a lone surrogate stays, see rj_string) */
static void utf16_substring(rbuf_t *out, const char *s, size_t n, int64_t a, int64_t b)
{
    int64_t len = utf16_len(s, n);
    if (a < 0) a = 0;
    if (b < 0) b = 0;
    if (a > len) a = len;
    if (b > len) b = len;
    if (a > b) {
        int64_t t = a;
        a = b;
        b = t;
    }
    int64_t u = 0;
    rb_puts(out, "");
    for (size_t i = 0; i < n && u < b;) {
        int l;
        uint32_t c = utf8_next((const unsigned char *)s + i, n - i, &l);
        int w = c >= 0x10000 ? 2 : 1;
        if (u >= a && u + w <= b) {
            utf8_put(out, c);
        } else if (u + w > a && u < b) {
            /* half of a surrogate pair, as JavaScript keeps it (encoded like CESU-8) */
            uint32_t cp = c - 0x10000;
            utf8_put(out, u < a ? 0xdc00 + (cp & 0x3ff) : 0xd800 + (cp >> 10));
        }
        u += w;
        i += (size_t)l;
    }
}

static void fn_js_length(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int t = sqlite3_value_type(argv[0]);
    if (t == SQLITE_NULL) return;
    if (t == SQLITE_BLOB) {
        sqlite3_result_int64(ctx, sqlite3_value_bytes(argv[0]));
        return;
    }
    rbuf_t b = {0};
    js_text(argv[0], &b);
    sqlite3_result_int64(ctx, utf16_len(b.p ? b.p : "", b.n));
    rb_free(&b);
}

static void fn_js_case(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int upper = sqlite3_user_data(ctx) != NULL;
    rbuf_t b = {0};
    if (!js_text(argv[0], &b)) return;
    locale_t loc = utf8_locale();
    rbuf_t o = {0};
    rb_puts(&o, "");
    for (size_t i = 0; i < b.n;) {
        int l;
        uint32_t c = utf8_next((const unsigned char *)b.p + i, b.n - i, &l);
        if (loc)
            c = upper ? (uint32_t)towupper_l((wint_t)c, loc) : (uint32_t)towlower_l((wint_t)c, loc);
        else if (c < 0x80)
            c = upper ? (uint32_t)toupper((int)c) : (uint32_t)tolower((int)c);
        utf8_put(&o, c);
        i += (size_t)l;
    }
    sqlite3_result_text(ctx, o.p, (int)o.n, SQLITE_TRANSIENT);
    rb_free(&o);
    rb_free(&b);
}

/* cast(x, 'integer') of the reference, as int64 (values beyond it are clamped) */
static int js_to_int(sqlite3_value *v, int64_t *out)
{
    switch (sqlite3_value_type(v)) {
    case SQLITE_NULL:
        return 0;
    case SQLITE_INTEGER:
        *out = sqlite3_value_int64(v);
        return 1;
    case SQLITE_FLOAT: {
        double d = floor(sqlite3_value_double(v));
        *out = d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : (int64_t)d;
        return 1;
    }
    default: {
        const char *s = (const char *)sqlite3_value_text(v);
        while (s && (*s == ' ' || (*s >= '\t' && *s <= '\r')))
            s++;
        *out = s ? strtoll(s, NULL, 10) : 0;
        if (!s || !(isdigit((unsigned char)*s) ||
                    ((*s == '+' || *s == '-') && isdigit((unsigned char)s[1]))))
            *out = 0;
        return 1;
    }
    }
}

static void fn_js_substring(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    rbuf_t b = {0};
    if (!js_text(argv[0], &b)) return;
    int64_t start;
    if (!js_to_int(argv[1], &start)) {
        rb_free(&b);
        return;
    }
    if (argc > 2 && sqlite3_value_type(argv[2]) == SQLITE_NULL) {
        rb_free(&b);
        return;
    }
    int64_t len16 = utf16_len(b.p ? b.p : "", b.n);
    int64_t rlen;
    if (argc > 2)
        js_to_int(argv[2], &rlen);
    else
        rlen = len16 + 1;
    int64_t rstart;
    if (start < 0) {
        rstart = len16 + start < 0 ? 0 : len16 + start;
    } else if (start == 0) {
        rstart = 0;
        rlen -= 1;
    } else {
        rstart = start - 1;
    }
    rbuf_t o = {0};
    if (rlen < 0)
        utf16_substring(&o, b.p ? b.p : "", b.n, rstart + rlen, rstart);
    else
        utf16_substring(&o, b.p ? b.p : "", b.n, rstart, rstart + rlen);
    sqlite3_result_text(ctx, o.p ? o.p : "", (int)o.n, SQLITE_TRANSIENT);
    rb_free(&o);
    rb_free(&b);
}

/* castAsBlob: NULL gives '' for base64() and hex(), as in the reference */
static void fn_js_hex(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    rbuf_t b = {0};
    js_text(argv[0], &b);
    static const char hx[] = "0123456789ABCDEF";
    rbuf_t o = {0};
    rb_puts(&o, "");
    for (size_t i = 0; i < b.n; i++) {
        rb_putc(&o, hx[((unsigned char)b.p[i]) >> 4]);
        rb_putc(&o, hx[((unsigned char)b.p[i]) & 15]);
    }
    sqlite3_result_text(ctx, o.p, (int)o.n, SQLITE_TRANSIENT);
    rb_free(&o);
    rb_free(&b);
}

static void fn_js_instr(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL)
        return;
    rbuf_t h = {0}, n = {0};
    js_text(argv[0], &h);
    js_text(argv[1], &n);
    int64_t pos = 0;
    const char *hp = h.p ? h.p : "", *np = n.p ? n.p : "";
    if (n.n == 0) {
        pos = 1;
    } else {
        const char *f = memmem(hp, h.n, np, n.n);
        int both_blobs = sqlite3_value_type(argv[0]) == SQLITE_BLOB &&
                         sqlite3_value_type(argv[1]) == SQLITE_BLOB;
        if (f) pos = (both_blobs ? (int64_t)(f - hp) : utf16_len(hp, (size_t)(f - hp))) + 1;
    }
    sqlite3_result_int64(ctx, pos);
    rb_free(&h);
    rb_free(&n);
}

static void fn_js_iif(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    sqlite3_result_value(ctx, js_truthy(argv[0]) ? argv[1] : argv[2]);
}

/* ps_concat(a, b): the reference's `||` (text of both, NULL when either is NULL) */
static void fn_ps_concat(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    rbuf_t b = {0};
    if (!js_text(argv[0], &b) || !js_text(argv[1], &b)) {
        rb_free(&b);
        return;
    }
    sqlite3_result_text(ctx, b.p ? b.p : "", (int)b.n, SQLITE_TRANSIENT);
    rb_free(&b);
}

/* ps_cast(x, type): the reference's CAST (text of a REAL without ".0", integer rounds down) */
static void fn_ps_cast(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    int t = sqlite3_value_type(argv[0]);
    if (t == SQLITE_NULL) return;
    const char *to = (const char *)sqlite3_value_text(argv[1]);
    if (!to) return;
    if (strcasecmp(to, "text") == 0) {
        rbuf_t b = {0};
        js_text(argv[0], &b);
        sqlite3_result_text(ctx, b.p ? b.p : "", (int)b.n, SQLITE_TRANSIENT);
        rb_free(&b);
    } else if (strcasecmp(to, "integer") == 0) {
        int64_t v;
        js_to_int(argv[0], &v);
        sqlite3_result_int64(ctx, v);
    } else if (strcasecmp(to, "real") == 0) {
        if (t == SQLITE_INTEGER)
            sqlite3_result_double(ctx, (double)sqlite3_value_int64(argv[0]));
        else if (t == SQLITE_FLOAT)
            sqlite3_result_double(ctx, sqlite3_value_double(argv[0]));
        else {
            const char *s = (const char *)sqlite3_value_text(argv[0]);
            char *end;
            double d = s ? strtod(s, &end) : 0;
            sqlite3_result_double(ctx, s && end != s && d == d ? d : 0.0);
        }
    } else if (strcasecmp(to, "numeric") == 0) {
        if (t == SQLITE_INTEGER || t == SQLITE_FLOAT) {
            sqlite3_result_value(ctx, argv[0]);
            return;
        }
        const char *s = (const char *)sqlite3_value_text(argv[0]);
        const char *p = s;
        while (p && (*p == ' ' || (*p >= '\t' && *p <= '\r')))
            p++;
        const char *q = p;
        if (q && (*q == '+' || *q == '-')) q++;
        int digits = 0, frac = 0;
        while (q && isdigit((unsigned char)*q)) {
            q++;
            digits++;
        }
        if (q && *q == '.' && (digits || isdigit((unsigned char)q[1]))) frac = 1;
        if (q && (*q == 'e' || *q == 'E') && digits) frac = 1;
        if (!p || (!digits && !frac))
            sqlite3_result_int64(ctx, 0);
        else if (frac)
            sqlite3_result_double(ctx, strtod(p, NULL));
        else
            sqlite3_result_int64(ctx, strtoll(p, NULL, 10));
    } else {
        rbuf_t b = {0};
        js_text(argv[0], &b);
        sqlite3_result_blob(ctx, b.p ? b.p : "", (int)b.n, SQLITE_TRANSIENT);
        rb_free(&b);
    }
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
    rc |= sqlite3_create_function(db, "ps_jnum", 3, f, (void *)1, fn_ps_jnum, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_jvalue", 3, f, NULL, fn_ps_jnum, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_jnull_text", 4, f, NULL, fn_ps_jnull_text, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_concat", 2, f, NULL, fn_ps_concat, NULL, NULL);
    rc |= sqlite3_create_function(db, "ps_cast", 2, f, NULL, fn_ps_cast, NULL, NULL);
    /* SQLite's own versions of these differ from the reference's */
    rc |= sqlite3_create_function(db, "length", 1, f, NULL, fn_js_length, NULL, NULL);
    rc |= sqlite3_create_function(db, "upper", 1, f, (void *)1, fn_js_case, NULL, NULL);
    rc |= sqlite3_create_function(db, "lower", 1, f, NULL, fn_js_case, NULL, NULL);
    rc |= sqlite3_create_function(db, "substr", 2, f, NULL, fn_js_substring, NULL, NULL);
    rc |= sqlite3_create_function(db, "substr", 3, f, NULL, fn_js_substring, NULL, NULL);
    rc |= sqlite3_create_function(db, "substring", 2, f, NULL, fn_js_substring, NULL, NULL);
    rc |= sqlite3_create_function(db, "substring", 3, f, NULL, fn_js_substring, NULL, NULL);
    rc |= sqlite3_create_function(db, "hex", 1, f, NULL, fn_js_hex, NULL, NULL);
    rc |= sqlite3_create_function(db, "instr", 2, f, NULL, fn_js_instr, NULL, NULL);
    rc |= sqlite3_create_function(db, "iif", 3, f, NULL, fn_js_iif, NULL, NULL);
    return rc ? -1 : 0;
}
