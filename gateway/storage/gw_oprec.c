/* gw_oprec.c -- op records: encoding an op once, rendering its wire JSON, subkeys, row copies
 *
 * The record form is drawn in gw_oprec.h. Encoding runs once per op, when replication writes it;
 * rendering once per op a client reads, with copies only (the strings were escaped when encoded).
 * Pure code: no storage, no locks.
 */
#include "storage/gw_oprec.h"

#include <stdint.h>
#include <string.h>

/* ---- ops ---- */

/* Append v in decimal (the op line is built for every op: no printf on this path). */
static void append_u64(gw_buf_t *b, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    gw_buf_append(b, tmp + n, sizeof(tmp) - n);
}

/* Append s escaped for the inside of a JSON string (as gw_buf_json_str does, without the quotes,
 * copying runs of plain bytes at once: this runs for every op's type, id, subkey and data). */
static void append_json_chars(gw_buf_t *b, const char *str)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)str, *run = p;
    for (;; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (p > run) gw_buf_append(b, run, (size_t)(p - run));
        if (c == '\0') break;
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        gw_buf_append(b, esc, n);
        run = p + 1;
    }
}

/* Append a record to out. */
void gw_oprec_append(gw_buf_t *out, uint64_t op_id, uint32_t checksum, int op, size_t ident_off,
                     size_t ident_len, const char *line, size_t line_len)
{
    unsigned char h[GW_OPREC_HDR];
    uint32_t io = (uint32_t)ident_off, il = (uint32_t)ident_len, ll = (uint32_t)line_len;
    memcpy(h, &op_id, 8);
    memcpy(h + 8, &checksum, 4);
    h[12] = (unsigned char)op;
    memcpy(h + 13, &io, 4);
    memcpy(h + 17, &il, 4);
    memcpy(h + 21, &ll, 4);
    gw_buf_append(out, h, GW_OPREC_HDR);
    gw_buf_append(out, line, line_len);
}

/* Append a length-prefixed escaped string (the u32 length patched in after escaping). */
static void append_field(gw_buf_t *l, const char *str)
{
    size_t at = l->len;
    static const unsigned char zero[4];
    gw_buf_append(l, zero, 4);
    append_json_chars(l, str);
    uint32_t n = (uint32_t)(l->len - at - 4);
    memcpy(l->data + at, &n, 4);
}

/* Append an op's body (gw_oprec.h); ident_at/ident_end: the identity span in l. */
void gw_oprec_encode_body(gw_buf_t *l, int op, const char *type, const char *id, const char *subkey,
                          const char *data, size_t *ident_at, size_t *ident_end)
{
    *ident_at = l->len;
    append_field(l, type);
    append_field(l, id);
    append_field(l, subkey);
    *ident_end = l->len;
    if (op == GW_OP_PUT) append_json_chars(l, data); /* data is NUL-free JSON text */
}

/* Take the next length-prefixed field of an op body: 1 and *str, *n, or 0 when malformed. */
int gw_oprec_body_field(const unsigned char **p, const unsigned char *end, const char **str,
                        size_t *n)
{
    uint32_t len;
    if (end - *p < 4) return 0;
    memcpy(&len, *p, 4);
    if (len > (size_t)(end - *p - 4)) return 0;
    *str = (const char *)*p + 4;
    *n = len;
    *p += 4 + len;
    return 1;
}

