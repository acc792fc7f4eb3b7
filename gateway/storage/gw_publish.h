/* gw_publish.h -- the publisher: committed checkpoints reported in order, once durable (backends)
 *
 * Every backend reports each commit the same way: once the commit is durable, in commit order,
 * it runs the hook (streams see the checkpoint and what changed), publishes the checkpoint that
 * readers of this process serve (gw_storage_pub_t, serving writers only), then runs the durable
 * callback (the replicator acknowledges the LSN to Postgres). A publisher does that on a thread
 * of its own, so the committing thread never waits for the disk unless it asks to. A backend
 * whose commits are not durable when COMMIT returns (SQLite with synchronous=NORMAL) gives a
 * make_durable callback, run once for every batch of queued commits (group commit).
 *
 * It also keeps the write checkpoints waiting for a commit at their LSN: a commit reports (in the
 * hook's write_checkpoints) every one whose LSN it reached.
 *
 * Threads: gw_publisher_commit from the writer's thread; the hook, the pub and the durable
 * callback run on the publisher's thread (or on the committing thread when the thread could not
 * start). Setters are safe against the publisher thread.
 */
#ifndef GW_PUBLISH_H
#define GW_PUBLISH_H

#include "storage/gw_storage.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_publisher gw_publisher_t;

/**
 * Start a publisher whose thread is named thread (top -H). make_durable (may be NULL) runs on
 * that thread before each batch of commits is published; pub (may be NULL) receives the
 * checkpoints while serving (the default). Returns the publisher (free with gw_publisher_free).
 */
gw_publisher_t *gw_publisher_new(const char *thread, void (*make_durable)(void *ud), void *ud,
                                 gw_storage_pub_t *pub);

/** Publish what is queued, stop the thread and free everything. NULL is fine. */
void gw_publisher_free(gw_publisher_t *p);

/** Install the hook (NULL removes it) / read it back. */
void gw_publisher_set_hook(gw_publisher_t *p, gw_storage_hook_fn fn, void *ud);
void gw_publisher_get_hook(const gw_publisher_t *p, gw_storage_hook_fn *fn, void **ud);

/** Install the durable callback (NULL removes it); waits for a batch being published. */
void gw_publisher_set_durable_fn(gw_publisher_t *p, void (*fn)(uint64_t lsn, void *ud), void *ud);

/**
 * Serve or not: whether the hook runs and checkpoints reach the pub. On: publishes cp at once
 * (the switch to a new rule version).
 */
void gw_publisher_set_serving(gw_publisher_t *p, int on, const gw_storage_cp_t *cp);

/** Whether the publisher serves. */
int gw_publisher_serving(const gw_publisher_t *p);

/** Remember write checkpoint key (copied), reported with the first commit whose LSN >= lsn. */
void gw_publisher_add_wcp(gw_publisher_t *p, const char *key, uint64_t lsn);

/** Move the waiting write checkpoints to another publisher (a switch of rule versions). */
void gw_publisher_move_wcps(gw_publisher_t *from, gw_publisher_t *to);

/**
 * Report a commit at checkpoint cp that touched buckets and lookup keys (copied): queued for the
 * publisher thread; with wait, returns once it was published. make_durable runs first. own: the
 * commit is this writer's (the durable callback runs for it); 0 for a commit another instance
 * made, relayed to this process's streams and readers.
 */
void gw_publisher_commit(gw_publisher_t *p, const gw_storage_cp_t *cp, const char *const *buckets,
                         size_t nbuckets, const char *const *lookups, size_t nlookups, int own,
                         int wait);

/** Wait until everything queued was published. */
void gw_publisher_settle(gw_publisher_t *p);

#endif
