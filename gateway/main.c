/* main.c -- the ferry command line: dispatch to subcommands
 *
 *   ferry serve --config FILE        run the gateway
 *   ferry rules check FILE [--db URI] compile sync rules, print errors and warnings
 *   ferry rules explain FILE ...     which buckets a token gets, and why
 *   ferry token --config FILE ...    mint a development token
 *   ferry debug dump|oracle|history  inspect bucket storage / what the rules select now / a row's
 *                                    replication ops and write-back history
 *   ferry config keys                list every accepted configuration key
 *   ferry config check --config FILE validate a configuration file
 *   ferry version | help
 *
 * Unknown subcommands and flags print usage and exit 2.
 */
#include "cli/gw_cli.h"
#include "config/gw_config.h"
#include "base/gw_err.h"
#include "base/gw_version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *gw_cli_config_path(const char *flag_value)
{
    if (flag_value != NULL && flag_value[0] != '\0') return flag_value;
    const char *env = getenv("FERRY_CONFIG");
    return env != NULL && env[0] != '\0' ? env : NULL;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve --config FILE          run the sync gateway (config also from $FERRY_CONFIG)\n"
            "  rules check FILE [--db URI]  check a sync-rules file (with --db: against the "
            "tables)\n"
            "  rules explain FILE --token JWT [--params JSON] [--db URI] [--config FILE]\n"
            "                               show which buckets a token gets, and why\n"
            "  token --config FILE --sub USER [--claim k=v]... [--ttl S] [--kid KID]\n"
            "                               print a development token\n"
            "  compact --config FILE        compact bucket storage in the running server\n"
            "  debug dump --config FILE [--bucket B] [--checksums]\n"
            "                               print the rows stored in each bucket\n"
            "  debug oracle --config FILE   print what the rules select from postgres now\n"
            "  debug history --config FILE TABLE ID\n"
            "                               print a row's replication ops and write-back history\n"
            "  config keys                  list every configuration key\n"
            "  config check --config FILE   validate a configuration file\n"
            "  version                      print the version\n"
            "  help                         print this text\n");
}

int gw_cli_config(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "keys") == 0) {
        gw_config_print_keys(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        const char *flag = NULL;
        if (argc == 4 && strcmp(argv[2], "--config") == 0)
            flag = argv[3];
        else if (argc != 2) {
            fprintf(stderr, "usage: ferry config check [--config FILE]\n");
            return 2;
        }
        const char *path = gw_cli_config_path(flag);
        if (path == NULL) {
            fprintf(stderr, "ferry config check: no configuration given (use --config FILE or "
                            "set FERRY_CONFIG)\n");
            return 2;
        }
        gw_config_t cfg;
        gw_err_t err;
        char msg[1024];
        if (gw_config_load(&cfg, path, &err) != 0) {
            fprintf(stderr, "%s\n", gw_err_format(&err, msg, sizeof(msg)));
            return 1;
        }
        printf("%s: ok\n", path);
        gw_config_free(&cfg);
        return 0;
    }
    fprintf(stderr, "usage: ferry config keys | ferry config check [--config FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return gw_cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "rules") == 0) return gw_cli_rules(argc - 1, argv + 1);
    if (strcmp(cmd, "token") == 0) return gw_cli_token(argc - 1, argv + 1);
    if (strcmp(cmd, "compact") == 0) return gw_cli_compact(argc - 1, argv + 1);
    if (strcmp(cmd, "debug") == 0) return gw_cli_debug(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0) return gw_cli_config(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("ferry %s (%s)\n", gw_version(), gw_revision());
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "ferry: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
