/* gw_map.c -- string-keyed hash map with backward-shift deletion (see gw_map.h) */
#include "base/gw_map.h"
#include "base/gw_err.h"

#include <stdlib.h>
#include <string.h>

uint64_t gw_hash(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

void gw_map_init(gw_map_t *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->n = 0;
}

static size_t find(const gw_map_t *m, const char *key, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const gw_map_entry_t *e = &m->slots[i];
        if (e->key == NULL || (e->hash == h && strcmp(e->key, key) == 0)) return i;
    }
}

static void grow(gw_map_t *m)
{
    size_t old_cap = m->cap;
    gw_map_entry_t *old = m->slots;
    m->cap = old_cap ? old_cap * 2 : 16;
    m->slots = gw_xcalloc(m->cap, sizeof(gw_map_entry_t));
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key != NULL) {
            size_t j = find(m, old[i].key, old[i].hash);
            m->slots[j] = old[i];
        }
    }
    free(old);
}

void *gw_map_get(const gw_map_t *m, const char *key)
{
    if (m->n == 0) return NULL;
    size_t i = find(m, key, gw_hash(key, strlen(key)));
    return m->slots[i].key != NULL ? m->slots[i].value : NULL;
}

void *gw_map_put(gw_map_t *m, const char *key, void *value)
{
    if ((m->n + 1) * 4 > m->cap * 3) grow(m);
    uint64_t h = gw_hash(key, strlen(key));
    size_t i = find(m, key, h);
    gw_map_entry_t *e = &m->slots[i];
    if (e->key != NULL) {
        void *prev = e->value;
        e->value = value;
        return prev;
    }
    e->key = gw_xstrdup(key);
    e->hash = h;
    e->value = value;
    m->n++;
    return NULL;
}

void *gw_map_del(gw_map_t *m, const char *key)
{
    if (m->n == 0) return NULL;
    size_t i = find(m, key, gw_hash(key, strlen(key)));
    if (m->slots[i].key == NULL) return NULL;
    void *value = m->slots[i].value;
    free(m->slots[i].key);
    m->slots[i].key = NULL;
    m->n--;
    size_t mask = m->cap - 1;
    /* backward-shift the following cluster so lookups never stop early */
    for (size_t j = (i + 1) & mask; m->slots[j].key != NULL; j = (j + 1) & mask) {
        gw_map_entry_t e = m->slots[j];
        m->slots[j].key = NULL;
        size_t k = find(m, e.key, e.hash);
        m->slots[k] = e;
    }
    return value;
}

void gw_map_each(const gw_map_t *m, void (*fn)(const char *key, void *value, void *ud), void *ud)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key != NULL) fn(m->slots[i].key, m->slots[i].value, ud);
}

void gw_map_free(gw_map_t *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    gw_map_init(m);
}
