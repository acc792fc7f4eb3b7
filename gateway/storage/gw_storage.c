/* gw_storage.c -- the storage contract's own part: backends by kind, publication, shared keys
 *
 * Everything a backend does is behind its operations table (gw_storage.h); what does not depend
 * on a backend lives here: finding the backend a storage.kind names, opening writers and readers
 * through it, the published checkpoint readers of this process serve, and the state keys every
 * rule version shares. A new backend adds its table to `backends` below.
 */
#include "storage/gw_storage.h"
#include "storage/postgres/gw_pgs.h"
#include "storage/sqlite/gw_sqlite.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- backends ---- */

static const gw_storage_type_t *const backends[] = {&gw_sqlite_type, &gw_pgs_type};

/* The backend kind names (NULL or "": the first one, the default); NULL when none. */
static const gw_storage_type_t *find_backend(const char *kind)
{
    if (kind == NULL || kind[0] == '\0') return backends[0];
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strcmp(backends[i]->kind, kind) == 0) return backends[i];
    return NULL;
}

int gw_storage_kind_known(const char *kind)
{
    return find_backend(kind) != NULL;
}

static const char *kinds[sizeof(backends) / sizeof(backends[0]) + 1];
static pthread_once_t kinds_once = PTHREAD_ONCE_INIT;

static void kinds_fill(void)
{
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        kinds[i] = backends[i]->kind;
}

const char *const *gw_storage_kinds(void)
{
    pthread_once(&kinds_once, kinds_fill);
    return kinds;
}

static int unknown_kind(const gw_storage_opts_t *opts, gw_err_t *err)
{
    return gw_err_set(err, GW_ECONFIG, "storage.kind", "unknown storage kind \"%s\"", opts->kind);
}

int gw_storage_open_version(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                            gw_err_t *err)
{
    const gw_storage_type_t *t = find_backend(opts->kind);
    if (t == NULL) return unknown_kind(opts, err);
    int rc = t->open(opts, version, out, err);
    if (rc == 0) {
        (*out)->type = t;
        (*out)->opts = opts;
    }
    return rc;
}

int gw_storage_open(const gw_storage_opts_t *opts, gw_storage_t **out, gw_err_t *err)
{
    return gw_storage_open_version(opts, NULL, out, err);
}

int gw_storage_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err)
{
    const gw_storage_type_t *t = find_backend(opts->kind);
    if (t == NULL) return unknown_kind(opts, err);
    int rc = t->reader_open(opts, out, err);
    if (rc == 0) {
        (*out)->type = t;
        (*out)->opts = opts;
    }
    return rc;
}

uint64_t gw_storage_size(const gw_storage_opts_t *opts)
{
    const gw_storage_type_t *t = find_backend(opts->kind);
    return t != NULL ? t->size(opts) : 0;
}

/* ---- the published checkpoint ---- */

struct gw_storage_pub {
    pthread_mutex_t lock;
    int set; /* a checkpoint was published */
    gw_storage_cp_t cp;
};

gw_storage_pub_t *gw_storage_pub_new(void)
{
    gw_storage_pub_t *p = gw_xcalloc(1, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    return p;
}

void gw_storage_pub_free(gw_storage_pub_t *p)
{
    if (p == NULL) return;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void gw_storage_pub_offer(gw_storage_pub_t *p, const _Atomic int *serving,
                          const gw_storage_cp_t *cp)
{
    if (p == NULL) return;
    pthread_mutex_lock(&p->lock);
    if (atomic_load(serving)) {
        p->cp = *cp;
        p->set = 1;
    }
    pthread_mutex_unlock(&p->lock);
}

void gw_storage_pub_serve(gw_storage_pub_t *p, _Atomic int *serving, int on,
                          const gw_storage_cp_t *cp)
{
    if (p == NULL) {
        atomic_store(serving, on != 0);
        return;
    }
    /* under the lock: a job the old serving writer is publishing cannot land after the new
     * serving writer's checkpoint */
    pthread_mutex_lock(&p->lock);
    atomic_store(serving, on != 0);
    if (on) {
        p->cp = *cp;
        p->set = 1;
    }
    pthread_mutex_unlock(&p->lock);
}

int gw_storage_pub_get(gw_storage_pub_t *p, gw_storage_cp_t *out)
{
    if (p == NULL) return 0;
    pthread_mutex_lock(&p->lock);
    int set = p->set;
    if (set) *out = p->cp;
    pthread_mutex_unlock(&p->lock);
    return set;
}

/* ---- shared state keys ---- */

int gw_storage_key_shared(const char *key)
{
    static const char *const keys[] = {GW_STATE_LAYOUT,   GW_STATE_NEXT_OP,   GW_STATE_SERVING,
                                       GW_STATE_BUILDING, GW_STATE_SOURCE_ID, GW_STATE_VERSION_SEQ,
                                       GW_STATE_RETIRED};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(key, keys[i]) == 0) return 1;
    return 0;
}
