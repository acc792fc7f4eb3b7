/* gw_pgs.h -- the Postgres backend of bucket storage (kind "postgres")
 *
 * Ferry's tables in a schema of their own (storage.schema, default "ferry") of a Postgres
 * database (storage.uri): the source cluster or another one. Several instances share it: the one
 * holding the schema's advisory lock replicates, every one serves. Everything it does is behind
 * the contract in storage/gw_storage.h; this header only names its operations table, for the
 * registry in storage/gw_storage.c. Nothing outside storage/ includes it (make lint).
 */
#ifndef GW_PGS_H
#define GW_PGS_H

#include "storage/gw_storage.h"

/** The Postgres backend's operations. */
extern const gw_storage_type_t gw_pgs_type;

#endif
