/* gw_log.h -- logfmt logging with levels
 *
 * One line per event on stderr:
 *   ts=2026-11-22T01:02:03.456Z level=info mod=http msg="listening" addr=127.0.0.1:8080
 * The message is quoted and escaped here; extra fields are preformatted key=value pairs from the
 * caller (use gw_log_qs() for values that may contain spaces or quotes). Never log tokens, claims
 * or row values above GW_LOG_DEBUG. Thread-safe: each line is written with one write(2).
 */
#ifndef GW_LOG_H
#define GW_LOG_H

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

/** Quote s as a logfmt value into buf ("a b" -> "\"a b\""); returns buf. */
const char *gw_log_qs(const char *s, char *buf, size_t len);

#define gw_debug(mod, msg, ...) gw_log(GW_LOG_DEBUG, mod, msg, __VA_ARGS__)
#define gw_info(mod, msg, ...)  gw_log(GW_LOG_INFO, mod, msg, __VA_ARGS__)
#define gw_warn(mod, msg, ...)  gw_log(GW_LOG_WARN, mod, msg, __VA_ARGS__)
#define gw_error(mod, msg, ...) gw_log(GW_LOG_ERROR, mod, msg, __VA_ARGS__)

#endif
