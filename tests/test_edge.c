/* test_edge.c - regression tests for edge cases found in review. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void init_test(void)
{
    signal(SIGPIPE, SIG_IGN);
}

/* A generic connection handler: counts callbacks, records the close reason,
 * and runs an optional hook from on_read / on_open / on_close. */
struct ec {
    goev_handler h;
    int opens, closes, reason, reads;
    int after_close;            /* a callback after on_close */
    size_t got;
    void (*read_hook)(struct ec *e, const char *d, size_t n);
    int (*open_hook)(struct ec *e);
    void (*close_hook)(struct ec *e, int reason);
    void *ctx;
};

static int ec_on_open(goev_handler *h)
{
    struct ec *e = (struct ec *)h;
    if (e->closes)
        e->after_close = 1;
    TU_INC(&e->opens);
    return e->open_hook ? e->open_hook(e) : 0;
}

static ssize_t ec_on_read(goev_handler *h, const char *d, size_t n)
{
    struct ec *e = (struct ec *)h;
    if (e->closes)
        e->after_close = 1;
    TU_INC(&e->reads);
    e->got += n;
    if (e->read_hook)
        e->read_hook(e, d, n);
    return (ssize_t)n;
}

static void ec_on_close(goev_handler *h, int reason)
{
    struct ec *e = (struct ec *)h;
    TU_STORE(&e->reason, reason);
    if (e->close_hook)
        e->close_hook(e, reason);
    TU_INC(&e->closes);     /* after the hook: the test reads what it set */
}

static const struct goev_handler_ops ec_ops = {
    .on_open = ec_on_open, .on_read = ec_on_read, .on_close = ec_on_close,
};

static void ec_init(struct ec *e)
{
    memset(e, 0, sizeof *e);
    goev_handler_init(&e->h, &ec_ops);
}

/* ---- a slot reused while its old connection is still on the flush list --- */

/* A writes, B (paused, so nothing of it is in flight) writes and is aborted
 * in the same callback; when B's on_close opens D, D gets B's slot.  B was
 * still linked on the poller's flush list, ahead of A: A's bytes must still
 * leave. */
struct reuse {
    struct ec a, b, d;
    int dfd;
    goev_poller *p;
    int dopen_rc;
};

static void reuse_a_read(struct ec *e, const char *d, size_t n)
{
    struct reuse *x = e->ctx;
    (void)d;
    (void)n;
    TU_CHECK(goev_write(&x->a.h, "a", 1) == 0, "write A");
    if (e->reads > 1)
        return;
    TU_CHECK(goev_write(&x->b.h, "b", 1) == 0, "write B");
    TU_CHECK(goev_abort(&x->b.h) == 0, "abort B");
}

static void reuse_b_close(struct ec *e, int reason)
{
    struct reuse *x = e->ctx;
    (void)reason;
    if (x->dfd >= 0) {
        int fd = x->dfd;
        x->dfd = -1;
        x->dopen_rc = goev_conn_open(x->p, &x->d.h, fd);
    }
}

Test(edge, slot_reuse_keeps_flush_list, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct reuse x;
    memset(&x, 0, sizeof x);
    x.p = p;
    ec_init(&x.a);
    ec_init(&x.b);
    ec_init(&x.d);
    x.a.ctx = x.b.ctx = x.d.ctx = &x;
    x.a.read_hook = reuse_a_read;
    x.b.close_hook = reuse_b_close;

    int sa[2], sb[2], sd[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa) == 0);
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sb) == 0);
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sd) == 0);
    tu_set_io_timeout(sa[1], 2000);
    x.dfd = sd[0];
    cr_assert_eq(goev_conn_open(p, &x.a.h, sa[0]), 0);
    cr_assert_eq(goev_conn_open(p, &x.b.h, sb[0]), 0);
    cr_assert_eq(goev_pause_read(&x.b.h), 0);
    tu_reactor_start(r);

    cr_assert_eq(tu_write_all(sa[1], "go", 2), 0);
    char c = 0;
    int rc = tu_read_exact(sa[1], &c, 1);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x.b.closes) == 1, 5000));
    cr_assert_eq(x.dopen_rc, 0);
    cr_assert_eq(rc, 0, "A's byte never left: %s", strerror(-rc));
    cr_assert_eq(c, 'a');

    /* A still works afterwards. */
    cr_assert_eq(tu_write_all(sa[1], "go", 2), 0);
    cr_assert_eq(tu_read_exact(sa[1], &c, 1), 0);

    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(x.a.closes, 1);
    cr_assert_eq(x.b.closes, 1);
    cr_assert_eq(x.d.closes, 1);
    cr_assert_eq(x.a.after_close + x.b.after_close + x.d.after_close, 0);
    close(sa[1]);
    close(sb[1]);
    close(sd[1]);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- connect, then pause in on_open: no busy loop ------------------------ */

