/* test_stress.c - the paths where a completion backend can go wrong, run on
 * both backends through the public API only: a tiny read-buffer ring shared
 * by many busy connections, closing connections with reads, sends and
 * accepts in flight, closing while cross-thread writes are queued, ten
 * thousand connections opened and closed, and accepting again after the
 * descriptor table ran full. */
#include "testutil.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static bool on_uring(goev_reactor *r)
{
    return strcmp(goev_backend_name(r), "io_uring") == 0;
}

static void init_test(void)
{
    /* A send without MSG_NOSIGNAL must kill the test, not pass it. */
    signal(SIGPIPE, SIG_DFL);
}

/* ---- a small server scaffold ----------------------------------------------- */

#define MAX_CONNS 64

struct srv;

struct conn {
    goev_handler h;
    struct srv *s;
    int idx;            /* order of on_open, -1 before */
    int closed, reason;
    uint64_t bytes_in;
    goev_conn_id id;
};

struct srv {
    goev_reactor *r;
    goev_acceptor *a;
    int port;
    const struct goev_handler_ops *ops;
    pthread_mutex_t mu;
    struct conn *tab[MAX_CONNS];    /* the first MAX_CONNS opened */
    struct conn **all;              /* every handler made, freed at the end */
    size_t nall, capall;
    int opens, closes, late_callbacks;
    uint64_t bytes_in;
};

static goev_handler *srv_new_conn(goev_poller *p, void *arg)
{
    (void)p;
    struct srv *s = arg;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, s->ops);
    c->s = s;
    c->idx = -1;
    pthread_mutex_lock(&s->mu);
    if (s->nall == s->capall) {
        size_t cap = s->capall ? 2 * s->capall : 256;
        struct conn **n = realloc(s->all, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&s->mu);
            free(c);
            return NULL;
        }
        s->all = n;
        s->capall = cap;
    }
    s->all[s->nall++] = c;
    pthread_mutex_unlock(&s->mu);
    return &c->h;
}

/* Every callback goes through here: none may come after on_close. */
static struct conn *live(goev_handler *h, const char *what)
{
    struct conn *c = (struct conn *)h;
    if (c->closed) {
        TU_INC(&c->s->late_callbacks);
        TU_CHECK(0, "%s after on_close (conn %d)", what, c->idx);
    }
    return c;
}

static int srv_on_open(goev_handler *h)
{
    struct conn *c = live(h, "on_open");
    struct srv *s = c->s;
    c->id = goev_handler_id(h);
    /* Numbered and counted under the lock, counted after tab[] is set:
     * with several pollers, two could otherwise take the same number, and
     * the test thread reads tab[k] once it sees opens > k. */
    pthread_mutex_lock(&s->mu);
    c->idx = TU_LOAD(&s->opens);
    if (c->idx < MAX_CONNS)
        s->tab[c->idx] = c;
    TU_INC(&s->opens);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void srv_on_close(goev_handler *h, int reason)
{
    struct conn *c = (struct conn *)h;
    TU_CHECK(!c->closed, "on_close twice (conn %d: %d then %d)", c->idx, c->reason, reason);
    c->closed = 1;
    c->reason = reason;
    TU_INC(&c->s->closes);
}

static void srv_start_opts(struct srv *s, const struct goev_handler_ops *ops,
                           const struct goev_reactor_opts *o, const struct goev_acceptor_opts *ao)
{
    pthread_mutex_init(&s->mu, NULL);
    s->ops = ops;
    s->r = tu_reactor_new_opts(o);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", ao, srv_new_conn, s);
    cr_assert(rc == 0, "goev_acceptor_new: %s", strerror(-rc));
    s->port = goev_acceptor_port(s->a);
    cr_assert(s->port > 0);
    tu_reactor_start(s->r);
}

static void srv_start(struct srv *s, const struct goev_handler_ops *ops, int pollers)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = pollers;
    srv_start_opts(s, ops, &o, NULL);
}

/* Stop and free the reactor; the handlers stay for inspection. */
static void srv_halt(struct srv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    cr_assert_eq(TU_LOAD(&s->opens), TU_LOAD(&s->closes), "%d opened, %d closed", s->opens,
                 s->closes);
}

static void srv_release(struct srv *s)
{
    for (size_t i = 0; i < s->nall; i++)
        free(s->all[i]);
    free(s->all);
    pthread_mutex_destroy(&s->mu);
}

static void srv_stop(struct srv *s)
{
    srv_halt(s);
    srv_release(s);
}

