/* gw_writer.c -- what every backend's storage writer does in memory (see gw_writer.h)
 *
 * Buckets: every bucket's totals live in memory (a map by name and an array by id), loaded by the
 * backend and kept up to date as ops are written; the backend writes the dirty ones at commit. A
 * bucket's checksum as of an older checkpoint C is its running total minus the ops after C, which
 * are few and recent (the readers' business). Ops: a transaction's ops wait in memory, linked per
 * bucket, and each bucket's run is written as one chunk at commit: one insert per bucket per
 * commit, appended in id order. Rows: per source row its bucket memberships (5 bytes each in the
 * usual case), its parameter-lookup text and a copy of its long values, rewritten only when one of
 * them changed. Lookups are versioned by op id (valid in [from_op, to_op)), so readers answer
 * them as of a checkpoint.
 */
#include "storage/gw_writer.h"
#include "base/gw_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Each queued op is a record behind a 4-byte link to the next op of its bucket. */
enum { PEND_LINK = 4 };

void gw_writer_init(gw_writer_t *w, const gw_writer_io_t *io, void *ud)
{
    w->io = io;
    w->ud = ud;
    gw_map_init(&w->by_name);
}

void gw_writer_free(gw_writer_t *w)
{
    gw_writer_drop_buckets(w);
    free(w->touched);
    for (size_t i = 0; i < w->nlookup_keys; i++)
        free(w->lookup_keys[i]);
    free(w->lookup_keys);
    gw_buf_free(&w->pend);
    gw_buf_free(&w->chunk);
    free(w->pend_buckets);
    gw_buf_free(&w->members);
    gw_buf_free(&w->ns_tbl);
    gw_buf_free(&w->ns_lkey);
    free(w->filter);
    w->filter = NULL;
}

/* ---- namespace ---- */

void gw_writer_set_version(gw_writer_t *w, const char *version)
{
    if (version[0] != '\0')
        snprintf(w->version, sizeof(w->version), "%s#", version);
    else
        w->version[0] = '\0';
    gw_buf_reset(&w->ns_tbl);
}

int gw_writer_own_name(const gw_writer_t *w, const char *name)
{
    return strncmp(name, w->version, strlen(w->version)) == 0;
}

void gw_writer_ns_range(const char *ns, char *lo, char *hi, size_t len)
{
    snprintf(lo, len, "%s", ns);
    if (ns[0] == '\0') {
        snprintf(hi, len, "\xff");
        return;
    }
    snprintf(hi, len, "%s", ns);
    hi[strlen(hi) - 1] = '$'; /* '#' + 1 */
}

/* The last one is kept, since a transaction's rows mostly come from a few tables. */
const char *gw_writer_ns_table(gw_writer_t *w, const char *table)
{
    size_t vlen = strlen(w->version);
    if (w->ns_tbl.data == NULL || w->ns_tbl.len < vlen ||
        memcmp(w->ns_tbl.data, w->version, vlen) != 0 ||
        strcmp(w->ns_tbl.data + vlen, table) != 0) {
        gw_buf_reset(&w->ns_tbl);
        gw_buf_puts(&w->ns_tbl, w->version);
        gw_buf_puts(&w->ns_tbl, table);
    }
    return w->ns_tbl.data;
}

const char *gw_writer_ns_key(gw_writer_t *w, const char *key)
{
    gw_buf_reset(&w->ns_lkey);
    gw_buf_puts(&w->ns_lkey, w->version);
    gw_buf_puts(&w->ns_lkey, key);
    return w->ns_lkey.data;
}

/* ---- the bucket cache ---- */

static void index_bucket(gw_writer_t *w, gw_wbucket_t *b)
{
    if ((size_t)b->id >= w->by_id_cap) {
        size_t cap = w->by_id_cap ? w->by_id_cap : 1024;
        while (cap <= (size_t)b->id)
            cap *= 2;
        w->by_id = gw_xrealloc(w->by_id, cap * sizeof(gw_wbucket_t *));
        memset(w->by_id + w->by_id_cap, 0, (cap - w->by_id_cap) * sizeof(gw_wbucket_t *));
        w->by_id_cap = cap;
    }
    w->by_id[b->id] = b;
    gw_map_put(&w->by_name, b->name, b);
}

