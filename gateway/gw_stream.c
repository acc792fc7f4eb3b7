/* gw_stream.c -- POST /sync/stream (issue #6; being written) */
#include "gw_app.h"

void gw_stream_register(gw_app_t *app)
{
    (void)app;
}
