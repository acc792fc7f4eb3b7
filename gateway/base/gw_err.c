/* gw_err.c -- error codes, messages and the abort-on-OOM allocators
 *
 * See gw_err.h for the convention. Nothing here logs; callers decide.
 */
#include "base/gw_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gw_err_set(gw_err_t *err, int code, const char *where, const char *fmt, ...)
{
    if (err == NULL) return code;
    err->code = code;
    err->detail[0] = '\0';
    snprintf(err->where, sizeof(err->where), "%s", where != NULL ? where : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

int gw_err_detail(gw_err_t *err, const char *fmt, ...)
{
    if (err == NULL) return GW_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
    va_end(ap);
    return err->code;
}

void gw_err_clear(gw_err_t *err)
{
    if (err == NULL) return;
    err->code = GW_OK;
    err->message[0] = err->detail[0] = err->where[0] = '\0';
}

const char *gw_err_name(int code)
{
    switch (code) {
#define GW_ERR_NAME(name, value, desc)                                                             \
    case value:                                                                                    \
        return #name;
        GW_ERROR_TABLE(GW_ERR_NAME)
#undef GW_ERR_NAME
    }
    return "GW_EUNKNOWN";
}

const char *gw_err_desc(int code)
{
    switch (code) {
#define GW_ERR_DESC(name, value, desc)                                                             \
    case value:                                                                                    \
        return desc;
        GW_ERROR_TABLE(GW_ERR_DESC)
#undef GW_ERR_DESC
    }
    return "unknown error";
}

const char *gw_err_format(const gw_err_t *err, char *buf, size_t len)
{
    if (err->where[0] != '\0')
        snprintf(buf, len, "%s: %s", err->where, err->message);
    else
        snprintf(buf, len, "%s", err->message);
    return buf;
}

static void oom(size_t n)
{
    fprintf(stderr, "ferry: out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *gw_xmalloc(size_t n)
{
    void *p = malloc(n == 0 ? 1 : n);
    if (p == NULL) oom(n);
    return p;
}

void *gw_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
    if (p == NULL) oom(n * size);
    return p;
}

void *gw_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n == 0 ? 1 : n);
    if (q == NULL) oom(n);
    return q;
}

char *gw_xstrdup(const char *s)
{
    if (s == NULL) return NULL;
    size_t n = strlen(s) + 1;
    char *p = gw_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

char *gw_xstrndup_len(const char *p, size_t n)
{
    char *c = gw_xmalloc(n + 1);
    if (n > 0) memcpy(c, p, n);
    c[n] = '\0';
    return c;
}