static void free_bucket(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    gw_wbucket_t *b = value;
    free(b->name);
    free(b);
}

void gw_writer_drop_buckets(gw_writer_t *w)
{
    gw_map_each(&w->by_name, free_bucket, NULL);
    gw_map_free(&w->by_name);
    gw_map_init(&w->by_name);
    free(w->by_id);
    w->by_id = NULL;
    w->by_id_cap = 0;
}

void gw_writer_load_bucket(gw_writer_t *w, int64_t id, const char *name, uint32_t checksum,
                           uint64_t count, uint64_t last_op)
{
    gw_wbucket_t *b = gw_xcalloc(1, sizeof(*b));
    b->id = id;
    b->name = gw_xstrdup(name);
    b->checksum = checksum;
    b->count = count;
    b->last_op = last_op;
    index_bucket(w, b);
    if (gw_writer_own_name(w, b->name)) { /* totals count this version's buckets only */
        atomic_fetch_add(&w->n_buckets, 1);
        atomic_fetch_add(&w->n_ops, b->count);
    }
}

gw_wbucket_t *gw_writer_bucket(gw_writer_t *w, const char *name)
{
    return gw_map_get(&w->by_name, name);
}

void gw_writer_forget_version(gw_writer_t *w, const char *ns)
{
    for (size_t id = 0; id < w->by_id_cap; id++) {
        gw_wbucket_t *b = w->by_id[id];
        if (b == NULL || strncmp(b->name, ns, strlen(ns)) != 0) continue;
        gw_map_del(&w->by_name, b->name);
        w->by_id[id] = NULL;
        free(b->name);
        free(b);
    }
}

/* The bucket name, created when new. */
static gw_wbucket_t *bucket_get(gw_writer_t *w, const char *name, gw_err_t *err)
{
    gw_wbucket_t *b = gw_map_get(&w->by_name, name);
    if (b != NULL) return b;
    int64_t id;
    if (w->io->bucket_create(w->ud, name, &id, err) != 0) return NULL;
    b = gw_xcalloc(1, sizeof(*b));
    b->id = id;
    b->name = gw_xstrdup(name);
    b->is_new = 1;
    index_bucket(w, b);
    atomic_fetch_add(&w->n_buckets, 1);
    return b;
}

static void touch(gw_writer_t *w, gw_wbucket_t *b)
{
    b->dirty = 1;
    if (b->touched_gen == w->gen) return;
    b->touched_gen = w->gen;
    if (w->ntouched == w->cap_touched) {
        w->cap_touched = w->cap_touched ? w->cap_touched * 2 : 64;
        w->touched = gw_xrealloc(w->touched, w->cap_touched * sizeof(char *));
    }
    w->touched[w->ntouched++] = b->name;
}

/* ---- transactions and the op queue ---- */

void gw_writer_begin(gw_writer_t *w, uint64_t stored_next_op)
{
    /* the op-id sequence is shared with a writer building another rule version beside this one:
     * take it up where the last commit of either left it */
    if (stored_next_op > w->next_op) w->next_op = stored_next_op;
    w->gen++;
    w->ntouched = 0;
    for (size_t i = 0; i < w->nlookup_keys; i++)
        free(w->lookup_keys[i]);
    w->nlookup_keys = 0;
    w->txn_last_op = w->last_op;
    w->commit_us = 0;
    w->commit_lsn = 0;
}

void gw_writer_set_commit_time(gw_writer_t *w, int64_t unix_us)
{
    w->commit_us = unix_us;
}

int64_t gw_writer_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void gw_writer_stamp(gw_writer_t *w, uint64_t lsn)
{
    w->commit_lsn = lsn;
    if (w->commit_us == 0) w->commit_us = gw_writer_now_us();
}

