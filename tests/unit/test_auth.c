/* test_auth.c -- unit tests of the auth library (auth/), one Check suite
 *
 * Tokens are made by an independent signer, Node.js crypto (tests/unit/auth/sign.js), and key
 * pairs by the openssl command line (tests/unit/auth/keys.sh), both at test time in a temporary
 * folder, so a bug shared by our signer and our verifier cannot hide. JWKS documents are written
 * by tests/unit/auth/jwks.js and, for the URL cases, served by a small HTTP server thread on
 * 127.0.0.1 inside the test. Every rejection asserts the exact stable error code, and that the
 * message does not repeat the token.
 *
 * Run from the repository root (the helpers are found at tests/unit/auth/).
 */
#include "auth/auth.h"
#include "http/gw_auth.h"
#include "config/gw_config.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HELPERS "tests/unit/auth"
#define SECRET  "unit-test-secret-unit-test-secret-0123"
#define ISSUER  "https://issuer.test"

static char g_dir[256]; /* temporary folder with keys and JWKS files */

/* ---- helpers: running the independent signer ---- */

/* Run argv, return its stdout (malloc'd, trailing newline removed) or NULL on failure. */
static char *run_capture(char *const argv[])
{
    int fd[2];
    if (pipe(fd) != 0) return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    ssize_t n;
    while ((n = read(fd[0], out + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 2) out = realloc(out, cap *= 2);
    }
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(out);
        return NULL;
    }
    while (len > 0 && out[len - 1] == '\n')
        len--;
    out[len] = '\0';
    return out;
}

static const char *path_of(const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", g_dir, name);
    return buf;
}

/* key: a private key file name in g_dir, "text:SECRET", "file:NAME" (HMAC over that file's
 * bytes), or "-". */
static char *mint(const char *alg, const char *key, const char *header, const char *payload)
{
    char keyarg[512];
    if (strncmp(key, "text:", 5) == 0 || strcmp(key, "-") == 0)
        snprintf(keyarg, sizeof(keyarg), "%s", key);
    else if (strncmp(key, "file:", 5) == 0)
        snprintf(keyarg, sizeof(keyarg), "file:%s/%s", g_dir, key + 5);
    else
        snprintf(keyarg, sizeof(keyarg), "%s/%s", g_dir, key);
    char *argv[] = {"node",         HELPERS "/sign.js", (char *)alg, keyarg,
                    (char *)header, (char *)payload,    NULL};
    char *tok = run_capture(argv);
    ck_assert_msg(tok != NULL, "sign.js failed for %s", alg);
    return tok;
}

static long long now_s(void)
{
    return (long long)time(NULL);
}

/* A payload with the usual good claims; extra is appended inside the object (",\"k\":v"). */
static char *claims(long long iat, long long exp, const char *extra)
{
    static char bufs[32][2048]; /* rotating, so a table of cases can hold several at once */
    static int next;
    char *buf = bufs[next++ % 32];
    snprintf(buf, sizeof(bufs[0]),
             "{\"sub\":\"user-1\",\"iat\":%lld,\"exp\":%lld,\"aud\":\"ferry\",\"iss\":\"" ISSUER
             "\"%s}",
             iat, exp, extra ? extra : "");
    return buf;
}

static char *good_claims(void)
{
    return claims(now_s(), now_s() + 3600, NULL);
}

/* Write a JWKS with specs "KID=PUBFILE[:ALG]" (file names in g_dir) to g_dir/name. */
static void write_jwks(const char *name, const char *s1, const char *s2)
{
    char out[300], a1[400], a2[400];
    path_of(name, out, sizeof(out));
    char *argv[6] = {"node", HELPERS "/jwks.js", out, NULL, NULL, NULL};
    int i = 3;
    if (s1) {
        const char *eq = strchr(s1, '=');
        snprintf(a1, sizeof(a1), "%.*s=%s/%s", (int)(eq - s1), s1, g_dir, eq + 1);
        argv[i++] = a1;
    }
    if (s2) {
        const char *eq = strchr(s2, '=');
        snprintf(a2, sizeof(a2), "%.*s=%s/%s", (int)(eq - s2), s2, g_dir, eq + 1);
        argv[i++] = a2;
    }
    char *r = run_capture(argv);
    ck_assert_msg(r != NULL, "jwks.js failed");
    free(r);
}

