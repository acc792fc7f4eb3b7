/* gw_repl_lead.c -- several instances on one storage: standby, following the leader, taking over
 *
 * With a storage several instances share (storage.kind postgres), every instance runs the same
 * replicator, but only the one whose writer leads the storage (gw_storage_lead) replicates; the
 * others are standbys:
 *
 *   LEADER: CHECK .. STREAM as always (gw_repl.c); the idle stream loop asks every second
 *     |      whether it still leads (gw__repl_check_lead), a commit of an instance that lost the
 *     |      lead is fenced by the storage. Lead lost: the stream ends, the builder stops.
 *     v
 *   STANDBY (gw__repl_standby, a pass a second, asking for the lead each time): runs write
 *     |      checkpoints (any instance stores them), follows the rule version the leader
 *     |      publishes (the storage relays the leader's checkpoints with their namespace; the
 *     |      rules are the ones the leader stored for that version), and is ready once the
 *     |      leader's checkpoint is consistent.
 *     v      lead won
 *   TAKE OVER (gw__repl_take_over): the state as stored decides, with this instance's rules
 *            file as at a start: the same rules go on, other rules start a build beside the
 *            serving version, a build in progress resumes; then CHECK .. STREAM from the stored
 *            LSN (the slot's old walsender, if its host died, is ended: gw_repl_source.c). No
 *            new snapshot, op ids continue.
 *
 * During a rolling change the instances' rules files may differ: the leader's file decides; a
 * standby serves the stored version and warns that its own file differs.
 */
#include "repl/gw_repl_int.h"
#include "base/gw_log.h"
#include "config/gw_rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/select.h>

#define STANDBY_PASS_MS 1000

void gw__repl_note_storage(gw_repl_t *r)
{
    gw_storage_info_t info;
    gw_storage_info(r->st, &info);
    pthread_mutex_lock(&r->diag_lock);
    r->diag.storage = info;
    pthread_mutex_unlock(&r->diag_lock);
}

/* Serve version (stored rules and all) on this standby; since_op: the checkpoint it serves
 * from, announce: tell the request handlers (a switch the leader made). 0 or an error. */
static int follow_version(gw_repl_t *r, const char *version, uint64_t since_op, int announce,
                          gw_err_t *err)
{
    char key[64], hash[64] = "", what[64];
    snprintf(key, sizeof(key), "%s#rules_hash", version);
    if (gw__repl_state_read(r->st, key, hash, sizeof(hash), err) < 0) return err->code;
    snprintf(key, sizeof(key), "%s#rules_text", version);
    char *text = NULL;
    if (gw__repl_state_text(r->st, key, &text, err) < 0) return err->code;
    if (text == NULL)
        return gw_err_set(err, GW_EUNAVAIL, "repl",
                          "the storage has no rules for version %s (is the leader older?)",
                          version);
    rules_set_t *rules = NULL;
    char h[32];
    snprintf(what, sizeof(what), "stored sync rules of version %s", version);
    int rc = gw_rules_compile_text(text, strlen(text), what, &rules, h, sizeof(h), NULL, err);
    free(text);
    if (rc != 0) return rc;
    rc = gw_storage_set_version(r->st, version, err);
    if (rc != 0) {
        rules_unref(rules);
        return rc;
    }
    rules_unref(r->rules);
    r->rules = rules;
    snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", hash[0] ? hash : h);
    pthread_mutex_lock(&r->diag_lock);
    snprintf(r->version, sizeof(r->version), "%s", version);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, version);
    pthread_mutex_unlock(&r->diag_lock);
    const gw_active_t *a = gw__repl_add_active(r, rules, version, since_op);
    if (strcmp(r->rules_hash, r->file_hash) != 0 && strcmp(r->warned_version, version) != 0) {
        snprintf(r->warned_version, sizeof(r->warned_version), "%s", version);
        gw_warn("repl",
                "this instance's sync rules file differs from the rules the leader stored; "
                "serving the stored version (the leader's file decides)",
                "version=%s file=%s", version, r->cfg->sync_rules.path);
    }
    if (announce) {
        gw_info("repl", "following the leader to a new rule version", "version=%s since_op=%llu",
                version, (unsigned long long)since_op);
        if (r->on_switch != NULL) r->on_switch(a, r->switch_ud);
    }
    return 0;
}