static struct goev_stats stats(struct srv *s)
{
    struct goev_stats st;
    cr_assert_eq(goev_stats_get(s->r, -1, &st), 0);
    return st;
}

static ssize_t echo_on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = live(h, "on_read");
    TU_ADD(&c->bytes_in, len);     /* the test thread watches it */
    TU_ADD(&c->s->bytes_in, len);
    int rc = goev_write(h, data, len);
    TU_CHECK(rc == 0, "goev_write: %d", rc);
    return rc == 0 ? (ssize_t)len : rc;
}

static const struct goev_handler_ops echo_ops = {
    .on_open = srv_on_open,
    .on_read = echo_on_read,
    .on_close = srv_on_close,
};

static int nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---- a four-buffer ring shared by many busy connections ---------------------- */

#define EX_CONNS 32
#define EX_BYTES (384u << 10)
#define EX_WINDOW (128u << 10)

struct ex_client {
    int fd;
    uint64_t seed;
    size_t sent, got;
};

Test(stress, bufring_exhaustion_keeps_order, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 1;
    o.read_bufs = 4;            /* io_uring: four 4 KiB buffers for 32 streams */
    o.read_buf_size = 4096;
    struct srv s = {0};
    srv_start_opts(&s, &echo_ops, &o, NULL);

    struct ex_client cl[EX_CONNS];
    struct pollfd pf[EX_CONNS];
    for (int i = 0; i < EX_CONNS; i++) {
        cl[i] = (struct ex_client){ .fd = tu_connect_tcp4(s.port), .seed = 7000 + (uint64_t)i };
        cr_assert(cl[i].fd >= 0, "connect: %s", strerror(errno));
        cr_assert(nonblock(cl[i].fd) == 0);
    }
    static char buf[65536];
    uint64_t deadline = tu_now_ms() + 15000;
    int done = 0;
    while (done < EX_CONNS) {
        cr_assert(tu_now_ms() < deadline, "only %d of %d streams came back in time", done,
                  EX_CONNS);
        for (int i = 0; i < EX_CONNS; i++) {
            pf[i].fd = cl[i].got < EX_BYTES ? cl[i].fd : -1;
            pf[i].events = POLLIN;
            if (cl[i].sent < EX_BYTES && cl[i].sent - cl[i].got < EX_WINDOW)
                pf[i].events |= POLLOUT;
        }
        int n = poll(pf, EX_CONNS, 1000);
        cr_assert(n >= 0, "poll: %s", strerror(errno));
        for (int i = 0; i < EX_CONNS; i++) {
            struct ex_client *c = &cl[i];
            if (pf[i].revents & POLLOUT) {
                size_t want = EX_BYTES - c->sent;
                size_t room = EX_WINDOW - (c->sent - c->got);
                if (want > room)
                    want = room;
                if (want > 16384)
                    want = 16384;
                tu_stream_fill(c->seed, c->sent, buf, want);
                ssize_t w = write(c->fd, buf, want);
                cr_assert(w > 0 || errno == EAGAIN, "write: %s", strerror(errno));
                if (w > 0)
                    c->sent += (size_t)w;
            }
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                cr_assert(r > 0 || (r < 0 && errno == EAGAIN), "stream %d: read after %zu: %s",
                          i, c->got, r == 0 ? "EOF" : strerror(errno));
                if (r > 0) {
                    ptrdiff_t bad = tu_stream_check(c->seed, c->got, buf, (size_t)r);
                    cr_assert(bad < 0, "stream %d differs at byte %zu", i, c->got + (size_t)bad);
                    c->got += (size_t)r;
                    if (c->got == EX_BYTES)
                        done++;
                }
            }
        }
    }
    for (int i = 0; i < EX_CONNS; i++)
        close(cl[i].fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == EX_CONNS, 5000), "%d of %d closed", s.closes,
              EX_CONNS);
    struct goev_stats st = stats(&s);
    cr_assert_eq(st.bytes_in, (uint64_t)EX_CONNS * EX_BYTES);
    cr_assert_eq(st.bytes_out, (uint64_t)EX_CONNS * EX_BYTES);
    cr_assert_eq(st.conns, 0);
    /* The point of the test: the ring really ran dry, and nobody died. */
    if (on_uring(s.r))
        cr_assert(st.enobufs > 0, "four buffers never ran out (%llu CQEs)",
                  (unsigned long long)st.cqes);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- closing with reads, sends and accepts in flight ---------------------------- */

