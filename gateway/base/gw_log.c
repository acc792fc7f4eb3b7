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

const char *gw_log_qs(const char *s, char *buf, size_t len)
{
    size_t o = 0;
    if (len < 3) {
        if (len > 0) buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (const char *p = s != NULL ? s : ""; *p != '\0' && o + 3 < len; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (c < 0x20) {
            buf[o++] = ' ';
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
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
