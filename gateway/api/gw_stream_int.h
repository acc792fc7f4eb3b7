/* gw_stream_int.h -- what the files of the sync stream route share (gw_stream*.c only)
 *
 * gw_stream.c runs the connection (rounds, output, wake-ups); gw_stream_subs.c holds the Sync
 * Streams side of a request: the subscriptions a client sent (`streams` in the body), the
 * `streams` list of the first checkpoint line and the `subscriptions` of each bucket. Nothing
 * outside api/gw_stream*.c includes this header.
 */
#ifndef GW_STREAM_INT_H
#define GW_STREAM_INT_H

#include "base/gw_buf.h"
#include "base/gw_map.h"
#include "config/gw_config.h"
#include "rules/rules.h"

#include <jansson.h>

/**
 * The subscriptions of one stream connection and what its first checkpoint told the client.
 * Owned by the stream (gw__subs_free); strings are copies.
 */
typedef struct gw_subs {
    rules_subscription_t *subs; /* as rules_request_t wants them */
    char **names, **params;     /* the copies subs points to */
    size_t n;
    int exclude_defaults; /* streams.include_defaults was false */
    /* name -> index+1 in the first checkpoint's "streams" (defaults reference streams by it) */
    gw_map_t stream_index;
    int indexed;
    char *sent_streams; /* the `streams` the client last got (NULL before the first checkpoint) */
} gw_subs_t;

/**
 * Read `streams` of a /sync/stream body into *out (zeroed by the caller). Returns 0; 400-worthy
 * problems return -1 with code ("bad_request", "too_many_subscriptions",
 * "subscription_parameters_too_large") and a message naming the limit and the config key.
 */
int gw__subs_parse(json_t *body, const gw_config_t *cfg, gw_subs_t *out, const char **code,
                   char *msg, size_t msglen);

void gw__subs_free(gw_subs_t *s);

/** Let the request of rq use these subscriptions. */
void gw__subs_request(const gw_subs_t *s, rules_request_t *rq);

/**
 * Append `,"streams":[…]` for a full checkpoint line: every stream (or bucket definition) the
 * request subscribes to with its errors, then subscriptions to unknown streams, and remember
 * each name's index for the buckets' `{"default": i}`. Returns 1 when that list differs from the
 * one the client last got (always on the first call), which then needs a full `checkpoint` line
 * rather than a `checkpoint_diff` (the clients read `streams` from full checkpoints only: after a
 * rule version switch that changes the streams, a diff would leave them with the old list).
 */
int gw__subs_streams_json(gw_subs_t *s, const rules_buckets_t *b, gw_buf_t *out);

/**
 * Append `,"subscriptions":[…]` for one bucket: reasons are RULES_REASON_DEFAULT (rendered as
 * {"default": index of definition in the first checkpoint's streams}) or subscription indexes.
 */
void gw__subs_bucket_json(const gw_subs_t *s, const char *definition, const int *reasons,
                          size_t nreasons, gw_buf_t *out);

#endif
