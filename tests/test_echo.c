/* test_echo.c - byte streams through a goev server over loopback: echo with
 * many clients, pipelining, the unconsumed-tail rule, half-close, peer reset
 * while output is queued, and back-pressure against a slow reader. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- server scaffold ---------------------------------------------------- */

struct srv;

struct sconn {
    goev_handler h;
    struct srv *s;
    struct sconn *next;     /* all conns, freed at the end so a second
                               on_close is detected instead of a crash */
    int opened, closed, reason;
    /* line protocol */
    uint64_t next_line;
    char *tail;
    size_t tail_len, tail_cap;
    /* writers */
    goev_timer t;
    uint64_t written;
    int paused;
};

struct srv {
    goev_reactor *r;
    goev_acceptor *a;
    int port;
    const struct goev_handler_ops *ops;
    pthread_mutex_t mu;
    struct sconn *conns;
    int opens, closes, neg_closes, last_reason;
    /* test-specific shared counters */
    uint64_t lines, tails_kept, reads_while_paused, pauses, drains;
    uint64_t max_pending, max_read, pending_now, after_close;
    int eof_mode;           /* half-close: 0 = on_eof NULL ops, 1 = BYE */
};

static goev_handler *srv_new_conn(goev_poller *p, void *arg)
{
    struct srv *s = arg;
    struct sconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, s->ops);
    goev_timer_init(&c->t);
    c->s = s;
    pthread_mutex_lock(&s->mu);
    c->next = s->conns;
    s->conns = c;
    pthread_mutex_unlock(&s->mu);
    return &c->h;
}

static int srv_on_open(goev_handler *h)
{
    struct sconn *c = (struct sconn *)h;
    TU_CHECK(!c->opened, "on_open twice");
    c->opened = 1;
    TU_INC(&c->s->opens);
    return 0;
}

static void srv_on_close(goev_handler *h, int reason)
{
    struct sconn *c = (struct sconn *)h;
    TU_CHECK(!c->closed, "on_close twice (reason %d then %d)", c->reason, reason);
    c->closed++;
    c->reason = reason;
    TU_STORE(&c->s->last_reason, reason);
    if (reason < 0)
        TU_INC(&c->s->neg_closes);
    TU_INC(&c->s->closes);
}

static void srv_start(struct srv *s, int pollers, const struct goev_handler_ops *ops)
{
    pthread_mutex_init(&s->mu, NULL);
    s->ops = ops;
    s->r = tu_reactor_new(pollers);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", NULL, srv_new_conn, s);
    cr_assert(rc == 0, "goev_acceptor_new: %s", strerror(-rc));
    s->port = goev_acceptor_port(s->a);
    cr_assert(s->port > 0);
    tu_reactor_start(s->r);
}

static void srv_stop(struct srv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    cr_assert_eq(TU_LOAD(&s->opens), TU_LOAD(&s->closes), "%d opened, %d closed",
                 s->opens, s->closes);
    while (s->conns) {
        struct sconn *c = s->conns;
        s->conns = c->next;
        free(c->tail);
        free(c);
    }
    pthread_mutex_destroy(&s->mu);
}

static void init_test(void)
{
    /* A library send without MSG_NOSIGNAL must kill the test, not pass. */
    signal(SIGPIPE, SIG_DFL);
}

/* ---- echo with many clients -------------------------------------------- */

static ssize_t echo_on_read(goev_handler *h, const char *data, size_t len)
{
    int rc = goev_write(h, data, len);
    TU_CHECK(rc == 0, "goev_write: %d", rc);
    return rc == 0 ? (ssize_t)len : rc;
}

static const struct goev_handler_ops echo_ops = {
    .on_open = srv_on_open,
    .on_read = echo_on_read,
    .on_close = srv_on_close,
};

#define ECHO_THREADS 5
#define ECHO_CONNS_PER_THREAD 10
#define ECHO_WINDOW (1u << 20)

struct econ {
    int fd;
    uint64_t seed, total, sent, recvd, chunk_left;
    int shut, eof;
};

struct eclient {
    pthread_t th;
    int port, idx;
};

