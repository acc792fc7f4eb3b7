/* gw_sqlite_rows.c -- the SQLite backend's buckets, rows, lookups and write checkpoints
 *
 * Buckets: every bucket's totals live in memory (a map by name, an array by id), loaded at open
 * (gw__sqlite_load_cache) and kept up to date as ops are written; the dirty ones are written at
 * commit. Rows: per source row its bucket memberships (5 bytes each in the usual case), its
 * parameter-lookup text and a copy of its long values, rewritten only when one of them changed.
 * gw__sqlite_put_row() writes a PUT per current membership and a REMOVE per lost one; a Bloom
 * filter over the stored rows lets a new row skip the lookup of its old state. Lookups are
 * versioned by op id (valid in [from_op, to_op)), so they are answered as of a checkpoint.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- bucket cache ---- */

static void index_bucket(gw_sqlite_t *s, bucket_t *b)
{
    if ((size_t)b->id >= s->by_id_cap) {
        size_t cap = s->by_id_cap ? s->by_id_cap : 1024;
        while (cap <= (size_t)b->id)
            cap *= 2;
        s->by_id = gw_xrealloc(s->by_id, cap * sizeof(bucket_t *));
        memset(s->by_id + s->by_id_cap, 0, (cap - s->by_id_cap) * sizeof(bucket_t *));
        s->by_id_cap = cap;
    }
    s->by_id[b->id] = b;
    gw_map_put(&s->by_name, b->name, b);
}

static void free_bucket(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    bucket_t *b = value;
    free(b->name);
    free(b);
}

void gw__sqlite_drop_cache(gw_sqlite_t *s)
{
    gw_map_each(&s->by_name, free_bucket, NULL);
    gw_map_free(&s->by_name);
    free(s->by_id);
    s->by_id = NULL;
    s->by_id_cap = 0;
}

