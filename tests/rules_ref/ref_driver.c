/* ref_driver.c -- Ferry's side of the differential test against PowerSync's sync-rules compiler
 *
 * Reads a job (JSON, argv[1]: a rules file, rows in pgoutput text form, requests) and prints
 * on stdout, as one JSON document, everything the test compares with the reference compiler
 * (tests/rules_ref/diff.mjs): the compile diagnostics, for each row its ops (bucket, object
 * type, id, data, checksum) and parameter-lookup entries, and for each request its buckets
 * (id, priority, reasons), subscribed streams and subscription errors. Lookups of requests are
 * answered from the entries the job's rows produced, as storage would answer them.
 *
 *   ref_driver JOB.json      (exit 0; 1 when the job itself cannot be read)
 */
#include "rules/rules.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct index {
    rules_lookups_t all;
} index_t;

static int lookup_cb(void *arg, const char *key, rules_answer_t *ans)
{
    index_t *ix = arg;
    for (size_t i = 0; i < ix->all.n; i++)
        if (strcmp(ix->all.items[i].key, key) == 0 &&
            rules_answer_add(ans, ix->all.items[i].params) != 0)
            return -1;
    return 0;
}

static json_t *row_json(rules_set_t *set, const char *version, json_t *jr, index_t *ix)
{
    json_t *cols = json_object_get(jr, "cols");
    size_t n = json_array_size(cols);
    const char **names = calloc(n + 1, sizeof(char *));
    const char **values = calloc(n + 1, sizeof(char *));
    uint32_t *types = calloc(n + 1, sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cols, i);
        names[i] = json_string_value(json_object_get(c, "name"));
        types[i] = (uint32_t)json_integer_value(json_object_get(c, "type"));
        json_t *v = json_object_get(c, "value");
        values[i] = json_is_string(v) ? json_string_value(v) : NULL;
    }
    rules_row_t row = {json_string_value(json_object_get(jr, "schema")),
                       json_string_value(json_object_get(jr, "table")),
                       n,
                       names,
                       types,
                       values,
                       NULL};
    json_t *out = json_object();
    rules_ops_t ops = {0};
    rules_error_t err;
    int rc = rules_eval_row(set, version, &row, &ops, &err);
    json_t *jops = json_array();
    for (size_t i = 0; i < ops.n; i++)
        json_array_append_new(
            jops, json_pack("{s:s,s:s,s:s,s:s,s:I}", "bucket", ops.items[i].bucket, "table",
                            ops.items[i].object_type, "id", ops.items[i].object_id, "data",
                            ops.items[i].data, "checksum", (json_int_t)ops.items[i].checksum));
    json_object_set_new(out, "ops", jops);
    if (rc) json_object_set_new(out, "error", json_string(err.message));
    rules_ops_free(&ops);
    rules_lookups_t lk = {0};
    rc = rules_eval_lookups(set, &row, &lk, &err);
    json_t *jlk = json_array();
    for (size_t i = 0; i < lk.n; i++) {
        json_array_append_new(
            jlk, json_pack("{s:s,s:s}", "key", lk.items[i].key, "params", lk.items[i].params));
        if (ix->all.n == ix->all.cap) {
            ix->all.cap = ix->all.cap ? ix->all.cap * 2 : 16;
            ix->all.items = realloc(ix->all.items, sizeof(rules_lookup_t) * ix->all.cap);
        }
        ix->all.items[ix->all.n++] =
            (rules_lookup_t){strdup(lk.items[i].key), strdup(lk.items[i].params), NULL};
    }
    json_object_set_new(out, "lookups", jlk);
    if (rc) json_object_set_new(out, "lookup_error", json_string(err.message));
    rules_lookups_free(&lk);
    free(names);
    free(values);
    free(types);
    return out;
}

