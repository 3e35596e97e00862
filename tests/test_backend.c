/* test_backend.c - choosing the backend (GOEV_BACKEND, GOEV_DEBUG, a kernel
 * that refuses io_uring via seccomp) and the reactor life cycle. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#ifdef GOEV_HAVE_SECCOMP
#include <seccomp.h>
#endif

static const char *env_backend;

static void save_env(void)
{
    const char *b = getenv("GOEV_BACKEND");
    env_backend = b ? strdup(b) : NULL;
}

Test(backend, name_matches_env, .init = save_env, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    const char *name = goev_backend_name(r);
    const char *why = goev_backend_reason(r);
    cr_assert(strcmp(name, "epoll") == 0 || strcmp(name, "io_uring") == 0, "backend '%s'", name);
    if (env_backend && (strcmp(env_backend, "epoll") == 0 || strcmp(env_backend, "io_uring") == 0))
        cr_assert_str_eq(name, env_backend);
    cr_assert(why && why[0], "no reason given for the backend choice");
    cr_assert_eq(goev_poller_count(r), 1);
    cr_assert_null(goev_reactor_poller(r, 1));
    cr_assert_null(goev_reactor_poller(r, -1));
    goev_reactor_free(r);
}

Test(backend, bogus_env_rejected, .timeout = TU_TIMEOUT)
{
    setenv("GOEV_BACKEND", "bogus", 1);
    goev_reactor *r = NULL;
    int rc = goev_reactor_new(&r, NULL);
    cr_assert_eq(rc, -EINVAL, "GOEV_BACKEND=bogus: %d", rc);
    cr_assert_null(r);
    const char *err = goev_last_error();
    cr_assert(err && (strstr(err, "bogus") || strstr(err, "GOEV_BACKEND")),
              "goev_last_error does not say why: '%s'", err ? err : "(null)");
}

Test(backend, bad_options_rejected, .init = save_env, .timeout = TU_TIMEOUT)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = -1;
    goev_reactor *r = NULL;
    cr_assert_eq(goev_reactor_new(&r, &o), -EINVAL, "pollers = -1 accepted");
    cr_assert(goev_last_error()[0], "no reason for the refusal");
    if (env_backend && strcmp(env_backend, "io_uring") == 0) {
        /* Provided-buffer counts must be powers of two up to 32768. */
        goev_reactor_opts_init(&o);
        o.read_bufs = 1000;
        int rc = goev_reactor_new(&r, &o);
        if (rc == -ENOSYS || rc == -EPERM)
            cr_skip_test("io_uring unavailable: %s", goev_last_error());
        cr_assert_eq(rc, -EINVAL, "read_bufs = 1000: %d", rc);
        o.read_bufs = 65536;
        cr_assert_eq(goev_reactor_new(&r, &o), -EINVAL, "read_bufs = 65536 accepted");
    }
}

Test(backend, debug_line, .init = save_env, .timeout = TU_TIMEOUT)
{
    /* GOEV_DEBUG=1: one line on stderr names the backend. */
    FILE *tmp = tmpfile();
    cr_assert(tmp);
    fflush(stderr);
    int saved = dup(2);
    dup2(fileno(tmp), 2);
    setenv("GOEV_DEBUG", "1", 1);
    goev_reactor *r = NULL;
    int rc = goev_reactor_new(&r, NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    unsetenv("GOEV_DEBUG");
    if ((rc == -ENOSYS || rc == -EPERM) && env_backend && strcmp(env_backend, "io_uring") == 0)
        cr_skip_test("io_uring unavailable");
    cr_assert_eq(rc, 0, "goev_reactor_new: %d (%s)", rc, goev_last_error());
    char buf[1024] = {0};
    rewind(tmp);
    size_t n = fread(buf, 1, sizeof buf - 1, tmp);
    fclose(tmp);
    cr_assert(n > 0, "GOEV_DEBUG=1 printed nothing");
    cr_assert(strstr(buf, goev_backend_name(r)), "debug line '%s' does not name %s", buf,
              goev_backend_name(r));
    goev_reactor_free(r);
}

#ifdef GOEV_HAVE_SECCOMP
/* What a container does: io_uring_setup fails with EPERM. */
static void deny_io_uring(void)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    cr_assert(ctx);
    /* Threads that already exist (Criterion's) get the filter too. */
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    cr_assert_eq(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(io_uring_setup), 0), 0);
    int rc = seccomp_load(ctx);
    seccomp_release(ctx);
    cr_assert_eq(rc, 0, "seccomp_load: %s", strerror(-rc));
}

