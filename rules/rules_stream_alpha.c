/* rules_stream_alpha.c -- the alpha form of Sync Streams (editions 1 and 2)
 *
 * Before edition 3, PowerSync compiled `streams:` with an older parser: one query per stream,
 * no CTEs, and bucket ids `<stream>|<variant>[...]` where a variant is one alternative of the
 * WHERE clause's disjunction. This file compiles that form into the same plan (rules_stream.h)
 * the edition-3 compiler produces, so evaluation is shared.
 */
#include "rules_stream.h"

void sa_stream(scompile_t *c, const char *name, const ssrc_t *src, int priority, int auto_subscribe,
               int accept_dangerous, int line, int col)
{
    (void)name;
    (void)priority;
    (void)auto_subscribe;
    (void)accept_dangerous;
    (void)line;
    (void)col;
    s_diag(c, 0, src, 0, "alpha streams are not supported yet; set \"config: {edition: 3}\"");
}