static char *dump(json_t *v)
{
    return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

static json_t *request_json(rules_set_t *set, const char *version, json_t *jq, index_t *ix)
{
    char *claims = dump(json_object_get(jq, "claims"));
    char *params = dump(json_object_get(jq, "params"));
    json_t *streams = json_object_get(jq, "streams");
    json_t *jsubs = json_object_get(streams, "subscriptions");
    size_t nsubs = json_array_size(jsubs);
    rules_subscription_t *subs = calloc(nsubs + 1, sizeof(rules_subscription_t));
    char **texts = calloc(nsubs + 1, sizeof(char *));
    for (size_t i = 0; i < nsubs; i++) {
        json_t *s = json_array_get(jsubs, i);
        json_t *p = json_object_get(s, "parameters");
        json_t *o = json_object_get(s, "override_priority");
        texts[i] = p && !json_is_null(p) ? dump(p) : NULL;
        subs[i] = (rules_subscription_t){json_string_value(json_object_get(s, "stream")), texts[i],
                                         json_is_integer(o) ? (int)json_integer_value(o) : -1};
    }
    json_t *inc = json_object_get(streams, "include_defaults");
    rules_request_t rq = {claims, params, lookup_cb, ix,
                          5000,   subs,   nsubs,     inc && json_is_false(inc)};
    rules_buckets_t b = {0};
    rules_error_t err;
    int rc = rules_eval_request(set, version, &rq, &b, &err);
    json_t *out = json_object();
    json_t *jb = json_array();
    for (size_t i = 0; i < b.n; i++) {
        json_t *r = json_array();
        for (size_t k = 0; k < b.items[i].nreasons; k++)
            json_array_append_new(r, json_integer(b.items[i].reasons[k]));
        json_array_append_new(jb, json_pack("{s:s,s:i,s:o,s:s}", "bucket", b.items[i].bucket,
                                            "priority", b.items[i].priority, "reasons", r,
                                            "definition", b.items[i].definition));
    }
    json_object_set_new(out, "buckets", jb);
    json_t *js = json_array();
    for (size_t i = 0; i < b.nstreams; i++)
        json_array_append_new(js, json_pack("{s:s,s:b}", "name", b.streams[i].name, "is_default",
                                            b.streams[i].is_default));
    json_object_set_new(out, "streams", js);
    json_t *je = json_array();
    for (size_t i = 0; i < b.nerrors; i++)
        json_array_append_new(je, json_pack("{s:s,s:i,s:s}", "stream", b.errors[i].stream,
                                            "subscription", b.errors[i].subscription, "message",
                                            b.errors[i].message));
    json_object_set_new(out, "errors", je);
    if (rc) json_object_set_new(out, "error", json_string(err.message));
    rules_buckets_free(&b);
    for (size_t i = 0; i < nsubs; i++)
        free(texts[i]);
    free(texts);
    free(subs);
    free(claims);
    free(params);
    return out;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ref_driver JOB.json\n");
        return 1;
    }
    json_error_t jerr;
    json_t *job = json_load_file(argv[1], 0, &jerr);
    if (!job) {
        fprintf(stderr, "ref_driver: %s: %s\n", argv[1], jerr.text);
        return 1;
    }
    const char *file = json_string_value(json_object_get(job, "file"));
    const char *version = json_string_value(json_object_get(job, "version"));
    rules_set_t *set = NULL;
    rules_diags_t d = {0};
    int rc = rules_compile_file(file, &set, &d);
    json_t *out = json_object();
    json_t *jd = json_array();
    for (size_t i = 0; i < d.n; i++) {
        char buf[1200];
        json_array_append_new(jd, json_pack("{s:b,s:i,s:i,s:s}", "warning", d.items[i].is_warning,
                                            "line", d.items[i].line, "col", d.items[i].col, "text",
                                            rules_diag_format(&d, i, buf, sizeof buf)));
    }
    json_object_set_new(out, "diags", jd);
    json_object_set_new(out, "ok", json_boolean(rc == 0));
    if (rc == 0) {
        index_t ix = {0};
        json_t *rows = json_array(), *reqs = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(job, "rows"), i, e)
            json_array_append_new(rows, row_json(set, version, e, &ix));
        json_array_foreach(json_object_get(job, "requests"), i, e)
            json_array_append_new(reqs, request_json(set, version, e, &ix));
        json_object_set_new(out, "rows", rows);
        json_object_set_new(out, "requests", reqs);
        rules_lookups_free(&ix.all);
        rules_unref(set);
    }
    rules_diags_free(&d);
    char *s = json_dumps(out, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(out);
    json_decref(job);
    return 0;
}
