/* test_accept.c - the acceptor: address forms, reuseport across pollers,
 * hand-off to another reactor, bind errors, and EMFILE back-off. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CONNS 256

struct server {
    goev_reactor *conn_r;
    int news, opens, closes;
    int per_poller[8];          /* on_open count by handler poller index */
    int wrong_reactor;          /* new_handler/on_open off conn_r or its thread */
    pthread_mutex_t mu;
    goev_handler *hs[MAX_CONNS];
    int nh;
};

static int srv_on_open(goev_handler *h)
{
    struct server *s = h->user;
    goev_poller *p = goev_handler_poller(h);
    if (!p || goev_poller_reactor(p) != s->conn_r || goev_current_poller() != p)
        TU_INC(&s->wrong_reactor);
    else
        TU_INC(&s->per_poller[goev_poller_index(p) & 7]);
    TU_INC(&s->opens);
    return 0;
}

static ssize_t srv_on_read(goev_handler *h, const char *d, size_t n)
{
    int rc = goev_write(h, d, n);
    TU_CHECK(rc == 0, "goev_write: %d", rc);
    return (ssize_t)n;
}

static void srv_on_close(goev_handler *h, int reason)
{
    struct server *s = h->user;
    TU_INC(&s->closes);
}

static const struct goev_handler_ops srv_ops = {
    .on_open = srv_on_open, .on_read = srv_on_read, .on_close = srv_on_close,
};

static goev_handler *srv_new(goev_poller *p, void *arg)
{
    struct server *s = arg;
    if (goev_poller_reactor(p) != s->conn_r || goev_current_poller() != p)
        TU_INC(&s->wrong_reactor);
    goev_handler *h = calloc(1, sizeof *h);
    goev_handler_init(h, &srv_ops);
    h->user = s;
    pthread_mutex_lock(&s->mu);
    if (s->nh < MAX_CONNS)
        s->hs[s->nh++] = h;
    pthread_mutex_unlock(&s->mu);
    TU_INC(&s->news);
    return h;
}

static void server_init(struct server *s, goev_reactor *conn_r)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->conn_r = conn_r;
}

static void server_fini(struct server *s)
{
    cr_assert_eq(s->opens, s->closes, "%d opened, %d closed", s->opens, s->closes);
    cr_assert_eq(s->wrong_reactor, 0, "handlers ran on the wrong reactor or thread");
    for (int i = 0; i < s->nh; i++)
        free(s->hs[i]);
    pthread_mutex_destroy(&s->mu);
}

/* A short request/echo exchange on a connected client socket. */
static void ping(int fd, int k)
{
    char msg[32], back[32];
    int n = snprintf(msg, sizeof msg, "ping %d", k);
    cr_assert(tu_write_all(fd, msg, (size_t)n) == 0);
    int rc = tu_read_exact(fd, back, (size_t)n);
    cr_assert_eq(rc, 0, "no echo for '%s': %s", msg, strerror(-rc));
    cr_assert(memcmp(msg, back, (size_t)n) == 0);
}

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

/* ---- address forms ----------------------------------------------------- */

enum fam { F4, F6, FUNIX };

static void serve_on(const char *addr, enum fam fam, const char *unix_path)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    struct server s;
    server_init(&s, r);
    goev_acceptor *a;
    int rc = goev_acceptor_new(&a, r, r, addr, NULL, srv_new, &s);
    cr_assert_eq(rc, 0, "goev_acceptor_new(%s): %s", addr, strerror(-rc));
    int port = goev_acceptor_port(a);
    if (fam == FUNIX)
        cr_assert_eq(port, 0);
    else
        cr_assert(port > 0 && port < 65536, "port %d", port);
    tu_reactor_start(r);
    int cfd[3];
    for (int i = 0; i < 3; i++) {
        cfd[i] = fam == F4 ? tu_connect_tcp4(port)
               : fam == F6 ? tu_connect_tcp6(port)
                           : tu_connect_unix(unix_path);
        cr_assert(cfd[i] >= 0, "connect to %s: %s", addr, strerror(errno));
    }
    for (int i = 0; i < 3; i++)
        ping(cfd[i], i);
    for (int i = 0; i < 3; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 3, 5000));
    tu_reactor_stop_wait(r);
    struct goev_stats st;
    cr_assert(goev_stats_get(r, 0, &st) == 0);
    cr_assert_eq(st.accepted, 3);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    server_fini(&s);
    if (unix_path)
        cr_assert(access(unix_path, F_OK) != 0, "socket file %s left behind", unix_path);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(accept, ipv4_loopback, .init = init_test, .timeout = TU_TIMEOUT)
{
    serve_on("127.0.0.1:0", F4, NULL);
}

