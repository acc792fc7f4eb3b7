/* ferry_load.c -- load-test harness: many raw PowerSync streams against a running ferry
 *
 *   ferry-load initial|fanout|idle|churn|write|soak [options]   (ferry-load --help lists them)
 *
 * Process model: the parent never holds a stream. It forks --procs workers, each running one
 * epoll loop over its share of the clients (non-blocking sockets bound to its own source
 * address 127.0.0.(2+i) before connect, at most --ramp connects in flight), and meanwhile it
 * commits rows through libpq (fanout), samples ferry's RSS, prints a progress line every second
 * and enforces --timeout. Parent and workers share one anonymous mapping (struct shared): a stop
 * flag and one slot per worker with counters, histograms and per-second series; each slot has a
 * single writer, and the parent merges the slots after the workers have exited.
 *
 * A worker's stream goes through
 *
 *   C_CONNECT --connected, request written (conn_writable)--> C_READ
 *   C_READ --first checkpoint_complete (on_complete)--> C_READ (established; `initial` closes)
 *   any --error, EOF, non-200 (conn_fail / conn_close)--> C_DONE
 *   C_READ --503 with --retry-503 MS (conn_refused)--> C_RETRY --MS later--> C_CONNECT
 *
 * and reads through load_proto.c (HTTP, chunked encoding, NDJSON, checksums), so a stream costs
 * its conn_t and the reader's small tables; the read buffer is one per worker.
 *
 * Scenarios: `initial` (time to first checkpoint_complete, ops/s, bytes/s, checksum failures;
 * --save keeps the first stream's bytes, --cat FILE replays such a file from a loopback socket
 * served by a forked child: the limit), `fanout` (rows stamped with the epoch µs at commit,
 * receive time minus stamp per delivery), `idle` (ferry's RSS per held stream), `churn` (every
 * stream syncs and closes, then all reconnect at once when the parent bumps shared->cycle),
 * `write` (--writers forked processes post batches to /api/write over a blocking keep-alive
 * client, http_call; then write-to-own-checkpoint rounds: the parent POSTs with a stream's
 * client_id, GETs /write-checkpoint2.json and waits until that stream's worker publishes a
 * write_checkpoint at least as large in WCP_VAL/WCP_AT, a shared per-client array), `soak`
 * (commits and writes at fixed rates for --seconds; tick() records RSS and errors per second).
 * Output: a table on stdout, --json FILE with every figure, --plot PREFIX (gnuplot SVG+PNG).
 * Exit status: 0 consistent, 3 inconsistent (failures, missing deliveries, timeout), 1 usage.
 */

#include "load_hist.h"
#include "load_clock.h"
#include "load_proto.h"
#include "load_token.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SECS  600
#define MAX_PROCS 64
#define READ_BUF  (256 * 1024)

enum { SC_INITIAL, SC_FANOUT, SC_IDLE, SC_CHURN, SC_WRITE, SC_SOAK, SC_COUNT };
static const char *const scenario_names[] = {"initial", "fanout", "idle", "churn", "write", "soak"};
#define MAX_CYCLES 64

/* ---- options ---- */

typedef struct opts {
    int scenario;
    const char *url, *token, *secret, *kid, *aud, *iss, *user_prefix, *params;
    const char *json, *plot, *save, *cat, *pg, *table, *stamp_col, *owner_col;
    const char *encoding; /* Accept-Encoding of the streams (NULL: none, identity) */
    long clients, procs, users, ramp, ttl, cycles, writers, batch, rounds;
    long retry_503; /* ms before a stream refused with 503 connects again; 0: a failure */
    double timeout, seconds, rate, hold, drain, write_rate;
    long ferry_pid;
    int allow_remote, quiet;
    /* resolved */
    char host[256], path[256];
    struct sockaddr_in addr;
} opts_t;

static opts_t O = {
    .url = "http://127.0.0.1:8080",
    .user_prefix = "u",
    .params = "{}",
    .table = "ferry_load_ticks",
    .stamp_col = "ts",
    .owner_col = "owner",
    .clients = 1,
    .procs = 1,
    .ramp = 256,
    .ttl = 3600,
    .cycles = 3,
    .timeout = 120,
    .seconds = 5,
    .rate = 10,
    .drain = 5,
    .writers = 2,
    .batch = 100,
    .rounds = 20,
    .write_rate = 10,
};

/* ---- shared memory ---- */

typedef struct pstat {
    load_stats_t st;
    uint64_t started, established, failed, connect_errors, http_errors, server_closed;
    uint64_t refused; /* 503s retried (--retry-503) */
    uint64_t deliveries, last_complete_us, exited;
    int last_status;
    char last_error[120];
    load_hist_t ttfc, lat;
    uint64_t sec_ops[MAX_SECS], sec_bytes[MAX_SECS];
    load_coarse_t sec_lat[MAX_SECS];
} pstat_t;

typedef struct shared {
    volatile int stop;
    volatile int cycle; /* churn: the parent bumps it to make every worker reconnect all streams */
    uint64_t t0_us;     /* CLOCK_MONOTONIC µs when the workers were forked */
    pstat_t p[];
} shared_t;

static shared_t *SH;

/* write: one slot per writer process (single writer each), and per client the latest
 * write_checkpoint its stream received and when (CLOCK_MONOTONIC µs; stored before the value) */
typedef struct wstat {
    uint64_t requests, ops, applied, not_applied, http_errors, io_errors;
    int last_status;
    char last_error[120];
    load_hist_t lat;
} wstat_t;

