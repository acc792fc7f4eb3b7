/* gw_buf.c -- growable byte buffer (see gw_buf.h) */
#include "base/gw_buf.h"
#include "base/gw_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reserve(gw_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = gw_xrealloc(b->data, cap);
    b->cap = cap;
}

char *gw_buf_space(gw_buf_t *b, size_t n)
{
    reserve(b, n);
    return b->data + b->len;
}

void gw_buf_added(gw_buf_t *b, size_t n)
{
    b->len += n;
    b->data[b->len] = '\0';
}

void gw_buf_append(gw_buf_t *b, const void *p, size_t len)
{
    reserve(b, len);
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void gw_buf_u64(gw_buf_t *b, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    gw_buf_append(b, tmp + n, sizeof(tmp) - n);
}

void gw_buf_puts(gw_buf_t *b, const char *s)
{
    gw_buf_append(b, s, strlen(s));
}

void gw_buf_printf(gw_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void gw_buf_json_str(gw_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    reserve(b, strlen(s) + 2);
    gw_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        char esc[6];
        switch (*p) {
        case '"':
            gw_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            gw_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            gw_buf_append(b, "\\n", 2);
            break;
        case '\r':
            gw_buf_append(b, "\\r", 2);
            break;
        case '\t':
            gw_buf_append(b, "\\t", 2);
            break;
        default:
            if (*p < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 15];
                gw_buf_append(b, esc, 6);
            } else {
                gw_buf_append(b, p, 1);
            }
        }
    }
    gw_buf_append(b, "\"", 1);
}

void gw_buf_reset(gw_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL) b->data[0] = '\0';
}

void gw_buf_free(gw_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int gw_buf_read_file(gw_buf_t *b, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -1;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        gw_buf_append(b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (b->data == NULL) gw_buf_append(b, "", 0);
    return bad ? -1 : 0;
}
