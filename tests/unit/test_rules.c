/* test_rules.c -- unit tests of librules: golden files plus direct API checks
 *
 * Golden files live in tests/unit/rules/ (run from the repository root, or set
 * RULES_GOLDEN_DIR):
 *   errors/NAME.yaml   a rules file whose "# expect: ..." comment lines list every diagnostic
 *                      the compiler must report, in order, exactly ("# expect: ok" for none),
 *                      followed by rules_lint's warnings when it compiles (as `ferry rules
 *                      check` and ferry's loader print them).
 *   cases/NAME.yaml    a rules file, with NAME.in (commands) and NAME.out (expected output).
 * Commands of a .in file, one per line ("#" starts a comment):
 *   version V | version -           bucket id prefix for later commands (default none)
 *   row TABLE {"col":["type",value|null],...}    rules_eval_row + rules_eval_lookups; the
 *                                   lookup entries are remembered for later requests
 *   params JSON                     client parameters for later requests
 *   request CLAIMS_JSON             rules_eval_request answered from the remembered lookups
 *   request-unresolved CLAIMS_JSON  the same without a lookup callback
 *   clear                           forget the remembered lookups
 *   checksum put TYPE ID DATA | checksum delete SUBKEY
 *   tables | writes                 print referenced tables / compiled write rules
 * RULES_GOLDEN_UPDATE=1 rewrites the .out files instead of comparing (review the diff!).
 */
#include "rules/rules.h"

