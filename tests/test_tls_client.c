/* test_tls_client.c - the client side of goev's TLS: goev_connect_ex and
 * pools with goev_connect_opts.tls, against
 *   - a goev TLS server (an acceptor with .tls) on the same reactor,
 *   - `openssl s_server` run as a child process (-www, -alpn, -Verify,
 *     -servername), and a python3 ssl server,
 *   - small blocking OpenSSL peers on threads of the test (for what only
 *     a hand-driven peer can do: stay silent, send garbage, read late, not
 *     close).
 * Certificates: tu_tls_cert (tests/tls_testutil.c). */
#include "testutil.h"
#include "tls_testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef TOP_SRCDIR
#define TOP_SRCDIR "."
#endif

/* ---- child processes (openssl s_server, python3) --------------------------- */

static pid_t kids[8];
static int kid_out[8];
static int nkids;

/* Run argv with stdout on a pipe; wait (up to 5 s) for a line holding
 * `marker` followed by a port ("ACCEPT 127.0.0.1:PORT", "PORT 1234"),
 * return the port.  The child dies with the test (PDEATHSIG) and is
 * killed in teardown. */
static int spawn_server(const char *const argv[], const char *marker)
{
    int pfd[2];
    cr_assert(pipe2(pfd, O_CLOEXEC) == 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int dn = open("/dev/null", O_RDWR);
        dup2(dn, 0);
        dup2(pfd[1], 1);
        if (!getenv("TLS_TEST_VERBOSE"))
            dup2(dn, 2);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    cr_assert(nkids < 8);
    kid_out[nkids] = pfd[0];    /* kept open: a write to a closed pipe would kill it */
    kids[nkids++] = pid;
    char buf[4096];
    size_t len = 0;
    uint64_t deadline = tu_now_ms() + 5000;
    int port = 0;
    while (!port && tu_now_ms() < deadline && len < sizeof buf - 1) {
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = read(pfd[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = 0;
        char *m = strstr(buf, marker);
        if (m && strchr(m, '\n')) {
            char *nl = strchr(m, '\n');
            char *c = nl;
            while (c > m && c[-1] != ':' && c[-1] != ' ')
                c--;
            port = atoi(c);
        }
    }
    cr_assert(port > 0, "%s did not start: %s", argv[0], buf);
    return port;
}

static void kill_kids(void)
{
    for (int i = 0; i < nkids; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
        close(kid_out[i]);
    }
    nkids = 0;
}

static int s_server(const char *const extra[])
{
    tu_require_tool("openssl");
    const char *argv[40] = {"openssl", "s_server", "-accept", "127.0.0.1:0", "-www"};
    int n = 5;
    bool has_cert = false;
    for (int i = 0; extra[i]; i++)
        if (strcmp(extra[i], "-cert") == 0)
            has_cert = true;
    if (!has_cert) {
        argv[n++] = "-cert";
        argv[n++] = tu_tls_cert("server.pem");
        argv[n++] = "-key";
        argv[n++] = tu_tls_cert("server.key");
    }
    for (int i = 0; extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return spawn_server(argv, "ACCEPT");
}

/* ---- the reactor of a test ------------------------------------------------- */

static goev_reactor *R;
static goev_poller *P;
static goev_acceptor *A;
static int srv_port;

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
}

static void teardown(void)
{
    kill_kids();
    tu_servers_cleanup();
}

TestSuite(tls_client, .init = setup, .fini = teardown, .timeout = TU_TIMEOUT);

static void reactor_new(void)
{
    R = tu_reactor_new(1);
    P = goev_reactor_poller(R, 0);
}

static void reactor_end(void)
{
    tu_reactor_stop_wait(R);
    goev_acceptor_free(A);
    A = NULL;
    goev_reactor_free(R);
    R = NULL;
}

/* A TLS context with o's settings; cr_asserts success. */
static goev_tls_ctx *ctx_new(int server, const struct goev_tls_opts *o)
{
    goev_tls_ctx *c = NULL;
    int rc = goev_tls_ctx_new(&c, server, o);
    cr_assert(rc == 0, "goev_tls_ctx_new: %s (%s)", goev_strerror(rc), goev_tls_error_string());
    return c;
}

static goev_tls_ctx *client_ctx(void)
{
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    return ctx_new(0, &o);
}

/* ---- a goev TLS server ----------------------------------------------------- */

enum { SRV_ECHO, SRV_BYE, SRV_BIG };

static struct {
    int mode;
    size_t big;                 /* SRV_BIG: bytes to write, then close */
    int sndbuf;                 /* of accepted sockets; 0 = the kernel's */
    int accepted, opened, closed;
    int last_reason;
    char sni[256], alpn[64], subject[256];
    int subject_rc, peer_verified;
    int resumed;                /* of the last connection opened */
} srv;

struct sconn {
    goev_handler h;
};

static int s_open(goev_handler *h)
{
    struct goev_tls_info ti;
    int rc = goev_tls_info_get(h, &ti);
    TU_CHECK(rc == 0, "server goev_tls_info_get: %d", rc);
    if (rc == 0) {
        snprintf(srv.sni, sizeof srv.sni, "%s", ti.server_name);
        snprintf(srv.alpn, sizeof srv.alpn, "%.63s", ti.alpn);
        srv.peer_verified = ti.peer_verified;
        srv.resumed = ti.resumed;
    }
    srv.subject_rc = goev_tls_peer_subject(h, srv.subject, sizeof srv.subject);
    TU_INC(&srv.opened);
    if (srv.mode == SRV_BYE) {
        goev_write(h, "bye\n", 4);
        goev_close(h);
    } else if (srv.mode == SRV_BIG) {
        char *b = malloc(srv.big);
        tu_stream_fill(7, 0, b, srv.big);
        TU_CHECK(goev_write(h, b, srv.big) == 0, "server write");
        free(b);
        goev_close(h);
    }
    return 0;
}

static ssize_t s_read(goev_handler *h, const char *d, size_t n)
{
    if (srv.mode == SRV_ECHO)
        TU_CHECK(goev_write(h, d, n) == 0, "echo write");
    return (ssize_t)n;
}

static void s_close(goev_handler *h, int reason)
{
    TU_STORE(&srv.last_reason, reason);
    TU_INC(&srv.closed);
    free(h);
}

static const struct goev_handler_ops s_ops = {
    .on_open = s_open, .on_read = s_read, .on_close = s_close,
};

static goev_handler *s_new(goev_poller *p, void *arg)
{
    (void)p, (void)arg;
    struct sconn *s = calloc(1, sizeof *s);
    goev_handler_init(&s->h, &s_ops);
    TU_INC(&srv.accepted);
    return &s->h;
}

/* A goev TLS server (before the reactor starts) with this context, which
 * is freed here: the acceptor holds its own reference. */
static void goev_server(goev_tls_ctx *ctx, int mode)
{
    srv.mode = mode;
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.tls = ctx;
    ao.sndbuf = srv.sndbuf;
    int rc = goev_acceptor_new(&A, R, R, "127.0.0.1:0", &ao, s_new, NULL);
    cr_assert(rc == 0, "goev_acceptor_new: %s", goev_strerror(rc));
    goev_tls_ctx_free(ctx);
    srv_port = goev_acceptor_port(A);
}

static goev_tls_ctx *server_ctx_with(const char *pem, const char *key)
{
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.cert_file = tu_tls_cert(pem);
    o.key_file = tu_tls_cert(key);
    return ctx_new(1, &o);
}

/* ---- the goev client --------------------------------------------------------- */

struct cli {
    goev_handler h;
    char addr[64];
    struct goev_connect_opts o;
    /* what to do */
    const char *req;            /* written at on_open */
    size_t req_len;
    int close_at_open;          /* goev_close right after the request */
    int shut_at_open;           /* goev_shutdown right after the request */
    int pause_at_open;          /* goev_pause_read before that */
    size_t want;                /* close once this many bytes came (0: at EOF) */
    uint64_t seed;              /* check input as stream seed (with want) */
    /* what happened */
    int start_rc;
    int opened, fail_err, closed, close_reason, eof;
    int reads_after_close;
    int close_called;
    uint64_t close_at_ms, closed_at_ms;
    char buf[64 << 10];
    size_t len;
    size_t got;
    ptrdiff_t bad_at;
    struct goev_tls_info info;
    int info_rc;
    int connect_fail_calls;
    char err_str[256];
};

static void cli_close(struct cli *c)
{
    if (!c->close_called) {
        c->close_called = 1;
        c->close_at_ms = tu_now_ms();
        goev_close(&c->h);
    }
}

static int c_open(goev_handler *h)
{
    struct cli *c = h->user;
    c->info_rc = goev_tls_info_get(h, &c->info);
    if (c->pause_at_open)
        TU_CHECK(goev_pause_read(h) == 0, "goev_pause_read");
    if (c->req_len)
        TU_CHECK(goev_write(h, c->req, c->req_len) == 0, "client write");
    if (c->shut_at_open)
        TU_CHECK(goev_shutdown(h) == 0, "goev_shutdown");
    if (c->close_at_open)
        cli_close(c);
    TU_STORE(&c->opened, 1);
    return 0;
}

static ssize_t c_read(goev_handler *h, const char *d, size_t n)
{
    struct cli *c = h->user;
    if (c->close_called) {
        c->reads_after_close++;
        return (ssize_t)n;
    }
    if (c->seed) {
        ptrdiff_t bad = tu_stream_check(c->seed, c->got, d, n);
        if (bad >= 0 && c->bad_at < 0)
            c->bad_at = (ptrdiff_t)c->got + bad;
    } else {
        size_t k = n < sizeof c->buf - 1 - c->len ? n : sizeof c->buf - 1 - c->len;
        memcpy(c->buf + c->len, d, k);
        c->len += k;
        c->buf[c->len] = 0;
    }
    c->got += n;
    if (c->want && c->got >= c->want)
        cli_close(c);
    return (ssize_t)n;
}

static int c_eof(goev_handler *h)
{
    struct cli *c = h->user;
    c->eof++;
    cli_close(c);
    return 0;
}

static void c_fail(goev_handler *h, int err)
{
    struct cli *c = h->user;
    c->connect_fail_calls++;
    snprintf(c->err_str, sizeof c->err_str, "%s", goev_tls_error_string());
    TU_STORE(&c->fail_err, err);
}

static void c_closed(goev_handler *h, int reason)
{
    struct cli *c = h->user;
    c->close_reason = reason;
    c->closed_at_ms = tu_now_ms();
    if (reason < 0 && !c->err_str[0])
        snprintf(c->err_str, sizeof c->err_str, "%s", goev_tls_error_string());
    TU_INC(&c->closed);
}

static const struct goev_handler_ops c_ops = {
    .on_open = c_open, .on_read = c_read, .on_eof = c_eof,
    .on_connect_fail = c_fail, .on_close = c_closed,
};

static struct cli *cli_new(const char *addr, goev_tls_ctx *ctx)
{
    struct cli *c = calloc(1, sizeof *c);
    goev_handler_init(&c->h, &c_ops);
    c->h.user = c;
    c->bad_at = -1;
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    goev_connect_opts_init(&c->o);
    c->o.timeout_ms = 5000;
    c->o.tls = ctx;
    return c;
}

static struct cli *cli_to_port(int port, goev_tls_ctx *ctx)
{
    char a[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", port);
    return cli_new(a, ctx);
}

static void start_fn(goev_poller *p, void *arg)
{
    struct cli *c = arg;
    c->start_rc = goev_connect_ex(p, &c->h, c->addr, &c->o);
    if (c->start_rc < 0)
        TU_STORE(&c->closed, -1);
}

static void cli_start(struct cli *c)
{
    tu_run_on(P, start_fn, c);
    cr_assert(c->start_rc == 0, "goev_connect_ex(%s): %s", c->addr, goev_strerror(c->start_rc));
}

static void cli_wait(struct cli *c, int ms)
{
    cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closed) != 0, ms), "client %s did not close", c->addr);
    tu_sleep_ms(5);     /* a second on_close would show */
    cr_assert_eq(TU_LOAD(&c->closed), 1, "on_close called %d times", c->closed);
}

/* Connect, wait for the end: the client closes at want bytes or EOF. */
static void cli_run(struct cli *c)
{
    cli_start(c);
    cli_wait(c, 8000);
}

static void assert_verify_fail(struct cli *c)
{
    cli_run(c);
    cr_assert_eq(c->opened, 0, "on_open called for a server that should not verify");
    cr_assert_eq(c->connect_fail_calls, 1);
    cr_assert_eq(c->fail_err, GOEV_ETLSVERIFY, "on_connect_fail: %s (%s)", goev_strerror(c->fail_err),
                 c->err_str);
    cr_assert_eq(c->close_reason, GOEV_ETLSVERIFY, "on_close: %s", goev_strerror(c->close_reason));
    cr_assert(strstr(c->err_str, "verif") != NULL, "goev_tls_error_string: %s", c->err_str);
}

/* ---- blocking OpenSSL peers on threads --------------------------------------- */

static SSL_CTX *ossl_server_ctx(void)
{
    SSL_CTX *s = SSL_CTX_new(TLS_server_method());
    cr_assert(s);
    cr_assert(SSL_CTX_use_certificate_chain_file(s, tu_tls_cert("server.pem")) == 1);
    cr_assert(SSL_CTX_use_PrivateKey_file(s, tu_tls_cert("server.key"), SSL_FILETYPE_PEM) == 1);
    return s;
}

enum { RAW_GARBAGE, RAW_GARBAGE_AFTER, RAW_READ_ALL, RAW_HOLD };

struct raw {
    int mode;
    int lfd, port;
    SSL_CTX *ctx;
    pthread_t th;
    int delay_ms;               /* before reading */
    size_t resp;                /* RAW_READ_ALL: bytes answered after the close_notify */
    uint64_t seed;
    /* results */
    size_t got;
    ptrdiff_t bad_at;
    int read_err, read_errno;   /* SSL_get_error / errno of the read that ended */
    int write_ok;
    int got_notify;
    int done;
    int release;                /* RAW_HOLD: close when set */
};

static void *raw_main(void *arg)
{
    struct raw *r = arg;
    int fd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        TU_STORE(&r->done, 1);
        return NULL;
    }
    tu_set_io_timeout(fd, 5000);
    if (r->mode == RAW_GARBAGE) {
        char junk[512];
        ssize_t n = recv(fd, junk, sizeof junk, 0);     /* the ClientHello */
        (void)n;
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        n = write(fd, bad, sizeof bad - 1);
        (void)n;
        tu_sleep_ms(50);
        close(fd);
        TU_STORE(&r->done, 1);
        return NULL;
    }
    SSL *ssl = SSL_new(r->ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
        TU_CHECK(0, "raw server: SSL_accept failed");
        goto out;
    }
    if (r->mode == RAW_GARBAGE_AFTER) {
        char junk[64];
        memset(junk, 0x5a, sizeof junk);
        junk[0] = 23, junk[1] = 3, junk[2] = 3, junk[3] = 0, junk[4] = 59;     /* "application data" */
        ssize_t n = write(fd, junk, sizeof junk);
        (void)n;
        tu_sleep_ms(200);
        goto out;
    }
    if (r->delay_ms)
        tu_sleep_ms((unsigned)r->delay_ms);
    char *buf = malloc(64 << 10);
    for (;;) {
        int n = SSL_read(ssl, buf, 64 << 10);
        if (n <= 0) {
            r->read_err = SSL_get_error(ssl, n);
            r->read_errno = errno;
            break;
        }
        if (r->seed) {
            ptrdiff_t b = tu_stream_check(r->seed, r->got, buf, (size_t)n);
            if (b >= 0 && r->bad_at < 0)
                r->bad_at = (ptrdiff_t)r->got + b;
        }
        r->got += (size_t)n;
    }
    TU_STORE(&r->got_notify, r->read_err == SSL_ERROR_ZERO_RETURN);   /* read by the test thread while this one holds */
    if (r->mode == RAW_HOLD) {
        TU_WAIT_FOR(TU_LOAD(&r->release), 8000);
    } else if (r->got_notify) {
        /* An answer after the client's close_notify (TLS 1.3 allows it):
         * the client must take it (and drop it) rather than reset. */
        r->write_ok = 1;
        size_t left = r->resp;
        memset(buf, 'r', 64 << 10);
        while (left) {
            int k = (int)(left < (64u << 10) ? left : (64u << 10));
            int w = SSL_write(ssl, buf, k);
            if (w <= 0) {
                r->write_ok = 0;
                break;
            }
            left -= (size_t)w;
        }
        if (SSL_shutdown(ssl) < 0)
            r->write_ok = 0;
        /* Then wait for the client's FIN (it half-closed already), so
         * that a reset would show. */
        char c;
        ssize_t e = recv(fd, &c, 1, 0);
        if (e < 0)
            r->write_ok = 0;
    }
    free(buf);
out:
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    TU_STORE(&r->done, 1);
    return NULL;
}

