/* gw_rules.c -- load and compile the sync-rules file for the gateway (see gw_rules.h) */
#include "config/gw_rules.h"
#include "base/gw_buf.h"
#include "base/gw_log.h"
#include "base/gw_map.h"

#include <errno.h>
#include <string.h>

int gw_rules_compile_text(const char *text, size_t len, const char *name, rules_set_t **out,
                          char *hash, size_t hashlen, FILE *diag_out, gw_err_t *err)
{
    /* the engine version is part of the hash: outputs of other engines are other versions */
    uint64_t h = gw_hash(text, len) ^ (0x9e3779b97f4a7c15ULL * (uint64_t)RULES_ENGINE_VERSION);
    snprintf(hash, hashlen, "%016llx", (unsigned long long)h);
    rules_diags_t diags = {0};
    int rc = rules_compile(text, len, name, out, &diags);
    if (rc == 0) rules_lint(*out, &diags); /* logged as warnings below, like the compiler's */
    char line[1024];
    for (size_t i = 0; i < diags.n; i++) {
        rules_diag_format(&diags, i, line, sizeof(line));
        if (diag_out != NULL)
            fprintf(diag_out, "%s\n", line);
        else if (diags.items[i].is_warning)
            gw_warn("rules", line, NULL);
        else
            gw_error("rules", line, NULL);
    }
    if (rc != 0) {
        gw_err_set(err, GW_ERULES, name, "the sync rules have %zu error%s", diags.nerrors,
                   diags.nerrors == 1 ? "" : "s");
        rules_diags_free(&diags);
        return GW_ERULES;
    }
    rules_diags_free(&diags);
    return 0;
}

int gw_rules_load_text(const char *path, rules_set_t **out, char *hash, size_t hashlen,
                       gw_buf_t *text, FILE *diag_out, gw_err_t *err)
{
    size_t start = text->len;
    if (gw_buf_read_file(text, path) != 0) {
        int e = errno;
        return gw_err_set(err, GW_EIO, path, "could not read the sync rules: %s", strerror(e));
    }
    return gw_rules_compile_text(text->data + start, text->len - start, path, out, hash, hashlen,
                                 diag_out, err);
}

int gw_rules_load(const char *path, rules_set_t **out, char *hash, size_t hashlen, FILE *diag_out,
                  gw_err_t *err)
{
    gw_buf_t text = GW_BUF_INIT;
    int rc = gw_rules_load_text(path, out, hash, hashlen, &text, diag_out, err);
    gw_buf_free(&text);
    return rc;
}
