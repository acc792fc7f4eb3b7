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
 * Called by gw_stream.c on its loop thread; everything is owned by the stream.
 */
#include "api/gw_stream_int.h"
#include "base/gw_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gw__subs_parse(json_t *body, const gw_config_t *cfg, gw_subs_t *out, const char **code,
                   char *msg, size_t msglen)
{
    gw_map_init(&out->stream_index);
    json_t *streams = body ? json_object_get(body, "streams") : NULL;
    *code = "bad_request";
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
            gw_buf_printf(out, "%s{\"default\":%zu}", first ? "" : ",", (size_t)(idx - 1));
        } else {
            gw_buf_printf(out, "%s{\"sub\":%d}", first ? "" : ",", reasons[i]);
        }
        first = 0;
    }
    gw_buf_puts(out, "]");
}