/* One client thread drives its connections with poll(), writing random-sized
 * chunks and reading the echo concurrently, as a real peer would. */
static void *echo_client(void *arg)
{
    struct eclient *ec = arg;
    struct econ cs[ECHO_CONNS_PER_THREAD];
    struct pollfd pf[ECHO_CONNS_PER_THREAD];
    struct tu_rng g;
    tu_rng_seed(&g, 1000 + (uint64_t)ec->idx);
    static __thread char buf[65536];
    for (int i = 0; i < ECHO_CONNS_PER_THREAD; i++) {
        cs[i] = (struct econ){0};
        cs[i].fd = tu_connect_tcp4(ec->port);
        TU_CHECK(cs[i].fd >= 0, "connect: %s", strerror(errno));
        if (cs[i].fd < 0)
            return NULL;
        fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
        cs[i].seed = (uint64_t)ec->idx * 100 + (uint64_t)i + 1;
        cs[i].total = tu_rng_range(&g, 64 << 10, 512 << 10);
    }
    uint64_t deadline = tu_now_ms() + 15000;
    int done = 0;
    while (done < ECHO_CONNS_PER_THREAD) {
        if (tu_now_ms() > deadline) {
            TU_CHECK(0, "echo client %d: timed out", ec->idx);
            break;
        }
        for (int i = 0; i < ECHO_CONNS_PER_THREAD; i++) {
            struct econ *c = &cs[i];
            pf[i].fd = c->eof ? -1 : c->fd;
            pf[i].events = POLLIN;
            if (c->sent < c->total && c->sent - c->recvd < ECHO_WINDOW)
                pf[i].events |= POLLOUT;
        }
        if (poll(pf, ECHO_CONNS_PER_THREAD, 1000) < 0)
            continue;
        for (int i = 0; i < ECHO_CONNS_PER_THREAD; i++) {
            struct econ *c = &cs[i];
            if (c->eof)
                continue;
            if ((pf[i].revents & POLLOUT) && c->sent < c->total) {
                if (!c->chunk_left)
                    c->chunk_left = tu_rng_range(&g, 1, 65536);
                size_t n = c->chunk_left;
                if (n > c->total - c->sent)
                    n = c->total - c->sent;
                tu_stream_fill(c->seed, c->sent, buf, n);
                ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL);
                if (w > 0) {
                    c->sent += (uint64_t)w;
                    c->chunk_left -= (uint64_t)w;
                } else if (w < 0 && errno != EAGAIN) {
                    TU_CHECK(0, "send: %s", strerror(errno));
                    c->eof = 1, done++;
                    continue;
                }
                /* Half-close when done: the server must flush the echo and
                 * then close, so EOF lands exactly after the last byte. */
                if (c->sent == c->total && !c->shut) {
                    shutdown(c->fd, SHUT_WR);
                    c->shut = 1;
                }
            }
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t n = recv(c->fd, buf, sizeof buf, 0);
                if (n > 0) {
                    ptrdiff_t bad = tu_stream_check(c->seed, c->recvd, buf, (size_t)n);
                    TU_CHECK(bad < 0, "conn %d/%d: echoed byte %llu differs", ec->idx, i,
                             (unsigned long long)(c->recvd + (uint64_t)bad));
                    c->recvd += (uint64_t)n;
                    TU_CHECK(c->recvd <= c->sent, "echo of bytes never sent");
                } else if (n == 0) {
                    TU_CHECK(c->recvd == c->total, "conn %d/%d: EOF after %llu of %llu bytes",
                             ec->idx, i, (unsigned long long)c->recvd,
                             (unsigned long long)c->total);
                    c->eof = 1, done++;
                } else if (errno != EAGAIN) {
                    TU_CHECK(0, "recv: %s", strerror(errno));
                    c->eof = 1, done++;
                }
            }
        }
    }
    for (int i = 0; i < ECHO_CONNS_PER_THREAD; i++)
        close(cs[i].fd);
    return NULL;
}

