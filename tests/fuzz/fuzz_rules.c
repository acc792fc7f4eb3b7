/* fuzz_rules.c -- libFuzzer target: arbitrary bytes into the sync-rules compiler
 *
 * Every input is compiled as a rules file. When it compiles, the set is also exercised the
 * way the gateway uses it: one row of a few common table names through rules_eval_row() and
 * rules_eval_lookups(), and one request (with a lookup callback that answers one row, and
 * stream subscriptions) through rules_eval_request(). Seeds (tests/fuzz/seeds/rules) are
 * rules files of every form, Sync Streams included. The compiler and evaluator must never crash,
 * leak or hang, whatever the input; ASan/UBSan (set by the Makefile) report it if they do.
 */
#include "rules/rules.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static int answer(void *arg, const char *key, rules_answer_t *ans)
{
    (void)arg;
    (void)key;
    return rules_answer_add(ans, "{\"org_id\":\"o1\",\"id\":5,\"_priority\":1}");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rules_set_t *set = NULL;
    rules_diags_t d;
    rules_compile((const char *)data, size, "fuzz.yaml", &set, &d);
    char buf[256];
    for (size_t i = 0; i < d.n; i++)
        rules_diag_format(&d, i, buf, sizeof buf);
    rules_diags_free(&d);
    if (!set) return 0;
    static const char *const tables[] = {"lists", "todos", "t", "org_members", "posts"};
    const char *names[] = {"id", "owner_id", "tags", "archived", "user_id", "org_id", "n"};
    const uint32_t oids[] = {25, 25, 1009, 16, 25, 25, 701};
    const char *vals[] = {"l1", "u1", "{a,\"b c\",NULL}", "f", "u1", "o1", "3.5"};
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++) {
        rules_row_t row = {NULL, tables[t], 7, names, oids, vals, NULL};
        rules_ops_t ops = {0};
        rules_eval_row(set, "1", &row, &ops, NULL);
        rules_ops_free(&ops);
        rules_lookups_t lk = {0};
        rules_eval_lookups(set, &row, &lk, NULL);
        rules_lookups_free(&lk);
    }
    /* Sync Streams: subscriptions with parameters of every shape, one to an unknown stream */
    static const rules_subscription_t subs[] = {
        {"s", "{\"list_id\":\"l1\",\"ids\":[\"a\",1,null]}", -1},
        {"list_todos", "{\"list_id\":null}", 0},
        {"x", "[1]", 2},
        {"", NULL, -1}};
    rules_request_t req = {"{\"sub\":\"u1\",\"teams\":[\"t1\",2,null],\"parameters\":{\"a\":true}}",
                           "{\"tags\":[\"x\"]}",
                           answer,
                           NULL,
                           50,
                           subs,
                           sizeof subs / sizeof *subs,
                           0};
    rules_buckets_t b = {0};
    rules_eval_request(set, "1", &req, &b, NULL);
    rules_buckets_free(&b);
    rules_unref(set);
    return 0;
}
