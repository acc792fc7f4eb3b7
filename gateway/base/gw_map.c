/* gw_map.c -- string-keyed hash map with backward-shift deletion (see gw_map.h)
 *
 * Slots come from gw_map_hash(), SipHash-1-3 keyed once per process from getrandom(2), so the
 * probe sequences of client-chosen keys cannot be predicted (hash flooding). SipHash is written
 * here from its specification (Aumasson and Bernstein, 2012); the unit test checks it against
 * the paper's SipHash-2-4 test vector.
 */
#include "base/gw_map.h"
#include "base/gw_err.h"

#include <endian.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static inline uint64_t le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

#define SIPROUND(v0, v1, v2, v3)                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-c-d of len bytes under key words k0, k1; inlined with constant rounds, so the maps'
 * SipHash-1-3 compiles to straight-line code. */
static inline __attribute__((always_inline)) uint64_t
sip(uint64_t k0, uint64_t k1, const uint8_t *p, size_t len, int crounds, int drounds)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = le64(p + i);
        v3 ^= m;
        for (int r = 0; r < crounds; r++)
            SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    /* the last block: the remaining bytes, and the length's low byte on top */
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)p[whole + i] << (8 * i);
    v3 ^= b;
    for (int r = 0; r < crounds; r++)
        SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    for (int r = 0; r < drounds; r++)
        SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t gw_siphash(const uint8_t key[16], const void *data, size_t len, int crounds, int drounds)
{
    return sip(le64(key), le64(key + 8), data, len, crounds, drounds);
}

static uint8_t map_key[16];
static uint64_t map_k0, map_k1; /* map_key as SipHash's key words */
static pthread_once_t map_key_once = PTHREAD_ONCE_INIT;
static _Atomic int map_key_ready;

/* Fill map_key: getrandom(2), else /dev/urandom, else the clock and pid (no worse than
 * unkeyed, and it never fails the process). */
static void map_key_fill(void)
{
    size_t got = 0;
    while (got < sizeof(map_key)) {
        ssize_t n = getrandom(map_key + got, sizeof(map_key) - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got == sizeof(map_key)) return;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, map_key, sizeof(map_key));
        close(fd);
        if (n == (ssize_t)sizeof(map_key)) return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20),
             b = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&ts;
    memcpy(map_key, &a, 8);
    memcpy(map_key + 8, &b, 8);
}

/* Once per process (pthread_once): the key, and its words for sip(). */
static void map_key_init(void)
{
    map_key_fill();
    map_k0 = le64(map_key);
    map_k1 = le64(map_key + 8);
    atomic_store_explicit(&map_key_ready, 1, memory_order_release);
}

uint64_t gw_map_hash(const void *p, size_t len)
{
    if (!atomic_load_explicit(&map_key_ready, memory_order_acquire))
        pthread_once(&map_key_once, map_key_init);
    return sip(map_k0, map_k1, p, len, 1, 3);
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
    size_t i = find(m, key, gw_map_hash(key, strlen(key)));
    return m->slots[i].key != NULL ? m->slots[i].value : NULL;
}

void *gw_map_put(gw_map_t *m, const char *key, void *value)
{
    if ((m->n + 1) * 4 > m->cap * 3) grow(m);
    uint64_t h = gw_map_hash(key, strlen(key));
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
    size_t i = find(m, key, gw_map_hash(key, strlen(key)));
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
