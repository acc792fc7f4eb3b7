/* gw_cli_token.c -- `ferry token` (issue #4 fills this in)
 *
 * Until the auth library lands the subcommand refuses, so nothing mistakes it for a token.
 */
#include "gw_cli.h"

#include <stdio.h>

int gw_cli_token(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry token: not available in this build yet\n");
    return 2;
}
