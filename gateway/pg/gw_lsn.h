/* gw_lsn.h -- log sequence numbers: Postgres's text form ("16/B374D848") and back
 *
 * An LSN is a 64-bit WAL position; Postgres prints it as two hex halves. The replicator stores
 * and compares LSNs as uint64_t and uses these only at the edges (SQL results, logs).
 */
#ifndef GW_LSN_H
#define GW_LSN_H

#include <stddef.h>
#include <stdint.h>

/** Format an LSN as Postgres does ("16/B374D848") into buf (at least 20 bytes); returns buf. */
const char *gw_lsn_format(uint64_t lsn, char *buf, size_t len);

/** Parse "16/B374D848" into *out; 0 or GW_EINVAL. */
int gw_lsn_parse(const char *text, uint64_t *out);

#endif