/* Groups by open order: 0 idle (a read armed), 1 blocked on a peer that
 * never reads (a send in flight), 2 receiving a stream, 3 left open for the
 * reactor stop to close. */
#define FL_CONNS 24
#define FL_BLOCK_BYTES (8u << 20)

static int fl_on_open(goev_handler *h)
{
    srv_on_open(h);
    struct conn *c = (struct conn *)h;
    if (c->idx % 4 == 1) {
        static char junk[1 << 16];
        for (size_t off = 0; off < FL_BLOCK_BYTES; off += sizeof junk) {
            int rc = goev_write(h, junk, sizeof junk);
            TU_CHECK(rc == 0, "goev_write: %d", rc);
        }
    }
    return 0;
}

static ssize_t fl_on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = live(h, "on_read");
    (void)data;
    TU_ADD(&c->bytes_in, len);     /* the test thread watches it */
    TU_ADD(&c->s->bytes_in, len);
    return (ssize_t)len;
}

static int fl_on_drained(goev_handler *h)
{
    live(h, "on_drained");
    return 0;
}

static int fl_on_eof(goev_handler *h)
{
    live(h, "on_eof");
    return -1;
}

static const struct goev_handler_ops fl_ops = {
    .on_open = fl_on_open,
    .on_read = fl_on_read,
    .on_eof = fl_on_eof,
    .on_drained = fl_on_drained,
    .on_close = srv_on_close,
};

struct fl_pending {
    struct srv *s;
    size_t pending[FL_CONNS];
};

static void fl_probe(goev_poller *p, void *arg)
{
    (void)p;
    struct fl_pending *q = arg;
    for (int i = 0; i < FL_CONNS; i++)
        q->pending[i] = q->s->tab[i] && !q->s->tab[i]->closed ? goev_pending(&q->s->tab[i]->h) : 0;
}

static void fl_close(goev_poller *p, void *arg)
{
    (void)p;
    struct srv *s = arg;
    for (int i = 0; i < FL_CONNS; i++) {
        struct conn *c = s->tab[i];
        if (c->idx % 4 == 0)
            cr_assert_eq(goev_close(&c->h), 0);
        else if (c->idx % 4 != 3)
            cr_assert_eq(goev_abort(&c->h), 0);
    }
}

struct fl_writer {
    int fd;
    int stop;
    uint64_t sent;
};

static void *fl_write_thread(void *arg)
{
    struct fl_writer *w = arg;
    char buf[8192];
    memset(buf, 'w', sizeof buf);
    while (!TU_LOAD(&w->stop)) {
        ssize_t n = send(w->fd, buf, sizeof buf, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;   /* SO_SNDTIMEO: check stop and go on */
            break;          /* EPIPE / ECONNRESET once the server is gone */
        }
        TU_ADD(&w->sent, (uint64_t)n);
    }
    return NULL;
}