int gw_writer_flush_pending(gw_writer_t *w, gw_err_t *err)
{
    int rc = 0;
    gw_buf_t *c = &w->chunk;
    /* before its commit (a large transaction's ops): the clock now, the LSN unknown */
    int64_t stamp = w->commit_us != 0 || w->npend_buckets == 0 ? w->commit_us : gw_writer_now_us();
    for (size_t i = 0; i < w->npend_buckets && rc == 0; i++) {
        gw_wbucket_t *b = w->pend_buckets[i];
        size_t at = b->pend_head;
        while (at != 0 && rc == 0) {
            gw_buf_reset(c);
            uint64_t first = 0, last = 0, n = 0;
            uint32_t sum = 0;
            while (at != 0 && n < GW_CHUNK_MAX_OPS && c->len < GW_CHUNK_MAX_BYTES) {
                const unsigned char *e = (const unsigned char *)w->pend.data + at - 1;
                uint32_t next;
                memcpy(&next, e, PEND_LINK);
                gw_oprec_t r = {0}; /* the queue holds whole records: the read cannot fail */
                gw_oprec_read(e + PEND_LINK, w->pend.len - (at - 1) - PEND_LINK, &r);
                gw_buf_append(c, e + PEND_LINK, r.size);
                if (n++ == 0) first = r.op_id;
                last = r.op_id;
                sum += r.checksum;
                at = next;
            }
            rc = w->io->chunk_insert(w->ud, b->id, first, last, n, sum, c, stamp, w->commit_lsn,
                                     err);
        }
        b->pend_head = b->pend_tail = 0;
    }
    w->npend_buckets = 0;
    gw_buf_reset(&w->pend);
    if (c->cap > 4 * GW_CHUNK_MAX_BYTES) gw_buf_free(c);
    return rc;
}

void gw_writer_discard_pending(gw_writer_t *w)
{
    gw_buf_reset(&w->pend);
    w->npend_buckets = 0;
}

/* Queue an op of bucket b, its body encoded once, here or ahead by another thread (tail); the
 * wire JSON {"op_id":"N","op":"PUT","checksum":C,"object_type":…,"object_id":…,"subkey":…,
 * "data":"…"} is rendered from it by readers (checksum before the identity, so the identity is
 * one contiguous span). */
static int write_op(gw_writer_t *w, gw_wbucket_t *b, int op, const char *type, const char *id,
                    const char *subkey, const char *data, uint32_t checksum,
                    const gw_op_tail_t *tail, gw_err_t *err)
{
    uint64_t op_id = w->next_op++;
    gw_buf_t *l = &w->pend;
    size_t at = l->len;
    static const unsigned char zero[PEND_LINK + GW_OPREC_HDR];
    gw_buf_append(l, zero, sizeof(zero));
    size_t line_at = l->len;
    size_t ident_at, ident_end;
    if (tail != NULL) {
        ident_at = l->len + tail->ident_off;
        ident_end = ident_at + tail->ident_len;
        gw_buf_append(l, tail->text, tail->len);
    } else {
        gw_oprec_encode_body(l, op, type, id, subkey, data, &ident_at, &ident_end);
    }
    /* fill in the record header and link it behind the bucket's last pending op */
    unsigned char *e = (unsigned char *)l->data + at;
    uint32_t io = (uint32_t)(ident_at - line_at), il = (uint32_t)(ident_end - ident_at);
    uint32_t ll = (uint32_t)(l->len - line_at);
    memcpy(e + PEND_LINK, &op_id, 8);
    memcpy(e + PEND_LINK + 8, &checksum, 4);
    e[PEND_LINK + 12] = (unsigned char)op;
    memcpy(e + PEND_LINK + 13, &io, 4);
    memcpy(e + PEND_LINK + 17, &il, 4);
    memcpy(e + PEND_LINK + 21, &ll, 4);
    uint32_t self = (uint32_t)at + 1;
    if (b->pend_tail != 0) {
        memcpy(l->data + b->pend_tail - 1, &self, PEND_LINK);
    } else {
        if (w->npend_buckets == w->cap_pend_buckets) {
            w->cap_pend_buckets = w->cap_pend_buckets ? w->cap_pend_buckets * 2 : 256;
            w->pend_buckets =
                gw_xrealloc(w->pend_buckets, w->cap_pend_buckets * sizeof(gw_wbucket_t *));
        }
        w->pend_buckets[w->npend_buckets++] = b;
        b->pend_head = self;
    }
    b->pend_tail = self;
    b->checksum += checksum;
    b->count++;
    atomic_fetch_add(&w->n_ops, 1);
    b->last_op = op_id;
    w->txn_last_op = op_id;
    touch(w, b);
    return l->len >= GW_WRITER_PEND_MAX ? gw_writer_flush_pending(w, err) : 0;
}

