/* gw_cli.h -- the subcommands of the ferry CLI
 *
 * main.c dispatches `ferry <command> ...` to one of these. Each receives argv starting at the
 * subcommand's name (argv[0] == "serve", "rules", ...) and returns the process exit code:
 * 0 success, 1 failure of the operation, 2 usage error (usage is printed to stderr).
 */
#ifndef GW_CLI_H
#define GW_CLI_H

/** `ferry serve --config FILE`: run the gateway until SIGTERM/SIGINT (gw_serve.c). */
int gw_cli_serve(int argc, char **argv);

/** `ferry rules check FILE` and `ferry rules explain FILE --token JWT ...` (gw_cli_rules.c). */
int gw_cli_rules(int argc, char **argv);

/** `ferry token --config FILE --sub USER ...`: mint a development token (gw_cli_token.c). */
int gw_cli_token(int argc, char **argv);

/** `ferry debug dump|oracle --config FILE`: storage contents vs. the rules over SQL. */
int gw_cli_debug(int argc, char **argv);

/** `ferry compact --config FILE`: ask the running server to compact storage (gw_cli_compact.c). */
int gw_cli_compact(int argc, char **argv);

/** `ferry config keys|check --config FILE`: list accepted keys, or validate a file (main.c). */
int gw_cli_config(int argc, char **argv);

/** Resolve the config path from --config FILE in argv or $FERRY_CONFIG; NULL when neither
 *  (main.c). */
const char *gw_cli_config_path(const char *flag_value);

#endif
