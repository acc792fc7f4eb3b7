/* gw_stream_int.h -- what the files of the sync stream route share (gw_stream*.c only)
 *
 * gw_stream.c runs the connection (rounds, output, wake-ups); gw_stream_cache.c remembers bucket
 * checksums per loop thread; gw_stream_subs.c holds the Sync Streams side of a request: the
 * subscriptions a client sent (`streams` in the body), the `streams` list of the first checkpoint
 * line and the `subscriptions` of each bucket. Nothing outside api/gw_stream*.c includes this
 * header.
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
    int parsed;         /* filled by gw__req_body (gw__subs_parse then keeps it) */
} gw_subs_t;

/**
 * Read `streams` of a /sync/stream body into *out (zeroed by the caller, or filled by
 * gw__req_body: then kept as it is). Returns 0; 400-worthy
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

/**
 * A request's bucket positions, in the order sent. The names are the client's and are never
 * hashed into a table: the stream matches them against its own buckets (by_name, the rules'
 * names), so a crafted set of names costs what any other does and holds no table of its own.
 */
typedef struct gw_position {
    size_t name;    /* offset of the NUL-terminated name in names */
    uint64_t after; /* the position the client holds */
} gw_position_t;

typedef struct gw_positions {
    gw_buf_t names;
    gw_position_t *v;
    size_t n, cap;
} gw_positions_t;

/** Append name (len bytes, copied) at after. */
void gw__positions_add(gw_positions_t *p, const char *name, size_t len, uint64_t after);

/** Empty p, keeping nothing (zero-initialised p is empty too). */
void gw__positions_free(gw_positions_t *p);

/** The name of entry i. */
static inline const char *gw__position_name(const gw_positions_t *p, size_t i)
{
    return p->names.data + p->v[i].name;
}

/**
 * The bucket positions of a /sync/stream body without a JSON tree: appends to positions from
 * the top-level "buckets" array and sets [*off, *end) to that array's span in body (0, 0 when
 * there is none). Returns 0, or -1 when the scanner gives up (a malformed body, an entry it does
 * not expect): the caller then parses the body with jansson as a whole and reports errors from
 * there. positions may hold entries after -1.
 */
int gw__req_positions(const char *body, size_t len, gw_positions_t *positions, size_t *off,
                      size_t *end);

/**
 * Parse a /sync/stream body: the bucket positions with gw__req_positions into *positions (zeroed
 * by the caller), the subscriptions, when they have the common shape, into *subs (zeroed by the
 * caller; subs->parsed set), and the rest with jansson, its "buckets" then an empty array and
 * its "streams" null; when the scanner gives up, the whole body with jansson (positions then
 * empty: the tree has everything, and gw__subs_parse reads the subscriptions from it with its
 * messages). Returns the tree (the caller owns it) or NULL with *jerr, as json_loadb.
 */
json_t *gw__req_body(const char *base, size_t len, const gw_config_t *cfg,
                     gw_positions_t *positions, gw_subs_t *subs, json_error_t *jerr);

/* ---- gw_stream_cache.c: bucket checksums as of a checkpoint, per loop thread ---- */

/** 1 and the checksum and count of bucket as of checkpoint as_of when this thread read them
 * before, else 0. */
int gw__cks_get(const char *bucket, uint64_t as_of, uint32_t *checksum, uint64_t *count);

/** Remember what storage answered for bucket as of as_of (a committed checkpoint). */
void gw__cks_put(const char *bucket, uint64_t as_of, uint32_t checksum, uint64_t count);

/** Release this thread's entries (its loop thread stops). */
void gw__cks_free(void);

#endif
