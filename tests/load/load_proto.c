/* load_proto.c -- the raw client's reader: HTTP/1.1 response, chunked encoding, NDJSON lines
 *
 * See load_proto.h. Body bytes go through three layers, each a small state machine:
 *
 *   LOAD_P_HEADERS --"\r\n\r\n"--> LOAD_P_BODY --final chunk / length reached--> LOAD_P_END
 *        (head_done)                  (feed_body: chunk sizes, then decode (Content-Encoding
 *                                      zstd or gzip, when the response has one), then
 *                                      split_lines)
 *   any state --malformed / non-200 / oversized line--> LOAD_P_ERROR
 *
 * A line is handled in place when it lies whole in the bytes read; only a line that spans reads
 * is copied into p->carry. Bucket names are never stored: a bucket is its FNV-1a hash.
 */

#include "load_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include <zstd.h>

#define DBUF_SIZE (256u << 10)

#define MAX_LINE   (64u << 20)
#define CARRY_KEEP (64u << 10)

enum { CH_SIZE, CH_EXT, CH_DATA, CH_CRLF, CH_END };

static char stamp_pat[80] = "\\\"ts\\\":";
static size_t stamp_pat_len = 7;

void load_proto_set_stamp_column(const char *name)
{
    size_t n = strlen(name);
    if (n > 60) n = 60;
    memcpy(stamp_pat, "\\\"", 2);
    memcpy(stamp_pat + 2, name, n);
    memcpy(stamp_pat + 2 + n, "\\\":", 3);
    stamp_pat_len = n + 5;
}

void load_proto_init(load_proto_t *p)
{
    memset(p, 0, sizeof(*p));
    p->body_left = -1;
}

void load_proto_free(load_proto_t *p)
{
    if (p->enc == 1 && p->dec != NULL) ZSTD_freeDStream(p->dec);
    if (p->enc == 2 && p->dec != NULL) {
        inflateEnd(p->dec);
        free(p->dec);
    }
    p->dec = NULL;
    free(p->carry);
    free(p->bk);
    p->carry = NULL;
    p->bk = NULL;
    p->carry_len = p->carry_cap = 0;
    p->nbk = p->capbk = 0;
}

static int fail(load_proto_t *p, const char *why)
{
    p->phase = LOAD_P_ERROR;
    p->err = why;
    return -1;
}

static int carry_append(load_proto_t *p, const char *d, size_t n)
{
    if (p->carry_len + n > MAX_LINE) return fail(p, "a line is longer than 64 MiB");
    if (p->carry_len + n > p->carry_cap) {
        size_t cap = p->carry_cap ? p->carry_cap : 4096;
        while (cap < p->carry_len + n)
            cap *= 2;
        char *c = realloc(p->carry, cap);
        if (c == NULL) return fail(p, "out of memory");
        p->carry = c;
        p->carry_cap = cap;
    }
    memcpy(p->carry + p->carry_len, d, n);
    p->carry_len += n;
    return 0;
}

static void carry_reset(load_proto_t *p)
{
    p->carry_len = 0;
    if (p->carry_cap > CARRY_KEEP) {
        free(p->carry);
        p->carry = NULL;
        p->carry_cap = 0;
    }
}

/* ---- small scanners over one line ---- */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* s points just after an opening quote; returns the closing quote or NULL */
static const char *str_end(const char *s, const char *end)
{
    while (s < end) {
        if (*s == '\\')
            s += 2;
        else if (*s == '"')
            return s;
        else
            s++;
    }
    return NULL;
}

static const char *find(const char *from, const char *end, const char *pat, size_t n)
{
    if (from >= end) return NULL;
    return memmem(from, (size_t)(end - from), pat, n);
}
#define FIND(from, end, lit) find((from), (end), (lit), sizeof(lit) - 1)