Test(stress, close_with_ops_in_flight, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, &fl_ops, 1);
    int cfd[FL_CONNS];
    struct fl_writer wr[FL_CONNS];
    pthread_t th[FL_CONNS];
    memset(wr, 0, sizeof wr);
    for (int i = 0; i < FL_CONNS; i++) {
        cfd[i] = tu_connect_tcp4(s.port);
        cr_assert(cfd[i] >= 0, "connect %d: %s", i, strerror(errno));
        /* Open in order, so that the server's idx is the client's i. */
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == i + 1, 5000));
        if (i % 4 == 1) {
            int sz = 4096;  /* keep the blocked send blocked */
            setsockopt(cfd[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        }
        if (i % 4 == 2) {
            tu_set_io_timeout(cfd[i], 50);
            wr[i].fd = cfd[i];
            cr_assert(pthread_create(&th[i], NULL, fl_write_thread, &wr[i]) == 0);
        }
    }
    /* Wait until the senders are stuck and the streams flow. */
    struct fl_pending q = { .s = &s };
    goev_poller *p = goev_reactor_poller(s.r, 0);
    bool ready = false;
    for (uint64_t end = tu_now_ms() + 5000; !ready && tu_now_ms() < end; tu_sleep_ms(5)) {
        tu_run_on(p, fl_probe, &q);
        ready = true;
        for (int i = 0; i < FL_CONNS; i++) {
            if (i % 4 == 1 && q.pending[i] == 0)
                ready = false;
            if (i % 4 == 2 && TU_LOAD(&s.tab[i]->bytes_in) < 65536)
                ready = false;
        }
    }
    cr_assert(ready, "the connections never reached the state under test");
    uint64_t in_before = TU_LOAD(&s.bytes_in);
    tu_run_on(p, fl_close, &s);
    int expect = FL_CONNS - FL_CONNS / 4;
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == expect, 5000), "%d of %d closed", s.closes,
              expect);
    /* Peers see the end: EOF for the graceful close, EOF or reset for an
     * abort (data still unread on our side turns the FIN into a RST).  The
     * blocked ones would first have to drain megabytes through a 4 KiB
     * window; their closed fds show in the final descriptor count. */
    for (int i = 0; i < FL_CONNS; i++) {
        if (i % 4 == 3 || i % 4 == 1)
            continue;
        size_t junk;
        int rc = tu_wait_eof(cfd[i], 5000, &junk);
        cr_assert(rc == 1 || rc == -ECONNRESET, "conn %d: no end seen (%d)", i, rc);
    }
    for (int i = 0; i < FL_CONNS; i++)
        if (i % 4 == 2) {
            TU_STORE(&wr[i].stop, 1);
            pthread_join(th[i], NULL);
        }
    /* Data kept arriving for the streaming ones: none of it may reach a
     * closed handler (live() counts that). */
    cr_assert(TU_LOAD(&s.bytes_in) >= in_before);
    for (int i = 0; i < FL_CONNS; i++) {
        struct conn *c = s.tab[i];
        int want = i % 4 == 0 ? 0 : i % 4 == 3 ? 1 : -ECONNABORTED;
        if (want != 1)
            cr_assert_eq(c->reason, want, "conn %d closed with %d", i, c->reason);
    }
    /* The last group is still open, with a read armed, as is the accept. */
    srv_halt(&s);
    for (int i = 3; i < FL_CONNS; i += 4)
        cr_assert_eq(s.tab[i]->reason, -ECANCELED);
    cr_assert_eq(s.late_callbacks, 0);
    srv_release(&s);
    for (int i = 0; i < FL_CONNS; i++)
        close(cfd[i]);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- a close while cross-thread writes keep coming --------------------------------- */

/* A record: 14 digits and a newline. */
#define AW_REC 16

static ssize_t aw_on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = live(h, "on_read");
    if (memchr(data, 'Q', len))
        goev_close(&c->h);
    return (ssize_t)len;
}

static const struct goev_handler_ops aw_ops = {
    .on_open = srv_on_open,
    .on_read = aw_on_read,
    .on_close = srv_on_close,
};

struct aw_writer {
    goev_reactor *r;
    goev_conn_id id;
    int stop;
    uint64_t ok, refused;
};

static void *aw_write_thread(void *arg)
{
    struct aw_writer *w = arg;
    uint64_t seq = 0;
    /* Keep going past the close: those writes must be refused or dropped,
     * never touch the freed slot. */
    while (!TU_LOAD(&w->stop)) {
        char rec[AW_REC + 1];
        snprintf(rec, sizeof rec, "%014llu\n", (unsigned long long)seq);
        int rc = goev_async_write(w->r, w->id, rec, AW_REC - 1);
        if (rc == 0) {
            seq++;
            w->ok++;
        } else {
            TU_CHECK(rc == -ENOTCONN || rc == -ENOMEM, "goev_async_write: %d", rc);
            TU_INC(&w->refused);    /* the test thread waits on it */
            if (w->refused > 20000)
                break;
        }
        if (seq % 64 == 0)
            sched_yield();
    }
    return NULL;
}

