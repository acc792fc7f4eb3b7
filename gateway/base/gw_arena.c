/* gw_arena.c -- bump allocator (see gw_arena.h)
 *
 * Invariant: head is the chunk being filled; older chunks follow through next. A request larger
 * than chunk_size gets a chunk of its own, linked behind head so head keeps filling.
 */
#include "base/gw_arena.h"
#include "base/gw_err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct gw_arena_chunk {
    gw_arena_chunk_t *next;
    size_t size; /* usable bytes in data */
    size_t used;
    _Alignas(16) unsigned char data[];
};

static gw_arena_chunk_t *chunk_new(size_t size)
{
    gw_arena_chunk_t *c = gw_xmalloc(sizeof(*c) + size);
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

void gw_arena_init(gw_arena_t *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size != 0 ? chunk_size : 16384;
    a->used_total = 0;
}

void *gw_arena_alloc(gw_arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    a->used_total += n;
    if (n > a->chunk_size / 2) {
        gw_arena_chunk_t *big = chunk_new(n);
        big->used = n;
        if (a->head == NULL) {
            a->head = big;
        } else {
            big->next = a->head->next;
            a->head->next = big;
        }
        return big->data;
    }
    if (a->head == NULL || a->head->size - a->head->used < n) {
        gw_arena_chunk_t *c = chunk_new(a->chunk_size);
        c->next = a->head;
        a->head = c;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t len)
{
    char *p = gw_arena_alloc(a, len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void gw_arena_reset(gw_arena_t *a)
{
    gw_arena_chunk_t *keep = NULL;
    for (gw_arena_chunk_t *c = a->head, *next; c != NULL; c = next) {
        next = c->next;
        if (keep == NULL && c->size == a->chunk_size) {
            keep = c;
            continue;
        }
        free(c);
    }
    if (keep != NULL) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->head = keep;
    a->used_total = 0;
}

void gw_arena_free(gw_arena_t *a)
{
    for (gw_arena_chunk_t *c = a->head, *next; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
    a->used_total = 0;
}
