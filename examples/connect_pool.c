/* connect_pool.c - an HTTP load client on goev's connection pool.
 *
 *   examples/connect_pool -c ADDR -n REQUESTS -k CONCURRENCY
 *                         [--min-idle N] [--max-live M] [--timeout MS]
 *
 * Sends REQUESTS `GET /plaintext` requests to the HTTP server at ADDR
 * ("127.0.0.1:8080", any goev address string), CONCURRENCY of them at a
 * time, each over a connection taken from one goev_pool (min_idle N,
 * max_live M: with CONCURRENCY > M, requests queue for a connection, which
 * is what the pool is for).  A request is: acquire, write, read one
 * response (status line, headers, Content-Length body), release.  Then it
 * prints
 *
 *   requests=R errors=E created=C max_live=L
 *   latency_us p50=... p90=... p99=... max=...
 *
 * where max_live is the most connections the pool had open or opening at
 * once (never above M) and latency runs from the acquire to the last byte
 * of the response.  The exit status is 0 when every request got a 200. */
#include "goev.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct client;

/* One of the CONCURRENCY request loops. */
struct slot {
    goev_pool_req req;
    struct client *cl;
    goev_handler *conn;
    uint64_t t0;                /* acquire, in microseconds */
    size_t need;                /* bytes of the response still expected, 0 = head not seen */
    int status;
};

struct client {
    goev_reactor *r;
    goev_pool *pool;
    const char *addr;
    long total, issued, finished, errors;
    int timeout_ms;
    uint32_t *lat;              /* microseconds, one per finished request */
};

static const char request[] = "GET /plaintext HTTP/1.1\r\nHost: goev\r\n\r\n";

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void next_request(struct slot *s);

static void finish(struct slot *s, int ok)
{
    struct client *cl = s->cl;
    uint64_t us = now_us() - s->t0;
    cl->lat[cl->finished++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    if (!ok)
        cl->errors++;
    if (cl->finished == cl->total)
        goev_reactor_stop(cl->r);
    else
        next_request(s);
}

/* Length of the response head at data (through the empty line), with its
 * status and Content-Length, or 0 if the head is not complete yet. */
static size_t parse_head(const char *data, size_t len, int *status, size_t *clen)
{
    const char *end = NULL;
    for (size_t i = 3; i < len; i++)
        if (data[i] == '\n' && data[i - 1] == '\r' && data[i - 2] == '\n' && data[i - 3] == '\r') {
            end = data + i + 1;
            break;
        }
    if (!end)
        return 0;
    *status = 0;
    *clen = 0;
    if (len > 12 && !memcmp(data, "HTTP/1.", 7))
        *status = atoi(data + 9);
    for (const char *p = data; p < end; p++) {
        if ((*p == 'C' || *p == 'c') && end - p > 16 && !strncasecmp(p, "Content-Length:", 15)) {
            *clen = (size_t)strtoul(p + 15, NULL, 10);
            break;
        }
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        p = nl;
    }
    return (size_t)(end - data);
}

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct slot *s = h->user;
    size_t used = 0;
    if (!s->need) {
        size_t clen;
        size_t head = parse_head(data, len, &s->status, &clen);
        if (!head)
            return len > 16384 ? -EMSGSIZE : 0;     /* wait for the rest of the head */
        s->need = clen + 1;     /* +1: 0 means "head not seen" */
        used = head;
    }
    size_t body = len - used < s->need - 1 ? len - used : s->need - 1;
    used += body;
    s->need -= body;
    if (s->need == 1) {
        /* The whole response: the connection goes back for the next
         * request, a queued one of another slot perhaps. */
        s->need = 0;
        s->conn = NULL;
        goev_pool_release(h, 1);
        finish(s, s->status == 200);
    }
    return (ssize_t)used;
}

/* The connection closed under a request (server gone, reset). */
static void on_close(goev_handler *h, int reason)
{
    struct slot *s = h->user;
    if (s && s->conn == h) {
        s->conn = NULL;
        s->need = 0;
        finish(s, 0);
    }
}

static const struct goev_handler_ops lease_ops = {
    .on_read = on_read,
    .on_close = on_close,
};