int gw__repl_follow_init(gw_repl_t *r, gw_err_t *err)
{
    r->standby = 1;
    char serving[32] = "";
    if (gw__repl_state_read(r->st, GW_STATE_SERVING, serving, sizeof(serving), err) < 0)
        return err->code;
    gw_storage_info_t info;
    gw_storage_info(r->st, &info);
    gw_info("repl", "another instance replicates into the storage; this one serves",
            "leader=%s epoch=%llu", info.leader_instance[0] ? info.leader_instance : "unknown",
            (unsigned long long)info.epoch);
    if (serving[0] == '\0') {
        /* a fresh storage: the leader makes the first version (this file's rules until then) */
        gw__repl_add_active(r, r->rules, r->version, 0);
        return 0;
    }
    return follow_version(r, serving, 0, 0, err);
}

/* Run the queued tasks (write checkpoints) in one transaction of their own. */
static void standby_tasks(gw_repl_t *r)
{
    uint64_t drain;
    ssize_t n = read(r->task_fd, &drain, sizeof(drain));
    (void)n;
    pthread_mutex_lock(&r->task_lock);
    gw_repl_task_t *list = r->task_head;
    r->task_head = r->task_tail = NULL;
    pthread_mutex_unlock(&r->task_lock);
    if (list == NULL) return;
    gw_err_t err;
    int rc = gw_storage_begin(r->st, &err);
    for (gw_repl_task_t *t = list; t != NULL; t = t->next)
        t->rc = rc == 0 ? t->run(r->st, t->ud, &err) : rc;
    if (rc == 0) rc = gw_storage_commit(r->st, 0, &err);
    if (rc != 0 && gw_storage_in_txn(r->st)) gw_storage_rollback(r->st);
    for (gw_repl_task_t *t = list, *next; t != NULL; t = next) {
        next = t->next;
        t->done(t->ud, rc != 0 ? rc : t->rc);
    }
}

/* Follow the version the leader publishes and set readiness from its checkpoint. */
static void standby_follow(gw_repl_t *r, int lead_rc, const gw_err_t *lerr)
{
    gw_storage_cp_t cp;
    int have = gw_storage_pub_get(r->sopts->pub, &cp);
    char reason[512] = "";
    if (have && cp.ns[0] != '\0') {
        char v[32];
        snprintf(v, sizeof(v), "%.*s", (int)strcspn(cp.ns, "#"), cp.ns);
        if (strcmp(v, r->version) != 0) {
            gw_err_t ferr;
            if (follow_version(r, v, cp.last_op, 1, &ferr) != 0) {
                char m[512];
                snprintf(reason, sizeof(reason), "cannot serve rule version %s: %s", v,
                         gw_err_format(&ferr, m, sizeof(m)));
            }
        }
        atomic_store(&r->m_last_op, cp.last_op);
        atomic_store(&r->m_lsn, cp.lsn);
    }
    gw_storage_info_t info;
    gw_storage_info(r->st, &info);
    if (lead_rc < 0 || !info.reachable) {
        char m[400] = "no answer";
        if (lead_rc < 0 && lerr != NULL) gw_err_format(lerr, m, sizeof(m));
        snprintf(reason, sizeof(reason), "the storage database is not reachable: %s", m);
    } else if (reason[0] == '\0' && (!have || !cp.consistent)) {
        snprintf(reason, sizeof(reason),
                 "waiting for the leading instance (%s) to reach a consistent checkpoint",
                 info.leader_instance[0] ? info.leader_instance : "unknown");
    }
    int ready = reason[0] == '\0';
    if (ready != atomic_load(&r->ready) || !ready) {
        gw_ready_set(r->ready_id, ready, ready ? NULL : reason);
        atomic_store(&r->ready, ready);
    }
    if (!ready) {
        pthread_mutex_lock(&r->diag_lock);
        snprintf(r->diag.last_error, sizeof(r->diag.last_error), "%.200s", reason);
        pthread_mutex_unlock(&r->diag_lock);
    }
}

void gw__repl_standby(gw_repl_t *r, int lead_rc, const gw_err_t *lerr)
{
    if (!r->standby) {
        r->standby = 1;
        gw_info("repl", "standing by: another instance replicates into the storage", NULL);
    }
    /* what this instance said about the source and its own storage writes while it led is not
     * true of a standby: the source is the leader's to read, and a storage that answers the
     * lead question works again */
    if (atomic_load(&r->src_state) != GW__SRC_OK) gw__repl_source_set(r, GW__SRC_OK, NULL);
    if (lead_rc >= 0 && atomic_exchange(&r->storage_bad, 0) && r->storage_ready_id >= 0)
        gw_ready_set(r->storage_ready_id, 1, NULL);
    if (r->next != NULL) { /* a build this instance ran goes on at the leader */
        gw_repl_t *b = r->next;
        gw__repl_set_next(r, NULL);
        gw_repl_destroy(b);
    }
    atomic_store(&r->m_phase, 5);
    uint64_t until = gw__repl_now_ms() + STANDBY_PASS_MS;
    while (!atomic_load(&r->stop)) {
        standby_tasks(r);
        standby_follow(r, lead_rc, lerr);
        gw__repl_note_storage(r);
        uint64_t now = gw__repl_now_ms();
        if (now >= until) break;
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(r->task_fd, &rfds);
        uint64_t left = until - now > 100 ? 100 : until - now;
        struct timeval tv = {0, (long)left * 1000};
        if (select(r->task_fd + 1, &rfds, NULL, NULL, &tv) < 0 && errno != EINTR) break;
    }
}

