/* bench_opens.c -- stream opens at a fixed rate: time from open to the first checkpoint line
 *
 *   bench-opens --url http://127.0.0.1:PORT --token T --body FILE --rate R --seconds S
 *               [--path /sync/stream] [--method POST|GET] [--warmup S]
 *
 * The official clients close their stream and open a new POST /sync/stream whenever their
 * subscriptions change (issue 17, "a subscription change is a new request"). This client opens
 * streams on an open-loop schedule (open i at start + i / R, whether or not earlier ones are
 * done, so a slow server cannot slow the offered load down), each on a new TCP connection with
 * the request body read from FILE, and measures from just before connect() to the moment the
 * first line of the body (the `checkpoint` line for /sync/stream) has arrived complete; then it
 * closes the connection. With --path /probes/liveness --method GET it measures the same for a
 * request that does nothing (the HTTP floor of the same run). One thread, one epoll loop,
 * non-blocking sockets; loopback only. The first --warmup seconds (default 1) are not counted.
 * Prints "opens N errors E p50 X p90 X p99 X max X (ms)"; exit 1 on usage errors or when any
 * open failed.
 */
#include "load_clock.h"
#include "load_hist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct conn {
    int fd;
    uint64_t t0;
    int counted;
    size_t sent;
    char *buf;
    size_t len, cap;
} conn_t;

static const char *req;
static size_t reqlen;

static int usage(void)
{
    fprintf(stderr, "usage: bench-opens --url http://127.0.0.1:PORT --token T --body FILE "
                    "--rate R --seconds S [--path P] [--method M] [--warmup S]\n");
    return 1;
}

static void conn_free(conn_t *c)
{
    if (c->fd >= 0) close(c->fd);
    free(c->buf);
    free(c);
}

