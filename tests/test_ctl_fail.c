/* test_ctl_fail.c - readiness registration that the kernel refuses.
 *
 * A watch of an fd that epoll does not take (a regular file: EPERM) fails
 * cleanly with that errno.  An epoll_ctl that fails on an open connection
 * (provoked with a seccomp filter on the poller thread) closes that
 * connection with the error, instead of being ignored and leaving the
 * connection registered for events it no longer wants (or not registered
 * for those it does). */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifdef GOEV_HAVE_SECCOMP
#include <seccomp.h>
#endif

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

static bool on_epoll(goev_reactor *r)
{
    return strcmp(goev_backend_name(r), "epoll") == 0;
}

struct w {
    goev_handler h;
    int readies, closes, reason, opens, reads;
    int fd;
    int pause_in_read;  /* on_read pauses reading */
    size_t write_bytes; /* on_open writes this much */
};

static int w_on_ready(goev_handler *h, unsigned events)
{
    struct w *w = h->user;
    TU_INC(&w->readies);
    (void)events;
    return goev_watch_update(h, 0);
}

static int w_on_open(goev_handler *h)
{
    struct w *w = h->user;
    TU_INC(&w->opens);
    if (w->write_bytes) {
        char *b = calloc(1, w->write_bytes);
        int rc = b ? goev_write(h, b, w->write_bytes) : -ENOMEM;
        free(b);
        TU_CHECK(rc == 0, "goev_write: %d", rc);
    }
    return 0;
}

static ssize_t w_on_read(goev_handler *h, const char *d, size_t n)
{
    struct w *w = h->user;
    (void)d;
    TU_INC(&w->reads);
    if (w->pause_in_read)
        goev_pause_read(h);
    return (ssize_t)n;
}

static void w_on_close(goev_handler *h, int reason)
{
    struct w *w = h->user;
    TU_STORE(&w->reason, reason);
    TU_INC(&w->closes);
}

static const struct goev_handler_ops w_ops = {
    .on_ready = w_on_ready, .on_open = w_on_open, .on_read = w_on_read, .on_close = w_on_close,
};

static void w_init(struct w *w)
{
    memset(w, 0, sizeof *w);
    goev_handler_init(&w->h, &w_ops);
    w->h.user = w;
    w->fd = -1;
}

/* A regular file: epoll refuses it (EPERM), and goev_watch says so, with
 * the handler left as it was (usable for another watch) and no callback.
 * io_uring polls files like poll(2) does: always ready. */
Test(ctl_fail, watch_regular_file, .init = init_test, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    char *dir = tu_tmpdir();
    char path[256];
    snprintf(path, sizeof path, "%s/f", dir);
    int ffd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(ffd >= 0);
    struct w w;
    w_init(&w);
    int rc = goev_watch(p, &w.h, ffd, GOEV_READ | GOEV_WATCH_KEEP_FD);
    bool ep = on_epoll(r);
    if (ep) {
        cr_assert_eq(rc, -EPERM, "goev_watch of a regular file: %d", rc);
        cr_assert_null(w.h.conn_, "a failed watch keeps no connection");
        /* The same handler watches something else. */
        w.fd = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
        cr_assert(w.fd >= 0);
        cr_assert_eq(goev_watch(p, &w.h, w.fd, GOEV_READ), 0);
    } else {
        cr_assert_eq(rc, 0, "goev_watch of a regular file: %d", rc);
    }
    tu_reactor_start(r);
    bool ok = TU_WAIT_FOR(TU_LOAD(&w.readies) == 1, 5000);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert(ok, "on_ready %d", w.readies);
    cr_assert_eq(w.closes, 1, "one on_close, for the watch that was made");
    close(ffd);
    tu_tmpdir_free(dir);
    tu_assert_no_failures();
}

#ifdef GOEV_HAVE_SECCOMP
/* On the poller thread only (no TSYNC): epoll_ctl(op) fails with ENOMEM. */
struct filter {
    int op;
    int rc;
};

static void install_filter(goev_poller *p, void *arg)
{
    struct filter *f = arg;
    (void)p;
    f->rc = -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx)
        return;
    if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOMEM), SCMP_SYS(epoll_ctl), 1,
                         SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)f->op)) == 0)
        f->rc = seccomp_load(ctx);
    seccomp_release(ctx);
}

struct open_arg {
    struct w *w;
    int fd, rc;
};

static void do_open(goev_poller *p, void *arg)
{
    struct open_arg *a = arg;
    a->rc = goev_conn_open(p, &a->w->h, a->fd);
}

/* Start r, make epoll_ctl(op) fail on its poller thread, and adopt one end
 * of a socketpair there for w.  Returns the other end. */