Test(accept, ipv4_any, .init = init_test, .timeout = TU_TIMEOUT)
{
    serve_on(":0", F4, NULL);
}

Test(accept, ipv6_loopback, .init = init_test, .timeout = TU_TIMEOUT)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
    int ok = probe >= 0 && bind(probe, (struct sockaddr *)&s6, sizeof s6) == 0;
    if (probe >= 0)
        close(probe);
    if (!ok)
        cr_skip_test("no IPv6 loopback here");
    serve_on("[::1]:0", F6, NULL);
}

Test(accept, unix_socket, .init = init_test, .timeout = TU_TIMEOUT)
{
    char *dir = tu_tmpdir();
    char path[300], addr[310];
    snprintf(path, sizeof path, "%s/srv.sock", dir);
    snprintf(addr, sizeof addr, "unix:%s", path);
    /* A stale socket file from a dead server is replaced (unlink_unix). */
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    cr_assert(bind(stale, (struct sockaddr *)&sun, sizeof sun) == 0);
    close(stale);
    cr_assert(access(path, F_OK) == 0);
    serve_on(addr, FUNIX, path);
    tu_tmpdir_free(dir);
}

Test(accept, unix_stale_kept_without_unlink, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    char *dir = tu_tmpdir();
    char path[300], addr[310];
    snprintf(path, sizeof path, "%s/srv.sock", dir);
    snprintf(addr, sizeof addr, "unix:%s", path);
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    cr_assert(bind(stale, (struct sockaddr *)&sun, sizeof sun) == 0);
    close(stale);
    goev_reactor *r = tu_reactor_new(1);
    struct goev_acceptor_opts o;
    goev_acceptor_opts_init(&o);
    o.unlink_unix = 0;
    goev_acceptor *a = NULL;
    struct server s;
    server_init(&s, r);
    int rc = goev_acceptor_new(&a, r, r, addr, &o, srv_new, &s);
    cr_assert_eq(rc, -EADDRINUSE, "existing socket file without unlink_unix: %d", rc);
    cr_assert(access(path, F_OK) == 0, "the file was removed although unlink_unix = 0");
    goev_reactor_free(r);
    server_fini(&s);
    tu_tmpdir_free(dir);
    tu_assert_fds(fds);
}

/* ---- reuseport and hand-off -------------------------------------------- */

