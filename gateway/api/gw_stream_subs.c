/* gw_stream_subs.c -- Sync Streams subscriptions of a /sync/stream request
 *
 * The official clients send `"streams":{"include_defaults":bool,"subscriptions":[{"stream",
 * "parameters","override_priority"}]}` and open a new request whenever their subscriptions change
 * (powersync-protocol §1.2), so this runs once per request: parse and bound the subscriptions
 * (limits.max_subscriptions_per_connection, limits.max_subscription_parameter_bytes: past either
 * the request is refused with 400 naming the limit), hand them to the rules, and render what the
 * checkpoint lines say about them (§2.1): the first `checkpoint` lists the streams the request is
 * subscribed to with per-subscription errors (a subscription to an unknown stream, or whose
 * parameters the stream cannot use, is an error there, never a failed request), and every bucket
 * in `checkpoint` and `checkpoint_diff` names why it is included: `{"default": i}` (i indexes
 * the first checkpoint's streams) or `{"sub": j}` (j indexes the request's subscriptions).
 * Since a subscription change is a new request, opening must stay cheap: gw__req_body reads the
 * body's bucket positions and (in their common shape) its subscriptions with a small scanner
 * instead of a JSON tree, and leaves the rest, and anything unusual, to jansson.
 * Called by gw_stream.c on its loop thread; everything is owned by the stream.
 */
#include "api/gw_stream_int.h"
#include "base/gw_err.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gw__subs_parse(json_t *body, const gw_config_t *cfg, gw_subs_t *out, const char **code,
                   char *msg, size_t msglen)
{
    gw_map_init(&out->stream_index);
    *code = "bad_request";
    if (out->parsed) return 0; /* gw__req_body read them already */
    json_t *streams = body ? json_object_get(body, "streams") : NULL;
    if (streams == NULL || json_is_null(streams)) return 0;
    if (!json_is_object(streams)) {
        snprintf(msg, msglen, "\"streams\" must be an object");
        return -1;
    }
    json_t *inc = json_object_get(streams, "include_defaults");
    if (inc != NULL && !json_is_boolean(inc) && !json_is_null(inc)) {
        snprintf(msg, msglen, "\"streams.include_defaults\" must be true or false");
        return -1;
    }
    out->exclude_defaults = inc != NULL && json_is_false(inc);
    json_t *subs = json_object_get(streams, "subscriptions");
    if (subs == NULL || json_is_null(subs)) return 0;
    if (!json_is_array(subs)) {
        snprintf(msg, msglen, "\"streams.subscriptions\" must be an array");
        return -1;
    }
    size_t n = json_array_size(subs);
    if ((long)n > cfg->limits.max_subscriptions_per_connection) {
        *code = "too_many_subscriptions";
        snprintf(msg, msglen,
                 "too many stream subscriptions: %zu, more than "
                 "limits.max_subscriptions_per_connection (%ld)",
                 n, cfg->limits.max_subscriptions_per_connection);
        return -1;
    }
    out->subs = gw_xcalloc(n + 1, sizeof(rules_subscription_t));
    out->names = gw_xcalloc(n + 1, sizeof(char *));
    out->params = gw_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(subs, i);
        json_t *name = json_object_get(s, "stream");
        json_t *params = json_object_get(s, "parameters");
        json_t *prio = json_object_get(s, "override_priority");
        if (!json_is_object(s) || !json_is_string(name)) {
            snprintf(msg, msglen, "streams.subscriptions[%zu] needs a \"stream\" name", i);
            return -1;
        }
        if (prio != NULL && !json_is_null(prio) &&
            !(json_is_integer(prio) && json_integer_value(prio) >= 0 &&
              json_integer_value(prio) <= 3)) {
            snprintf(msg, msglen,
                     "streams.subscriptions[%zu].override_priority must be 0 to 3 or null", i);
            return -1;
        }
        char *text = NULL;
        if (params != NULL && !json_is_null(params)) {
            /* any JSON: a value that is not an object becomes an error of this subscription */
            text = json_dumps(params, JSON_COMPACT | JSON_ENCODE_ANY);
            if (text == NULL) abort();
            if ((long)strlen(text) > cfg->limits.max_subscription_parameter_bytes) {
                *code = "subscription_parameters_too_large";
                snprintf(msg, msglen,
                         "the parameters of streams.subscriptions[%zu] have %zu bytes, more than "
                         "limits.max_subscription_parameter_bytes (%ld)",
                         i, strlen(text), cfg->limits.max_subscription_parameter_bytes);
                free(text);
                return -1;
            }
        }
        out->names[i] = gw_xstrdup(json_string_value(name));
        out->params[i] = text;
        out->subs[i] = (rules_subscription_t){
            out->names[i], text, json_is_integer(prio) ? (int)json_integer_value(prio) : -1};
        out->n = i + 1;
    }
    return 0;
}

