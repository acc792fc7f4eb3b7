/* gw_cli_rules.c -- `ferry rules check|explain` (issue #3 fills this in)
 *
 * Until the rules compiler lands, the subcommand exists so the CLI's shape is stable, and it
 * says plainly that it is not available yet (exit 2), never that the rules are fine.
 */
#include "gw_cli.h"

#include <stdio.h>

int gw_cli_rules(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry rules: not available in this build yet\n");
    return 2;
}