static void raw_start(struct raw *r, int mode, int rcvbuf)
{
    r->mode = mode;
    r->bad_at = -1;
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(r->lfd >= 0);
    if (rcvbuf)
        setsockopt(r->lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    cr_assert(bind(r->lfd, (struct sockaddr *)&sin, sizeof sin) == 0);
    cr_assert(listen(r->lfd, 8) == 0);
    cr_assert(getsockname(r->lfd, (struct sockaddr *)&sin, &sl) == 0);
    r->port = ntohs(sin.sin_port);
    if (mode != RAW_GARBAGE)
        r->ctx = ossl_server_ctx();
    cr_assert(pthread_create(&r->th, NULL, raw_main, r) == 0);
}

static void raw_end(struct raw *r)
{
    TU_STORE(&r->release, 1);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&r->done), 8000), "raw server thread did not finish");
    pthread_join(r->th, NULL);
    close(r->lfd);
    SSL_CTX_free(r->ctx);
}

/* =========================================================================== */
/* Verification against the goev server                                        */

Test(tls_client, verify_ok_name_from_host_port)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    char a[64];
    snprintf(a, sizeof a, "localhost:%d", srv_port);
    struct cli *c = cli_new(a, ctx);
    c->req = "hello, tls";
    c->req_len = 10;
    c->want = 10;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "hello, tls");
    cr_assert_eq(c->close_reason, 0, "on_close: %s", goev_strerror(c->close_reason));
    cr_assert_eq(c->info_rc, 0);
    cr_assert_str_eq(c->info.server_name, "localhost");
    cr_assert_str_eq(c->info.version, "TLSv1.3");
    cr_assert(c->info.peer_verified && c->info.has_peer_cert);
    cr_assert_eq(c->reads_after_close, 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_str_eq(srv.sni, "localhost", "the server saw SNI '%s'", srv.sni);
    cr_assert_eq(srv.last_reason, 0, "server on_close: %s", goev_strerror(srv.last_reason));
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, verify_ip_san_for_numeric_address)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->req = "ip";
    c->req_len = 2;
    c->want = 2;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "ip");
    cr_assert(c->info.peer_verified);
    cr_assert_str_eq(c->info.server_name, "", "no SNI for a numeric address");
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.opened) == 1, 3000));
    cr_assert_str_eq(srv.sni, "");
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, verify_fails_ip_not_in_certificate)
{
    reactor_new();
    goev_server(server_ctx_with("other.pem", "other.key"), SRV_ECHO);     /* DNS names only */
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    assert_verify_fail(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, verify_fails_rogue_self_signed)
{
    reactor_new();
    goev_server(server_ctx_with("rogue.pem", "rogue.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->o.tls_server_name = "localhost";
    assert_verify_fail(c);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_eq(srv.opened, 0);
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, verify_fails_expired)
{
    reactor_new();
    goev_server(server_ctx_with("expired.pem", "expired.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->o.tls_server_name = "localhost";
    assert_verify_fail(c);
    cr_assert(strstr(c->err_str, "expired") != NULL, "reason: %s", c->err_str);
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, verify_fails_wrong_name)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->o.tls_server_name = "other.test";
    assert_verify_fail(c);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_str_eq(srv.sni, "", "no on_open on the server");
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

Test(tls_client, no_verify_accepts_rogue)
{
    reactor_new();
    goev_server(server_ctx_with("rogue.pem", "rogue.key"), SRV_ECHO);
    tu_reactor_start(R);
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.no_verify = 1;
    goev_tls_ctx *ctx = ctx_new(0, &o);
    struct cli *c = cli_to_port(srv_port, ctx);
    c->o.tls_server_name = "whatever.invalid";
    c->req = "rogue";
    c->req_len = 5;
    c->want = 5;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "rogue");
    cr_assert_eq(c->close_reason, 0);
    cr_assert(c->info.has_peer_cert);
    cr_assert_eq(c->info.peer_verified, 0, "nothing was verified");
    cr_assert_str_eq(c->info.server_name, "whatever.invalid");
    reactor_end();
    goev_tls_ctx_free(ctx);
    free(c);
    tu_assert_no_failures();
}

/* =========================================================================== */
/* SNI, ALPN, client certificates                                               */

Test(tls_client, sni_goev_server_serves_other_cert)
{
    reactor_new();
    goev_tls_ctx *sctx = server_ctx_with("server.pem", "server.key");
    cr_assert_eq(goev_tls_ctx_add_sni(sctx, "other.test", tu_tls_cert("other.pem"), tu_tls_cert("other.key")), 0);
    cr_assert_eq(goev_tls_ctx_add_sni(sctx, "*.wild.test", tu_tls_cert("other.pem"), tu_tls_cert("other.key")), 0);
    goev_server(sctx, SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    const char *names[] = {"other.test", "a.wild.test"};
    for (int i = 0; i < 2; i++) {
        struct cli *c = cli_to_port(srv_port, ctx);
        c->o.tls_server_name = names[i];
        c->req = "sni";
        c->req_len = 3;
        c->want = 3;
        cli_run(c);
        cr_assert_eq(c->opened, 1, "%s: not opened: %s (%s)", names[i], goev_strerror(c->close_reason),
                     c->err_str);
        cr_assert(c->info.peer_verified);
        cr_assert_str_eq(c->info.server_name, names[i]);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.opened) == i + 1, 3000));
        cr_assert_str_eq(srv.sni, names[i]);
        free(c);
    }
    /* Without the SNI entry's name: the default certificate, which is not
     * other.test's. */
    struct cli *c = cli_to_port(srv_port, ctx);
    c->o.tls_server_name = "b.other.test";
    assert_verify_fail(c);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

static const char http_get[] = "GET / HTTP/1.0\r\n\r\n";

Test(tls_client, sni_s_server_servername)
{
    int port = s_server((const char *[]){"-cert2", tu_tls_cert("other.pem"), "-key2", tu_tls_cert("other.key"),
                                         "-servername", "other.test", NULL});
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(port, ctx);
    c->o.tls_server_name = "other.test";
    c->req = http_get;
    c->req_len = sizeof http_get - 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert(c->info.peer_verified);
    cr_assert(strncmp(c->buf, "HTTP/1.0 200 ok", 15) == 0, "answer: %.80s", c->buf);
    cr_assert_eq(c->eof, 1, "s_server's end is EOF");
    cr_assert_eq(c->close_reason, 0, "on_close: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    free(c);
    /* No server name: s_server's first certificate, checked by IP. */
    c = cli_to_port(port, ctx);
    c->req = http_get;
    c->req_len = sizeof http_get - 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, alpn_s_server)
{
    int port = s_server((const char *[]){"-alpn", "foo,http/1.1", NULL});
    reactor_new();
    tu_reactor_start(R);
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.alpn = "h2,http/1.1";
    goev_tls_ctx *ctx = ctx_new(0, &o);
    struct cli *c = cli_to_port(port, ctx);
    c->req = http_get;
    c->req_len = sizeof http_get - 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->info.alpn, "http/1.1");
    cr_assert(strstr(c->buf, "HTTP/1.0 200 ok") != NULL);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

/* ---- session resumption ------------------------------------------------------ */

/* One echo round trip to the goev server at addr with ctx; the client's
 * goev_tls_info in *info. */
static void echo_once(const char *addr, goev_tls_ctx *ctx, struct goev_tls_info *info)
{
    struct cli *c = cli_new(addr, ctx);
    c->req = "again";
    c->req_len = 5;
    c->want = 5;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "%s not opened: %s (%s)", addr, goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "again");
    cr_assert_eq(c->close_reason, 0, "on_close: %s", goev_strerror(c->close_reason));
    *info = c->info;
    free(c);
}

Test(tls_client, session_resumed_by_name_and_by_ip)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    char byname[64], byip[64];
    snprintf(byname, sizeof byname, "localhost:%d", srv_port);
    snprintf(byip, sizeof byip, "127.0.0.1:%d", srv_port);
    struct goev_tls_info ti;
    echo_once(byname, ctx, &ti);
    cr_assert_eq(ti.resumed, 0, "the first connection resumed");
    cr_assert_eq(srv.resumed, 0);
    /* The sessions are kept by name: the IP has none yet. */
    echo_once(byip, ctx, &ti);
    cr_assert_eq(ti.resumed, 0, "a session for localhost was offered to 127.0.0.1");
    for (int i = 0; i < 3; i++) {       /* once each: a resumed one brings new ones */
        echo_once(byname, ctx, &ti);
        cr_assert_eq(ti.resumed, 1, "connection %d by name not resumed", i + 2);
        cr_assert_eq(TU_LOAD(&srv.resumed), 1, "the server did not resume");
        cr_assert(ti.peer_verified && ti.has_peer_cert, "a resumed session lost its verified certificate");
        cr_assert_str_eq(ti.server_name, "localhost");
    }
    echo_once(byip, ctx, &ti);
    cr_assert_eq(ti.resumed, 1, "the second connection by IP not resumed");
    cr_assert(ti.peer_verified);
    struct goev_stats st;
    cr_assert_eq(goev_stats_get(R, 0, &st), 0);
    cr_assert_eq(st.tls_failures, 0);
    /* 6 connections, a handshake each side; 4 resumed, on each side */
    cr_assert_eq(st.tls_handshakes, 12, "%llu handshakes", (unsigned long long)st.tls_handshakes);
    cr_assert_eq(st.tls_resumed, 8, "%llu resumed", (unsigned long long)st.tls_resumed);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, no_session_cache_never_resumes)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.no_session_cache = 1;
    goev_tls_ctx *ctx = ctx_new(0, &o);
    char a[64];
    snprintf(a, sizeof a, "localhost:%d", srv_port);
    struct goev_tls_info ti;
    for (int i = 0; i < 3; i++) {
        echo_once(a, ctx, &ti);
        cr_assert_eq(ti.resumed, 0, "connection %d resumed without a cache", i + 1);
    }
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

/* openssl s_server -www says "Reused" or "New" in its page. */
static void s_server_resumes(const char *version)
{
    int port = s_server((const char *[]){version, NULL});
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    char a[64];
    snprintf(a, sizeof a, "localhost:%d", port);
    for (int i = 0; i < 2; i++) {
        struct cli *c = cli_new(a, ctx);
        c->req = http_get;
        c->req_len = sizeof http_get - 1;
        cli_run(c);
        cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
        cr_assert(strstr(c->buf, "HTTP/1.0 200 ok") != NULL, "%s", c->buf);
        const char *want = i ? "Reused, " : "New, ";
        cr_assert(strstr(c->buf, want) != NULL, "connection %d: no '%s' in s_server's page", i + 1, want);
        cr_assert_eq(c->info.resumed, i);
        free(c);
    }
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, session_resumed_s_server_tls13) { s_server_resumes("-tls1_3"); }
Test(tls_client, session_resumed_s_server_tls12) { s_server_resumes("-tls1_2"); }

Test(tls_client, alpn_goev_server_preference)
{
    reactor_new();
    struct goev_tls_opts so;
    goev_tls_opts_init(&so);
    so.cert_file = tu_tls_cert("server.pem");
    so.key_file = tu_tls_cert("server.key");
    so.alpn = "h2,http/1.1";
    goev_server(ctx_new(1, &so), SRV_ECHO);
    tu_reactor_start(R);
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.alpn = "http/1.1,h2";
    goev_tls_ctx *ctx = ctx_new(0, &o);
    o.alpn = "spdy/1";
    goev_tls_ctx *ctx2 = ctx_new(0, &o);
    struct cli *c = cli_to_port(srv_port, ctx);
    c->req = "a";
    c->req_len = 1;
    c->want = 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->info.alpn, "h2", "the server's preference: got '%s'", c->info.alpn);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.opened) == 1, 3000));
    cr_assert_str_eq(srv.alpn, "h2");
    free(c);
    /* Nothing in common: served without ALPN. */
    c = cli_to_port(srv_port, ctx2);
    c->req = "b";
    c->req_len = 1;
    c->want = 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->info.alpn, "");
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    goev_tls_ctx_free(ctx2);
    tu_assert_no_failures();
}

