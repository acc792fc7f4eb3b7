/* gw_sqlite.h -- the embedded SQLite backend of bucket storage (kind "sqlite")
 *
 * One SQLite file in WAL mode (storage.path): the default backend. Everything it does is behind
 * the contract in storage/gw_storage.h; this header only names its operations table, for the
 * registry in storage/gw_storage.c. Nothing outside storage/ includes it (make lint).
 */
#ifndef GW_SQLITE_H
#define GW_SQLITE_H

#include "storage/gw_storage.h"

/** The SQLite backend's operations. */
extern const gw_storage_type_t gw_sqlite_type;

#endif
