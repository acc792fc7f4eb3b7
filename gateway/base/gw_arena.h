/* gw_arena.h -- bump allocator for memory with one lifespan (a message, a request body)
 *
 * Allocations come from chunks and are freed all at once by gw_arena_reset() (keeps the first
 * chunk for reuse) or gw_arena_free(). Not thread-safe: one arena belongs to one thread.
 * Aborts on OOM like the rest of the gateway.
 */
#ifndef GW_ARENA_H
#define GW_ARENA_H

#include <stddef.h>

typedef struct gw_arena_chunk gw_arena_chunk_t;

typedef struct gw_arena {
    gw_arena_chunk_t *head; /* newest chunk first */
    size_t chunk_size;      /* default size of new chunks */
    size_t used_total;      /* bytes handed out since the last reset */
} gw_arena_t;

/** Initialise an empty arena whose chunks are chunk_size bytes (0: 16 KiB). */
void gw_arena_init(gw_arena_t *a, size_t chunk_size);

/** Return n bytes aligned to 16, valid until the next reset/free; never NULL. The arena owns it. */
void *gw_arena_alloc(gw_arena_t *a, size_t n);

/** Copy len bytes of s into the arena and NUL-terminate; the arena owns the copy. */
char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t len);

/** Forget every allocation; keeps one chunk for reuse. */
void gw_arena_reset(gw_arena_t *a);

/** Release every chunk; the arena may be initialised again. */
void gw_arena_free(gw_arena_t *a);

#endif
