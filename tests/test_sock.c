/* test_sock.c - addresses and socket options of connections: goev_peer_addr
 * and goev_local_addr against what the other end of the socket sees (IPv4,
 * IPv6, unix paths and the abstract namespace), goev_addr_format and
 * goev_addr_parse, the per-connection option setters read back with
 * getsockopt, and the options of the acceptor (inherited by accepted
 * sockets) and of goev_connect_ex (bind address, buffers, keepalive). */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

static int getint(int fd, int level, int name)
{
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, name, &v, &l) < 0)
        return -errno;
    return v;
}

/* What a handler saw of its socket in on_open (on the poller thread). */
struct seen {
    goev_handler h;
    int opens, closes, fails, fail_err;
    int rc_peer, rc_local;
    char peer[GOEV_ADDRSTRLEN], local[GOEV_ADDRSTRLEN];
    int keepalive, keepidle, keepintvl, keepcnt, nodelay, sndbuf, rcvbuf;
    /* on_open also runs these setters, when asked */
    int set_opts;
    int rc_set[6];
};

static void fmt(const struct sockaddr_storage *ss, socklen_t len, char *out)
{
    int n = goev_addr_format((const struct sockaddr *)ss, len, out, GOEV_ADDRSTRLEN);
    if (n < 0)
        snprintf(out, GOEV_ADDRSTRLEN, "(error %d)", n);
}

static void record(struct seen *s)
{
    goev_handler *h = &s->h;
    struct sockaddr_storage ss;
    socklen_t len;
    s->rc_peer = goev_peer_addr(h, &ss, &len);
    if (s->rc_peer == 0)
        fmt(&ss, len, s->peer);
    s->rc_local = goev_local_addr(h, &ss, &len);
    if (s->rc_local == 0)
        fmt(&ss, len, s->local);
    int fd = goev_handler_fd(h);
    s->keepalive = getint(fd, SOL_SOCKET, SO_KEEPALIVE);
    s->keepidle = getint(fd, IPPROTO_TCP, TCP_KEEPIDLE);
    s->keepintvl = getint(fd, IPPROTO_TCP, TCP_KEEPINTVL);
    s->keepcnt = getint(fd, IPPROTO_TCP, TCP_KEEPCNT);
    s->nodelay = getint(fd, IPPROTO_TCP, TCP_NODELAY);
    s->sndbuf = getint(fd, SOL_SOCKET, SO_SNDBUF);
    s->rcvbuf = getint(fd, SOL_SOCKET, SO_RCVBUF);
}

static int seen_open(goev_handler *h)
{
    struct seen *s = (struct seen *)h;
    if (s->set_opts) {
        s->rc_set[0] = goev_set_keepalive(h, 7, 3, 4);
        s->rc_set[1] = goev_set_nodelay(h, 0);
        s->rc_set[2] = goev_set_sndbuf(h, 96 * 1024);
        s->rc_set[3] = goev_set_rcvbuf(h, 80 * 1024);
        s->rc_set[4] = goev_set_sndbuf(h, 0);
        s->rc_set[5] = goev_set_keepalive(h, -1, 0, 0);
    }
    record(s);
    TU_INC(&s->opens);
    return 0;
}

static ssize_t seen_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static void seen_fail(goev_handler *h, int err)
{
    struct seen *s = (struct seen *)h;
    s->fail_err = err;
    TU_INC(&s->fails);
}

static void seen_close(goev_handler *h, int reason)
{
    struct seen *s = (struct seen *)h;
    TU_INC(&s->closes);
}

static const struct goev_handler_ops seen_ops = {
    .on_open = seen_open, .on_read = seen_read, .on_connect_fail = seen_fail,
    .on_close = seen_close,
};

struct srv {
    goev_reactor *r;
    goev_acceptor *a;
    struct seen conn;   /* the one connection accepted */
    int made;
    int set_opts;
};

static goev_handler *srv_new(goev_poller *p, void *arg)
{
    struct srv *s = arg;
    if (s->made++)
        return NULL;
    goev_handler_init(&s->conn.h, &seen_ops);
    s->conn.set_opts = s->set_opts;
    return &s->conn.h;
}

static void srv_start(struct srv *s, const char *addr, const struct goev_acceptor_opts *ao)
{
    s->r = tu_reactor_new(1);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, addr, ao, srv_new, s);
    cr_assert_eq(rc, 0, "acceptor on %s: %s", addr, strerror(-rc));
    tu_reactor_start(s->r);
}

static void srv_stop(struct srv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
}

