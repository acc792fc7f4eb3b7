/* auth_err.c -- the auth library's error codes and how errors are filled
 *
 * Every failing call returns a negative code from AUTH_ERROR_TABLE (auth.h) and, when the caller
 * passed an auth_err_t, a message in PostgreSQL style (lowercase, no final period) and an optional
 * detail sentence. Messages are built by the callers from fixed text and key ids or claim names;
 * they never include the token or its claim values.
 */
#include "auth_int.h"

#include <stdio.h>
#include <string.h>

const char *auth_err_code_str(int code)
{
    switch (code) {
#define AUTH_ERR_CASE(name, value, str)                                                            \
    case name:                                                                                     \
        return str;
        AUTH_ERROR_TABLE(AUTH_ERR_CASE)
#undef AUTH_ERR_CASE
    }
    return "unknown_error";
}

int auth__fail(auth_err_t *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        err->detail[0] = '\0';
    }
    return code;
}

void auth__detail(auth_err_t *err, const char *fmt, ...)
{
    if (err == NULL) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
    va_end(ap);
}
