/* gw_map.h -- a string-keyed hash map (open addressing, linear probing)
 *
 * Keys are copied and owned by the map; values are opaque pointers owned by the caller. Not
 * thread-safe. Used for caches on hot paths (bucket name -> bucket state, relid -> relation).
 *
 * Keys may come from clients (bucket names in a sync request), so slots are chosen by a keyed
 * hash (SipHash-1-3 under a random key drawn once per process): nobody outside the process can
 * compute which keys share a slot, and a crafted set of keys costs what random keys cost.
 * gw_hash() is the unkeyed FNV-1a, stable across processes; it fingerprints content (the rules
 * hash stored in bucket storage) and must never choose slots for client-supplied keys.
 */
#ifndef GW_MAP_H
#define GW_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_map_entry {
    char *key; /* NULL: empty slot */
    uint64_t hash;
    void *value;
} gw_map_entry_t;

typedef struct gw_map {
    gw_map_entry_t *slots;
    size_t cap; /* power of two */
    size_t n;
} gw_map_t;

/** FNV-1a of len bytes: stable across processes, for fingerprints, not for hash tables. */
uint64_t gw_hash(const void *p, size_t len);

/** SipHash with crounds/drounds rounds (2/4 is SipHash-2-4) of len bytes under a 16-byte key. */
uint64_t gw_siphash(const uint8_t key[16], const void *p, size_t len, int crounds, int drounds);

/** The maps' slot hash: SipHash-1-3 of len bytes under this process's random key. */
uint64_t gw_map_hash(const void *p, size_t len);

/** The number of keys stored. */
static inline size_t gw_map_count(const gw_map_t *m)
{
    return m->n;
}

/** Initialise an empty map. */
void gw_map_init(gw_map_t *m);

/** The value stored under key, or NULL. */
void *gw_map_get(const gw_map_t *m, const char *key);

/** Store value under key (replacing); returns the previous value or NULL. */
void *gw_map_put(gw_map_t *m, const char *key, void *value);

/** Remove key; returns its value or NULL. */
void *gw_map_del(gw_map_t *m, const char *key);

/** Call fn for every entry (order unspecified); fn must not change the map. */
void gw_map_each(const gw_map_t *m, void (*fn)(const char *key, void *value, void *ud), void *ud);

/** Release the keys and slots (values are the caller's). */
void gw_map_free(gw_map_t *m);

#endif
