/* ferry_scan.c -- the data-line scanner: a data line's ops without a jansson tree
 *
 * No tree, no allocation per op. An initial sync is mostly data lines: building a jansson tree
 * of every op and freeing it again cost about a third of the time. The scanner accepts exactly
 * the shape servers send ({"data":{"bucket":…,"data":[{…},…],…}} with any other keys skipped)
 * and unescapes strings into s->arena; anything it does not expect (another type for a field,
 * bad escapes, invalid UTF-8, trailing text) makes it give up, and the line goes through
 * jansson, which then reports the error or handles what the scanner did not.
 *
 * Callers: the curl thread of ferry_sync.c scans every line it reads (ferry__scan_line, into
 * the buffers of a queue slot) and hands data lines to the apply thread, which stores them with
 * ferry__oplog_apply_scanned; ferry__oplog_line scans the lines fed to it directly. The scanner
 * touches no database and no state but the ferry_scan_t it is given, so it runs on any thread.
 * Invariants: a line is taken whole or not at all (the ops of a line the scanner gives up on
 * are never applied from its buffers); every value it takes is the one the jansson path takes
 * (op ids and checksums by ferry__parse_id's and ferry__ck_parse's rules; strings unescaped,
 * NUL-terminated, valid UTF-8 without a NUL); the arena and the ops array are reused from line
 * to line and only grow (ferry_sync.c frees a slot's arena beyond 4 MiB). */
#include "ferry_oplog.h"

#include <stdlib.h>
#include <string.h>

typedef struct scan {
    const char *p, *end;
    ferry_scan_t *s;
} scan_t;

