/* bench/uv_http.c - the /plaintext server of examples/techempower, on libuv:
 * the peer a user would pick instead of goev, measured by bench/run.
 *
 *   bench/uv_http [PORT]      (0 or none: the kernel picks; the port is
 *                              announced on stderr as "listening on N")
 *
 * One thread, one uv loop.  Every request (a header block ending in
 * CRLFCRLF; GET without a body is all the bench sends) is answered with the
 * same 200 "Hello, World!" response as examples/techempower, Date header
 * refreshed once a second.  All the responses to one read go out in one
 * uv_write, so pipelined requests cost one write, as in goev.  A request
 * split across reads is kept per connection and completed by the next read.
 * "Connection: close" (or HTTP/1.0 without keep-alive) is answered with
 * "Connection: close", the rest of the read is dropped and the connection is
 * shut down once the answer is written.  SIGTERM/SIGINT stop the loop. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

enum { HDR_MAX = 16 * 1024, READ_BUF = 64 * 1024 };

#define BODY "Hello, World!"
static const char head_fmt[] = "HTTP/1.1 200 OK\r\nServer: goev\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 13\r\nDate: %s\r\n%s\r\n" BODY;

struct conn {
    uv_tcp_t tcp;        /* first: the handle pointer is the connection */
    uv_shutdown_t sd;
    char *pend;          /* an incomplete request carried to the next read */
    size_t plen, pcap;
    int closing;         /* answered a closing request: read no more */
};

struct wreq {
    uv_write_t req;
    size_t len;
    char data[];
};

static uv_loop_t *loop;
static char inbuf[READ_BUF];
static char resp_keep[256], resp_close[256];
static size_t resp_keep_len, resp_close_len;
static time_t resp_sec = -1;

static void date_refresh(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec == resp_sec)
        return;
    resp_sec = ts.tv_sec;
    struct tm tm;
    char date[64];
    gmtime_r(&ts.tv_sec, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    resp_keep_len = (size_t)snprintf(resp_keep, sizeof resp_keep, head_fmt, date, "");
    resp_close_len = (size_t)snprintf(resp_close, sizeof resp_close, head_fmt, date,
                                      "Connection: close\r\n");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h, (void)suggested;
    *buf = uv_buf_init(inbuf, sizeof inbuf);   /* consumed before the next read */
}

static void on_closed(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    free(c->pend);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_shutdown(uv_shutdown_t *sd, int status)
{
    (void)status;
    conn_close((struct conn *)sd->handle);
}

/* Waits for the queued writes, sends FIN, then closes. */
static void conn_finish(struct conn *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        conn_close(c);
}

static void on_written(uv_write_t *req, int status)
{
    if (status < 0 && status != UV_ECANCELED)
        conn_close((struct conn *)req->handle);
    free(req);
}

/* Case-insensitive search for a header line "name: ...token..." in the
 * block [p, p+n). */
static int header_has(const char *p, size_t n, const char *name, const char *token)
{
    size_t nl = strlen(name), tl = strlen(token);
    const char *end = p + n;
    const char *line = memchr(p, '\n', n);   /* skip the request line */
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        if ((size_t)(eol - line) > nl && !strncasecmp(line, name, nl) && line[nl] == ':') {
            for (const char *q = line + nl + 1; q + tl <= eol; q++)
                if (!strncasecmp(q, token, tl))
                    return 1;
        }
        line = eol;
    }
    return 0;
}

/* Does the request in [p, p+n) ask for the connection to close? */
static int wants_close(const char *p, size_t n)
{
    const char *eol = memchr(p, '\r', n);
    int http10 = eol && eol - p >= 8 && !memcmp(eol - 8, "HTTP/1.0", 8);
    if (http10)
        return !header_has(p, n, "connection", "keep-alive");
    return header_has(p, n, "connection", "close");
}

/* Room for need bytes of carried request in c->pend (doubling from 4 KiB):
 * 0, or -1 without memory. */
static int pend_reserve(struct conn *c, size_t need)
{
    if (need <= c->pcap)
        return 0;
    size_t cap = c->pcap ? c->pcap : 4096;
    while (cap < need)
        cap *= 2;
    char *np = realloc(c->pend, cap);
    if (!np)
        return -1;
    c->pend = np, c->pcap = cap;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;
    if (nread < 0) {
        if (nread == UV_EOF)
            conn_finish(c);            /* answer what was asked, then close */
        else
            conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;

    const char *p = buf->base;
    size_t len = (size_t)nread;
    if (c->plen) {                     /* complete the carried request */
        if (pend_reserve(c, c->plen + len) < 0) {
            conn_close(c);
            return;
        }
        memcpy(c->pend + c->plen, p, len);
        c->plen += len;
        p = c->pend, len = c->plen;
    }

    /* Count the complete requests first, so one allocation holds the
     * answers; the last one may ask to close. */
    size_t off = 0, n = 0;
    int close_after = 0;
    while (off < len) {
        const char *e = memmem(p + off, len - off, "\r\n\r\n", 4);
        if (!e)
            break;
        size_t hl = (size_t)(e + 4 - (p + off));
        n++;
        if (wants_close(p + off, hl)) {
            close_after = 1;
            off += hl;
            break;
        }
        off += hl;
    }
    size_t rest = close_after ? 0 : len - off;
    if (rest > HDR_MAX) {              /* a header block nobody sends */
        conn_close(c);
        return;
    }

    if (n) {
        date_refresh();
        size_t total = (n - close_after) * resp_keep_len + (close_after ? resp_close_len : 0);
        struct wreq *w = malloc(sizeof *w + total);
        if (!w) {
            conn_close(c);
            return;
        }
        char *o = w->data;
        for (size_t i = 0; i < n - (size_t)close_after; i++, o += resp_keep_len)
            memcpy(o, resp_keep, resp_keep_len);
        if (close_after)
            memcpy(o, resp_close, resp_close_len);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)total);
        if (uv_write(&w->req, s, &b, 1, on_written) < 0) {
            free(w);
            conn_close(c);
            return;
        }
    }

    if (rest) {                        /* carry the incomplete request */
        if (p == c->pend) {
            memmove(c->pend, c->pend + off, rest);
        } else {
            if (pend_reserve(c, rest) < 0) {
                conn_close(c);
                return;
            }
            memcpy(c->pend, p + off, rest);
        }
    }
    c->plen = rest;
    if (close_after) {
        c->closing = 1;
        conn_finish(c);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;                        /* EMFILE and friends: try the next one */
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    uv_stop(h->loop);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2 || port < 0 || port > 65535) {
        fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
        return 2;
    }
    loop = uv_default_loop();
    uv_tcp_t server;
    struct sockaddr_in addr;
    uv_ip4_addr("0.0.0.0", port, &addr);
    uv_tcp_init(loop, &server);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&server, 4096, on_connection);
    if (rc) {
        fprintf(stderr, "uv_http: port %d: %s\n", port, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_storage sa;
    int salen = sizeof sa;
    uv_tcp_getsockname(&server, (struct sockaddr *)&sa, &salen);
    fprintf(stderr, "uv_http: libuv %s, listening on %d\n", uv_version_string(),
            ntohs(((struct sockaddr_in *)&sa)->sin_port));

    uv_signal_t sig_term, sig_int;
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_unref((uv_handle_t *)&sig_term);
    uv_unref((uv_handle_t *)&sig_int);

    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