static void write_file(const char *name, const char *text)
{
    char p[300];
    FILE *f = fopen(path_of(name, p, sizeof(p)), "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static long long g_fake_now;
static long long fake_now(void)
{
    return g_fake_now;
}

/* ---- the standard context ---- */

static const char *const g_aud[] = {"ferry", "other-app"};
static char p_rs[300], p_es[300], p_ed[300];

static auth_opts_t std_opts(void)
{
    auth_opts_t o = {0};
    o.audience = g_aud;
    o.n_audience = 2;
    o.issuer = ISSUER;
    o.leeway = 60;
    o.min_kid_refresh_gap = -1;
    return o;
}

static auth_ctx_t *std_ctx(long cache_entries)
{
    auth_key_spec_t keys[] = {
        {.kid = "hs", .alg = "HS256", .secret = SECRET},
        {.kid = "rs", .alg = "RS256", .pem_file = path_of("rsa.pub.pem", p_rs, sizeof(p_rs))},
        {.kid = "es", .alg = "ES256", .pem_file = path_of("ec.pub.pem", p_es, sizeof(p_es))},
        {.kid = "ed", .alg = "EdDSA", .pem_file = path_of("ed.pub.pem", p_ed, sizeof(p_ed))},
    };
    auth_opts_t o = std_opts();
    o.cache_entries = cache_entries;
    auth_ctx_t *ctx;
    auth_err_t err;
    int rc = auth_ctx_create(keys, 4, &o, &ctx, &err);
    ck_assert_msg(rc == 0, "create: %s", err.message);
    return ctx;
}

/* Verify tok and assert the code; on failure also that the message does not echo the token. */
static void expect_code_at(auth_ctx_t *ctx, const char *tok, size_t len, int want, int line)
{
    auth_token_t *t = (auth_token_t *)1;
    auth_err_t err;
    int rc = auth_verify(ctx, tok, len, &t, &err);
    ck_assert_msg(rc == want, "line %d: want %s got %s (%s)", line, auth_err_code_str(want),
                  auth_err_code_str(rc), rc ? err.message : "");
    if (rc == 0) {
        ck_assert_ptr_nonnull(t);
        auth_token_release(t);
        return;
    }
    ck_assert_ptr_null(t);
    ck_assert_int_eq(err.code, want);
    ck_assert_msg(err.message[0] != '\0', "empty message");
    ck_assert_msg(err.message[strlen(err.message) - 1] != '.', "message ends with a period");
    /* no 12-byte window of the token appears in the message or the detail */
    for (size_t i = 0; len >= 12 && i + 12 <= len; i += 4) {
        char win[13];
        memcpy(win, tok + i, 12);
        win[12] = '\0';
        ck_assert_msg(strstr(err.message, win) == NULL && strstr(err.detail, win) == NULL,
                      "message echoes the token: %s", err.message);
    }
}
#define expect_code(ctx, tok, want) expect_code_at(ctx, tok, strlen(tok), want, __LINE__)

static auth_token_t *verify_ok(auth_ctx_t *ctx, const char *tok)
{
    auth_token_t *t = NULL;
    auth_err_t err;
    int rc = auth_verify(ctx, tok, strlen(tok), &t, &err);
    ck_assert_msg(rc == 0, "want ok got %s (%s)", auth_err_code_str(rc), err.message);
    return t;
}

/* ---- valid tokens ---- */

START_TEST(test_auth_verify_valid_hs256)
{
    auth_ctx_t *ctx = std_ctx(0);
    char *tok = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"hs\"}",
                     claims(now_s(), now_s() + 600, ",\"parameters\":{\"team\":\"t1\"}"));
    auth_token_t *t = verify_ok(ctx, tok);
    ck_assert_str_eq(t->sub, "user-1");
    ck_assert_str_eq(t->kid, "hs");
    ck_assert_str_eq(t->alg, "HS256");
    ck_assert_ptr_nonnull(t->parameters);
    ck_assert_str_eq(json_string_value(json_object_get(t->parameters, "team")), "t1");
    ck_assert_int_eq(t->exp - t->iat, 600);
    auth_token_release(t);
    free(tok);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_verify_valid_public_keys)
{
    auth_ctx_t *ctx = std_ctx(0);
    struct {
        const char *alg, *key, *kid;
    } cases[] = {{"RS256", "rsa.pem", "rs"}, {"ES256", "ec.pem", "es"}, {"EdDSA", "ed.pem", "ed"}};
    for (size_t i = 0; i < 3; i++) {
        char hdr[128];
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"kid\":\"%s\"}", cases[i].alg, cases[i].kid);
        char *tok = mint(cases[i].alg, cases[i].key, hdr, good_claims());
        auth_token_t *t = verify_ok(ctx, tok);
        ck_assert_str_eq(t->kid, cases[i].kid);
        ck_assert_str_eq(t->alg, cases[i].alg);
        ck_assert_ptr_null(t->parameters);
        auth_token_release(t);
        /* without a kid, the key is found by alg */
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\"}", cases[i].alg);
        free(tok);
        tok = mint(cases[i].alg, cases[i].key, hdr, good_claims());
        t = verify_ok(ctx, tok);
        ck_assert_str_eq(t->kid, cases[i].kid);
        auth_token_release(t);
        free(tok);
    }
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- the libjwt holes ---- */

START_TEST(test_auth_verify_alg_none_rejected)
{
    auth_ctx_t *ctx = std_ctx(0);
    char *t1 = mint("none", "-", "{\"alg\":\"none\"}", good_claims());
    expect_code(ctx, t1, AUTH_EALG); /* no signature at all */
    char *t2 = mint("HS256", "text:" SECRET, "{\"alg\":\"none\",\"kid\":\"hs\"}", good_claims());
    expect_code(ctx, t2, AUTH_EALG); /* with a (valid HMAC) signature */
    char *t3 = mint("none", "-", "{\"alg\":\"NONE\",\"kid\":\"rs\"}", good_claims());
    expect_code(ctx, t3, AUTH_EALG);
    char *t4 = mint("HS256", "text:" SECRET, "{\"alg\":\"hs256\",\"kid\":\"hs\"}", good_claims());
    expect_code(ctx, t4, AUTH_EALG); /* libjwt would take lowercase */
    free(t1);
    free(t2);
    free(t3);
    free(t4);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_verify_hmac_with_public_key_rejected)
{
    auth_ctx_t *ctx = std_ctx(0);
    /* HS256 keyed with the RSA public key's PEM text, naming the RSA key */
    char *t1 =
        mint("HS256", "file:rsa.pub.pem", "{\"alg\":\"HS256\",\"kid\":\"rs\"}", good_claims());
    expect_code(ctx, t1, AUTH_EALG);
    /* no kid: only the HMAC key is tried, and the signature is not its */
    char *t2 = mint("HS256", "file:rsa.pub.pem", "{\"alg\":\"HS256\"}", good_claims());
    expect_code(ctx, t2, AUTH_EBADSIG);
    free(t1);
    free(t2);
    auth_ctx_destroy(ctx);

    /* a context with only the RSA key: no key accepts HS256 at all */
    auth_key_spec_t k = {.kid = "rs", .alg = "RS256", .pem_file = p_rs};
    auth_opts_t o = std_opts();
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(&k, 1, &o, &ctx, &err), 0);
    t2 = mint("HS256", "file:rsa.pub.pem", "{\"alg\":\"HS256\"}", good_claims());
    expect_code(ctx, t2, AUTH_EALG);
    free(t2);
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- signatures ---- */