Test(accept, reuseport_two_pollers, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(2);
    struct server s;
    server_init(&s, r);
    struct goev_acceptor_opts o;
    goev_acceptor_opts_init(&o);
    o.reuseport = 1;
    goev_acceptor *a;
    int rc = goev_acceptor_new(&a, r, r, "127.0.0.1:0", &o, srv_new, &s);
    cr_assert_eq(rc, 0, "%s", strerror(-rc));
    int port = goev_acceptor_port(a);
    tu_reactor_start(r);
    enum { N = 64 };
    int cfd[N];
    /* Each connection comes from a new source port, so the kernel's
     * reuseport hash spreads them over both listeners. */
    for (int i = 0; i < N; i++) {
        cfd[i] = tu_connect_tcp4(port);
        cr_assert(cfd[i] >= 0);
        ping(cfd[i], i);
    }
    struct goev_stats st0, st1;
    cr_assert(goev_stats_get(r, 0, &st0) == 0);
    cr_assert(goev_stats_get(r, 1, &st1) == 0);
    cr_assert_eq(st0.accepted + st1.accepted, N);
    cr_assert(st0.accepted > 0 && st1.accepted > 0,
              "reuseport: poller 0 accepted %llu, poller 1 %llu",
              (unsigned long long)st0.accepted, (unsigned long long)st1.accepted);
    cr_assert_eq(st0.conns + st1.conns, N);
    for (int i = 0; i < N; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N, 5000));
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    server_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(accept, handoff_to_other_reactor, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *ar = tu_reactor_new(1);
    goev_reactor *cr = tu_reactor_new(2);
    struct server s;
    server_init(&s, cr);
    goev_acceptor *a;
    int rc = goev_acceptor_new(&a, ar, cr, "127.0.0.1:0", NULL, srv_new, &s);
    cr_assert_eq(rc, 0, "%s", strerror(-rc));
    int port = goev_acceptor_port(a);
    tu_reactor_start(ar);
    tu_reactor_start(cr);
    enum { N = 20 };
    int cfd[N];
    for (int i = 0; i < N; i++) {
        cfd[i] = tu_connect_tcp4(port);
        cr_assert(cfd[i] >= 0);
        ping(cfd[i], i);
    }
    cr_assert_eq(TU_LOAD(&s.opens), N);
    /* Round-robin over the conn reactor's pollers. */
    int p0 = TU_LOAD(&s.per_poller[0]), p1 = TU_LOAD(&s.per_poller[1]);
    cr_assert_eq(p0 + p1, N, "opens on pollers: %d + %d (wrong %d)", p0, p1, s.wrong_reactor);
    cr_assert(abs(p0 - p1) <= 1, "not round-robin: %d on poller 0, %d on poller 1", p0, p1);
    struct goev_stats sa, sc;
    cr_assert(goev_stats_get(ar, -1, &sa) == 0);
    cr_assert(goev_stats_get(cr, -1, &sc) == 0);
    cr_assert_eq(sa.accepted, N);
    cr_assert_eq(sc.conns, N);
    cr_assert_eq(sa.conns, 0, "accepting reactor keeps %llu conns", (unsigned long long)sa.conns);
    for (int i = 0; i < N; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N, 5000));
    tu_reactor_stop_wait(ar);
    tu_reactor_stop_wait(cr);
    goev_acceptor_free(a);
    goev_reactor_free(ar);
    goev_reactor_free(cr);
    server_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* ---- bind errors ------------------------------------------------------- */

Test(accept, bad_addresses, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    struct server s;
    server_init(&s, r);
    static const char *bad[] = {
        "",          "127.0.0.1",  "127.0.0.1:",      "127.0.0.1:65536", "127.0.0.1:-1",
        "localhost:80", "256.0.0.1:80", "1.2.3:80",     "[::1]",           "[::1:80",
        "::1:80",    "unix:",      "127.0.0.1:80x",   ":",               "[zz]:80",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        goev_acceptor *a = NULL;
        int rc = goev_acceptor_new(&a, r, r, bad[i], NULL, srv_new, &s);
        cr_assert_eq(rc, -EINVAL, "goev_acceptor_new('%s') = %d", bad[i], rc);
    }
    goev_reactor_free(r);
    server_fini(&s);
    cr_assert_eq(s.news, 0);
    tu_assert_fds(fds);
}