static int pause_on_open(struct ec *e)
{
    TU_CHECK(goev_pause_read(&e->h) == 0, "pause in on_open");
    return 0;
}

Test(edge, paused_connect_does_not_spin, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    int port;
    int lfd = tu_listen_tcp4(16, &port);
    cr_assert(lfd >= 0);
    goev_reactor *r = tu_reactor_new(1);
    struct ec e;
    ec_init(&e);
    e.open_hook = pause_on_open;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    cr_assert_eq(goev_connect(goev_reactor_poller(r, 0), &e.h, addr, 5000), 0);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&e.opens) == 1, 5000));
    tu_sleep_ms(20);
    struct goev_stats s0, s1;
    goev_stats_get(r, 0, &s0);
    tu_sleep_ms(300);
    goev_stats_get(r, 0, &s1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    close(lfd);
    cr_assert(s1.passes - s0.passes < 50, "an idle paused connection made %llu passes in 300 ms",
              (unsigned long long)(s1.passes - s0.passes));
    cr_assert_eq(e.closes, 1);
    cr_assert_eq(e.reason, -ECANCELED);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- a failed connect leaves the open-connection counter alone --------- */

Test(edge, failed_connect_keeps_conns_stat, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    int port;
    int lfd = tu_listen_tcp4(16, &port);
    cr_assert(lfd >= 0);
    close(lfd);     /* nobody listens there now: refused */
    goev_reactor *r = tu_reactor_new(1);
    struct ec e;
    ec_init(&e);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    cr_assert_eq(goev_connect(goev_reactor_poller(r, 0), &e.h, addr, 5000), 0);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&e.closes) == 1, 5000));
    struct goev_stats s;
    goev_stats_get(r, 0, &s);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(e.opens, 0);
    cr_assert_eq(s.conns, 0, "conns = %llu after a refused connect", (unsigned long long)s.conns);
    tu_assert_fds(fds);
}

/* ---- a connection opened by a function posted during the stop ----------- */

struct latepost {
    goev_reactor *r;
    struct ec e;
    int fd;
    int rc;
};

static void late_open(goev_poller *p, void *arg)
{
    struct latepost *lp = arg;
    lp->rc = goev_conn_open(p, &lp->e.h, lp->fd);
}

static void stop_then_post(goev_poller *p, void *arg)
{
    struct latepost *lp = arg;
    goev_reactor_stop(lp->r);
    TU_CHECK(goev_post(p, late_open, lp) == 0, "post");
}