static goev_tls_ctx *client_ctx_with_cert(void)
{
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.cert_file = tu_tls_cert("client.pem");
    o.key_file = tu_tls_cert("client.key");
    return ctx_new(0, &o);
}

Test(tls_client, client_cert_s_server_verify)
{
    int port = s_server((const char *[]){"-Verify", "1", "-CAfile", tu_tls_cert("ca.pem"), NULL});
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx_with_cert();
    struct cli *c = cli_to_port(port, ctx);
    c->req = http_get;
    c->req_len = sizeof http_get - 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert(strstr(c->buf, "Subject: O=goev tests, CN=goev-client") != NULL,
              "s_server did not see the client certificate: %.2000s", c->buf);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, client_cert_goev_server_sees_subject)
{
    reactor_new();
    struct goev_tls_opts so;
    goev_tls_opts_init(&so);
    so.cert_file = tu_tls_cert("server.pem");
    so.key_file = tu_tls_cert("server.key");
    so.ca_file = tu_tls_cert("ca.pem");
    so.verify_client = 1;
    goev_server(ctx_new(1, &so), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx_with_cert();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->req = "cert";
    c->req_len = 4;
    c->want = 4;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "cert");
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_eq(srv.subject_rc, (int)strlen("CN=goev-client,O=goev tests"), "peer subject: %d '%s'",
                 srv.subject_rc, srv.subject);
    cr_assert_str_eq(srv.subject, "CN=goev-client,O=goev tests");
    cr_assert(srv.peer_verified);
    free(c);

    /* Without one: the server refuses (GOEV_ETLSVERIFY there).  In TLS 1.3
     * the client's handshake is over before the server judges it, so the
     * client opens and then gets the server's alert: GOEV_ETLSPROTO. */
    goev_tls_ctx *bare = client_ctx();
    c = cli_to_port(srv_port, bare);
    cli_run(c);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 2, 3000));
    cr_assert_eq(srv.last_reason, GOEV_ETLSVERIFY, "server on_close: %s", goev_strerror(srv.last_reason));
    cr_log_info("client without a certificate: opened %d, connect_fail %s, on_close %s (%s)", c->opened,
                goev_strerror(c->fail_err), goev_strerror(c->close_reason), c->err_str);
    cr_assert_eq(c->opened, 1, "the client's TLS 1.3 handshake ends before the server judges it");
    cr_assert_eq(c->connect_fail_calls, 0);
    cr_assert_eq(c->close_reason, GOEV_ETLSPROTO, "client on_close: %s (%s)", goev_strerror(c->close_reason),
                 c->err_str);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    goev_tls_ctx_free(bare);
    tu_assert_no_failures();
}

