/* gw_err.h -- the gateway's one error convention
 *
 * Every gateway function that can fail returns int: 0 on success, a negative code from the
 * table below on failure. Detail travels in an optional gw_err_t the caller passes (may be
 * NULL): the code, a primary message in PostgreSQL style (lowercase, no final period), an
 * optional detail sentence, and where it happened ("ferry.yaml:12:3", "conn=c7f3a").
 * The leaf libraries (rules/, auth/) keep their own codes; the gateway maps them here.
 */
#ifndef GW_ERR_H
#define GW_ERR_H

#include <stddef.h>

/* X(name, value, short description); values are stable, never reuse one. */
#define GW_ERROR_TABLE(X)                                                                          \
    X(GW_OK, 0, "success")                                                                         \
    X(GW_ENOMEM, -1, "out of memory")                                                              \
    X(GW_EINVAL, -2, "invalid argument")                                                           \
    X(GW_ECONFIG, -3, "configuration error")                                                       \
    X(GW_EIO, -4, "input/output error")                                                            \
    X(GW_ESYS, -5, "system call failed")                                                           \
    X(GW_EADDRINUSE, -6, "address already in use")                                                 \
    X(GW_EPG, -7, "postgres error")                                                                \
    X(GW_EAUTH, -8, "authentication failed")                                                       \
    X(GW_ERULES, -9, "sync rules error")                                                           \
    X(GW_ENOTFOUND, -10, "not found")                                                              \
    X(GW_EUNAVAIL, -11, "temporarily unavailable")                                                 \
    X(GW_ETOOBIG, -12, "too large")                                                                \
    X(GW_ETIMEOUT, -13, "timed out")

enum gw_errcode {
#define GW_ERR_ENUM(name, value, desc) name = value,
    GW_ERROR_TABLE(GW_ERR_ENUM)
#undef GW_ERR_ENUM
};

typedef struct gw_err {
    int code;          /* one of enum gw_errcode */
    char message[512]; /* primary message, e.g. unknown key "listn" (did you mean "listen"?) */
    char detail[512];  /* optional full sentence, "" when none */
    char where[256];   /* optional location, e.g. "ferry.yaml:12:3", "" when none */
} gw_err_t;

/** Fill *err (when not NULL) with code, where and a printf-style message; returns code. */
int gw_err_set(gw_err_t *err, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** Set the detail sentence of *err (when not NULL); returns err->code or GW_EINVAL. */
int gw_err_detail(gw_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Clear *err to GW_OK with empty strings (err may be NULL). */
void gw_err_clear(gw_err_t *err);

/** Static symbolic name of a code ("GW_ECONFIG"), "GW_EUNKNOWN" for codes not in the table. */
const char *gw_err_name(int code);

/** Static one-line description of a code. */
const char *gw_err_desc(int code);

/** Format "where: message" (or "message") into buf; returns buf. */
const char *gw_err_format(const gw_err_t *err, char *buf, size_t len);

/** Allocation helpers that abort the process on OOM (the gateway's policy); never NULL. */
void *gw_xmalloc(size_t n);
void *gw_xcalloc(size_t n, size_t size);
void *gw_xrealloc(void *p, size_t n);
/** strdup that aborts on OOM; NULL in, NULL out. The caller owns and frees the copy. */
char *gw_xstrdup(const char *s);
/** The first n bytes of p as a NUL-terminated string (p may hold NULs); aborts on OOM. The
 *  caller owns and frees the copy. */
char *gw_xstrndup_len(const char *p, size_t n);

#endif