Test(edge, conn_opened_during_stop_is_closed, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    struct latepost lp;
    memset(&lp, 0, sizeof lp);
    lp.r = r;
    lp.rc = 1;
    ec_init(&lp.e);
    int sv[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    lp.fd = sv[0];
    cr_assert_eq(goev_post(goev_reactor_poller(r, 0), stop_then_post, &lp), 0);
    tu_reactor_start(r);
    cr_assert_eq(goev_reactor_wait(r), 0);
    goev_reactor_free(r);
    cr_assert_eq(lp.rc, 0, "goev_conn_open during the stop: %d", lp.rc);
    cr_assert_eq(lp.e.opens, 1);
    cr_assert_eq(lp.e.closes, 1, "on_close called %d times", lp.e.closes);
    cr_assert_eq(lp.e.reason, -ECANCELED);
    cr_assert(fcntl(sv[0], F_GETFD) == -1, "the adopted fd was never closed");
    close(sv[1]);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- hand-off to a connection reactor that has already stopped ---------- */

static goev_handler *never_new(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    TU_CHECK(0, "new_handler called on a stopped reactor");
    return NULL;
}

Test(edge, handoff_to_stopped_reactor_closes_fd, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *ra = tu_reactor_new(1);
    goev_reactor *rb = tu_reactor_new(1);
    goev_acceptor *a;
    cr_assert_eq(goev_acceptor_new(&a, ra, rb, "127.0.0.1:0", NULL, never_new, NULL), 0);
    tu_reactor_start(ra);
    tu_reactor_start(rb);
    tu_reactor_stop_wait(rb);
    int c = tu_connect_tcp4(goev_acceptor_port(a));
    cr_assert(c >= 0);
    struct goev_stats s;
    cr_assert(TU_WAIT_FOR((goev_stats_get(ra, 0, &s), s.accepted == 1), 5000));
    tu_reactor_stop_wait(ra);
    goev_acceptor_free(a);
    goev_reactor_free(ra);
    goev_reactor_free(rb);
    /* The accepted socket must be closed: the client sees EOF. */
    int eof = tu_wait_eof(c, 2000, NULL);
    close(c);
    cr_assert(eof == 1 || eof == -ECONNRESET, "accepted socket left open (%d)", eof);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- a watch whose fd has a duplicate elsewhere -------------------------- */

/* Closing the watched fd does not take it out of an epoll set while another
 * descriptor (a dup, a forked child's copy) still refers to the file: the
 * closed watch must not be called again. */
struct dupw {
    goev_handler h;
    int readies, closes, after_close;
};

static int dupw_ready(goev_handler *h, unsigned ev)
{
    struct dupw *w = (struct dupw *)h;
    (void)ev;
    if (w->closes)
        w->after_close = 1;
    TU_INC(&w->readies);
    return -1;      /* close, leaving the byte unread */
}

static void dupw_close(goev_handler *h, int reason)
{
    struct dupw *w = (struct dupw *)h;
    (void)reason;
    TU_INC(&w->closes);
}

static const struct goev_handler_ops dupw_ops = { .on_ready = dupw_ready, .on_close = dupw_close };

Test(edge, closed_watch_with_dup_fd_is_quiet, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    int pv[2];
    cr_assert(pipe2(pv, O_CLOEXEC | O_NONBLOCK) == 0);
    int dup_fd = dup(pv[0]);
    cr_assert(dup_fd >= 0);
    struct dupw w;
    memset(&w, 0, sizeof w);
    goev_handler_init(&w.h, &dupw_ops);
    cr_assert_eq(goev_watch(goev_reactor_poller(r, 0), &w.h, pv[0], GOEV_READ), 0);
    cr_assert_eq(write(pv[1], "x", 1), 1);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&w.closes) == 1, 5000));
    tu_sleep_ms(100);
    struct goev_stats s0, s1;
    goev_stats_get(r, 0, &s0);
    tu_sleep_ms(200);
    goev_stats_get(r, 0, &s1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    close(dup_fd);
    close(pv[1]);
    cr_assert_eq(w.readies, 1);
    cr_assert_eq(w.after_close, 0);
    cr_assert(s1.passes - s0.passes < 50, "%llu passes in 200 ms after the watch closed",
              (unsigned long long)(s1.passes - s0.passes));
    tu_assert_fds(fds);
}

/* ---- pausing on goev_pending() when the kernel takes everything at once -- */

/* The server answers each "go" with 1 MiB and pauses reading while anything
 * is queued, resuming in on_drained.  A loopback client with room takes the
 * whole MiB in one send, so nothing was ever held back: on_drained must
 * still come, or the second "go" is never read (found by the websocket
 * example's back-pressure test). */
#define BULK (1u << 20)

static ssize_t bulk_on_read(goev_handler *h, const char *d, size_t n)
{
    struct ec *e = (struct ec *)h;
    static char buf[BULK];
    e->reads++;
    TU_CHECK(goev_write(h, buf, sizeof buf) == 0, "write");
    if (goev_pending(h) > 0)
        TU_CHECK(goev_pause_read(h) == 0, "pause");
    return (ssize_t)n;
}

static int bulk_on_drained(goev_handler *h)
{
    struct ec *e = (struct ec *)h;
    TU_INC(&e->got);    /* drained calls; the test thread waits on it */
    return goev_resume_read(h);
}

static const struct goev_handler_ops bulk_ops = {
    .on_read = bulk_on_read, .on_drained = bulk_on_drained, .on_close = ec_on_close,
};

static goev_handler *bulk_new(goev_poller *p, void *arg)
{
    struct ec *e = arg;
    if (e->opens++)
        return NULL;
    goev_handler_init(&e->h, &bulk_ops);
    return &e->h;
}

Test(edge, drained_after_pause_when_sent_at_once, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct ec e;
    memset(&e, 0, sizeof e);
    goev_reactor *r = tu_reactor_new(1);
    goev_acceptor *a;
    cr_assert_eq(goev_acceptor_new(&a, r, r, "127.0.0.1:0", NULL, bulk_new, &e), 0);
    tu_reactor_start(r);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)goev_acceptor_port(a))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    tu_set_io_timeout(fd, 5000);
    cr_assert_eq(tu_connect_fd(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    static char buf[BULK];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tu_write_all(fd, "go", 2), 0);
        cr_assert_eq(tu_read_exact(fd, buf, sizeof buf), 0, "answer %d never came: paused for good", i);
        /* Let the server see its queue empty (and resume) before the next
         * "go", so each one is a read of its own. */
        cr_assert(TU_WAIT_FOR(TU_LOAD(&e.got) == (size_t)i + 1, 5000), "on_drained %zu", TU_LOAD(&e.got));
    }
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&e.closes) == 1, 5000));
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    tu_assert_no_failures();
}