#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *golden_dir(void)
{
    const char *d = getenv("RULES_GOLDEN_DIR");
    return d ? d : "tests/unit/rules";
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    size_t got = fread(p, 1, (size_t)n, f);
    fclose(f);
    p[got] = 0;
    if (len) *len = got;
    return p;
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)n + 1 > b->cap) {
        b->cap = (b->n + (size_t)n + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* file names (without extension) in a golden subfolder, sorted */
static int list_names(const char *sub, const char *ext, char ***out)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", golden_dir(), sub);
    DIR *d = opendir(path);
    int n = 0;
    char **names = NULL;
    if (!d) {
        *out = NULL;
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name), el = strlen(ext);
        if (l > el && strcmp(e->d_name + l - el, ext) == 0) {
            names = realloc(names, sizeof(char *) * (size_t)(n + 1));
            names[n++] = strndup(e->d_name, l - el);
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    *out = names;
    return n;
}

static char **error_names, **case_names;
static int nerror_names, ncase_names;

/* ---- error goldens -------------------------------------------------------------------- */

START_TEST(test_rules_compile_errors_golden)
{
    const char *name = error_names[_i];
    char path[512], fname[300];
    snprintf(path, sizeof path, "%s/errors/%s.yaml", golden_dir(), name);
    snprintf(fname, sizeof fname, "%s.yaml", name);
    size_t len;
    char *text = slurp(path, &len);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    sbuf_t want = {0}, got = {0};
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t l = nl ? (size_t)(nl - line) : strlen(line);
        if (l > 10 && strncmp(line, "# expect: ", 10) == 0)
            sb_printf(&want, "%.*s\n", (int)(l - 10), line + 10);
        line = nl ? nl + 1 : NULL;
    }
    rules_set_t *set = NULL;
    rules_diags_t d;
    int rc = rules_compile(text, len, fname, &set, &d);
    if (rc == 0) rules_lint(set, &d);
    char buf[1200];
    for (size_t i = 0; i < d.n; i++)
        sb_printf(&got, "%s\n", rules_diag_format(&d, i, buf, sizeof buf));
    if (d.n == 0) sb_printf(&got, "ok\n");
    ck_assert_msg(want.n > 0, "%s has no \"# expect:\" lines", path);
    ck_assert_msg(strcmp(want.p, got.p) == 0, "%s\n--- want\n%s--- got\n%s", path, want.p, got.p);
    ck_assert_int_eq(rc == 0, d.nerrors == 0);
    ck_assert_int_eq(set != NULL, d.nerrors == 0);
    rules_diags_free(&d);
    rules_unref(set);
    free(want.p);
    free(got.p);
    free(text);
}
END_TEST

/* ---- evaluation goldens --------------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t oid;
} types[] = {
    {"bool", 16},
    {"bytea", 17},
    {"int8", 20},
    {"int2", 21},
    {"int4", 23},
    {"text", 25},
    {"oid", 26},
    {"json", 114},
    {"float4", 700},
    {"float8", 701},
    {"varchar", 1043},
    {"date", 1082},
    {"time", 1083},
    {"timestamp", 1114},
    {"timestamptz", 1184},
    {"interval", 1186},
    {"numeric", 1700},
    {"uuid", 2950},
    {"pg_lsn", 3220},
    {"jsonb", 3802},
    {"inet", 869},
    {"timetz", 1266},
    {"_bool", 1000},
    {"_bytea", 1001},
    {"_int2", 1005},
    {"_int4", 1007},
    {"_text", 1009},
    {"_int8", 1016},
    {"_float8", 1022},
    {"_numeric", 1231},
    {"_timestamptz", 1185},
    {"_timestamp", 1115},
    {"_date", 1182},
    {"_jsonb", 3807},
    {"_json", 199},
    {"_uuid", 2951},
    {"_float4", 1021},
    {"unknown", 0},
    {NULL, 0},
};

typedef struct store {
    char **keys, **params;
    size_t n;
} store_t;

static int store_lookup(void *arg, const char *key, rules_answer_t *ans)
{
    store_t *s = arg;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->keys[i], key) == 0) rules_answer_add(ans, s->params[i]);
    return 0;
}

static void cmd_row(rules_set_t *set, const char *version, const char *arg, store_t *st,
                    sbuf_t *out)
{
    char table[128];
    const char *sp = strchr(arg, ' ');
    ck_assert_msg(sp != NULL, "row: missing columns");
    snprintf(table, sizeof table, "%.*s", (int)(sp - arg), arg);
    json_error_t je;
    json_t *cols = json_loads(sp + 1, 0, &je);
    ck_assert_msg(cols && json_is_object(cols), "row: bad JSON: %s", je.text);
    size_t n = json_object_size(cols), i = 0;
    const char **names = calloc(n + 1, sizeof(char *));
    const char **vals = calloc(n + 1, sizeof(char *));
    uint32_t *oids = calloc(n + 1, sizeof(uint32_t));
    const char *k;
    json_t *v;
    json_object_foreach(cols, k, v)
    {
        const char *ty = json_string_value(json_array_get(v, 0));
        json_t *jv = json_array_get(v, 1);
        int found = 0;
        for (int t = 0; types[t].name; t++)
            if (ty && strcmp(types[t].name, ty) == 0) {
                oids[i] = types[t].oid;
                found = 1;
            }
        ck_assert_msg(found, "row: unknown type %s", ty ? ty : "?");
        names[i] = k;
        vals[i] = json_is_string(jv) ? json_string_value(jv) : NULL;
        i++;
    }
    char *schema = NULL;
    const char *tname = table;
    char *dot = strchr(table, '.');
    if (dot) {
        schema = strndup(table, (size_t)(dot - table));
        tname = dot + 1;
    }
    rules_row_t row = {schema, tname, n, names, oids, vals, NULL};
    rules_ops_t ops = {0};
    rules_error_t err;
    int rc = rules_eval_row(set, version, &row, &ops, &err);
    for (size_t x = 0; x < ops.n; x++) {
        rules_op_t *o = &ops.items[x];
        sb_printf(out, "op %s %s %s %s %u\n", o->bucket, o->object_type, o->object_id, o->data,
                  o->checksum);
    }
    if (rc) sb_printf(out, "error %d %s\n", rc, err.message);
    rules_lookups_t lk = {0};
    rc = rules_eval_lookups(set, &row, &lk, &err);
    for (size_t x = 0; x < lk.n; x++) {
        sb_printf(out, "lookup %s %s\n", lk.items[x].key, lk.items[x].params);
        st->keys = realloc(st->keys, sizeof(char *) * (st->n + 1));
        st->params = realloc(st->params, sizeof(char *) * (st->n + 1));
        st->keys[st->n] = strdup(lk.items[x].key);
        st->params[st->n++] = strdup(lk.items[x].params);
    }
    if (rc) sb_printf(out, "error %d %s\n", rc, err.message);
    if (ops.n == 0 && lk.n == 0 && rc == 0) sb_printf(out, "(nothing)\n");
    rules_lookups_free(&lk);
    rules_ops_free(&ops);
    free(names);
    free(vals);
    free(oids);
    free(schema);
    json_decref(cols);
}

static void cmd_request(rules_set_t *set, const char *version, const char *claims,
                        const char *params, store_t *st, int resolve, sbuf_t *out)
{
    rules_request_t req = {.claims_json = claims,
                           .params_json = params,
                           .lookup = resolve ? store_lookup : NULL,
                           .lookup_arg = st};
    rules_buckets_t b = {0};
    rules_error_t err;
    int rc = rules_eval_request(set, version, &req, &b, &err);
    for (size_t i = 0; i < b.n; i++)
        sb_printf(out, "bucket %s priority=%d definition=%s query=%d\n", b.items[i].bucket,
                  b.items[i].priority, b.items[i].definition, b.items[i].query_index);
    for (size_t i = 0; i < b.nunresolved; i++)
        sb_printf(out, "unresolved %s query=%d key=%s\n", b.unresolved[i].definition,
                  b.unresolved[i].query_index, b.unresolved[i].key);
    if (rc) sb_printf(out, "error %d %s\n", rc, err.message);
    if (b.n == 0 && b.nunresolved == 0 && rc == 0) sb_printf(out, "(no buckets)\n");
    rules_buckets_free(&b);
}

static const char *bind_name(rules_bind_kind_t k)
{
    switch (k) {
    case RULES_BIND_NEW_ROW_JSONB:
        return "NEW_ROW_JSONB";
    case RULES_BIND_OLD_ROW_JSONB:
        return "OLD_ROW_JSONB";
    case RULES_BIND_USER_ID:
        return "USER_ID";
    case RULES_BIND_JWT_JSONB:
        return "JWT_JSONB";
    case RULES_BIND_PARAMS_JSONB:
        return "PARAMS_JSONB";
    }
    return "?";
}

static void print_stmt(sbuf_t *out, const char *what, const rules_pg_stmt_t *s)
{
    if (!s->sql) return;
    sb_printf(out, "  %s @%d:%d: %s\n   binds:", what, s->line, s->col, s->sql);
    for (int i = 0; i < s->nbinds; i++)
        sb_printf(out, " $%d=%s", i + 1, bind_name(s->binds[i]));
    sb_printf(out, "\n");
}

static void run_case(const char *name, sbuf_t *out)
{
    char path[512], fname[300];
    snprintf(path, sizeof path, "%s/cases/%s.yaml", golden_dir(), name);
    snprintf(fname, sizeof fname, "%s.yaml", name);
    size_t len;
    char *text = slurp(path, &len);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    rules_set_t *set = NULL;
    rules_diags_t d;
    rules_compile(text, len, fname, &set, &d);
    char buf[1200];
    for (size_t i = 0; i < d.n; i++)
        sb_printf(out, "%s\n", rules_diag_format(&d, i, buf, sizeof buf));
    rules_diags_free(&d);
    free(text);
    if (!set) return;
    snprintf(path, sizeof path, "%s/cases/%s.in", golden_dir(), name);
    char *in = slurp(path, NULL);
    ck_assert_msg(in != NULL, "cannot read %s", path);
    char version[64] = "";
    int has_version = 0;
    char *params = NULL;
    store_t st = {0};
    char *save = NULL;
    for (char *line = strtok_r(in, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) continue;
        sb_printf(out, "> %s\n", line);
        char *arg = strchr(line, ' ');
        arg = arg ? arg + 1 : line + strlen(line);
        if (strncmp(line, "version ", 8) == 0) {
            has_version = strcmp(arg, "-") != 0;
            snprintf(version, sizeof version, "%s", arg);
        } else if (strncmp(line, "row ", 4) == 0) {
            cmd_row(set, has_version ? version : NULL, arg, &st, out);
        } else if (strncmp(line, "params ", 7) == 0) {
            free(params);
            params = strdup(arg);
        } else if (strncmp(line, "request ", 8) == 0) {
            cmd_request(set, has_version ? version : NULL, arg, params, &st, 1, out);
        } else if (strncmp(line, "request-unresolved ", 19) == 0) {
            cmd_request(set, has_version ? version : NULL, arg, params, &st, 0, out);
        } else if (strcmp(line, "clear") == 0) {
            for (size_t i = 0; i < st.n; i++) {
                free(st.keys[i]);
                free(st.params[i]);
            }
            st.n = 0;
        } else if (strncmp(line, "checksum put ", 13) == 0) {
            char ty[128], id[128];
            int used = 0;
            ck_assert(sscanf(line + 13, "%127s %127s %n", ty, id, &used) == 2);
            const char *data = line + 13 + used;
            sb_printf(out, "%u\n", rules_checksum_put(ty, id, data, strlen(data)));
        } else if (strncmp(line, "checksum delete ", 16) == 0) {
            sb_printf(out, "%u\n", rules_checksum_delete(line + 16));
        } else if (strcmp(line, "tables") == 0) {
            for (size_t i = 0; i < rules_table_count(set); i++) {
                const rules_table_t *t = rules_table_at(set, i);
                sb_printf(out, "table %s.%s uses=%s%s%s\n", t->schema, t->name,
                          t->uses & RULES_USE_DATA ? "data," : "",
                          t->uses & RULES_USE_LOOKUP ? "lookup," : "",
                          t->uses & RULES_USE_WRITE ? "write," : "");
            }
        } else if (strcmp(line, "writes") == 0) {
            for (size_t i = 0; i < rules_write_count(set); i++) {
                const rules_write_rule_t *w = rules_write_at(set, i);
                sb_printf(out, "write %s.%s ops=%s%s%s lww=%s columns:", w->schema, w->table,
                          w->operations & RULES_OP_INSERT ? "i" : "",
                          w->operations & RULES_OP_UPDATE ? "u" : "",
                          w->operations & RULES_OP_DELETE ? "d" : "",
                          w->lww_column ? w->lww_column : "-");
                for (size_t c = 0; c < w->ncolumns; c++)
                    sb_printf(out, " %s", w->columns[c]);
                sb_printf(out, "\n");
                print_stmt(out, "check", &w->check);
                print_stmt(out, "check_old", &w->check_old);
            }
            for (size_t i = 0; i < rules_constraint_count(set); i++) {
                const rules_constraint_t *c = rules_constraint_at(set, i);
                sb_printf(out, "constraint %s on %s.%s message=\"%s\"\n", c->name, c->schema,
                          c->table, c->message);
                print_stmt(out, "query", &c->stmt);
            }
        } else {
            ck_abort_msg("%s: unknown command: %s", path, line);
        }
    }
    for (size_t i = 0; i < st.n; i++) {
        free(st.keys[i]);
        free(st.params[i]);
    }
    free(st.keys);
    free(st.params);
    free(params);
    free(in);
    rules_unref(set);
}

START_TEST(test_rules_eval_golden)
{
    const char *name = case_names[_i];
    sbuf_t out = {0};
    sb_printf(&out, "%s", "");
    run_case(name, &out);
    char path[512];
    snprintf(path, sizeof path, "%s/cases/%s.out", golden_dir(), name);
    if (getenv("RULES_GOLDEN_UPDATE")) {
        FILE *f = fopen(path, "w");
        ck_assert(f != NULL);
        fputs(out.p, f);
        fclose(f);
    } else {
        char *want = slurp(path, NULL);
        ck_assert_msg(want != NULL, "cannot read %s", path);
        if (strcmp(want, out.p) != 0) {
            /* show the first differing line */
            const char *a = want, *b = out.p;
            int line = 1;
            while (*a && *a == *b) {
                if (*a == '\n') line++;
                a++;
                b++;
            }
            const char *ae = strchr(a, '\n'), *be = strchr(b, '\n');
            ck_abort_msg("%s differs at line %d\n--- want: %.*s\n--- got:  %.*s", path, line,
                         (int)(ae ? ae - a : (long)strlen(a)), a,
                         (int)(be ? be - b : (long)strlen(b)), b);
        }
        free(want);
    }
    free(out.p);
}
END_TEST