/* =========================================================================== */
/* Broken servers                                                               */

Test(tls_client, handshake_timeout_silent_server)
{
    int port;
    int lfd = tu_listen_tcp4(8, &port);     /* the kernel accepts; no one answers */
    cr_assert(lfd >= 0);
    reactor_new();
    tu_reactor_start(R);
    struct goev_tls_opts o;
    goev_tls_opts_init(&o);
    o.ca_file = tu_tls_cert("ca.pem");
    o.handshake_timeout_ms = 150;
    goev_tls_ctx *ctx = ctx_new(0, &o);
    struct cli *c = cli_to_port(port, ctx);
    uint64_t t0 = tu_now_ms();
    cli_run(c);
    uint64_t took = tu_now_ms() - t0;
    cr_assert_eq(c->opened, 0);
    cr_assert_eq(c->fail_err, GOEV_ETLSTIMEDOUT, "on_connect_fail: %s", goev_strerror(c->fail_err));
    cr_assert_eq(c->close_reason, GOEV_ETLSTIMEDOUT);
    cr_assert(took >= 140 && took < 2000, "timed out after %llu ms", (unsigned long long)took);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    close(lfd);
    tu_assert_no_failures();
}

Test(tls_client, garbage_server_not_tls)
{
    struct raw r = {0};
    raw_start(&r, RAW_GARBAGE, 0);
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(r.port, ctx);
    cli_run(c);
    cr_assert_eq(c->opened, 0);
    cr_assert_eq(c->fail_err, GOEV_ETLS, "on_connect_fail: %s (%s)", goev_strerror(c->fail_err), c->err_str);
    cr_assert_eq(c->close_reason, GOEV_ETLS);
    free(c);
    reactor_end();
    raw_end(&r);
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, garbage_record_after_handshake)
{
    struct raw r = {0};
    raw_start(&r, RAW_GARBAGE_AFTER, 0);
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(r.port, ctx);
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_eq(c->connect_fail_calls, 0);
    cr_assert_eq(c->close_reason, GOEV_ETLSPROTO, "on_close: %s (%s)", goev_strerror(c->close_reason),
                 c->err_str);
    cr_assert_eq(c->got, 0);
    free(c);
    reactor_end();
    raw_end(&r);
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

/* =========================================================================== */
/* Data                                                                         */

Test(tls_client, close_notify_from_server_is_eof)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_BYE);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "bye\n");
    cr_assert_eq(c->eof, 1, "on_eof after the server's close_notify");
    cr_assert_eq(c->close_reason, 0, "on_close: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_eq(srv.last_reason, 0);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, shutdown_then_answer_then_eof)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(srv_port, ctx);
    c->req = "half-closed";
    c->req_len = 11;
    c->shut_at_open = 1;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->buf, "half-closed", "the echo after goev_shutdown: '%s'", c->buf);
    cr_assert_eq(c->eof, 1);
    cr_assert_eq(c->close_reason, 0);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