START_TEST(test_auth_verify_bad_signatures)
{
    auth_ctx_t *ctx = std_ctx(0);
    /* tampered payload: sub changed after signing */
    char *tok = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"rs\"}", good_claims());
    char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');
    char *other = mint("RS256", "rsa2.pem", "{\"alg\":\"RS256\",\"kid\":\"rs\"}",
                       claims(now_s(), now_s() + 3600, ",\"admin\":true"));
    char *o1 = strchr(other, '.'), *o2 = strchr(o1 + 1, '.');
    char forged[8192];
    snprintf(forged, sizeof(forged), "%.*s%.*s%s", (int)(d1 - tok), tok, (int)(o2 - o1), o1, d2);
    expect_code(ctx, forged, AUTH_EBADSIG);
    /* signed by another RSA key */
    expect_code(ctx, other, AUTH_EBADSIG);
    /* wrong HMAC secret */
    char *t3 = mint("HS256", "text:another-secret-another-secret-0000",
                    "{\"alg\":\"HS256\",\"kid\":\"hs\"}", good_claims());
    expect_code(ctx, t3, AUTH_EBADSIG);
    /* ES256 and EdDSA with a flipped signature byte */
    char *t4 = mint("ES256", "ec.pem", "{\"alg\":\"ES256\",\"kid\":\"es\"}", good_claims());
    char *t5 = mint("EdDSA", "ed.pem", "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", good_claims());
    char *ts[] = {t4, t5};
    for (int i = 0; i < 2; i++) {
        char *last = strrchr(ts[i], '.') + 5;
        *last = *last == 'A' ? 'B' : 'A';
        expect_code(ctx, ts[i], AUTH_EBADSIG);
    }
    /* EdDSA signature with the wrong length (3 bytes) */
    char *t6 = mint("EdDSA", "ed.pem", "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", good_claims());
    strcpy(strrchr(t6, '.') + 1, "AAAA");
    expect_code(ctx, t6, AUTH_EBADSIG);
    /* empty signature */
    char *t7 = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":\"hs\"}", good_claims());
    strrchr(t7, '.')[1] = '\0';
    expect_code(ctx, t7, AUTH_EBADSIG);
    /* ES256 token verified against the EdDSA key by kid: alg does not match that key */
    char *t8 = mint("ES256", "ec.pem", "{\"alg\":\"ES256\",\"kid\":\"ed\"}", good_claims());
    expect_code(ctx, t8, AUTH_EALG);
    free(tok);
    free(other);
    free(t3);
    free(t4);
    free(t5);
    free(t6);
    free(t7);
    free(t8);
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- claims ---- */

START_TEST(test_auth_verify_claims)
{
    auth_ctx_t *ctx = std_ctx(0);
    long long n = now_s();
    struct {
        const char *payload;
        int want;
    } cases[] = {
        {claims(n - 7200, n - 3600, NULL), AUTH_EEXPIRED},
        {claims(n - 7200, n - 30, NULL), 0}, /* within the leeway */
        {claims(n, n + 3600, ",\"nbf\":9999999999"), AUTH_ENOTYET},
        {claims(n + 600, n + 3600, NULL), AUTH_ENOTYET}, /* issued in the future */
        {claims(n, n + 86401, NULL), AUTH_ELIFETIME},
        {claims(n, n + 86400, NULL), 0},
        {claims(n, n + 3600, ",\"parameters\":[1]"), AUTH_EMALFORMED},
        {claims(n, n + 3600, ",\"parameters\":\"x\""), AUTH_EMALFORMED},
        {claims(n, n + 3600, ",\"parameters\":{}"), 0},
        {"{\"sub\":\"u\",\"iat\":-9223372036854775807,\"exp\":9223372036854775807}",
         AUTH_EMALFORMED},
        {"{\"sub\":\"u\",\"iat\":0,\"exp\":1e300}", AUTH_EMALFORMED},
        {"{\"sub\":\"u\",\"iat\":0,\"exp\":\"2030\"}", AUTH_EMALFORMED},
        {"{\"sub\":7,\"iat\":0,\"exp\":1}", AUTH_EMALFORMED},
        {"{\"iat\":1,\"exp\":2,\"aud\":\"ferry\",\"iss\":\"" ISSUER "\"}", AUTH_EMISSING},
        {NULL, 0},
    };
    char buf[3][512];
    snprintf(buf[0], 512, "{\"sub\":\"u\",\"exp\":%lld,\"aud\":\"ferry\",\"iss\":\"" ISSUER "\"}",
             n + 60);
    snprintf(buf[1], 512, "{\"sub\":\"u\",\"iat\":%lld,\"aud\":\"ferry\",\"iss\":\"" ISSUER "\"}",
             n);
    snprintf(buf[2], 512,
             "{\"sub\":\"u\",\"iat\":%lld,\"exp\":%lld,\"aud\":\"ferry\",\"iss\":\"" ISSUER "\"}",
             n, n + 60);
    for (size_t i = 0; cases[i].payload != NULL; i++) {
        char *tok =
            mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":\"hs\"}", cases[i].payload);
        expect_code_at(ctx, tok, strlen(tok), cases[i].want, (int)(1000 + i));
        free(tok);
    }
    const char *missing[] = {buf[0], buf[1]}; /* iat missing, exp missing */
    for (int i = 0; i < 2; i++) {
        char *tok = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":\"hs\"}", missing[i]);
        expect_code(ctx, tok, AUTH_EMISSING);
        free(tok);
    }
    char *tok = mint("ES256", "ec.pem", "{\"alg\":\"ES256\"}", buf[2]);
    expect_code(ctx, tok, 0);
    free(tok);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_verify_audience_issuer)
{
    auth_ctx_t *ctx = std_ctx(0);
    long long n = now_s();
    char p[6][512];
    const char *fmt = "{\"sub\":\"u\",\"iat\":%lld,\"exp\":%lld%s}";
    snprintf(p[0], 512, fmt, n, n + 60, ",\"aud\":\"elsewhere\",\"iss\":\"" ISSUER "\"");
    snprintf(p[1], 512, fmt, n, n + 60, ",\"aud\":[\"a\",\"other-app\"],\"iss\":\"" ISSUER "\"");
    snprintf(p[2], 512, fmt, n, n + 60, ",\"aud\":[\"a\",\"b\"],\"iss\":\"" ISSUER "\"");
    snprintf(p[3], 512, fmt, n, n + 60, ",\"aud\":\"ferry\",\"iss\":\"https://evil.test\"");
    snprintf(p[4], 512, fmt, n, n + 60, ",\"iss\":\"" ISSUER "\"");
    snprintf(p[5], 512, fmt, n, n + 60, ",\"aud\":\"ferry\"");
    int want[] = {AUTH_EAUDIENCE, 0, AUTH_EAUDIENCE, AUTH_EISSUER, AUTH_EMISSING, AUTH_EMISSING};
    for (int i = 0; i < 6; i++) {
        char *tok = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"rs\"}", p[i]);
        expect_code_at(ctx, tok, strlen(tok), want[i], 2000 + i);
        free(tok);
    }
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- kids, garbage, size ---- */