Test(accept, address_in_use, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    int port;
    int lfd = tu_listen_tcp4(16, &port);
    cr_assert(lfd >= 0);
    goev_reactor *r = tu_reactor_new(2);
    struct server s;
    server_init(&s, r);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    goev_acceptor *a = NULL;
    int rc = goev_acceptor_new(&a, r, r, addr, NULL, srv_new, &s);
    cr_assert_eq(rc, -EADDRINUSE, "bind to a listening port: %d", rc);
    struct goev_acceptor_opts o;
    goev_acceptor_opts_init(&o);
    o.reuseport = 1;
    rc = goev_acceptor_new(&a, r, r, addr, &o, srv_new, &s);
    cr_assert_eq(rc, -EADDRINUSE, "reuseport bind to a port held without it: %d", rc);
    /* Two goev acceptors on one port clash as well. */
    goev_acceptor *a1 = NULL;
    cr_assert_eq(goev_acceptor_new(&a1, r, r, "127.0.0.1:0", NULL, srv_new, &s), 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", goev_acceptor_port(a1));
    rc = goev_acceptor_new(&a, r, r, addr, NULL, srv_new, &s);
    cr_assert_eq(rc, -EADDRINUSE, "second acceptor on port: %d", rc);
    goev_acceptor_free(a1);
    goev_reactor_free(r);
    close(lfd);
    server_fini(&s);
    tu_assert_fds(fds);
}

/* ---- EMFILE storm ------------------------------------------------------ */

static int highest_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert(d);
    int hi = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int v = atoi(e->d_name);
        if (e->d_name[0] != '.' && v > hi && v != dirfd(d))
            hi = v;
    }
    closedir(d);
    return hi;
}

/* An acceptor on r with back-off `backoff_ms`, and n clients connected to
 * it (queued in the kernel's backlog, since r does not run yet), each
 * having sent one byte if `say`.  Returns the acceptor; cfd gets the
 * clients. */
static goev_acceptor *emfile_setup(goev_reactor *r, struct server *s, int backoff_ms, int *cfd,
                                   int n, bool say)
{
    struct goev_acceptor_opts o;
    goev_acceptor_opts_init(&o);
    o.backoff_ms = backoff_ms;
    goev_acceptor *a;
    cr_assert_eq(goev_acceptor_new(&a, r, r, "127.0.0.1:0", &o, srv_new, s), 0);
    int port = goev_acceptor_port(a);
    for (int i = 0; i < n; i++) {
        cfd[i] = tu_connect_tcp4(port);
        cr_assert(cfd[i] >= 0, "client %d: %s", i, strerror(errno));
        if (say)
            cr_assert(tu_write_all(cfd[i], "x", 1) == 0);
    }
    return a;
}

/* Lower the fd limit so that `spare` more fds fit above the highest open
 * one; *old gets the limit to restore. */
static void limit_fds(int spare, struct rlimit *old)
{
    cr_assert(getrlimit(RLIMIT_NOFILE, old) == 0);
    struct rlimit low = *old;
    low.rlim_cur = (rlim_t)highest_fd() + 1 + (rlim_t)spare;
    cr_assert(setrlimit(RLIMIT_NOFILE, &low) == 0);
}

Test(accept, emfile_backoff, .init = init_test, .timeout = TU_TIMEOUT)
{
    /* EMFILE is a limit of regular fds: direct descriptors (io_uring) do
     * not take one, so this checks the regular accept path (test_direct
     * covers the file table filling up). */
    setenv("GOEV_URING_DIRECT", "0", 1);
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    struct server s;
    server_init(&s, r);
    /* The handshakes complete in the kernel's backlog before the reactor
     * runs, so the server meets all of them at once. */
    enum { N = 40, SPARE = 4 };
    int cfd[N];
    goev_acceptor *a = emfile_setup(r, &s, 50, cfd, N, true);
    int port = goev_acceptor_port(a);
    /* Room for SPARE accepted sockets, then EMFILE. */
    struct rlimit old;
    limit_fds(SPARE, &old);
    /* Holes below the highest fd are room too. */
    int room = (int)(highest_fd() + 1 + SPARE) - tu_fd_count();
    cr_assert(room >= SPARE);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(({
        struct goev_stats st_;
        goev_stats_get(r, 0, &st_);
        st_.accept_backoffs > 0;
    }), 5000), "no accept back-off at EMFILE");
    struct goev_stats st1, st2;
    goev_stats_get(r, 0, &st1);
    tu_sleep_ms(1000);
    goev_stats_get(r, 0, &st2);
    uint64_t passes = st2.passes - st1.passes;
    cr_assert(passes < 1000, "%llu loop passes in 1 s of back-off: busy loop",
              (unsigned long long)passes);
    cr_assert(st2.accept_backoffs > st1.accept_backoffs,
              "no retry during 1 s with backoff_ms 50 (%llu back-offs)",
              (unsigned long long)st2.accept_backoffs);
    cr_assert(st2.accepted <= (uint64_t)room, "accepted %llu with room for %d fds",
              (unsigned long long)st2.accepted, room);
    cr_assert(st2.accepted > 0, "nothing accepted with %d fds free", room);
    int accepted = (int)st2.accepted;
    /* Clients whose connection was accepted get served meanwhile. */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == accepted, 2000));
    /* Free fds: the backlog drains and new connections are served. */
    for (int i = 0; i < N; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N, 5000),
              "after fds were freed only %d of %d queued connections were handled",
              s.closes, N);
    int c = tu_connect_tcp4(port);
    cr_assert(c >= 0);
    ping(c, 1);
    close(c);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N + 1, 5000));
    cr_assert(setrlimit(RLIMIT_NOFILE, &old) == 0);
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    server_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* EMFILE back-off when the back-off timer itself cannot be armed (the timer
 * heap is full and cannot grow): the listener must still resume after the
 * back-off, not stay paused for good. */
