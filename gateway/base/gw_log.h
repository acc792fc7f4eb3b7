/* gw_log.h -- logfmt logging with levels
 *
 * One line per event on stderr:
 *   ts=2026-11-22T01:02:03.456Z level=info mod=http msg="listening" addr=127.0.0.1:8080
 * The message is quoted and escaped here; extra fields are preformatted key=value pairs from the
 * caller. Every value a client chose (a client_id, a path, a user id, a message that quotes
 * them) goes through gw_log_qs(), the one quoting helper: it escapes quotes, backslashes and
 * every control character, so no client text can end a field, start a line or reach a terminal
 * as an escape sequence. Never log tokens, claims or row values above GW_LOG_DEBUG. Thread-safe:
 * each line is written with one write(2).
 *
 * Lines a client can cause at will (a rejected token, a bad admin token) go through a
 * gw_log_limit_t, so a flood of bad requests costs at most one line per interval.
 */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stdatomic.h>
#include <stddef.h>

typedef enum gw_log_level {
    GW_LOG_DEBUG = 0,
    GW_LOG_INFO = 1,
    GW_LOG_WARN = 2,
    GW_LOG_ERROR = 3,
} gw_log_level_t;

/** Set the minimum level printed (default GW_LOG_INFO). */
void gw_log_set_level(gw_log_level_t level);

/** Current minimum level. */
gw_log_level_t gw_log_get_level(void);

/** Parse "debug|info|warn|error" into *out; returns 0, or -1 for an unknown name. */
int gw_log_parse_level(const char *name, gw_log_level_t *out);

/** Log msg at level for module mod; fields (printf format, may be NULL) adds key=value pairs. */
void gw_log(gw_log_level_t level, const char *mod, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));

/**
 * Quote s as a logfmt value into buf ("a b" -> "\"a b\""); returns buf (always quoted and
 * NUL-terminated when len >= 6). Escapes: \" \\ \n \r \t, other control bytes and DEL as \xNN,
 * bytes that are not valid UTF-8 as \xNN, the C1 controls U+0080..U+009F as \u00NN; other
 * UTF-8 passes through. A value too long for buf is cut at a character boundary and ends in
 * "..." inside the quotes. NULL is logged as "".
 */
const char *gw_log_qs(const char *s, char *buf, size_t len);

/** Same as gw_log_qs() for n bytes of s (which may hold NUL bytes, escaped as \x00). */
const char *gw_log_qsn(const char *s, size_t n, char *buf, size_t len);

/**
 * A rate limit for one kind of log line: at most one line per interval_ms. Zero-initialise
 * with GW_LOG_LIMIT_INIT(ms); thread-safe (atomics).
 */
typedef struct gw_log_limit {
    unsigned interval_ms;
    _Atomic unsigned long long next_ms;    /* monotonic ms when the next line may go out */
    _Atomic unsigned long long suppressed; /* lines dropped since the last one written */
} gw_log_limit_t;

#define GW_LOG_LIMIT_INIT(ms)                                                                      \
    {                                                                                              \
        .interval_ms = (ms)                                                                        \
    }

/**
 * 1 when a line of this kind may be written now (*suppressed: how many were dropped since the
 * last one, to be logged with it), 0 when it must be dropped (and is counted).
 */
int gw_log_limit_take(gw_log_limit_t *l, unsigned long long *suppressed);

#define gw_debug(mod, msg, ...) gw_log(GW_LOG_DEBUG, mod, msg, __VA_ARGS__)
#define gw_info(mod, msg, ...)  gw_log(GW_LOG_INFO, mod, msg, __VA_ARGS__)
#define gw_warn(mod, msg, ...)  gw_log(GW_LOG_WARN, mod, msg, __VA_ARGS__)
#define gw_error(mod, msg, ...) gw_log(GW_LOG_ERROR, mod, msg, __VA_ARGS__)

#endif
