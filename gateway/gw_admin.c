/* gw_admin.c -- the admin API: diagnostics and on-request compaction (issue #5 fills this in)
 *
 * Routes under /api/admin/, protected by admin.token. gw_admin_register() is called by
 * `ferry serve` with the shared gw_app_t.
 */
#include "gw_app.h"
#include "gw_cli.h"

#include <stdio.h>

int gw_cli_compact(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry compact: not available in this build yet\n");
    return 2;
}

void gw_admin_register(gw_app_t *app)
{
    (void)app;
}