/* a JSON integer (optionally negative, fraction ignored) or a decimal string */
static int64_t num_at(const char *s, const char *end)
{
    int neg = 0;
    int64_t v = 0;
    if (s < end && *s == '"') s++;
    if (s < end && *s == '-') {
        neg = 1;
        s++;
    }
    while (s < end && *s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}

static load_bucket_t *bucket_find(load_proto_t *p, uint64_t h)
{
    for (uint32_t i = 0; i < p->nbk; i++)
        if (p->bk[i].hash == h) return &p->bk[i];
    return NULL;
}

static load_bucket_t *bucket_add(load_proto_t *p, uint64_t h)
{
    load_bucket_t *b = bucket_find(p, h);
    if (b != NULL) return b;
    if (p->nbk == p->capbk) {
        uint32_t cap = p->capbk ? p->capbk * 2 : 2;
        load_bucket_t *nb = realloc(p->bk, cap * sizeof(*nb));
        if (nb == NULL) return NULL;
        p->bk = nb;
        p->capbk = cap;
    }
    b = &p->bk[p->nbk++];
    memset(b, 0, sizeof(*b));
    b->hash = h;
    b->priority = 3;
    return b;
}

/* Parse bucket objects {"bucket":"…","checksum":N,…,"priority":N} in [s, end) into the table;
 * with mark set, every bucket read gets priority recorded and is flagged kept via *kept. */
static int parse_bucket_list(load_proto_t *p, const char *s, const char *end, uint64_t *kept,
                             uint32_t nkept_max, uint32_t *nkept)
{
    for (;;) {
        const char *k = FIND(s, end, "{\"bucket\":\"");
        if (k == NULL) return 0;
        const char *name = k + 11, *q = str_end(name, end);
        if (q == NULL) return -1;
        const char *next = FIND(q, end, "{\"bucket\":\"");
        const char *lim = next ? next : end;
        load_bucket_t *b = bucket_add(p, fnv1a(name, (size_t)(q - name)));
        if (b == NULL) return -1;
        const char *c = FIND(q, lim, "\"checksum\":");
        if (c == NULL) return -1;
        b->want = (uint32_t)num_at(c + 11, lim);
        const char *pr = FIND(q, lim, "\"priority\":");
        b->priority = pr ? (int32_t)num_at(pr + 11, lim) : 3;
        if (kept != NULL && *nkept < nkept_max) kept[(*nkept)++] = b->hash;
        s = q;
    }
}

static void validate(load_proto_t *p, int max_priority, load_stats_t *st, int *ok)
{
    for (uint32_t i = 0; i < p->nbk; i++) {
        if (p->bk[i].priority > max_priority) continue;
        if (p->bk[i].have == p->bk[i].want) {
            st->checksum_ok++;
        } else {
            st->checksum_fail++;
            *ok = 0;
        }
    }
}

/* a checkpoint or checkpoint_diff line may carry "write_checkpoint":"N" (the user's counter) */
static void note_write_checkpoint(load_proto_t *p, const char *s, const char *end)
{
    const char *w = FIND(s, end, "\"write_checkpoint\":");
    if (w != NULL) p->write_checkpoint = (uint64_t)num_at(w + 19, end);
}

static int line_checkpoint(load_proto_t *p, const char *s, const char *end, load_stats_t *st)
{
    const char *l = FIND(s, end, "\"last_op_id\":");
    if (l == NULL) return fail(p, "a checkpoint line has no last_op_id");
    p->last_op_id = (uint64_t)num_at(l + 13, end);
    note_write_checkpoint(p, s, end);
    /* a full checkpoint replaces the tracked set: keep the local sums of buckets it still lists */
    enum { KEEP_MAX = 4096 };
    uint64_t kept_small[64], *kept = kept_small;
    uint32_t nkept = 0, kmax = 64;
    const char *bl = FIND(s, end, "\"buckets\":[");
    if (p->nbk > 64 || (end - s) > 64 * 64) {
        kept = malloc(KEEP_MAX * sizeof(*kept));
        kmax = KEEP_MAX;
        if (kept == NULL) return fail(p, "out of memory");
    }
    int rc = bl ? parse_bucket_list(p, bl, end, kept, kmax, &nkept) : 0;
    if (rc == 0 && nkept < kmax) {
        uint32_t w = 0;
        for (uint32_t i = 0; i < p->nbk; i++) {
            int listed = 0;
            for (uint32_t j = 0; j < nkept && !listed; j++)
                listed = kept[j] == p->bk[i].hash;
            if (listed) p->bk[w++] = p->bk[i];
        }
        p->nbk = w;
    }
    if (kept != kept_small) free(kept);
    st->checkpoints++;
    return rc == 0 ? 0 : fail(p, "a checkpoint line has a malformed bucket");
}

static int line_diff(load_proto_t *p, const char *s, const char *end, load_stats_t *st)
{
    const char *l = FIND(s, end, "\"last_op_id\":");
    const char *u = FIND(s, end, "\"updated_buckets\":[");
    const char *r = FIND(s, end, "\"removed_buckets\":[");
    if (l == NULL || u == NULL || r == NULL)
        return fail(p,
                    "a checkpoint_diff line lacks last_op_id, updated_buckets or removed_buckets");
    p->last_op_id = (uint64_t)num_at(l + 13, end);
    note_write_checkpoint(p, s, end);
    const char *uend = r > u ? r : end;
    if (parse_bucket_list(p, u, uend, NULL, 0, NULL) != 0)
        return fail(p, "a checkpoint_diff line has a malformed bucket");
    for (const char *c = r + 19; c < end && *c != ']';) {
        if (*c == '"') {
            const char *q = str_end(c + 1, end);
            if (q == NULL) return fail(p, "a checkpoint_diff line has a malformed removed bucket");
            uint64_t h = fnv1a(c + 1, (size_t)(q - c - 1));
            for (uint32_t i = 0; i < p->nbk; i++)
                if (p->bk[i].hash == h) {
                    p->bk[i] = p->bk[--p->nbk];
                    break;
                }
            c = q + 1;
        } else {
            c++;
        }
    }
    st->diffs++;
    return 0;
}

static int line_data(load_proto_t *p, const char *s, const char *end, load_stats_t *st,
                     const load_proto_cb_t *cb)
{
    const char *k = FIND(s, end, "\"bucket\":\"");
    if (k == NULL) return fail(p, "a data line has no bucket");
    const char *name = k + 10, *q = str_end(name, end);
    if (q == NULL) return fail(p, "a data line has a malformed bucket");
    load_bucket_t *b = bucket_find(p, fnv1a(name, (size_t)(q - name)));
    if (b == NULL) st->protocol_errors++; /* data for a bucket the checkpoint does not list */
    const char *op = FIND(q, end, "\"op_id\":\"");
    uint64_t n = 0;
    while (op != NULL) {
        const char *next = FIND(op + 9, end, "\"op_id\":\"");
        const char *lim = next ? next : end;
        const char *t = FIND(op + 9, lim, "\"op\":\"");
        const char *c = FIND(op + 9, lim, "\"checksum\":");
        if (t == NULL || c == NULL) return fail(p, "an op lacks op or checksum");
        uint32_t ck = (uint32_t)num_at(c + 11, lim);
        if (b != NULL) {
            if (lim - t > 10 && memcmp(t + 6, "CLEAR\"", 6) == 0)
                b->have = ck;
            else
                b->have += ck;
        }
        if (cb != NULL && cb->on_stamp != NULL) {
            const char *ts = find(c, lim, stamp_pat, stamp_pat_len);
            if (ts != NULL) {
                ts += stamp_pat_len;
                if (ts + 1 < lim && ts[0] == '\\' && ts[1] == '"') ts += 2;
                st->stamped_ops++;
                cb->on_stamp(cb->ctx, (uint64_t)num_at(ts, lim));
            }
        }
        n++;
        op = next;
    }
    st->ops += n;
    st->data_lines++;
    return 0;
}

int load_proto_line(load_proto_t *p, const char *line, size_t len, load_stats_t *st,
                    const load_proto_cb_t *cb)
{
    const char *end = line + len;
    st->lines++;
    if (len > 0 && line[len - 1] == '\r') end--;
    if (end - line < 4 || line[0] != '{' || line[1] != '"') {
        if (end == line) return 0; /* empty line */
        st->protocol_errors++;
        return 0;
    }
    const char *key = line + 2, *kq = memchr(key, '"', (size_t)(end - key));
    if (kq == NULL) {
        st->protocol_errors++;
        return 0;
    }
    size_t kl = (size_t)(kq - key);
#define KEY(lit) (kl == sizeof(lit) - 1 && memcmp(key, lit, kl) == 0)
    if (KEY("data")) return line_data(p, kq, end, st, cb);
    if (KEY("token_expires_in")) {
        st->keepalives++;
        return 0;
    }
    if (KEY("checkpoint")) return line_checkpoint(p, kq, end, st);
    if (KEY("checkpoint_diff")) return line_diff(p, kq, end, st);
    if (KEY("partial_checkpoint_complete")) {
        const char *pr = FIND(kq, end, "\"priority\":");
        int ok = 1;
        validate(p, pr ? (int)num_at(pr + 11, end) : 0, st, &ok);
        return 0;
    }
    if (KEY("checkpoint_complete")) {
        int ok = 1;
        validate(p, 1 << 30, st, &ok);
        p->completes++;
        st->completes++;
        if (cb != NULL && cb->on_complete != NULL && cb->on_complete(cb->ctx, p, ok)) return 1;
        return 0;
    }
#undef KEY
    return 0; /* unknown line types are ignored, as clients do */
}

/* split body bytes into lines; returns like load_proto_feed */
static int split_lines(load_proto_t *p, const char *d, size_t n, load_stats_t *st,
                       const load_proto_cb_t *cb)
{
    while (n > 0) {
        const char *nl = memchr(d, '\n', n);
        if (nl == NULL) return carry_append(p, d, n);
        size_t ll = (size_t)(nl - d);
        int rc;
        if (p->carry_len > 0) {
            if (carry_append(p, d, ll) != 0) return -1;
            rc = load_proto_line(p, p->carry, p->carry_len, st, cb);
            carry_reset(p);
        } else {
            rc = load_proto_line(p, d, ll, st, cb);
        }
        if (rc != 0) return rc;
        d = nl + 1;
        n -= ll + 1;
    }
    return 0;
}

/* Undo the Content-Encoding of n body bytes and hand the result to split_lines. */
static int decode(load_proto_t *p, const char *d, size_t n, load_stats_t *st,
                  const load_proto_cb_t *cb)
{
    if (p->enc == 0) {
        st->decoded_bytes += n;
        return split_lines(p, d, n, st, cb);
    }
    /* one decode buffer per thread, not per stream: thousands of streams decode in one loop */
    static __thread char dbuf[DBUF_SIZE];
    if (p->enc == 1) { /* a zstd stream of one or more frames */
        ZSTD_inBuffer in = {d, n, 0};
        while (in.pos < in.size) {
            ZSTD_outBuffer out = {dbuf, DBUF_SIZE, 0};
            size_t r = ZSTD_decompressStream(p->dec, &out, &in);
            if (ZSTD_isError(r)) return fail(p, "the zstd body does not decode");
            st->decoded_bytes += out.pos;
            int rc = split_lines(p, dbuf, out.pos, st, cb);
            if (rc != 0) return rc;
        }
        return 0;
    }
    z_stream *z = p->dec;
    z->next_in = (Bytef *)d;
    z->avail_in = (uInt)n;
    while (z->avail_in > 0) {
        z->next_out = (Bytef *)dbuf;
        z->avail_out = DBUF_SIZE;
        int r = inflate(z, Z_SYNC_FLUSH);
        if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
            return fail(p, "the gzip body does not decode");
        size_t got = DBUF_SIZE - z->avail_out;
        st->decoded_bytes += got;
        int rc = split_lines(p, dbuf, got, st, cb);
        if (rc != 0) return rc;
        if (r == Z_STREAM_END || (r == Z_BUF_ERROR && got == 0)) break;
    }
    return 0;
}

static int feed_body(load_proto_t *p, const char *d, size_t n, load_stats_t *st,
                     const load_proto_cb_t *cb)
{
    if (!p->chunked) {
        if (p->body_left >= 0 && (int64_t)n > p->body_left) n = (size_t)p->body_left;
        int rc = decode(p, d, n, st, cb);
        if (rc != 0) return rc;
        if (p->body_left >= 0) {
            p->body_left -= (int64_t)n;
            if (p->body_left == 0) {
                p->phase = LOAD_P_END;
                return 2;
            }
        }
        return 0;
    }
    while (n > 0) {
        switch (p->ch_state) {
        case CH_SIZE: {
            char c = *d++;
            n--;
            if (c >= '0' && c <= '9')
                p->ch_left = p->ch_left * 16 + (uint64_t)(c - '0');
            else if ((c | 32) >= 'a' && (c | 32) <= 'f')
                p->ch_left = p->ch_left * 16 + (uint64_t)((c | 32) - 'a' + 10);
            else if (c == '\n')
                p->ch_state = p->ch_left ? CH_DATA : CH_END;
            else if (c != '\r')
                p->ch_state = CH_EXT;
            if (p->ch_left > ((uint64_t)1 << 40)) return fail(p, "a chunk size is malformed");
            break;
        }
        case CH_EXT:
            n--;
            if (*d++ == '\n') p->ch_state = p->ch_left ? CH_DATA : CH_END;
            break;
        case CH_DATA: {
            size_t take = n < p->ch_left ? n : (size_t)p->ch_left;
            int rc = decode(p, d, take, st, cb);
            p->ch_left -= take;
            d += take;
            n -= take;
            if (p->ch_left == 0) p->ch_state = CH_CRLF;
            if (rc != 0) return rc;
            break;
        }
        case CH_CRLF:
            n--;
            if (*d++ == '\n') p->ch_state = CH_SIZE;
            break;
        default:
            break;
        }
        if (p->ch_state == CH_END) {
            p->phase = LOAD_P_END;
            return 2;
        }
    }
    return 0;
}

static int head_done(load_proto_t *p, const char *h, size_t n)
{
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0)
        return fail(p, "the response does not start with HTTP/1.x");
    p->status = (int)num_at(h + 9, h + n);
    for (const char *l = memchr(h, '\n', n); l != NULL && l < h + n;
         l = memchr(l + 1, '\n', (size_t)(h + n - l - 1))) {
        const char *s = l + 1;
        size_t rest = (size_t)(h + n - s);
        if (rest > 18 && strncasecmp(s, "transfer-encoding:", 18) == 0) {
            const char *e = memchr(s, '\n', rest);
            p->chunked = find(s, e ? e : h + n, "chunked", 7) != NULL;
        } else if (rest > 17 && strncasecmp(s, "content-encoding:", 17) == 0) {
            const char *e = memchr(s, '\n', rest);
            if (find(s, e ? e : h + n, "zstd", 4) != NULL)
                p->enc = 1;
            else if (find(s, e ? e : h + n, "gzip", 4) != NULL)
                p->enc = 2;
            else
                return fail(p, "the response has a Content-Encoding this reader does not know");
        } else if (rest > 15 && strncasecmp(s, "content-length:", 15) == 0) {
            const char *v = s + 15;
            while (*v == ' ')
                v++;
            p->body_left = num_at(v, h + n);
        }
    }
    if (p->status != 200) return fail(p, "the server answered a status other than 200");
    if (p->enc == 1) {
        p->dec = ZSTD_createDStream();
        if (p->dec == NULL || ZSTD_isError(ZSTD_initDStream(p->dec)))
            return fail(p, "out of memory");
    } else if (p->enc == 2) {
        z_stream *z = calloc(1, sizeof(*z));
        if (z == NULL || inflateInit2(z, 16 + 15) != Z_OK) {
            free(z);
            p->enc = 0;
            return fail(p, "out of memory");
        }
        p->dec = z;
    }
    p->phase = LOAD_P_BODY;
    return 0;
}

int load_proto_feed(load_proto_t *p, const char *data, size_t n, load_stats_t *st,
                    const load_proto_cb_t *cb)
{
    st->bytes += n;
    if (p->phase == LOAD_P_ERROR) return -1;
    if (p->phase == LOAD_P_END) return 2;
    if (p->phase == LOAD_P_HEADERS) {
        size_t old = p->carry_len;
        if (carry_append(p, data, n) != 0) return -1;
        size_t from = old > 3 ? old - 3 : 0;
        const char *e = find(p->carry + from, p->carry + p->carry_len, "\r\n\r\n", 4);
        if (e == NULL) {
            if (p->carry_len > 65536) return fail(p, "the response headers are longer than 64 KiB");
            return 0;
        }
        size_t hl = (size_t)(e + 4 - p->carry);
        if (head_done(p, p->carry, hl) != 0) return -1;
        /* the body bytes that came with the headers: they start at data + (hl - old) */
        size_t consumed = hl - old;
        p->carry_len = 0;
        carry_reset(p);
        data += consumed;
        n -= consumed;
        if (p->body_left == 0) {
            p->phase = LOAD_P_END;
            return 2;
        }
    }
    return n ? feed_body(p, data, n, st, cb) : 0;
}