static void acquired(goev_pool_req *req, goev_handler *conn, int err)
{
    struct slot *s = req->user;
    if (!conn) {
        fprintf(stderr, "acquire: %s\n", strerror(-err));
        finish(s, 0);
        return;
    }
    s->conn = conn;
    conn->user = s;
    int rc = goev_write(conn, request, sizeof request - 1);
    if (rc < 0) {
        s->conn = NULL;
        goev_pool_release(conn, 0);
        finish(s, 0);
    }
}

static void next_request(struct slot *s)
{
    struct client *cl = s->cl;
    if (cl->issued == cl->total)
        return;
    cl->issued++;
    s->t0 = now_us();
    s->need = 0;
    int rc = goev_pool_acquire(cl->pool, &s->req, cl->timeout_ms, acquired);
    if (rc < 0) {
        fprintf(stderr, "goev_pool_acquire: %s\n", strerror(-rc));
        finish(s, 0);
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, long n, double q)
{
    long i = (long)(q * (double)(n - 1) + 0.5);
    return n ? v[i] : 0;
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s -c ADDR -n REQUESTS -k CONCURRENCY [--min-idle N] [--max-live M] "
                    "[--timeout MS]\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"min-idle", required_argument, NULL, 'i'},
        {"max-live", required_argument, NULL, 'm'},
        {"timeout", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    struct client cl = {.timeout_ms = 5000};
    struct goev_pool_opts po;
    goev_pool_opts_init(&po);
    po.ops = &lease_ops;
    long conc = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:n:k:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': cl.addr = optarg; break;
        case 'n': cl.total = atol(optarg); break;
        case 'k': conc = atol(optarg); break;
        case 'i': po.min_idle = atoi(optarg); break;
        case 'm': po.max_live = atoi(optarg); break;
        case 'T': cl.timeout_ms = atoi(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!cl.addr || cl.total < 1 || conc < 1 || optind != argc || po.min_idle < 0 ||
        po.max_live < 1 || po.min_idle > po.max_live)
        usage(argv[0]);
    if (conc > cl.total)
        conc = cl.total;

    struct goev_reactor_opts ro;
    goev_reactor_opts_init(&ro);
    ro.pollers = 1;
    int rc = goev_reactor_new(&cl.r, &ro);
    if (rc < 0) {
        fprintf(stderr, "goev_reactor_new: %s (%s)\n", strerror(-rc), goev_last_error());
        return 1;
    }
    /* The pool and the first requests are set up before the reactor runs,
     * on this thread, which then runs the poller. */
    rc = goev_pool_new(&cl.pool, goev_reactor_poller(cl.r, 0), cl.addr, &po);
    if (rc < 0) {
        fprintf(stderr, "goev_pool_new %s: %s\n", cl.addr, strerror(-rc));
        goev_reactor_free(cl.r);
        return 1;
    }
    cl.lat = calloc((size_t)cl.total, sizeof *cl.lat);
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    if (!cl.lat || !slots) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (long i = 0; i < conc; i++) {
        goev_pool_req_init(&slots[i].req);
        slots[i].req.user = &slots[i];
        slots[i].cl = &cl;
        next_request(&slots[i]);
    }
    rc = goev_reactor_run(cl.r);
    struct goev_pool_stats st;
    goev_pool_stats_get(cl.pool, &st);
    goev_pool_free(cl.pool);
    goev_reactor_free(cl.r);

    qsort(cl.lat, (size_t)cl.finished, sizeof *cl.lat, cmp_u32);
    printf("requests=%ld errors=%ld created=%llu max_live=%u\n", cl.finished, cl.errors,
           (unsigned long long)st.created, st.peak);
    printf("latency_us p50=%u p90=%u p99=%u max=%u\n", pct(cl.lat, cl.finished, 0.50),
           pct(cl.lat, cl.finished, 0.90), pct(cl.lat, cl.finished, 0.99),
           cl.finished ? cl.lat[cl.finished - 1] : 0);
    free(cl.lat);
    free(slots);
    return rc < 0 || cl.errors || cl.finished != cl.total;
}