/* A stream written from on_open (several MiB in one goev_write), echoed,
 * checked byte by byte on the way back; the SHA-256 of each side too. */
Test(tls_client, large_transfer_both_ways)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    size_t total = (size_t)tu_scaled(6 << 20, 1 << 20);
    char *big = malloc(total);
    tu_stream_fill(42, 0, big, total);
    struct cli *c = cli_to_port(srv_port, ctx);
    c->req = big;
    c->req_len = total;
    c->want = total;
    c->seed = 42;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_eq(c->got, total, "got %zu of %zu", c->got, total);
    cr_assert_eq(c->bad_at, -1, "stream differs at byte %td", c->bad_at);
    cr_assert_eq(c->close_reason, 0, "on_close: %s", goev_strerror(c->close_reason));
    free(c);
    free(big);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, many_in_sequence_no_fd_leak)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    int before = tu_fd_count();
    int n = (int)tu_scaled(25, 5);
    for (int i = 0; i < n; i++) {
        struct cli *c = cli_to_port(srv_port, ctx);
        c->o.tls_server_name = "localhost";
        char req[32];
        int l = snprintf(req, sizeof req, "request %d", i);
        c->req = req;
        c->req_len = (size_t)l;
        c->want = (size_t)l;
        cli_run(c);
        cr_assert_eq(c->opened, 1, "#%d not opened: %s (%s)", i, goev_strerror(c->close_reason), c->err_str);
        cr_assert_str_eq(c->buf, req);
        cr_assert_eq(c->close_reason, 0);
        free(c);
    }
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == n, 3000), "server closed %d of %d", srv.closed, n);
    tu_assert_fds(before);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