Test(echo, many_clients, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 2, &echo_ops);
    struct eclient ec[ECHO_THREADS];
    for (int i = 0; i < ECHO_THREADS; i++) {
        ec[i] = (struct eclient){.port = s.port, .idx = i};
        cr_assert(pthread_create(&ec[i].th, NULL, echo_client, &ec[i]) == 0);
    }
    for (int i = 0; i < ECHO_THREADS; i++)
        pthread_join(ec[i].th, NULL);
    tu_assert_no_failures();
    int n = ECHO_THREADS * ECHO_CONNS_PER_THREAD;
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == n, 5000), "%d of %d server conns closed",
              s.closes, n);
    cr_assert_eq(s.opens, n);
    /* The clients half-closed: a graceful close, not an error. */
    cr_assert_eq(s.neg_closes, 0, "last close reason %d", s.last_reason);
    struct goev_stats st;
    cr_assert(goev_stats_get(s.r, -1, &st) == 0);
    cr_assert_eq(st.accepted, (uint64_t)n);
    cr_assert_eq(st.conns, 0);
    cr_assert_eq(st.bytes_in, st.bytes_out);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- line protocol: pipelining and the unconsumed tail ------------------ */

/* Line n is "n:len:payload\n", payload derived from n, so the server can
 * check every line in full without knowing how the client split them. */
static size_t make_line(char *buf, uint64_t n, size_t len)
{
    int k = sprintf(buf, "%llu:%zu:", (unsigned long long)n, len);
    for (size_t i = 0; i < len; i++)
        buf[k + (int)i] = (char)('a' + tu_stream_byte(n, i) % 26);
    buf[(size_t)k + len] = '\n';
    return (size_t)k + len + 1;
}

static void line_handle(struct sconn *c, const char *line, size_t n)
{
    unsigned long long num;
    size_t len;
    int off = 0;
    char head[64];
    size_t hl = n < sizeof head - 1 ? n : sizeof head - 1;
    memcpy(head, line, hl);
    head[hl] = 0;
    if (sscanf(head, "%llu:%zu:%n", &num, &len, &off) != 2 || off == 0) {
        TU_CHECK(0, "malformed line head '%.20s'", head);
        return;
    }
    TU_CHECK(num == c->next_line, "line %llu arrived, expected %llu", num,
             (unsigned long long)c->next_line);
    TU_CHECK((size_t)off + len == n, "line %llu: length %zu, payload %zu", num, len,
             n - (size_t)off);
    for (size_t i = 0; i < len && (size_t)off + i < n; i++)
        if (line[off + (int)i] != (char)('a' + tu_stream_byte(num, i) % 26)) {
            TU_CHECK(0, "line %llu: byte %zu corrupt", num, i);
            break;
        }
    c->next_line = num + 1;
    TU_INC(&c->s->lines);
    char ack[32];
    int k = sprintf(ack, "ACK %llu\n", num);
    int rc = goev_write(&c->h, ack, (size_t)k);
    TU_CHECK(rc == 0, "goev_write ack: %d", rc);
}

static ssize_t line_on_read(goev_handler *h, const char *data, size_t len)
{
    struct sconn *c = (struct sconn *)h;
    /* The kept tail must come back first, byte for byte. */
    if (c->tail_len) {
        TU_CHECK(len >= c->tail_len && memcmp(data, c->tail, c->tail_len) == 0,
                 "kept tail of %zu bytes not re-presented (got %zu bytes)", c->tail_len, len);
    }
    size_t used = 0;
    for (;;) {
        const char *nl = memchr(data + used, '\n', len - used);
        if (!nl)
            break;
        line_handle(c, data + used, (size_t)(nl - (data + used)));
        used = (size_t)(nl - data) + 1;
    }
    c->tail_len = len - used;
    if (c->tail_len) {
        TU_INC(&c->s->tails_kept);
        if (c->tail_cap < c->tail_len) {
            c->tail_cap = c->tail_len * 2;
            c->tail = realloc(c->tail, c->tail_cap);
        }
        memcpy(c->tail, data + used, c->tail_len);
    }
    return (ssize_t)used;
}

