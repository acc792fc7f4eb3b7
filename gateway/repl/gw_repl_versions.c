/* gw_repl_versions.c -- rule versions: a new version built beside the serving one, the switch
 *
 * The storage serves one rule version (state "serving"). Each version has its own slot
 * ("<slot_prefix>_<version>"), rows, lookups, state and buckets ("<version>#…"), and keeps the
 * hash and text of its rules. A new version (number "version_seq" + 1) is built beside the
 * serving one by a builder (state "building"): a second replicator with its own thread, slot and
 * storage writer.
 *
 *   SERVING N ---- rules file changed ----> BUILDING N+1 beside N ---- builder consistent ---->
 *   (start: gw__repl_resolve_version;      (builder_create; the        and its LSN >= N's:
 *    running: poll_rules)                   builder runs the same      switch_wanted
 *                                           CHECK..STREAM pass)        (gw__repl_rule_versions)
 *        ^                                        |                           |
 *        |  file edited back to N's rules:        v                           v
 *        +---- builder_discard (N+1 retired) -----+        SWITCH (gw__repl_do_switch): one commit
 *                                                          serving = N+1, building = none, N
 *   RETIRED N: slot and data dropped about 10 s after      retired, checkpoint advanced past
 *   the switch (gw__repl_drop_retired), one commit         every op id handed out; serving
 *   per version                                            moves to N+1's writer
 *
 * A serving version whose slot is gone (dropped, WAL lost, or the source failed over to a
 * standby, which has no slots) cannot stream again: gw__repl_rebuild() builds the same rules
 * into a new version from a new snapshot beside it, with the machinery above (the serving
 * replicator waits in REBUILD instead of streaming; readiness says why), and switches when the
 * new version is consistent: its data is the new source's, whatever the old one had.
 *
 *   SERVING N, slot gone --(gw__repl_rebuild)--> BUILDING N+1 (same rules) --consistent-->
 *   SWITCH (no LSN comparison: N's LSNs belong to a source that is gone)
 *
 * Once the builder is consistent and its stored LSN is at or past the serving one's (it has
 * everything the old version serves), the serving replicator leaves its stream loop, stops the
 * builder and takes its version over in one storage commit, then streams the new slot from the
 * new version's LSN. Retired versions ("retired": "<version>:<slot>,…") lose their slot and data
 * a little after the switch (streams re-evaluate their buckets first). Every step is one storage
 * commit, so a crash at any point restarts from a state that is either "building" (the builder
 * resumes) or "switched".
 */
#include "repl/gw_repl_int.h"
#include "base/gw_log.h"
#include "config/gw_rules.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

void gw__repl_set_next(gw_repl_t *r, gw_repl_t *b)
{
    pthread_mutex_lock(&r->next_lock);
    r->next = b;
    pthread_mutex_unlock(&r->next_lock);
}

int gw__repl_state_read(gw_storage_t *st, const char *key, char *buf, size_t len, gw_err_t *err)
{
    int got = gw_storage_state_get(st, key, buf, len);
    if (got >= 0) return got;
    return gw_err_set(err, GW_EIO, "repl",
                      "could not read \"%s\" from storage; nothing is decided on it until storage "
                      "answers",
                      key);
}

/* The version number for a new version: above every one the file has seen; -1 with err set when
 * storage could not be read. */
static long next_version(gw_storage_t *st, gw_err_t *err)
{
    static const char *const keys[] = {GW_STATE_VERSION_SEQ, GW_STATE_SERVING, GW_STATE_BUILDING};
    long v = 0;
    for (size_t i = 0; i < 3; i++) {
        char b[32] = "";
        int got = gw__repl_state_read(st, keys[i], b, sizeof(b), err);
        if (got < 0) return -1;
        if (got && strtol(b, NULL, 10) > v) v = strtol(b, NULL, 10);
    }
    return v + 1;
}