/* ---- direct tests --------------------------------------------------------------------- */

START_TEST(test_rules_checksum_vectors)
{
    const char *a = "{\"id\":\"a\",\"description\":\"Test 1\"}";
    const char *b = "{\"id\":\"b\",\"description\":\"Test 2\"}";
    const char *l = "{\"id\":\"l1\",\"name\":\"Groceries\",\"owner_id\":\"u1\"}";
    ck_assert_uint_eq(rules_checksum_put("test", "a", a, strlen(a)), 2582164875u);
    ck_assert_int_eq((int32_t)rules_checksum_put("test", "a", a, strlen(a)), -1712802421);
    ck_assert_uint_eq(rules_checksum_put("test", "b", b, strlen(b)), 3003552978u);
    ck_assert_uint_eq(rules_checksum_put("lists", "l1", l, strlen(l)), 1551088854u);
    ck_assert_uint_eq(rules_checksum_delete("16384/l1"), 17610313u);
    ck_assert_uint_eq((uint32_t)(rules_checksum_put("lists", "l1", l, strlen(l)) +
                                 rules_checksum_delete("16384/l1")),
                      1568699167u);
    ck_assert_uint_eq((uint32_t)(2582164875u + 3003552978u), 1290750557u);
}
END_TEST

static const char *example_a = "bucket_definitions:\n"
                               "  global:\n"
                               "    data:\n"
                               "      - SELECT id, name FROM categories\n"
                               "  user_lists:\n"
                               "    parameters: SELECT request.user_id() AS user_id\n"
                               "    data:\n"
                               "      - SELECT * FROM lists WHERE owner_id = bucket.user_id\n";