Test(stress, close_while_async_writes_queued, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, &aw_ops, 2);
    uint64_t ok_total = 0, recs_total = 0;
    for (int round = 0; round < 6; round++) {
        int fd = tu_connect_tcp4(s.port);
        cr_assert(fd >= 0);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == round + 1, 5000));
        struct aw_writer w = { .r = s.r, .id = s.tab[round]->id };
        cr_assert(w.id != 0);
        pthread_t th;
        cr_assert(pthread_create(&th, NULL, aw_write_thread, &w) == 0);
        /* Read records; after a while ask the server to close (graceful:
         * whatever was queued still arrives), then read to EOF. */
        char buf[4096];
        size_t asked = 0;
        uint64_t next = 0;
        char part[AW_REC];
        size_t plen = 0;
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            cr_assert(n >= 0, "round %d: read after record %llu: %s", round,
                      (unsigned long long)next, strerror(errno));
            if (n == 0)
                break;
            for (ssize_t i = 0; i < n; i++) {
                part[plen++] = buf[i];
                if (plen == AW_REC - 1) {
                    char want[AW_REC + 1];
                    snprintf(want, sizeof want, "%014llu\n", (unsigned long long)next);
                    cr_assert(memcmp(part, want, AW_REC - 1) == 0,
                              "round %d: record %llu is \"%.*s\"", round,
                              (unsigned long long)next, AW_REC - 2, part);
                    next++;
                    plen = 0;
                }
            }
            if (!asked && next >= 2000 + (uint64_t)round * 3000) {
                cr_assert(tu_write_all(fd, "Q", 1) == 0);
                asked = 1;
            }
        }
        cr_assert(asked, "round %d: EOF before the close was asked", round);
        cr_assert_eq(plen, 0, "round %d: a record was cut (%zu bytes)", round, plen);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == round + 1, 5000));
        /* Let the writer meet the closed connection for a while. */
        cr_assert(TU_WAIT_FOR(TU_LOAD(&w.refused) > 100, 5000));
        TU_STORE(&w.stop, 1);
        pthread_join(th, NULL);
        close(fd);
        /* Every accepted write was delivered or counted as dropped. */
        cr_assert(s.tab[round]->reason == 0, "closed with %d", s.tab[round]->reason);
        /* Counters are cumulative over rounds: compare totals.  Messages
         * still travelling to the poller are counted when it drains them. */
        ok_total += w.ok;
        recs_total += next;
        struct goev_stats st = stats(&s);
        for (int k = 0; k < 200 && recs_total + st.async_dropped < ok_total; k++) {
            tu_sleep_ms(10);
            st = stats(&s);
        }
        cr_assert_eq(recs_total + st.async_dropped, ok_total,
                     "round %d: %llu delivered + %llu dropped != %llu accepted", round,
                     (unsigned long long)recs_total, (unsigned long long)st.async_dropped,
                     (unsigned long long)ok_total);
    }
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- ten thousand connections -------------------------------------------------- */

#define OC_THREADS 4
#define OC_PER_THREAD 2500

static ssize_t oc_on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = live(h, "on_read");
    int rc = goev_write(h, data, len);
    TU_CHECK(rc == 0, "goev_write: %d", rc);
    if (memchr(data, 's', len))     /* the server closes first */
        goev_close(&c->h);
    return (ssize_t)len;
}

static const struct goev_handler_ops oc_ops = {
    .on_open = srv_on_open,
    .on_read = oc_on_read,
    .on_close = srv_on_close,
};

struct oc_client {
    int port, id;
    int done;
};

static void *oc_thread(void *arg)
{
    struct oc_client *cl = arg;
    for (int i = 0; i < OC_PER_THREAD; i++) {
        int fd = tu_connect_tcp4(cl->port);
        if (fd < 0) {
            TU_CHECK(0, "client %d: connect %d: %s", cl->id, i, strerror(errno));
            return NULL;
        }
        char who = (i + cl->id) % 3 == 0 ? 's' : 'c';
        char b = 0;
        int rc = tu_write_all(fd, &who, 1);
        if (rc == 0)
            rc = tu_read_exact(fd, &b, 1);
        if (rc != 0 || b != who) {
            TU_CHECK(0, "client %d: echo %d: %s", cl->id, i, strerror(-rc));
            close(fd);
            return NULL;
        }
        if (who == 's') {
            size_t junk;
            rc = tu_wait_eof(fd, 5000, &junk);
            TU_CHECK(rc == 1, "client %d: no EOF from the server (%d)", cl->id, rc);
        }
        close(fd);
        cl->done++;
    }
    return NULL;
}

Test(stress, ten_thousand_connections, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, &oc_ops, 2);
    uint64_t t0 = tu_now_ms();
    struct oc_client cl[OC_THREADS];
    pthread_t th[OC_THREADS];
    for (int i = 0; i < OC_THREADS; i++) {
        cl[i] = (struct oc_client){ .port = s.port, .id = i };
        cr_assert(pthread_create(&th[i], NULL, oc_thread, &cl[i]) == 0);
    }
    int done = 0;
    for (int i = 0; i < OC_THREADS; i++) {
        pthread_join(th[i], NULL);
        done += cl[i].done;
    }
    tu_assert_no_failures();
    cr_assert_eq(done, OC_THREADS * OC_PER_THREAD);
    int total = OC_THREADS * OC_PER_THREAD;
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == total, 5000), "%d of %d closed", s.closes, total);
    uint64_t ms = tu_now_ms() - t0;
    cr_assert(ms < 15000, "%d connections took %llu ms", total, (unsigned long long)ms);
    struct goev_stats st = stats(&s);
    cr_assert_eq(st.accepted, (uint64_t)total);
    cr_assert_eq(st.conns, 0);
    cr_assert_eq(s.late_callbacks, 0);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- accepting again after EMFILE --------------------------------------------- */