static int idle_timeout(goev_handler *h, goev_timer *t) { return 0; }
static const struct goev_handler_ops idle_timer_ops = {.on_timeout = idle_timeout};

static void fill_heap(goev_poller *p, void *arg)
{
    goev_handler *h = arg;
    goev_timer *t = h->user;
    int rc = goev_timer_start(p, h, t, 3600 * 1000, 0);
    TU_CHECK(rc == 0, "goev_timer_start: %d", rc);
}

Test(accept, emfile_backoff_without_timer_memory, .init = init_test, .timeout = TU_TIMEOUT)
{
    /* EMFILE is a limit of regular fds: direct descriptors (io_uring) do
     * not take one, so this checks the regular accept path (test_direct
     * covers the file table filling up). */
    setenv("GOEV_URING_DIRECT", "0", 1);
    int fds = tu_fd_count();
    struct goev_reactor_opts ro;
    goev_reactor_opts_init(&ro);
    ro.pollers = 1;
    ro.timer_heap_size = 1;     /* one timer fills it; the next must grow it */
    goev_reactor *r = tu_reactor_new_opts(&ro);
    goev_handler th;
    goev_timer tt;
    goev_handler_init(&th, &idle_timer_ops);
    goev_timer_init(&tt);
    th.user = &tt;
    fill_heap(goev_reactor_poller(r, 0), &th);
    struct server s;
    server_init(&s, r);
    enum { N = 12, SPARE = 2 };
    int cfd[N];
    goev_acceptor *a = emfile_setup(r, &s, 50, cfd, N, false);
    int port = goev_acceptor_port(a);
    struct rlimit old;
    limit_fds(SPARE, &old);
    tu_alloc_fail(TU_FAIL_REALLOC);     /* the heap grows with realloc */
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(({
        struct goev_stats st_;
        goev_stats_get(r, 0, &st_);
        st_.accept_backoffs > 0;
    }), 5000), "no accept back-off at EMFILE");
    struct goev_stats st1, st2;
    goev_stats_get(r, 0, &st1);
    tu_sleep_ms(500);
    goev_stats_get(r, 0, &st2);
    cr_assert(tu_alloc_refused() > 0, "the back-off timer did not need memory");
    cr_assert(st2.passes - st1.passes < 500, "%llu passes in 0.5 s: busy loop",
              (unsigned long long)(st2.passes - st1.passes));
    cr_assert(st2.accept_backoffs > st1.accept_backoffs,
              "listener not retried within 0.5 s (backoff_ms 50) without a timer");
    /* Room again: every queued connection gets accepted and handled. */
    cr_assert(setrlimit(RLIMIT_NOFILE, &old) == 0);
    for (int i = 0; i < N; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N, 5000),
              "listener stalled: %d of %d queued connections handled", s.closes, N);
    tu_alloc_fail(0);
    int c = tu_connect_tcp4(port);
    cr_assert(c >= 0);
    ping(c, 1);
    close(c);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == N + 1, 5000));
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    server_fini(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}