static int start_refusing(goev_reactor *r, struct w *w, int op)
{
    goev_poller *p = goev_reactor_poller(r, 0);
    int sv[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    tu_reactor_start(r);
    struct filter f = {.op = op};
    tu_run_on(p, install_filter, &f);
    cr_assert_eq(f.rc, 0, "seccomp filter on the poller thread: %d", f.rc);
    struct open_arg a = {w, sv[0], 0};
    tu_run_on(p, do_open, &a);
    cr_assert_eq(a.rc, 0, "goev_conn_open: %d", a.rc);
    return sv[1];
}

/* Pausing removes the registration (EPOLL_CTL_DEL): refused, the
 * connection closes with ENOMEM rather than staying registered. */
Test(ctl_fail, pause_refused_closes, .init = init_test, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    bool epoll = on_epoll(r);
    struct w w;
    w_init(&w);
    w.pause_in_read = 1;
    int peer = start_refusing(r, &w, EPOLL_CTL_DEL);
    cr_assert_eq(write(peer, "x", 1), 1);
    /* io_uring needs no epoll_ctl: there the refusal changes nothing and
     * the paused connection stays open until the stop. */
    bool ok = TU_WAIT_FOR(TU_LOAD(&w.closes) == 1, epoll ? 5000 : 300);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    if (epoll) {
        cr_assert(ok, "the connection was not closed (reads %d)", w.reads);
        cr_assert_eq(w.reason, -ENOMEM, "on_close reason %d", w.reason);
    } else {
        cr_assert(!ok, "io_uring closed a connection over epoll_ctl (reason %d)", w.reason);
        cr_assert_eq(w.closes, 1);
        cr_assert_eq(w.reason, -ECANCELED, "on_close reason %d", w.reason);
    }
    close(peer);
    tu_assert_no_failures();
}

/* A write the socket cannot take waits for EPOLLOUT (EPOLL_CTL_MOD):
 * refused, the connection closes with ENOMEM rather than never flushing. */
Test(ctl_fail, blocked_write_refused_closes, .init = init_test, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    bool epoll = on_epoll(r);
    struct w w;
    w_init(&w);
    w.write_bytes = 8u << 20;   /* far more than a socketpair buffers */
    int peer = start_refusing(r, &w, EPOLL_CTL_MOD);
    bool ok = TU_WAIT_FOR(TU_LOAD(&w.closes) == 1, epoll ? 5000 : 300);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(w.opens, 1);
    if (epoll) {
        cr_assert(ok, "the connection was not closed");
        cr_assert_eq(w.reason, -ENOMEM, "on_close reason %d", w.reason);
    } else {    /* io_uring waits for room without epoll_ctl */
        cr_assert(!ok, "io_uring closed a connection over epoll_ctl (reason %d)", w.reason);
        cr_assert_eq(w.closes, 1);
        cr_assert_eq(w.reason, -ECANCELED, "on_close reason %d", w.reason);
    }
    close(peer);
    tu_assert_no_failures();
}
#endif

/* The library writes to stderr only when GOEV_DEBUG is set: a reactor's
 * whole life (here with a refused watch in it) leaves stderr empty without
 * it, and says which backend it chose with it. */
static size_t stderr_of_a_reactor(void)
{
    char *dir = tu_tmpdir();
    char path[256];
    snprintf(path, sizeof path, "%s/err", dir);
    int efd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(efd >= 0);
    fflush(stderr);
    int saved = dup(2);
    cr_assert(saved >= 0 && dup2(efd, 2) == 2);
    goev_reactor *r;
    int rc = goev_reactor_new(&r, NULL);
    if (rc == 0) {
        struct w w;
        w_init(&w);
        goev_watch(goev_reactor_poller(r, 0), &w.h, efd, GOEV_READ | GOEV_WATCH_KEEP_FD);
        goev_reactor_start(r);
        goev_reactor_stop(r);
        goev_reactor_wait(r);
        goev_reactor_free(r);
    }
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t n = lseek(efd, 0, SEEK_END);
    close(efd);
    tu_tmpdir_free(dir);
    if (rc == -ENOSYS || rc == -EPERM)
        cr_skip_test("no io_uring here");
    cr_assert_eq(rc, 0, "goev_reactor_new: %d", rc);
    return (size_t)n;
}

Test(ctl_fail, quiet_without_goev_debug, .init = init_test, .timeout = TU_TIMEOUT)
{
    unsetenv("GOEV_DEBUG");
    size_t n = stderr_of_a_reactor();
    cr_assert_eq(n, 0, "%zu bytes on stderr without GOEV_DEBUG", n);
}

Test(ctl_fail, talks_with_goev_debug, .init = init_test, .timeout = TU_TIMEOUT)
{
    setenv("GOEV_DEBUG", "1", 1);
    size_t n = stderr_of_a_reactor();
    cr_assert_gt(n, 0, "nothing on stderr with GOEV_DEBUG=1");
}