static void sk_ws(scan_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int sk_lit(scan_t *c, char ch)
{
    sk_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* Makes room for n more bytes in the arena; -1 on out-of-memory. */
static int arena_reserve(ferry_scan_t *s, size_t n)
{
    if (s->arena_len + n <= s->arena_cap) return 0;
    size_t cap = s->arena_cap ? s->arena_cap : 65536;
    while (cap < s->arena_len + n)
        cap *= 2;
    char *na = realloc(s->arena, cap);
    if (!na) return -1;
    s->arena = na;
    s->arena_cap = cap;
    return 0;
}

static int arena_put(ferry_scan_t *s, const char *b, size_t n)
{
    if (arena_reserve(s, n) != 0) return -1;
    memcpy(s->arena + s->arena_len, b, n);
    s->arena_len += n;
    return 0;
}

static int hexv(char h)
{
    return h >= '0' && h <= '9'   ? h - '0'
           : h >= 'a' && h <= 'f' ? h - 'a' + 10
           : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                  : -1;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv(p[i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), 0 when invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || (size_t)(end - p) < n) return 0;
    unsigned cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A string value: unescaped, NUL-terminated, into the arena; *off = its offset there. The
 * unescaped string and its NUL are never longer than the rest of the line, so the room is made
 * once and the bytes are copied as they are read. */
static int sk_string(scan_t *c, size_t *off)
{
    sk_ws(c);
    if (c->p >= c->end || *c->p != '"') return -1;
    c->p++;
    *off = c->s->arena_len;
    if (arena_reserve(c->s, (size_t)(c->end - c->p) + 1)) return -1;
    for (;;) {
        const char *q = c->p;
        char *w = c->s->arena + c->s->arena_len;
        while (q < c->end && ferry__plain[(unsigned char)*q])
            *w++ = *q++;
        c->s->arena_len += (size_t)(q - c->p);
        c->p = q;
        if (q >= c->end) return -1;
        unsigned char ch = (unsigned char)*q;
        if (ch == '"') {
            c->p++;
            c->s->arena[c->s->arena_len++] = 0;
            return 0;
        }
        if (ch < 0x20) return -1;
        if (ch >= 0x80) {
            size_t n = utf8_len((const unsigned char *)q, (const unsigned char *)c->end);
            if (!n || arena_put(c->s, q, n)) return -1;
            c->p += n;
            continue;
        }
        /* an escape */
        if (c->end - q < 2) return -1;
        char e = q[1], o;
        c->p = q + 2;
        switch (e) {
        case '"':
            o = '"';
            break;
        case '\\':
            o = '\\';
            break;
        case '/':
            o = '/';
            break;
        case 'b':
            o = '\b';
            break;
        case 'f':
            o = '\f';
            break;
        case 'n':
            o = '\n';
            break;
        case 'r':
            o = '\r';
            break;
        case 't':
            o = '\t';
            break;
        case 'u': {
            unsigned u, lo;
            if (hex4(c->p, c->end, &u)) return -1;
            c->p += 4;
            if (u >= 0xdc00 && u <= 0xdfff) return -1;
            if (u >= 0xd800 && u <= 0xdbff) {
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' ||
                    hex4(c->p + 2, c->end, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                c->p += 6;
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (u == 0) return -1; /* a NUL inside: leave it to jansson */
            char b[4];
            size_t n;
            if (u < 0x80) {
                b[0] = (char)u;
                n = 1;
            } else if (u < 0x800) {
                b[0] = (char)(0xc0 | u >> 6);
                b[1] = (char)(0x80 | (u & 0x3f));
                n = 2;
            } else if (u < 0x10000) {
                b[0] = (char)(0xe0 | u >> 12);
                b[1] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[2] = (char)(0x80 | (u & 0x3f));
                n = 3;
            } else {
                b[0] = (char)(0xf0 | u >> 18);
                b[1] = (char)(0x80 | ((u >> 12) & 0x3f));
                b[2] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[3] = (char)(0x80 | (u & 0x3f));
                n = 4;
            }
            if (arena_put(c->s, b, n)) return -1;
            continue;
        }
        default:
            return -1;
        }
        if (arena_put(c->s, &o, 1)) return -1;
    }
}

/* Skips any JSON value (strings go to the arena and are dropped again). */
static int sk_value(scan_t *c, int depth)
{
    sk_ws(c);
    if (c->p >= c->end || depth > 32) return -1;
    char ch = *c->p;
    if (ch == '"') {
        size_t off, keep = c->s->arena_len;
        int rc = sk_string(c, &off);
        c->s->arena_len = keep;
        return rc;
    }
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        if (sk_lit(c, close)) return 0;
        for (;;) {
            if (ch == '{') {
                size_t off, keep = c->s->arena_len;
                if (sk_string(c, &off)) return -1;
                c->s->arena_len = keep;
                if (!sk_lit(c, ':')) return -1;
            }
            if (sk_value(c, depth + 1)) return -1;
            if (sk_lit(c, close)) return 0;
            if (!sk_lit(c, ',')) return -1;
        }
    }
    const char *q = c->p;
    while (q < c->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E' || (*q >= 'a' && *q <= 'z')))
        q++;
    size_t n = (size_t)(q - c->p);
    if (n == 0) return -1;
    if ((*c->p >= 'a' && *c->p <= 'z') &&
        !((n == 4 && !memcmp(c->p, "true", 4)) || (n == 5 && !memcmp(c->p, "false", 5)) ||
          (n == 4 && !memcmp(c->p, "null", 4))))
        return -1;
    c->p = q;
    return 0;
}

static int sk_null(scan_t *c)
{
    sk_ws(c);
    if (c->end - c->p >= 4 && !memcmp(c->p, "null", 4)) {
        c->p += 4;
        return 1;
    }
    return 0;
}

/* A checksum number, the same range rules as ferry__ck_parse. */
static int sk_checksum(scan_t *c, uint32_t *out)
{
    sk_ws(c);
    const char *q = c->p;
    int isint = 1;
    while (q < c->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E')) {
        if (*q == '.' || *q == 'e' || *q == 'E') isint = 0;
        q++;
    }
    size_t n = (size_t)(q - c->p);
    if (n == 0 || n > 40) return -1;
    char b[48];
    memcpy(b, c->p, n);
    b[n] = 0;
    if (!isint) return -1; /* reals: the jansson way */
    const char *d = b[0] == '-' ? b + 1 : b;
    if (!*d || (d[0] == '0' && d[1]) || strlen(d) > 11) return -1;
    for (const char *x = d; *x; x++)
        if (*x < '0' || *x > '9') return -1;
    long long v = strtoll(b, NULL, 10);
    if (v < -2147483648LL || v > 4294967295LL) return -1;
    *out = (uint32_t)(int64_t)v;
    c->p = q;
    return 0;
}

static int ops_reserve(ferry_scan_t *s, size_t n)
{
    if (n <= s->ops_cap) return 0;
    size_t cap = s->ops_cap ? s->ops_cap * 2 : 1024;
    while (cap < n)
        cap *= 2;
    void *no = realloc(s->ops, cap * sizeof(dop_off_t));
    if (!no) return -1;
    s->ops = no;
    s->ops_cap = cap;
    return 0;
}

/* The field of an op a key names: 1 op_id, 2 op, 3 checksum, 4 object_type, 5 object_id,
 * 6 subkey, 7 data, 0 another (one comparison, chosen by the first letter). */
static int op_field(const char *k)
{
    switch (k[0]) {
    case 'o':
        return !strcmp(k, "op_id")         ? 1
               : !strcmp(k, "op")          ? 2
               : !strcmp(k, "object_type") ? 4
               : !strcmp(k, "object_id")   ? 5
                                           : 0;
    case 'c':
        return !strcmp(k, "checksum") ? 3 : 0;
    case 's':
        return !strcmp(k, "subkey") ? 6 : 0;
    case 'd':
        return !strcmp(k, "data") ? 7 : 0;
    default:
        return 0;
    }
}

/* Scans a whole line; on success *bucket_off and s->ops / s->nops describe it (strings in the
 * arena). Returns 0, 1 when the line is not a data line, -1 when jansson must take it. */
int ferry__scan_data_line(ferry_scan_t *s, const char *line, size_t len, size_t *bucket_off)
{
    scan_t c = {line, line + len, s};
    s->arena_len = 0;
    s->nops = 0;
    if (!sk_lit(&c, '{')) return 1;
    size_t koff;
    if (sk_string(&c, &koff)) return -1;
    if (strcmp(s->arena + koff, "data") != 0) return 1;
    if (!sk_lit(&c, ':') || !sk_lit(&c, '{')) return -1;
    *bucket_off = NOFF;
    int have_data = 0;
    if (!sk_lit(&c, '}'))
        for (;;) {
            size_t keep = s->arena_len;
            if (sk_string(&c, &koff) || !sk_lit(&c, ':')) return -1;
            int isb = !strcmp(s->arena + koff, "bucket"), isd = !strcmp(s->arena + koff, "data");
            s->arena_len = keep;
            if (isb) {
                if (*bucket_off != NOFF || sk_string(&c, bucket_off)) return -1;
            } else if (isd) {
                if (have_data || !sk_lit(&c, '[')) return -1;
                have_data = 1;
                if (!sk_lit(&c, ']'))
                    for (;;) {
                        if (ops_reserve(s, s->nops + 1) || !sk_lit(&c, '{')) return -1;
                        dop_off_t *o = &((dop_off_t *)s->ops)[s->nops];
                        o->type = o->oid = o->sub = o->data = NOFF;
                        int have_id = 0, have_ck = 0, have_kind = 0;
                        if (!sk_lit(&c, '}'))
                            for (;;) {
                                size_t k2 = s->arena_len;
                                if (sk_string(&c, &koff) || !sk_lit(&c, ':')) return -1;
                                const char *k = s->arena + koff;
                                int f = op_field(k);
                                s->arena_len = k2;
                                size_t v;
                                if (f == 1) {
                                    if (have_id || sk_string(&c, &v)) return -1;
                                    /* parse the id the same way as ferry__parse_id */
                                    const char *x = s->arena + v;
                                    int64_t n = 0;
                                    if (!*x) return -1;
                                    for (; *x; x++) {
                                        if (*x < '0' || *x > '9' ||
                                            n > (INT64_MAX - (*x - '0')) / 10)
                                            return -1;
                                        n = n * 10 + (*x - '0');
                                    }
                                    o->opid = n;
                                    have_id = 1;
                                    s->arena_len = k2;
                                } else if (f == 2) {
                                    if (have_kind || sk_string(&c, &v)) return -1;
                                    o->kind = ferry__op_kind(s->arena + v);
                                    have_kind = 1;
                                    s->arena_len = k2;
                                } else if (f == 3) {
                                    if (have_ck || sk_checksum(&c, &o->ck)) return -1;
                                    have_ck = 1;
                                } else if (f >= 4) {
                                    size_t *dst = f == 4   ? &o->type
                                                  : f == 5 ? &o->oid
                                                  : f == 6 ? &o->sub
                                                           : &o->data;
                                    if (*dst != NOFF) return -1;
                                    if (!sk_null(&c) && sk_string(&c, dst)) return -1;
                                } else if (sk_value(&c, 0)) {
                                    return -1;
                                }
                                if (sk_lit(&c, '}')) break;
                                if (!sk_lit(&c, ',')) return -1;
                            }
                        if (!have_id || !have_ck || !have_kind) return -1;
                        if ((o->kind == OP_PUT || o->kind == OP_REMOVE) &&
                            (o->type == NOFF || o->oid == NOFF))
                            return -1;
                        s->nops++;
                        if (sk_lit(&c, ']')) break;
                        if (!sk_lit(&c, ',')) return -1;
                    }
            } else if (sk_value(&c, 0)) {
                return -1;
            }
            if (sk_lit(&c, '}')) break;
            if (!sk_lit(&c, ',')) return -1;
        }
    if (!sk_lit(&c, '}')) return -1;
    sk_ws(&c);
    if (c.p != c.end || *bucket_off == NOFF || !have_data) return -1;
    return 0;
}

void ferry__scan_free(ferry_scan_t *b)
{
    free(b->arena);
    free(b->ops);
    memset(b, 0, sizeof *b);
}

void ferry__scan_trim(const char **line, size_t *len)
{
    const char *l = *line;
    size_t n = *len;
    while (n && (l[n - 1] == '\r' || l[n - 1] == ' ' || l[n - 1] == '\t'))
        n--;
    while (n && (*l == ' ' || *l == '\t' || *l == '\r')) {
        l++;
        n--;
    }
    *line = l;
    *len = n;
}

int ferry__scan_line(ferry_scan_t *b, const char *line, size_t len)
{
    ferry__scan_trim(&line, &len);
    if (len == 0) return 1;
    return ferry__scan_data_line(b, line, len, &b->bucket_off);
}
