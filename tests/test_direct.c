/* test_direct.c - io_uring direct descriptors (accepted sockets kept in
 * the ring's file table, not the process's), and the paths around them:
 * goev_handler_fd (-1 for a direct connection) and goev_handler_fd_install
 * (a regular fd, the connection going on unchanged), the file table filling
 * up (accepts fall back to regular fds, and go back to direct when slots
 * are free), GOEV_URING_DIRECT=0 (today's path), and no fd leaked on either.
 * Run once per backend: on epoll (and on io_uring where the kernel lacks
 * FIXED_FD_INSTALL, < 6.8) every connection must be a regular fd. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

enum { MAXC = 32 };

struct dconn {
    goev_handler h;
    struct dsrv *s;
    int idx;
    int fd_open;        /* goev_handler_fd in on_open */
    int install_at;     /* install a regular fd after this many bytes (-1: never) */
    int installed;      /* goev_handler_fd_install's result */
    int install_done;
    int fd_after;       /* goev_handler_fd after the install */
    int peer_port;      /* goev_peer_addr's port */
    size_t got;
    int closes;
};

struct dsrv {
    goev_reactor *r;
    goev_acceptor *a;
    struct dconn c[MAXC];
    int made, opens, closes;
    int install_at;
};

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

static int d_open(goev_handler *h)
{
    struct dconn *c = (struct dconn *)h;
    c->fd_open = goev_handler_fd(h);
    TU_INC(&c->s->opens);
    return 0;
}

static ssize_t d_read(goev_handler *h, const char *d, size_t n)
{
    struct dconn *c = (struct dconn *)h;
    if (c->install_at >= 0 && c->got + n > (size_t)c->install_at && !c->install_done) {
        TU_STORE(&c->installed, goev_handler_fd_install(h));
        TU_STORE(&c->fd_after, goev_handler_fd(h));
        struct sockaddr_storage ss;
        socklen_t len;
        if (goev_peer_addr(h, &ss, &len) == 0 && ss.ss_family == AF_INET)
            TU_STORE(&c->peer_port, ntohs(((struct sockaddr_in *)&ss)->sin_port));
        TU_STORE(&c->install_done, 1);     /* last: the test waits for it */
    }
    c->got += n;
    TU_CHECK(goev_write(h, d, n) == 0, "echo write");
    return (ssize_t)n;
}

static int d_eof(goev_handler *h)
{
    goev_close(h);
    return 0;
}

static void d_close(goev_handler *h, int reason)
{
    struct dconn *c = (struct dconn *)h;
    TU_CHECK(TU_INC(&c->closes) == 1, "on_close twice on connection %d", c->idx);
    TU_CHECK(goev_handler_fd(h) == -1, "goev_handler_fd %d in on_close", goev_handler_fd(h));
    TU_INC(&c->s->closes);
}

static const struct goev_handler_ops d_ops = {
    .on_open = d_open, .on_read = d_read, .on_eof = d_eof, .on_close = d_close,
};

static goev_handler *d_new(goev_poller *p, void *arg)
{
    struct dsrv *s = arg;
    int i = s->made;
    if (i >= MAXC)
        return NULL;
    s->made++;
    struct dconn *c = &s->c[i];
    memset(c, 0, sizeof *c);
    goev_handler_init(&c->h, &d_ops);
    c->s = s;
    c->idx = i;
    c->install_at = s->install_at;
    c->fd_open = -2;
    return &c->h;
}

/* Does this run put accepted sockets in the file table? */
static bool direct_expected(goev_reactor *r)
{
    if (strcmp(goev_backend_name(r), "io_uring") != 0)
        return false;
    const char *e = getenv("GOEV_URING_DIRECT");
    if (e && strcmp(e, "0") == 0)
        return false;
    struct utsname u;
    int maj = 0, min = 0;
    if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &maj, &min) != 2)
        return false;
    return maj > 6 || (maj == 6 && min >= 8);     /* FIXED_FD_INSTALL */
}