/* The other end's view, formatted the same way. */
static void name_of(int fd, bool peer, char *out)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
                  : getsockname(fd, (struct sockaddr *)&ss, &len);
    cr_assert_eq(rc, 0, "%s", strerror(errno));
    fmt(&ss, len, out);
}

/* Accept one connection from a plain client socket and compare addresses. */
static void check_accepted(const char *listen, int family, const char *expect_local_prefix)
{
    int fds = tu_fd_count();
    struct srv s = {0};
    srv_start(&s, listen, NULL);
    int port = goev_acceptor_port(s.a);
    int fd;
    if (family == AF_INET) {
        fd = tu_connect_tcp4(port);
    } else if (family == AF_INET6) {
        fd = tu_connect_tcp6(port);
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        cr_assert_eq(goev_addr_parse(listen, &ss, &len), 0);
        fd = tu_connect_sa((struct sockaddr *)&ss, len);
    }
    cr_assert(fd >= 0, "connect: %s", strerror(errno));
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.opens) == 1, 5000));
    char cli_local[GOEV_ADDRSTRLEN], cli_peer[GOEV_ADDRSTRLEN];
    name_of(fd, false, cli_local);
    name_of(fd, true, cli_peer);
    cr_assert_eq(s.conn.rc_peer, 0, "goev_peer_addr: %d", s.conn.rc_peer);
    cr_assert_eq(s.conn.rc_local, 0, "goev_local_addr: %d", s.conn.rc_local);
    cr_assert_str_eq(s.conn.peer, cli_local, "server's peer is the client's local address");
    cr_assert_str_eq(s.conn.local, cli_peer, "server's local is the client's peer address");
    cr_assert(strncmp(s.conn.local, expect_local_prefix, strlen(expect_local_prefix)) == 0,
              "local address %s, expected %s...", s.conn.local, expect_local_prefix);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.closes) == 1, 5000));
    srv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(sock, addresses_ipv4, .init = init_test, .timeout = TU_TIMEOUT)
{
    check_accepted("127.0.0.1:0", AF_INET, "127.0.0.1:");
}

Test(sock, addresses_ipv6, .init = init_test, .timeout = TU_TIMEOUT)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (probe < 0 || bind(probe, (struct sockaddr *)&a6, sizeof a6) < 0) {
        if (probe >= 0)
            close(probe);
        cr_skip_test("no IPv6 loopback on this machine");
    }
    close(probe);
    check_accepted("[::1]:0", AF_INET6, "[::1]:");
}

Test(sock, addresses_unix_path, .init = init_test, .timeout = TU_TIMEOUT)
{
    char *dir = tu_tmpdir();
    char addr[200], want[200];
    snprintf(addr, sizeof addr, "unix:%s/s", dir);
    snprintf(want, sizeof want, "unix:%s/s", dir);
    check_accepted(addr, AF_UNIX, want);
    tu_tmpdir_free(dir);
}

Test(sock, addresses_unix_abstract, .init = init_test, .timeout = TU_TIMEOUT)
{
    char addr[64];
    snprintf(addr, sizeof addr, "unix:@goev-test-%d", (int)getpid());
    check_accepted(addr, AF_UNIX, addr);
}

/* ---- formatting and parsing ------------------------------------------------ */

static void round_trip(const char *in, const char *out)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char buf[GOEV_ADDRSTRLEN];
    cr_assert_eq(goev_addr_parse(in, &ss, &len), 0, "parse %s", in);
    int n = goev_addr_format((struct sockaddr *)&ss, len, buf, sizeof buf);
    cr_assert_eq(n, (int)strlen(out), "format %s: %d", in, n);
    cr_assert_str_eq(buf, out);
}

