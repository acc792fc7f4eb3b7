/* rules_util.c -- buffers, JSON encoding of values, number formatting, op checksums
 *
 * The JSON written here is what clients receive and what checksums are computed over, so it
 * follows the PowerSync service byte for byte: strings escaped like JS JSON.stringify, INTEGER
 * as plain digits, REAL in JS shortest round-trip form with ".0" appended when integral (row
 * data) or without it (bucket ids, so INTEGER 5 and REAL 5.0 give the same id), NULL as null.
 * Allocation failures abort, as in the gateway.
 */
#include "rules_int.h"

#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *rx_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

void *rx_calloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) abort();
    return p;
}

void *rx_realloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

char *rx_strdup(const char *s)
{
    return rx_strndup(s, strlen(s));
}

char *rx_strndup(const char *s, size_t n)
{
    char *p = rx_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void rb_reserve(rbuf_t *b, size_t extra)
{
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->n + extra + 1)
        cap *= 2;
    b->p = rx_realloc(b->p, cap);
    b->cap = cap;
}

void rb_put(rbuf_t *b, const char *s, size_t n)
{
    rb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void rb_puts(rbuf_t *b, const char *s)
{
    rb_put(b, s, strlen(s));
}

void rb_printf(rbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        rb_put(b, tmp, (size_t)n);
        return;
    }
    rb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void rb_free(rbuf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

char *rb_strdup(const rbuf_t *b)
{
    return rx_strndup(b->p ? b->p : "", b->n);
}

/* 1 for bytes JSON.stringify escapes: control characters, '"' and '\\' */
static const unsigned char json_esc[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
};

void rj_string(rbuf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    rb_reserve(b, n * 6 + 2);
    char *o = b->p + b->n;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        /* a lone UTF-16 surrogate (ED A0..BF xx, from a JavaScript-style substring) is
         * escaped the way JSON.stringify escapes it */
        if (c == 0xed && i + 2 < n && ((unsigned char)s[i + 1] & 0xe0) == 0xa0) {
            unsigned u =
                0xd000u | (((unsigned)s[i + 1] & 0x3fu) << 6) | ((unsigned)s[i + 2] & 0x3fu);
            *o++ = '\\';
            *o++ = 'u';
            *o++ = hex[u >> 12];
            *o++ = hex[(u >> 8) & 15];
            *o++ = hex[(u >> 4) & 15];
            *o++ = hex[u & 15];
            i += 2;
            continue;
        }
        if (!json_esc[c]) {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    *o = 0;
    b->n = (size_t)(o - b->p);
}

/* Shortest digits that round-trip: fills digits (no dot) and returns the decimal exponent k
 * such that value = 0.d1d2... * 10^k (ECMAScript's n). */
static int shortest_digits(double d, char *digits, int *ndigits)
{
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d || prec == 17) break;
    }
    /* tmp = d[.ddd]e[+-]XX */
    int n = 0;
    const char *p = tmp;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[n++] = *p;
    int e = atoi(p + 1);
    while (n > 1 && digits[n - 1] == '0')
        n--;
    digits[n] = 0;
    *ndigits = n;
    return e + 1;
}

void rj_double(rbuf_t *b, double d, int dot_zero)
{
    if (isnan(d) || isinf(d)) {
        rb_puts(b, "null");
        return;
    }
    if (d == 0) {
        rb_puts(b, dot_zero ? "0.0" : "0");
        return;
    }
    if (d < 0) {
        rb_putc(b, '-');
        d = -d;
    }
    char dg[24];
    int k;                                /* number of significant digits */
    int e10 = shortest_digits(d, dg, &k); /* ECMAScript's n */
    if (k <= e10 && e10 <= 21) {
        rb_put(b, dg, (size_t)k);
        for (int i = 0; i < e10 - k; i++)
            rb_putc(b, '0');
        if (dot_zero) rb_puts(b, ".0");
    } else if (0 < e10 && e10 <= 21) {
        rb_put(b, dg, (size_t)e10);
        rb_putc(b, '.');
        rb_put(b, dg + e10, (size_t)(k - e10));
    } else if (-6 < e10 && e10 <= 0) {
        rb_puts(b, "0.");
        for (int i = 0; i < -e10; i++)
            rb_putc(b, '0');
        rb_put(b, dg, (size_t)k);
    } else {
        rb_putc(b, dg[0]);
        if (k > 1) {
            rb_putc(b, '.');
            rb_put(b, dg + 1, (size_t)(k - 1));
        }
        rb_printf(b, "e%c%d", e10 - 1 >= 0 ? '+' : '-', abs(e10 - 1));
    }
}

void rb_int(rbuf_t *b, int64_t v)
{
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[sizeof tmp - 1 - n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[sizeof tmp - 1 - n++] = '-';
    rb_put(b, tmp + sizeof tmp - n, (size_t)n);
}

void rj_value(rbuf_t *b, const rval_t *v)
{
    switch (v->t) {
    case SQLITE_INTEGER:
        rb_int(b, v->i);
        break;
    case SQLITE_FLOAT:
        rj_double(b, v->d, 1);
        break;
    case SQLITE_TEXT:
        rj_string(b, v->s, v->n);
        break;
    default:
        rb_puts(b, "null");
        break;
    }
}

void rj_key_value(rbuf_t *b, const rval_t *v)
{
    if (v->t == SQLITE_FLOAT)
        rj_double(b, v->d, 0);
    else
        rj_value(b, v);
}

void rv_from_column(rval_t *v, sqlite3_stmt *st, int i)
{
    v->t = sqlite3_column_type(st, i);
    switch (v->t) {
    case SQLITE_INTEGER:
        v->i = sqlite3_column_int64(st, i);
        break;
    case SQLITE_FLOAT:
        v->d = sqlite3_column_double(st, i);
        break;
    case SQLITE_TEXT:
        v->s = (const char *)sqlite3_column_text(st, i);
        v->n = (size_t)sqlite3_column_bytes(st, i);
        break;
    case SQLITE_BLOB:
        v->s = sqlite3_column_blob(st, i);
        v->n = (size_t)sqlite3_column_bytes(st, i);
        break;
    default:
        break;
    }
}

int rv_bind(sqlite3_stmt *st, int idx, const rval_t *v)
{
    switch (v->t) {
    case SQLITE_INTEGER:
        return sqlite3_bind_int64(st, idx, v->i);
    case SQLITE_FLOAT:
        return sqlite3_bind_double(st, idx, v->d);
    case SQLITE_TEXT:
        return sqlite3_bind_text(st, idx, v->s, (int)v->n, SQLITE_STATIC);
    case SQLITE_BLOB:
        return sqlite3_bind_blob(st, idx, v->s, (int)v->n, SQLITE_STATIC);
    default:
        return sqlite3_bind_null(st, idx);
    }
}

int rv_truthy(const rval_t *v)
{
    /* the reference's sqliteBool: text is true when parseInt() reads a non-zero number */
    switch (v->t) {
    case SQLITE_INTEGER:
        return v->i != 0;
    case SQLITE_FLOAT:
        return v->d != 0 && v->d == v->d;
    case SQLITE_TEXT: {
        size_t i = 0;
        while (i < v->n && (v->s[i] == ' ' || (v->s[i] >= '\t' && v->s[i] <= '\r')))
            i++;
        if (i < v->n && (v->s[i] == '+' || v->s[i] == '-')) i++;
        int hex = i + 1 < v->n && v->s[i] == '0' && (v->s[i + 1] == 'x' || v->s[i + 1] == 'X');
        if (hex) i += 2;
        int digits = 0, nonzero = 0;
        for (; i < v->n; i++) {
            char c = v->s[i];
            int ok =
                hex ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
                    : (c >= '0' && c <= '9');
            if (!ok) break;
            digits++;
            if (c != '0') nonzero = 1;
        }
        return digits > 0 && nonzero;
    }
    default:
        return 0;
    }
}

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!sha256_md) abort();
}