#define MF_CLIENTS 8

Test(stress, accept_recovers_after_emfile, .init = init_test, .timeout = TU_TIMEOUT)
{
    /* EMFILE is a limit of regular fds: direct descriptors (io_uring) do
     * not take one, so this checks the regular accept path (test_direct
     * covers the file table filling up). */
    setenv("GOEV_URING_DIRECT", "0", 1);
    int fds = tu_fd_count();
    /* The limit is lowered before the server starts: io_uring's accept
     * reads RLIMIT_NOFILE when it is armed, so (as in production) it is the
     * table filling up to the limit that must stop it, not a lower limit
     * set behind its back. */
    struct rlimit old, low;
    cr_assert(getrlimit(RLIMIT_NOFILE, &old) == 0);
    low = old;
    low.rlim_cur = (rlim_t)fds + 256;
    int *fill = calloc(low.rlim_cur, sizeof *fill);
    cr_assert(fill);
    cr_assert(setrlimit(RLIMIT_NOFILE, &low) == 0);
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 1;
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.backoff_ms = 30;
    struct srv s = {0};
    srv_start_opts(&s, &echo_ops, &o, &ao);

    /* The client sockets exist before the table is filled: connecting
     * needs no new descriptor, accepting does. */
    int cfd[MF_CLIENTS];
    for (int i = 0; i < MF_CLIENTS; i++) {
        cfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(cfd[i] >= 0);
        tu_set_io_timeout(cfd[i], TU_IO_TIMEOUT_MS);
    }
    int nfill = 0, nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(nul >= 0);
    for (;;) {
        int d = fcntl(nul, F_DUPFD_CLOEXEC, 0);
        if (d < 0) {
            cr_assert_eq(errno, EMFILE);
            break;
        }
        fill[nfill++] = d;
    }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s.port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i < MF_CLIENTS; i++)
        cr_assert(tu_connect_fd(cfd[i], (struct sockaddr *)&sa, sizeof sa) == 0, "connect: %s",
                  strerror(errno));
    /* The server must hit EMFILE, back off, and keep trying. */
    bool backed_off = TU_WAIT_FOR(stats(&s).accept_backoffs >= 2, 5000);
    struct goev_stats st = stats(&s);
    cr_assert(backed_off, "no accept back-off seen (%llu accepted, %llu back-offs, %d fds filled)",
              (unsigned long long)st.accepted, (unsigned long long)st.accept_backoffs, nfill);
    /* Not necessarily zero: a descriptor freed elsewhere in the process
     * (the test runner's own) lets one through; the back-offs are the point. */
    cr_assert(TU_LOAD(&s.opens) < MF_CLIENTS, "all accepted with the table full");
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    close(nul);
    free(fill);
    cr_assert(setrlimit(RLIMIT_NOFILE, &old) == 0);

    /* Room again: everything queued is accepted and served... */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == MF_CLIENTS, 5000), "%d of %d accepted after EMFILE",
              s.opens, MF_CLIENTS);
    for (int i = 0; i < MF_CLIENTS; i++) {
        char b = (char)('a' + i), r = 0;
        cr_assert(tu_write_all(cfd[i], &b, 1) == 0);
        cr_assert(tu_read_exact(cfd[i], &r, 1) == 0 && r == b, "client %d: no echo", i);
    }
    /* ...and new connections still are: the accept was re-armed. */
    for (int i = 0; i < 3; i++) {
        int fd = tu_connect_tcp4(s.port);
        cr_assert(fd >= 0);
        char r = 0;
        cr_assert(tu_write_all(fd, "z", 1) == 0);
        cr_assert(tu_read_exact(fd, &r, 1) == 0 && r == 'z', "new client %d: no echo", i);
        close(fd);
    }
    for (int i = 0; i < MF_CLIENTS; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == MF_CLIENTS + 3, 5000));
    st = stats(&s);
    cr_assert_eq(st.accepted, MF_CLIENTS + 3);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}