struct pair_h {
    goev_handler h;
    int closes, reads;
};

static ssize_t pair_on_read(goev_handler *h, const char *d, size_t n)
{
    struct pair_h *x = (struct pair_h *)h;
    TU_INC(&x->reads);
    return goev_write(h, d, n) == 0 ? (ssize_t)n : -EIO;
}

static void pair_on_close(goev_handler *h, int reason)
{
    struct pair_h *x = (struct pair_h *)h;
    TU_INC(&x->closes);
}

static const struct goev_handler_ops pair_ops = {.on_read = pair_on_read, .on_close = pair_on_close};

Test(backend, seccomp_auto_falls_back, .timeout = TU_TIMEOUT)
{
    deny_io_uring();
    setenv("GOEV_BACKEND", "auto", 1);
    goev_reactor *r = NULL;
    int rc = goev_reactor_new(&r, NULL);
    cr_assert_eq(rc, 0, "auto with io_uring denied: %d (%s)", rc, goev_last_error());
    cr_assert_str_eq(goev_backend_name(r), "epoll");
    const char *why = goev_backend_reason(r);
    cr_assert(strstr(why, "not permitted") || strstr(why, "EPERM"),
              "reason does not mention the failure: '%s'", why);
    /* And the fallback works: echo through an adopted socketpair. */
    int sv[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    struct pair_h x = {0};
    goev_handler_init(&x.h, &pair_ops);
    cr_assert_eq(goev_conn_open(goev_reactor_poller(r, 0), &x.h, sv[0]), 0);
    tu_reactor_start(r);
    tu_set_io_timeout(sv[1], 5000);
    cr_assert(tu_write_all(sv[1], "ping", 4) == 0);
    char buf[4];
    cr_assert_eq(tu_read_exact(sv[1], buf, 4), 0);
    cr_assert(memcmp(buf, "ping", 4) == 0);
    close(sv[1]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x.closes) == 1, 5000));
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

Test(backend, seccomp_explicit_io_uring_fails, .timeout = TU_TIMEOUT)
{
    deny_io_uring();
    setenv("GOEV_BACKEND", "io_uring", 1);
    goev_reactor *r = NULL;
    int rc = goev_reactor_new(&r, NULL);
    const char *err = goev_last_error();
#ifdef GOEV_HAVE_URING
    cr_assert_eq(rc, -EPERM, "GOEV_BACKEND=io_uring with io_uring denied: %d", rc);
#else
    cr_assert(rc < 0, "GOEV_BACKEND=io_uring without an io_uring backend: %d", rc);
#endif
    cr_assert_null(r, "a failed goev_reactor_new stored a reactor");
    cr_assert(err[0] && strstr(err, "io_uring"), "unclear goev_last_error: '%s'", err);
}

/* A poller whose wait fails (here: seccomp makes epoll_wait and
 * io_uring_enter fail with EIO on that poller's thread only) stops the
 * whole reactor, and run / wait return its error.  It used to end its own
 * loop silently while the others went on. */
struct broken {
    int ok;
    int peer;               /* the test's end of a connection on that poller */
    struct pair_h conn;
};

static void break_this_poller(goev_poller *p, void *arg)
{
    struct broken *b = arg;
    int *ok = &b->ok;
    int sv[2];
    TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    goev_handler_init(&b->conn.h, &pair_ops);
    TU_CHECK(goev_conn_open(p, &b->conn.h, sv[1]) == 0, "goev_conn_open");
    b->peer = sv[0];
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    int rc = ctx ? 0 : -ENOMEM;
    static const int calls[] = {SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait),
                                SCMP_SYS(epoll_pwait2), SCMP_SYS(io_uring_enter)};
    for (size_t i = 0; rc == 0 && i < sizeof calls / sizeof calls[0]; i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EIO), calls[i], 0);
    if (rc == 0)
        rc = seccomp_load(ctx);     /* no TSYNC: this thread only */
    seccomp_release(ctx);
    TU_CHECK(rc == 0, "seccomp on the poller thread: %s", strerror(-rc));
    TU_STORE(ok, rc == 0);
}