void gw__subs_free(gw_subs_t *s)
{
    if (s == NULL) return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->names[i]);
        free(s->params[i]);
    }
    free(s->names);
    free(s->params);
    free(s->subs);
    free(s->sent_streams);
    gw_map_free(&s->stream_index);
    memset(s, 0, sizeof(*s));
}

void gw__subs_request(const gw_subs_t *s, rules_request_t *rq)
{
    rq->subs = s->subs;
    rq->nsubs = s->n;
    rq->exclude_defaults = s->exclude_defaults;
}

static void stream_errors(const rules_buckets_t *b, const char *name, gw_buf_t *out)
{
    gw_buf_puts(out, ",\"errors\":[");
    int first = 1;
    for (size_t i = 0; i < b->nerrors; i++) {
        if (strcmp(b->errors[i].stream, name) != 0) continue;
        gw_buf_puts(out, first ? "{\"subscription\":" : ",{\"subscription\":");
        first = 0;
        if (b->errors[i].subscription < 0)
            gw_buf_puts(out, "\"default\"");
        else
            gw_buf_printf(out, "%d", b->errors[i].subscription);
        gw_buf_puts(out, ",\"message\":");
        gw_buf_json_str(out, b->errors[i].message);
        gw_buf_puts(out, "}");
    }
    gw_buf_puts(out, "]}");
}

int gw__subs_streams_json(gw_subs_t *s, const rules_buckets_t *b, gw_buf_t *out)
{
    gw_map_free(&s->stream_index);
    gw_map_init(&s->stream_index);
    size_t start = out->len;
    gw_buf_puts(out, ",\"streams\":[");
    size_t k = 0;
    for (size_t i = 0; i < b->nstreams; i++, k++) {
        if (k > 0) gw_buf_puts(out, ",");
        gw_buf_puts(out, "{\"name\":");
        gw_buf_json_str(out, b->streams[i].name);
        gw_buf_printf(out, ",\"is_default\":%s", b->streams[i].is_default ? "true" : "false");
        stream_errors(b, b->streams[i].name, out);
        gw_map_put(&s->stream_index, b->streams[i].name, (void *)(uintptr_t)(k + 1));
    }
    /* streams the rules do not define: listed so the client sees its subscription's error */
    for (size_t i = 0; i < b->nerrors; i++) {
        const char *name = b->errors[i].stream;
        if (gw_map_get(&s->stream_index, name) != NULL) continue;
        if (k++ > 0) gw_buf_puts(out, ",");
        gw_buf_puts(out, "{\"name\":");
        gw_buf_json_str(out, name);
        gw_buf_puts(out, ",\"is_default\":false");
        stream_errors(b, name, out);
        gw_map_put(&s->stream_index, name, (void *)(uintptr_t)k);
    }
    gw_buf_puts(out, "]");
    s->indexed = 1;
    size_t len = out->len - start;
    if (s->sent_streams != NULL && strlen(s->sent_streams) == len &&
        memcmp(s->sent_streams, out->data + start, len) == 0)
        return 0;
    free(s->sent_streams);
    s->sent_streams = gw_xmalloc(len + 1);
    memcpy(s->sent_streams, out->data + start, len);
    s->sent_streams[len] = '\0';
    return 1;
}

