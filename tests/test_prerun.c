/* test_prerun.c - work set up before the reactor runs.
 *
 * The thread that created a reactor may connect, watch, adopt sockets and
 * listen before goev_reactor_start.  The io_uring backend cannot submit
 * anything until the poller thread has enabled its ring, and used to queue
 * that work in the SQ ring, whose 4,096 entries then ran out: the next call
 * failed with -EBUSY.  Both backends must take any amount (here 5,000 of
 * each) and complete all of it once the reactor runs. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

enum { N = 5000 };

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

/* Raise the soft fd limit to what n fds (and some spare) need, or skip. */
static void need_fds(rlim_t n)
{
    struct rlimit rl;
    cr_assert(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rlim_t want = n + 256;
    if (rl.rlim_cur >= want)
        return;
    if (rl.rlim_max < want)
        cr_skip_test("RLIMIT_NOFILE hard limit %llu < %llu", (unsigned long long)rl.rlim_max,
                     (unsigned long long)want);
    rl.rlim_cur = want;
    cr_assert(setrlimit(RLIMIT_NOFILE, &rl) == 0);
}

struct counts {
    int opens, reads, readies, closes, fails, srv_opens, srv_closes;
};

struct item {
    goev_handler h;
    struct counts *k;
    int fd;     /* watches: the eventfd */
};

static int it_on_open(goev_handler *h)
{
    struct item *it = h->user;
    TU_INC(&it->k->opens);
    return 0;
}

static ssize_t it_on_read(goev_handler *h, const char *d, size_t n)
{
    struct item *it = h->user;
    (void)d;
    TU_INC(&it->k->reads);
    return (ssize_t)n;
}

static void it_on_connect_fail(goev_handler *h, int err)
{
    struct item *it = h->user;
    TU_CHECK(0, "on_connect_fail: %s", strerror(-err));
    TU_INC(&it->k->fails);
}

static void it_on_close(goev_handler *h, int reason)
{
    struct item *it = h->user;
    TU_INC(&it->k->closes);
}

static int it_on_ready(goev_handler *h, unsigned events)
{
    struct item *it = h->user;
    TU_CHECK(events & GOEV_READ, "on_ready without GOEV_READ: %#x", events);
    uint64_t v;
    TU_CHECK(read(it->fd, &v, sizeof v) == sizeof v, "eventfd read: %s", strerror(errno));
    TU_INC(&it->k->readies);
    return goev_watch_update(h, 0);     /* once is enough */
}

static const struct goev_handler_ops it_ops = {
    .on_open = it_on_open,
    .on_read = it_on_read,
    .on_connect_fail = it_on_connect_fail,
    .on_close = it_on_close,
    .on_ready = it_on_ready,
};

/* Server side of the connect test: accepted connections, counted. */
struct srv_conn {
    goev_handler h;
    struct counts *k;
};

static int srv_on_open(goev_handler *h)
{
    struct srv_conn *s = h->user;
    TU_INC(&s->k->srv_opens);
    return 0;
}

static ssize_t srv_on_read(goev_handler *h, const char *d, size_t n)
{
    (void)h;
    (void)d;
    return (ssize_t)n;
}

static void srv_on_close(goev_handler *h, int reason)
{
    struct srv_conn *s = h->user;
    (void)reason;
    TU_INC(&s->k->srv_closes);
    free(s);
}

static const struct goev_handler_ops srv_ops = {
    .on_open = srv_on_open, .on_read = srv_on_read, .on_close = srv_on_close,
};

static goev_handler *srv_new(goev_poller *p, void *arg)
{
    (void)p;
    struct srv_conn *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    goev_handler_init(&s->h, &srv_ops);
    s->h.user = s;
    s->k = arg;
    return &s->h;
}

static struct item *items_new(struct counts *k)
{
    struct item *its = calloc(N, sizeof *its);
    cr_assert(its);
    for (int i = 0; i < N; i++) {
        goev_handler_init(&its[i].h, &it_ops);
        its[i].h.user = &its[i];
        its[i].k = k;
        its[i].fd = -1;
    }
    return its;
}

/* A listener and N connects to it, all before the reactor runs. */
Test(prerun, connects_before_run, .init = init_test, .timeout = TU_TIMEOUT)
{
    need_fds(2 * N + 64);
    struct counts k = {0};
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.backlog = 2 * N;     /* the kernel caps it (somaxconn); SYNs beyond are retried */
    goev_acceptor *a;
    int rc = goev_acceptor_new(&a, r, NULL, "127.0.0.1:0", &ao, srv_new, &k);
    cr_assert(rc == 0, "goev_acceptor_new: %s", strerror(-rc));
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", goev_acceptor_port(a));
    struct item *its = items_new(&k);
    for (int i = 0; i < N; i++) {
        rc = goev_connect(p, &its[i].h, addr, 15000);
        cr_assert(rc == 0, "goev_connect #%d before run: %s", i, strerror(-rc));
    }
    tu_reactor_start(r);
    bool ok = TU_WAIT_FOR(TU_LOAD(&k.opens) == N && TU_LOAD(&k.srv_opens) == N, 15000);
    tu_reactor_stop_wait(r);
    cr_assert(ok, "connected %d, accepted %d of %d (failed %d)", TU_LOAD(&k.opens),
              TU_LOAD(&k.srv_opens), N, TU_LOAD(&k.fails));
    cr_assert_eq(k.closes, N, "on_close %d of %d", k.closes, N);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    cr_assert_eq(k.srv_closes, k.srv_opens);
    tu_assert_no_failures();
    free(its);
}

/* N readable eventfds watched before the reactor runs. */
Test(prerun, watches_before_run, .init = init_test, .timeout = TU_TIMEOUT)
{
    need_fds(N + 64);
    struct counts k = {0};
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct item *its = items_new(&k);
    for (int i = 0; i < N; i++) {
        its[i].fd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
        cr_assert(its[i].fd >= 0, "eventfd: %s", strerror(errno));
        int rc = goev_watch(p, &its[i].h, its[i].fd, GOEV_READ);
        cr_assert(rc == 0, "goev_watch #%d before run: %s", i, strerror(-rc));
    }
    tu_reactor_start(r);
    bool ok = TU_WAIT_FOR(TU_LOAD(&k.readies) == N, 15000);
    tu_reactor_stop_wait(r);
    cr_assert(ok, "on_ready %d of %d", TU_LOAD(&k.readies), N);
    cr_assert_eq(k.closes, N, "on_close %d of %d", k.closes, N);
    goev_reactor_free(r);
    tu_assert_no_failures();
    free(its);
}

/* N socketpairs adopted before the reactor runs, each with a byte waiting. */
Test(prerun, conn_opens_before_run, .init = init_test, .timeout = TU_TIMEOUT)
{
    need_fds(2 * N + 64);
    struct counts k = {0};
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct item *its = items_new(&k);
    int *peer = calloc(N, sizeof *peer);
    cr_assert(peer);
    for (int i = 0; i < N; i++) {
        int sv[2];
        cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
                  strerror(errno));
        cr_assert(write(sv[1], "x", 1) == 1);
        peer[i] = sv[1];
        int rc = goev_conn_open(p, &its[i].h, sv[0]);
        cr_assert(rc == 0, "goev_conn_open #%d before run: %s", i, strerror(-rc));
    }
    cr_assert_eq(k.opens, N);     /* on_open comes from goev_conn_open itself */
    tu_reactor_start(r);
    bool ok = TU_WAIT_FOR(TU_LOAD(&k.reads) == N, 15000);
    tu_reactor_stop_wait(r);
    cr_assert(ok, "on_read %d of %d", TU_LOAD(&k.reads), N);
    cr_assert_eq(k.closes, N, "on_close %d of %d", k.closes, N);
    goev_reactor_free(r);
    for (int i = 0; i < N; i++)
        close(peer[i]);
    free(peer);
    tu_assert_no_failures();
    free(its);
}