Test(backend, failed_poller_stops_reactor_start_wait, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(2);
    struct broken b = {0};
    tu_reactor_start(r);
    cr_assert_eq(goev_post(goev_reactor_poller(r, 1), break_this_poller, &b), 0);
    /* No goev_reactor_stop: the failure must stop it. */
    uint64_t t0 = tu_now_ms();
    int rc = goev_reactor_wait(r);
    cr_assert(TU_LOAD(&b.ok), "filter not installed");
    cr_assert_eq(rc, -EIO, "goev_reactor_wait after a poller's wait failed: %d", rc);
    cr_assert(tu_now_ms() - t0 < 5000, "stopping took %llu ms",
              (unsigned long long)(tu_now_ms() - t0));
    /* The failed poller's connection was still let go of properly. */
    cr_assert_eq(b.conn.closes, 1, "connection of the failed poller: %d on_close", b.conn.closes);
    char c;
    cr_assert_eq(read(b.peer, &c, 1), 0, "the failed poller's socket was not closed");
    close(b.peer);
    goev_reactor_free(r);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(backend, failed_poller_stops_reactor_run, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(2);
    struct broken b = {0};
    /* Posted before run: runs on poller 1's thread at its first pass. */
    cr_assert_eq(goev_post(goev_reactor_poller(r, 1), break_this_poller, &b), 0);
    int rc = goev_reactor_run(r);
    cr_assert(TU_LOAD(&b.ok), "filter not installed");
    cr_assert_eq(b.conn.closes, 1);
    close(b.peer);
    cr_assert_eq(rc, -EIO, "goev_reactor_run after a poller's wait failed: %d", rc);
    goev_reactor_free(r);
    tu_assert_no_failures();
}
#endif

/* goev_reactor_new out of memory at every allocation it makes: -ENOMEM
 * with a reason in goev_last_error each time, nothing leaked, and then it
 * works. */
static int alloc_left = -1;     /* allocations still allowed; -1 = all */

static bool alloc_ok(void)
{
    int n = __atomic_load_n(&alloc_left, __ATOMIC_SEQ_CST);
    while (n > 0 && !__atomic_compare_exchange_n(&alloc_left, &n, n - 1, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST))
        ;
    return n != 0;
}
static void *lim_malloc(size_t n) { return alloc_ok() ? malloc(n) : NULL; }
static void *lim_realloc(void *p, size_t n) { return alloc_ok() ? realloc(p, n) : NULL; }
static void *lim_calloc(size_t k, size_t n) { return alloc_ok() ? calloc(k, n) : NULL; }

Test(backend, new_out_of_memory_sets_last_error, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    cr_assert_eq(goev_replace_allocator(lim_malloc, lim_realloc, lim_calloc, free), 0);
    cr_assert_eq(goev_replace_allocator(lim_malloc, NULL, lim_calloc, free), -EINVAL);
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 2;
    int n;
    for (n = 0; n < 1000; n++) {
        goev_reactor *r = NULL;
        __atomic_store_n(&alloc_left, n, __ATOMIC_SEQ_CST);
        int rc = goev_reactor_new(&r, &o);
        __atomic_store_n(&alloc_left, -1, __ATOMIC_SEQ_CST);
        if (rc == 0) {
            goev_reactor_free(r);
            break;
        }
        if (rc == -ENOSYS || rc == -EPERM)
            cr_skip_test("io_uring refused here");
        cr_assert_eq(rc, -ENOMEM, "allocation %d failing: goev_reactor_new %d", n + 1, rc);
        cr_assert_null(r);
        cr_assert(goev_last_error()[0], "allocation %d failing: goev_last_error empty", n + 1);
        tu_assert_fds(fds);
    }
    cr_assert(n > 0 && n < 1000, "goev_reactor_new made %d allocations", n);
    cr_assert_eq(goev_replace_allocator(NULL, NULL, NULL, NULL), 0);
    tu_assert_fds(fds);
}

/* ---- life cycle ---------------------------------------------------------- */

struct life {
    goev_handler h;
    goev_timer t;
    int closes, reason, thread_ok;
};

static ssize_t life_on_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static int life_on_ready(goev_handler *h, unsigned ev)
{
    return 0;
}

static int life_on_timeout(goev_handler *h, goev_timer *t)
{
    return 0;
}

static void life_on_close(goev_handler *h, int reason)
{
    struct life *x = (struct life *)h;
    x->reason = reason;
    x->closes++;
}

static const struct goev_handler_ops life_ops = {
    .on_read = life_on_read, .on_ready = life_on_ready, .on_timeout = life_on_timeout,
    .on_close = life_on_close,
};

Test(backend, free_without_run_closes_everything, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(2);
    goev_poller *p0 = goev_reactor_poller(r, 0), *p1 = goev_reactor_poller(r, 1);
    struct life conn = {0}, watch = {0}, timer = {0};
    goev_handler_init(&conn.h, &life_ops);
    goev_handler_init(&watch.h, &life_ops);
    goev_handler_init(&timer.h, &life_ops);
    int sv[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    cr_assert_eq(goev_conn_open(p0, &conn.h, sv[0]), 0);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    cr_assert_eq(goev_watch(p1, &watch.h, efd, GOEV_READ), 0);
    goev_timer_init(&timer.t);
    cr_assert_eq(goev_timer_start(p1, &timer.h, &timer.t, 60000, 0), 0);
    /* A handler already in use cannot be adopted again; nothing is called
     * for the refused call and the fd stays ours. */
    int sv2[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2) == 0);
    cr_assert_eq(goev_conn_open(p0, &conn.h, sv2[0]), -EINVAL);
    cr_assert(fcntl(sv2[0], F_GETFD) != -1, "a refused goev_conn_open closed the fd");
    close(sv2[0]);
    close(sv2[1]);
    /* Never run: freeing closes all three here, each with one on_close. */
    goev_reactor_free(r);
    cr_assert_eq(conn.closes, 1);
    cr_assert_eq(watch.closes, 1);
    cr_assert_eq(timer.closes, 1);
    /* The adopted socket and the watched fd were closed: the peer sees EOF. */
    size_t extra;
    cr_assert_eq(tu_wait_eof(sv[1], 1000, &extra), 1);
    close(sv[1]);
    tu_assert_fds(fds);
}

Test(backend, run_state_errors, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(2);
    cr_assert_eq(goev_reactor_wait(r), -EINVAL, "wait on a reactor never started");
    tu_reactor_start(r);
    cr_assert_eq(goev_reactor_start(r), -EALREADY);
    cr_assert_eq(goev_reactor_run(r), -EALREADY);
    tu_reactor_stop_wait(r);
    cr_assert_eq(goev_reactor_start(r), -EALREADY, "restart after stop");
    struct goev_stats st;
    cr_assert_eq(goev_stats_get(r, 2, &st), -EINVAL);
    cr_assert_eq(goev_stats_get(r, -2, &st), -EINVAL);
    cr_assert_eq(goev_stats_get(r, -1, &st), 0);
    cr_assert_eq(st.conns, 0);
    goev_reactor_free(r);
    goev_reactor_free(NULL);
    tu_assert_fds(fds);
}

struct quiet {
    goev_handler h;
    int closes;
};

static ssize_t quiet_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static void quiet_close(goev_handler *h, int reason)
{
    ((struct quiet *)h)->closes++;
}

static const struct goev_handler_ops quiet_ops = {.on_read = quiet_read, .on_close = quiet_close};

/* Creating a reactor leaves the calling thread alone: its next blocking
 * call with a timeout times out, it does not fail with EINTR (the io_uring
 * probe's ring, torn down, used to notify the thread that had used it). */
Test(backend, new_does_not_interrupt_the_caller, .timeout = TU_TIMEOUT)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    tu_set_io_timeout(sv[0], 100);
    for (int i = 0; i < 3; i++) {
        goev_reactor *r = tu_reactor_new(1);
        char c;
        ssize_t n = recv(sv[0], &c, 1, 0);
        int e = errno;
        cr_assert(n < 0 && (e == EAGAIN || e == EWOULDBLOCK),
                  "recv after goev_reactor_new: %zd (%s)", n, strerror(e));
        /* Started and stopped on threads of goev's own: still quiet here. */
        tu_reactor_start(r);
        tu_reactor_stop_wait(r);
        goev_reactor_free(r);
        n = recv(sv[0], &c, 1, 0);
        e = errno;
        cr_assert(n < 0 && (e == EAGAIN || e == EWOULDBLOCK),
                  "recv after a started reactor's free: %zd (%s)", n, strerror(e));
        /* Never run: freed with its connections closed on goev's thread. */
        r = tu_reactor_new(1);
        int sp[2];
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
        struct quiet q = {0};
        goev_handler_init(&q.h, &quiet_ops);
        cr_assert_eq(goev_conn_open(goev_reactor_poller(r, 0), &q.h, sp[0]), 0);
        goev_reactor_free(r);
        cr_assert_eq(q.closes, 1, "the never-run reactor's connection was not closed");
        close(sp[1]);
        n = recv(sv[0], &c, 1, 0);
        e = errno;
        cr_assert(n < 0 && (e == EAGAIN || e == EWOULDBLOCK),
                  "recv after a never-run reactor's free: %zd (%s)", n, strerror(e));
    }
    close(sv[0]);
    close(sv[1]);
}