int gw__repl_take_over(gw_repl_t *r, gw_err_t *err)
{
    char serving[32] = "";
    if (gw__repl_state_read(r->st, GW_STATE_SERVING, serving, sizeof(serving), err) < 0)
        return err->code;
    if (serving[0] != '\0' && strcmp(serving, r->version) != 0 &&
        gw_storage_set_version(r->st, serving, err) != 0)
        return GW_EIO;
    /* this instance's rules file decides now, as at a start */
    rules_set_t *file_rules = NULL;
    char hash[32];
    gw_buf_t text = GW_BUF_INIT;
    gw_err_t lerr;
    if (gw_rules_load_text(r->cfg->sync_rules.path, &file_rules, hash, sizeof(hash), &text, NULL,
                           &lerr) != 0) {
        /* an unreadable file: the version serving goes on */
        char m[512];
        gw_warn("repl", "this instance's sync rules do not load; the serving version goes on",
                "error=\"%s\"", gw_err_format(&lerr, m, sizeof(m)));
        gw_buf_free(&text);
        file_rules = rules_ref(r->rules);
        snprintf(hash, sizeof(hash), "%s", r->rules_hash);
        char *stored = NULL;
        if (gw__repl_state_text(r->st, "rules_text", &stored, err) < 0) {
            rules_unref(file_rules);
            gw_buf_free(&text);
            return err->code;
        }
        if (stored != NULL) gw_buf_puts(&text, stored);
        free(stored);
    }
    gw_buf_append(&text, "", 1);
    rules_set_t *serve = NULL;
    char before[32];
    snprintf(before, sizeof(before), "%s", r->version);
    int rc = gw__repl_resolve_version(r, file_rules, hash, text.data, &serve, err);
    if (rc == 0) rc = gw_storage_set_version(r->st, r->version, err);
    rules_unref(file_rules);
    gw_buf_free(&text);
    if (rc != 0) {
        rules_unref(serve);
        return rc;
    }
    snprintf(r->file_hash, sizeof(r->file_hash), "%s", hash);
    rules_unref(r->rules);
    r->rules = serve;
    char h[32];
    if (gw_storage_state_get(r->st, "rules_hash", h, sizeof(h)) > 0)
        snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", h);
    pthread_mutex_lock(&r->diag_lock);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, r->version);
    pthread_mutex_unlock(&r->diag_lock);
    uint64_t last_op, lsn;
    gw_storage_checkpoint(r->st, &last_op, &lsn);
    const gw_active_t *cur = gw_repl_active(r);
    if (strcmp(before, r->version) != 0 || cur->rules != r->rules) {
        const gw_active_t *a = gw__repl_add_active(r, r->rules, r->version, last_op);
        if (strcmp(before, r->version) != 0 && r->on_switch != NULL) r->on_switch(a, r->switch_ud);
    }
    gw__repl_rules_file_id(r, &r->rules_file);
    r->old_pending = 1;
    r->standby = 0;
    atomic_store(&r->msg_ms, gw__repl_now_ms()); /* the source's silence counts from now */
    gw_info("repl", "this instance replicates now: it took over the storage's lead",
            "version=%s checkpoint=%llu", r->version, (unsigned long long)last_op);
    if (r->next != NULL && !r->next->running) return gw_repl_start(r->next, err);
    return 0;
}

int gw__repl_check_lead(gw_repl_t *r, gw_err_t *err)
{
    r->lead_ms = gw__repl_now_ms();
    if (r->pipe_on && gw__repl_pipe_drain(r, err) != 0) return GW_EIO;
    gw_err_t lerr;
    int l = gw_storage_lead(r->st, &lerr);
    gw__repl_note_storage(r);
    if (l == 1) return 0;
    return gw_err_set(err, GW_EUNAVAIL, "repl",
                      "this instance no longer leads the storage; replication stops here");
}