static wstat_t *WS;
static uint64_t *WCP_VAL, *WCP_AT;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ferry-load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static long rss_kb(long pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* ---- one worker ---- */

enum { C_IDLE, C_CONNECT, C_READ, C_DONE, C_RETRY };

typedef struct conn {
    int fd, state, established;
    uint32_t idx; /* client index over all workers */
    uint64_t t_start;
    uint64_t retry_at; /* C_RETRY: connect again at this mono_us() */
    load_proto_t p;
} conn_t;

typedef struct worker {
    int id, ep, save_fd;
    pstat_t *ps;
    conn_t *conns;
    long n, next, inflight;
    char *buf;
    uint64_t now_real; /* realtime µs of the current read */
    conn_t *cur;
} worker_t;

static int on_complete(void *ctx, load_proto_t *p, int ok)
{
    worker_t *w = ctx;
    conn_t *c = w->cur;
    (void)p;
    (void)ok;
    if (!c->established) {
        c->established = 1;
        w->inflight--;
        w->ps->established++;
        uint64_t now = mono_us();
        load_hist_add(&w->ps->ttfc, now - c->t_start);
        w->ps->last_complete_us = now - SH->t0_us;
        if (w->save_fd >= 0 && c->idx == 0) {
            close(w->save_fd);
            w->save_fd = -1;
        }
        if (O.scenario == SC_INITIAL || O.scenario == SC_CHURN) return 1;
    }
    return 0;
}

static void on_stamp(void *ctx, uint64_t stamp)
{
    worker_t *w = ctx;
    uint64_t lat = w->now_real > stamp ? w->now_real - stamp : 0;
    w->ps->deliveries++;
    load_hist_add(&w->ps->lat, lat);
    uint64_t sec = (mono_us() - SH->t0_us) / 1000000u;
    load_coarse_add(&w->ps->sec_lat[sec < MAX_SECS ? sec : MAX_SECS - 1], lat);
}

static void conn_close(worker_t *w, conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (!c->established && c->state != C_DONE) w->inflight--;
    c->state = C_DONE;
    load_proto_free(&c->p);
}

static void conn_fail(worker_t *w, conn_t *c, const char *why)
{
    if (!c->established) w->ps->failed++;
    snprintf(w->ps->last_error, sizeof w->ps->last_error, "%s", why);
    conn_close(w, c);
}

static void conn_start(worker_t *w, conn_t *c)
{
    c->t_start = mono_us();
    c->state = C_CONNECT;
    w->inflight++;
    w->ps->started++;
    load_proto_init(&c->p);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        w->ps->connect_errors++;
        conn_fail(w, c, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if ((ntohl(O.addr.sin_addr.s_addr) >> 24) == 127) {
        /* spread workers over source addresses: ports per address pair run out near 28,000 */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(w->id % 250));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
            w->ps->connect_errors++;
            conn_fail(w, c, "could not bind the source address");
            return;
        }
    }
    if (connect(c->fd, (struct sockaddr *)&O.addr, sizeof O.addr) != 0 && errno != EINPROGRESS) {
        w->ps->connect_errors++;
        conn_fail(w, c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_writable(worker_t *w, conn_t *c)
{
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err != 0) {
        w->ps->connect_errors++;
        conn_fail(w, c, strerror(err));
        return;
    }
    char tok[1024], user[128], body[2048], req[4096];
    if (O.token != NULL) {
        snprintf(tok, sizeof tok, "%s", O.token);
    } else {
        load_token_cfg_t tc = {O.secret, O.kid, O.aud, O.iss, O.ttl};
        snprintf(user, sizeof user, "%s%ld", O.user_prefix, (long)(c->idx % (uint32_t)O.users));
        if (load_token_sign(&tc, user, tok, sizeof tok) < 0) {
            conn_fail(w, c, "could not sign a token");
            return;
        }
    }
    int bl =
        snprintf(body, sizeof body, "{\"buckets\":[],\"client_id\":\"load-%u\",\"parameters\":%s}",
                 c->idx, O.params);
    char ae[64] = "";
    if (O.encoding != NULL) snprintf(ae, sizeof ae, "Accept-Encoding: %s\r\n", O.encoding);
    int rl = snprintf(req, sizeof req,
                      "POST %s/sync/stream HTTP/1.1\r\nHost: %s\r\nAuthorization: Token %s\r\n"
                      "Content-Type: application/json\r\nAccept: application/x-ndjson\r\n%s"
                      "Content-Length: %d\r\n\r\n%s",
                      O.path, O.host, tok, ae, bl, body);
    if (bl < 0 || rl < 0 || (size_t)rl >= sizeof req) {
        conn_fail(w, c, "the request is too long");
        return;
    }
    /* a fresh socket's send buffer takes a few KB at once */
    if (write(c->fd, req, (size_t)rl) != rl) {
        w->ps->connect_errors++;
        conn_fail(w, c, "could not write the request");
        return;
    }
    c->state = C_READ;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_readable(worker_t *w, conn_t *c)
{
    int stamps = O.scenario == SC_FANOUT || O.scenario == SC_WRITE || O.scenario == SC_SOAK;
    load_proto_cb_t cb = {w, on_complete, stamps ? on_stamp : NULL};
    for (int round = 0; round < 4; round++) {
        ssize_t n = read(c->fd, w->buf, READ_BUF);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            conn_fail(w, c, strerror(errno));
            return;
        }
        if (n == 0) {
            w->ps->server_closed++;
            conn_fail(w, c, "the server closed the stream");
            return;
        }
        w->now_real = real_us();
        uint64_t sec = (mono_us() - SH->t0_us) / 1000000u;
        if (sec >= MAX_SECS) sec = MAX_SECS - 1;
        uint64_t ops0 = w->ps->st.ops;
        if (w->save_fd >= 0 && c->idx == 0 && write(w->save_fd, w->buf, (size_t)n) != n) {
            close(w->save_fd);
            w->save_fd = -1;
        }
        w->cur = c;
        int rc = load_proto_feed(&c->p, w->buf, (size_t)n, &w->ps->st, &cb);
        if (WCP_VAL != NULL && c->p.write_checkpoint > WCP_VAL[c->idx]) {
            __atomic_store_n(&WCP_AT[c->idx], mono_us(), __ATOMIC_RELAXED);
            __atomic_store_n(&WCP_VAL[c->idx], c->p.write_checkpoint, __ATOMIC_RELEASE);
        }
        w->ps->sec_ops[sec] += w->ps->st.ops - ops0;
        w->ps->sec_bytes[sec] += (uint64_t)n;
        if (rc == 1) {
            conn_close(w, c);
            return;
        }
        if (rc == 2) {
            w->ps->server_closed++;
            conn_fail(w, c, "the server ended the response");
            return;
        }
        if (rc < 0) {
            if (c->p.status == 503 && O.retry_503 > 0 && !c->established) {
                /* refused (limits.max_connections): connect again later, as an SDK does */
                w->ps->refused++;
                conn_close(w, c);
                c->state = C_RETRY;
                c->retry_at = mono_us() + (uint64_t)O.retry_503 * 1000;
                return;
            }
            if (c->p.status != 0 && c->p.status != 200) {
                w->ps->http_errors++;
                w->ps->last_status = c->p.status;
            }
            conn_fail(w, c, c->p.err);
            return;
        }
        if (n < READ_BUF) return;
    }
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void worker_run(int id, long first, long n)
{
    worker_t w = {.id = id, .save_fd = -1, .ps = &SH->p[id], .n = n};
    w.ep = epoll_create1(EPOLL_CLOEXEC);
    w.conns = calloc((size_t)n, sizeof(conn_t));
    w.buf = malloc(READ_BUF);
    if (w.ep < 0 || w.conns == NULL || w.buf == NULL) _exit(1);
    for (long i = 0; i < n; i++) {
        w.conns[i].fd = -1;
        w.conns[i].idx = (uint32_t)(first + i);
    }
    if (O.save != NULL && first == 0 && O.scenario == SC_INITIAL)
        w.save_fd = open(O.save, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    struct epoll_event evs[256];
    int cycle = 0;
    while (!SH->stop) {
        if (SH->cycle != cycle) { /* churn: every stream of this worker connects again */
            cycle = SH->cycle;
            for (long i = 0; i < n; i++) {
                if (w.conns[i].state != C_DONE && w.conns[i].state != C_IDLE)
                    conn_close(&w, &w.conns[i]);
                w.conns[i].state = C_IDLE;
                w.conns[i].established = 0;
            }
            w.next = 0;
            w.inflight = 0;
        }
        while (w.next < w.n && w.inflight < O.ramp)
            conn_start(&w, &w.conns[w.next++]);
        if (O.retry_503 > 0) { /* refused streams whose time has come connect again */
            uint64_t now = mono_us();
            for (long i = 0; i < w.next && w.inflight < O.ramp; i++)
                if (w.conns[i].state == C_RETRY && w.conns[i].retry_at <= now)
                    conn_start(&w, &w.conns[i]);
        }
        int k = epoll_wait(w.ep, evs, 256, 20);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state == C_CONNECT)
                conn_writable(&w, c);
            else if (c->state == C_READ)
                conn_readable(&w, c);
        }
    }
    for (long i = 0; i < n; i++)
        if (w.conns[i].state != C_DONE && w.conns[i].state != C_IDLE) conn_close(&w, &w.conns[i]);
    w.ps->exited = 1;
    _exit(0);
}

/* ---- the limit: serve a saved stream from a loopback socket (--cat) ---- */

static pid_t cat_server(const char *file, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0)
        die("could not listen on a loopback port: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    pid_t pid = fork();
    if (pid != 0) {
        close(fd);
        return pid;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN); /* one child per connection, reaped by the kernel */
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) {
            char req[8192];
            if (read(c, req, sizeof req) <= 0) /* the request comes in one write */
                _exit(0);
            int f = open(file, O_RDONLY);
            struct stat st;
            if (f < 0 || fstat(f, &st) != 0) _exit(1);
            off_t off = 0;
            while (off < st.st_size)
                if (sendfile(c, f, &off, (size_t)(st.st_size - off)) <= 0) break;
            shutdown(c, SHUT_WR);
            while (read(c, req, sizeof req) > 0) {
            }
            _exit(0);
        }
        close(c);
    }
}

/* ---- the parent ---- */

typedef struct totals {
    load_stats_t st;
    uint64_t started, established, failed, connect_errors, http_errors, server_closed, refused;
    uint64_t deliveries, last_complete_us;
    int last_status;
    const char *last_error;
} totals_t;

static void sum_up(totals_t *t)
{
    memset(t, 0, sizeof *t);
    t->last_error = "";
    for (long i = 0; i < O.procs; i++) {
        pstat_t *p = &SH->p[i];
        uint64_t *a = (uint64_t *)&t->st, *b = (uint64_t *)&p->st;
        for (size_t k = 0; k < sizeof(load_stats_t) / sizeof(uint64_t); k++)
            a[k] += b[k];
        t->started += p->started;
        t->established += p->established;
        t->failed += p->failed;
        t->connect_errors += p->connect_errors;
        t->http_errors += p->http_errors;
        t->server_closed += p->server_closed;
        t->refused += p->refused;
        t->deliveries += p->deliveries;
        if (p->last_complete_us > t->last_complete_us) t->last_complete_us = p->last_complete_us;
        if (p->last_status) t->last_status = p->last_status;
        if (p->last_error[0]) t->last_error = p->last_error;
    }
}

