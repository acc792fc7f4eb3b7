/* gw_cli_debug.c -- `ferry debug dump|oracle`: inspect bucket storage and compare it with SQL
 *
 *   ferry debug dump --config FILE [--bucket B] [--all-versions] [--checksums | --ops]
 *       each bucket of the rule version the storage serves (every version's with
 *       --all-versions, e.g. while a new one is built beside it): its reconstructed rows (ops
 *       applied in op-id order: PUT sets the row of (object_type, object_id, subkey), REMOVE
 *       deletes it, CLEAR empties the bucket, MOVE changes nothing but counts in the
 *       checksum), one JSON line per row:
 *       {"bucket":…,"type":…,"id":…,"data":{…}}; with --checksums one line per bucket instead:
 *       {"bucket":…,"checksum":…,"count":…,"ops_checksum":…,"ops":…} where ops_checksum/ops are
 *       recomputed from the stored ops (they must equal checksum/count); with --ops every stored
 *       op instead, in op-id order per bucket: {"bucket":…,"op":{"op_id":…,"op":…,…}}
 *   ferry debug oracle --config FILE
 *       the same row lines computed directly: every table the rules read is SELECTed from
 *       Postgres now and evaluated with the rules of the version the storage serves (the rules
 *       it stored for that version; the rules file for a storage without them)
 *
 *   ferry debug history --config FILE TABLE ID
 *       one row's timeline, one line per event in time order (UTC): its replication ops in the
 *       storage ("repl": op id, kind, bucket, data, the LSN of the storage commit), each at its
 *       chunk's commit time (the source transaction's commit time, see gw_storage.h), and its
 *       write-back history from ferry_write_history ("write": user, client, op, outcome, and
 *       per column what was sent, the client's old value, the stored value and the result,
 *       with the strategy that decided), each at its batch's time. Ops stored before chunks
 *       kept a commit time come first, marked "(time unknown)".
 *
 * dump and oracle lines are sorted, so `diff <(ferry debug dump …) <(ferry debug oracle …)`
 * compares storage with what the rules select. Reads the storage file read-only; safe while ferry
 * serve runs.
 */
#include "base/gw_buf.h"
#include "cli/gw_cli.h"
#include "cli/gw_cli_int.h"
#include "config/gw_config.h"
#include "pg/gw_lsn.h"
#include "pg/gw_pg.h"
#include "config/gw_rules.h"
#include "storage/gw_storage.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct lines {
    char **v;
    size_t n, cap;
} lines_t;