/* Write a new version's own state through st (in that version's namespace), inside a txn. */
static int init_version(gw_repl_t *r, gw_storage_t *st, const char *version, const char *hash,
                        const char *text, gw_err_t *err)
{
    char slot[160];
    snprintf(slot, sizeof(slot), "%s_%s", r->slot_prefix, version);
    int rc = gw_storage_state_set(st, GW_STATE_VERSION_SEQ, version, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_hash", hash, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_text", text, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_version", version, err);
    if (rc == 0) rc = gw_storage_state_set(st, "slot", slot, err);
    if (rc == 0) rc = gw_storage_state_set(st, "slot_created", "0", err);
    if (rc == 0) rc = gw_storage_set_consistent(st, 0, err);
    return rc;
}

/* Add "<version>:<slot>" to the retired versions, inside a txn. */
static int retire(gw_storage_t *st, const char *version, const char *slot, gw_err_t *err)
{
    char cur[2048] = "", buf[2300];
    if (gw__repl_state_read(st, GW_STATE_RETIRED, cur, sizeof(cur), err) < 0) return err->code;
    snprintf(buf, sizeof(buf), "%s%s%s:%s", cur, cur[0] ? "," : "", version, slot);
    return gw_storage_state_set(st, GW_STATE_RETIRED, buf, err);
}

/* No version is being built any more: version (slot slot) is retired, in one commit. */
static int abandon_build(gw_storage_t *st, const char *version, const char *slot, gw_err_t *err)
{
    int rc = gw_storage_begin(st, err);
    if (rc == 0) rc = gw_storage_state_set(st, GW_STATE_BUILDING, "", err);
    if (rc == 0) rc = retire(st, version, slot, err);
    if (rc == 0)
        rc = gw_storage_commit(st, 0, err);
    else
        gw_storage_rollback(st);
    return rc;
}

/* abandon_build for the stored build of version (at start, before any builder runs). */
static int abandon_stored_build(gw_storage_t *st, const char *version, gw_err_t *err)
{
    char key[64], slot[160] = "";
    snprintf(key, sizeof(key), "%s#slot", version);
    if (gw__repl_state_read(st, key, slot, sizeof(slot), err) < 0) return err->code;
    return abandon_build(st, version, slot, err);
}

int gw__repl_state_text(gw_storage_t *st, const char *key, char **out, gw_err_t *err)
{
    *out = NULL;
    size_t len = 4096;
    for (;;) {
        char *buf = gw_xmalloc(len);
        int got = gw__repl_state_read(st, key, buf, len, err);
        if (got <= 0) {
            free(buf);
            return got;
        }
        if (strlen(buf) + 1 < len) {
            *out = buf;
            return 1;
        }
        free(buf);
        if (len >= ((size_t)64 << 20)) return 0;
        len *= 4;
    }
}

/* Record a new rules/version pair for request handlers (owned by r until destroy). */
gw_active_t *gw__repl_add_active(gw_repl_t *r, rules_set_t *rules, const char *version,
                                 uint64_t since_op)
{
    gw_active_t *a = gw_xcalloc(1, sizeof(*a));
    a->rules = rules_ref(rules);
    snprintf(a->version, sizeof(a->version), "%s", version);
    a->since_op = since_op;
    r->actives = gw_xrealloc(r->actives, (r->nactives + 1) * sizeof(*r->actives));
    r->actives[r->nactives++] = a;
    atomic_store(&r->active, a);
    return a;
}

/*
 * Create the builder of a new version with rules (hash, text) beside r; resume is the number of
 * a version being built already (its state is kept), NULL for a new one. Not started.
 */
static int builder_create(gw_repl_t *r, rules_set_t *rules, const char *hash, const char *text,
                          const char *resume, gw_err_t *err)
{
    char v[32];
    if (resume != NULL) {
        snprintf(v, sizeof(v), "%s", resume);
    } else {
        long n = next_version(r->st, err);
        if (n < 0) return err->code;
        snprintf(v, sizeof(v), "%ld", n);
    }
    gw_storage_t *bst;
    if (gw_storage_open_version(r->sopts, v, &bst, err) != 0) return GW_EIO;
    gw_storage_set_serving(bst, 0);
    int rc = 0;
    if (resume == NULL) {
        rc = gw_storage_begin(bst, err);
        if (rc == 0) rc = gw_storage_state_set(bst, GW_STATE_BUILDING, v, err);
        if (rc == 0) rc = init_version(r, bst, v, hash, text, err);
        if (rc == 0)
            rc = gw_storage_commit(bst, 0, err);
        else
            gw_storage_rollback(bst);
    }
    if (rc != 0) {
        gw_storage_close(bst);
        return rc;
    }
    gw_repl_t *b = gw__repl_new(r->cfg, rules, hash, v, bst);
    b->builder = 1;
    b->compact_interval = 0;
    gw__repl_set_next(r, b);
    gw_info("repl",
            resume != NULL ? "resuming the build of a new rule version beside the serving one"
                           : "building a new rule version beside the serving one",
            "version=%s serving=%s slot=%s", v, r->version, b->slot);
    return 0;
}

/* Stop and forget the builder; its version is retired (slot and data dropped later). r's
 * storage must have no open transaction. */
static int builder_discard(gw_repl_t *r, const char *why, gw_err_t *err)
{
    gw_repl_t *b = r->next;
    if (b == NULL) return 0;
    gw_repl_stop(b);
    char version[32], slot[160];
    snprintf(version, sizeof(version), "%s", b->version);
    snprintf(slot, sizeof(slot), "%s", b->slot);
    gw__repl_set_next(r, NULL);
    gw_repl_destroy(b);
    int rc = abandon_build(r->st, version, slot, err);
    r->old_pending = 1;
    gw_info("repl", "stopped building a rule version", "version=%s reason=\"%s\"", version, why);
    return rc;
}

int gw__repl_resolve_version(gw_repl_t *r, rules_set_t *rules, const char *hash, const char *text,
                             rules_set_t **serve_rules, gw_err_t *err)
{
    gw_storage_t *st = r->st;
    /* every value read first: a storage that does not answer decides nothing (taken for a fresh
     * storage, it would start a new version and retire the one serving) */
    char serving[32] = "", building[32] = "", stored_hash[64] = "", bhash[64] = "", key[64];
    *serve_rules = NULL;
    if (gw__repl_state_read(st, GW_STATE_SERVING, serving, sizeof(serving), err) < 0 ||
        gw__repl_state_read(st, GW_STATE_BUILDING, building, sizeof(building), err) < 0 ||
        gw__repl_state_read(st, "rules_hash", stored_hash, sizeof(stored_hash), err) < 0)
        return err->code;
    snprintf(key, sizeof(key), "%s#rules_hash", building);
    if (building[0] != '\0' && gw__repl_state_read(st, key, bhash, sizeof(bhash), err) < 0)
        return err->code;
    *serve_rules = rules_ref(rules);
    if (serving[0] != '\0' && stored_hash[0] != '\0' && strcmp(stored_hash, hash) == 0) {
        /* the version the storage serves: go on (a build of other rules is abandoned) */
        snprintf(r->version, sizeof(r->version), "%s", serving);
        if (building[0] != '\0' && strcmp(bhash, hash) == 0) {
            /* the same rules built again: the serving version lost its slot (gw__repl_rebuild) */
            r->rebuilding = 1;
            return builder_create(r, rules, hash, text, building, err);
        }
        if (building[0] != '\0') {
            int rc = abandon_stored_build(st, building, err);
            if (rc != 0) return rc;
            gw_info("repl",
                    "the sync rules are the serving version's again: dropping the version "
                    "that was being built",
                    "version=%s", building);
        }
        return 0;
    }
    if (serving[0] != '\0') {
        /* other rules: keep serving the stored version with its stored rules, if it has them */
        char *old_text = NULL;
        if (gw__repl_state_text(st, "rules_text", &old_text, err) < 0) {
            rules_unref(*serve_rules);
            *serve_rules = NULL;
            return err->code;
        }
        rules_set_t *old = NULL;
        char old_hash[32], what[64];
        gw_err_t cerr;
        snprintf(what, sizeof(what), "stored sync rules of version %s", serving);
        if (old_text != NULL &&
            gw_rules_compile_text(old_text, strlen(old_text), what, &old, old_hash,
                                  sizeof(old_hash), NULL, &cerr) == 0) {
            free(old_text);
            rules_unref(*serve_rules);
            *serve_rules = old;
            snprintf(r->version, sizeof(r->version), "%s", serving);
            gw_info("repl",
                    "the sync rules changed: the stored version serves while the new one "
                    "is built",
                    "serving=%s", serving);
            int resume = building[0] != '\0' && strcmp(bhash, hash) == 0;
            if (building[0] != '\0' && !resume) {
                int rc = abandon_stored_build(st, building, err);
                if (rc != 0) return rc;
            }
            return builder_create(r, rules, hash, text, resume ? building : NULL, err);
        }
        char m[512] = "none";
        if (old_text != NULL) gw_err_format(&cerr, m, sizeof(m));
        free(old_text);
        gw_warn("repl",
                "the sync rules changed and the storage cannot serve its version with "
                "the rules it stored: building the new version in its place (not "
                "ready until it is consistent)",
                "serving=%s stored_rules=\"%s\"", serving, m);
        if (building[0] != '\0') {
            int rc = abandon_stored_build(st, building, err);
            if (rc != 0) return rc;
        }
    }
    /* a fresh storage, or no way to serve the old version: the new version serves from now on,
     * 503 until consistent; an old version is retired */
    long v = next_version(st, err);
    char version[32], old_slot[160] = "";
    snprintf(version, sizeof(version), "%ld", v);
    int rc = v < 0 ? err->code : 0;
    if (rc == 0 && gw__repl_state_read(st, "slot", old_slot, sizeof(old_slot), err) < 0)
        rc = err->code;
    /* one commit, in the new version's namespace */
    if (rc == 0) rc = gw_storage_set_version(st, version, err);
    if (rc == 0) rc = gw_storage_begin(st, err);
    if (rc == 0 && serving[0] != '\0') rc = retire(st, serving, old_slot, err);
    if (rc == 0) rc = gw_storage_state_set(st, GW_STATE_SERVING, version, err);
    if (rc == 0) rc = init_version(r, st, version, hash, text, err);
    if (rc == 0) rc = gw_storage_commit(st, 0, err);
    if (rc != 0) return rc;
    snprintf(r->version, sizeof(r->version), "%s", version);
    if (serving[0] != '\0')
        gw_info("repl", "the sync rules changed: building a new rule version",
                "old_version=%s version=%s", serving, version);
    return 0;
}

const gw_active_t *gw_repl_active(gw_repl_t *r)
{
    return atomic_load(&r->active);
}

const char *gw_repl_version(gw_repl_t *r)
{
    return atomic_load(&r->active)->version;
}

void gw_repl_on_switch(gw_repl_t *r, void (*fn)(const gw_active_t *now, void *ud), void *ud)
{
    r->on_switch = fn;
    r->switch_ud = ud;
}

/* The rules file's identity (modification time, size, inode); 0, or -1 when it cannot be read. */
int gw__repl_rules_file_id(gw_repl_t *r, struct gw__file_id *id)
{
    struct stat sb;
    if (stat(r->cfg->sync_rules.path, &sb) != 0) return -1;
    *id = (struct gw__file_id){.mtime = sb.st_mtim, .size = sb.st_size, .ino = sb.st_ino};
    return 0;
}

static int same_file_id(const struct gw__file_id *a, const struct gw__file_id *b)
{
    return a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->size == b->size && a->ino == b->ino;
}

/* ---- retiring, watching the rules file, the switch ---- */

/* Streams re-evaluate their buckets at a switch; the old version's data waits this long. */
#define DROP_GRACE_MS 10000

/* Retired rule versions (state "retired", "<version>:<slot>,…"): drop each one's slot, then its
 * buckets, ops, rows, lookups and state, one storage commit per version. Serving replicator
 * only, while the serving version is consistent; retried from the stream loop until all are
 * gone (a slot may stay active for a moment after its replicator stopped). */
void gw__repl_drop_retired(gw_repl_t *r)
{
    if (!r->old_pending || r->builder || r->q == NULL)
        return; /* nothing to drop since the last look (the drain below is not free) */
    if (!gw_storage_consistent(r->st) ||
        (r->switched_ms != 0 && gw__repl_now_ms() - r->switched_ms < DROP_GRACE_MS))
        return;
    if (r->pipe_on) {
        gw_err_t derr;
        if (gw__repl_pipe_drain(r, &derr) != 0)
            return; /* the stream ends with the apply thread's error */
    }
    char list[2048] = "", legacy[160] = "";
    gw_storage_state_get(r->st, GW_STATE_RETIRED, list, sizeof(list));
    /* a storage of layout 3 named the version it replaced by its slot only */
    gw_storage_state_get(r->st, "old_slot", legacy, sizeof(legacy));
    if (list[0] == '\0' && legacy[0] == '\0') {
        r->old_pending = 0;
        return;
    }
    if (legacy[0] != '\0') {
        const char *us = strrchr(legacy, '_');
        gw_err_t err;
        if (gw__repl_drop_slot(r, legacy) == 1 && gw_storage_begin(r->st, &err) == 0) {
            int rc = retire(r->st, us != NULL ? us + 1 : "0", "", &err);
            if (rc == 0) rc = gw_storage_state_set(r->st, "old_slot", "", &err);
            if (rc == 0)
                gw_storage_commit(r->st, 0, &err);
            else
                gw_storage_rollback(r->st);
        }
        return;
    }
    /* the first entry */
    char entry[256];
    const char *comma = strchr(list, ',');
    size_t n = comma != NULL ? (size_t)(comma - list) : strlen(list);
    snprintf(entry, sizeof(entry), "%.*s", (int)n, list);
    const char *rest = comma != NULL ? comma + 1 : "";
    char *colon = strchr(entry, ':');
    const char *slot = colon != NULL ? colon + 1 : "";
    if (colon != NULL) *colon = '\0';
    if (slot[0] != '\0' && gw__repl_drop_slot(r, slot) != 1) return;
    uint64_t dropped = 0;
    gw_err_t err;
    int rc = gw_storage_begin(r->st, &err);
    if (rc == 0 && entry[0] != '\0' && strcmp(entry, r->version) != 0)
        rc = gw_storage_drop_version(r->st, entry, &dropped, &err);
    if (rc == 0) rc = gw_storage_state_set(r->st, GW_STATE_RETIRED, rest, &err);
    if (rc == 0)
        rc = gw_storage_commit(r->st, 0, &err);
    else
        gw_storage_rollback(r->st);
    char msg[512];
    if (rc == 0)
        gw_info("repl", "dropped a previous rule version's slot and data",
                "version=%s slot=%s buckets=%llu", entry, slot[0] ? slot : "none",
                (unsigned long long)dropped);
    else
        gw_warn("repl", "could not drop a previous rule version; retrying",
                "version=%s error=\"%s\"", entry, gw_err_format(&err, msg, sizeof(msg)));
}

#define RULES_POLL_MS 2000

/* Serving replicator, idle, pipeline drained: look at the rules file; a changed one that compiles
 * starts a builder (replacing one of other rules). */
static int poll_rules(gw_repl_t *r, gw_err_t *err)
{
    const char *path = r->cfg->sync_rules.path;
    struct gw__file_id id;
    if (gw__repl_rules_file_id(r, &id) != 0)
        return 0; /* being replaced, or gone: the version serving goes on */
    if (same_file_id(&id, &r->rules_file)) {
        r->rules_seen_set = 0;
        return 0;
    }
    /* act on a change only once the file stayed the same for one more look, so that a file
     * being written in place is never read half-way */
    if (!r->rules_seen_set || !same_file_id(&id, &r->rules_seen)) {
        r->rules_seen = id;
        r->rules_seen_set = 1;
        return 0;
    }
    r->rules_file = id;
    r->rules_seen_set = 0;
    gw_buf_t text = GW_BUF_INIT;
    rules_set_t *rules = NULL;
    char hash[32];
    gw_err_t lerr;
    if (gw_rules_load_text(path, &rules, hash, sizeof(hash), &text, NULL, &lerr) != 0) {
        char msg[512];
        if (strcmp(hash, r->rules_bad_hash) != 0)
            gw_error("repl", "the changed sync rules do not load; the serving version goes on",
                     "version=%s error=\"%s\"", r->version, gw_err_format(&lerr, msg, sizeof(msg)));
        snprintf(r->rules_bad_hash, sizeof(r->rules_bad_hash), "%s", hash);
        gw_buf_free(&text);
        return 0;
    }
    gw_buf_append(&text, "", 1); /* NUL-terminated for storage */
    int rc = 0;
    if (strcmp(hash, r->rules_hash) == 0) {
        if (r->next != NULL)
            rc = builder_discard(r, "the rules file is the serving version's again", err);
    } else if (r->next == NULL || strcmp(hash, r->next->rules_hash) != 0) {
        gw_info("repl", "the sync rules file changed", "file=%s serving=%s", path, r->version);
        if (r->next != NULL) rc = builder_discard(r, "the rules file changed again", err);
        if (rc == 0) rc = builder_create(r, rules, hash, text.data, NULL, err);
        if (rc == 0) rc = gw_repl_start(r->next, err);
    }
    rules_unref(rules);
    gw_buf_free(&text);
    return rc;
}

/* Serving replicator, idle: switch to the builder's version once it has everything this one
 * serves; otherwise poll the rules file. */
int gw__repl_rule_versions(gw_repl_t *r, gw_err_t *err)
{
    gw_repl_t *b = r->next;
    if (b != NULL && b->running && gw_storage_consistent(b->st) &&
        atomic_load(&b->m_lsn) >= atomic_load(&r->m_lsn)) {
        r->switch_wanted = 1; /* the stream loop ends; repl_main switches */
        return 0;
    }
    if (gw__repl_now_ms() - r->rules_poll_ms < RULES_POLL_MS) return 0;
    r->rules_poll_ms = gw__repl_now_ms();
    if (r->pipe_on && gw__repl_pipe_drain(r, err) != 0) return GW_EIO;
    return poll_rules(r, err);
}

/*
 * Take the builder's version over (repl_main, with this replicator's stream stopped): stop the
 * builder, make its version the serving one in one storage commit whose checkpoint is above
 * every op id handed out, move serving (readers, hook, durable callback) to its storage writer,
 * and swap the version's rules, slot and storage into r. Then tell the request handlers.
 */
void gw__repl_do_switch(gw_repl_t *r)
{
    gw_repl_t *b = r->next;
    r->switch_wanted = 0;
    if (b == NULL) return;
    gw_repl_stop(b);
    gw__repl_set_next(r, NULL); /* diagnostics stop looking at it; restored if the switch fails */
    gw_storage_t *nst = b->st, *ost = r->st;
    gw_storage_settle(ost);
    gw_storage_settle(nst);
    gw_err_t err;
    int rc = gw_storage_consistent(nst) ? 0 : GW_EUNAVAIL;
    if (rc == 0) rc = gw_storage_begin(nst, &err);
    if (rc == 0) rc = gw_storage_advance_checkpoint(nst, &err);
    if (rc == 0) rc = gw_storage_state_set(nst, GW_STATE_SERVING, b->version, &err);
    if (rc == 0) rc = gw_storage_state_set(nst, GW_STATE_BUILDING, "", &err);
    if (rc == 0) rc = retire(nst, r->version, r->slot, &err);
    if (rc == 0)
        rc = gw_storage_commit(nst, 0, &err);
    else if (gw_storage_in_txn(nst))
        gw_storage_rollback(nst);
    if (rc != 0) {
        char msg[512];
        gw_error("repl", "could not switch to the new rule version; it goes on building",
                 "version=%s error=\"%s\"", b->version,
                 rc == GW_EUNAVAIL ? "not consistent" : gw_err_format(&err, msg, sizeof(msg)));
        gw__repl_set_next(r, b);
        gw_repl_start(b, &err);
        return;
    }
    /* from here on the new version is the serving one, on disk and for this process */
    char old_version[32];
    snprintf(old_version, sizeof(old_version), "%s", r->version);
    gw_storage_set_durable_fn(ost, NULL, NULL);
    gw_storage_set_durable_fn(nst, gw__repl_on_durable, r);
    gw_storage_move_pending(ost, nst);
    gw_storage_hook_fn hook;
    void *hook_ud;
    gw_storage_get_hook(ost, &hook, &hook_ud);
    gw_storage_set_hook(nst, hook, hook_ud);
    gw_storage_set_hook(ost, NULL, NULL);
    gw_storage_set_serving(ost, 0);
    gw_storage_set_serving(nst, 1);
    r->st = nst;
    b->st = ost;
    rules_set_t *rs = r->rules;
    r->rules = b->rules;
    b->rules = rs;
    snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", b->rules_hash);
    pthread_mutex_lock(&r->diag_lock);
    snprintf(r->version, sizeof(r->version), "%s", b->version);
    snprintf(r->slot, sizeof(r->slot), "%s", b->slot);
    pthread_mutex_unlock(&r->diag_lock);
    r->nocp_lsn = b->nocp_lsn;
    atomic_store(&r->durable_lsn, 0);
    r->acked_lsn = r->pos_lsn = 0;
    r->old_pending = 1;
    r->switched_ms = gw__repl_now_ms();
    gw_repl_destroy(b); /* closes the old version's writer */
    uint64_t last_op, lsn;
    gw_storage_checkpoint(nst, &last_op, &lsn);
    atomic_store(&r->m_last_op, last_op);
    atomic_store(&r->m_lsn, lsn);
    const gw_active_t *a = gw__repl_add_active(r, r->rules, r->version, last_op);
    if (r->rebuilding) {
        r->rebuilding = 0;
        atomic_store(&r->msg_ms, gw__repl_now_ms());
        gw__repl_source_set(r, GW__SRC_OK, NULL);
    }
    char t[32];
    gw_info("repl", "switched to the new rule version",
            "version=%s old_version=%s checkpoint=%llu lsn=%s", r->version, old_version,
            (unsigned long long)last_op, gw_lsn_format(lsn, t, sizeof(t)));
    if (r->on_switch != NULL) r->on_switch(a, r->switch_ud);
}

/* ---- rebuilding after the slot was lost ---- */

int gw__repl_rebuild(gw_repl_t *r, const char *why, gw_err_t *err)
{
    gw_repl_t *b = r->next;
    if (b != NULL && b->slot_lost) {
        /* a build beside this version lost its slot too: start the serving rules again (the
         * rules file is read again once the serving version streams) */
        int rc = builder_discard(r, "its replication slot is gone as well", err);
        if (rc != 0) return rc;
        memset(&r->rules_file, 0, sizeof(r->rules_file));
        b = NULL;
    }
    if (b == NULL) {
        char *text = NULL;
        if (gw__repl_state_text(r->st, "rules_text", &text, err) < 0) return err->code;
        if (text == NULL)
            return gw_err_set(err, GW_EUNAVAIL, "repl",
                              "%s; this storage has no stored rules to rebuild from: delete the "
                              "storage (the file at storage.path, or storage.schema in "
                              "storage.uri) so ferry rebuilds it",
                              why);
        int rc = builder_create(r, r->rules, r->rules_hash, text, NULL, err);
        free(text);
        if (rc == 0) rc = gw_repl_start(r->next, err);
        if (rc != 0) return rc;
        b = r->next;
    }
    r->rebuilding = 1;
    char reason[512], lsn[32];
    snprintf(reason, sizeof(reason),
             "%.120s: version %s is being built from a new snapshot; version %s serves its data as "
             "of %s until then",
             why, b->version, r->version, gw_lsn_format(atomic_load(&r->m_lsn), lsn, sizeof(lsn)));
    gw__repl_source_set(r, GW__SRC_SLOT_LOST, reason);
    gw__repl_set_phase(r, 6, NULL);
    while (!atomic_load(&r->stop)) {
        if (b->slot_lost) return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", why);
        if (b->running && gw_storage_consistent(b->st)) {
            r->switch_wanted = 1; /* repl_main switches */
            return 0;
        }
        usleep(100000);
    }
    return gw_err_set(err, GW_EUNAVAIL, "repl", "stopped");
}