void gw__subs_bucket_json(const gw_subs_t *s, const char *definition, const int *reasons,
                          size_t nreasons, gw_buf_t *out)
{
    gw_buf_puts(out, ",\"subscriptions\":[");
    int first = 1;
    for (size_t i = 0; i < nreasons; i++) {
        if (reasons[i] == RULES_REASON_DEFAULT) {
            uintptr_t idx = definition ? (uintptr_t)gw_map_get(&s->stream_index, definition) : 0;
            if (idx == 0) continue; /* a stream the first checkpoint did not list */
            gw_buf_puts(out, first ? "{\"default\":" : ",{\"default\":");
            gw_buf_u64(out, (uint64_t)(idx - 1));
        } else {
            gw_buf_puts(out, first ? "{\"sub\":" : ",{\"sub\":");
            gw_buf_u64(out, (uint64_t)reasons[i]);
        }
        gw_buf_puts(out, "}");
        first = 0;
    }
    gw_buf_puts(out, "]");
}

/* ---- the request's bucket positions, without a JSON tree ------------------------------------
 *
 * A reconnecting client sends every bucket it holds with its position ("buckets":[{"name",
 * "after"}], 200 entries are common): parsing that with jansson (an object per entry) cost
 * more than everything else of opening a stream. This scanner walks the body once: it checks
 * that the text is one JSON object (strings, escapes, nesting; numbers and literals by their
 * characters), takes the positions from the top-level "buckets" array into a list, and reports
 * the array's span so the caller parses the rest with jansson without it. Anything it does not
 * expect (a position that is neither digits nor a string of digits, a malformed body) makes it
 * give up, and the caller parses the whole body with jansson as before, so errors and their
 * messages do not change. */

typedef struct scan {
    const char *p, *end;
} scan_t;

static void sc_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* A string at s->p; its unescaped bytes appended to out when out is not NULL. */
static int sc_string(scan_t *s, gw_buf_t *out)
{
    if (s->p >= s->end || *s->p != '"') return -1;
    s->p++;
    while (s->p < s->end) {
        const char *run = s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\' && (unsigned char)*s->p >= 0x20)
            s->p++;
        if (out && s->p > run) gw_buf_append(out, run, (size_t)(s->p - run));
        if (s->p >= s->end || (unsigned char)*s->p < 0x20) return -1;
        if (*s->p == '"') {
            s->p++;
            return 0;
        }
        /* an escape */
        if (s->end - s->p < 2) return -1;
        char e = s->p[1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (simple && e) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            if (out) gw_buf_append(out, &map[simple - "\"\\/bfnrt"], 1);
            s->p += 2;
            continue;
        }
        if (e != 'u' || s->end - s->p < 6) return -1;
        unsigned cp;
        if (hex4(s->p + 2, &cp) != 0) return -1;
        s->p += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair, or give up */
            unsigned lo;
            if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' ||
                hex4(s->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            s->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return -1;
        }
        if (out) {
            char u[4];
            size_t n;
            if (cp < 0x80) {
                u[0] = (char)cp;
                n = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | cp >> 6);
                u[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | cp >> 12);
                u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                n = 3;
            } else {
                u[0] = (char)(0xF0 | cp >> 18);
                u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
                u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                n = 4;
            }
            gw_buf_append(out, u, n);
        }
    }
    return -1;
}

/* A literal or a number, exactly as JSON writes them; *simple (when given) is cleared for a
 * number jansson would print differently (a fraction, an exponent, -0, beyond 18 digits). */
static int sc_scalar(scan_t *s, int *simple)
{
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, lits[i], n) == 0) {
            s->p += n;
            return 0;
        }
    }
    const char *start = s->p;
    if (s->p < s->end && *s->p == '-') s->p++;
    const char *digits = s->p;
    if (s->p >= s->end || !isdigit((unsigned char)*s->p)) return -1;
    if (*s->p == '0' && s->p + 1 < s->end && isdigit((unsigned char)s->p[1])) return -1;
    while (s->p < s->end && isdigit((unsigned char)*s->p))
        s->p++;
    int plain = s->p - digits <= 18 && !(*digits == '0' && start != digits);
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (s->p >= s->end || !isdigit((unsigned char)*s->p)) return -1;
        while (s->p < s->end && isdigit((unsigned char)*s->p))
            s->p++;
        plain = 0;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (s->p >= s->end || !isdigit((unsigned char)*s->p)) return -1;
        while (s->p < s->end && isdigit((unsigned char)*s->p))
            s->p++;
        plain = 0;
    }
    if (simple && !plain) *simple = 0;
    return 0;
}