static void lines_add(lines_t *l, const char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->v = gw_xrealloc(l->v, l->cap * sizeof(char *));
    }
    l->v[l->n++] = gw_xstrdup(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void lines_print_free(lines_t *l)
{
    if (l->n > 0) /* qsort with no array is undefined */
        qsort(l->v, l->n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < l->n; i++) {
        puts(l->v[i]);
        free(l->v[i]);
    }
    free(l->v);
}

static void row_line(gw_buf_t *b, const char *bucket, const char *type, const char *id,
                     const char *data)
{
    gw_buf_reset(b);
    gw_buf_puts(b, "{\"bucket\":");
    gw_buf_json_str(b, bucket);
    gw_buf_puts(b, ",\"type\":");
    gw_buf_json_str(b, type);
    gw_buf_puts(b, ",\"id\":");
    gw_buf_json_str(b, id);
    gw_buf_puts(b, ",\"data\":");
    gw_buf_puts(b, data);
    gw_buf_puts(b, "}");
}

/* Call fn(ud, op) for every op of bucket as of as_of, in op order (chunks of 1,000 read as one
 * JSON array each). 0, or -1 when storage could not be read. */
static int each_op(gw_storage_reader_t *r, const char *bucket, uint64_t as_of,
                   void (*fn)(void *ud, json_t *op), void *ud)
{
    uint64_t after = 0;
    int rc = 0;
    gw_buf_t chunk = GW_BUF_INIT;
    for (;;) {
        gw_buf_reset(&chunk);
        gw_buf_puts(&chunk, "[");
        uint64_t last;
        int more;
        size_t n;
        if (gw_storage_read_ops(r, bucket, after, as_of, 1000, 1 << 20, &chunk, &last, &more, &n) !=
            0) {
            rc = -1;
            break;
        }
        gw_buf_puts(&chunk, "]");
        json_t *arr = json_loads(chunk.data, 0, NULL);
        size_t i;
        json_t *op;
        json_array_foreach(arr, i, op) fn(ud, op);
        json_decref(arr);
        after = last;
        if (!more || n == 0) break;
    }
    gw_buf_free(&chunk);
    return rc;
}

typedef struct dump_ctx {
    gw_storage_reader_t *r;
    uint64_t as_of;
    const char *only;
    const char *ns; /* only buckets of this version ("2#"), NULL: all */
    int checksums;
    int ops; /* print every op, unsorted */
    lines_t out;
    int failed;
} dump_ctx_t;

/* One bucket being dumped: the rows its ops leave, their count and checksum sum. */
typedef struct dump_bucket {
    dump_ctx_t *d;
    const char *bucket;
    json_t *rows; /* "type\x1fid\x1fsubkey" -> data string */
    uint64_t nops;
    uint32_t sum;
} dump_bucket_t;

static void dump_op(void *ud, json_t *op)
{
    dump_bucket_t *b = ud;
    const char *kind = json_string_value(json_object_get(op, "op"));
    const char *type = json_string_value(json_object_get(op, "object_type"));
    const char *id = json_string_value(json_object_get(op, "object_id"));
    const char *sub = json_string_value(json_object_get(op, "subkey"));
    b->sum += (uint32_t)json_integer_value(json_object_get(op, "checksum"));
    b->nops++;
    if (b->d->ops) {
        char *text = json_dumps(op, JSON_COMPACT);
        gw_buf_t l = GW_BUF_INIT;
        gw_buf_puts(&l, "{\"bucket\":");
        gw_buf_json_str(&l, b->bucket);
        gw_buf_printf(&l, ",\"op\":%s}", text != NULL ? text : "null");
        puts(l.data);
        gw_buf_free(&l);
        free(text);
    }
    char key[4096];
    snprintf(key, sizeof(key), "%s\x1f%s\x1f%s", type ? type : "", id ? id : "", sub ? sub : "");
    if (kind != NULL && strcmp(kind, "PUT") == 0)
        json_object_set(b->rows, key, json_object_get(op, "data"));
    else if (kind != NULL && strcmp(kind, "REMOVE") == 0)
        json_object_del(b->rows, key);
    else if (kind != NULL && strcmp(kind, "CLEAR") == 0)
        json_object_clear(b->rows); /* the bucket is reset; MOVE changes no row */
}

static int dump_bucket(void *ud, const char *bucket, uint32_t checksum, uint64_t count)
{
    dump_ctx_t *d = ud;
    if (d->only != NULL && strcmp(d->only, bucket) != 0) return 0;
    if (d->only == NULL && d->ns != NULL && strncmp(bucket, d->ns, strlen(d->ns)) != 0) return 0;
    dump_bucket_t b = {d, bucket, json_object(), 0, 0};
    if (each_op(d->r, bucket, d->as_of, dump_op, &b) != 0) d->failed = 1;
    json_t *rows = b.rows;
    uint64_t nops = b.nops;
    uint32_t sum = b.sum;
    gw_buf_t line = GW_BUF_INIT;
    if (d->ops) {
        /* printed above */
    } else if (d->checksums) {
        gw_buf_puts(&line, "{\"bucket\":");
        gw_buf_json_str(&line, bucket);
        gw_buf_printf(&line, ",\"checksum\":%u,\"count\":%llu,\"ops_checksum\":%u,\"ops\":%llu}",
                      checksum, (unsigned long long)count, sum, (unsigned long long)nops);
        lines_add(&d->out, line.data);
    } else {
        const char *key;
        json_t *data;
        json_object_foreach(rows, key, data)
        {
            char type[1024], id[2048];
            const char *s1 = strchr(key, '\x1f');
            const char *s2 = s1 ? strchr(s1 + 1, '\x1f') : NULL;
            if (s1 == NULL || s2 == NULL) continue;
            snprintf(type, sizeof(type), "%.*s", (int)(s1 - key), key);
            snprintf(id, sizeof(id), "%.*s", (int)(s2 - s1 - 1), s1 + 1);
            row_line(&line, bucket, type, id, json_string_value(data));
            lines_add(&d->out, line.data);
        }
    }
    gw_buf_free(&line);
    json_decref(rows);
    return 0;
}

static int cmd_dump(gw_config_t *cfg, const char *bucket, int all, int checksums, int ops)
{
    gw_storage_reader_t *r;
    gw_err_t err;
    char msg[1024];
    gw_storage_opts_t sopts = gw_cli_storage_opts(cfg, NULL);
    if (gw_storage_reader_open(&sopts, &r, &err) != 0) {
        fprintf(stderr, "ferry debug dump: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    uint64_t last_op, lsn;
    int consistent;
    gw_storage_read_checkpoint(r, &last_op, &lsn, &consistent);
    dump_ctx_t d = {.r = r,
                    .as_of = last_op,
                    .only = bucket,
                    .ns = all ? NULL : gw_storage_reader_version(r),
                    .checksums = checksums,
                    .ops = ops};
    int rc = gw_storage_each_bucket(r, last_op, dump_bucket, &d);
    lines_print_free(&d.out);
    gw_storage_reader_close(r);
    return rc != 0 || d.failed ? 1 : 0;
}

static int cmd_oracle(gw_config_t *cfg)
{
    gw_err_t err;
    char msg[1024], hash[32], version[32] = "1";
    rules_set_t *rules = NULL;
    gw_storage_reader_t *r;
    gw_storage_opts_t sopts = gw_cli_storage_opts(cfg, NULL);
    if (gw_storage_reader_open(&sopts, &r, &err) == 0) {
        uint64_t last_op, lsn;
        int consistent;
        gw_storage_read_checkpoint(r, &last_op, &lsn, &consistent);
        gw_storage_read_state(r, "rules_version", version, sizeof(version));
        size_t cap = 1 << 20;
        char *text = gw_xmalloc(cap);
        if (gw_storage_read_state(r, "rules_text", text, cap) && strlen(text) + 1 < cap &&
            gw_rules_compile_text(text, strlen(text), "stored sync rules", &rules, hash,
                                  sizeof(hash), stderr, &err) != 0)
            rules = NULL;
        free(text);
        gw_storage_reader_close(r);
    }
    if (rules == NULL &&
        gw_rules_load(cfg->sync_rules.path, &rules, hash, sizeof(hash), stderr, &err) != 0) {
        fprintf(stderr, "ferry debug oracle: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    PGconn *conn = gw_pg_connect(cfg->postgres.uri, 0, "ferry debug", &err);
    if (conn == NULL) {
        fprintf(stderr, "ferry debug oracle: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        rules_unref(rules);
        return 1;
    }
    lines_t out = {0};
    gw_buf_t line = GW_BUF_INIT;
    int rc = 0;
    const char *pv[1] = {cfg->replication.publication};
    PGresult *tabs = gw_pg_query_params(
        conn, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", 1, pv,
        &err);
    for (int t = 0; tabs != NULL && t < PQntuples(tabs) && rc == 0; t++) {
        const char *schema = PQgetvalue(tabs, t, 0), *name = PQgetvalue(tabs, t, 1);
        char *qs = gw_pg_ident(conn, schema), *qn = gw_pg_ident(conn, name);
        gw_buf_t sql = GW_BUF_INIT;
        gw_buf_printf(&sql, "SELECT * FROM %s.%s", qs, qn);
        free(qs);
        free(qn);
        PGresult *res = gw_pg_query(conn, sql.data, &err);
        gw_buf_free(&sql);
        if (res == NULL) {
            rc = 1;
            break;
        }
        int ncols = PQnfields(res);
        const char **names = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        const char **values = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        size_t *lens = gw_xcalloc((size_t)ncols + 1, sizeof(size_t));
        uint32_t *types = gw_xcalloc((size_t)ncols + 1, sizeof(uint32_t));
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = PQftype(res, c);
        }
        for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
            for (int c = 0; c < ncols; c++) {
                values[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
                lens[c] = (size_t)PQgetlength(res, i, c);
            }
            rules_row_t row = {schema, name, (size_t)ncols, names, types, values, lens};
            rules_ops_t ops = {0};
            rules_error_t rerr = {0};
            if (rules_eval_row(rules, version, &row, &ops, &rerr) != 0) {
                fprintf(stderr, "ferry debug oracle: %s.%s: %s\n", schema, name, rerr.message);
                rc = 1;
            }
            for (size_t k = 0; k < ops.n; k++) {
                row_line(&line, ops.items[k].bucket, ops.items[k].object_type,
                         ops.items[k].object_id, ops.items[k].data);
                lines_add(&out, line.data);
            }
            rules_ops_free(&ops);
        }
        free(names);
        free(values);
        free(lens);
        free(types);
        PQclear(res);
    }
    if (tabs == NULL) {
        fprintf(stderr, "ferry debug oracle: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        rc = 1;
    }
    PQclear(tabs);
    lines_print_free(&out);
    gw_buf_free(&line);
    PQfinish(conn);
    rules_unref(rules);
    return rc;
}

/* ---- history ------------------------------------------------------------------------------
 *
 * One timeline of a row: its replication ops (from storage, each at the commit time of the chunk
 * that holds it) and its write-back history (ferry_write_history, each at its batch's time),
 * sorted by time. Ops of chunks stored before chunks kept a commit time come first, marked. */

enum { HIST_REPL, HIST_WRITE };

typedef struct hist_entry {
    int64_t at_us; /* unix microseconds; 0: unknown */
    int kind;      /* HIST_REPL, HIST_WRITE */
    uint64_t seq;  /* the op id (replication), the history's order (write-back) */
    uint64_t lsn;  /* replication: its storage commit's LSN, 0 unknown */
    char *text;    /* the line after the time and the kind */
} hist_entry_t;

typedef struct hist_ctx {
    gw_storage_reader_t *r;
    uint64_t as_of;
    const char *ns;
    const char *type, *id;
    hist_entry_t *v;
    size_t n, cap;
    int failed;
} hist_ctx_t;

static hist_entry_t *hist_add(hist_ctx_t *h, int kind, uint64_t seq, const char *text)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 64;
        h->v = gw_xrealloc(h->v, h->cap * sizeof(*h->v));
    }
    h->v[h->n] = (hist_entry_t){.kind = kind, .seq = seq, .text = gw_xstrdup(text)};
    return &h->v[h->n++];
}

/* Unknown times first (replication ops in op-id order), then by time; at one time a write
 * comes before the replication op it may have caused (its batch began before its commit). */
static int cmp_entry(const void *a, const void *b)
{
    const hist_entry_t *x = a, *y = b;
    if ((x->at_us == 0) != (y->at_us == 0)) return x->at_us == 0 ? -1 : 1;
    if (x->at_us != y->at_us) return x->at_us < y->at_us ? -1 : 1;
    if (x->kind != y->kind) return x->kind == HIST_WRITE ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* One bucket's ops seen by the history: those of the row, as timeline entries. */
typedef struct hist_bucket {
    hist_ctx_t *h;
    const char *bucket;
    size_t from; /* the bucket's first entry in h->v */
    uint64_t min_op;
    gw_buf_t line;
} hist_bucket_t;

static void hist_op(void *ud, json_t *op)
{
    hist_bucket_t *b = ud;
    const char *type = json_string_value(json_object_get(op, "object_type"));
    const char *id = json_string_value(json_object_get(op, "object_id"));
    if (type == NULL || id == NULL || strcmp(type, b->h->type) != 0 || strcmp(id, b->h->id) != 0)
        return;
    const char *opid = json_string_value(json_object_get(op, "op_id"));
    const char *kind = json_string_value(json_object_get(op, "op"));
    const char *data = json_string_value(json_object_get(op, "data"));
    uint64_t op_id = opid ? strtoull(opid, NULL, 10) : 0;
    gw_buf_reset(&b->line);
    gw_buf_printf(&b->line, "op %s %s bucket %s", opid ? opid : "?", kind ? kind : "?", b->bucket);
    if (data != NULL) gw_buf_printf(&b->line, " data %s", data);
    hist_add(b->h, HIST_REPL, op_id, b->line.data);
    if (b->min_op == 0 || op_id < b->min_op) b->min_op = op_id;
}

/* A chunk's commit: stamp the bucket's entries whose op it holds. */
static int hist_chunk(void *ud, const gw_storage_chunk_commit_t *c)
{
    hist_bucket_t *b = ud;
    for (size_t i = b->from; i < b->h->n; i++) {
        hist_entry_t *e = &b->h->v[i];
        if (e->seq >= c->first_op && e->seq <= c->last_op) {
            e->at_us = c->commit_us;
            e->lsn = c->lsn;
        }
    }
    return 0;
}

static int hist_bucket(void *ud, const char *bucket, uint32_t checksum, uint64_t count)
{
    (void)checksum;
    (void)count;
    hist_ctx_t *h = ud;
    if (h->ns != NULL && strncmp(bucket, h->ns, strlen(h->ns)) != 0) return 0;
    hist_bucket_t b = {h, bucket, h->n, 0, GW_BUF_INIT};
    if (each_op(h->r, bucket, h->as_of, hist_op, &b) != 0) h->failed = 1;
    /* the commits of the chunks that hold the row's ops: a read apart from the ops */
    if (h->n > b.from &&
        gw_storage_chunk_commits(h->r, bucket, b.min_op - 1, h->as_of, hist_chunk, &b) != 0)
        h->failed = 1;
    gw_buf_free(&b.line);
    return 0;
}

/* One sent column of history entry e: `col: sent V old V stored V -> V (strategy, resolution)`;
 * a column no strategy decided was written as sent when the op applied (client_wins). */
static void hist_column(gw_buf_t *b, const char *col, json_t *e, int applied)
{
    static const char *const parts[] = {"sent", "old", "stored"};
    gw_buf_printf(b, "\n      %s:", col);
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_object_get(json_object_get(e, parts[i]), col);
        if (v == NULL) continue;
        char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        gw_buf_printf(b, " %s %s", parts[i], t ? t : "?");
        free(t);
    }
    json_t *d = json_object_get(json_object_get(e, "decided"), col);
    json_t *res = d != NULL ? json_object_get(d, "result")
                  : applied ? json_object_get(json_object_get(e, "sent"), col)
                            : NULL;
    if (res != NULL) {
        char *t = json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY);
        gw_buf_printf(b, " -> %s", t ? t : "?");
        free(t);
    }
    const char *st = d != NULL ? json_string_value(json_object_get(d, "strategy")) : "client_wins";
    const char *how = d != NULL ? json_string_value(json_object_get(d, "resolution"))
                      : applied ? "applied"
                                : NULL;
    gw_buf_printf(b, " (%s%s%s)", st ? st : "", st && how ? ", " : "", how ? how : "");
}

/* The row's write-back history from ferry_write_history into h (one entry per op, with its
 * columns on the lines below). 0, or 1 with the error printed. */
static int hist_writes(gw_config_t *cfg, hist_ctx_t *h, const char *label, const char *id)
{
    gw_err_t err;
    char msg[1024];
    PGconn *conn = gw_pg_connect(cfg->postgres.uri, 0, "ferry debug", &err);
    if (conn == NULL) {
        fprintf(stderr, "ferry debug history: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    /* no history table (write-back never ran against this database): storage's ops only */
    PGresult *has =
        gw_pg_query(conn, "SELECT to_regclass('ferry_write_history') IS NOT NULL", &err);
    int none = has != NULL && PQntuples(has) == 1 && PQgetvalue(has, 0, 0)[0] == 'f';
    PQclear(has);
    if (none) {
        fprintf(stderr, "ferry debug history: no write-back history here (ferry_write_history "
                        "does not exist); showing the replication ops only\n");
        PQfinish(conn);
        return 0;
    }
    /* the batches that name the row (their key, as write-back wrote it), then its ops in them */
    gw_buf_t kb = GW_BUF_INIT; /* written as write-back writes it (gw_write_batch.c) */
    gw_buf_puts(&kb, "[");
    gw_buf_json_str(&kb, label);
    gw_buf_puts(&kb, ",");
    gw_buf_json_str(&kb, id);
    gw_buf_puts(&kb, "]");
    gw_buf_append(&kb, "", 1);
    char *key = kb.data;
    const char *v[3] = {label, id, key};
    PGresult *res = gw_pg_query_params(
        conn,
        "SELECT (extract(epoch FROM h.at) * 1000000)::int8, h.user_id, h.client_id, "
        "e->>'op_id', e->>'op', e->>'s', COALESCE(e->>'c', ''), COALESCE(e->>'m', ''), "
        "COALESCE(e::text, ''), COALESCE((e->'v')::text, '') FROM ferry_write_history "
        "h, jsonb_array_elements(h.ops::jsonb) WITH ORDINALITY AS x(e, n) WHERE "
        "strpos(h.rows, $3) > 0 AND e->>'t' = $1 AND e->>'r' = $2 ORDER BY h.at, h.id, x.n",
        3, v, &err);
    free(key);
    if (res == NULL) {
        fprintf(stderr, "ferry debug history: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        PQfinish(conn);
        return 1;
    }
    gw_buf_t b = GW_BUF_INIT;
    for (int i = 0; i < PQntuples(res); i++) {
        gw_buf_reset(&b);
        gw_buf_printf(&b, "user %s client %s op %s %s: %s", PQgetvalue(res, i, 1),
                      PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
                      PQgetvalue(res, i, 5));
        if (PQgetvalue(res, i, 6)[0] != '\0')
            gw_buf_printf(&b, " %s: %s", PQgetvalue(res, i, 6), PQgetvalue(res, i, 7));
        json_t *e = json_loads(PQgetvalue(res, i, 8), 0, NULL);
        int applied = strcmp(PQgetvalue(res, i, 5), "applied") == 0;
        const char *col;
        json_t *sent;
        json_object_foreach(json_object_get(e, "sent"), col, sent)
        {
            if (strcmp(col, "id") != 0) hist_column(&b, col, e, applied);
        }
        json_decref(e);
        if (PQgetvalue(res, i, 9)[0] != '\0')
            gw_buf_printf(&b, "\n      violations: %s", PQgetvalue(res, i, 9));
        hist_entry_t *he = hist_add(h, HIST_WRITE, (uint64_t)i, b.data);
        he->at_us = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        if (he->at_us == 0) he->at_us = 1; /* 1970-01-01 exactly is a time, not "unknown" */
    }
    gw_buf_free(&b);
    PQclear(res);
    PQfinish(conn);
    return 0;
}

/* "2026-01-02 03:04:05.123456" (UTC; 26 characters), or the mark of an unknown time. */
static const char *hist_time(int64_t us, char *buf, size_t len)
{
    if (us == 0) {
        snprintf(buf, len, "%-26s", "(time unknown)");
        return buf;
    }
    time_t sec = (time_t)(us / 1000000);
    long frac = (long)(us % 1000000);
    if (frac < 0) {
        sec--;
        frac += 1000000;
    }
    struct tm tm;
    gmtime_r(&sec, &tm);
    char day[32];
    strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf, len, "%s.%06ld", day, frac);
    return buf;
}

/* ferry debug history: the row's replication ops from storage and its write-back history from
 * ferry_write_history, one timeline in time order. */
static int cmd_history(gw_config_t *cfg, const char *table, const char *id)
{
    gw_err_t err;
    char msg[1024];
    const char *dot = strchr(table, '.');
    const char *type = dot != NULL ? dot + 1 : table;
    char label[512];
    snprintf(label, sizeof(label), "%s",
             dot != NULL && strncmp(table, "public.", 7) == 0 ? table + 7 : table);

    gw_storage_reader_t *r;
    gw_storage_opts_t sopts = gw_cli_storage_opts(cfg, NULL);
    if (gw_storage_reader_open(&sopts, &r, &err) != 0) {
        fprintf(stderr, "ferry debug history: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    uint64_t last_op, lsn;
    int consistent;
    gw_storage_read_checkpoint(r, &last_op, &lsn, &consistent);
    hist_ctx_t h = {
        .r = r, .as_of = last_op, .ns = gw_storage_reader_version(r), .type = type, .id = id};
    int rc = gw_storage_each_bucket(r, last_op, hist_bucket, &h) != 0 || h.failed;
    gw_storage_reader_close(r);
    if (rc != 0) fprintf(stderr, "ferry debug history: could not read the storage\n");
    if (hist_writes(cfg, &h, label, id) != 0) rc = 1;

    printf("row %s %s\n", label, id);
    printf("timeline (UTC, oldest first; storage checkpoint %llu):\n", (unsigned long long)last_op);
    if (h.n == 0) printf("  (none)\n");
    if (h.n > 0) qsort(h.v, h.n, sizeof(*h.v), cmp_entry);
    for (size_t i = 0; i < h.n; i++) {
        char t[40], l[32];
        hist_entry_t *e = &h.v[i];
        hist_time(e->at_us, t, sizeof(t));
        if (e->kind == HIST_REPL)
            printf("  %s repl  %s lsn %s\n", t, e->text,
                   e->lsn != 0 ? gw_lsn_format(e->lsn, l, sizeof(l)) : "?");
        else
            printf("  %s write %s\n", t, e->text);
        free(e->text);
    }
    free(h.v);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: ferry debug dump --config FILE [--bucket B] [--all-versions] "
                 "[--checksums | --ops]\n"
                 "       ferry debug oracle --config FILE\n"
                 "       ferry debug history --config FILE TABLE ID\n");
}

int gw_cli_debug(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "dump") != 0 && strcmp(argv[1], "oracle") != 0 &&
                     strcmp(argv[1], "history") != 0)) {
        usage(stderr);
        return 2;
    }
    const char *what = argv[1];
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"bucket", required_argument, NULL, 'b'},
        {"checksums", no_argument, NULL, 's'},    {"ops", no_argument, NULL, 'o'},
        {"all-versions", no_argument, NULL, 'a'}, {0}};
    const char *config = NULL, *bucket = NULL;
    int checksums = 0, ops = 0, all = 0, c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:b:so", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'b':
            bucket = optarg;
            break;
        case 's':
            checksums = 1;
            break;
        case 'o':
            ops = 1;
            break;
        case 'a':
            all = 1;
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    const char *path = gw_cli_config_path(config);
    int history = strcmp(what, "history") == 0;
    if (path == NULL || (history ? optind + 2 != argc : optind < argc) || (checksums && ops)) {
        usage(stderr);
        return 2;
    }
    gw_config_t cfg;
    gw_err_t err;
    char msg[1024];
    if (gw_config_load(&cfg, path, &err) != 0) {
        fprintf(stderr, "%s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    int rc = history                     ? cmd_history(&cfg, argv[optind], argv[optind + 1])
             : strcmp(what, "dump") == 0 ? cmd_dump(&cfg, bucket, all, checksums, ops)
                                         : cmd_oracle(&cfg);
    gw_config_free(&cfg);
    return rc;
}
