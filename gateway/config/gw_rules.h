/* gw_rules.h -- loading the sync-rules file for the gateway
 *
 * Reads and compiles the rules file named by the config, reporting every diagnostic through the
 * log (errors) or stderr, and computes the hash the storage uses to notice rule changes.
 */
#ifndef GW_RULES_H
#define GW_RULES_H

#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "rules/rules.h"

#include <stdio.h>

/**
 * Compile the rules file at path. Returns 0 with *out (caller rules_unref()s it) and the text's
 * hash in hash (hex, at least 17 bytes); or GW_ERULES / GW_EIO with err set, after printing each
 * diagnostic ("file:line:col: message") to diag_out when it is not NULL.
 */
int gw_rules_load(const char *path, rules_set_t **out, char *hash, size_t hashlen, FILE *diag_out,
                  gw_err_t *err);

/**
 * Like gw_rules_load, and also append the file's text to text (so that exactly the text that was
 * hashed and compiled can be stored).
 */
int gw_rules_load_text(const char *path, rules_set_t **out, char *hash, size_t hashlen,
                       gw_buf_t *text, FILE *diag_out, gw_err_t *err);

/**
 * Compile rules text (len bytes) that came from name (a file name, or a description used in
 * diagnostics such as "stored rules of version 3"), with the same hash and reporting as
 * gw_rules_load. Returns 0 with *out (caller rules_unref()s it), or GW_ERULES.
 */
int gw_rules_compile_text(const char *text, size_t len, const char *name, rules_set_t **out,
                          char *hash, size_t hashlen, FILE *diag_out, gw_err_t *err);

#endif