int gw__sqlite_load_cache(gw_sqlite_t *s, gw_err_t *err)
{
    gw__sqlite_drop_cache(s);
    gw_map_init(&s->by_name);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT id, name, checksum, count, last_op FROM buckets", -1, &q,
                           NULL) != SQLITE_OK)
        return gw__sqlite_err(s->db, err, "read buckets");
    uint64_t nb = 0, nops = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        bucket_t *b = gw_xcalloc(1, sizeof(*b));
        b->id = sqlite3_column_int64(q, 0);
        b->name = gw_xstrdup((const char *)sqlite3_column_text(q, 1));
        b->checksum = (uint32_t)sqlite3_column_int64(q, 2);
        b->count = (uint64_t)sqlite3_column_int64(q, 3);
        b->last_op = (uint64_t)sqlite3_column_int64(q, 4);
        index_bucket(s, b);
        if (gw__sqlite_own_name(s, b->name)) { /* totals count this version's buckets only */
            nb++;
            nops += b->count;
        }
    }
    sqlite3_finalize(q);
    atomic_store(&s->n_buckets, nb);
    atomic_store(&s->n_ops, nops);
    char lo[48], hi[48];
    gw__sqlite_ns_range(s->version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM rows WHERE tbl >= ?1 AND tbl < ?2", -1, &q,
                           NULL) != SQLITE_OK)
        return gw__sqlite_err(s->db, err, "count rows");
    sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW)
        atomic_store(&s->n_rows, (uint64_t)sqlite3_column_int64(q, 0));
    sqlite3_finalize(q);
    char buf[64];
    s->next_op =
        gw__sqlite_state_get(&s->base, "next_op", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 1;
    s->last_op =
        gw__sqlite_state_get(&s->base, "last_op", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
    s->lsn = gw__sqlite_state_get(&s->base, "lsn", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
    s->consistent = gw__sqlite_state_get(&s->base, "consistent", buf, sizeof(buf)) && buf[0] == '1';
    if (s->next_op <= s->last_op) s->next_op = s->last_op + 1;
    return 0;
}

bucket_t *gw__sqlite_bucket_get(gw_sqlite_t *s, const char *name, gw_err_t *err)
{
    bucket_t *b = gw_map_get(&s->by_name, name);
    if (b != NULL) return b;
    sqlite3_stmt *q = s->st[ST_BUCKET_INSERT];
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        gw__sqlite_err(s->db, err, "create a bucket");
        return NULL;
    }
    b = gw_xcalloc(1, sizeof(*b));
    b->id = sqlite3_last_insert_rowid(s->db);
    b->name = gw_xstrdup(name);
    index_bucket(s, b);
    atomic_fetch_add(&s->n_buckets, 1);
    return b;
}

void gw__sqlite_touch(gw_sqlite_t *s, bucket_t *b)
{
    b->dirty = 1;
    if (b->touched_gen == s->gen) return;
    b->touched_gen = s->gen;
    if (s->ntouched == s->cap_touched) {
        s->cap_touched = s->cap_touched ? s->cap_touched * 2 : 64;
        s->touched = gw_xrealloc(s->touched, s->cap_touched * sizeof(char *));
    }
    s->touched[s->ntouched++] = b->name;
}

/* ---- row filter ---- */

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
static void filter_add_hash(gw_sqlite_t *s, uint64_t h)
{
    uint64_t a = h, b = (h >> 32) | 1, mask = s->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        s->filter[(a & mask) >> 6] |= 1ull << (a & 63);
}

static int filter_maybe(const gw_sqlite_t *s, const gw_row_ref_t *ref)
{
    if (s->filter == NULL) return 1;
    uint64_t h = row_hash(ref->table, ref->key);
    uint64_t a = h, b = (h >> 32) | 1, mask = s->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        if ((s->filter[(a & mask) >> 6] & (1ull << (a & 63))) == 0) return 0;
    return 1;
}

/* (Re)build the filter from every stored row, sized for about 16 bits per row and room to grow.
 * Runs inside or outside a transaction (the writer sees its own uncommitted rows). On any error
 * the filter is disabled, which is always safe. */
void gw__sqlite_filter_build(gw_sqlite_t *s, uint64_t rows)
{
    free(s->filter);
    s->filter = NULL;
    size_t bits = FILTER_MIN_BITS;
    while (bits < FILTER_MAX_BITS && bits < rows * 32)
        bits *= 2;
    if (rows * 16 > bits)
        return; /* too many rows for a useful filter within the cap: always look rows up */
    uint64_t *f = calloc(bits / 64, sizeof(uint64_t));
    if (f == NULL) return;
    s->filter = f;
    s->filter_bits = bits;
    s->filter_keys = 0;
    sqlite3_stmt *q;
    int step = SQLITE_ERROR;
    char lo[48], hi[48];
    gw__sqlite_ns_range(s->version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db,
                           "SELECT substr(tbl, ?3), key FROM rows WHERE tbl >= ?1 AND "
                           "tbl < ?2",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 3, (int)strlen(s->version) + 1);
        while ((step = sqlite3_step(q)) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(q, 0);
            const char *k = (const char *)sqlite3_column_text(q, 1);
            filter_add_hash(s, row_hash(t != NULL ? t : "", k != NULL ? k : ""));
            s->filter_keys++;
        }
        sqlite3_finalize(q);
    }
    if (step != SQLITE_DONE) {
        free(s->filter);
        s->filter = NULL;
    }
}

/* Note a stored row; rebuild larger when the filter gets too full for its false-positive rate. */
static void filter_add(gw_sqlite_t *s, const gw_row_ref_t *ref)
{
    if (s->filter == NULL) return;
    filter_add_hash(s, row_hash(ref->table, ref->key));
    if (++s->filter_keys * 12 <= s->filter_bits) return;
    if (s->filter_bits >= FILTER_MAX_BITS) {
        free(s->filter); /* at the cap: stop filtering rather than rebuild again and again */
        s->filter = NULL;
        return;
    }
    gw__sqlite_filter_build(s, s->filter_keys);
}

/* Whether bucket id exists and belongs to the current rule version (older versions' buckets
 * get no REMOVEs while the new version re-snapshots; they are dropped whole afterwards). */
