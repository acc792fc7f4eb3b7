/* gw_lsn.c -- log sequence numbers in Postgres's text form (see gw_lsn.h) */
#include "pg/gw_lsn.h"
#include "base/gw_err.h"

#include <stdio.h>

const char *gw_lsn_format(uint64_t lsn, char *buf, size_t len)
{
    snprintf(buf, len, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
    return buf;
}

int gw_lsn_parse(const char *text, uint64_t *out)
{
    unsigned hi, lo;
    int n = 0;
    if (text == NULL || sscanf(text, "%X/%X%n", &hi, &lo, &n) != 2 || text[n] != '\0')
        return GW_EINVAL;
    *out = ((uint64_t)hi << 32) | lo;
    return 0;
}
