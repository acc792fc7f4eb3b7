/* gw_version.h -- the version and source revision of this build */
#ifndef GW_VERSION_H
#define GW_VERSION_H

/** The release version ("0.1.0"), from the VERSION file; static string. */
const char *gw_version(void);

/** The git revision the binary was built from ("808aacf", or "unknown"); static string. */
const char *gw_revision(void);

#endif