/* Any value; depth bounds nesting. */
static int sc_value(scan_t *s, int depth)
{
    sc_ws(s);
    if (s->p >= s->end || depth > 64) return -1;
    char c = *s->p;
    if (c == '"') return sc_string(s, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        sc_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                sc_ws(s);
                if (sc_string(s, NULL) != 0) return -1;
                sc_ws(s);
                if (s->p >= s->end || *s->p++ != ':') return -1;
            }
            if (sc_value(s, depth + 1) != 0) return -1;
            sc_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p++ != close) return -1;
            return 0;
        }
    }
    return sc_scalar(s, NULL);
}

void gw__positions_add(gw_positions_t *p, const char *name, size_t len, uint64_t after)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->v = gw_xrealloc(p->v, p->cap * sizeof(*p->v));
    }
    p->v[p->n++] = (gw_position_t){.name = p->names.len, .after = after};
    gw_buf_append(&p->names, name, len);
    gw_buf_append(&p->names, "", 1);
}

void gw__positions_free(gw_positions_t *p)
{
    gw_buf_free(&p->names);
    free(p->v);
    memset(p, 0, sizeof(*p));
}

/* One {"name": "...", "after": "N" | N, ...} entry appended to positions. */
static int sc_position(scan_t *s, gw_positions_t *positions, gw_buf_t *name)
{
    sc_ws(s);
    if (s->p >= s->end || *s->p++ != '{') return -1;
    int have_name = 0;
    uint64_t after = 0;
    sc_ws(s);
    if (s->p < s->end && *s->p == '}') return -1; /* no name: let jansson's path decide */
    for (;;) {
        sc_ws(s);
        const char *k = s->p;
        if (sc_string(s, NULL) != 0) return -1;
        size_t klen = (size_t)(s->p - k);
        sc_ws(s);
        if (s->p >= s->end || *s->p++ != ':') return -1;
        sc_ws(s);
        if (klen == 6 && memcmp(k, "\"name\"", 6) == 0) {
            name->len = 0;
            if (s->p >= s->end || *s->p != '"' || sc_string(s, name) != 0) return -1;
            if (memchr(name->data ? name->data : "", '\0', name->len)) return -1;
            have_name = 1;
        } else if (klen == 7 && memcmp(k, "\"after\"", 7) == 0) {
            int quoted = s->p < s->end && *s->p == '"';
            if (quoted) s->p++;
            const char *d = s->p;
            while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
                s->p++;
            if (s->p == d || s->p - d > 19) return -1;
            after = strtoull(d, NULL, 10);
            if (quoted && (s->p >= s->end || *s->p++ != '"')) return -1;
        } else if (sc_value(s, 2) != 0) {
            return -1;
        }
        sc_ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        if (*s->p++ != '}') return -1;
        break;
    }
    if (!have_name) return -1;
    gw__positions_add(positions, name->data ? name->data : "", name->len, after);
    return 0;
}

static int req_scan(const char *body, size_t len, gw_positions_t *positions, size_t *off,
                    size_t *end, size_t *soff, size_t *send);

int gw__req_positions(const char *body, size_t len, gw_positions_t *positions, size_t *off,
                      size_t *end)
{
    size_t so, se;
    return req_scan(body, len, positions, off, end, &so, &se);
}