static const struct goev_handler_ops line_ops = {
    .on_open = srv_on_open,
    .on_read = line_on_read,
    .on_close = srv_on_close,
};

static void read_acks(int fd, uint64_t n)
{
    /* Acks are "ACK k\n": read them all and check the order. */
    size_t cap = (size_t)n * 24 + 64, have = 0;
    char *buf = malloc(cap);
    uint64_t next = 0;
    size_t pos = 0;
    while (next < n) {
        ssize_t r = read(fd, buf + have, cap - have);
        /* goev_reactor_new on io_uring leaves task work aimed at this
         * thread (the probe ring's teardown), which fails a blocking read
         * with SO_RCVTIMEO once with EINTR - late when the machine is
         * busy (see tu_connect_fd). */
        if (r < 0 && errno == EINTR)
            continue;
        cr_assert(r > 0, "reading acks: %s after %llu of %llu",
                  r == 0 ? "EOF" : strerror(errno), (unsigned long long)next,
                  (unsigned long long)n);
        have += (size_t)r;
        char *nl;
        while ((nl = memchr(buf + pos, '\n', have - pos)) != NULL) {
            unsigned long long k;
            cr_assert(sscanf(buf + pos, "ACK %llu", &k) == 1, "bad ack");
            cr_assert_eq(k, next, "ack %llu arrived, expected %llu", k,
                         (unsigned long long)next);
            next++;
            pos = (size_t)(nl - buf) + 1;
        }
    }
    free(buf);
}

Test(echo, pipelining, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 1, &line_ops);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    enum { N = 4000, BATCH = 200 };
    char *out = malloc(BATCH * 64);
    /* Send every request before reading any response. */
    for (uint64_t i = 0; i < N; i += BATCH) {
        size_t len = 0;
        for (uint64_t j = i; j < i + BATCH; j++)
            len += make_line(out + len, j, j % 17);
        cr_assert(tu_write_all(fd, out, len) == 0);
    }
    free(out);
    read_acks(fd, N);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.lines) == N, 2000), "server saw %llu lines",
              (unsigned long long)s.lines);
    struct goev_stats st;
    cr_assert(goev_stats_get(s.r, 0, &st) == 0);
    /* Responses of one pass leave in one system call, not one per request. */
    cr_assert(st.sys_write < N / 4, "%llu write calls for %d pipelined responses",
              (unsigned long long)st.sys_write, N);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(echo, unconsumed_tail, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 1, &line_ops);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct tu_rng g;
    tu_rng_seed(&g, 77);
    enum { N = 600 };
    size_t cap = (size_t)N * 3100, len = 0;
    char *stream = malloc(cap);
    for (uint64_t i = 0; i < N; i++)
        len += make_line(stream + len, i, (size_t)tu_rng_range(&g, 0, 3000));
    /* Cut the stream at random points, pausing now and then so the pieces
     * reach the server in separate reads and lines straddle them. */
    for (size_t off = 0; off < len;) {
        size_t n = (size_t)tu_rng_range(&g, 1, 700);
        if (n > len - off)
            n = len - off;
        cr_assert(tu_write_all(fd, stream + off, n) == 0);
        off += n;
        if (tu_rng_range(&g, 0, 7) == 0)
            usleep(500);
    }
    free(stream);
    read_acks(fd, N);
    cr_assert_eq(TU_LOAD(&s.lines), N);
    cr_assert(TU_LOAD(&s.tails_kept) > 10, "only %llu reads kept a tail: the test did not "
              "exercise the rule", (unsigned long long)s.tails_kept);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- half-close ---------------------------------------------------------- */

static int bye_on_eof(goev_handler *h)
{
    /* Half-open: the peer stopped sending; we may still write. */
    int rc = goev_write(h, "BYE\n", 4);
    TU_CHECK(rc == 0, "goev_write after peer EOF: %d", rc);
    goev_close(h);
    return 0;
}

static const struct goev_handler_ops echo_bye_ops = {
    .on_open = srv_on_open,
    .on_read = echo_on_read,
    .on_eof = bye_on_eof,
    .on_close = srv_on_close,
};