START_TEST(test_auth_verify_unknown_kid)
{
    auth_ctx_t *ctx = std_ctx(0);
    char *tok = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"nope\"}", good_claims());
    auth_token_t *t;
    auth_err_t err;
    ck_assert_int_eq(auth_verify(ctx, tok, strlen(tok), &t, &err), AUTH_EUNKNOWNKID);
    ck_assert_str_eq(auth_err_code_str(err.code), "unknown_kid");
    ck_assert_msg(strstr(err.detail, "hs, rs, es, ed") != NULL, "detail: %s", err.detail);
    ck_assert_msg(strstr(err.message, "nope") == NULL, "message echoes the kid");
    free(tok);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_verify_malformed)
{
    auth_ctx_t *ctx = std_ctx(0);
    expect_code_at(ctx, "", 0, AUTH_EMALFORMED, __LINE__);
    expect_code(ctx, "garbage", AUTH_EMALFORMED);
    expect_code(ctx, "a.b", AUTH_EMALFORMED);
    expect_code(ctx, "a.b.c.d", AUTH_EMALFORMED);
    expect_code(ctx, "..", AUTH_EMALFORMED);
    expect_code(ctx, "!!!.???.***", AUTH_EMALFORMED);
    expect_code(ctx, "eyJhbGciOiJIUzI1NiJ9.e30=.abc", AUTH_EMALFORMED); /* padding */
    expect_code(ctx, "bm90IGpzb24.e30.abc", AUTH_EMALFORMED);           /* header not JSON */
    expect_code(ctx, "WzFd.e30.abc", AUTH_EMALFORMED);                  /* header an array */
    expect_code(ctx, "e30.e30.abc", AUTH_EMALFORMED);                   /* no alg */
    char *t1 = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":7}", good_claims());
    expect_code(ctx, t1, AUTH_EMALFORMED);
    char *t2 =
        mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", good_claims());
    expect_code(ctx, t2, AUTH_EMALFORMED);
    char *t3 = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"alg\":\"none\"}", good_claims());
    expect_code(ctx, t3, AUTH_EMALFORMED); /* duplicate member */
    /* payload not an object, correctly signed */
    char *t4 = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\"}", "[1,2]");
    expect_code(ctx, t4, AUTH_EMALFORMED);
    /* 1 MB token, and one byte over the limit */
    size_t big = 1 << 20;
    char *huge = malloc(big + 1);
    memset(huge, 'A', big);
    huge[big] = '\0';
    huge[100] = '.';
    huge[200] = '.';
    expect_code_at(ctx, huge, big, AUTH_EMALFORMED, __LINE__);
    expect_code_at(ctx, huge, 16385, AUTH_EMALFORMED, __LINE__);
    /* an embedded NUL */
    expect_code_at(ctx, "a.b\0.c", 6, AUTH_EMALFORMED, __LINE__);
    free(huge);
    free(t1);
    free(t2);
    free(t3);
    free(t4);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_header_token_schemes)
{
    const char *tok;
    size_t len;
    auth_err_t err;
    ck_assert_int_eq(auth_header_token("Token abc.def.ghi", 17, &tok, &len, &err), 0);
    ck_assert_int_eq((int)len, 11);
    ck_assert_int_eq(memcmp(tok, "abc.def.ghi", 11), 0);
    ck_assert_int_eq(auth_header_token("bearer  x.y.z ", 14, &tok, &len, &err), 0);
    ck_assert_int_eq((int)len, 5);
    const char *bad[] = {"",      "Basic dXNlcjpwYXNz", "Token", "Token ", "Bearer   ",
                         "x.y.z", "Tokenx.y.z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(auth_header_token(bad[i], strlen(bad[i]), &tok, &len, &err),
                         AUTH_EMALFORMED);
        ck_assert_str_eq(auth_err_code_str(err.code), "malformed");
    }
    ck_assert_int_eq(auth_header_token(NULL, 0, &tok, &len, &err), AUTH_EMALFORMED);
}
END_TEST

/* ---- configuration errors ---- */

START_TEST(test_auth_ctx_create_rejects_bad_keys)
{
    char p1[300], p2[300], p3[300];
    auth_key_spec_t bad[] = {
        {.alg = "HS256", .secret = "short"},
        {.alg = "HS512", .secret = SECRET}, /* 38 bytes < 64 */
        {.alg = "RS256", .secret = SECRET},
        {.alg = "HS256", .pem_file = path_of("rsa.pub.pem", p1, sizeof(p1))},
        {.alg = "ES256", .pem_file = p1},
        {.alg = "RS256", .pem_file = path_of("rsa.pem", p2, sizeof(p2))}, /* private key */
        {.alg = "RS256", .pem_file = path_of("rsa1024.pub.pem", p3, sizeof(p3))},
        {.alg = "ES384", .pem_file = path_of("ec.pub.pem", p3, sizeof(p3))}, /* P-256 key */
        {.alg = "none", .secret = SECRET},
        {.secret = SECRET},
        {.alg = "RS256", .pem = "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n"},
        {.alg = "RS256", .pem_file = "/nonexistent/key.pem"},
        {.alg = "HS256", .secret = SECRET, .pem = "x"},
        {.kid = "x"},
        {.jwks_file = "/nonexistent/jwks.json"},
        {.jwks_uri = "file:///etc/passwd"},
        {.alg = "HS256", .jwks_uri = "http://127.0.0.1:1/jwks"},
        {.kid = "k", .jwks_uri = "http://127.0.0.1:1/jwks"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        auth_ctx_t *ctx = (auth_ctx_t *)1;
        auth_err_t err;
        bad[i].where = "ferry.yaml:9:7";
        int rc = auth_ctx_create(&bad[i], 1, NULL, &ctx, &err);
        ck_assert_msg(rc == AUTH_EINVAL || rc == AUTH_EIO, "case %zu accepted (rc %d)", i, rc);
        ck_assert_ptr_null(ctx);
        ck_assert_msg(strncmp(err.message, "ferry.yaml:9:7: ", 16) == 0, "case %zu: %s", i,
                      err.message);
    }
    /* no keys at all; duplicate kids */
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(NULL, 0, NULL, &ctx, &err), AUTH_EINVAL);
    auth_key_spec_t dup[] = {{.kid = "a", .alg = "HS256", .secret = SECRET},
                             {.kid = "a", .alg = "RS256", .pem_file = p_rs}};
    ck_assert_int_eq(auth_ctx_create(dup, 2, NULL, &ctx, &err), AUTH_EINVAL);
    /* the good forms: base64url secret, PEM text, PKCS#1 PEM */
    auth_key_spec_t good[] = {
        {.kid = "b",
         .alg = "HS256",
         .secret_base64url = "dW5pdC10ZXN0LXNlY3JldC11bml0LXRlc3Qtc2VjcmV0LTAxMjM"},
        {.kid = "c", .alg = "ES384", .pem_file = path_of("ec384.pub.pem", p3, sizeof(p3))},
        {.jwks_uri = "http://127.0.0.1:1/jwks"}, /* unreachable now: not fatal */
        {.kid = "p1", .alg = "RS256", .pem_file = path_of("rsa.pkcs1.pem", p2, sizeof(p2))},
    };
    ck_assert_int_eq(auth_ctx_create(good, 4, NULL, &ctx, &err), 0);
    ck_assert_int_eq((int)auth_key_count(ctx), 3);
    /* the base64url secret is the same bytes as SECRET */
    char *tok = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":\"b\"}",
                     "{\"sub\":\"u\",\"iat\":1,\"exp\":2}");
    auth_token_t *t;
    ck_assert_int_eq(auth_verify(ctx, tok, strlen(tok), &t, &err), AUTH_EEXPIRED);
    free(tok);
    /* PKCS#1 RSA public key */
    tok = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"p1\"}", good_claims());
    expect_code(ctx, tok, 0);
    free(tok);
    /* ES384 (96-byte r||s) from a PEM file */
    tok = mint("ES384", "ec384.pem", "{\"alg\":\"ES384\",\"kid\":\"c\"}", good_claims());
    expect_code(ctx, tok, 0);
    tok[strlen(tok) - 3] = tok[strlen(tok) - 3] == 'A' ? 'B' : 'A';
    expect_code(ctx, tok, AUTH_EBADSIG);
    free(tok);
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- JWKS from a file ---- */

