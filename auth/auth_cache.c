/* auth_cache.c -- remember verified tokens so reconnect storms skip signature checks
 *
 * A bounded, set-associative table keyed by the SHA-256 of the token's bytes (the token itself is
 * not stored). Each set holds up to 8 entries under a striped mutex; a new entry replaces, in
 * order, an entry for the same hash, an empty one, one verified under an older key set
 * (generation), and otherwise the one that expires first (so expired entries go first). An entry is
 * only returned for the current key-set generation, so a key removed from a JWKS stops admitting
 * cached tokens at the refresh that removes it, and only while the token is unexpired (exp +
 * leeway).
 */
#include "auth_int.h"

#include <stdlib.h>
#include <string.h>

#define WAYS      8
#define MAX_LOCKS 256

typedef struct slot {
    unsigned char h[32];
    unsigned long long gen;
    long long exp;
    auth_token_t *tok; /* NULL: empty */
} slot_t;

struct auth_cache {
    size_t nsets, ways, nlocks;
    slot_t *slots;
    pthread_mutex_t *locks;
    unsigned long long hits, misses; /* atomic, relaxed */
    size_t entries;                  /* atomic, relaxed */
};

auth_cache_t *auth__cache_new(size_t entries)
{
    if (entries == 0) return NULL;
    auth_cache_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return NULL;
    c->ways = entries < WAYS ? entries : WAYS;
    c->nsets = entries / c->ways;
    c->nlocks = c->nsets < MAX_LOCKS ? c->nsets : MAX_LOCKS;
    c->slots = calloc(c->nsets * c->ways, sizeof(slot_t));
    c->locks = calloc(c->nlocks, sizeof(pthread_mutex_t));
    if (c->slots == NULL || c->locks == NULL) {
        free(c->slots);
        free(c->locks);
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < c->nlocks; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
}

void auth__cache_free(auth_cache_t *c)
{
    if (c == NULL) return;
    for (size_t i = 0; i < c->nsets * c->ways; i++)
        auth_token_release(c->slots[i].tok);
    for (size_t i = 0; i < c->nlocks; i++)
        pthread_mutex_destroy(&c->locks[i]);
    free(c->slots);
    free(c->locks);
    free(c);
}

/* One digest context per thread, reused: a fresh EVP fetch per token would cost more than the
 * hash itself. */
static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void md_ctx_free(void *p)
{
    EVP_MD_CTX_free(p);
}

static void md_init(void)
{
    pthread_key_create(&md_key, md_ctx_free);
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void auth__hash_token(const char *token, size_t len, unsigned char out[32])
{
    pthread_once(&md_once, md_init);
    EVP_MD_CTX *md = pthread_getspecific(md_key);
    if (md == NULL && (md = EVP_MD_CTX_new()) != NULL) pthread_setspecific(md_key, md);
    unsigned int n = 32;
    if (md == NULL || sha256_md == NULL || EVP_DigestInit_ex2(md, sha256_md, NULL) != 1 ||
        EVP_DigestUpdate(md, token, len) != 1 || EVP_DigestFinal_ex(md, out, &n) != 1)
        memset(out, 0, 32); /* all-zero never matches: lookups with it are skipped */
}

static int zero_hash(const unsigned char h[32])
{
    static const unsigned char z[32];
    return memcmp(h, z, 32) == 0;
}

static size_t set_of(const auth_cache_t *c, const unsigned char h[32])
{
    unsigned long long v;
    memcpy(&v, h, sizeof(v));
    return (size_t)(v % c->nsets);
}

auth_token_t *auth__cache_get(auth_cache_t *c, const unsigned char h[32], unsigned long long gen,
                              long long now, long leeway)
{
    if (c == NULL || zero_hash(h)) return NULL;
    size_t set = set_of(c, h);
    slot_t *s = &c->slots[set * c->ways];
    pthread_mutex_t *lock = &c->locks[set % c->nlocks];
    auth_token_t *found = NULL, *drop = NULL;
    pthread_mutex_lock(lock);
    for (size_t i = 0; i < c->ways; i++) {
        if (s[i].tok == NULL || memcmp(s[i].h, h, 32) != 0) continue;
        if (s[i].gen == gen && now <= s[i].exp + leeway) {
            found = auth_token_ref(s[i].tok);
        } else {
            drop = s[i].tok;
            s[i].tok = NULL;
            __atomic_sub_fetch(&c->entries, 1, __ATOMIC_RELAXED);
        }
        break;
    }
    pthread_mutex_unlock(lock);
    auth_token_release(drop);
    __atomic_add_fetch(found ? &c->hits : &c->misses, 1, __ATOMIC_RELAXED);
    return found;
}

void auth__cache_put(auth_cache_t *c, const unsigned char h[32], unsigned long long gen,
                     auth_token_t *tok)
{
    if (c == NULL || zero_hash(h)) return;
    size_t set = set_of(c, h);
    slot_t *s = &c->slots[set * c->ways];
    pthread_mutex_t *lock = &c->locks[set % c->nlocks];
    auth_token_t *drop = NULL;
    pthread_mutex_lock(lock);
    slot_t *victim = NULL;
    for (size_t i = 0; i < c->ways && victim == NULL; i++)
        if (s[i].tok != NULL && memcmp(s[i].h, h, 32) == 0) victim = &s[i];
    for (size_t i = 0; i < c->ways && victim == NULL; i++)
        if (s[i].tok == NULL) victim = &s[i];
    for (size_t i = 0; i < c->ways && victim == NULL; i++)
        if (s[i].gen != gen) victim = &s[i];
    if (victim == NULL) {
        victim = &s[0];
        for (size_t i = 1; i < c->ways; i++)
            if (s[i].exp < victim->exp) victim = &s[i];
    }
    if (victim->tok == NULL) __atomic_add_fetch(&c->entries, 1, __ATOMIC_RELAXED);
    drop = victim->tok;
    memcpy(victim->h, h, 32);
    victim->gen = gen;
    victim->exp = tok->exp;
    victim->tok = auth_token_ref(tok);
    pthread_mutex_unlock(lock);
    auth_token_release(drop);
}

void auth__cache_stats(auth_cache_t *c, unsigned long long *hits, unsigned long long *misses,
                       size_t *entries)
{
    if (hits) *hits = c ? __atomic_load_n(&c->hits, __ATOMIC_RELAXED) : 0;
    if (misses) *misses = c ? __atomic_load_n(&c->misses, __ATOMIC_RELAXED) : 0;
    if (entries) *entries = c ? __atomic_load_n(&c->entries, __ATOMIC_RELAXED) : 0;
}