START_TEST(test_rules_compile_refcount)
{
    rules_set_t *set = NULL;
    ck_assert_int_eq(rules_compile(example_a, strlen(example_a), "a.yaml", &set, NULL), 0);
    ck_assert_ptr_nonnull(set);
    ck_assert_ptr_eq(rules_ref(set), set);
    rules_unref(set);
    ck_assert_int_eq(rules_edition(set), 1);
    ck_assert_uint_eq(rules_definition_count(set), 2);
    ck_assert_str_eq(rules_definition_name(set, 1), "user_lists");
    rules_unref(set);
    rules_unref(NULL);
}
END_TEST

START_TEST(test_rules_compile_file_missing)
{
    rules_set_t *set = (rules_set_t *)1;
    rules_diags_t d;
    ck_assert_int_eq(rules_compile_file("/nonexistent/rules.yaml", &set, &d), RULES_EIO);
    ck_assert_ptr_null(set);
    ck_assert_uint_eq(d.nerrors, 1);
    char buf[512];
    ck_assert_str_eq(rules_diag_format(&d, 0, buf, sizeof buf),
                     "/nonexistent/rules.yaml: could not open file: No such file or directory");
    rules_diags_free(&d);
}
END_TEST

START_TEST(test_rules_eval_request_bad_claims)
{
    rules_set_t *set = NULL;
    ck_assert_int_eq(rules_compile(example_a, strlen(example_a), "a.yaml", &set, NULL), 0);
    rules_request_t req = {.claims_json = "[1]"};
    rules_buckets_t b = {0};
    rules_error_t err;
    ck_assert_int_eq(rules_eval_request(set, "1", &req, &b, &err), RULES_EINVAL);
    ck_assert_str_eq(err.message, "token claims are not a JSON object");
    req.claims_json = "{\"sub\":\"u1\"}";
    req.params_json = "[]";
    ck_assert_int_eq(rules_eval_request(set, "1", &req, &b, &err), RULES_EINVAL);
    ck_assert_str_eq(err.message, "client parameters are not a JSON object");
    rules_buckets_free(&b);
    rules_unref(set);
}
END_TEST