/* gw__req_positions, and [*soff, *send) the span of a top-level "streams" object (0, 0: none) */
static int req_scan(const char *body, size_t len, gw_positions_t *positions, size_t *off,
                    size_t *end, size_t *soff, size_t *send)
{
    scan_t s = {body, body + len};
    *off = *end = *soff = *send = 0;
    int found_streams = 0;
    sc_ws(&s);
    if (s.p >= s.end || *s.p++ != '{') return -1;
    sc_ws(&s);
    if (s.p < s.end && *s.p == '}') return 0;
    gw_buf_t name = GW_BUF_INIT;
    int rc = 0, found = 0;
    for (; rc == 0;) {
        sc_ws(&s);
        const char *k = s.p;
        if (sc_string(&s, NULL) != 0) {
            rc = -1;
            break;
        }
        int is_buckets = s.p - k == 9 && memcmp(k, "\"buckets\"", 9) == 0;
        int is_streams = s.p - k == 9 && memcmp(k, "\"streams\"", 9) == 0;
        if (is_streams && found_streams++) { /* a duplicate key: jansson's path decides */
            rc = -1;
            break;
        }
        sc_ws(&s);
        if (s.p >= s.end || *s.p++ != ':') {
            rc = -1;
            break;
        }
        sc_ws(&s);
        if (is_buckets && s.p < s.end && *s.p == '[') {
            if (found) { /* a duplicate key: jansson's path decides */
                rc = -1;
                break;
            }
            found = 1;
            *off = (size_t)(s.p - body);
            s.p++;
            sc_ws(&s);
            if (s.p < s.end && *s.p == ']') {
                s.p++;
            } else {
                for (;;) {
                    if (sc_position(&s, positions, &name) != 0) {
                        rc = -1;
                        break;
                    }
                    sc_ws(&s);
                    if (s.p < s.end && *s.p == ',') {
                        s.p++;
                        continue;
                    }
                    if (s.p >= s.end || *s.p++ != ']') rc = -1;
                    break;
                }
            }
            *end = (size_t)(s.p - body);
        } else {
            const char *v = s.p;
            if (sc_value(&s, 1) != 0) rc = -1;
            if (rc == 0 && is_streams && *v == '{') {
                *soff = (size_t)(v - body);
                *send = (size_t)(s.p - body);
            }
        }
        if (rc != 0) break;
        sc_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            continue;
        }
        if (s.p >= s.end || *s.p++ != '}') rc = -1;
        break;
    }
    gw_buf_free(&name);
    if (rc == 0) {
        sc_ws(&s);
        if (s.p != s.end) rc = -1;
    }
    if (rc != 0) *off = *end = *soff = *send = 0;
    return rc;
}

/* ---- the subscriptions without a JSON tree -------------------------------------------------
 * The common shape only: "streams":{"include_defaults":bool|null,"subscriptions":[{"stream":
 * "name","parameters":{flat object}|null,"override_priority":0..3|null}]} with no escapes and
 * no duplicate keys, where each parameters object has strings without escapes, integers jansson
 * prints as written, true, false or null. Its compact text is then the bytes between the
 * tokens, exactly what json_dumps(JSON_COMPACT) writes. Anything else, and anything over a
 * limit, gives up (the caller's jansson path decides, with its messages). */

static int key_is(const char *k, size_t klen, const char *name)
{
    return klen == strlen(name) + 2 && memcmp(k + 1, name, klen - 2) == 0;
}

/* a flat parameters object at s->p into its compact text (malloc'd), or NULL to give up */
static char *sc_params(scan_t *s)
{
    gw_buf_t out = GW_BUF_INIT;
    if (s->p >= s->end || *s->p != '{') return NULL;
    s->p++;
    gw_buf_puts(&out, "{");
    const char *keys[16];
    size_t klens[16];
    int nkeys = 0;
    sc_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        gw_buf_puts(&out, "}");
        return out.data;
    }
    for (;;) {
        sc_ws(s);
        const char *k = s->p;
        if (sc_string(s, NULL) != 0 || memchr(k, '\\', (size_t)(s->p - k)) || nkeys == 16) break;
        size_t klen = (size_t)(s->p - k);
        int dup = 0;
        for (int i = 0; i < nkeys; i++)
            dup |= klens[i] == klen && memcmp(keys[i], k, klen) == 0;
        if (dup) break;
        keys[nkeys] = k;
        klens[nkeys++] = klen;
        gw_buf_append(&out, k, klen);
        sc_ws(s);
        if (s->p >= s->end || *s->p++ != ':') break;
        gw_buf_puts(&out, ":");
        sc_ws(s);
        const char *v = s->p;
        int simple = 1;
        if (s->p < s->end && *s->p == '"') {
            if (sc_string(s, NULL) != 0 || memchr(v, '\\', (size_t)(s->p - v))) break;
        } else if (sc_scalar(s, &simple) != 0 || !simple) {
            break;
        }
        gw_buf_append(&out, v, (size_t)(s->p - v));
        sc_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            gw_buf_puts(&out, ",");
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            gw_buf_puts(&out, "}");
            return out.data;
        }
        break;
    }
    gw_buf_free(&out);
    return NULL;
}