typedef struct run {
    pid_t pids[MAX_PROCS];
    pid_t cat_pid;
    uint64_t t_end_us, last_progress;
    long rss_before, rss_after, rss_peak;
    uint64_t commits, commit_errors, expected;
    int timed_out;
    double elapsed;
    int ncycles;
    double cycle_s[MAX_CYCLES];
    long cycle_rss[MAX_CYCLES];
    /* write and soak */
    uint64_t writes, write_ops, write_errors, rounds_ok, round_errors;
    double write_secs; /* the writers' phase, fork to the last exit */
    /* per second since the start: ferry's RSS and errors so far (streams failed or closed by the
     * server, commit and write errors, checksum failures, protocol errors) */
    long sec_rss[MAX_SECS];
    uint64_t sec_err[MAX_SECS];
    int nsampled;
} run_t;

static load_hist_t H_post, H_get,
    H_wcp; /* write: 1-op POST, GET write checkpoint, own checkpoint */

static run_t R;

static int deadline_passed(void)
{
    if ((mono_us() - SH->t0_us) / 1e6 > O.timeout) {
        R.timed_out = 1;
        return 1;
    }
    return 0;
}

static uint64_t errors_so_far(const totals_t *t)
{
    return t->failed + t->server_closed + t->st.checksum_fail + t->st.protocol_errors +
           R.commit_errors + R.write_errors + R.round_errors;
}

static void tick(void)
{
    long kb = -1;
    if (O.ferry_pid > 0) {
        kb = rss_kb(O.ferry_pid);
        if (kb > R.rss_peak) R.rss_peak = kb;
    }
    uint64_t now = mono_us();
    int sec = (int)((now - SH->t0_us) / 1000000u);
    if (sec < MAX_SECS && sec >= R.nsampled) { /* once a second: RSS and errors over time */
        totals_t t;
        sum_up(&t);
        for (int k = R.nsampled; k <= sec; k++) {
            R.sec_rss[k] = kb;
            R.sec_err[k] = errors_so_far(&t);
        }
        R.nsampled = sec + 1;
    }
    if (O.quiet || now - R.last_progress < 1000000) return;
    R.last_progress = now;
    totals_t t;
    sum_up(&t);
    double s = (now - SH->t0_us) / 1e6;
    fprintf(stderr, "[%6.1fs] streams %llu/%ld up, %llu failed | ops %llu | %.1f MB", s,
            (unsigned long long)t.established, O.clients, (unsigned long long)t.failed,
            (unsigned long long)t.st.ops, t.st.bytes / 1e6);
    if (O.scenario == SC_FANOUT)
        fprintf(stderr, " | commits %llu, deliveries %llu", (unsigned long long)R.commits,
                (unsigned long long)t.deliveries);
    if (O.ferry_pid > 0) fprintf(stderr, " | ferry RSS %.1f MB", rss_kb(O.ferry_pid) / 1024.0);
    fputc('\n', stderr);
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    nanosleep(&ts, NULL);
}

/* wait until `want` streams (over all cycles) are established or failed (or the deadline) */
static void wait_established(long want)
{
    totals_t t;
    for (;;) {
        sum_up(&t);
        if ((long)(t.established + t.failed) >= want || deadline_passed()) return;
        tick();
        sleep_us(10000);
    }
}

/* streams of user u: clients c with c % users == u */
static uint64_t streams_of(long u)
{
    return (uint64_t)(O.clients / O.users + (u < O.clients % O.users ? 1 : 0));
}

static PGconn *pg_ticks(void)
{
    PGconn *pg = PQconnectdb(O.pg);
    if (PQstatus(pg) != CONNECTION_OK) die("could not connect to Postgres: %s", PQerrorMessage(pg));
    char sql[512];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, %s, %s) VALUES ($1, $2, $3::bigint)", O.table,
             O.owner_col, O.stamp_col);
    /* the walsender sends only flushed WAL: with synchronous_commit off (as in throwaway test
     * clusters) a commit waits for the WAL writer (up to wal_writer_delay, 200 ms) */
    PGresult *r = PQexec(pg, "SET synchronous_commit = on");
    PQclear(r);
    r = PQprepare(pg, "tick", sql, 3, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("could not prepare the insert: %s", PQerrorMessage(pg));
    PQclear(r);
    return pg;
}

/* commit row j (id RUN-j) for user j % users, stamped with the epoch µs just before sending */
static void commit_tick(PGconn *pg, uint64_t run_id, uint64_t j)
{
    char id[64], owner[128], ts[32];
    snprintf(id, sizeof id, "%llx-%llu", (unsigned long long)run_id, (unsigned long long)j);
    long u = (long)(j % (uint64_t)O.users);
    snprintf(owner, sizeof owner, "%s%ld", O.user_prefix, u);
    snprintf(ts, sizeof ts, "%llu", (unsigned long long)real_us());
    const char *vals[3] = {id, owner, ts};
    PGresult *r = PQexecPrepared(pg, "tick", 3, vals, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        R.commits++;
        R.expected += streams_of(u);
    } else {
        R.commit_errors++;
    }
    PQclear(r);
}

/* after the load: wait up to --drain for the expected deliveries */
static void drain(void)
{
    uint64_t until = mono_us() + (uint64_t)(O.drain * 1e6);
    totals_t t;
    for (;;) {
        sum_up(&t);
        if (t.deliveries >= R.expected || mono_us() > until || deadline_passed()) break;
        tick();
        sleep_us(5000);
    }
}

static void fanout_commits(void)
{
    PGconn *pg = pg_ticks();
    uint64_t start = mono_us(), run_id = real_us();
    uint64_t total = (uint64_t)(O.rate * O.seconds);
    /* expected deliveries: each commit j goes to the streams of user j % users */
    for (uint64_t j = 0; j < total; j++) {
        uint64_t due = start + (uint64_t)(j * 1e6 / O.rate);
        uint64_t now = mono_us();
        if (due > now) sleep_us(due - now);
        if (deadline_passed()) break;
        commit_tick(pg, run_id, j);
        tick();
    }
    PQfinish(pg);
    drain();
}

/* ---- write-back: a small blocking HTTP/1.1 client (keep-alive) ---- */

static int http_open(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&O.addr, sizeof O.addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *d, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, d, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return -1;
        }
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* decode a chunked body in place; returns its length, -1 while incomplete, -2 when malformed */
static long dechunk(char *b, size_t n)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *nl = memmem(b + in, n - in, "\r\n", 2);
        if (nl == NULL) return -1;
        char *e;
        unsigned long sz = strtoul(b + in, &e, 16);
        if (e == b + in) return -2;
        size_t data = (size_t)(nl - b) + 2;
        if (sz == 0) return n >= data + 2 ? (long)out : -1;
        if (data + sz + 2 > n) return -1;
        memmove(b + out, b + data, sz);
        out += sz;
        in = data + sz + 2;
    }
}

/* read one response: the status, its body into resp (NUL-terminated, cut to cap); -2 when the
 * connection was closed before any byte (a keep-alive connection the server let go), -1 on
 * other errors */
static int http_read(int fd, char *resp, size_t cap)
{
    static char buf[1 << 20];
    size_t n = 0, hlen = 0;
    long clen = -1, blen = -1;
    int chunked = 0, status = 0;
    for (;;) {
        if (n >= sizeof buf - 1) return -1;
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return n == 0 ? -2 : -1;
        n += (size_t)r;
        buf[n] = '\0';
        if (hlen == 0) {
            char *h = strstr(buf, "\r\n\r\n");
            if (h == NULL) continue;
            hlen = (size_t)(h - buf) + 4;
            status = n > 12 ? atoi(buf + 9) : 0;
            for (char *l = strstr(buf, "\r\n"); l != NULL && l < h; l = strstr(l + 2, "\r\n")) {
                if (strncasecmp(l + 2, "content-length:", 15) == 0)
                    clen = atol(l + 17);
                else if (strncasecmp(l + 2, "transfer-encoding:", 18) == 0)
                    chunked = 1;
            }
            if (!chunked && clen < 0) return -1;
        }
        if (chunked) {
            blen = dechunk(buf + hlen, n - hlen);
            if (blen == -2) return -1;
            if (blen >= 0) break;
        } else if (n - hlen >= (size_t)clen) {
            blen = clen;
            break;
        }
    }
    size_t k = (size_t)blen < cap - 1 ? (size_t)blen : cap - 1;
    memcpy(resp, buf + hlen, k);
    resp[k] = '\0';
    return status;
}

