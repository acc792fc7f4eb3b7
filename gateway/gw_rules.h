/* gw_rules.h -- loading the sync-rules file for the gateway
 *
 * Reads and compiles the rules file named by the config, reporting every diagnostic through the
 * log (errors) or stderr, and computes the hash the storage uses to notice rule changes.
 */
#ifndef GW_RULES_H
#define GW_RULES_H

#include "gw_err.h"
#include "rules/rules.h"

#include <stdio.h>

/**
 * Compile the rules file at path. Returns 0 with *out (caller rules_unref()s it) and the text's
 * hash in hash (hex, at least 17 bytes); or GW_ERULES / GW_EIO with err set, after printing each
 * diagnostic ("file:line:col: message") to diag_out when it is not NULL.
 */
int gw_rules_load(const char *path, rules_set_t **out, char *hash, size_t hashlen, FILE *diag_out,
                  gw_err_t *err);

#endif
