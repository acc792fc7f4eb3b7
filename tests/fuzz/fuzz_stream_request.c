/* fuzz_stream_request.c -- libFuzzer target: the body of POST /sync/stream
 *
 * What a client's body reaches in on_sync_stream (api/gw_stream.c): jansson, the shape checks,
 * the "after" positions of "buckets", the client id in the write-checkpoint key, and above all
 * the rules evaluating the request with the body's "parameters" (request.parameters(),
 * json_each over them, ->> and casts, table lookups keyed by parameter values, the bucket
 * limit). The route itself needs h2o, storage and a replicator; its parsing is the few lines
 * repeated in parse_body() below (kept in the same order as the route's), and everything after
 * them is the real code: rules_eval_request with a lookup callback answering like storage does,
 * and gw_app_user_key. Any result is fine except a crash, a leak or a hang.
 */
#include "api/gw_api.h"
#include "rules/rules.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Rules whose definitions read the request's parameters every way the language allows. */
static const char RULES[] =
    "bucket_definitions:\n"
    "  global:\n"
    "    data:\n"
    "      - SELECT id, name FROM lists\n"
    "  by_param:\n"
    "    parameters: SELECT request.parameters() ->> 'x' AS x\n"
    "    data:\n"
    "      - SELECT id FROM items WHERE owner = bucket.x\n"
    "  many:\n"
    "    parameters: SELECT value AS v FROM json_each(request.parameters() -> 'xs')\n"
    "    data:\n"
    "      - SELECT id FROM items WHERE tag = bucket.v\n"
    "  typed:\n"
    "    parameters: SELECT CAST(request.parameters() ->> 'n' AS INTEGER) AS n, "
    "upper(request.parameters() ->> 's') AS s\n"
    "    data:\n"
    "      - SELECT id FROM items WHERE n = bucket.n AND s = bucket.s\n"
    "  mine:\n"
    "    parameters: SELECT request.user_id() AS uid, request.jwt() ->> 'region' AS region\n"
    "    data:\n"
    "      - SELECT id FROM items WHERE owner = bucket.uid AND region = bucket.region\n"
    "  lookup:\n"
    "    parameters: SELECT org_id FROM members WHERE user_id = request.parameters() ->> 'u'\n"
    "    priority: 1\n"
    "    data:\n"
    "      - SELECT id FROM docs WHERE org_id = bucket.org_id\n";

static rules_set_t *g_rules;

static int answer(void *arg, const char *key, rules_answer_t *ans)
{
    (void)arg;
    /* storage answers every params JSON stored under the key: none, one or several */
    size_t n = strlen(key) % 3;
    for (size_t i = 0; i < n; i++)
        if (rules_answer_add(ans, i == 0 ? "{\"org_id\":\"o1\"}" : "{\"org_id\":2}") != 0)
            return -1;
    return 0;
}

/* The route's parsing: 0 with the parts, or -1 when the route answers 400. */
static int parse_body(json_t *body, json_t **jb, json_t **jparams, json_t **jclient)
{
    if (body != NULL && !json_is_object(body)) return -1;
    *jb = body ? json_object_get(body, "buckets") : NULL;
    *jparams = body ? json_object_get(body, "parameters") : NULL;
    *jclient = body ? json_object_get(body, "client_id") : NULL;
    if ((*jb != NULL && !json_is_array(*jb) && !json_is_null(*jb)) ||
        (*jparams != NULL && !json_is_object(*jparams) && !json_is_null(*jparams)) ||
        (*jclient != NULL && !json_is_string(*jclient) && !json_is_null(*jclient)))
        return -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_rules == NULL) {
        rules_diags_t d;
        if (rules_compile(RULES, sizeof(RULES) - 1, "fuzz.yaml", &g_rules, &d) != 0) abort();
        rules_diags_free(&d);
    }
    json_error_t jerr;
    json_t *body = size > 0 ? json_loadb((const char *)data, size, 0, &jerr) : NULL;
    if (size > 0 && body == NULL) return 0; /* 400: not JSON */
    json_t *jb, *jparams, *jclient;
    if (parse_body(body, &jb, &jparams, &jclient) != 0) {
        json_decref(body);
        return 0;
    }
    /* as the route's json_text_or(jparams, "{}") */
    char *params = jparams != NULL && !json_is_null(jparams)
                       ? json_dumps(jparams, JSON_COMPACT | JSON_ENCODE_ANY)
                       : NULL;
    if (params == NULL) params = strdup("{}");
    if (jclient != NULL && json_is_string(jclient)) {
        /* as the route: a client_id of at most GW_CLIENT_ID_MAX bytes always gives a key */
        char key[GW_USER_KEY_MAX];
        int krc = gw_app_user_key("u1", json_string_value(jclient), key, sizeof(key));
        if (json_string_length(jclient) <= GW_CLIENT_ID_MAX && krc != 0) __builtin_trap();
        if (krc == 0 && strlen(key) >= sizeof(key)) __builtin_trap();
    }
    /* the bucket list, as eval_buckets asks for it (limit 6, as 40_streams configures) */
    rules_request_t rq = {.claims_json = "{\"sub\":\"u1\",\"region\":\"eu\"}",
                          .params_json = params,
                          .lookup = answer,
                          .max_buckets = 6 * 4 + 16};
    rules_buckets_t out = {0};
    rules_error_t rerr = {0};
    int rc = rules_eval_request(g_rules, "1", &rq, &out, &rerr);
    if (rc == 0)
        for (size_t i = 0; i < out.n; i++)
            if (out.items[i].bucket == NULL || strncmp(out.items[i].bucket, "1#", 2) != 0)
                __builtin_trap();
    rules_buckets_free(&out);
    /* positions the client already has */
    size_t i;
    json_t *e;
    json_array_foreach(jb, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *ja = json_object_get(e, "after");
        uint64_t a = 0;
        if (json_is_string(ja))
            a = strtoull(json_string_value(ja), NULL, 10);
        else if (json_is_integer(ja) && json_integer_value(ja) > 0)
            a = (uint64_t)json_integer_value(ja);
        (void)name;
        (void)a;
    }
    free(params);
    json_decref(body);
    return 0;
}