Test(sock, format_and_parse)
{
    round_trip("10.1.2.3:80", "10.1.2.3:80");
    round_trip(":8080", "0.0.0.0:8080");
    round_trip("[::1]:443", "[::1]:443");
    round_trip("[2001:db8::7]:0", "[2001:db8::7]:0");
    round_trip("unix:/run/x.sock", "unix:/run/x.sock");
    round_trip("unix:@hidden", "unix:@hidden");
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert_eq(goev_addr_parse("unix:@", &ss, &len), -EINVAL);
    cr_assert_eq(goev_addr_parse("localhost:80", &ss, &len), -EINVAL);
    cr_assert_eq(goev_addr_parse(NULL, &ss, &len), -EINVAL);

    /* Too small a buffer: -ENOSPC and an empty string, never a cut one. */
    char small[8] = "xxxxxxx";
    goev_addr_parse("10.1.2.3:80", &ss, &len);
    cr_assert_eq(goev_addr_format((struct sockaddr *)&ss, len, small, sizeof small), -ENOSPC);
    cr_assert_str_eq(small, "");
    char exact[12];
    cr_assert_eq(goev_addr_format((struct sockaddr *)&ss, len, exact, sizeof exact), 11);
    cr_assert_eq(goev_addr_format((struct sockaddr *)&ss, len, exact, 11), -ENOSPC);
    /* A truncated address or an unknown family is refused. */
    cr_assert_eq(goev_addr_format((struct sockaddr *)&ss, 4, exact, sizeof exact), -EINVAL);
    struct sockaddr other = {.sa_family = AF_APPLETALK};
    cr_assert_eq(goev_addr_format(&other, sizeof other, exact, sizeof exact), -EAFNOSUPPORT);
    /* The unnamed end of a unix socketpair. */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    cr_assert_eq(goev_addr_format((struct sockaddr *)&un, sizeof(sa_family_t), exact, sizeof exact), 5);
    cr_assert_str_eq(exact, "unix:");
}

/* ---- options ------------------------------------------------------------------- */

Test(sock, setters_read_back, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct srv s = {.set_opts = 1};
    srv_start(&s, "127.0.0.1:0", NULL);
    int fd = tu_connect_tcp4(goev_acceptor_port(s.a));
    cr_assert(fd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.opens) == 1, 5000));
    struct seen *c = &s.conn;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(c->rc_set[i], 0, "setter %d: %d", i, c->rc_set[i]);
    cr_assert_eq(c->rc_set[4], -EINVAL, "sndbuf 0");
    cr_assert_eq(c->rc_set[5], -EINVAL, "negative keepalive");
    cr_assert_eq(c->keepalive, 1);
    cr_assert_eq(c->keepidle, 7);
    cr_assert_eq(c->keepintvl, 3);
    cr_assert_eq(c->keepcnt, 4);
    cr_assert_eq(c->nodelay, 0);
    cr_assert_geq(c->sndbuf, 96 * 1024, "SO_SNDBUF %d", c->sndbuf);
    cr_assert_geq(c->rcvbuf, 80 * 1024, "SO_RCVBUF %d", c->rcvbuf);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closes) == 1, 5000));
    srv_stop(&s);
    tu_assert_no_failures();
}

Test(sock, acceptor_options_inherited, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.sndbuf = 200 * 1024;
    ao.rcvbuf = 150 * 1024;
    ao.keepalive_idle = 11;
    ao.keepalive_interval = 5;
    ao.keepalive_count = 2;
    struct srv s = {0};
    srv_start(&s, "127.0.0.1:0", &ao);
    int fd = tu_connect_tcp4(goev_acceptor_port(s.a));
    cr_assert(fd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.opens) == 1, 5000));
    struct seen *c = &s.conn;
    cr_assert_eq(c->keepalive, 1);
    cr_assert_eq(c->keepidle, 11);
    cr_assert_eq(c->keepintvl, 5);
    cr_assert_eq(c->keepcnt, 2);
    cr_assert_eq(c->nodelay, 1, "TCP_NODELAY is on by default");
    cr_assert_geq(c->sndbuf, 200 * 1024, "SO_SNDBUF %d", c->sndbuf);
    cr_assert_geq(c->rcvbuf, 150 * 1024, "SO_RCVBUF %d", c->rcvbuf);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closes) == 1, 5000));
    srv_stop(&s);
    tu_assert_no_failures();
}

struct cstart {
    struct seen *c;
    const char *addr;
    struct goev_connect_opts o;
    int rc;
};

static void do_connect(goev_poller *p, void *arg)
{
    struct cstart *cs = arg;
    goev_handler_init(&cs->c->h, &seen_ops);
    cs->rc = goev_connect_ex(p, &cs->c->h, cs->addr, &cs->o);
}