static void half_close_run(const struct goev_handler_ops *ops, const char *trailer)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 1, ops);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    const size_t total = 1500000, tl = strlen(trailer);
    char *buf = malloc(total + tl + 16);
    tu_stream_fill(9, 0, buf, total);
    struct tu_rng g;
    tu_rng_seed(&g, 9);
    /* Send everything without reading: the echo piles up in the server's
     * queue and must still all be sent before the close. */
    for (size_t off = 0; off < total;) {
        size_t n = (size_t)tu_rng_range(&g, 1, 65536);
        if (n > total - off)
            n = total - off;
        cr_assert(tu_write_all(fd, buf + off, n) == 0);
        off += n;
    }
    cr_assert(shutdown(fd, SHUT_WR) == 0);
    memset(buf, 0, total + tl + 16);
    ssize_t got = tu_read_to_eof(fd, buf, total + tl + 16);
    cr_assert(got >= 0, "read: %s", strerror((int)-got));
    cr_assert_eq((size_t)got, total + tl, "got %zd bytes before EOF, want %zu", got, total + tl);
    ptrdiff_t bad = tu_stream_check(9, 0, buf, total);
    cr_assert(bad < 0, "echo differs at byte %td", bad);
    cr_assert(memcmp(buf + total, trailer, tl) == 0, "trailer missing");
    free(buf);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.last_reason, 0, "close reason %d", s.last_reason);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(echo, half_close_graceful, .init = init_test, .timeout = TU_TIMEOUT)
{
    half_close_run(&echo_ops, "");
}

Test(echo, half_close_write_after_eof, .init = init_test, .timeout = TU_TIMEOUT)
{
    half_close_run(&echo_bye_ops, "BYE\n");
}

/* ---- peer reset while megabytes are queued ------------------------------ */

#define FLOOD_CHUNK (256u << 10)
#define FLOOD_LIMIT (4u << 20)

static void flood(struct sconn *c)
{
    static char chunk[FLOOD_CHUNK];
    while (goev_pending(&c->h) < FLOOD_LIMIT) {
        int rc = goev_write(&c->h, chunk, sizeof chunk);
        TU_CHECK(rc == 0, "goev_write: %d", rc);
        if (rc)
            return;
        c->written += sizeof chunk;
    }
    TU_STORE(&c->s->pending_now, (uint64_t)goev_pending(&c->h));
}

static int flood_on_open(goev_handler *h)
{
    struct sconn *c = (struct sconn *)h;
    srv_on_open(h);
    int rc = goev_timer_start(goev_handler_poller(h), h, &c->t, 2, 2);
    TU_CHECK(rc == 0, "goev_timer_start: %d", rc);
    flood(c);
    return 0;
}

static int flood_on_timeout(goev_handler *h, goev_timer *t)
{
    struct sconn *c = (struct sconn *)h;
    TU_CHECK(!c->closed, "on_timeout after on_close");
    flood(c);
    return 0;
}

static ssize_t discard_on_read(goev_handler *h, const char *data, size_t len)
{
    return (ssize_t)len;
}

static const struct goev_handler_ops flood_ops = {
    .on_open = flood_on_open,
    .on_read = discard_on_read,
    .on_timeout = flood_on_timeout,
    .on_close = srv_on_close,
};

Test(echo, peer_reset_mid_write, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 1, &flood_ops);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    /* Wait until the socket buffers are full and megabytes wait in the
     * library's queue, then reset the connection under it. */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.pending_now) > (1u << 20), 5000),
              "server never had a megabyte queued (%llu)", (unsigned long long)s.pending_now);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    cr_assert(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000), "server never saw the reset");
    int reason = TU_LOAD(&s.last_reason);
    cr_assert(reason < 0, "on_close reason %d after a reset", reason);
    /* Leave time for a second on_close or a late timer to show up. */
    tu_sleep_ms(100);
    cr_assert_eq(TU_LOAD(&s.closes), 1);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- slow reader and back-pressure ------------------------------------- */

#define BP_LIMIT (512u << 10)

