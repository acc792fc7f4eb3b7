/* fuzz_config.c -- libFuzzer target: arbitrary bytes as a ferry.yaml
 *
 * The loader must return 0 or GW_ECONFIG with a message, never crash, leak or hang. A successful
 * load is released again so leaks in either path show.
 */
#include "config/gw_config.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_config_t cfg;
    gw_err_t err;
    int rc = gw_config_load_string(&cfg, (const char *)data, size, "fuzz.yaml", "/fuzz", &err);
    if (rc == 0)
        gw_config_free(&cfg);
    else if (rc != GW_ECONFIG && rc != GW_ENOMEM)
        __builtin_trap();
    else if (err.message[0] == '\0')
        __builtin_trap();
    return 0;
}
