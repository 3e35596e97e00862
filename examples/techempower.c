/* techempower.c - the TechEmpower "plaintext" and "json" tests on goev.
 *
 *   examples/techempower -p PORT -t POLLERS [-r] [-s]
 *
 *   GET /plaintext -> "Hello, World!" (text/plain)
 *   GET /json      -> {"message":"Hello, World!"} (application/json)
 *
 * HTTP/1.1 keep-alive with pipelining: every request of one read is
 * answered in order into a per-poller scratch buffer, and the whole batch
 * leaves with one goev_write (which goev flushes once per loop pass).
 * -p 0 picks a free port; -r gives each poller its own SO_REUSEPORT
 * listener; -s prints the summed statistics on exit.  SIGINT/SIGTERM stop
 * the server cleanly. */
#include "goev.h"
#include "serve.h"
#include "http.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOCAL_SLOT 0
#define FREE_KEEP 4096          /* connection structs kept per poller for reuse */
#define RESP_MAX 512            /* room one response may take in the scratch */

struct conn {
    goev_handler h;
    struct conn *next_free;
};

static const char body_plain[] = "Hello, World!";
static const char body_json[] = "{\"message\":\"Hello, World!\"}";

/* Everything a poller needs, touched only by its thread.  Aligned so that
 * two pollers never share a cache line. */
struct poller_state {
    char *out;                  /* scratch for one read's responses */
    size_t cap;
    struct http_clock clock;
    /* The two keep-alive HTTP/1.1 answers, whole, re-rendered with the
     * Date once a second: the common case is one memcpy. */
    char plain[256], json[256];
    size_t plain_len, json_len;
    struct conn *free_list;
    unsigned free_count;
} __attribute__((aligned(64)));


/* The two keep-alive answers are rendered whole once a second, with the
 * Date. */
static void date_refresh(struct poller_state *ps)
{
    if (!http_clock_tick(&ps->clock))
        return;
    ps->plain_len = http_answer(ps->plain, sizeof ps->plain, 200, "text/plain", body_plain,
                                sizeof body_plain - 1, ps->clock.date, "", 0);
    ps->json_len = http_answer(ps->json, sizeof ps->json, 200, "application/json", body_json,
                               sizeof body_json - 1, ps->clock.date, "", 0);
}

static int reserve(struct poller_state *ps, size_t need)
{
    if (need <= ps->cap)
        return 0;
    size_t cap = ps->cap ? ps->cap : 64 * 1024;
    while (cap < need)
        cap *= 2;
    char *p = realloc(ps->out, cap);
    if (!p)
        return -ENOMEM;
    ps->out = p;
    ps->cap = cap;
    return 0;
}

/* Append the answer to rq at ps->out + o; returns the new length. */
static size_t answer(struct poller_state *ps, size_t o, const struct http_req *rq)
{
    const char *body = NULL, *ctype = NULL;
    size_t blen = 0;
    const char *fast = NULL;
    size_t fast_len = 0;
    int status = 200;

    if (rq->path_len == 10 && !memcmp(rq->path, "/plaintext", 10)) {
        body = body_plain, blen = sizeof body_plain - 1, ctype = "text/plain";
        fast = ps->plain, fast_len = ps->plain_len;
    } else if (rq->path_len == 5 && !memcmp(rq->path, "/json", 5)) {
        body = body_json, blen = sizeof body_json - 1, ctype = "application/json";
        fast = ps->json, fast_len = ps->json_len;
    } else {
        status = 404;
    }
    if (status == 200 && rq->method_id != HTTP_REQ_GET && rq->method_id != HTTP_REQ_HEAD)
        status = 405;

    if (status == 200 && rq->method_id == HTTP_REQ_GET && rq->minor == 1 && rq->keep_alive) {
        memcpy(ps->out + o, fast, fast_len);
        return o + fast_len;
    }
    if (status != 200) {
        body = http_status_reason(status);
        blen = strlen(body);
        ctype = "text/plain";
    }
    /* An HTTP/1.0 client closes unless told otherwise; a closing answer
     * says so. */
    const char *conn_hdr = !rq->keep_alive ? "Connection: close\r\n"
                         : rq->minor == 0 ? "Connection: keep-alive\r\n" : "";
    return o + http_answer(ps->out + o, RESP_MAX, status, ctype, body, blen, ps->clock.date, conn_hdr,
                      rq->method_id == HTTP_REQ_HEAD);
}

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct poller_state *ps = goev_poller_local(goev_handler_poller(h), LOCAL_SLOT);
    date_refresh(ps);

    size_t off = 0, o = 0;
    int close_after = 0;
    while (off < len) {
        struct http_req rq;
        if (reserve(ps, o + RESP_MAX) < 0)
            return -ENOMEM;
        ssize_t n = http_req_parse(data + off, len - off, &rq);
        if (n == 0)
            break;
        if (n < 0) {
            /* After a malformed request the stream cannot be trusted: answer
             * and close, dropping whatever follows. */
            const char *reason = http_status_reason((int)-n);
            o += http_answer(ps->out + o, RESP_MAX, (int)-n, "text/plain", reason, strlen(reason),
                             ps->clock.date, "Connection: close\r\n", 0);
            close_after = 1;
            off = len;
            break;
        }
        off += (size_t)n;
        o = answer(ps, o, &rq);
        if (!rq.keep_alive) {
            close_after = 1;
            off = len;
            break;
        }
    }
    if (o) {
        int err = goev_write(h, ps->out, o);
        if (err < 0)
            return err;
    }
    if (close_after)
        goev_close(h);
    return (ssize_t)off;
}

static void on_close(goev_handler *h, int reason)
{
    struct conn *c = (struct conn *)((char *)h - offsetof(struct conn, h));
    /* Back to the free list of the poller that owned it. */
    struct poller_state *ps = goev_poller_local(goev_handler_poller(h), LOCAL_SLOT);
    if (ps && ps->free_count < FREE_KEEP) {
        c->next_free = ps->free_list;
        ps->free_list = c;
        ps->free_count++;
    } else {
        free(c);
    }
}

static const struct goev_handler_ops conn_ops = {
    .on_read = on_read,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    struct poller_state *ps = goev_poller_local(p, LOCAL_SLOT);
    struct conn *c = ps->free_list;
    if (c) {
        ps->free_list = c->next_free;
        ps->free_count--;
    } else if (!(c = malloc(sizeof *c))) {
        return NULL;
    }
    goev_handler_init(&c->h, &conn_ops);
    return &c->h;
}

int main(int argc, char **argv)
{
    struct serve_opts o;
    goev_reactor *r;
    serve_parse(argc, argv, &o);
    if (serve_reactor_new(&o, &r))
        return 1;
    int pollers = o.pollers;

    struct poller_state *ps = aligned_alloc(64, sizeof *ps * (size_t)pollers);
    if (!ps) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(ps, 0, sizeof *ps * (size_t)pollers);
    for (int i = 0; i < pollers; i++) {
        ps[i].clock.sec = -1;
        date_refresh(&ps[i]);
        /* Allowed before the reactor runs, from the creating thread. */
        goev_poller_set_local(goev_reactor_poller(r, i), LOCAL_SLOT, &ps[i]);
    }

    int status = serve_run(r, &o, new_handler, NULL);
    goev_reactor_free(r);
    for (int i = 0; i < pollers; i++) {
        while (ps[i].free_list) {
            struct conn *c = ps[i].free_list;
            ps[i].free_list = c->next_free;
            free(c);
        }
        free(ps[i].out);
    }
    free(ps);
    return status;
}