static auth_ctx_t *jwks_ctx(const char *file_or_url, int is_url, long gap)
{
    auth_key_spec_t k = {0};
    char p[300];
    if (is_url)
        k.jwks_uri = file_or_url;
    else
        k.jwks_file = path_of(file_or_url, p, sizeof(p));
    auth_opts_t o = std_opts();
    o.min_kid_refresh_gap = gap;
    o.cache_entries = 100;
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_msg(auth_ctx_create(&k, 1, &o, &ctx, &err) == 0, "create: %s", err.message);
    return ctx;
}

START_TEST(test_auth_jwks_file_rotation)
{
    write_jwks("rot.json", "k1=rsa.pub.pem", NULL);
    auth_ctx_t *ctx = jwks_ctx("rot.json", 0, 0);
    char *t1 = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"k1\"}", good_claims());
    char *t2 = mint("ES256", "ec.pem", "{\"alg\":\"ES256\",\"kid\":\"k2\"}", good_claims());
    expect_code(ctx, t1, 0);
    expect_code(ctx, t1, 0); /* from the cache */
    expect_code(ctx, t2, AUTH_EUNKNOWNKID);
    /* k2 added: accepted after an explicit refresh */
    write_jwks("rot.json", "k1=rsa.pub.pem", "k2=ec.pub.pem");
    auth_err_t err;
    ck_assert_int_eq(auth_refresh(ctx, &err), 0);
    expect_code(ctx, t2, 0);
    /* k1 removed: rejected after refresh, even though it was cached */
    write_jwks("rot.json", "k2=ec.pub.pem", NULL);
    ck_assert_int_eq(auth_refresh(ctx, &err), 0);
    expect_code(ctx, t1, AUTH_EUNKNOWNKID);
    expect_code(ctx, t2, 0);
    /* a broken document keeps the keys we have */
    write_file("rot.json", "{not json");
    ck_assert_int_eq(auth_refresh(ctx, &err), AUTH_EINVAL);
    expect_code(ctx, t2, 0);
    /* an unknown kid triggers a refresh by itself (gap 0 in this context) */
    write_jwks("rot.json", "k2=ec.pub.pem", "k3=ed.pub.pem");
    char *t3 = mint("EdDSA", "ed.pem", "{\"alg\":\"EdDSA\",\"kid\":\"k3\"}", good_claims());
    expect_code(ctx, t3, 0);
    free(t1);
    free(t2);
    free(t3);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_jwks_key_types_and_algs)
{
    /* an RSA key without alg admits RS*, never HS; an EC key with alg only that alg */
    write_jwks("types.json", "r=rsa.pub.pem", "e=ec.pub.pem:ES256");
    auth_ctx_t *ctx = jwks_ctx("types.json", 0, 0);
    char *ok1 = mint("RS512", "rsa.pem", "{\"alg\":\"RS512\",\"kid\":\"r\"}", good_claims());
    char *bad1 =
        mint("HS256", "file:rsa.pub.pem", "{\"alg\":\"HS256\",\"kid\":\"r\"}", good_claims());
    char *bad2 = mint("HS256", "file:rsa.pub.pem", "{\"alg\":\"HS256\"}", good_claims());
    char *bad3 = mint("ES384", "ec384.pem", "{\"alg\":\"ES384\",\"kid\":\"e\"}", good_claims());
    expect_code(ctx, ok1, 0);
    expect_code(ctx, bad1, AUTH_EALG);
    expect_code(ctx, bad2, AUTH_EALG);
    expect_code(ctx, bad3, AUTH_EALG);
    auth_ctx_destroy(ctx);
    /* oct keys, encryption keys and keys with an alg that does not fit are skipped */
    write_file(
        "skip.json",
        "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"o\",\"k\":\"c2VjcmV0\",\"alg\":\"HS256\"},"
        "{\"kty\":\"RSA\",\"kid\":\"x\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
        "{\"kty\":\"EC\",\"kid\":\"bad\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}]}");
    ctx = jwks_ctx("skip.json", 0, 0);
    ck_assert_int_eq((int)auth_key_count(ctx), 0);
    char *hs = mint("HS256", "text:secret", "{\"alg\":\"HS256\",\"kid\":\"o\"}", good_claims());
    expect_code(ctx, hs, AUTH_EUNKNOWNKID);
    free(ok1);
    free(bad1);
    free(bad2);
    free(bad3);
    free(hs);
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- JWKS from a URL: a small HTTP server on 127.0.0.1 ---- */

typedef struct jwks_server {
    int fd, port;
    char file[300]; /* served at any path */
    int requests;   /* atomic */
    pthread_t thread;
} jwks_server_t;

static void *serve(void *arg)
{
    jwks_server_t *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) return NULL;
        char req[4096];
        ssize_t n = read(c, req, sizeof(req)); /* one small GET; the body is not needed */
        (void)n;
        __atomic_add_fetch(&s->requests, 1, __ATOMIC_SEQ_CST);
        FILE *f = fopen(s->file, "r");
        char body[16384];
        size_t len = f ? fread(body, 1, sizeof(body), f) : 0;
        if (f) fclose(f);
        char head[256];
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: "
                          "%zu\r\nConnection: close\r\n\r\n",
                          f ? "200 OK" : "404 Not Found", len);
        if (write(c, head, (size_t)hl) < 0 || write(c, body, len) < 0) (void)0;
        close(c);
    }
}

