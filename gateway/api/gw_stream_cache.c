/* gw_stream_cache.c -- bucket checksums as of a checkpoint, remembered per loop thread
 *
 * A bucket's checksum and count as of checkpoint C never change once C is committed (ops after
 * C do not count; compaction keeps checksums; a new rule version has new bucket names). Clients
 * that reconnect to change their subscriptions ask for the same buckets at the same checkpoint
 * again and again, so each loop thread keeps the answers it read: a direct-mapped table of
 * CACHE_SLOTS entries by bucket name, an entry answering only for its checkpoint (a newer one
 * replaces it). Thread-local, so no locking; gw_stream.c calls gw__cks_free() when its loop
 * thread stops.
 */
#include "api/gw_stream_int.h"
#include "base/gw_err.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_SLOTS 8192 /* a power of two; ~0.5 MB per thread with typical names */

typedef struct cks_entry {
    char *name; /* owned */
    uint64_t as_of, count;
    uint32_t hash, checksum;
} cks_entry_t;

static __thread cks_entry_t *tl_cache;

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

int gw__cks_get(const char *bucket, uint64_t as_of, uint32_t *checksum, uint64_t *count)
{
    if (tl_cache == NULL) return 0;
    uint32_t h = name_hash(bucket);
    const cks_entry_t *e = &tl_cache[h & (CACHE_SLOTS - 1)];
    if (e->name == NULL || e->hash != h || e->as_of != as_of || strcmp(e->name, bucket) != 0)
        return 0;
    *checksum = e->checksum;
    *count = e->count;
    return 1;
}

void gw__cks_put(const char *bucket, uint64_t as_of, uint32_t checksum, uint64_t count)
{
    if (tl_cache == NULL) tl_cache = gw_xcalloc(CACHE_SLOTS, sizeof(cks_entry_t));
    uint32_t h = name_hash(bucket);
    cks_entry_t *e = &tl_cache[h & (CACHE_SLOTS - 1)];
    if (e->name == NULL || e->hash != h || strcmp(e->name, bucket) != 0) {
        free(e->name);
        e->name = gw_xstrdup(bucket);
        e->hash = h;
    }
    e->as_of = as_of;
    e->checksum = checksum;
    e->count = count;
}

void gw__cks_free(void)
{
    if (tl_cache == NULL) return;
    for (size_t i = 0; i < CACHE_SLOTS; i++)
        free(tl_cache[i].name);
    free(tl_cache);
    tl_cache = NULL;
}
