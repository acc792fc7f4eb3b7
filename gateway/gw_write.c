/* gw_write.c -- write-back: POST /api/write (issue #7 fills this in)
 *
 * gw_write_register() is called by `ferry serve` with the shared gw_app_t.
 */
#include "gw_app.h"

void gw_write_register(gw_app_t *app)
{
    (void)app;
}