static void srv_start(struct dsrv *s, int install_at, bool start)
{
    memset(s, 0, sizeof *s);
    s->install_at = install_at;
    s->r = tu_reactor_new(1);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", NULL, d_new, s);
    cr_assert_eq(rc, 0, "goev_acceptor_new: %s", strerror(-rc));
    if (start)
        tu_reactor_start(s->r);
}

static void srv_stop(struct dsrv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
}

/* Send a pattern in pieces and read it back: bytes in order. */
static void echo_check(int fd, int seed, size_t total)
{
    char out[4096], in[4096];
    size_t done = 0;
    while (done < total) {
        size_t n = total - done < sizeof out ? total - done : sizeof out;
        for (size_t k = 0; k < n; k++)
            out[k] = (char)((done + k) * 31 + (size_t)seed);
        cr_assert_eq(tu_write_all(fd, out, n), 0, "write: %s", strerror(errno));
        cr_assert_eq(tu_read_exact(fd, in, n), 0, "echo of connection %d short", seed);
        cr_assert(memcmp(in, out, n) == 0, "echo of connection %d out of order at %zu", seed, done);
        done += n;
    }
}

static int local_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t l = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &l) < 0)
        return -1;
    return ntohs(sa.sin_port);
}

/* n clients, one after another, each echoing; returns how many of the
 * server's connections had no fd at on_open (direct). */
static int connect_some(struct dsrv *s, int *cfd, int from, int n)
{
    int port = goev_acceptor_port(s->a);
    int direct = 0;
    for (int i = from; i < from + n; i++) {
        cfd[i] = tu_connect_tcp4(port);
        cr_assert(cfd[i] >= 0, "connect: %s", strerror(errno));
        echo_check(cfd[i], i, 10000);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s->opens) == i + 1, 5000));
        int fd = TU_LOAD(&s->c[i].fd_open);
        cr_assert(fd == -1 || fd >= 0, "goev_handler_fd %d", fd);
        direct += fd == -1;
    }
    return direct;
}

static void close_all(struct dsrv *s, int *cfd, int n, int closes)
{
    for (int i = 0; i < n; i++)
        close(cfd[i]);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s->closes) == closes, 5000), "closes %d of %d",
              TU_LOAD(&s->closes), closes);
}

/* Direct descriptors by default: no fd in the process per connection. */
static void basic(void)
{
    int fds0 = tu_fd_count();
    struct dsrv s;
    srv_start(&s, -1, true);
    bool direct = direct_expected(s.r);
    int fds = tu_fd_count();
    int cfd[8];
    int nd = connect_some(&s, cfd, 0, 8);
    cr_assert_eq(nd, direct ? 8 : 0, "%d of 8 direct (expected %s)", nd, direct ? "all" : "none");
    /* The client's 8 sockets, and the server's 8 unless direct. */
    cr_assert_eq(tu_fd_count(), fds + 8 + (direct ? 0 : 8), "fds %d, from %d", tu_fd_count(), fds);
    close_all(&s, cfd, 8, 8);
    srv_stop(&s);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(s.c[i].closes, 1);
    tu_assert_no_failures();
    tu_assert_fds(fds0);
}

Test(direct, default_path, .init = init_test, .timeout = TU_TIMEOUT)
{
    basic();
}

Test(direct, forced_off, .init = init_test, .timeout = TU_TIMEOUT)
{
    setenv("GOEV_URING_DIRECT", "0", 1);
    basic();
}

/* goev_handler_fd_install in the middle of a stream: a regular fd, the same
 * socket (the peer's port matches), and the bytes go on in order. */