START_TEST(test_rules_eval_request_limit)
{
    const char *y = "bucket_definitions:\n"
                    "  many:\n"
                    "    parameters: SELECT json_each.value AS v FROM json_each(request.jwt() -> "
                    "'xs')\n"
                    "    data:\n"
                    "      - SELECT id FROM t WHERE v = bucket.v\n";
    rules_set_t *set = NULL;
    ck_assert_int_eq(rules_compile(y, strlen(y), "l.yaml", &set, NULL), 0);
    rules_request_t req = {.claims_json = "{\"sub\":\"u\",\"xs\":[1,2,3,4]}", .max_buckets = 3};
    rules_buckets_t b = {0};
    rules_error_t err;
    ck_assert_int_eq(rules_eval_request(set, NULL, &req, &b, &err), RULES_ELIMIT);
    ck_assert_str_eq(
        err.message,
        "too many buckets: more than 3 for one request (bucket definition or stream \"many\")");
    rules_buckets_free(&b);
    rules_unref(set);
}
END_TEST

/* concurrent readers of one set get identical answers */
typedef struct thr {
    rules_set_t *set;
    int bad;
} thr_t;

static void *thr_main(void *arg)
{
    thr_t *t = arg;
    const char *names[] = {"id", "name", "owner_id"};
    uint32_t oids[] = {25, 25, 25};
    for (int i = 0; i < 2000; i++) {
        char id[32];
        snprintf(id, sizeof id, "l%d", i);
        const char *vals[] = {id, "x", "u1"};
        rules_row_t row = {NULL, "lists", 3, names, oids, vals, NULL};
        rules_ops_t ops = {0};
        if (rules_eval_row(t->set, "7", &row, &ops, NULL) != 0 || ops.n != 1 ||
            strcmp(ops.items[0].bucket, "7#user_lists[\"u1\"]") != 0 ||
            strcmp(ops.items[0].object_id, id) != 0)
            t->bad++;
        rules_ops_free(&ops);
    }
    return NULL;
}