struct many {
    struct cli *c[64];
    int n;
};

static void start_many(goev_poller *p, void *arg)
{
    struct many *m = arg;
    for (int i = 0; i < m->n; i++)
        start_fn(p, m->c[i]);
}

/* Concurrent connections; the client context is freed as soon as they are
 * started (each holds a reference) and the server's right after the
 * acceptor is made (goev_server): both must go on working, ASan clean. */
Test(tls_client, many_concurrent_ctx_freed_early)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    int before = tu_fd_count();
    goev_tls_ctx *ctx = client_ctx();
    struct many m = {.n = (int)tu_scaled(40, 8)};
    char reqs[64][32];
    for (int i = 0; i < m.n; i++) {
        m.c[i] = cli_to_port(srv_port, ctx);
        m.c[i]->o.tls_server_name = "localhost";
        int l = snprintf(reqs[i], sizeof reqs[i], "concurrent %d", i);
        m.c[i]->req = reqs[i];
        m.c[i]->req_len = (size_t)l;
        m.c[i]->want = (size_t)l;
    }
    tu_run_on(P, start_many, &m);
    goev_tls_ctx_free(ctx);     /* the connections keep it */
    for (int i = 0; i < m.n; i++) {
        cr_assert_eq(m.c[i]->start_rc, 0);
        cli_wait(m.c[i], 8000);
        cr_assert_eq(m.c[i]->opened, 1, "#%d: %s (%s)", i, goev_strerror(m.c[i]->close_reason),
                     m.c[i]->err_str);
        cr_assert_str_eq(m.c[i]->buf, reqs[i]);
        cr_assert_eq(m.c[i]->close_reason, 0);
        free(m.c[i]);
    }
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == m.n, 3000));
    tu_assert_fds(before);
    reactor_end();
    tu_assert_no_failures();
}