static void server_start(jwks_server_t *s, const char *file)
{
    memset(s, 0, sizeof(*s));
    path_of(file, s->file, sizeof(s->file));
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(s->fd, 16), 0);
    socklen_t al = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->thread, NULL, serve, s);
}

static void server_stop(jwks_server_t *s)
{
    shutdown(s->fd, SHUT_RDWR);
    close(s->fd);
    pthread_join(s->thread, NULL);
}

START_TEST(test_auth_jwks_url_rotation)
{
    write_jwks("url.json", "k1=rsa.pub.pem", NULL);
    jwks_server_t srv;
    server_start(&srv, "url.json");
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/.well-known/jwks.json", srv.port);
    auth_ctx_t *ctx = jwks_ctx(url, 1, 0);
    ck_assert_int_eq(srv.requests, 1);
    char *t1 = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"k1\"}", good_claims());
    char *t2 = mint("RS256", "rsa2.pem", "{\"alg\":\"RS256\",\"kid\":\"k2\"}", good_claims());
    expect_code(ctx, t1, 0);
    /* rotation: k2 added, k1 removed; the unknown kid k2 triggers the refresh itself */
    write_jwks("url.json", "k2=rsa2.pub.pem", NULL);
    expect_code(ctx, t2, 0);
    ck_assert_int_eq(srv.requests, 2);
    expect_code(ctx, t1, AUTH_EUNKNOWNKID); /* another refresh (gap 0), k1 is gone */
    ck_assert_int_eq(srv.requests, 3);
    /* server down: the keys stay */
    auth_err_t err;
    write_file("url.json", "");
    unlink(srv.file);
    ck_assert_int_eq(auth_refresh(ctx, &err), AUTH_EIO);
    ck_assert_msg(strstr(err.message, "could not fetch JWKS") != NULL, "%s", err.message);
    expect_code(ctx, t2, 0);
    auth_ctx_destroy(ctx);
    server_stop(&srv);
    free(t1);
    free(t2);
}
END_TEST

START_TEST(test_auth_jwks_url_kid_flood_rate_limited)
{
    write_jwks("flood.json", "k1=rsa.pub.pem", NULL);
    jwks_server_t srv;
    server_start(&srv, "flood.json");
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/jwks", srv.port);
    auth_ctx_t *ctx = jwks_ctx(url, 1, 3600); /* at most one kid-triggered refresh an hour */
    char hdr[64];
    for (int i = 0; i < 50; i++) {
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"kid\":\"bogus%d\"}", i % 3);
        char *t = mint("RS256", "rsa.pem", hdr, good_claims());
        expect_code(ctx, t, AUTH_EUNKNOWNKID);
        free(t);
        if (i == 2) break; /* node is slow; a few distinct tokens, then reuse the last one below */
    }
    char *t = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"bogus\"}", good_claims());
    for (int i = 0; i < 200; i++)
        expect_code(ctx, t, AUTH_EUNKNOWNKID);
    ck_assert_int_eq(srv.requests, 2); /* the initial fetch and one kid-triggered refresh */
    free(t);
    auth_ctx_destroy(ctx);
    server_stop(&srv);
}
END_TEST

START_TEST(test_auth_jwks_url_down_at_start_retried_soon)
{
    jwks_server_t srv;
    server_start(&srv, "late.json"); /* not written yet: 404 */
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/jwks", srv.port);
    g_fake_now = now_s();
    auth_key_spec_t k = {.jwks_uri = url};
    auth_opts_t o = std_opts();
    o.now = fake_now;
    o.jwks_refresh_interval = 300;
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(&k, 1, &o, &ctx, &err), 0);
    ck_assert_int_eq((int)auth_key_count(ctx), 0);
    write_jwks("late.json", "k1=ec.pub.pem", NULL);
    char *tok = mint("ES256", "ec.pem", "{\"alg\":\"ES256\"}", good_claims());
    g_fake_now += 5;
    expect_code(ctx, tok, AUTH_EALG); /* no key yet, and no kid to trigger a refresh */
    g_fake_now += 6;                  /* 11 s after start: the never-loaded source is retried */
    expect_code(ctx, tok, 0);
    ck_assert_int_eq(srv.requests, 2);
    free(tok);
    auth_ctx_destroy(ctx);
    server_stop(&srv);
}
END_TEST

static int g_refreshes; /* atomic */
static void on_refresh(void *arg, const char *source, int rc, const auth_err_t *err, size_t n)
{
    (void)arg;
    (void)source;
    (void)err;
    (void)n;
    if (rc == 0) __atomic_add_fetch(&g_refreshes, 1, __ATOMIC_SEQ_CST);
}

START_TEST(test_auth_jwks_background_refresh)
{
    write_jwks("bg.json", "k1=rsa.pub.pem", NULL);
    jwks_server_t srv;
    server_start(&srv, "bg.json");
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/jwks", srv.port);
    auth_key_spec_t k = {.jwks_uri = url};
    auth_opts_t o = std_opts();
    o.jwks_refresh_interval = 1;
    o.background_refresh = 1;
    o.on_refresh = on_refresh;
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(&k, 1, &o, &ctx, &err), 0);
    char *t2 = mint("ES256", "ec.pem", "{\"alg\":\"ES256\",\"kid\":\"k2\"}", good_claims());
    expect_code(ctx, t2, AUTH_EUNKNOWNKID);
    write_jwks("bg.json", "k2=ec.pub.pem", NULL);
    int ok = 0;
    for (int i = 0; i < 60 && !ok; i++) { /* the thread refreshes within about a second */
        auth_token_t *t;
        ok = auth_verify(ctx, t2, strlen(t2), &t, &err) == 0;
        auth_token_release(t);
        if (!ok) usleep(100 * 1000);
    }
    ck_assert_msg(ok, "new key not picked up by the refresh thread");
    ck_assert_int_ge(g_refreshes, 2);
    auth_ctx_destroy(ctx);
    server_stop(&srv);
    free(t2);
}
END_TEST

/* ---- cache ---- */