/* one request on the keep-alive connection *fd (opened again when the server let it go) */
static int http_call(int *fd, const char *method, const char *target, const char *tok,
                     const char *body, char *resp, size_t cap)
{
    char head[2048];
    size_t bl = body ? strlen(body) : 0;
    int hl = snprintf(head, sizeof head,
                      "%s %s%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, O.path, target, O.host, tok,
                      body ? "Content-Type: application/json\r\n" : "", bl);
    if (hl < 0 || (size_t)hl >= sizeof head) return -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (*fd < 0 && (*fd = http_open()) < 0) return -1;
        int st = -1;
        if (write_all(*fd, head, (size_t)hl) == 0 && (bl == 0 || write_all(*fd, body, bl) == 0))
            st = http_read(*fd, resp, cap);
        if (st > 0) return st;
        close(*fd);
        *fd = -1;
        if (st != -2) /* retry only a request the server never answered on a reused connection */
            return -1;
    }
    return -1;
}

static int user_token(long u, char *tok, size_t cap)
{
    if (O.token != NULL) return snprintf(tok, cap, "%s", O.token) < (int)cap ? 0 : -1;
    char user[128];
    snprintf(user, sizeof user, "%s%ld", O.user_prefix, u);
    load_token_cfg_t tc = {O.secret, O.kid, O.aud, O.iss, O.ttl};
    return load_token_sign(&tc, user, tok, cap) < 0 ? -1 : 0;
}

static uint64_t count_applied(const char *resp)
{
    uint64_t n = 0;
    for (const char *p = resp; (p = strstr(p, "\"status\":\"applied\"")) != NULL; p++)
        n++;
    return n;
}

/* append op k of a batch to b: a PUT of row ID for user U stamped now (the stream measures
 * write-to-stream latency from the stamp) */
static int put_op(char *b, size_t cap, int first, uint64_t op_id, const char *id, long u)
{
    return snprintf(b, cap,
                    "%s{\"op_id\":%llu,\"op\":\"PUT\",\"type\":\"%s\",\"id\":\"%s\",\"data\":"
                    "{\"%s\":\"%s%ld\",\"%s\":%llu}}",
                    first ? "" : ",", (unsigned long long)op_id, O.table, id, O.owner_col,
                    O.user_prefix, u, O.stamp_col, (unsigned long long)real_us());
}

/* a forked writer: batches of --batch PUTs for --seconds as user w % users */
static void writer_run(int w, uint64_t run_id)
{
    wstat_t *ws = &WS[w];
    long u = w % O.users;
    char tok[1024], id[96];
    size_t cap = 256 + (size_t)O.batch * 400;
    char *body = malloc(cap), *resp = malloc(1 << 20);
    if (body == NULL || resp == NULL || user_token(u, tok, sizeof tok) != 0) _exit(1);
    int fd = -1;
    uint64_t op_id = real_us(), until = mono_us() + (uint64_t)(O.seconds * 1e6), k = 0;
    while (mono_us() < until && !SH->stop) {
        size_t len =
            (size_t)snprintf(body, cap, "{\"client_id\":\"load-writer-%llx-%d\",\"batch\":[",
                             (unsigned long long)run_id, w);
        for (long i = 0; i < O.batch; i++) {
            snprintf(id, sizeof id, "%llx-w%d-%llu", (unsigned long long)run_id, w,
                     (unsigned long long)k++);
            len += (size_t)put_op(body + len, cap - len, i == 0, ++op_id, id, u);
        }
        snprintf(body + len, cap - len, "]}");
        uint64_t t0 = mono_us();
        int st = http_call(&fd, "POST", "/api/write", tok, body, resp, 1 << 20);
        load_hist_add(&ws->lat, mono_us() - t0);
        ws->requests++;
        ws->ops += (uint64_t)O.batch;
        if (st == 200) {
            uint64_t a = count_applied(resp);
            ws->applied += a;
            ws->not_applied += (uint64_t)O.batch - a;
        } else if (st < 0) {
            ws->io_errors++;
            snprintf(ws->last_error, sizeof ws->last_error, "no answer to POST /api/write");
        } else {
            ws->http_errors++;
            ws->last_status = st;
            snprintf(ws->last_error, sizeof ws->last_error, "POST /api/write: %d %.80s", st, resp);
        }
    }
    if (fd >= 0) close(fd);
    _exit(0);
}

/* one PUT of 1 op as user u with client_id cid on *fd; 1 when applied */
static int write_one(int *fd, long u, const char *cid, uint64_t op_id, const char *id)
{
    char tok[1024], body[1024], resp[4096];
    if (user_token(u, tok, sizeof tok) != 0) return 0;
    int len = snprintf(body, sizeof body, "{\"client_id\":\"%s\",\"batch\":[", cid);
    len += put_op(body + len, sizeof body - (size_t)len, 1, op_id, id, u);
    snprintf(body + len, sizeof body - (size_t)len, "]}");
    int st = http_call(fd, "POST", "/api/write", tok, body, resp, sizeof resp);
    R.writes++;
    R.write_ops++;
    if (st == 200 && count_applied(resp) == 1) {
        R.expected += streams_of(u);
        return 1;
    }
    R.write_errors++;
    if (!O.quiet)
        fprintf(stderr, "ferry-load: POST /api/write answered %d: %.200s\n", st,
                st > 0 ? resp : "");
    return 0;
}

/* write: the writers' throughput, then --rounds of write-to-own-checkpoint: POST 1 op with the
 * client_id of stream c, GET /write-checkpoint2.json, wait until stream c receives a checkpoint
 * whose write_checkpoint is at least the answer */
static void write_scenario(void)
{
    uint64_t run_id = real_us(), w0 = mono_us();
    pid_t wp[MAX_PROCS];
    for (long w = 0; w < O.writers; w++) {
        fflush(NULL);
        wp[w] = fork();
        if (wp[w] < 0) die("could not fork: %s", strerror(errno));
        if (wp[w] == 0) writer_run((int)w, run_id);
    }
    for (long w = 0; w < O.writers; w++) {
        int st;
        while (waitpid(wp[w], &st, WNOHANG) == 0) {
            if (deadline_passed()) {
                kill(wp[w], SIGKILL);
                waitpid(wp[w], &st, 0);
                break;
            }
            tick();
            sleep_us(20000);
        }
        R.expected += WS[w].applied * streams_of(w % O.users);
    }
    R.write_secs = (mono_us() - w0) / 1e6;
    int fd = -1;
    uint64_t op_id = real_us();
    for (long r = 0; r < O.rounds && !deadline_passed(); r++) {
        long c = r % O.clients, u = c % O.users;
        char cid[64], id[96], tok[1024], resp[4096], target[128];
        snprintf(cid, sizeof cid, "load-%ld", c);
        snprintf(id, sizeof id, "%llx-cp-%ld", (unsigned long long)run_id, r);
        uint64_t t0 = mono_us();
        if (!write_one(&fd, u, cid, ++op_id, id)) {
            R.round_errors++;
            continue;
        }
        uint64_t t1 = mono_us();
        snprintf(target, sizeof target, "/write-checkpoint2.json?client_id=%s", cid);
        int st = user_token(u, tok, sizeof tok) == 0
                     ? http_call(&fd, "GET", target, tok, NULL, resp, sizeof resp)
                     : -1;
        const char *v = st == 200 ? strstr(resp, "\"write_checkpoint\":\"") : NULL;
        if (v == NULL) {
            R.round_errors++;
            if (!O.quiet)
                fprintf(stderr, "ferry-load: GET %s answered %d: %.200s\n", target, st,
                        st > 0 ? resp : "");
            continue;
        }
        uint64_t want = strtoull(v + 20, NULL, 10);
        load_hist_add(&H_post, t1 - t0);
        load_hist_add(&H_get, mono_us() - t1);
        uint64_t until = mono_us() + 10000000;
        while (__atomic_load_n(&WCP_VAL[c], __ATOMIC_ACQUIRE) < want && mono_us() < until &&
               !deadline_passed()) {
            tick();
            sleep_us(100);
        }
        if (__atomic_load_n(&WCP_VAL[c], __ATOMIC_ACQUIRE) >= want) {
            R.rounds_ok++;
            load_hist_add(&H_wcp, __atomic_load_n(&WCP_AT[c], __ATOMIC_RELAXED) - t0);
        } else {
            R.round_errors++;
            if (!O.quiet)
                fprintf(stderr,
                        "ferry-load: stream %ld never got write_checkpoint %llu (has %llu)\n", c,
                        (unsigned long long)want, (unsigned long long)WCP_VAL[c]);
        }
    }
    if (fd >= 0) close(fd);
    drain();
}

/* soak: for --seconds, --rate commits/s through libpq and --write-rate 1-op writes/s through
 * POST /api/write (users round-robin) while the streams stay up; ferry's RSS and the errors are
 * sampled every second (tick) */