uint32_t rchecksum_parts(void *evp_ctx, const char *const *parts, const size_t *lens, int n)
{
    /* the digest is fetched once and the context reused: an implicit fetch per op costs
     * three times as much (OpenSSL 3 name lookup under a lock) */
    pthread_once(&sha256_once, sha256_fetch);
    EVP_MD_CTX *ctx = evp_ctx ? evp_ctx : EVP_MD_CTX_new();
    if (!ctx) abort();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_DigestInit_ex2(ctx, sha256_md, NULL);
    for (int i = 0; i < n; i++)
        EVP_DigestUpdate(ctx, parts[i], lens[i]);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    if (!evp_ctx) EVP_MD_CTX_free(ctx);
    return (uint32_t)md[0] | (uint32_t)md[1] << 8 | (uint32_t)md[2] << 16 | (uint32_t)md[3] << 24;
}

uint32_t rules_checksum_put(const char *object_type, const char *object_id, const char *data,
                            size_t data_len)
{
    const char *parts[6] = {"put.", object_type, ".", object_id, ".", data};
    size_t lens[6] = {4, strlen(object_type), 1, strlen(object_id), 1, data_len};
    return rchecksum_parts(NULL, parts, lens, 6);
}

uint32_t rules_checksum_delete(const char *subkey)
{
    const char *parts[2] = {"delete.", subkey};
    size_t lens[2] = {7, strlen(subkey)};
    return rchecksum_parts(NULL, parts, lens, 2);
}

const char *rules_strerror(int code)
{
    switch (code) {
    case RULES_OK:
        return "success";
    case RULES_ENOMEM:
        return "out of memory";
    case RULES_EINVAL:
        return "invalid argument";
    case RULES_ECOMPILE:
        return "sync rules have errors";
    case RULES_EIO:
        return "could not read the rules file";
    case RULES_EEVAL:
        return "could not evaluate an expression";
    case RULES_ELOOKUP:
        return "parameter lookup failed";
    case RULES_ELIMIT:
        return "too many buckets";
    default:
        return "unknown error";
    }
}

void rb_sql_str(rbuf_t *b, const char *s)
{
    rb_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'') rb_putc(b, '\'');
        rb_putc(b, *s);
    }
    rb_putc(b, '\'');
}

void rb_sql_json_path(rbuf_t *b, const char *key, int fixed)
{
    rbuf_t p = {0};
    if (key[0] == '$') {
        rb_puts(&p, key);
    } else if (!fixed) {
        rb_puts(&p, "$.");
        rb_puts(&p, key);
    } else {
        rb_puts(&p, "$.\"");
        for (const char *s = key; *s; s++) {
            if (*s == '"' || *s == '\\') rb_putc(&p, '\\');
            rb_putc(&p, *s);
        }
        rb_putc(&p, '"');
    }
    rb_sql_str(b, p.p != NULL ? p.p : "");
    rb_free(&p);
}
