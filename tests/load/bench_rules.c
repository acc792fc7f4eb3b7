/* bench_rules.c -- row evaluation throughput of librules (not a test; `make bench`)
 *
 * Compiles a rule set with 5 bucket definitions over 3 tables (lists, todos, comments: plain
 * column matches, a json_each and a table-lookup parameter query, an upper() output and a
 * row-only predicate), then evaluates N rows round-robin over the tables on one thread with
 * rules_eval_row() (plus rules_eval_lookups() for the lookup table, as the replicator would)
 * and prints "rows/s". The target from issue #3 is 300,000 rows/s on one core. For scale it also
 * measures, in the same run, bare SQLite evaluations of one prepared statement (bind three
 * values, step, reset) and prints the ratio; lines "BENCH name value unit note" feed bench.sh.
 * Usage: build/bench_rules [ROWS]   (default 600000)
 */
#include "rules/rules.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *rules_text =
    "bucket_definitions:\n"
    "  user_lists:\n"
    "    parameters: SELECT request.user_id() AS user_id\n"
    "    data:\n"
    "      - SELECT * FROM lists WHERE owner_id = bucket.user_id\n"
    "      - SELECT * FROM todos WHERE created_by = bucket.user_id\n"
    "  list_todos:\n"
    "    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()\n"
    "    data:\n"
    "      - SELECT id, list_id, description, completed FROM todos WHERE list_id = "
    "bucket.list_id\n"
    "  team_comments:\n"
    "    parameters: SELECT json_each.value AS team FROM json_each(request.jwt() -> 'teams')\n"
    "    data:\n"
    "      - SELECT id, body, upper(author) AS author FROM comments WHERE team_id = "
    "bucket.team\n"
    "  open_todos:\n"
    "    priority: 1\n"
    "    data:\n"
    "      - SELECT id, description FROM todos WHERE NOT completed\n"
    "  everything:\n"
    "    data:\n"
    "      - SELECT id, name FROM lists\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* bare SQLite: one prepared statement evaluation per iteration */
static double sqlite_rate(long n)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    sqlite3_open(":memory:", &db);
    sqlite3_prepare_v2(db, "SELECT ?1 = ?2, upper(?3)", -1, &st, NULL);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, "user1", 5, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, "user2", 5, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, "alice", 5, SQLITE_STATIC);
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    double dt = now() - t0;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return (double)n / dt;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 600000;
    rules_set_t *set = NULL;
    rules_diags_t d;
    if (rules_compile(rules_text, strlen(rules_text), "bench.yaml", &set, &d) != 0) {
        char buf[512];
        for (size_t i = 0; i < d.n; i++)
            fprintf(stderr, "%s\n", rules_diag_format(&d, i, buf, sizeof buf));
        return 1;
    }
    rules_diags_free(&d);
    const char *ln[] = {"id", "name", "owner_id", "created_at"};
    uint32_t lt[] = {2950, 25, 25, 1184};
    const char *tn[] = {"id", "list_id", "description", "completed", "created_by", "priority"};
    uint32_t tt[] = {2950, 2950, 25, 16, 25, 23};
    const char *cn[] = {"id", "team_id", "body", "author", "score"};
    uint32_t ct[] = {2950, 25, 25, 25, 701};
    /* inputs are prepared before the clock starts: 4096 distinct rows, cycled */
    enum { DISTINCT = 4096 };
    static char ids[DISTINCT][64], owners[DISTINCT][32], teams[DISTINCT][32];
    for (int i = 0; i < DISTINCT; i++) {
        snprintf(ids[i], sizeof ids[i], "0e4f6c1a-9b7d-4c3e-8f21-%012d", i);
        snprintf(owners[i], sizeof owners[i], "user%d", i % 1000);
        snprintf(teams[i], sizeof teams[i], "team%d", i % 50);
    }
    long ops = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        const char *id = ids[i % DISTINCT], *owner = owners[i % DISTINCT];
        const char *team = teams[i % DISTINCT];
        rules_ops_t out = {0};
        rules_row_t row;
        int which = (int)(i % 3);
        if (which == 0) {
            const char *v[] = {id, "Groceries", owner, "2024-05-01 10:11:12.123456+00"};
            row = (rules_row_t){NULL, "lists", 4, ln, lt, v, NULL};
            rules_eval_row(set, "1", &row, &out, NULL);
            rules_lookups_t lk = {0};
            rules_eval_lookups(set, &row, &lk, NULL);
            rules_lookups_free(&lk);
        } else if (which == 1) {
            const char *v[] = {id,         "0e4f6c1a-9b7d-4c3e-8f21-000000000001",
                               "Buy milk", (i & 4) ? "t" : "f",
                               owner,      "3"};
            row = (rules_row_t){NULL, "todos", 6, tn, tt, v, NULL};
            rules_eval_row(set, "1", &row, &out, NULL);
        } else {
            const char *v[] = {id, team, "Looks good to me", "alice", "4.5"};
            row = (rules_row_t){NULL, "comments", 5, cn, ct, v, NULL};
            rules_eval_row(set, "1", &row, &out, NULL);
        }
        ops += (long)out.n;
        rules_ops_free(&out);
    }
    double dt = now() - t0;
    printf("bench_rules: %ld rows, %ld ops, 5 bucket definitions over 3 tables, %.3f s\n", n, ops,
           dt);
    double rows = (double)n / dt, bare = sqlite_rate(n);
    printf("BENCH rules_row_eval %.0f rows/s 5 definitions, 3 tables, %.2f ops/row, with "
           "checksums and lookups (target 300000) limit=bare_sqlite_eval:%.0f\n",
           rows, (double)ops / (double)n, bare);
    printf("BENCH rules_row_eval_vs_sqlite %.3f ratio rows/s over bare SQLite statement "
           "evaluations/s (%.0f/s)\n",
           rows / bare, bare);
    printf("%.0f rows/s\n", rows);
    rules_unref(set);
    return 0;
}