static void subs_add(gw_subs_t *out, size_t *cap, char *name, char *params, int prio)
{
    if (out->n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        out->subs = gw_xrealloc(out->subs, (*cap + 1) * sizeof(rules_subscription_t));
        out->names = gw_xrealloc(out->names, (*cap + 1) * sizeof(char *));
        out->params = gw_xrealloc(out->params, (*cap + 1) * sizeof(char *));
    }
    out->names[out->n] = name;
    out->params[out->n] = params;
    out->subs[out->n] = (rules_subscription_t){name, params, prio};
    out->n++;
}

/* One subscription object at s->p into out; -1 to give up. */
static int sc_subscription(scan_t *s, gw_subs_t *out, size_t *cap, const gw_config_t *cfg)
{
    sc_ws(s);
    if (s->p >= s->end || *s->p++ != '{') return -1;
    gw_buf_t name = GW_BUF_INIT;
    char *params = NULL;
    int prio = -1, have_name = 0, have_params = 0, have_prio = 0;
    for (;;) {
        sc_ws(s);
        const char *k = s->p;
        if (sc_string(s, NULL) != 0) goto fail;
        size_t klen = (size_t)(s->p - k);
        sc_ws(s);
        if (s->p >= s->end || *s->p++ != ':') goto fail;
        sc_ws(s);
        if (key_is(k, klen, "stream")) {
            const char *v = s->p;
            if (have_name++ || s->p >= s->end || *s->p != '"' || sc_string(s, &name) != 0 ||
                memchr(v, '\\', (size_t)(s->p - v)))
                goto fail;
        } else if (key_is(k, klen, "parameters")) {
            if (have_params++) goto fail;
            if ((size_t)(s->end - s->p) >= 4 && memcmp(s->p, "null", 4) == 0) {
                s->p += 4;
            } else if ((params = sc_params(s)) == NULL) {
                goto fail;
            } else if ((long)strlen(params) > cfg->limits.max_subscription_parameter_bytes) {
                goto fail;
            }
        } else if (key_is(k, klen, "override_priority")) {
            if (have_prio++) goto fail;
            if ((size_t)(s->end - s->p) >= 4 && memcmp(s->p, "null", 4) == 0) {
                s->p += 4;
            } else if (s->p < s->end && *s->p >= '0' && *s->p <= '3' &&
                       (s->p + 1 >= s->end || !isdigit((unsigned char)s->p[1]))) {
                prio = *s->p++ - '0';
            } else {
                goto fail;
            }
        } else if (sc_value(s, 3) != 0) {
            goto fail;
        }
        sc_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p >= s->end || *s->p++ != '}') goto fail;
        break;
    }
    if (!have_name || name.data == NULL || memchr(name.data, '\0', name.len)) goto fail;
    subs_add(out, cap, gw_xstrdup(name.data), params, prio);
    gw_buf_free(&name);
    return 0;
fail:
    gw_buf_free(&name);
    free(params);
    return -1;
}