/* ---- the row filter ---- */

enum { FILTER_MIN_BITS = 1u << 23, FILTER_MAX_BITS = 1u << 26 }; /* 1 MB .. 8 MB */

static uint64_t row_hash(const char *tbl, const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, then a final mix */
    for (const unsigned char *p = (const unsigned char *)tbl; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separator no table name contains */
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Three probes by double hashing over the filter's bits. */
static void filter_add_hash(gw_writer_t *w, uint64_t h)
{
    uint64_t a = h, b = (h >> 32) | 1, mask = w->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        w->filter[(a & mask) >> 6] |= 1ull << (a & 63);
}

static int filter_maybe(const gw_writer_t *w, const gw_row_ref_t *ref)
{
    if (w->filter == NULL) return 1;
    uint64_t h = row_hash(ref->table, ref->key);
    uint64_t a = h, b = (h >> 32) | 1, mask = w->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        if ((w->filter[(a & mask) >> 6] & (1ull << (a & 63))) == 0) return 0;
    return 1;
}

int gw_writer_maybe_stored(const gw_writer_t *w, const gw_row_ref_t *ref)
{
    return filter_maybe(w, ref);
}

int gw_writer_filter_reset(gw_writer_t *w, uint64_t rows)
{
    free(w->filter);
    w->filter = NULL;
    size_t bits = FILTER_MIN_BITS;
    while (bits < FILTER_MAX_BITS && bits < rows * 32)
        bits *= 2;
    if (rows * 16 > bits)
        return 0; /* too many rows for a useful filter within the cap: always look rows up */
    uint64_t *f = calloc(bits / 64, sizeof(uint64_t));
    if (f == NULL) return 0;
    w->filter = f;
    w->filter_bits = bits;
    w->filter_keys = 0;
    return 1;
}

void gw_writer_filter_add(gw_writer_t *w, const char *tbl, const char *key)
{
    if (w->filter == NULL) return;
    filter_add_hash(w, row_hash(tbl, key));
    w->filter_keys++;
}

void gw_writer_filter_off(gw_writer_t *w)
{
    free(w->filter);
    w->filter = NULL;
}

/* Note a stored row; a filter too full for its false-positive rate is rebuilt larger by the
 * backend (io->filter_rebuild), or turned off at its cap. */
static void filter_note(gw_writer_t *w, const gw_row_ref_t *ref, void (*rebuild)(void *, uint64_t))
{
    if (w->filter == NULL) return;
    filter_add_hash(w, row_hash(ref->table, ref->key));
    if (++w->filter_keys * 12 <= w->filter_bits) return;
    if (w->filter_bits >= FILTER_MAX_BITS || rebuild == NULL) {
        gw_writer_filter_off(w); /* at the cap: stop filtering rather than rebuild again */
        return;
    }
    rebuild(w->ud, w->filter_keys);
}

/* ---- rows ---- */

/* Memberships: [u32 bucket id][u8 flags] then [u16 type len][type] unless flags & M_TYPE (the
 * type is the row's table name without its schema) and [u16 id len][id] unless flags & M_ID (the
 * id is the row's key), repeated: the usual membership takes 5 bytes, so stored rows stay small
 * (every commit rewrites the rows it touched). */
enum { M_TYPE = 1, M_ID = 2 };

typedef struct member {
    int64_t bucket_id;
    const char *type;
    size_t tlen;
    const char *id;
    size_t ilen;
} member_t;

/* The table name without its schema: "public.todos" -> "todos". */
static const char *bare_table(const char *table)
{
    const char *dot = strchr(table, '.');
    return dot != NULL ? dot + 1 : table;
}

/* One string of a membership: implied (then it is `value`) or [u16 n][bytes] at *q. 0 when
 * malformed. */
static int member_str(const unsigned char **q, const unsigned char *end, int implied,
                      const char *value, const char **str, size_t *n)
{
    if (implied) {
        *str = value;
        *n = strlen(value);
        return 1;
    }
    uint16_t len;
    if (end - *q < 2) return 0;
    memcpy(&len, *q, 2);
    if (end - *q < 2 + len) return 0;
    *str = (const char *)*q + 2;
    *n = len;
    *q += 2 + len;
    return 1;
}

static void put_member_str(gw_buf_t *out, int implied, const char *str)
{
    if (implied) return;
    uint16_t len = (uint16_t)strnlen(str, 65535);
    gw_buf_append(out, &len, 2);
    gw_buf_append(out, str, len);
}

static int next_member(const unsigned char **p, const unsigned char *end, const gw_row_ref_t *ref,
                       member_t *m)
{
    if (end - *p < 5) return 0;
    uint32_t bid;
    memcpy(&bid, *p, 4);
    unsigned flags = (*p)[4];
    const unsigned char *q = *p + 5;
    m->bucket_id = bid;
    if (!member_str(&q, end, flags & M_TYPE, bare_table(ref->table), &m->type, &m->tlen) ||
        !member_str(&q, end, flags & M_ID, ref->key, &m->id, &m->ilen))
        return 0;
    *p = q;
    return 1;
}

static void add_member(gw_buf_t *out, const gw_row_ref_t *ref, int64_t bucket_id, const char *type,
                       const char *id)
{
    uint32_t bid = (uint32_t)bucket_id;
    unsigned char flags = (unsigned char)((strcmp(type, bare_table(ref->table)) == 0 ? M_TYPE : 0) |
                                          (strcmp(id, ref->key) == 0 ? M_ID : 0));
    gw_buf_append(out, &bid, 4);
    gw_buf_append(out, &flags, 1);
    put_member_str(out, flags & M_TYPE, type);
    put_member_str(out, flags & M_ID, id);
}

/* Whether bucket id exists and belongs to the current rule version (older versions' buckets
 * get no REMOVEs while the new version re-snapshots; they are dropped whole afterwards). */
static int live_bucket(const gw_writer_t *w, int64_t id)
{
    if ((size_t)id >= w->by_id_cap || w->by_id[id] == NULL) return 0;
    size_t n = strlen(w->version);
    return n == 0 || strncmp(w->by_id[id]->name, w->version, n) == 0;
}

static void note_lookup_key(gw_writer_t *w, const char *key)
{
    for (size_t i = 0; i < w->nlookup_keys; i++)
        if (strcmp(w->lookup_keys[i], key) == 0) return;
    if (w->nlookup_keys == w->cap_lookup_keys) {
        w->cap_lookup_keys = w->cap_lookup_keys ? w->cap_lookup_keys * 2 : 16;
        w->lookup_keys = gw_xrealloc(w->lookup_keys, w->cap_lookup_keys * sizeof(char *));
    }
    w->lookup_keys[w->nlookup_keys++] = gw_xstrdup(key);
}

/* Lookups text of a row: "key\tparams\n" per entry, in the rules' order. */
static void lookups_text(const rules_lookups_t *l, gw_buf_t *out)
{
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        gw_buf_puts(out, l->items[i].key);
        gw_buf_puts(out, "\t");
        gw_buf_puts(out, l->items[i].params);
        gw_buf_puts(out, "\n");
    }
}

/* Close the row's current lookup entries and open new ones; remember changed keys. */
static int replace_lookups(gw_writer_t *w, const gw_row_ref_t *ref, const char *old_text,
                           const rules_lookups_t *l, gw_err_t *err)
{
    uint64_t op_id = w->next_op++; /* lookups share the op-id sequence */
    w->txn_last_op = op_id;
    int rc = w->io->lookups_close(w->ud, gw_writer_ns_table(w, ref->table), ref->key, op_id, err);
    if (rc != 0) return rc;
    /* keys of the old entries changed too */
    for (const char *p = old_text; p != NULL && *p != '\0';) {
        const char *tab = strchr(p, '\t');
        const char *nl = strchr(p, '\n');
        if (tab == NULL || nl == NULL) break;
        char key[1024];
        snprintf(key, sizeof(key), "%.*s", (int)(tab - p), p);
        note_lookup_key(w, key);
        p = nl + 1;
    }
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        /* the namespaced key, then the namespaced table (each helper keeps its own buffer) */
        const char *key = gw_writer_ns_key(w, l->items[i].key);
        rc = w->io->lookup_insert(w->ud, key, gw_writer_ns_table(w, ref->table), ref->key,
                                  l->items[i].params, op_id, err);
        if (rc != 0) return rc;
        note_lookup_key(w, l->items[i].key);
    }
    return 0;
}