Test(sock, connector_options_and_bind, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    int port;
    int lfd = tu_listen_tcp4(8, &port);
    cr_assert(lfd >= 0);
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    struct seen c = {0};
    struct cstart cs = {.c = &c, .addr = addr};
    goev_connect_opts_init(&cs.o);
    cs.o.timeout_ms = 5000;
    cs.o.bind_addr = "127.0.0.2:0";
    cs.o.no_nodelay = 1;
    cs.o.sndbuf = 100 * 1024;
    cs.o.rcvbuf = 120 * 1024;
    cs.o.keepalive_idle = 30;
    cs.o.keepalive_interval = 6;
    cs.o.keepalive_count = 3;
    tu_run_on(goev_reactor_poller(r, 0), do_connect, &cs);
    cr_assert_eq(cs.rc, 0, "goev_connect_ex: %s", strerror(-cs.rc));
    int afd = accept(lfd, NULL, NULL);
    cr_assert(afd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c.opens) == 1, 5000), "fails %d (%d)", c.fails, c.fail_err);
    char srv_peer[GOEV_ADDRSTRLEN], srv_local[GOEV_ADDRSTRLEN];
    name_of(afd, true, srv_peer);
    name_of(afd, false, srv_local);
    cr_assert_str_eq(c.local, srv_peer, "bound local address");
    cr_assert(strncmp(c.local, "127.0.0.2:", 10) == 0, "local %s", c.local);
    cr_assert_str_eq(c.peer, srv_local);
    cr_assert_eq(c.nodelay, 0);
    cr_assert_eq(c.keepalive, 1);
    cr_assert_eq(c.keepidle, 30);
    cr_assert_eq(c.keepintvl, 6);
    cr_assert_eq(c.keepcnt, 3);
    cr_assert_geq(c.sndbuf, 100 * 1024);
    cr_assert_geq(c.rcvbuf, 120 * 1024);
    close(afd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c.closes) == 1, 5000));

    /* A bind address of another family, or one that cannot be bound, fails
     * at once and calls nothing. */
    struct seen c2 = {0};
    struct cstart cs2 = {.c = &c2, .addr = addr};
    goev_connect_opts_init(&cs2.o);
    cs2.o.bind_addr = "[::1]:0";
    tu_run_on(goev_reactor_poller(r, 0), do_connect, &cs2);
    cr_assert_eq(cs2.rc, -EINVAL);
    cs2.o.bind_addr = "192.0.2.1:0";     /* TEST-NET: not an address of this host */
    tu_run_on(goev_reactor_poller(r, 0), do_connect, &cs2);
    cr_assert_eq(cs2.rc, -EADDRNOTAVAIL, "%s", strerror(-cs2.rc));
    char inuse[64];
    snprintf(inuse, sizeof inuse, "127.0.0.1:%d", port);
    cs2.o.bind_addr = inuse;
    tu_run_on(goev_reactor_poller(r, 0), do_connect, &cs2);
    cr_assert_eq(cs2.rc, -EADDRINUSE, "%s", strerror(-cs2.rc));
    tu_sleep_ms(50);
    cr_assert_eq(c2.opens + c2.fails + c2.closes, 0, "a failed goev_connect_ex called back");

    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    close(lfd);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

static void set_on_nothing(goev_poller *p, void *arg)
{
    int *rc = arg;
    goev_handler h;
    goev_handler_init(&h, &seen_ops);
    struct sockaddr_storage ss;
    socklen_t len;
    rc[0] = goev_set_nodelay(&h, 1);
    rc[1] = goev_peer_addr(&h, &ss, &len);
    rc[2] = goev_set_keepalive(NULL, 1, 1, 1);
}

Test(sock, errors, .init = init_test, .timeout = TU_TIMEOUT)
{
    /* No connection: -ENOTCONN.  A unix socket: TCP options are refused
     * by the kernel, buffer sizes work. */
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    int rc[3];
    tu_run_on(goev_reactor_poller(r, 0), set_on_nothing, rc);
    cr_assert_eq(rc[0], -ENOTCONN);
    cr_assert_eq(rc[1], -ENOTCONN);
    cr_assert_eq(rc[2], -ENOTCONN);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);

    char *dir = tu_tmpdir();
    char addr[200];
    snprintf(addr, sizeof addr, "unix:%s/s", dir);
    struct srv s = {.set_opts = 1};
    srv_start(&s, addr, NULL);
    struct sockaddr_storage ss;
    socklen_t len;
    goev_addr_parse(addr, &ss, &len);
    int fd = tu_connect_sa((struct sockaddr *)&ss, len);
    cr_assert(fd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.opens) == 1, 5000));
    cr_assert_eq(s.conn.rc_set[0], -EOPNOTSUPP, "keepalive on unix: %d", s.conn.rc_set[0]);
    cr_assert_eq(s.conn.rc_set[1], -EOPNOTSUPP, "nodelay on unix: %d", s.conn.rc_set[1]);
    cr_assert_eq(s.conn.rc_set[2], 0);
    cr_assert_eq(s.conn.rc_set[3], 0);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.conn.closes) == 1, 5000));
    srv_stop(&s);
    tu_tmpdir_free(dir);
}