static void soak_scenario(void)
{
    PGconn *pg = O.rate > 0 ? pg_ticks() : NULL;
    uint64_t run_id = real_us(), start = mono_us(), end = start + (uint64_t)(O.seconds * 1e6);
    uint64_t next_c = start, next_w = start, j = 0, k = 0, op_id = real_us();
    char cid[64];
    snprintf(cid, sizeof cid, "load-soak-%llx", (unsigned long long)run_id);
    int fd = -1;
    for (uint64_t now = start; now < end && !deadline_passed(); now = mono_us()) {
        if (pg != NULL && now >= next_c) {
            commit_tick(pg, run_id, j++);
            next_c = start + (uint64_t)(j * 1e6 / O.rate);
        }
        if (O.write_rate > 0 && now >= next_w) {
            char id[96];
            snprintf(id, sizeof id, "%llx-s%llu", (unsigned long long)run_id,
                     (unsigned long long)k);
            write_one(&fd, (long)(k % (uint64_t)O.users), cid, ++op_id, id);
            k++;
            next_w = start + (uint64_t)(k * 1e6 / O.write_rate);
        }
        tick();
        uint64_t next = pg != NULL ? next_c : end;
        if (O.write_rate > 0 && next_w < next) next = next_w;
        now = mono_us();
        if (next > now) sleep_us(next - now < 20000 ? next - now : 20000);
    }
    if (pg != NULL) PQfinish(pg);
    if (fd >= 0) close(fd);
    drain();
}

static void usage(void)
{
    fputs(
        "usage: ferry-load initial|fanout|idle|churn|write|soak [options]\n"
        "       ferry-load sdk [options]  (libferry clients: ferry-load-sdk --help)\n"
        "  --url http://HOST:PORT[/prefix]  ferry (default http://127.0.0.1:8080; loopback only\n"
        "                                 unless --allow-remote)\n"
        "  --clients N  --procs N  --ramp N (connects in flight per process, default 256)\n"
        "  --secret S [--kid K] [--aud A] [--iss I] [--ttl S]  sign HS256 tokens per user\n"
        "  --token T                      one token for every client instead\n"
        "  --users N (distinct users, default = clients)  --user-prefix P (default u)\n"
        "  --params JSON                  request parameters (default {})\n"
        "  --encoding zstd|gzip           ask for a compressed stream (Accept-Encoding)\n"
        "  --timeout S (overall bound, default 120)  --json FILE  --plot PREFIX  --quiet\n"
        "  --ferry-pid PID                sample ferry's RSS (/proc/PID/status)\n"
        "initial: --save FILE (the first stream's bytes)  --cat FILE (replay FILE from loopback)\n"
        "fanout:  --pg URI --rate R (commits/s) --seconds S --table T (default ferry_load_ticks)\n"
        "         --owner-column C (default owner) --stamp-column C (default ts) --drain S\n"
        "idle:    --hold S (seconds to hold the streams after they are up)\n"
        "churn:   --cycles K (default 3): all clients sync, close, and reconnect at once, K times\n"
        "         (--ramp bounds the storm per process; --retry-503 MS connects a refused\n"
        "         stream again MS later, as SDKs do, instead of counting it failed)\n"
        "write:   --writers W (processes, default 2) --batch B (ops per POST, default 100)\n"
        "         --seconds S (writers' time) --rounds K (write-to-own-checkpoint rounds, default\n"
        "         20) --table T --owner-column C --stamp-column C (rows written, as in fanout)\n"
        "soak:    --seconds S --pg URI --rate R (commits/s) --write-rate W (1-op writes/s,\n"
        "         default 10): mixed load with the streams up; RSS and errors every second\n",
        stderr);
    exit(1);
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2) usage();
    int found = 0;
    for (int i = 0; i < SC_COUNT; i++)
        if (strcmp(argv[1], scenario_names[i]) == 0) {
            O.scenario = i;
            found = 1;
        }
    if (!found) usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--allow-remote") == 0) {
            O.allow_remote = 1;
            continue;
        }
        if (strcmp(a, "--quiet") == 0) {
            O.quiet = 1;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
#define S(name, field)                                                                             \
    if (strcmp(a, name) == 0) {                                                                    \
        O.field = v;                                                                               \
        continue;                                                                                  \
    }
#define L(name, field)                                                                             \
    if (strcmp(a, name) == 0) {                                                                    \
        O.field = strtol(v, NULL, 10);                                                             \
        continue;                                                                                  \
    }
#define D(name, field)                                                                             \
    if (strcmp(a, name) == 0) {                                                                    \
        O.field = strtod(v, NULL);                                                                 \
        continue;                                                                                  \
    }
        S("--url", url);
        S("--token", token);
        S("--secret", secret);
        S("--kid", kid);
        S("--aud", aud);
        S("--iss", iss);
        S("--user-prefix", user_prefix);
        S("--params", params);
        S("--encoding", encoding);
        S("--json", json);
        S("--plot", plot);
        S("--save", save);
        S("--cat", cat);
        S("--pg", pg);
        S("--table", table);
        S("--stamp-column", stamp_col);
        S("--owner-column", owner_col);
        L("--clients", clients);
        L("--procs", procs);
        L("--users", users);
        L("--ramp", ramp);
        L("--ttl", ttl);
        L("--ferry-pid", ferry_pid);
        L("--cycles", cycles);
        L("--retry-503", retry_503);
        L("--writers", writers);
        L("--batch", batch);
        L("--rounds", rounds);
        D("--write-rate", write_rate);
        D("--timeout", timeout);
        D("--seconds", seconds);
        D("--rate", rate);
        D("--hold", hold);
        D("--drain", drain);
#undef S
#undef L
#undef D
        fprintf(stderr, "ferry-load: unknown option %s\n", a);
        usage();
    }
    if (O.clients < 1 || O.procs < 1 || O.procs > MAX_PROCS || O.ramp < 1)
        die("--clients and --ramp must be at least 1, --procs between 1 and %d", MAX_PROCS);
    if (O.cycles < 1 || O.cycles > MAX_CYCLES) die("--cycles must be between 1 and %d", MAX_CYCLES);
    if (O.procs > O.clients) O.procs = O.clients;
    if (O.users <= 0) O.users = O.clients;
    if (O.token == NULL && O.secret == NULL) die("give --secret (HS256 key) or --token");
    if (O.scenario == SC_FANOUT && O.pg == NULL) die("fanout needs --pg URI to commit rows");
    if (O.scenario == SC_FANOUT && O.rate <= 0) die("--rate must be positive");
    if (O.scenario == SC_SOAK && O.pg == NULL) O.rate = 0; /* soak without --pg: writes only */
    if (O.writers < 0 || O.writers > MAX_PROCS || O.batch < 1 || O.batch > 10000 || O.rounds < 0)
        die("--writers must be between 0 and %d, --batch between 1 and 10000", MAX_PROCS);
    /* URL */
    const char *u = O.url;
    if (strncmp(u, "http://", 7) != 0)
        die("only http:// URLs are supported (put TLS in front of the harness yourself)");
    u += 7;
    const char *slash = strchr(u, '/');
    size_t hl = slash ? (size_t)(slash - u) : strlen(u);
    if (hl >= sizeof O.host) die("the host in --url is too long");
    memcpy(O.host, u, hl);
    O.host[hl] = '\0';
    snprintf(O.path, sizeof O.path, "%s", slash ? slash : "");
    size_t pl = strlen(O.path);
    if (pl > 0 && O.path[pl - 1] == '/') O.path[pl - 1] = '\0';
    char hostname[256];
    snprintf(hostname, sizeof hostname, "%s", O.host);
    char *colon = strrchr(hostname, ':');
    const char *port = "80";
    if (colon != NULL) {
        *colon = '\0';
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(hostname, port, &hints, &res) != 0) die("could not resolve \"%s\"", O.host);
    memcpy(&O.addr, res->ai_addr, sizeof O.addr);
    freeaddrinfo(res);
    if ((ntohl(O.addr.sin_addr.s_addr) >> 24) != 127 && !O.allow_remote)
        die("\"%s\" is not a loopback address; pass --allow-remote to load a remote server",
            O.host);
}

static double ms(uint64_t us)
{
    return us / 1000.0;
}

static void json_hist(FILE *f, const char *name, const load_hist_t *h, int last)
{
    fprintf(f,
            "  \"%s\": {\"count\": %llu, \"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
            "\"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f}%s\n",
            name, (unsigned long long)h->count, ms(h->min), ms(load_hist_quantile(h, 0.5)),
            ms(load_hist_quantile(h, 0.9)), ms(load_hist_quantile(h, 0.99)), ms(h->max),
            h->count ? ms(h->sum / h->count) : 0.0, last ? "" : ",");
}