/* ---- the pool ----------------------------------------------------------------- */

static struct {
    goev_pool *pool;
    goev_pool_req req;
    goev_handler *first, *second;
    int round;
    int done;
    int err;
    char got[16];
    size_t len;
    struct goev_pool_stats st;
    goev_tls_ctx *ctx;
} pl;

static void pool_next(void);

static ssize_t pl_read(goev_handler *h, const char *d, size_t n)
{
    size_t k = n < sizeof pl.got - 1 - pl.len ? n : sizeof pl.got - 1 - pl.len;
    memcpy(pl.got + pl.len, d, k);
    pl.len += k;
    if (pl.len >= 4) {
        TU_CHECK(memcmp(pl.got, "ping", 4) == 0, "pool echo: %s", pl.got);
        TU_CHECK(goev_pool_release(h, 1) == 0, "goev_pool_release");
        pool_next();
    }
    return (ssize_t)n;
}

static void pl_close(goev_handler *h, int reason)
{
    (void)h;
    TU_CHECK(0, "an acquired pool connection closed: %s", goev_strerror(reason));
}

static const struct goev_handler_ops pl_ops = {.on_read = pl_read, .on_close = pl_close};

static void pl_got(goev_pool_req *req, goev_handler *conn, int err)
{
    (void)req;
    if (err) {
        pl.err = err;
        TU_STORE(&pl.done, 1);
        return;
    }
    struct goev_tls_info ti;
    TU_CHECK(goev_tls_info_get(conn, &ti) == 0 && ti.peer_verified, "pooled connection: not verified TLS");
    if (pl.round == 0)
        pl.first = conn;
    else
        pl.second = conn;
    pl.len = 0;
    memset(pl.got, 0, sizeof pl.got);
    TU_CHECK(goev_write(conn, "ping", 4) == 0, "pool write");
}

static void pool_next(void)
{
    if (++pl.round == 2) {
        goev_pool_stats_get(pl.pool, &pl.st);
        goev_pool_free(pl.pool);
        pl.pool = NULL;
        TU_STORE(&pl.done, 1);
        return;
    }
    TU_CHECK(goev_pool_acquire(pl.pool, &pl.req, 3000, pl_got) == 0, "goev_pool_acquire");
}

static void pool_start(goev_poller *p, void *arg)
{
    (void)arg;
    struct goev_pool_opts o;
    goev_pool_opts_init(&o);
    o.min_idle = 1;
    o.max_live = 1;
    o.add_batch = 1;
    o.ops = &pl_ops;
    o.connect.tls = pl.ctx;
    o.connect.tls_server_name = "localhost";
    char a[64];
    snprintf(a, sizeof a, "127.0.0.1:%d", srv_port);
    int rc = goev_pool_new(&pl.pool, p, a, &o);
    TU_CHECK(rc == 0, "goev_pool_new: %s", goev_strerror(rc));
    if (rc) {
        TU_STORE(&pl.done, 1);
        return;
    }
    goev_tls_ctx_free(pl.ctx);      /* the pool's connections hold it */
    goev_pool_req_init(&pl.req);
    TU_CHECK(goev_pool_acquire(pl.pool, &pl.req, 3000, pl_got) == 0, "goev_pool_acquire");
}

Test(tls_client, pool_reuses_tls_connection)
{
    reactor_new();
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_ECHO);
    tu_reactor_start(R);
    pl.ctx = client_ctx();
    tu_run_on(P, pool_start, NULL);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&pl.done), 8000), "pool rounds did not finish");
    cr_assert_eq(pl.err, 0, "acquire: %s", goev_strerror(pl.err));
    cr_assert(pl.first && pl.first == pl.second, "the second lease is the same connection");
    cr_assert_eq(pl.st.created, 1, "one TLS connection made, got %llu", (unsigned long long)pl.st.created);
    cr_assert_eq(pl.st.acquires, 2);
    cr_assert_eq(TU_LOAD(&srv.accepted), 1);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000), "the pool's connection closed at its free");
    struct goev_stats gs;
    cr_assert_eq(goev_stats_get(R, 0, &gs), 0);
    cr_assert_eq(gs.tls_handshakes, 2, "one handshake per side, got %llu", (unsigned long long)gs.tls_handshakes);
    reactor_end();
    tu_assert_no_failures();
}

/* =========================================================================== */
/* Graceful close with the peer still sending (the lib/tls.c drain/linger)      */

/* The client writes a request and closes at once, from on_open: the
 * request is still queued, and the server has sent its session tickets
 * (TLS 1.3: right after the handshake), which nobody has read.  Small
 * buffers and a server that reads late keep most of the request in goev's
 * queue and the socket.  A close with the tickets unread would be a reset
 * that loses the socket's unsent bytes: the server must get the whole
 * request and the close_notify, and its answer after that must find the
 * client still reading (and dropping it: nothing reaches on_read). */