START_TEST(test_auth_cache_hits_expire_and_bound)
{
    g_fake_now = now_s();
    auth_key_spec_t k = {.kid = "hs", .alg = "HS256", .secret = SECRET};
    auth_opts_t o = std_opts();
    o.cache_entries = 16;
    o.now = fake_now;
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(&k, 1, &o, &ctx, &err), 0);
    char *tok = mint("HS256", "text:" SECRET, "{\"alg\":\"HS256\",\"kid\":\"hs\"}",
                     claims(g_fake_now, g_fake_now + 100, NULL));
    auth_token_t *a = verify_ok(ctx, tok), *b = verify_ok(ctx, tok);
    ck_assert_ptr_eq(a, b); /* the same verified token, shared */
    unsigned long long hits, misses;
    size_t entries;
    auth_cache_stats(ctx, &hits, &misses, &entries);
    ck_assert_int_eq((int)hits, 1);
    ck_assert_int_eq((int)entries, 1);
    auth_token_release(a);
    auth_token_release(b);
    /* the entry expires with the token (exp + leeway) */
    g_fake_now += 100 + 61;
    expect_code(ctx, tok, AUTH_EEXPIRED);
    /* a tampered copy is not a hit */
    g_fake_now -= 161;
    char *flip = &tok[strlen(tok) - 2];
    *flip = *flip == 'A' ? 'B' : 'A';
    expect_code(ctx, tok, AUTH_EBADSIG);
    /* bounded: 40 distinct tokens never make more than 16 entries (tokens from our signer;
     * the signer's independence is covered above, here only the cache is under test) */
    for (int i = 0; i < 40; i++) {
        json_t *c =
            json_pack("{s:s, s:I, s:I, s:s, s:s}", "sub", "u", "iat", (json_int_t)g_fake_now, "exp",
                      (json_int_t)(g_fake_now + 1000 + i), "aud", "ferry", "iss", ISSUER);
        char *t;
        ck_assert_int_eq(auth_sign_hmac(ctx, "hs", c, &t, &err), 0);
        expect_code(ctx, t, 0);
        free(t);
        json_decref(c);
    }
    auth_cache_stats(ctx, &hits, &misses, &entries);
    ck_assert_int_le((int)entries, 16);
    ck_assert_int_ge((int)entries, 8);
    free(tok);
    auth_ctx_destroy(ctx);
}
END_TEST

/* ---- signing for `ferry token` ---- */

START_TEST(test_auth_sign_hmac_roundtrip)
{
    auth_key_spec_t keys[] = {
        {.kid = "rs", .alg = "RS256", .pem_file = p_rs},
        {.kid = "dev", .alg = "HS384", .secret = SECRET "-longer-for-hs384-0123"}};
    auth_opts_t o = std_opts();
    auth_ctx_t *ctx;
    auth_err_t err;
    ck_assert_int_eq(auth_ctx_create(keys, 2, &o, &ctx, &err), 0);
    json_t *c = json_pack("{s:s, s:I, s:I, s:s, s:s, s:{s:[s]}}", "sub", "u9", "iat",
                          (json_int_t)now_s(), "exp", (json_int_t)now_s() + 60, "aud", "ferry",
                          "iss", ISSUER, "parameters", "regions", "eu");
    char *tok;
    ck_assert_int_eq(auth_sign_hmac(ctx, NULL, c, &tok, &err), 0);
    auth_token_t *t = verify_ok(ctx, tok);
    ck_assert_str_eq(t->sub, "u9");
    ck_assert_str_eq(t->kid, "dev");
    ck_assert_str_eq(t->alg, "HS384");
    auth_token_release(t);
    free(tok);
    ck_assert_int_eq(auth_sign_hmac(ctx, "rs", c, &tok, &err), AUTH_EINVAL);
    ck_assert_int_eq(auth_sign_hmac(ctx, "nope", c, &tok, &err), AUTH_EINVAL);
    json_decref(c);
    auth_ctx_destroy(ctx);
}
END_TEST

START_TEST(test_auth_err_code_strings_stable)
{
    ck_assert_str_eq(auth_err_code_str(AUTH_EEXPIRED), "expired");
    ck_assert_str_eq(auth_err_code_str(AUTH_ENOTYET), "not_yet_valid");
    ck_assert_str_eq(auth_err_code_str(AUTH_EBADSIG), "bad_signature");
    ck_assert_str_eq(auth_err_code_str(AUTH_EUNKNOWNKID), "unknown_kid");
    ck_assert_str_eq(auth_err_code_str(AUTH_EALG), "alg_mismatch");
    ck_assert_str_eq(auth_err_code_str(AUTH_EAUDIENCE), "bad_audience");
    ck_assert_str_eq(auth_err_code_str(AUTH_EISSUER), "bad_issuer");
    ck_assert_str_eq(auth_err_code_str(AUTH_ELIFETIME), "lifetime_too_long");
    ck_assert_str_eq(auth_err_code_str(AUTH_EMALFORMED), "malformed");
    ck_assert_str_eq(auth_err_code_str(AUTH_EMISSING), "missing_claim");
    ck_assert_str_eq(auth_err_code_str(12345), "unknown_error");
}
END_TEST

/* ---- gateway glue (gateway/http/gw_auth.c) ---- */

