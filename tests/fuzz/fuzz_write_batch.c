/* fuzz_write_batch.c -- libFuzzer target: the body of POST /api/write (a CRUD batch)
 *
 * The route's parser is static in api/gw_write.c, so this target includes that file (the
 * Makefile leaves it out of this target's link) and calls its parse_op() on every entry of the
 * batch, after the route's own checks of the body's shape (repeated in body_ok() below, in the
 * route's order), with write rules covering plain, schema-qualified and unwritable tables; then
 * the 200 answer is rendered from the parsed ops (gw__write_batch_results), as a batch whose
 * ops were all decided. Applying needs Postgres and is not fuzzed here. Invariants: an op either
 * has a kind and a write rule, or was rejected with a code and a message; an op id is positive.
 */
#include "gateway/api/gw_write.c"

#include <stddef.h>
#include <stdint.h>

static const char RULES[] = "bucket_definitions:\n"
                            "  all:\n"
                            "    data:\n"
                            "      - SELECT id, label FROM items\n"
                            "write_rules:\n"
                            "  items:\n"
                            "    operations: [insert, update, delete]\n"
                            "    columns: [id, label, n, owner]\n"
                            "    check: \"new.owner = request.user_id()\"\n"
                            "  app.notes:\n"
                            "    operations: [insert]\n"
                            "    columns: [id, body]\n";

static rules_set_t *g_rules;

/* The route's checks of the body's shape, in its order: 0, or -1 when it answers 400. */
static int body_ok(json_t *body)
{
    if (body == NULL || !json_is_object(body)) return -1;
    json_t *client = json_object_get(body, "client_id"), *batch = json_object_get(body, "batch");
    json_t *params = json_object_get(body, "parameters");
    if (!json_is_string(client) || json_string_length(client) == 0) return -1;
    if (json_string_length(client) > 200) return -1;
    if (!json_is_array(batch)) return -1;
    if (params != NULL && !json_is_null(params) && !json_is_object(params)) return -1;
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
    json_t *body = json_loadb((const char *)data, size, 0, &jerr);
    if (body_ok(body) != 0) {
        json_decref(body);
        return 0;
    }
    json_t *batch = json_object_get(body, "batch");
    wbatch_t b;
    memset(&b, 0, sizeof(b));
    b.nops = json_array_size(batch);
    b.ops = gw_xcalloc(b.nops > 0 ? b.nops : 1, sizeof(wop_t));
    char msg[512];
    int ok = 1;
    for (size_t i = 0; i < b.nops && ok; i++) {
        wop_t *op = &b.ops[i];
        if (parse_op(g_rules, json_array_get(batch, i), i, op, msg, sizeof(msg)) != 0) {
            ok = 0; /* 400 naming the entry */
            if (msg[0] == '\0') __builtin_trap();
            break;
        }
        if (op->op_id <= 0) __builtin_trap();
        if (op->status == ST_REJECTED) {
            if (op->code == NULL) __builtin_trap();
        } else if (op->kind == 0 || op->rule == NULL) {
            __builtin_trap();
        }
    }
    if (ok) {
        gw__write_batch_results(&b);
        json_t *answer = json_loadb(b.out.data, b.out.len, 0, &jerr);
        if (answer == NULL) __builtin_trap(); /* the answer must be JSON, whatever came in */
        json_decref(answer);
    }
    gw_buf_free(&b.out);
    free(b.ops);
    json_decref(body);
    return 0;
}