static int live_bucket(const gw_sqlite_t *s, int64_t id)
{
    if ((size_t)id >= s->by_id_cap || s->by_id[id] == NULL) return 0;
    size_t n = strlen(s->version);
    return n == 0 || strncmp(s->by_id[id]->name, s->version, n) == 0;
}

/* Memberships: [u32 bucket id][u8 flags] then [u16 type len][type] unless flags & M_TYPE (the
 * type is the row's table name without its schema) and [u16 id len][id] unless flags & M_ID (the
 * id is the row's key), repeated: the usual membership takes 5 bytes, so the rows table stays
 * small (every commit rewrites the pages of the rows it touched). */
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

static void subkey_of(const gw_row_ref_t *ref, char *buf, size_t len)
{
    gw_storage_subkey(ref->table, ref->key, buf, len);
}

static void note_lookup_key(gw_sqlite_t *s, const char *key)
{
    for (size_t i = 0; i < s->nlookup_keys; i++)
        if (strcmp(s->lookup_keys[i], key) == 0) return;
    if (s->nlookup_keys == s->cap_lookup_keys) {
        s->cap_lookup_keys = s->cap_lookup_keys ? s->cap_lookup_keys * 2 : 16;
        s->lookup_keys = gw_xrealloc(s->lookup_keys, s->cap_lookup_keys * sizeof(char *));
    }
    s->lookup_keys[s->nlookup_keys++] = gw_xstrdup(key);
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
static int replace_lookups(gw_sqlite_t *s, const gw_row_ref_t *ref, const char *old_text,
                           const rules_lookups_t *l, gw_err_t *err)
{
    uint64_t op_id = s->next_op++; /* lookups share the op-id sequence */
    s->txn_last_op = op_id;
    sqlite3_stmt *q = s->st[ST_LOOKUP_CLOSE];
    sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)op_id);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "update parameter lookups");
    /* keys of the old entries changed too */
    for (const char *p = old_text; p != NULL && *p != '\0';) {
        const char *tab = strchr(p, '\t');
        const char *nl = strchr(p, '\n');
        if (tab == NULL || nl == NULL) break;
        char key[1024];
        snprintf(key, sizeof(key), "%.*s", (int)(tab - p), p);
        note_lookup_key(s, key);
        p = nl + 1;
    }
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        q = s->st[ST_LOOKUP_INSERT];
        sqlite3_bind_text(q, 1, gw__sqlite_ns_key(s, l->items[i].key), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, ref->key, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, l->items[i].params, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 5, (sqlite3_int64)op_id);
        rc = sqlite3_step(q);
        sqlite3_reset(q);
        if (rc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "write parameter lookups");
        note_lookup_key(s, l->items[i].key);
    }
    return 0;
}

/* Load a row's stored members and lookups (copies into the given buffers). 1 found, 0 not.
 * *copy_same: whether its stored copy equals copy/copy_len (NULL: none). */
static int row_load(gw_sqlite_t *s, const gw_row_ref_t *ref, gw_buf_t *members, gw_buf_t *lookups,
                    const void *copy, size_t copy_len, int *copy_same)
{
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
    int found = 0;
    *copy_same = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        found = 1;
        const void *m = sqlite3_column_blob(q, 0);
        int ml = sqlite3_column_bytes(q, 0);
        if (m != NULL && ml > 0) gw_buf_append(members, m, (size_t)ml);
        const char *lk = (const char *)sqlite3_column_text(q, 1);
        if (lk != NULL) gw_buf_puts(lookups, lk);
        if (sqlite3_column_type(q, 2) == SQLITE_NULL) {
            *copy_same = copy == NULL;
        } else {
            const void *c = sqlite3_column_blob(q, 2);
            size_t cl = (size_t)sqlite3_column_bytes(q, 2);
            *copy_same = copy != NULL && cl == copy_len && memcmp(c, copy, cl) == 0;
        }
    }
    sqlite3_reset(q);
    return found;
}