/* 1 when the response's first body line is complete (or the response is not a 200) */
static int first_line_done(conn_t *c, int *ok)
{
    char *hdr_end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!hdr_end) return 0;
    if (c->len < 12 || memcmp(c->buf + 9, "200", 3) != 0) {
        *ok = 0;
        return 1;
    }
    const char *p = hdr_end + 4, *end = c->buf + c->len;
    *ok = 1;
    /* not chunked (a probe): done when Content-Length bytes arrived */
    const char *cl = memmem(c->buf, (size_t)(hdr_end - c->buf), "\r\ncontent-length:", 17);
    if (!cl) cl = memmem(c->buf, (size_t)(hdr_end - c->buf), "\r\nContent-Length:", 17);
    if (cl) return (size_t)(end - p) >= strtoul(cl + 17, NULL, 10);
    /* chunked encoding: "<hex size>\r\n<data>\r\n" ...; done once the data holds a '\n' */
    while (p < end) {
        const char *crlf = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!crlf) return 0;
        unsigned long size = strtoul(p, NULL, 16);
        if (size == 0) return 1; /* the body ended without a line */
        const char *data = crlf + 2;
        size_t have = (size_t)(end - data) < size ? (size_t)(end - data) : size;
        if (memchr(data, '\n', have)) return 1;
        if (have < size) return 0;
        p = data + size + 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *token = NULL, *body_file = NULL, *path = "/sync/stream";
    const char *method = "POST";
    double rate = 0, seconds = 0, warmup = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--token") == 0)
            token = argv[i + 1];
        else if (strcmp(argv[i], "--body") == 0)
            body_file = argv[i + 1];
        else if (strcmp(argv[i], "--path") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--method") == 0)
            method = argv[i + 1];
        else if (strcmp(argv[i], "--rate") == 0)
            rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0)
            warmup = atof(argv[i + 1]);
        else
            return usage();
    }
    int port = 0;
    if (!url || sscanf(url, "http://127.0.0.1:%d", &port) != 1 || !token || rate <= 0 ||
        seconds <= 0)
        return usage();
    char *body = NULL;
    size_t blen = 0;
    if (body_file) {
        FILE *f = fopen(body_file, "rb");
        if (!f) {
            perror(body_file);
            return 1;
        }
        fseek(f, 0, SEEK_END);
        blen = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        body = malloc(blen + 1);
        if (!body || fread(body, 1, blen, f) != blen) return 1;
        fclose(f);
    }
    size_t cap = blen + strlen(token) + 512;
    char *r = malloc(cap);
    if (!r) return 1;
    int n = snprintf(r, cap,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     method, path, token, blen);
    memcpy(r + n, body ? body : "", blen);
    req = r;
    reqlen = (size_t)n + blen;

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int ep = epoll_create1(0);
    load_hist_t *h = calloc(1, sizeof *h);
    if (!h) return 1;
    uint64_t start = mono_us(), total = (uint64_t)((warmup + seconds) * rate);
    uint64_t warm = (uint64_t)(warmup * rate), next = 0, done = 0, errors = 0, open_now = 0;
    char rbuf[65536];
    while (done < total) {
        uint64_t now = mono_us();
        /* open every stream whose time has come */
        while (next < total && start + (uint64_t)((double)next * 1e6 / rate) <= now) {
            conn_t *c = calloc(1, sizeof *c);
            if (!c) return 1;
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            c->counted = next >= warm;
            c->t0 = mono_us();
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
                errors += c->counted;
                done++;
                conn_free(c);
            } else {
                struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                open_now++;
            }
            next++;
        }
        int wait_ms = 1;
        if (next < total) {
            uint64_t due = start + (uint64_t)((double)next * 1e6 / rate);
            wait_ms = due > now ? (int)((due - now) / 1000) : 0;
        } else {
            wait_ms = 100;
        }
        struct epoll_event evs[256];
        int k = epoll_wait(ep, evs, 256, wait_ms);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            int finished = 0, ok = 0;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) {
                finished = 1;
            } else {
                if ((evs[i].events & EPOLLOUT) && c->sent < reqlen) {
                    ssize_t w = write(c->fd, req + c->sent, reqlen - c->sent);
                    if (w > 0) c->sent += (size_t)w;
                    if (w < 0 && errno != EAGAIN) finished = 1;
                    if (c->sent == reqlen) {
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
                if (!finished && (evs[i].events & EPOLLIN)) {
                    ssize_t rd;
                    while ((rd = read(c->fd, rbuf, sizeof rbuf)) > 0) {
                        if (c->len + (size_t)rd > c->cap) {
                            c->cap = (c->len + (size_t)rd) * 2;
                            c->buf = realloc(c->buf, c->cap);
                            if (!c->buf) return 1;
                        }
                        memcpy(c->buf + c->len, rbuf, (size_t)rd);
                        c->len += (size_t)rd;
                        if (first_line_done(c, &ok)) {
                            finished = 1;
                            break;
                        }
                    }
                    if (rd == 0) finished = 1;
                }
            }
            if (finished) {
                uint64_t t = mono_us() - c->t0;
                if (c->counted) {
                    if (ok)
                        load_hist_add(h, t);
                    else
                        errors++;
                }
                if (!ok && c->counted && c->len)
                    fprintf(stderr, "bench-opens: %.*s\n", (int)(c->len < 200 ? c->len : 200),
                            c->buf);
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                conn_free(c);
                open_now--;
                done++;
            }
        }
        if (mono_us() - start > (uint64_t)((warmup + seconds + 30) * 1e6)) {
            fprintf(stderr, "bench-opens: %llu opens did not finish\n",
                    (unsigned long long)(total - done));
            errors += total - done;
            break;
        }
    }
    double el = (double)(mono_us() - start) / 1e6;
    printf("opens %llu errors %llu offered %.0f/s achieved %.0f/s p50 %.3f p90 %.3f p99 %.3f max "
           "%.3f ms\n",
           (unsigned long long)h->count, (unsigned long long)errors, rate, (double)done / el,
           load_hist_quantile(h, 0.5) / 1000.0, load_hist_quantile(h, 0.9) / 1000.0,
           load_hist_quantile(h, 0.99) / 1000.0, load_hist_quantile(h, 1.0) / 1000.0);
    free(h);
    free(r);
    free(body);
    return errors ? 1 : 0;
}