START_TEST(test_rules_eval_row_threads)
{
    rules_set_t *set = NULL;
    ck_assert_int_eq(rules_compile(example_a, strlen(example_a), "a.yaml", &set, NULL), 0);
    pthread_t th[4];
    thr_t t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (thr_t){rules_ref(set), 0};
        pthread_create(&th[i], NULL, thr_main, &t[i]);
    }
    rules_unref(set);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(t[i].bad, 0);
        rules_unref(t[i].set);
    }
}
END_TEST

static Suite *rules_suite(void)
{
    Suite *s = suite_create("rules");
    TCase *tc = tcase_create("api");
    tcase_add_test(tc, test_rules_checksum_vectors);
    tcase_add_test(tc, test_rules_compile_refcount);
    tcase_add_test(tc, test_rules_compile_file_missing);
    tcase_add_test(tc, test_rules_eval_request_bad_claims);
    tcase_add_test(tc, test_rules_eval_request_limit);
    tcase_add_test(tc, test_rules_eval_row_threads);
    suite_add_tcase(s, tc);
    nerror_names = list_names("errors", ".yaml", &error_names);
    ncase_names = list_names("cases", ".yaml", &case_names);
    TCase *ge = tcase_create("golden_errors");
    tcase_add_loop_test(ge, test_rules_compile_errors_golden, 0, nerror_names);
    suite_add_tcase(s, ge);
    TCase *gc = tcase_create("golden_cases");
    tcase_add_loop_test(gc, test_rules_eval_golden, 0, ncase_names);
    suite_add_tcase(s, gc);
    return s;
}

int main(void)
{
    Suite *s = rules_suite();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (nerror_names + ncase_names < 2) {
        fprintf(stderr, "test_rules: golden files not found under %s\n", golden_dir());
        failed++;
    }
    for (int i = 0; i < nerror_names; i++)
        free(error_names[i]);
    for (int i = 0; i < ncase_names; i++)
        free(case_names[i]);
    free(error_names);
    free(case_names);
    return failed ? 1 : 0;
}