int gw__sqlite_put_row(gw_storage_t *st, const gw_row_ref_t *ref, const rules_ops_t *ops,
                       const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                       size_t copy_len, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    char subkey[2048];
    subkey_of(ref, subkey, sizeof(subkey));
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT, new_lookups = GW_BUF_INIT;
    int rc = 0, found = 0, copy_same = 0;
    if (filter_maybe(s, ref))
        found = row_load(s, ref, &old_members, &old_lookups, copy, copy_len, &copy_same);
    gw_buf_reset(&s->members);
    /* PUT every current membership */
    for (size_t i = 0; ops != NULL && i < ops->n && rc == 0; i++) {
        const rules_op_t *o = &ops->items[i];
        bucket_t *b = gw__sqlite_bucket_get(s, o->bucket, err);
        if (b == NULL) {
            rc = GW_EIO;
            break;
        }
        rc = gw__sqlite_write_op(s, b, GW_OP_PUT, o->object_type, o->object_id, subkey, o->data,
                                 o->checksum,
                                 tails != NULL && tails[i].text != NULL ? &tails[i] : NULL, err);
        add_member(&s->members, ref, b->id, o->object_type, o->object_id);
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
            bucket_t *b = gw_map_get(&s->by_name, o->bucket);
            kept = b != NULL && b->id == m.bucket_id && strlen(o->object_type) == m.tlen &&
                   memcmp(o->object_type, m.type, m.tlen) == 0 && strlen(o->object_id) == m.ilen &&
                   memcmp(o->object_id, m.id, m.ilen) == 0;
        }
        if (kept || !live_bucket(s, m.bucket_id)) continue;
        if (!have_rm_checksum) {
            rm_checksum = rules_checksum_delete(subkey);
            have_rm_checksum = 1;
        }
        char type[512], id[1024];
        gw_oprec_copy_span(type, sizeof(type), m.type, m.tlen);
        gw_oprec_copy_span(id, sizeof(id), m.id, m.ilen);
        rc = gw__sqlite_write_op(s, s->by_id[m.bucket_id], GW_OP_REMOVE, type, id, subkey, NULL,
                                 rm_checksum, NULL, err);
    }
    int lookups_same = 1;
    if (rc == 0) {
        lookups_text(lookups, &new_lookups);
        const char *oldl = old_lookups.data != NULL ? old_lookups.data : "";
        const char *newl = new_lookups.data != NULL ? new_lookups.data : "";
        lookups_same = strcmp(oldl, newl) == 0;
        if (!lookups_same) rc = replace_lookups(s, ref, oldl, lookups, err);
    }
    /* the stored row changes only when its memberships, lookups or copy do */
    int same =
        found && lookups_same && copy_same && old_members.len == s->members.len &&
        (s->members.len == 0 || memcmp(old_members.data, s->members.data, s->members.len) == 0);
    if (rc == 0 && !same) {
        sqlite3_stmt *q = s->st[found ? ST_ROW_UPDATE : ST_ROW_INSERT];
        sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
        sqlite3_bind_blob(q, 3, s->members.data, (int)s->members.len, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, new_lookups.data != NULL ? new_lookups.data : "", -1,
                          SQLITE_STATIC);
        if (copy != NULL)
            sqlite3_bind_blob(q, 5, copy, (int)copy_len, SQLITE_STATIC);
        else
            sqlite3_bind_null(q, 5);
        if (sqlite3_step(q) != SQLITE_DONE) rc = gw__sqlite_err(s->db, err, "store a row");
        sqlite3_reset(q);
        if (rc == 0 && !found) {
            filter_add(s, ref);
            atomic_fetch_add(&s->n_rows, 1);
        }
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    gw_buf_free(&new_lookups);
    return rc;
}

int gw__sqlite_write_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                uint64_t *counter, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_WCP_UPSERT];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)lsn);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) *counter = (uint64_t)sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) return gw__sqlite_err(s->db, err, "store a write checkpoint");
    if (s->nwcp == s->cap_wcp) {
        s->cap_wcp = s->cap_wcp ? s->cap_wcp * 2 : 16;
        s->wcp = gw_xrealloc(s->wcp, s->cap_wcp * sizeof(*s->wcp));
    }
    s->wcp[s->nwcp].key = gw_xstrdup(user_key);
    s->wcp[s->nwcp].lsn = lsn;
    s->nwcp++;
    return 0;
}