static void close_right_after_request(int pause)
{
    struct raw r = {0};
    r.delay_ms = 100;
    r.seed = 99;
    r.resp = 200 << 10;
    raw_start(&r, RAW_READ_ALL, 16384);
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    size_t total = 1 << 20;
    char *big = malloc(total);
    tu_stream_fill(99, 0, big, total);
    struct cli *c = cli_to_port(r.port, ctx);
    c->o.sndbuf = 16384;
    c->req = big;
    c->req_len = total;
    c->close_at_open = 1;
    c->pause_at_open = pause;
    cli_run(c);
    raw_end(&r);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_eq(r.got, total, "the server got %zu of %zu bytes (read error %d, errno %s)", r.got, total,
                 r.read_err, strerror(r.read_errno));
    cr_assert_eq(r.bad_at, -1);
    cr_assert(r.got_notify, "no close_notify: SSL error %d, errno %s", r.read_err, strerror(r.read_errno));
    cr_assert(r.write_ok, "the server's answer after close_notify hit a reset");
    cr_assert_eq(c->close_reason, 0, "on_close: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_eq(c->got, 0, "plaintext after goev_close reached on_read");
    cr_assert_eq(c->reads_after_close, 0);
    free(c);
    free(big);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

Test(tls_client, close_right_after_request_peer_gets_all)
{
    close_right_after_request(0);
}

/* The same with reading paused first: the close reads on anyway. */
Test(tls_client, close_while_paused_peer_gets_all)
{
    close_right_after_request(1);
}

/* A server that takes the close_notify and then neither answers nor
 * closes: the client closes anyway, about 2 s later, reason 0. */
Test(tls_client, close_linger_is_bounded)
{
    struct raw r = {0};
    raw_start(&r, RAW_HOLD, 0);
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(r.port, ctx);
    c->req = "bye";
    c->req_len = 3;
    c->close_at_open = 1;
    cli_start(c);
    cli_wait(c, 6000);
    uint64_t waited = c->closed_at_ms - c->close_at_ms;
    cr_assert(TU_LOAD(&r.got_notify) || TU_WAIT_FOR(TU_LOAD(&r.got_notify), 1000), "no close_notify");
    raw_end(&r);
    cr_assert_eq(r.got, 3);
    cr_assert_eq(c->close_reason, 0, "on_close: %s", goev_strerror(c->close_reason));
    cr_assert(waited >= 1900 && waited < 4000, "closed %llu ms after goev_close", (unsigned long long)waited);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}

/* The goev server side of it: the server writes a large answer and
 * closes at once, while the client (a blocking OpenSSL one, reading late
 * through a small window, small buffers on both sides so that the answer
 * stays queued) sends more.  The server reads on while its answer drains,
 * so its close is no reset: the client gets it all. */
struct late_reader {
    int port;
    size_t got;
    ptrdiff_t bad_at;
    int err, err_no;
};

static void *late_reader_main(void *arg)
{
    struct late_reader *l = arg;
    l->bad_at = -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 16384;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                              .sin_port = htons((uint16_t)l->port)};
    if (tu_connect_fd(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        TU_CHECK(0, "late reader: connect: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    tu_set_io_timeout(fd, 5000);
    SSL_CTX *x = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(x);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        TU_CHECK(0, "late reader: SSL_connect failed");
        goto out;
    }
    char *buf = calloc(1, 64 << 10);
    TU_CHECK(SSL_write(ssl, buf, 64 << 10) == 64 << 10, "late reader: write");
    tu_sleep_ms(100);
    for (;;) {
        int n = SSL_read(ssl, buf, 64 << 10);
        if (n <= 0) {
            l->err = SSL_get_error(ssl, n);
            l->err_no = errno;
            break;
        }
        ptrdiff_t b = tu_stream_check(7, l->got, buf, (size_t)n);
        if (b >= 0 && l->bad_at < 0)
            l->bad_at = (ptrdiff_t)l->got + b;
        l->got += (size_t)n;
    }
    free(buf);
out:
    SSL_free(ssl);
    SSL_CTX_free(x);
    close(fd);
    ERR_clear_error();
    return NULL;
}

Test(tls_client, server_close_with_client_still_sending)
{
    reactor_new();
    srv.big = 2 << 20;
    srv.sndbuf = 16384;
    goev_server(server_ctx_with("server.pem", "server.key"), SRV_BIG);
    tu_reactor_start(R);
    struct late_reader l = {.port = srv_port};
    pthread_t th;
    cr_assert(pthread_create(&th, NULL, late_reader_main, &l) == 0);
    pthread_join(th, NULL);
    cr_assert_eq(l.got, srv.big, "the client got %zu of %zu (SSL error %d, errno %s)", l.got, srv.big, l.err,
                 strerror(l.err_no));
    cr_assert_eq(l.bad_at, -1);
    cr_assert_eq(l.err, SSL_ERROR_ZERO_RETURN, "no close_notify: SSL error %d", l.err);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&srv.closed) == 1, 3000));
    cr_assert_eq(srv.last_reason, 0, "server on_close: %s", goev_strerror(srv.last_reason));
    reactor_end();
    tu_assert_no_failures();
}

/* =========================================================================== */
/* python3's ssl server: TLS 1.2, and its close_notify (unwrap)                 */

static const char py_server[] =
    "import socket, ssl, sys\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(4)\n"
    "print('PORT %d' % ls.getsockname()[1], flush=True)\n"
    "s, _ = ls.accept(); s.settimeout(5)\n"
    "t = ctx.wrap_socket(s, server_side=True)\n"
    "data = b''\n"
    "while not data.endswith(b'\\n'):\n"
    "    d = t.recv(4096)\n"
    "    if not d: break\n"
    "    data += d\n"
    "t.sendall(data.upper())\n"
    "t.unwrap()\n"
    "s.close()\n";

Test(tls_client, python_tls12_server_unwrap)
{
    tu_require_tool("python3");
    int port = spawn_server((const char *[]){"python3", "-c", py_server, tu_tls_cert("server.pem"),
                                             tu_tls_cert("server.key"), NULL},
                            "PORT");
    reactor_new();
    tu_reactor_start(R);
    goev_tls_ctx *ctx = client_ctx();
    struct cli *c = cli_to_port(port, ctx);
    c->req = "from goev\n";
    c->req_len = 10;
    cli_run(c);
    cr_assert_eq(c->opened, 1, "not opened: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    cr_assert_str_eq(c->info.version, "TLSv1.2");
    cr_assert_str_eq(c->buf, "FROM GOEV\n");
    cr_assert_eq(c->eof, 1, "the server's close_notify is EOF");
    cr_assert_eq(c->close_reason, 0, "on_close: %s (%s)", goev_strerror(c->close_reason), c->err_str);
    free(c);
    reactor_end();
    goev_tls_ctx_free(ctx);
    tu_assert_no_failures();
}