/* All three, and never run: freeing the reactor undoes it all cleanly. */
Test(prerun, freed_without_run, .init = init_test, .timeout = TU_TIMEOUT)
{
    need_fds(3 * N + 64);
    struct counts k = {0};
    int before = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    goev_acceptor *a;
    int rc = goev_acceptor_new(&a, r, NULL, "127.0.0.1:0", NULL, srv_new, &k);
    cr_assert(rc == 0, "goev_acceptor_new: %s", strerror(-rc));
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", goev_acceptor_port(a));
    struct item *its = items_new(&k);
    struct item *ws = items_new(&k);
    for (int i = 0; i < N; i++) {
        cr_assert(goev_connect(p, &its[i].h, addr, 0) == 0, "connect #%d", i);
        ws[i].fd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
        cr_assert(ws[i].fd >= 0);
        cr_assert(goev_watch(p, &ws[i].h, ws[i].fd, GOEV_READ) == 0, "watch #%d", i);
    }
    goev_acceptor_free(a);
    goev_reactor_free(r);
    cr_assert_eq(k.closes, 2 * N, "on_close %d of %d", k.closes, 2 * N);
    cr_assert_eq(k.srv_closes, k.srv_opens);
    tu_assert_no_failures();
    tu_assert_fds(before);
    free(its);
    free(ws);
}