int gw_writer_put_row(gw_writer_t *w, const gw_row_ref_t *ref, const rules_ops_t *ops,
                      const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                      size_t copy_len, gw_err_t *err)
{
    char subkey[2048];
    gw_storage_subkey(ref->table, ref->key, subkey, sizeof(subkey));
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT, new_lookups = GW_BUF_INIT;
    int rc = 0, found = 0, copy_same = 0;
    if (filter_maybe(w, ref)) {
        found = w->io->row_load(w->ud, gw_writer_ns_table(w, ref->table), ref->key, &old_members,
                                &old_lookups, copy, copy_len, &copy_same, err);
        if (found < 0) rc = found;
    }
    gw_buf_reset(&w->members);
    /* PUT every current membership */
    for (size_t i = 0; ops != NULL && i < ops->n && rc == 0; i++) {
        const rules_op_t *o = &ops->items[i];
        gw_wbucket_t *b = bucket_get(w, o->bucket, err);
        if (b == NULL) {
            rc = GW_EIO;
            break;
        }
        rc = write_op(w, b, GW_OP_PUT, o->object_type, o->object_id, subkey, o->data, o->checksum,
                      tails != NULL && tails[i].text != NULL ? &tails[i] : NULL, err);
        add_member(&w->members, ref, b->id, o->object_type, o->object_id);
    }
    /* REMOVE memberships the row lost */
    const unsigned char *p = (const unsigned char *)old_members.data;
    const unsigned char *end = p + old_members.len;
    member_t m;
    uint32_t rm_checksum = 0;
    int have_rm_checksum = 0;
    while (rc == 0 && p != NULL && next_member(&p, end, ref, &m)) {
        int kept = 0;
        for (size_t i = 0; ops != NULL && i < ops->n && !kept; i++) {
            const rules_op_t *o = &ops->items[i];
            gw_wbucket_t *b = gw_map_get(&w->by_name, o->bucket);
            kept = b != NULL && b->id == m.bucket_id && strlen(o->object_type) == m.tlen &&
                   memcmp(o->object_type, m.type, m.tlen) == 0 && strlen(o->object_id) == m.ilen &&
                   memcmp(o->object_id, m.id, m.ilen) == 0;
        }
        if (kept || !live_bucket(w, m.bucket_id)) continue;
        if (!have_rm_checksum) {
            rm_checksum = rules_checksum_delete(subkey);
            have_rm_checksum = 1;
        }
        char type[512], id[1024];
        gw_oprec_copy_span(type, sizeof(type), m.type, m.tlen);
        gw_oprec_copy_span(id, sizeof(id), m.id, m.ilen);
        rc = write_op(w, w->by_id[m.bucket_id], GW_OP_REMOVE, type, id, subkey, NULL, rm_checksum,
                      NULL, err);
    }
    int lookups_same = 1;
    if (rc == 0) {
        lookups_text(lookups, &new_lookups);
        const char *oldl = old_lookups.data != NULL ? old_lookups.data : "";
        const char *newl = new_lookups.data != NULL ? new_lookups.data : "";
        lookups_same = strcmp(oldl, newl) == 0;
        if (!lookups_same) rc = replace_lookups(w, ref, oldl, lookups, err);
    }
    /* the stored row changes only when its memberships, lookups or copy do */
    int same =
        found && lookups_same && copy_same && old_members.len == w->members.len &&
        (w->members.len == 0 || memcmp(old_members.data, w->members.data, w->members.len) == 0);
    if (rc == 0 && !same) {
        rc = w->io->row_store(
            w->ud, gw_writer_ns_table(w, ref->table), ref->key, found, w->members.data,
            w->members.len, new_lookups.data != NULL ? new_lookups.data : "", copy, copy_len, err);
        if (rc == 0 && !found) {
            filter_note(w, ref, w->io->filter_rebuild);
            atomic_fetch_add(&w->n_rows, 1);
        }
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    gw_buf_free(&new_lookups);
    return rc;
}

int gw_writer_delete_row(gw_writer_t *w, const gw_row_ref_t *ref, gw_err_t *err)
{
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT;
    int copy_same;
    int found = w->io->row_load(w->ud, gw_writer_ns_table(w, ref->table), ref->key, &old_members,
                                &old_lookups, NULL, 0, &copy_same, err);
    if (found <= 0) { /* never stored: nothing to remove */
        gw_buf_free(&old_members);
        gw_buf_free(&old_lookups);
        return found;
    }
    int rc = 0;
    char subkey[2048];
    gw_storage_subkey(ref->table, ref->key, subkey, sizeof(subkey));
    uint32_t rm_checksum = rules_checksum_delete(subkey);
    const unsigned char *p = (const unsigned char *)old_members.data;
    const unsigned char *end = p + old_members.len;
    member_t m;
    while (rc == 0 && p != NULL && next_member(&p, end, ref, &m)) {
        if (!live_bucket(w, m.bucket_id)) continue;
        char type[512], id[1024];
        gw_oprec_copy_span(type, sizeof(type), m.type, m.tlen);
        gw_oprec_copy_span(id, sizeof(id), m.id, m.ilen);
        rc = write_op(w, w->by_id[m.bucket_id], GW_OP_REMOVE, type, id, subkey, NULL, rm_checksum,
                      NULL, err);
    }
    if (rc == 0 && old_lookups.len > 0) rc = replace_lookups(w, ref, old_lookups.data, NULL, err);
    if (rc == 0) {
        rc = w->io->row_delete(w->ud, gw_writer_ns_table(w, ref->table), ref->key, err);
        if (rc == 0) atomic_fetch_sub(&w->n_rows, 1);
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    return rc;
}

int gw_writer_load_state(gw_writer_t *w, gw_storage_t *st)
{
    char nb[32], lb[32], sb[32], cb[8];
    int gn = gw_storage_state_get(st, "next_op", nb, sizeof(nb));
    int gl = gw_storage_state_get(st, "last_op", lb, sizeof(lb));
    int gs = gw_storage_state_get(st, "lsn", sb, sizeof(sb));
    int gc = gw_storage_state_get(st, "consistent", cb, sizeof(cb));
    if (gn < 0 || gl < 0 || gs < 0 || gc < 0) return -1;
    w->next_op = gn ? strtoull(nb, NULL, 10) : 1;
    w->last_op = gl ? strtoull(lb, NULL, 10) : 0;
    w->lsn = gs ? strtoull(sb, NULL, 10) : 0;
    w->consistent = gc && cb[0] == '1';
    if (w->next_op <= w->last_op) w->next_op = w->last_op + 1;
    return 0;
}
