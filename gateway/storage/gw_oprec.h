/* gw_oprec.h -- op records: how an op is encoded once and rendered as wire JSON (pure code)
 *
 * Every backend stores ops in the same record form, encoded once when the op is written (on the
 * replicator thread, or the apply thread) and rendered to the wire JSON with copies only when a
 * client reads it:
 *
 *   [u64 op_id][u32 checksum][u8 op][u32 ident_off][u32 ident_len][u32 line_len][line]
 *
 * line is the op's body, not its JSON (a third fewer bytes to write, and readers only copy): for
 * PUT/REMOVE [u32 n][object_type][u32 n][object_id][u32 n][subkey] then, for PUT, the data to the
 * end, every string already escaped for the inside of a JSON string; empty for MOVE/CLEAR.
 * ident = line[ident_off, +ident_len) is the identity compaction compares (type, id and subkey).
 * Multi-byte fields are in host byte order: stored records are private to one machine's ferry.
 *
 * Also here: a row's subkey, and row copies (the columns kept for unchanged-TOAST merges). No
 * function here touches storage; all are safe on any thread.
 */
#ifndef GW_OPREC_H
#define GW_OPREC_H

#include "base/gw_buf.h"
#include "rules/rules.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/** One source row: its table's qualified name ("public.todos") and its key text. */
typedef struct gw_row_ref {
    const char *table; /* "<schema>.<table>" */
    const char *key;   /* replica-identity values: the text of a single column, else JSON */
} gw_row_ref_t;

/** A PUT op's body, encoded ahead of time (gw_storage_encode_put). */
typedef struct gw_op_tail {
    const char *text; /* NULL: storage encodes the op itself */
    size_t len;
    size_t ident_off, ident_len; /* the object_type/object_id/subkey span within text */
} gw_op_tail_t;

/** The subkey of a row's ops, "<table>/<key>", into buf (truncated to len). */
void gw_storage_subkey(const char *table, const char *key, char *buf, size_t len);

/**
 * Encode op's body for the row with subkey, appended to out: tail->len and the identity span are
 * set; tail->text is left to the caller (out's bytes move as out grows).
 */
void gw_storage_encode_put(gw_buf_t *out, const rules_op_t *op, const char *subkey,
                           gw_op_tail_t *tail);

/* Row copies: a compact encoding of (name, kind, value) triples, kind 'n' (NULL) or 't'. */

/**
 * Encode the columns whose value is at least min_len bytes into out (appended); values[i] NULL
 * means SQL NULL (kept only when min_len is 0). Returns the number of columns encoded.
 */
size_t gw_storage_row_encode(gw_buf_t *out, size_t ncols, const char *const *names,
                             const char *const *values, const size_t *lens, size_t min_len);

/**
 * Find column name in an encoded copy: 1 and *value and *len (pointing into copy; *value NULL for
 * SQL NULL), 0 when absent or the copy is malformed.
 */
int gw_storage_row_find(const void *copy, size_t copy_len, const char *name, const char **value,
                        size_t *len);

/* ---- the record form (backends) ---- */

/** Op kinds as stored. */
enum { GW_OP_PUT = 1, GW_OP_REMOVE = 2, GW_OP_MOVE = 3, GW_OP_CLEAR = 4 };

/** Bytes of a record's header. */
enum { GW_OPREC_HDR = 25 };

/** A decoded record; the pointers point into the record's bytes. */
typedef struct gw_oprec {
    uint64_t op_id;
    uint32_t checksum;
    int op;
    const char *ident;
    size_t ident_len;
    const char *line;
    size_t line_len;
    size_t size; /* bytes of the whole record */
} gw_oprec_t;

/* Decode the record at p (avail bytes left): 1 and *r, or 0 when p is the end or malformed.
 * Inline: readers call it for every op they serve. */
static inline int gw_oprec_read(const unsigned char *p, size_t avail, gw_oprec_t *r)
{
    if (avail < GW_OPREC_HDR) return 0;
    uint32_t io, il, ll;
    memcpy(&r->op_id, p, 8);
    memcpy(&r->checksum, p + 8, 4);
    r->op = p[12];
    memcpy(&io, p + 13, 4);
    memcpy(&il, p + 17, 4);
    memcpy(&ll, p + 21, 4);
    if (ll > avail - GW_OPREC_HDR || io > ll || il > ll - io) return 0;
    r->line = (const char *)p + GW_OPREC_HDR;
    r->line_len = ll;
    r->ident = r->line + io;
    r->ident_len = il;
    r->size = GW_OPREC_HDR + (size_t)ll;
    return 1;
}

/** Append a whole record to out. */
void gw_oprec_append(gw_buf_t *out, uint64_t op_id, uint32_t checksum, int op, size_t ident_off,
                     size_t ident_len, const char *line, size_t line_len);

/** Append an op's body (a record's line) to l; *ident_at and *ident_end: the identity span in l. */
void gw_oprec_encode_body(gw_buf_t *l, int op, const char *type, const char *id, const char *subkey,
                          const char *data, size_t *ident_at, size_t *ident_end);

/** Take the next length-prefixed field of a body: 1 and *str, *n (advancing *p), 0 malformed. */
int gw_oprec_body_field(const unsigned char **p, const unsigned char *end, const char **str,
                        size_t *n);

/** Append the record's wire JSON ({"op_id":"N","op":"PUT",…}) to out. */
void gw_oprec_render(gw_buf_t *out, const gw_oprec_t *r);

/** Copy n bytes of p into buf (len bytes) as a string, truncated to fit. */
void gw_oprec_copy_span(char *buf, size_t len, const char *p, size_t n);

#endif