int gw__sqlite_request_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                  uint64_t requested, uint64_t *stored, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_WCP_REQUEST];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)lsn);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)requested);
    int rc = sqlite3_step(q);
    int applied = rc == SQLITE_DONE && sqlite3_changes(s->db) > 0;
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "store a checkpoint request");
    q = s->st[ST_WCP_GET];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) *stored = (uint64_t)sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) return gw__sqlite_err(s->db, err, "read a checkpoint request");
    if (!applied) return 0; /* stale or repeated: nothing new becomes visible */
    if (s->nwcp == s->cap_wcp) {
        s->cap_wcp = s->cap_wcp ? s->cap_wcp * 2 : 16;
        s->wcp = gw_xrealloc(s->wcp, s->cap_wcp * sizeof(*s->wcp));
    }
    s->wcp[s->nwcp].key = gw_xstrdup(user_key);
    s->wcp[s->nwcp].lsn = lsn;
    s->nwcp++;
    return 0;
}

int gw__sqlite_delete_row(gw_storage_t *st, const gw_row_ref_t *ref, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT;
    int copy_same;
    if (!row_load(s, ref, &old_members, &old_lookups, NULL, 0, &copy_same))
        return 0; /* never stored: nothing to remove */
    int rc = 0;
    char subkey[2048];
    subkey_of(ref, subkey, sizeof(subkey));
    uint32_t rm_checksum = rules_checksum_delete(subkey);
    const unsigned char *p = (const unsigned char *)old_members.data;
    const unsigned char *end = p + old_members.len;
    member_t m;
    while (rc == 0 && p != NULL && next_member(&p, end, ref, &m)) {
        if (!live_bucket(s, m.bucket_id)) continue;
        char type[512], id[1024];
        gw_oprec_copy_span(type, sizeof(type), m.type, m.tlen);
        gw_oprec_copy_span(id, sizeof(id), m.id, m.ilen);
        rc = gw__sqlite_write_op(s, s->by_id[m.bucket_id], GW_OP_REMOVE, type, id, subkey, NULL,
                                 rm_checksum, NULL, err);
    }
    if (rc == 0 && old_lookups.len > 0) rc = replace_lookups(s, ref, old_lookups.data, NULL, err);
    if (rc == 0) {
        sqlite3_stmt *q = s->st[ST_ROW_DEL];
        sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_DONE)
            rc = gw__sqlite_err(s->db, err, "delete a row");
        else
            atomic_fetch_sub(&s->n_rows, 1);
        sqlite3_reset(q);
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    return rc;
}

int gw__sqlite_truncate(gw_storage_t *st, const char *table, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    for (;;) {
        /* collect a batch of keys first: deleting while stepping the same table is unsafe */
        sqlite3_stmt *q = s->st[ST_ROWS_OF_TABLE];
        sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, table), -1, SQLITE_STATIC);
        size_t n;
        char **keys = gw__sqlite_collect_texts(q, &n);
        int rc = 0;
        for (size_t i = 0; i < n; i++) {
            gw_row_ref_t ref = {.table = table, .key = keys[i]};
            if (rc == 0) rc = gw__sqlite_delete_row(&s->base, &ref, err);
            free(keys[i]);
        }
        free(keys);
        if (rc != 0) return rc;
        if (n == 0) return 0;
    }
}

int gw__sqlite_row_copy(gw_storage_t *st, const gw_row_ref_t *ref, void **out, size_t *len)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, gw__sqlite_ns_table(s, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_type(q, 2) == SQLITE_BLOB) {
        int n = sqlite3_column_bytes(q, 2);
        *out = gw_xmalloc((size_t)n);
        memcpy(*out, sqlite3_column_blob(q, 2), (size_t)n);
        *len = (size_t)n;
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}