static void plots(int nsec, load_coarse_t *lat, uint64_t *ops, uint64_t *bytes)
{
    char dat[1024], gp[1024], cmd[2200];
    snprintf(dat, sizeof dat, "%s.dat", O.plot);
    snprintf(gp, sizeof gp, "%s.gp", O.plot);
    FILE *d = fopen(dat, "w"), *g = fopen(gp, "w");
    if (d == NULL || g == NULL) {
        fprintf(stderr, "ferry-load: could not write %s or %s\n", dat, gp);
        if (d) fclose(d);
        if (g) fclose(g);
        return;
    }
    fprintf(d, "# second ops bytes p50_ms p90_ms p99_ms deliveries ferry_rss_mb errors\n");
    for (int s = 0; s < nsec; s++)
        fprintf(d, "%d %llu %llu %.3f %.3f %.3f %u %.1f %llu\n", s, (unsigned long long)ops[s],
                (unsigned long long)bytes[s], ms(load_coarse_quantile(&lat[s], 0.5)),
                ms(load_coarse_quantile(&lat[s], 0.9)), ms(load_coarse_quantile(&lat[s], 0.99)),
                lat[s].count, s < R.nsampled && R.sec_rss[s] > 0 ? R.sec_rss[s] / 1024.0 : 0.0,
                (unsigned long long)(s < R.nsampled ? R.sec_err[s] : 0));
    fclose(d);
    const char *title = scenario_names[O.scenario];
    for (int png = 0; png < 2; png++) {
        fprintf(g, "set terminal %s size 900,500\nset output '%s%s'\n", png ? "pngcairo" : "svg",
                O.plot, png ? ".png" : ".svg");
        fprintf(g, "set title 'ferry-load %s (%ld clients)'\nset xlabel 'second'\nset grid\n",
                title, O.clients);
        if (O.scenario == SC_SOAK)
            fprintf(
                g,
                "set ylabel 'latency to the stream (ms)'\nset y2label 'ferry RSS (MB), errors'\n"
                "set y2tics\nset logscale y\n"
                "plot '%s' using 1:($7>0?$4:1/0) with linespoints title 'p50', "
                "'' using 1:($7>0?$6:1/0) with linespoints title 'p99', "
                "'' using 1:($8>0?$8:1/0) axes x1y2 with lines title 'ferry RSS (MB)', "
                "'' using 1:9 axes x1y2 with steps title 'errors so far'\n"
                "unset logscale y\nunset y2tics\nunset y2label\n",
                dat);
        else if (O.scenario == SC_FANOUT || O.scenario == SC_WRITE)
            fprintf(g,
                    "set ylabel '%s latency (ms)'\nset logscale y\n"
                    "plot '%s' using 1:($7>0?$4:1/0) with linespoints title 'p50', "
                    "'' using 1:($7>0?$5:1/0) with linespoints title 'p90', "
                    "'' using 1:($7>0?$6:1/0) with linespoints title 'p99'\nunset logscale y\n",
                    O.scenario == SC_WRITE ? "write-to-stream" : "commit-to-client", dat);
        else
            fprintf(g,
                    "set ylabel 'ops/s'\nset y2label 'MB/s'\nset y2tics\n"
                    "plot '%s' using 1:2 with linespoints title 'ops/s', "
                    "'' using 1:($3/1e6) axes x1y2 with linespoints title 'MB/s'\n"
                    "unset y2tics\nunset y2label\n",
                    dat);
    }
    fclose(g);
    snprintf(cmd, sizeof cmd, "command -v gnuplot >/dev/null && gnuplot '%s' 2>/dev/null", gp);
    if (system(cmd) != 0)
        fprintf(stderr, "ferry-load: gnuplot is missing or failed; data left in %s\n", dat);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "sdk") == 0) { /* the SDK mode is its own program */
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 32);
        if (n > 0) {
            self[n] = '\0';
            strcpy(strrchr(self, '/') + 1, "ferry-load-sdk");
            argv[1] = self;
            execv(self, argv + 1);
        }
        die("could not run ferry-load-sdk next to ferry-load: %s", strerror(errno));
    }
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    load_proto_set_stamp_column(O.stamp_col);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    long per_proc = (O.clients + O.procs - 1) / O.procs;
    if ((rlim_t)per_proc + 64 > rl.rlim_cur)
        die("%ld streams per process exceed the open-files limit (%llu); use --procs %ld or more",
            per_proc, (unsigned long long)rl.rlim_cur,
            (O.clients + (long)rl.rlim_cur - 65) / ((long)rl.rlim_cur - 64));
    if (O.cat != NULL) {
        int port;
        R.cat_pid = cat_server(O.cat, &port);
        O.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        O.addr.sin_port = htons((uint16_t)port);
    }
    size_t shsize = sizeof(shared_t) + (size_t)O.procs * sizeof(pstat_t);
    SH = mmap(NULL, shsize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (SH == MAP_FAILED) die("could not map %zu bytes of shared memory", shsize);
    if (O.scenario == SC_WRITE) {
        size_t wsz =
            (size_t)(O.writers + 1) * sizeof(wstat_t) + 2 * (size_t)O.clients * sizeof(uint64_t);
        void *m = mmap(NULL, wsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("could not map %zu bytes of shared memory", wsz);
        WS = m;
        WCP_VAL = (uint64_t *)(WS + O.writers + 1);
        WCP_AT = WCP_VAL + O.clients;
    }
    if (O.ferry_pid > 0) {
        R.rss_before = rss_kb(O.ferry_pid);
        if (R.rss_before < 0) die("no process %ld to sample RSS from", O.ferry_pid);
        R.rss_peak = R.rss_before;
    }
    fflush(NULL);
    SH->t0_us = mono_us();
    for (long i = 0; i < O.procs; i++) {
        long first = O.clients * i / O.procs, last = O.clients * (i + 1) / O.procs;
        pid_t pid = fork();
        if (pid < 0) die("could not fork: %s", strerror(errno));
        if (pid == 0) worker_run((int)i, first, last - first);
        R.pids[i] = pid;
    }
    totals_t t;
    uint64_t c0 = mono_us();
    wait_established(O.clients);
    if (O.scenario == SC_CHURN) {
        /* cycle k: all streams closed after their checkpoint_complete; now all reconnect at once */
        R.cycle_s[0] = (mono_us() - c0) / 1e6;
        R.cycle_rss[0] = O.ferry_pid > 0 ? rss_kb(O.ferry_pid) : 0;
        R.ncycles = 1;
        for (int k = 1; k < O.cycles && !R.timed_out; k++) {
            c0 = mono_us();
            SH->cycle = k;
            wait_established(O.clients * (k + 1));
            R.cycle_s[k] = (mono_us() - c0) / 1e6;
            R.cycle_rss[k] = O.ferry_pid > 0 ? rss_kb(O.ferry_pid) : 0;
            R.ncycles = k + 1;
        }
    }
    if (O.scenario == SC_IDLE) {
        uint64_t settle = mono_us() + 1000000;
        while (mono_us() < settle)
            tick(), sleep_us(50000);
        if (O.ferry_pid > 0) R.rss_after = rss_kb(O.ferry_pid);
        uint64_t until = mono_us() + (uint64_t)(O.hold * 1e6);
        while (mono_us() < until && !deadline_passed())
            tick(), sleep_us(50000);
    } else if (O.scenario == SC_FANOUT || O.scenario == SC_WRITE || O.scenario == SC_SOAK) {
        if (!R.timed_out && O.scenario == SC_FANOUT)
            fanout_commits();
        else if (!R.timed_out && O.scenario == SC_WRITE)
            write_scenario();
        else if (!R.timed_out)
            soak_scenario();
        if (O.ferry_pid > 0) R.rss_after = rss_kb(O.ferry_pid);
    } else if (O.ferry_pid > 0) {
        R.rss_after = rss_kb(O.ferry_pid);
    }
    R.elapsed = (mono_us() - SH->t0_us) / 1e6;
    tick(); /* the last second's RSS and error sample (the series covers every second) */
    SH->stop = 1;
    for (long i = 0; i < O.procs; i++) {
        int st;
        uint64_t until = mono_us() + 10000000;
        while (waitpid(R.pids[i], &st, WNOHANG) == 0) {
            if (mono_us() > until) {
                kill(R.pids[i], SIGKILL);
                waitpid(R.pids[i], &st, 0);
                break;
            }
            sleep_us(10000);
        }
    }
    if (R.cat_pid > 0) {
        kill(R.cat_pid, SIGKILL);
        waitpid(R.cat_pid, NULL, 0);
    }
    sum_up(&t);

    /* merge */
    load_hist_t *ttfc = calloc(1, sizeof *ttfc), *lat = calloc(1, sizeof *lat);
    load_coarse_t *slat = calloc(MAX_SECS, sizeof *slat);
    uint64_t *sops = calloc(MAX_SECS, sizeof *sops), *sbytes = calloc(MAX_SECS, sizeof *sbytes);
    if (!ttfc || !lat || !slat || !sops || !sbytes) die("out of memory");
    int nsec = (int)R.elapsed + 1;
    if (nsec > MAX_SECS) nsec = MAX_SECS;
    for (long i = 0; i < O.procs; i++) {
        load_hist_merge(ttfc, &SH->p[i].ttfc);
        load_hist_merge(lat, &SH->p[i].lat);
        for (int s = 0; s < nsec; s++) {
            load_coarse_merge(&slat[s], &SH->p[i].sec_lat[s]);
            sops[s] += SH->p[i].sec_ops[s];
            sbytes[s] += SH->p[i].sec_bytes[s];
        }
    }
    double span = t.last_complete_us ? t.last_complete_us / 1e6 : R.elapsed;
    double ops_s = O.scenario == SC_INITIAL && span > 0 ? t.st.ops / span : 0;
    double bytes_s = O.scenario == SC_INITIAL && span > 0 ? t.st.bytes / span : 0;
    double per_stream_kb = 0;
    if (O.scenario == SC_IDLE && O.ferry_pid > 0 && t.established > 0)
        per_stream_kb = (double)(R.rss_after - R.rss_before) / (double)t.established;
    long want_up = O.scenario == SC_CHURN ? O.clients * O.cycles : O.clients;
    int consistent = !R.timed_out && t.failed == 0 && (long)t.established == want_up &&
                     t.st.checksum_fail == 0 && t.st.protocol_errors == 0;
    if (O.scenario == SC_FANOUT)
        consistent = consistent && R.commit_errors == 0 && t.deliveries == R.expected &&
                     t.st.stamped_ops == t.deliveries;
    if (O.scenario != SC_INITIAL) consistent = consistent && t.server_closed == 0;
    /* write: the writers' totals */
    wstat_t wt = {0};
    load_hist_t *wlat = calloc(1, sizeof *wlat);
    if (wlat == NULL) die("out of memory");
    for (long w = 0; WS != NULL && w < O.writers; w++) {
        wt.requests += WS[w].requests;
        wt.ops += WS[w].ops;
        wt.applied += WS[w].applied;
        wt.not_applied += WS[w].not_applied;
        wt.http_errors += WS[w].http_errors;
        wt.io_errors += WS[w].io_errors;
        if (WS[w].last_status) wt.last_status = WS[w].last_status;
        if (WS[w].last_error[0]) memcpy(wt.last_error, WS[w].last_error, sizeof wt.last_error);
        load_hist_merge(wlat, &WS[w].lat);
    }
    double wsecs = R.write_secs > 0 ? R.write_secs : 1;
    if (O.scenario == SC_WRITE || O.scenario == SC_SOAK)
        consistent = consistent && R.commit_errors == 0 && R.write_errors == 0 &&
                     R.round_errors == 0 && t.deliveries == R.expected &&
                     t.st.stamped_ops == t.deliveries;
    if (O.scenario == SC_WRITE)
        consistent = consistent && wt.applied == wt.ops && wt.http_errors == 0 &&
                     wt.io_errors == 0 && R.rounds_ok == (uint64_t)O.rounds;
    /* soak: RSS over the run (first and last whole-second samples) */
    long rss_first = -1, rss_last = -1, rss_max = -1;
    for (int k = 0; k < R.nsampled && k < nsec; k++)
        if (R.sec_rss[k] > 0) {
            if (rss_first < 0) rss_first = R.sec_rss[k];
            rss_last = R.sec_rss[k];
            if (R.sec_rss[k] > rss_max) rss_max = R.sec_rss[k];
        }

    /* table */
    printf("ferry-load %s: %ld clients over %ld process(es), %.2f s%s\n",
           scenario_names[O.scenario], O.clients, O.procs, R.elapsed,
           R.timed_out ? " (TIMED OUT)" : "");
    char status[32] = "";
    if (t.last_status) snprintf(status, sizeof status, ", last status %d", t.last_status);
    printf("  %-34s %llu up, %llu failed (%llu connect, %llu HTTP%s, %llu closed by server)\n",
           "streams", (unsigned long long)t.established, (unsigned long long)t.failed,
           (unsigned long long)t.connect_errors, (unsigned long long)t.http_errors, status,
           (unsigned long long)t.server_closed);
    if (t.last_error[0] && t.failed) printf("  %-34s %s\n", "last error", t.last_error);
    if (O.retry_503 > 0)
        printf("  %-34s %llu (each connected again %ld ms later)\n", "refused with 503",
               (unsigned long long)t.refused, O.retry_503);
    printf("  %-34s %llu ok, %llu failed\n", "bucket checksums at complete",
           (unsigned long long)t.st.checksum_ok, (unsigned long long)t.st.checksum_fail);
    printf("  %-34s %llu ops in %llu data lines, %llu lines, %.1f MB, %llu protocol errors\n",
           "received", (unsigned long long)t.st.ops, (unsigned long long)t.st.data_lines,
           (unsigned long long)t.st.lines, t.st.bytes / 1e6,
           (unsigned long long)t.st.protocol_errors);
    printf("  %-34s p50 %.1f  p90 %.1f  p99 %.1f  max %.1f ms\n", "time to checkpoint_complete",
           ms(load_hist_quantile(ttfc, .5)), ms(load_hist_quantile(ttfc, .9)),
           ms(load_hist_quantile(ttfc, .99)), ms(ttfc->max));
    if (O.scenario == SC_INITIAL)
        printf("  %-34s %.0f ops/s, %.1f MB/s (over %.3f s)\n", "initial sync throughput", ops_s,
               bytes_s / 1e6, span);
    if (O.scenario == SC_FANOUT) {
        printf("  %-34s %llu commits (%llu errors) at %.0f/s, %llu of %llu deliveries\n", "fanout",
               (unsigned long long)R.commits, (unsigned long long)R.commit_errors, O.rate,
               (unsigned long long)t.deliveries, (unsigned long long)R.expected);
        printf("  %-34s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n", "commit-to-client latency",
               ms(load_hist_quantile(lat, .5)), ms(load_hist_quantile(lat, .9)),
               ms(load_hist_quantile(lat, .99)), ms(lat->max));
    }
    if (O.ferry_pid > 0)
        printf("  %-34s before %.1f MB, after %.1f MB, peak sampled %.1f MB\n", "ferry RSS",
               R.rss_before / 1024.0, R.rss_after / 1024.0, R.rss_peak / 1024.0);
    if (O.scenario == SC_IDLE && O.ferry_pid > 0)
        printf("  %-34s %.1f KB\n", "ferry RSS per idle stream", per_stream_kb);
    for (int k = 0; k < R.ncycles; k++)
        printf("  %-34s all %ld synced in %.3f s, ferry RSS %.1f MB\n",
               k == 0 ? "churn cycles (0 = first connect)" : "", O.clients, R.cycle_s[k],
               R.cycle_rss[k] / 1024.0);
    if (O.scenario == SC_WRITE) {
        printf("  %-34s %llu of %llu ops applied in %llu POSTs of %ld (%llu HTTP errors%s%s, %llu "
               "unanswered), %ld writers\n",
               "write-back", (unsigned long long)wt.applied, (unsigned long long)wt.ops,
               (unsigned long long)wt.requests, O.batch, (unsigned long long)wt.http_errors,
               wt.last_error[0] ? ": " : "", wt.last_error, (unsigned long long)wt.io_errors,
               O.writers);
        printf("  %-34s %.0f ops/s over %.1f s\n", "write-back throughput", wt.applied / wsecs,
               wsecs);
        printf("  %-34s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n", "POST of a batch",
               ms(load_hist_quantile(wlat, .5)), ms(load_hist_quantile(wlat, .9)),
               ms(load_hist_quantile(wlat, .99)), ms(wlat->max));
        printf("  %-34s %llu of %ld rounds; POST 1 op p50 %.2f, GET write checkpoint p50 %.2f ms\n",
               "own checkpoint rounds", (unsigned long long)R.rounds_ok, O.rounds,
               ms(load_hist_quantile(&H_post, .5)), ms(load_hist_quantile(&H_get, .5)));
        printf("  %-34s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n", "write to own checkpoint",
               ms(load_hist_quantile(&H_wcp, .5)), ms(load_hist_quantile(&H_wcp, .9)),
               ms(load_hist_quantile(&H_wcp, .99)), ms(H_wcp.max));
    }
    if (O.scenario == SC_SOAK)
        printf("  %-34s %llu commits (%llu errors), %llu writes (%llu errors) over %.0f s\n",
               "soak", (unsigned long long)R.commits, (unsigned long long)R.commit_errors,
               (unsigned long long)R.writes, (unsigned long long)R.write_errors, O.seconds);
    if (O.scenario == SC_WRITE || O.scenario == SC_SOAK) {
        printf("  %-34s %llu of %llu deliveries\n", "rows delivered to their streams",
               (unsigned long long)t.deliveries, (unsigned long long)R.expected);
        printf("  %-34s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n",
               O.scenario == SC_WRITE ? "write-to-stream latency" : "commit/write-to-stream",
               ms(load_hist_quantile(lat, .5)), ms(load_hist_quantile(lat, .9)),
               ms(load_hist_quantile(lat, .99)), ms(lat->max));
    }
    if (O.scenario == SC_SOAK && rss_first > 0)
        printf("  %-34s first second %.1f MB, last %.1f MB, max %.1f MB; errors %llu\n",
               "ferry RSS over the soak", rss_first / 1024.0, rss_last / 1024.0, rss_max / 1024.0,
               (unsigned long long)(R.nsampled ? R.sec_err[R.nsampled - 1] : 0));
    printf("  %-34s %s\n", "consistent", consistent ? "yes" : "NO");

    if (O.json != NULL) {
        FILE *f = fopen(O.json, "w");
        if (f == NULL) die("could not write %s: %s", O.json, strerror(errno));
        fprintf(f, "{\n  \"scenario\": \"%s\",\n  \"clients\": %ld,\n  \"procs\": %ld,\n",
                scenario_names[O.scenario], O.clients, O.procs);
        fprintf(f, "  \"elapsed_s\": %.3f,\n  \"timed_out\": %s,\n  \"consistent\": %s,\n",
                R.elapsed, R.timed_out ? "true" : "false", consistent ? "true" : "false");
        fprintf(
            f,
            "  \"streams\": {\"established\": %llu, \"failed\": %llu, \"connect_errors\": %llu, "
            "\"http_errors\": %llu, \"last_status\": %d, \"closed_by_server\": %llu, "
            "\"refused_retried\": %llu},\n",
            (unsigned long long)t.established, (unsigned long long)t.failed,
            (unsigned long long)t.connect_errors, (unsigned long long)t.http_errors, t.last_status,
            (unsigned long long)t.server_closed, (unsigned long long)t.refused);
        fprintf(f,
                "  \"received\": {\"ops\": %llu, \"bytes\": %llu, \"lines\": %llu, \"data_lines\": "
                "%llu, \"checkpoints\": %llu, \"diffs\": %llu, \"keepalives\": %llu, "
                "\"completes\": %llu, \"protocol_errors\": %llu, \"decoded_bytes\": %llu},\n",
                (unsigned long long)t.st.ops, (unsigned long long)t.st.bytes,
                (unsigned long long)t.st.lines, (unsigned long long)t.st.data_lines,
                (unsigned long long)t.st.checkpoints, (unsigned long long)t.st.diffs,
                (unsigned long long)t.st.keepalives, (unsigned long long)t.st.completes,
                (unsigned long long)t.st.protocol_errors, (unsigned long long)t.st.decoded_bytes);
        fprintf(f, "  \"checksums\": {\"ok\": %llu, \"failures\": %llu},\n",
                (unsigned long long)t.st.checksum_ok, (unsigned long long)t.st.checksum_fail);
        fprintf(f,
                "  \"initial\": {\"ops_per_s\": %.1f, \"bytes_per_s\": %.1f, \"span_s\": %.6f},\n",
                ops_s, bytes_s, span);
        json_hist(f, "time_to_first_complete_ms", ttfc, 0);
        json_hist(f, "latency_ms", lat, 0);
        fprintf(f,
                "  \"fanout\": {\"rate\": %.3f, \"commits\": %llu, \"commit_errors\": %llu, "
                "\"deliveries\": %llu, \"expected_deliveries\": %llu},\n",
                O.scenario == SC_FANOUT ? O.rate : 0.0, (unsigned long long)R.commits,
                (unsigned long long)R.commit_errors, (unsigned long long)t.deliveries,
                (unsigned long long)R.expected);
        fprintf(f,
                "  \"ferry_rss_kb\": {\"before\": %ld, \"after\": %ld, \"peak_sampled\": %ld, "
                "\"per_idle_stream\": %.3f},\n",
                R.rss_before, R.rss_after, R.rss_peak, per_stream_kb);
        fprintf(
            f,
            "  \"write\": {\"writers\": %ld, \"batch\": %ld, \"seconds\": %.3f, \"requests\": "
            "%llu, "
            "\"ops\": %llu, \"applied\": %llu, \"not_applied\": %llu, \"http_errors\": %llu, "
            "\"unanswered\": %llu, \"ops_per_s\": %.1f, \"rounds\": %ld, \"rounds_ok\": %llu, "
            "\"round_errors\": %llu, \"single_writes\": %llu, \"single_write_errors\": %llu},\n",
            O.scenario == SC_WRITE ? O.writers : 0, O.batch, O.seconds,
            (unsigned long long)wt.requests, (unsigned long long)wt.ops,
            (unsigned long long)wt.applied, (unsigned long long)wt.not_applied,
            (unsigned long long)wt.http_errors, (unsigned long long)wt.io_errors,
            wt.applied / wsecs, O.scenario == SC_WRITE ? O.rounds : 0,
            (unsigned long long)R.rounds_ok, (unsigned long long)R.round_errors,
            (unsigned long long)R.writes, (unsigned long long)R.write_errors);
        json_hist(f, "write_batch_ms", wlat, 0);
        json_hist(f, "write_single_post_ms", &H_post, 0);
        json_hist(f, "write_checkpoint_get_ms", &H_get, 0);
        json_hist(f, "write_to_own_checkpoint_ms", &H_wcp, 0);
        fprintf(f,
                "  \"soak\": {\"seconds\": %.3f, \"commits\": %llu, \"commit_errors\": %llu, "
                "\"writes\": %llu, \"write_errors\": %llu, \"deliveries\": %llu, "
                "\"expected_deliveries\": %llu, \"rss_first_kb\": %ld, \"rss_last_kb\": %ld, "
                "\"rss_max_kb\": %ld, \"errors\": %llu},\n",
                O.scenario == SC_SOAK ? O.seconds : 0.0, (unsigned long long)R.commits,
                (unsigned long long)R.commit_errors, (unsigned long long)R.writes,
                (unsigned long long)R.write_errors, (unsigned long long)t.deliveries,
                (unsigned long long)R.expected, rss_first, rss_last, rss_max,
                (unsigned long long)(R.nsampled ? R.sec_err[R.nsampled - 1] : 0));
        fprintf(f, "  \"churn\": [");
        for (int k = 0; k < R.ncycles; k++)
            fprintf(f, "%s{\"cycle\": %d, \"seconds\": %.6f, \"ferry_rss_kb\": %ld}", k ? ", " : "",
                    k, R.cycle_s[k], R.cycle_rss[k]);
        fprintf(f, "],\n");
        fprintf(f, "  \"series\": [");
        for (int s = 0; s < nsec; s++)
            fprintf(f,
                    "%s\n    {\"second\": %d, \"ops\": %llu, \"bytes\": %llu, \"deliveries\": %u, "
                    "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"ferry_rss_kb\": %ld, \"errors\": %llu}",
                    s ? "," : "", s, (unsigned long long)sops[s], (unsigned long long)sbytes[s],
                    slat[s].count, ms(load_coarse_quantile(&slat[s], .5)),
                    ms(load_coarse_quantile(&slat[s], .99)), s < R.nsampled ? R.sec_rss[s] : -1,
                    (unsigned long long)(s < R.nsampled ? R.sec_err[s] : 0));
        fprintf(f, "\n  ]\n}\n");
        fclose(f);
    }
    if (O.plot != NULL) plots(nsec, slat, sops, sbytes);
    free(ttfc);
    free(lat);
    free(slat);
    free(sops);
    free(sbytes);
    free(wlat);
    return consistent ? 0 : 3;
}