/* The "streams" object [off, end) of body into out (empty); 0, or -1 (out emptied) to give up. */
static int subs_fast(const char *body, size_t off, size_t end, const gw_config_t *cfg,
                     gw_subs_t *out)
{
    scan_t s = {body + off, body + end};
    size_t cap = 0;
    int have_inc = 0, have_subs = 0, rc = 0;
    s.p++; /* the '{' */
    sc_ws(&s);
    if (s.p < s.end && *s.p == '}') return 0;
    for (; rc == 0;) {
        sc_ws(&s);
        const char *k = s.p;
        if (sc_string(&s, NULL) != 0) {
            rc = -1;
            break;
        }
        size_t klen = (size_t)(s.p - k);
        sc_ws(&s);
        if (s.p >= s.end || *s.p++ != ':') {
            rc = -1;
            break;
        }
        sc_ws(&s);
        if (key_is(k, klen, "include_defaults")) {
            if (have_inc++) {
                rc = -1;
            } else if ((size_t)(s.end - s.p) >= 5 && memcmp(s.p, "false", 5) == 0) {
                out->exclude_defaults = 1;
                s.p += 5;
            } else if ((size_t)(s.end - s.p) >= 4 &&
                       (memcmp(s.p, "true", 4) == 0 || memcmp(s.p, "null", 4) == 0)) {
                s.p += 4;
            } else {
                rc = -1;
            }
        } else if (key_is(k, klen, "subscriptions")) {
            if (have_subs++) {
                rc = -1;
            } else if ((size_t)(s.end - s.p) >= 4 && memcmp(s.p, "null", 4) == 0) {
                s.p += 4;
            } else if (s.p < s.end && *s.p == '[') {
                s.p++;
                sc_ws(&s);
                if (s.p < s.end && *s.p == ']') {
                    s.p++;
                } else {
                    for (;;) {
                        if ((long)out->n >= cfg->limits.max_subscriptions_per_connection ||
                            sc_subscription(&s, out, &cap, cfg) != 0) {
                            rc = -1;
                            break;
                        }
                        sc_ws(&s);
                        if (s.p < s.end && *s.p == ',') {
                            s.p++;
                            continue;
                        }
                        if (s.p >= s.end || *s.p++ != ']') rc = -1;
                        break;
                    }
                }
            } else {
                rc = -1;
            }
        } else if (sc_value(&s, 2) != 0) {
            rc = -1;
        }
        if (rc != 0) break;
        sc_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            continue;
        }
        if (s.p >= s.end || *s.p++ != '}') rc = -1;
        break;
    }
    if (rc != 0) {
        gw__subs_free(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}

json_t *gw__req_body(const char *base, size_t len, const gw_config_t *cfg,
                     gw_positions_t *positions, gw_subs_t *subs, json_error_t *jerr)
{
    size_t off, end, soff, send;
    if (req_scan(base, len, positions, &off, &end, &soff, &send) != 0) {
        gw__positions_free(positions); /* parsed as a whole below; positions come from the tree */
        return json_loadb(base, len, 0, jerr);
    }
    /* the subscriptions, when they have the common shape; "streams" then reads as null */
    if (send > soff && subs_fast(base, soff, send, cfg, subs) == 0) {
        subs->parsed = 1;
    } else {
        soff = send = 0;
    }
    if (end <= off && send <= soff) return json_loadb(base, len, 0, jerr);
    /* the body without what was read here, in text order: "buckets":[] and "streams":null */
    struct {
        size_t a, b;
        const char *with;
    } cut[2] = {{off, end, "[]"}, {soff, send, "null"}};
    if (soff < off) {
        cut[0] = (typeof(cut[0])){soff, send, "null"};
        cut[1] = (typeof(cut[1])){off, end, "[]"};
    }
    gw_buf_t rest = GW_BUF_INIT;
    size_t at = 0;
    for (int i = 0; i < 2; i++) {
        if (cut[i].b <= cut[i].a) continue;
        gw_buf_append(&rest, base + at, cut[i].a - at);
        gw_buf_puts(&rest, cut[i].with);
        at = cut[i].b;
    }
    gw_buf_append(&rest, base + at, len - at);
    json_t *body = json_loadb(rest.data, rest.len, 0, jerr);
    gw_buf_free(&rest);
    return body;
}
