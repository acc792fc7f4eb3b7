/* gw_log.c -- logfmt logging with levels (see gw_log.h) */
#include "base/gw_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int min_level = GW_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void gw_log_set_level(gw_log_level_t level)
{
    atomic_store(&min_level, (int)level);
}

gw_log_level_t gw_log_get_level(void)
{
    return (gw_log_level_t)atomic_load(&min_level);
}

int gw_log_parse_level(const char *name, gw_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (gw_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 when it is not one. Overlong
 * forms, surrogates and code points past U+10FFFF are not valid. *cp gets the code point. */
static size_t utf8_len(const unsigned char *p, size_t n, unsigned *cp)
{
    unsigned c = p[0], need, min;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1, min = 0x80, c &= 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        need = 2, min = 0x800, c &= 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 3, min = 0x10000, c &= 0x07;
    else
        return 0;
    if (n < need + 1) return 0;
    for (unsigned i = 1; i <= need; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    *cp = c;
    return need + 1;
}

/* Escape p[0..n) into buf from offset 1 up to room; with dots, keep room for "..." and stop
 * where the rest would not fit. Returns the offset reached, or 0 when (without dots) the value
 * did not fit. */
static size_t escape_into(const unsigned char *p, size_t n, char *buf, size_t room, int dots)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 1;
    for (size_t i = 0; i < n;) {
        char esc[8];
        size_t el = 0, step = 1;
        unsigned c = p[i], cp = 0;
        if (c == '"' || c == '\\') {
            esc[el++] = '\\';
            esc[el++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[el++] = '\\';
            esc[el++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20 || c == 0x7f) {
            el = (size_t)snprintf(esc, sizeof(esc), "\\x%c%c", hex[c >> 4], hex[c & 15]);
        } else if (c < 0x80) {
            esc[el++] = (char)c;
        } else if ((step = utf8_len(p + i, n - i, &cp)) == 0) {
            step = 1; /* not UTF-8: the byte as \xNN */
            el = (size_t)snprintf(esc, sizeof(esc), "\\x%c%c", hex[c >> 4], hex[c & 15]);
        } else if (cp >= 0x80 && cp <= 0x9f) { /* C1 controls (CSI and friends) */
            el = (size_t)snprintf(esc, sizeof(esc), "\\u00%c%c", hex[cp >> 4], hex[cp & 15]);
        } else {
            memcpy(esc, p + i, step);
            el = step;
        }
        if (o + el + (dots ? 3 : 0) > room) {
            if (!dots) return 0;
            memcpy(buf + o, "...", 3);
            return o + 3;
        }
        memcpy(buf + o, esc, el);
        o += el;
        i += step;
    }
    return o;
}

const char *gw_log_qsn(const char *s, size_t n, char *buf, size_t len)
{
    if (len < 6) {
        if (len > 0) buf[0] = '\0';
        return buf;
    }
    const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
    if (s == NULL) n = 0;
    size_t room = len - 2; /* the closing quote and the NUL */
    buf[0] = '"';
    size_t o = escape_into(p, n, buf, room, 0);
    if (o == 0) o = escape_into(p, n, buf, room, 1); /* too long: cut, and say so */
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

const char *gw_log_qs(const char *s, char *buf, size_t len)
{
    return gw_log_qsn(s, s != NULL ? strlen(s) : 0, buf, len);
}

static unsigned long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

int gw_log_limit_take(gw_log_limit_t *l, unsigned long long *suppressed)
{
    unsigned long long now = mono_ms(), next = atomic_load(&l->next_ms);
    /* the first caller past next_ms moves it on; everyone else counts as suppressed */
    if (now >= next && atomic_compare_exchange_strong(&l->next_ms, &next, now + l->interval_ms)) {
        *suppressed = atomic_exchange(&l->suppressed, 0);
        return 1;
    }
    atomic_fetch_add(&l->suppressed, 1);
    *suppressed = 0;
    return 0;
}

void gw_log(gw_log_level_t level, const char *mod, const char *msg, const char *fields, ...)
{
    if ((int)level < atomic_load(&min_level)) return;
    char line[4096], qmsg[1024];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(
        line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s msg=%s",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        (long)(tv.tv_usec / 1000), level_names[level], mod, gw_log_qs(msg, qmsg, sizeof(qmsg)));
    if (n < 0) return;
    if ((size_t)n > sizeof(line) - 2) n = sizeof(line) - 2;
    if (fields != NULL && fields[0] != '\0' && (size_t)n < sizeof(line) - 3) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fields);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fields, ap);
        va_end(ap);
        if (m > 0) n += m;
        if ((size_t)n > sizeof(line) - 2) n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