/* Append op line's JSON, rendered from the record, to out. */
void gw_oprec_render(gw_buf_t *out, const gw_oprec_t *r)
{
    static const char *const names[] = {"", "PUT", "REMOVE", "MOVE", "CLEAR"};
    gw_buf_puts(out, "{\"op_id\":\"");
    append_u64(out, r->op_id);
    gw_buf_puts(out, "\",\"op\":\"");
    gw_buf_puts(out, r->op >= GW_OP_PUT && r->op <= GW_OP_CLEAR ? names[r->op] : "");
    gw_buf_puts(out, "\",\"checksum\":");
    append_u64(out, r->checksum);
    if (r->op == GW_OP_PUT || r->op == GW_OP_REMOVE) {
        static const char *const keys[3] = {",\"object_type\":\"", "\",\"object_id\":\"",
                                            "\",\"subkey\":\""};
        const unsigned char *p = (const unsigned char *)r->line, *end = p + r->line_len;
        int ok = 1;
        for (int i = 0; i < 3; i++) {
            const char *str = "";
            size_t n = 0;
            /* malformed: render empty fields rather than read past the record */
            ok = ok && gw_oprec_body_field(&p, end, &str, &n);
            gw_buf_puts(out, keys[i]);
            gw_buf_append(out, str, ok ? n : 0);
        }
        gw_buf_puts(out, "\"");
        if (r->op == GW_OP_PUT && ok) {
            gw_buf_puts(out, ",\"data\":\"");
            gw_buf_append(out, p, (size_t)(end - p));
            gw_buf_puts(out, "\"");
        }
    }
    gw_buf_puts(out, "}");
}

void gw_storage_encode_put(gw_buf_t *out, const rules_op_t *op, const char *subkey,
                           gw_op_tail_t *tail)
{
    size_t start = out->len, ia, ie;
    gw_oprec_encode_body(out, GW_OP_PUT, op->object_type, op->object_id, subkey, op->data, &ia,
                         &ie);
    tail->len = out->len - start;
    tail->ident_off = ia - start;
    tail->ident_len = ie - ia;
}

/* Copy n bytes of p into buf (len bytes) as a string, truncated to fit. */
void gw_oprec_copy_span(char *buf, size_t len, const char *p, size_t n)
{
    if (n >= len) n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
}

void gw_storage_subkey(const char *table, const char *key, char *buf, size_t len)
{
    size_t tl = strlen(table), kl = strlen(key);
    gw_oprec_copy_span(buf, len, table, tl);
    if (tl + 1 < len) {
        buf[tl] = '/';
        gw_oprec_copy_span(buf + tl + 1, len - tl - 1, key, kl);
    }
}

/* Copy encoding: [u16 ncols] then per column [u16 name len][name][u8 kind][u32 len][bytes]. */
size_t gw_storage_row_encode(gw_buf_t *out, size_t ncols, const char *const *names,
                             const char *const *values, const size_t *lens, size_t min_len)
{
    size_t start = out->len;
    uint16_t n = 0;
    gw_buf_append(out, &n, 2);
    for (size_t i = 0; i < ncols; i++) {
        size_t len = values[i] == NULL ? 0 : lens ? lens[i] : strlen(values[i]);
        if (min_len > 0 && (values[i] == NULL || len < min_len)) continue;
        n++;
        uint16_t nl = (uint16_t)strlen(names[i]);
        gw_buf_append(out, &nl, 2);
        gw_buf_append(out, names[i], nl);
        char kind = values[i] != NULL ? 't' : 'n';
        gw_buf_append(out, &kind, 1);
        uint32_t vl = values[i] == NULL ? 0 : (uint32_t)(lens ? lens[i] : strlen(values[i]));
        gw_buf_append(out, &vl, 4);
        if (values[i] != NULL) gw_buf_append(out, values[i], vl);
    }
    memcpy(out->data + start, &n, 2);
    return n;
}

int gw_storage_row_find(const void *copy, size_t copy_len, const char *name, const char **value,
                        size_t *len)
{
    const char *p = copy, *end = p + copy_len;
    if (copy_len < 2) return 0;
    uint16_t n;
    memcpy(&n, p, 2);
    p += 2;
    size_t want = strlen(name);
    for (uint16_t i = 0; i < n; i++) {
        uint16_t nl;
        uint32_t vl;
        if (end - p < 2) return 0;
        memcpy(&nl, p, 2);
        if (end - p < 2 + nl + 5) return 0;
        const char *nm = p + 2;
        char kind = p[2 + nl];
        memcpy(&vl, p + 3 + nl, 4);
        const char *v = p + 7 + nl;
        if (end - v < (ptrdiff_t)vl) return 0;
        if (nl == want && memcmp(nm, name, nl) == 0) {
            *value = kind == 't' ? v : NULL;
            *len = vl;
            return 1;
        }
        p = v + vl;
    }
    return 0;
}