START_TEST(test_auth_gw_create_and_verify_header)
{
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "postgres:\n  uri: \"postgresql://x@127.0.0.1:1/x\"\n"
             "auth:\n  audience: [ferry]\n  issuer: \"" ISSUER "\"\n  leeway: 0\n  keys:\n"
             "    - { kid: hs, alg: HS256, secret: \"" SECRET "\" }\n"
             "    - { kid: rs, alg: RS256, pem_file: rsa.pub.pem }\n");
    gw_config_t cfg;
    gw_err_t gerr;
    ck_assert_msg(gw_config_load_string(&cfg, yaml, strlen(yaml), "ferry.yaml", g_dir, &gerr) == 0,
                  "%s", gerr.message);
    auth_ctx_t *ctx;
    ck_assert_msg(gw_auth_create(&cfg, &ctx, &gerr) == 0, "%s", gerr.message);
    char *tok = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"rs\"}", good_claims());
    char hdr[4096];
    snprintf(hdr, sizeof(hdr), "Token %s", tok);
    auth_token_t *t;
    const char *code = "x";
    ck_assert_int_eq(gw_auth_verify_header(ctx, hdr, strlen(hdr), &t, &code, &gerr, NULL), 0);
    ck_assert_str_eq(t->sub, "user-1");
    auth_token_release(t);
    /* the leeway comes from the config: 0 here */
    char *old = mint("RS256", "rsa.pem", "{\"alg\":\"RS256\",\"kid\":\"rs\"}",
                     claims(now_s() - 100, now_s() - 5, NULL));
    snprintf(hdr, sizeof(hdr), "Bearer %s", old);
    ck_assert_int_eq(gw_auth_verify_header(ctx, hdr, strlen(hdr), &t, &code, &gerr, "conn=t1"),
                     GW_EAUTH);
    ck_assert_str_eq(code, "expired");
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(gerr.message, "expired") != NULL, "%s", gerr.message);
    ck_assert_int_eq(gw_auth_verify_header(ctx, NULL, 0, &t, &code, &gerr, NULL), GW_EAUTH);
    ck_assert_str_eq(code, "malformed");
    snprintf(hdr, sizeof(hdr), "Basic %s", tok);
    ck_assert_int_eq(gw_auth_verify_header(ctx, hdr, strlen(hdr), &t, &code, &gerr, NULL),
                     GW_EAUTH);
    ck_assert_str_eq(code, "malformed");
    gw_auth_destroy(ctx);
    gw_config_free(&cfg);
    free(tok);
    free(old);

    /* a bad key points at its entry */
    snprintf(yaml, sizeof(yaml),
             "postgres:\n  uri: \"postgresql://x@127.0.0.1:1/x\"\n"
             "auth:\n  keys:\n    - { kid: hs, alg: HS256, secret: \"" SECRET "\" }\n"
             "    - { kid: x, alg: ES256, pem_file: rsa.pub.pem }\n");
    ck_assert_int_eq(gw_config_load_string(&cfg, yaml, strlen(yaml), "ferry.yaml", g_dir, &gerr),
                     0);
    ck_assert_int_eq(gw_auth_create(&cfg, &ctx, &gerr), GW_ECONFIG);
    ck_assert_msg(strncmp(gerr.message, "ferry.yaml:6:7: alg \"ES256\" does not fit", 40) == 0,
                  "%s", gerr.message);
    gw_config_free(&cfg);
}
END_TEST

/* ---- concurrency: verifiers while the key set is swapped ---- */

typedef struct race {
    auth_ctx_t *ctx;
    char *tok;
    int stop; /* atomic */
    int bad;  /* atomic: unexpected codes */
} race_t;

static void *race_verify(void *arg)
{
    race_t *r = arg;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        auth_token_t *t;
        auth_err_t err;
        int rc = auth_verify(r->ctx, r->tok, strlen(r->tok), &t, &err);
        if (rc == 0) {
            if (strcmp(t->sub, "user-1") != 0) __atomic_add_fetch(&r->bad, 1, __ATOMIC_RELAXED);
            auth_token_release(t);
        } else if (rc != AUTH_EUNKNOWNKID) {
            __atomic_add_fetch(&r->bad, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

START_TEST(test_auth_refresh_concurrent_with_verify)
{
    write_jwks("race-a.json", "k1=ec.pub.pem", NULL);
    write_jwks("race-b.json", "k2=ed.pub.pem", NULL);
    char src[300], dst[300];
    write_jwks("race.json", "k1=ec.pub.pem", NULL);
    auth_ctx_t *ctx = jwks_ctx("race.json", 0, 3600);
    race_t r = {.ctx = ctx};
    r.tok = mint("ES256", "ec.pem", "{\"alg\":\"ES256\",\"kid\":\"k1\"}", good_claims());
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, race_verify, &r);
    for (int i = 0; i < 40; i++) {
        path_of(i % 2 ? "race-a.json" : "race-b.json", src, sizeof(src));
        path_of("race.json", dst, sizeof(dst));
        FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
        char buf[8192];
        size_t n = fread(buf, 1, sizeof(buf), in);
        fwrite(buf, 1, n, out);
        fclose(in);
        fclose(out);
        auth_err_t err;
        ck_assert_int_eq(auth_refresh(ctx, &err), 0);
        usleep(2000);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(r.bad, 0);
    /* the last document written was race-a (k1): the token verifies */
    expect_code(ctx, r.tok, 0);
    free(r.tok);
    auth_ctx_destroy(ctx);
}
END_TEST

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_auth_verify_valid_hs256);
    tcase_add_test(tc, test_auth_verify_valid_public_keys);
    tcase_add_test(tc, test_auth_verify_alg_none_rejected);
    tcase_add_test(tc, test_auth_verify_hmac_with_public_key_rejected);
    tcase_add_test(tc, test_auth_verify_bad_signatures);
    tcase_add_test(tc, test_auth_verify_claims);
    tcase_add_test(tc, test_auth_verify_audience_issuer);
    tcase_add_test(tc, test_auth_verify_unknown_kid);
    tcase_add_test(tc, test_auth_verify_malformed);
    tcase_add_test(tc, test_auth_header_token_schemes);
    tcase_add_test(tc, test_auth_ctx_create_rejects_bad_keys);
    tcase_add_test(tc, test_auth_jwks_file_rotation);
    tcase_add_test(tc, test_auth_jwks_key_types_and_algs);
    tcase_add_test(tc, test_auth_jwks_url_rotation);
    tcase_add_test(tc, test_auth_jwks_url_kid_flood_rate_limited);
    tcase_add_test(tc, test_auth_jwks_background_refresh);
    tcase_add_test(tc, test_auth_jwks_url_down_at_start_retried_soon);
    tcase_add_test(tc, test_auth_cache_hits_expire_and_bound);
    tcase_add_test(tc, test_auth_sign_hmac_roundtrip);
    tcase_add_test(tc, test_auth_err_code_strings_stable);
    tcase_add_test(tc, test_auth_gw_create_and_verify_header);
    tcase_add_test(tc, test_auth_refresh_concurrent_with_verify);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (access(HELPERS "/keys.sh", X_OK) != 0) {
        fprintf(stderr, "test_auth: run from the repository root (%s/keys.sh not found)\n",
                HELPERS);
        return 1;
    }
    snprintf(g_dir, sizeof(g_dir), "/tmp/ferry-test-auth.XXXXXX");
    if (mkdtemp(g_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd), HELPERS "/keys.sh %s", g_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_auth: could not generate keys with openssl\n");
        return 1;
    }
    path_of("rsa.pub.pem", p_rs, sizeof(p_rs));
    path_of("ec.pub.pem", p_es, sizeof(p_es));
    path_of("ed.pub.pem", p_ed, sizeof(p_ed));
    SRunner *sr = srunner_create(auth_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "test_auth: could not remove %s\n", g_dir);
    return failed == 0 ? 0 : 1;
}