Test(direct, fd_install, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds0 = tu_fd_count();
    struct dsrv s;
    srv_start(&s, 5000, true);
    bool direct = direct_expected(s.r);
    int cfd[4];
    int nd = connect_some(&s, cfd, 0, 4);
    cr_assert_eq(nd, direct ? 4 : 0);
    for (int i = 0; i < 4; i++) {
        struct dconn *c = &s.c[i];
        cr_assert(TU_WAIT_FOR(TU_LOAD(&c->install_done) == 1, 5000), "no install on connection %d", i);
        int fd = TU_LOAD(&c->installed);
        cr_assert(fd >= 0, "goev_handler_fd_install: %s", strerror(-fd));
        cr_assert_eq(TU_LOAD(&c->fd_after), fd, "goev_handler_fd after install");
        if (!direct)
            cr_assert_eq(fd, c->fd_open, "install on a regular fd gives that fd");
        cr_assert_eq(TU_LOAD(&c->peer_port), local_port(cfd[i]), "peer address");
        echo_check(cfd[i], 100 + i, 20000);     /* after the switch */
    }
    /* goev_shutdown and goev_sendfile take the same way; a closed handler
     * has nothing to install. */
    goev_handler lone;
    goev_handler_init(&lone, &d_ops);
    cr_assert_eq(goev_handler_fd_install(&lone), -ENOTCONN);
    cr_assert_eq(goev_handler_fd_install(NULL), -ENOTCONN);
    close_all(&s, cfd, 4, 4);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds0);
}

/* A table of 8: accepts switch to regular fds at 7 in use, and back to
 * direct once connections have closed. */
Test(direct, table_full_fallback, .init = init_test, .timeout = TU_TIMEOUT)
{
    setenv("GOEV_URING_FILES", "8", 1);
    int fds0 = tu_fd_count();
    struct dsrv s;
    srv_start(&s, -1, true);
    bool direct = direct_expected(s.r);
    int cfd[MAXC];
    int nd = connect_some(&s, cfd, 0, 16);
    cr_assert_eq(nd, direct ? 7 : 0, "%d of 16 direct", nd);
    for (int i = 7; i < 16; i++)
        cr_assert(s.c[i].fd_open >= 0, "connection %d past the mark has an fd", i);
    for (int i = 0; i < 16; i++)
        echo_check(cfd[i], 200 + i, 3000);      /* both kinds still work */
    close_all(&s, cfd, 16, 16);
    nd = connect_some(&s, cfd, 16, 4);
    cr_assert_eq(nd, direct ? 4 : 0, "%d of 4 direct after the table emptied", nd);
    close_all(&s, cfd + 16, 4, 20);
    srv_stop(&s);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(s.c[i].closes, 1);
    tu_assert_no_failures();
    tu_assert_fds(fds0);
}

/* A burst larger than the table, waiting in the backlog when the accept
 * starts: the kernel fills the table, drops the connection that found it
 * full (ENFILE), and the rest are accepted as regular fds. */
Test(direct, table_full_burst, .init = init_test, .timeout = TU_TIMEOUT)
{
    setenv("GOEV_URING_FILES", "8", 1);
    int fds0 = tu_fd_count();
    struct dsrv s;
    srv_start(&s, -1, false);
    int port = goev_acceptor_port(s.a);
    enum { N = 12 };
    int cfd[N];
    for (int i = 0; i < N; i++) {
        cfd[i] = tu_connect_tcp4(port);
        cr_assert(cfd[i] >= 0, "connect: %s", strerror(errno));
    }
    tu_reactor_start(s.r);
    bool direct = direct_expected(s.r);
    int ok = 0, lost = 0;
    for (int i = 0; i < N; i++) {
        char b[64];
        memset(b, 'a' + i, sizeof b);
        if (tu_write_all(cfd[i], b, sizeof b) == 0 && tu_read_exact(cfd[i], b, sizeof b) == 0) {
            for (size_t k = 0; k < sizeof b; k++)
                cr_assert_eq(b[k], 'a' + i);
            ok++;
        } else {
            lost++;
        }
    }
    cr_assert_eq(lost, direct ? 1 : 0, "%d connections lost", lost);
    cr_assert_eq(TU_LOAD(&s.opens), ok);
    int nd = 0;
    for (int i = 0; i < ok; i++)
        nd += s.c[i].fd_open == -1;
    cr_assert_eq(nd, direct ? 8 : 0, "%d direct", nd);
    close_all(&s, cfd, N, ok);
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds0);
}
