/* gw_version.c -- version strings, compiled on every build so the revision stays current */
#include "base/gw_version.h"

const char *gw_version(void)
{
    return FERRY_VERSION;
}

const char *gw_revision(void)
{
    return FERRY_GIT_REV;
}