static ssize_t bp_on_read(goev_handler *h, const char *data, size_t len)
{
    struct sconn *c = (struct sconn *)h;
    struct srv *s = c->s;
    TU_CHECK(!c->paused, "on_read while paused");
    if (c->paused)
        TU_INC(&s->reads_while_paused);
    if (len > TU_LOAD(&s->max_read))
        TU_STORE(&s->max_read, (uint64_t)len);
    int rc = goev_write(h, data, len);
    TU_CHECK(rc == 0, "goev_write: %d", rc);
    size_t pend = goev_pending(h);
    if (pend > TU_LOAD(&s->max_pending))
        TU_STORE(&s->max_pending, (uint64_t)pend);
    if (pend >= BP_LIMIT && !c->paused) {
        rc = goev_pause_read(h);
        TU_CHECK(rc == 0, "goev_pause_read: %d", rc);
        c->paused = 1;
        TU_INC(&s->pauses);
    }
    return (ssize_t)len;
}

static int bp_on_drained(goev_handler *h)
{
    struct sconn *c = (struct sconn *)h;
    TU_CHECK(goev_pending(h) == 0, "on_drained with %zu bytes pending", goev_pending(h));
    TU_INC(&c->s->drains);
    if (c->paused) {
        c->paused = 0;
        int rc = goev_resume_read(h);
        TU_CHECK(rc == 0, "goev_resume_read: %d", rc);
    }
    return 0;
}

static const struct goev_handler_ops bp_ops = {
    .on_open = srv_on_open,
    .on_read = bp_on_read,
    .on_drained = bp_on_drained,
    .on_close = srv_on_close,
};

struct bp_writer {
    int fd;
    size_t total;
    int rc;
};

static void *bp_write_thread(void *arg)
{
    struct bp_writer *w = arg;
    char buf[65536];
    for (size_t off = 0; off < w->total;) {
        size_t n = w->total - off < sizeof buf ? w->total - off : sizeof buf;
        tu_stream_fill(31, off, buf, n);
        if ((w->rc = tu_write_all(w->fd, buf, n)) != 0)
            return NULL;
        off += n;
    }
    shutdown(w->fd, SHUT_WR);
    return NULL;
}

Test(echo, slow_reader_backpressure, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, 1, &bp_ops);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    /* Small kernel buffers make the server's queue, not the kernel's,
     * absorb the difference. */
    int sz = 64 << 10;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    struct bp_writer w = {.fd = fd, .total = 24u << 20};
    pthread_t th;
    cr_assert(pthread_create(&th, NULL, bp_write_thread, &w) == 0);
    /* Read nothing for a while, then slowly, then at full speed. */
    tu_sleep_ms(300);
    char buf[65536];
    size_t got = 0;
    while (got < w.total) {
        size_t want = got < (4u << 20) ? 16384 : sizeof buf;
        ssize_t n = read(fd, buf, want);
        cr_assert(n > 0, "read after %zu bytes: %s", got, n == 0 ? "EOF" : strerror(errno));
        ptrdiff_t bad = tu_stream_check(31, got, buf, (size_t)n);
        cr_assert(bad < 0, "echo differs at byte %zu", got + (size_t)bad);
        got += (size_t)n;
        if (got < (4u << 20))
            usleep(200);
    }
    pthread_join(th, NULL);
    cr_assert_eq(w.rc, 0, "client write: %s", strerror(-w.rc));
    size_t extra = 0;
    cr_assert_eq(tu_wait_eof(fd, 5000, &extra), 1, "no EOF after the echo");
    cr_assert_eq(extra, 0);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert(s.pauses > 0, "the reader never fell behind enough to pause");
    cr_assert(s.drains > 0, "on_drained never fired");
    /* Pausing bounds the queue: at most the limit plus one delivery. */
    cr_assert(s.max_pending <= BP_LIMIT + s.max_read, "pending reached %llu (limit %u + %llu)",
              (unsigned long long)s.max_pending, BP_LIMIT, (unsigned long long)s.max_read);
    cr_assert_eq(s.reads_while_paused, 0);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}
