/* test_tls.c - the server side of goev's TLS layer, driven by real clients:
 * openssl s_client, curl and Python's ssl module (tests/tls_client.py) as
 * child processes, and an OpenSSL client in this process over memory BIOs
 * (struct mcl) where a test needs the bytes on the wire: a corrupted or
 * truncated record, a renegotiation, a reset in the middle.
 *
 * The server is goev in this process (one poller unless said otherwise)
 * with an acceptor whose .tls is a server context, and handlers (struct
 * conn) that echo, answer tiny HTTP requests, or run a script in on_open.
 * Every connection's outcome is recorded (struct rec): on_open, on_close
 * and its reason, what goev_tls_info_get and goev_tls_peer_subject said,
 * goev_tls_error_string at on_close, and whether OpenSSL's error queue of
 * the poller thread was ever non-empty in a callback (it must not be: goev
 * leaves it empty after every call).
 *
 * Certificates: tu_tls_cert (tests/tls_testutil.c).
 *
 * A missing client program fails the test when CI is set and skips it
 * otherwise (tu_require_tool) - on both backends alike. */
#include "testutil.h"
#include "tls_testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#ifndef TOP_SRCDIR
#define TOP_SRCDIR "."
#endif

#define CLIENT_MS 15000         /* a client program that takes longer has hung */
#define CLOSE_MS 5000           /* how long a close may take to be seen */

static void init_test(void)
{
    signal(SIGPIPE, SIG_IGN);
}

#define TLS_TEST(name, ...) Test(tls, name, .init = init_test, .timeout = TU_TIMEOUT, ##__VA_ARGS__)

/* ---- the server ------------------------------------------------------------ */

enum mode {
    M_ECHO,         /* echo; "bye\n" closes after the echo, "shut\n" shuts down */
    M_HTTP,         /* GET / and friends, POST echoes its body */
    M_GREET,        /* on_open: "hello\n" and goev_close */
    M_SENDFILE,     /* on_open: "HEAD\n", the file, "TAIL\n", goev_close */
    M_ASYNC,        /* on_open: publish the id; the test writes with goev_async_write */
};

#define MAXREC 64

/* What one connection (in accept order) went through. */
struct rec {
    int made, opens, closes, eofs;
    int reason;
    int info_rc, subj_rc;
    struct goev_tls_info info;
    char subject[256];
    char err_at_close[256];     /* goev_tls_error_string() in on_close */
    char err_at_open[256];      /* ... and in on_open */
    size_t bytes_in;
};

struct srv {
    goev_reactor *r;
    goev_acceptor *a;
    int port;
    enum mode mode;
    int made, opens, closes, eofs;      /* all connections */
    int errq;                   /* callbacks that found OpenSSL's queue non-empty */
    struct rec rec[MAXREC];
    int file_fd;                /* M_SENDFILE */
    size_t file_size;
    goev_conn_id async_id;      /* M_ASYNC */
    int fds0;                   /* fds with the reactor running, no connection */
};

struct conn {
    goev_handler h;
    struct srv *s;
    struct rec *rec;            /* NULL past MAXREC */
    size_t body_left;           /* M_HTTP: POST body still to echo */
    bool close_after;           /* M_HTTP: Connection: close */
    char tail[4];               /* M_ECHO: the last bytes, for "bye\n" across reads */
    bool shut;                  /* M_ECHO: goev_shutdown called; nothing more to echo */
};

static struct rec dummy_rec;

static void check_errq(struct srv *s, const char *where)
{
    unsigned long e = ERR_peek_error();
    if (e) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        TU_INC(&s->errq);
        tu_fail_at(__FILE__, __LINE__, "OpenSSL error queue not empty in %s: %s", where, buf);
        ERR_clear_error();
    }
}

static const char hello_body[] = "hello over tls\n";

static void http_answer(struct conn *c, const char *body, size_t n)
{
    char head[128];
    int hl = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    TU_CHECK(goev_write(&c->h, head, (size_t)hl) == 0, "write head");
    if (n)
        TU_CHECK(goev_write(&c->h, body, n) == 0, "write body");
}

static ssize_t http_read(struct conn *c, const char *d, size_t n)
{
    size_t used = 0;
    while (used < n) {
        if (c->body_left) {
            size_t k = n - used < c->body_left ? n - used : c->body_left;
            TU_CHECK(goev_write(&c->h, d + used, k) == 0, "echo body");
            used += k;
            c->body_left -= k;
            if (!c->body_left && c->close_after)
                goev_close(&c->h);
            continue;
        }
        const char *e = memmem(d + used, n - used, "\r\n\r\n", 4);
        if (!e)
            break;
        size_t hl = (size_t)(e + 4 - (d + used));
        char head[1024];
        snprintf(head, sizeof head, "%.*s", (int)(hl < sizeof head ? hl : sizeof head - 1), d + used);
        used += hl;
        char method[16] = "", path[256] = "";
        sscanf(head, "%15s %255s", method, path);
        c->close_after = strcasestr(head, "\r\nConnection: close") != NULL;
        if (!strcmp(method, "POST")) {
            const char *cl = strcasestr(head, "\r\nContent-Length:");
            size_t clen = cl ? strtoull(cl + 17, NULL, 10) : 0;
            char h2[128];
            int l2 = snprintf(h2, sizeof h2, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", clen);
            goev_write(&c->h, h2, (size_t)l2);
            c->body_left = clen;
            if (!clen && c->close_after)
                goev_close(&c->h);
            continue;
        }
        char body[512];
        int bl;
        if (!strcmp(path, "/")) {
            bl = snprintf(body, sizeof body, "%s", hello_body);
        } else if (!strcmp(path, "/whoami")) {
            char subj[256];
            int rc = goev_tls_peer_subject(&c->h, subj, sizeof subj);
            bl = snprintf(body, sizeof body, "%s\n", rc >= 0 ? subj : rc == -ENOENT ? "none" : "error");
        } else if (!strcmp(path, "/sni")) {
            struct goev_tls_info ti;
            int rc = goev_tls_info_get(&c->h, &ti);
            bl = snprintf(body, sizeof body, "%s\n", rc == 0 && ti.server_name[0] ? ti.server_name : "-");
        } else if (!strcmp(path, "/big")) {
            /* 8 MiB of 'x' in one go, for a client that resets midway */
            size_t big = 8u << 20;
            char *x = malloc(big);
            memset(x, 'x', big);
            http_answer(c, x, big);
            free(x);
            continue;
        } else {
            bl = snprintf(body, sizeof body, "path=%s\n", path);
        }
        http_answer(c, body, (size_t)bl);
        if (c->close_after) {
            goev_close(&c->h);
            return (ssize_t)n;
        }
    }
    return (ssize_t)used;
}

static ssize_t echo_read(struct conn *c, const char *d, size_t n)
{
    if (c->shut) {
        TU_CHECK(goev_write(&c->h, d, n) == -ENOTCONN, "goev_write after goev_shutdown");
        return (ssize_t)n;
    }
    TU_CHECK(goev_write(&c->h, d, n) == 0, "echo");
    /* the last 4 bytes seen, across reads */
    char w[8 + 4];
    size_t keep = n < 4 ? 4 - n : 0;
    memcpy(w, c->tail + 4 - keep, keep);
    size_t take = n < 4 ? n : 4;
    memcpy(w + keep, d + n - take, take);
    memcpy(c->tail, w, 4);
    if (memmem(d, n, "shut\n", 5)) {
        TU_CHECK(goev_shutdown(&c->h) == 0, "goev_shutdown");
        c->shut = true;
    }
    if (!memcmp(c->tail, "bye\n", 4))
        goev_close(&c->h);
    return (ssize_t)n;
}

static int c_on_open(goev_handler *h)
{
    struct conn *c = h->user;
    struct srv *s = c->s;
    check_errq(s, "on_open");
    struct rec *r = c->rec;
    r->info_rc = goev_tls_info_get(h, &r->info);
    r->subj_rc = goev_tls_peer_subject(h, r->subject, sizeof r->subject);
    snprintf(r->err_at_open, sizeof r->err_at_open, "%s", goev_tls_error_string());
    TU_INC(&r->opens);
    TU_INC(&s->opens);
    switch (s->mode) {
    case M_GREET:
        goev_write(h, "hello\n", 6);
        goev_close(h);
        break;
    case M_SENDFILE:
        TU_CHECK(goev_write(h, "HEAD\n", 5) == 0, "write");
        TU_CHECK(goev_sendfile(h, s->file_fd, 0, s->file_size) == 0, "goev_sendfile");
        TU_CHECK(goev_write(h, "TAIL\n", 5) == 0, "write");
        goev_close(h);
        break;
    case M_ASYNC:
        TU_STORE(&s->async_id, goev_handler_id(h));
        break;
    default:
        break;
    }
    check_errq(s, "on_open (end)");
    return 0;
}

static ssize_t c_on_read(goev_handler *h, const char *d, size_t n)
{
    struct conn *c = h->user;
    check_errq(c->s, "on_read");
    TU_CHECK(TU_LOAD(&c->rec->opens) == 1, "on_read before on_open");
    c->rec->bytes_in += n;
    ssize_t rc;
    switch (c->s->mode) {
    case M_ECHO:
        rc = echo_read(c, d, n);
        break;
    case M_HTTP:
        rc = http_read(c, d, n);
        break;
    default:
        rc = (ssize_t)n;
        break;
    }
    check_errq(c->s, "on_read (end)");
    return rc;
}

static int c_on_eof(goev_handler *h)
{
    struct conn *c = h->user;
    check_errq(c->s, "on_eof");
    TU_INC(&c->rec->eofs);
    TU_INC(&c->s->eofs);
    goev_close(h);
    return 0;
}

static void c_on_close(goev_handler *h, int reason)
{
    struct conn *c = h->user;
    struct srv *s = c->s;
    check_errq(s, "on_close");
    struct rec *r = c->rec;
    snprintf(r->err_at_close, sizeof r->err_at_close, "%s", goev_tls_error_string());
    r->reason = reason;
    TU_CHECK(TU_LOAD(&r->closes) == 0, "on_close twice");
    TU_INC(&r->closes);
    TU_INC(&s->closes);
    free(c);
}

static const struct goev_handler_ops c_ops = {
    .on_open = c_on_open, .on_read = c_on_read, .on_eof = c_on_eof, .on_close = c_on_close,
};

static goev_handler *s_new(goev_poller *p, void *arg)
{
    struct srv *s = arg;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &c_ops);
    c->h.user = c;
    c->s = s;
    int i = TU_INC(&s->made) - 1;
    c->rec = i < MAXREC ? &s->rec[i] : &dummy_rec;
    TU_INC(&c->rec->made);
    return &c->h;
}

/* The default server options: server.pem, ALPN "http/1.1", a short
 * handshake timeout (a test that hangs in a handshake fails fast). */
static void srv_opts(struct goev_tls_opts *o)
{
    goev_tls_opts_init(o);
    o->cert_file = tu_tls_cert("server.pem");
    o->key_file = tu_tls_cert("server.key");
    o->alpn = "http/1.1";
    o->handshake_timeout_ms = 3000;
}

static goev_tls_ctx *srv_ctx(const struct goev_tls_opts *o)
{
    goev_tls_ctx *ctx = NULL;
    int rc = goev_tls_ctx_new(&ctx, 1, o);
    cr_assert(rc == 0 && ctx, "goev_tls_ctx_new: %s (%s)", goev_strerror(rc), goev_tls_error_string());
    return ctx;
}

/* Start a server of mode m serving ctx (the server takes the caller's
 * reference). */
static struct srv *srv_start_ctx(enum mode m, goev_tls_ctx *ctx, int pollers)
{
    struct srv *s = calloc(1, sizeof *s);
    s->mode = m;
    s->file_fd = -1;
    s->r = tu_reactor_new(pollers);
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.tls = ctx;
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", &ao, s_new, s);
    cr_assert_eq(rc, 0, "goev_acceptor_new: %s", goev_strerror(rc));
    goev_tls_ctx_free(ctx);     /* the acceptor holds its own reference */
    s->port = goev_acceptor_port(s->a);
    tu_reactor_start(s->r);
    s->fds0 = tu_fd_count();
    return s;
}

static struct srv *srv_start(enum mode m, const struct goev_tls_opts *o)
{
    struct goev_tls_opts d;
    if (!o) {
        srv_opts(&d);
        o = &d;
    }
    return srv_start_ctx(m, srv_ctx(o), 1);
}

static struct goev_stats srv_stats(struct srv *s)
{
    struct goev_stats st;
    cr_assert_eq(goev_stats_get(s->r, -1, &st), 0);
    return st;
}

/* Wait until n connections have closed. */
static void srv_wait_closes(struct srv *s, int n)
{
    bool ok = TU_WAIT_FOR(TU_LOAD(&s->closes) >= n, CLOSE_MS);
    cr_assert(ok, "%d of %d connections closed (made %d, opened %d)", TU_LOAD(&s->closes), n,
              TU_LOAD(&s->made), TU_LOAD(&s->opens));
}

/* Stop: every connection gone, no fd left behind, no failure recorded. */
static void srv_stop(struct srv *s)
{
    srv_wait_closes(s, TU_LOAD(&s->made));
    tu_assert_fds(s->fds0);
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    cr_assert_eq(TU_LOAD(&s->errq), 0, "OpenSSL's error queue was left non-empty");
    tu_assert_no_failures();
    if (s->file_fd >= 0)
        close(s->file_fd);
    free(s);
}

/* Assert connection i failed in the handshake with reason want: on_open
 * never, on_close once. */
static void assert_hs_failed(struct srv *s, int i, int want)
{
    struct rec *r = &s->rec[i];
    cr_assert(TU_WAIT_FOR(TU_LOAD(&r->closes) == 1, CLOSE_MS), "connection %d not closed", i);
    cr_assert_eq(r->opens, 0, "on_open called for a failed handshake");
    cr_assert_eq(r->closes, 1);
    cr_assert_eq(r->reason, want, "reason %d (%s), want %d (%s); tls error: %s", r->reason,
                 goev_strerror(r->reason), want, goev_strerror(want), r->err_at_close);
    if (want <= GOEV_ETLS && want >= GOEV_ETLSTRUNC)
        cr_assert(r->err_at_close[0], "goev_tls_error_string empty in on_close");
}

static void assert_closed_with(struct srv *s, int i, int want)
{
    struct rec *r = &s->rec[i];
    cr_assert(TU_WAIT_FOR(TU_LOAD(&r->closes) == 1, CLOSE_MS), "connection %d not closed", i);
    cr_assert_eq(r->closes, 1);
    cr_assert_eq(r->reason, want, "reason %d (%s), want %d (%s); tls error: %s", r->reason,
                 goev_strerror(r->reason), want, goev_strerror(want), r->err_at_close);
}

/* ---- running client programs ------------------------------------------------ */

static int run(const char *const argv[], const char *input, struct tu_output *o)
{
    return tu_run(argv, input, CLIENT_MS, o);
}

static void run_ok(const char *const argv[], const char *input, struct tu_output *o)
{
    int st = run(argv, input, o);
    cr_assert(st == 0, "%s %s exited with %d\nstdout:\n%s\nstderr:\n%s", argv[0], argv[1], st,
              o->out, o->err);
}

static void python(struct srv *s, const char *cmd, const char *arg1, const char *arg2,
                   struct tu_output *o)
{
    tu_require_tool("python3");
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    const char *argv[] = { "python3", TOP_SRCDIR "/tests/tls_client.py", cmd, port, tu_tls_certs_dir(), arg1, arg2, NULL };
    run_ok(argv, NULL, o);
}

/* openssl s_client against s: extra options, then stdin input. */
static int s_client(struct srv *s, const char *const extra[], const char *input, struct tu_output *o)
{
    tu_require_tool("openssl");
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s->port);
    const char *argv[32] = { "openssl", "s_client", "-connect", addr, "-CAfile", tu_tls_cert("ca.pem"),
                             "-verify_return_error", "-brief", "-ign_eof" };
    int n = 9;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return run(argv, input, o);
}

/* ---- an OpenSSL client in this process, over memory BIOs -------------------- */

struct mcl {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out;
};

struct mcl_opts {
    int max_tls12;
    const char *alpn;       /* wire format */
    unsigned alpn_len;
    const char *cert;       /* name under certs/, without .pem */
};

#define MCL_EOF (-1000)     /* TCP EOF without close_notify */

static void mcl_new(struct mcl *m, int port, const struct mcl_opts *o)
{
    memset(m, 0, sizeof *m);
    m->fd = -1;
    if (port > 0) {     /* 0: no socket, for the bytes alone */
        m->fd = tu_connect_tcp4(port);
        cr_assert(m->fd >= 0, "connect: %s", strerror(errno));
        tu_set_io_timeout(m->fd, 5000);
    }
    m->ctx = SSL_CTX_new(TLS_client_method());
    cr_assert(m->ctx);
    cr_assert_eq(SSL_CTX_load_verify_locations(m->ctx, tu_tls_cert("ca.pem"), NULL), 1);
    SSL_CTX_set_verify(m->ctx, SSL_VERIFY_PEER, NULL);
    if (o && o->max_tls12)
        SSL_CTX_set_max_proto_version(m->ctx, TLS1_2_VERSION);
    if (o && o->cert) {
        char c[64], k[64];
        snprintf(c, sizeof c, "%s.pem", o->cert);
        snprintf(k, sizeof k, "%s.key", o->cert);
        cr_assert_eq(SSL_CTX_use_certificate_chain_file(m->ctx, tu_tls_cert(c)), 1);
        cr_assert_eq(SSL_CTX_use_PrivateKey_file(m->ctx, tu_tls_cert(k), SSL_FILETYPE_PEM), 1);
    }
    m->ssl = SSL_new(m->ctx);
    cr_assert(m->ssl);
    if (o && o->alpn)
        SSL_set_alpn_protos(m->ssl, (const unsigned char *)o->alpn, o->alpn_len);
    SSL_set_tlsext_host_name(m->ssl, "localhost");
    SSL_set1_host(m->ssl, "localhost");
    m->in = BIO_new(BIO_s_mem());
    m->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(m->in, -1);
    SSL_set_bio(m->ssl, m->in, m->out);
    SSL_set_connect_state(m->ssl);
}

static void mcl_free(struct mcl *m)
{
    if (m->ssl)
        SSL_free(m->ssl);
    if (m->ctx)
        SSL_CTX_free(m->ctx);
    if (m->fd >= 0)
        close(m->fd);
    m->fd = -1;
    m->ssl = NULL;
    m->ctx = NULL;
    ERR_clear_error();
}

/* Take the ciphertext OpenSSL made (for the caller to change or send). */
static size_t mcl_take(struct mcl *m, char *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap && BIO_ctrl_pending(m->out) > 0) {
        int k = BIO_read(m->out, buf + n, (int)(cap - n));
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    return n;
}

/* Send what OpenSSL made: 0 or -errno. */
static int mcl_flush(struct mcl *m)
{
    char buf[16384];
    size_t n;
    while ((n = mcl_take(m, buf, sizeof buf)) > 0) {
        int rc = tu_write_all(m->fd, buf, n);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* One read from the socket into OpenSSL: bytes, 0 at EOF, -errno. */
static ssize_t mcl_fill(struct mcl *m)
{
    char buf[65536];
    ssize_t n;
    do
        n = read(m->fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n > 0)
        BIO_write(m->in, buf, (int)n);
    return n;
}

/* 1, or the SSL_get_error code (negative: -errno or MCL_EOF from the socket). */
static int mcl_step(struct mcl *m, int r)
{
    int e = SSL_get_error(m->ssl, r);
    int rc = mcl_flush(m);
    if (rc < 0)
        return rc;
    if (e != SSL_ERROR_WANT_READ)
        return e;
    ssize_t f = mcl_fill(m);
    return f > 0 ? 0 : f == 0 ? MCL_EOF : (int)f;
}

static int mcl_handshake(struct mcl *m)
{
    for (;;) {
        int r = SSL_do_handshake(m->ssl);
        if (r == 1)
            return mcl_flush(m) == 0 ? 1 : -EIO;
        int e = mcl_step(m, r);
        if (e != 0)
            return e;
    }
}

static void mcl_handshake_ok(struct mcl *m)
{
    int rc = mcl_handshake(m);
    char err[256] = "";
    ERR_error_string_n(ERR_peek_error(), err, sizeof err);
    cr_assert_eq(rc, 1, "client handshake: %d (%s)", rc, err);
}

static void mcl_send(struct mcl *m, const void *d, size_t n)
{
    cr_assert_eq(SSL_write(m->ssl, d, (int)n), (int)n);
    cr_assert_eq(mcl_flush(m), 0);
}

/* Bytes read (> 0), 0 after the peer's close_notify (SSL_ERROR_ZERO_RETURN),
 * MCL_EOF, -errno, or -(SSL error code) - 2000. */
static int mcl_recv(struct mcl *m, void *buf, size_t cap)
{
    for (;;) {
        int r = SSL_read(m->ssl, buf, (int)cap);
        if (r > 0)
            return r;
        int e = mcl_step(m, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        if (e < 0)
            return e;
        if (e > 0)
            return -2000 - e;
    }
}

/* Read up to cap bytes until close_notify or an error; *end gets what
 * ended it (0 = close_notify). */
static size_t mcl_recv_all(struct mcl *m, char *buf, size_t cap, int *end)
{
    size_t n = 0;
    for (;;) {
        char tmp[65536];
        int r = mcl_recv(m, tmp, sizeof tmp);
        if (r <= 0) {
            *end = r;
            return n;
        }
        size_t k = (size_t)r < cap - n ? (size_t)r : cap - n;
        memcpy(buf + n, tmp, k);
        n += k;
    }
}

static void set_rst(int fd)
{
    struct linger l = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* ==== 1. s_client: handshake, echo, ALPN, versions ============================ */

static const char echo_input[] = "hello\nworld\n0123456789abcdef\nbye\n";

TLS_TEST(sclient_tls13_echo_alpn)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct tu_output o;
    const char *extra[] = { "-servername", "localhost", "-alpn", "h2,http/1.1", NULL };
    int st = s_client(s, extra, echo_input, &o);
    cr_assert_eq(st, 0, "s_client: %d\n%s", st, o.err);
    cr_assert_str_eq(o.out, echo_input, "echo differs:\n%s\nstderr:\n%s", o.out, o.err);
    cr_assert(strstr(o.err, "Protocol version: TLSv1.3"), "%s", o.err);
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    struct rec *r = &s->rec[0];
    cr_assert_eq(r->opens, 1);
    cr_assert_eq(r->info_rc, 0);
    cr_assert_str_eq(r->info.version, "TLSv1.3");
    cr_assert_str_eq(r->info.alpn, "http/1.1");
    cr_assert_str_eq(r->info.server_name, "localhost");
    cr_assert(r->info.cipher[0]);
    cr_assert_eq(r->info.has_peer_cert, 0);
    cr_assert_eq(r->subj_rc, -ENOENT, "peer subject without a client cert: %d", r->subj_rc);
    cr_assert_eq(r->reason, 0, "reason %s", goev_strerror(r->reason));
    cr_assert_eq(r->bytes_in, strlen(echo_input));
    struct goev_stats st2 = srv_stats(s);
    cr_assert_eq(st2.tls_handshakes, 1);
    cr_assert_eq(st2.tls_failures, 0);
    srv_stop(s);
}

TLS_TEST(sclient_tls12_echo_custom_alpn)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    o.alpn = "goev-test,http/1.1";
    struct srv *s = srv_start(M_ECHO, &o);
    struct tu_output out;
    const char *extra[] = { "-tls1_2", "-alpn", "http/1.1,goev-test", NULL };
    int st = s_client(s, extra, echo_input, &out);
    cr_assert_eq(st, 0, "s_client: %d\n%s", st, out.err);
    cr_assert_str_eq(out.out, echo_input, "echo differs:\n%s\nstderr:\n%s", out.out, out.err);
    cr_assert(strstr(out.err, "Protocol version: TLSv1.2"), "%s", out.err);
    tu_output_free(&out);
    srv_wait_closes(s, 1);
    struct rec *r = &s->rec[0];
    cr_assert_str_eq(r->info.version, "TLSv1.2");
    /* the server's order of preference, not the client's */
    cr_assert_str_eq(r->info.alpn, "goev-test");
    cr_assert_eq(r->reason, 0);
    srv_stop(s);
}

TLS_TEST(sclient_alpn_no_common_protocol)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct tu_output o;
    const char *extra[] = { "-alpn", "spdy/1", NULL };
    int st = s_client(s, extra, echo_input, &o);
    cr_assert_eq(st, 0, "s_client: %d\n%s", st, o.err);
    cr_assert_str_eq(o.out, echo_input);
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    cr_assert_eq(s->rec[0].opens, 1, "a client offering no common ALPN is served without");
    cr_assert_str_eq(s->rec[0].info.alpn, "");
    srv_stop(s);
}

TLS_TEST(min_version13_refuses_tls12)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    o.min_version = 13;
    struct srv *s = srv_start(M_ECHO, &o);
    struct tu_output out;
    const char *extra[] = { "-tls1_2", NULL };
    int st = s_client(s, extra, "x\n", &out);
    cr_assert_neq(st, 0, "a TLS 1.2 client got through min_version 13:\n%s", out.err);
    cr_assert_str_eq(out.out, "");
    tu_output_free(&out);
    assert_hs_failed(s, 0, GOEV_ETLS);
    cr_assert(strstr(s->rec[0].err_at_close, "unsupported protocol") ||
                  strstr(s->rec[0].err_at_close, "version"),
              "tls error: %s", s->rec[0].err_at_close);
    /* and TLS 1.3 still works */
    st = s_client(s, NULL, echo_input, &out);
    cr_assert_eq(st, 0, "%s", out.err);
    cr_assert_str_eq(out.out, echo_input);
    tu_output_free(&out);
    srv_wait_closes(s, 2);
    cr_assert_str_eq(s->rec[1].info.version, "TLSv1.3");
    struct goev_stats st2 = srv_stats(s);
    cr_assert_eq(st2.tls_failures, 1);
    cr_assert_eq(st2.tls_handshakes, 1);
    srv_stop(s);
}

/* ==== 2. curl ================================================================== */

static int curl(struct srv *s, bool with_ca, struct tu_output *o)
{
    tu_require_tool("curl");
    char url[64], res[64];
    snprintf(url, sizeof url, "https://localhost:%d/", s->port);
    snprintf(res, sizeof res, "localhost:%d:127.0.0.1", s->port);
    const char *argv[] = { "curl", "-sS", "--max-time", "10", "--resolve", res, "--cacert",
                           with_ca ? tu_tls_cert("ca.pem") : "/dev/null", url, NULL };
    if (!with_ca) {
        argv[6] = url;      /* no --cacert: the system's store, which lacks the test CA */
        argv[7] = NULL;
    }
    return run(argv, NULL, o);
}

TLS_TEST(curl_cacert_gets_body)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    struct tu_output o;
    int st = curl(s, true, &o);
    cr_assert_eq(st, 0, "curl: %d\n%s", st, o.err);
    cr_assert_str_eq(o.out, hello_body);
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    struct rec *r = &s->rec[0];
    cr_assert_eq(r->opens, 1);
    cr_assert_str_eq(r->info.alpn, "http/1.1");
    cr_assert_str_eq(r->info.server_name, "localhost");
    cr_assert_eq(r->reason, 0, "reason %s (%s)", goev_strerror(r->reason), r->err_at_close);
    srv_stop(s);
}

TLS_TEST(curl_without_ca_fails_verification)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    struct tu_output o;
    int st = curl(s, false, &o);
    cr_assert_eq(st, 60, "curl without the CA: exit %d (want 60, peer certificate)\n%s", st, o.err);
    cr_assert_str_eq(o.out, "");
    tu_output_free(&o);
    /* the client's alert ends the handshake: "the peer sent an alert" */
    assert_hs_failed(s, 0, GOEV_ETLS);
    cr_assert_eq(srv_stats(s).tls_failures, 1);
    srv_stop(s);
}

/* ==== 3. Python ssl: pipelining, large bodies, many connections ================ */

TLS_TEST(python_pipelined_requests)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    struct tu_output o;
    python(s, "pipeline", "200", NULL, &o);
    cr_assert_str_eq(o.out, "ok 200\n");
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    cr_assert_eq(s->rec[0].reason, 0, "%s", goev_strerror(s->rec[0].reason));
    srv_stop(s);
}

TLS_TEST(python_large_upload_echoed)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    struct tu_output o;
    python(s, "upload", "4194304", NULL, &o);
    cr_assert(!strncmp(o.out, "ok ", 3), "%s", o.out);
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    cr_assert_eq(s->rec[0].reason, 0, "%s", goev_strerror(s->rec[0].reason));
    cr_assert_geq(s->rec[0].bytes_in, 4194304);
    srv_stop(s);
}

TLS_TEST(python_sequential_connections_no_fd_leak)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    struct srv *s = srv_start_ctx(M_HTTP, srv_ctx(&o), 2);
    int n = (int)tu_scaled(60, 10);
    char ns[16];
    snprintf(ns, sizeof ns, "%d", n);
    struct tu_output out;
    python(s, "seq", ns, NULL, &out);
    char want[32];
    snprintf(want, sizeof want, "ok %d\n", n);
    cr_assert_str_eq(out.out, want);
    tu_output_free(&out);
    srv_wait_closes(s, n);
    cr_assert_eq(s->opens, n);
    cr_assert_eq(s->closes, n);
    for (int i = 0; i < n && i < MAXREC; i++)
        cr_assert_eq(s->rec[i].reason, 0, "connection %d: %s", i, goev_strerror(s->rec[i].reason));
    struct goev_stats st = srv_stats(s);
    cr_assert_eq(st.tls_handshakes, (uint64_t)n);
    cr_assert_eq(st.tls_failures, 0);
    cr_assert_eq(st.conns, 0);
    srv_stop(s);     /* asserts the fd count is back */
}

/* ==== 4. SNI ====================================================================== */

static struct srv *sni_srv(void)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    goev_tls_ctx *ctx = srv_ctx(&o);
    cr_assert_eq(goev_tls_ctx_add_sni(ctx, "other.test", tu_tls_cert("other.pem"), tu_tls_cert("other.key")), 0);
    cr_assert_eq(goev_tls_ctx_add_sni(ctx, "*.wild.test", tu_tls_cert("other.pem"), tu_tls_cert("other.key")), 0);
    return srv_start_ctx(M_HTTP, ctx, 1);
}

TLS_TEST(sni_python_certificates)
{
    struct srv *s = sni_srv();
    struct tu_output o;
    python(s, "sni", "other.test", "localhost", &o);
    cr_assert_str_eq(o.out, "other.test=other.test/other.test localhost=localhost/localhost\n");
    tu_output_free(&o);
    /* the wildcard takes one label, not two; names match without case */
    python(s, "sni", "a.wild.test", "a.b.wild.test", &o);
    cr_assert_str_eq(o.out, "a.wild.test=other.test/a.wild.test a.b.wild.test=localhost/a.b.wild.test\n");
    tu_output_free(&o);
    python(s, "sni", "OTHER.Test", "unknown.example", &o);
    cr_assert_str_eq(o.out, "OTHER.Test=other.test/OTHER.Test unknown.example=localhost/unknown.example\n");
    tu_output_free(&o);
    srv_wait_closes(s, 6);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(s->rec[i].opens, 1);
        cr_assert_str_eq(s->rec[i].info.alpn, "", "python offers no ALPN");
    }
    srv_stop(s);
}

TLS_TEST(sni_sclient_and_no_name)
{
    struct srv *s = sni_srv();
    struct tu_output o;
    const char *other[] = { "-servername", "other.test", "-alpn", "http/1.1", NULL };
    int st = s_client(s, other, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &o);
    cr_assert_eq(st, 0, "%s", o.err);
    cr_assert(strstr(o.err, "Peer certificate: CN = other.test"), "%s", o.err);
    cr_assert(strstr(o.out, hello_body), "%s", o.out);
    tu_output_free(&o);
    /* no SNI at all: the context's own certificate */
    const char *none[] = { "-noservername", NULL };
    st = s_client(s, none, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &o);
    cr_assert_eq(st, 0, "%s", o.err);
    cr_assert(strstr(o.err, "Peer certificate: CN = localhost"), "%s", o.err);
    tu_output_free(&o);
    srv_wait_closes(s, 2);
    cr_assert_str_eq(s->rec[0].info.server_name, "other.test");
    cr_assert_str_eq(s->rec[0].info.alpn, "http/1.1", "ALPN stays the context's under SNI");
    cr_assert_str_eq(s->rec[1].info.server_name, "");
    srv_stop(s);
}

/* ==== 5. client certificates ===================================================== */

static struct srv *verify_srv(void)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    o.verify_client = 1;
    o.ca_file = tu_tls_cert("ca.pem");
    return srv_start(M_HTTP, &o);
}

TLS_TEST(client_cert_subject)
{
    struct srv *s = verify_srv();
    struct tu_output o;
    python(s, "whoami", "client", NULL, &o);
    cr_assert(strstr(o.out, "CN=goev-client"), "%s", o.out);
    cr_assert_str_eq(o.out, "CN=goev-client,O=goev tests\n");
    tu_output_free(&o);
    /* s_client with the certificate too */
    const char *extra[] = { "-cert", tu_tls_cert("client.pem"), "-key", tu_tls_cert("client.key"), NULL };
    int st = s_client(s, extra, "GET /whoami HTTP/1.1\r\nConnection: close\r\n\r\n", &o);
    cr_assert_eq(st, 0, "%s", o.err);
    cr_assert(strstr(o.out, "CN=goev-client,O=goev tests\n"), "%s", o.out);
    tu_output_free(&o);
    srv_wait_closes(s, 2);
    for (int i = 0; i < 2; i++) {
        struct rec *r = &s->rec[i];
        cr_assert_eq(r->opens, 1);
        cr_assert_eq(r->info.has_peer_cert, 1);
        cr_assert_eq(r->info.peer_verified, 1);
        cr_assert(strstr(r->subject, "goev-client"), "%s", r->subject);
        cr_assert_eq(r->subj_rc, (int)strlen(r->subject));
    }
    srv_stop(s);
}

TLS_TEST(client_cert_missing_refused)
{
    struct srv *s = verify_srv();
    struct tu_output o;
    python(s, "nocert", NULL, NULL, &o);
    cr_assert(!strncmp(o.out, "refused", 7), "%s", o.out);
    tu_output_free(&o);
    assert_hs_failed(s, 0, GOEV_ETLSVERIFY);
    cr_assert_eq(srv_stats(s).tls_failures, 1);
    srv_stop(s);
}

TLS_TEST(client_cert_untrusted_refused)
{
    struct srv *s = verify_srv();
    struct mcl m;
    mcl_new(&m, s->port, &(struct mcl_opts){ .cert = "rogue" });
    int rc = mcl_handshake(&m);
    if (rc == 1) {      /* TLS 1.3: the refusal comes after our Finished */
        char buf[64];
        rc = mcl_recv(&m, buf, sizeof buf);
        cr_assert_lt(rc, 0, "served with an untrusted client certificate");
    }
    mcl_free(&m);
    assert_hs_failed(s, 0, GOEV_ETLSVERIFY);
    cr_assert(strstr(s->rec[0].err_at_close, "certificate"), "%s", s->rec[0].err_at_close);
    srv_stop(s);
}

/* ==== 6. bad input =============================================================== */

/* Send bytes (or nothing), wait for the server to close; the connection
 * must have failed the handshake with reason want. */
static void bad_handshake(struct srv *s, const void *d, size_t n, int want, bool rst_after)
{
    int before = TU_LOAD(&s->made);
    uint64_t fails = srv_stats(s).tls_failures;
    int fd = tu_connect_tcp4(s->port);
    cr_assert(fd >= 0);
    if (n)
        cr_assert_eq(tu_write_all(fd, d, n), 0);
    if (rst_after) {
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s->made) > before, 2000));
        tu_sleep_ms(20);
        set_rst(fd);
        close(fd);
    } else {
        size_t junk;
        int e = tu_wait_eof(fd, CLOSE_MS, &junk);
        cr_assert(e == 1 || e == -ECONNRESET, "the server did not close: %d", e);
        close(fd);
    }
    assert_hs_failed(s, before, want);
    cr_assert_eq(srv_stats(s).tls_failures, fails + (want <= GOEV_ETLS && want >= GOEV_ETLSTRUNC));
}

TLS_TEST(plaintext_http_is_not_tls)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    bad_handshake(s, req, sizeof req - 1, GOEV_ETLS, false);
    cr_assert(strstr(s->rec[0].err_at_close, "http request"), "%s", s->rec[0].err_at_close);
    srv_stop(s);
}

TLS_TEST(random_bytes_are_not_tls)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct tu_rng g;
    tu_rng_seed(&g, 42);
    char junk[1000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)tu_rng_next(&g);
    junk[0] = 0x16;     /* a handshake record's type, then nonsense */
    bad_handshake(s, junk, sizeof junk, GOEV_ETLS, false);
    junk[0] = 0x42;     /* not even a record type */
    bad_handshake(s, junk, sizeof junk, GOEV_ETLS, false);
    srv_stop(s);
}

static struct srv *short_timeout_srv(enum mode m)
{
    struct goev_tls_opts o;
    srv_opts(&o);
    o.handshake_timeout_ms = 200;
    return srv_start(m, &o);
}

TLS_TEST(silent_client_times_out)
{
    struct srv *s = short_timeout_srv(M_ECHO);
    uint64_t t0 = tu_now_ms();
    bad_handshake(s, NULL, 0, GOEV_ETLSTIMEDOUT, false);
    uint64_t dt = tu_now_ms() - t0;
    cr_assert(dt >= 150 && dt < 3000, "closed after %llu ms, handshake_timeout_ms 200",
              (unsigned long long)dt);
    srv_stop(s);
}

/* A real ClientHello, from an OpenSSL client that never gets to send it. */
static size_t client_hello(char *buf, size_t cap)
{
    struct mcl m;
    mcl_new(&m, 0 /* unused */, NULL);
    SSL_do_handshake(m.ssl);
    size_t n = mcl_take(&m, buf, cap);
    mcl_free(&m);
    cr_assert_gt(n, 100);
    return n;
}

TLS_TEST(half_client_hello_times_out)
{
    struct srv *s = short_timeout_srv(M_ECHO);
    char hello[4096];
    size_t n = client_hello(hello, sizeof hello);
    bad_handshake(s, hello, n / 2, GOEV_ETLSTIMEDOUT, false);
    srv_stop(s);
}

TLS_TEST(client_hangs_up_mid_handshake)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    char hello[4096];
    size_t n = client_hello(hello, sizeof hello);
    /* half a ClientHello and a FIN: "hung up during the handshake" */
    int fd = tu_connect_tcp4(s->port);
    cr_assert_eq(tu_write_all(fd, hello, n / 2), 0);
    shutdown(fd, SHUT_WR);
    size_t junk;
    cr_assert_eq(tu_wait_eof(fd, CLOSE_MS, &junk), 1);
    close(fd);
    assert_hs_failed(s, 0, GOEV_ETLS);
    srv_stop(s);
}

TLS_TEST(client_resets_mid_handshake)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    /* The whole ClientHello, the server's flight read, then a reset
     * instead of the client's Finished. */
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    SSL_do_handshake(m.ssl);
    cr_assert_eq(mcl_flush(&m), 0);
    cr_assert_gt(mcl_fill(&m), 0);
    set_rst(m.fd);
    mcl_free(&m);
    struct rec *r = &s->rec[0];
    cr_assert(TU_WAIT_FOR(TU_LOAD(&r->closes) == 1, CLOSE_MS));
    cr_assert_eq(r->opens, 0);
    /* a reset is the socket's error, as on a plain connection (not a TLS
     * reason, not counted in tls_failures) */
    cr_assert_eq(r->reason, -ECONNRESET, "reason %d (%s)", r->reason, goev_strerror(r->reason));
    cr_assert_eq(srv_stats(s).tls_failures, 0);
    /* and a reset before anything was sent */
    bad_handshake(s, NULL, 0, -ECONNRESET, true);
    srv_stop(s);
}

TLS_TEST(truncated_record_after_handshake)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    mcl_send(&m, "ping\n", 5);
    char buf[64];
    cr_assert_eq(mcl_recv(&m, buf, sizeof buf), 5);
    /* an application-data record header claiming 256 bytes, 20 of them, EOF */
    char rec[5 + 20] = { 0x17, 0x03, 0x03, 0x01, 0x00 };
    memset(rec + 5, 0xAB, 20);
    cr_assert_eq(tu_write_all(m.fd, rec, sizeof rec), 0);
    shutdown(m.fd, SHUT_WR);
    size_t junk;
    int e = tu_wait_eof(m.fd, CLOSE_MS, &junk);
    cr_assert(e == 1 || e == -ECONNRESET, "%d", e);
    mcl_free(&m);
    assert_closed_with(s, 0, GOEV_ETLSTRUNC);
    cr_assert_eq(s->rec[0].opens, 1);
    cr_assert_eq(s->rec[0].eofs, 0, "a truncated record is no EOF");
    struct goev_stats st = srv_stats(s);
    cr_assert_eq(st.tls_failures, 1);
    srv_stop(s);
}

TLS_TEST(eof_at_record_boundary_is_eof)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    mcl_send(&m, "ping\n", 5);
    char buf[64];
    cr_assert_eq(mcl_recv(&m, buf, sizeof buf), 5);
    shutdown(m.fd, SHUT_WR);     /* no close_notify: many clients just close */
    assert_closed_with(s, 0, 0);
    cr_assert_eq(s->rec[0].eofs, 1);
    mcl_free(&m);
    cr_assert_eq(srv_stats(s).tls_failures, 0);
    srv_stop(s);
}

static void corrupt_record(bool tls12)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct mcl m;
    mcl_new(&m, s->port, &(struct mcl_opts){ .max_tls12 = tls12 });
    mcl_handshake_ok(&m);
    mcl_send(&m, "ping\n", 5);
    char buf[256];
    cr_assert_eq(mcl_recv(&m, buf, sizeof buf), 5);
    cr_assert_eq(SSL_write(m.ssl, "hello, corrupted", 16), 16);
    size_t n = mcl_take(&m, buf, sizeof buf);
    cr_assert_gt(n, 5 + 16);
    buf[n - 3] ^= 0x20;         /* in the tag */
    buf[5 + 2] ^= 0x01;         /* and the ciphertext */
    cr_assert_eq(tu_write_all(m.fd, buf, n), 0);
    int r = mcl_recv(&m, buf, sizeof buf);
    cr_assert_lt(r, 0, "no alert, no close after a corrupted record: %d", r);
    mcl_free(&m);
    assert_closed_with(s, 0, GOEV_ETLSPROTO);
    cr_assert_eq(s->rec[0].opens, 1);
    cr_assert_eq(s->rec[0].bytes_in, 5, "the corrupted record reached on_read");
    /* The SSL layer's reason, not a provider's ("cipher operation failed",
     * first in OpenSSL's queue on TLS 1.2 AES-GCM) */
    cr_assert(strstr(s->rec[0].err_at_close, "bad record mac") ||
                  strstr(s->rec[0].err_at_close, "decrypt"),
              "%s", s->rec[0].err_at_close);
    cr_assert_eq(srv_stats(s).tls_failures, 1);
    srv_stop(s);
}

TLS_TEST(corrupted_record_tls13) { corrupt_record(false); }
TLS_TEST(corrupted_record_tls12) { corrupt_record(true); }

TLS_TEST(renegotiation_refused)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct mcl m;
    mcl_new(&m, s->port, &(struct mcl_opts){ .max_tls12 = 1 });
    mcl_handshake_ok(&m);
    cr_assert_str_eq(SSL_get_version(m.ssl), "TLSv1.2");
    mcl_send(&m, "ping\n", 5);
    char buf[256];
    cr_assert_eq(mcl_recv(&m, buf, sizeof buf), 5);
    cr_assert_eq(SSL_renegotiate(m.ssl), 1, "the client refuses to renegotiate");
    /* Our ClientHello goes out (whatever SSL_do_handshake says here), and
     * the server ends the connection instead of answering it. */
    SSL_do_handshake(m.ssl);
    cr_assert_eq(mcl_flush(&m), 0);
    int r = 1;
    for (int i = 0; i < 10 && r > 0; i++)
        r = mcl_recv(&m, buf, sizeof buf);
    cr_assert_leq(r, 0, "the connection went on after the renegotiation request");
    mcl_free(&m);
    assert_closed_with(s, 0, GOEV_ETLSRENEG);
    cr_assert_eq(srv_stats(s).tls_failures, 1);
    srv_stop(s);
}

TLS_TEST(client_resets_mid_response)
{
    struct srv *s = srv_start(M_HTTP, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    static const char req[] = "GET /big HTTP/1.1\r\n\r\n";
    mcl_send(&m, req, sizeof req - 1);
    size_t got = 0;
    char buf[65536];
    while (got < 200000) {
        int r = mcl_recv(&m, buf, sizeof buf);
        cr_assert_gt(r, 0);
        got += (size_t)r;
    }
    set_rst(m.fd);
    mcl_free(&m);
    struct rec *r = &s->rec[0];
    cr_assert(TU_WAIT_FOR(TU_LOAD(&r->closes) == 1, CLOSE_MS), "not closed after the reset");
    cr_assert_eq(r->opens, 1);
    cr_assert(r->reason == -ECONNRESET || r->reason == -EPIPE, "reason %d (%s)", r->reason,
              goev_strerror(r->reason));
    cr_assert_eq(srv_stats(s).tls_failures, 0, "a reset is not a TLS failure");
    /* the server goes on */
    struct tu_output o;
    int st = curl(s, true, &o);
    cr_assert_eq(st, 0, "%s", o.err);
    cr_assert_str_eq(o.out, hello_body);
    tu_output_free(&o);
    srv_stop(s);
}

/* ==== 7. shutdown and close_notify ================================================ */

TLS_TEST(server_shutdown_sends_close_notify)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct tu_output o;
    python(s, "shut", NULL, NULL, &o);
    cr_assert_str_eq(o.out, "clean close_notify\nunwrapped\n");
    tu_output_free(&o);
    srv_wait_closes(s, 1);
    struct rec *r = &s->rec[0];
    cr_assert_eq(r->bytes_in, strlen("ping\nshut\nafter\n"), "reading goes on after goev_shutdown");
    cr_assert_eq(r->eofs, 1, "the client's close_notify is on_eof");
    cr_assert_eq(r->reason, 0);
    srv_stop(s);
}

TLS_TEST(server_close_sends_close_notify)
{
    struct srv *s = srv_start(M_GREET, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    char buf[64];
    int end;
    size_t n = mcl_recv_all(&m, buf, sizeof buf, &end);
    cr_assert_eq(n, 6);
    cr_assert(!memcmp(buf, "hello\n", 6));
    cr_assert_eq(end, 0, "no close_notify: %d", end);
    cr_assert_eq(SSL_get_error(m.ssl, 0), SSL_ERROR_ZERO_RETURN);
    cr_assert(SSL_get_shutdown(m.ssl) & SSL_RECEIVED_SHUTDOWN);
    mcl_free(&m);
    assert_closed_with(s, 0, 0);
    srv_stop(s);
}

TLS_TEST(client_close_notify_is_eof)
{
    struct srv *s = srv_start(M_ECHO, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    mcl_send(&m, "ping\n", 5);
    char buf[64];
    cr_assert_eq(mcl_recv(&m, buf, sizeof buf), 5);
    cr_assert_geq(SSL_shutdown(m.ssl), 0);
    cr_assert_eq(mcl_flush(&m), 0);
    /* the server answers with its own close_notify */
    int end;
    cr_assert_eq(mcl_recv_all(&m, buf, sizeof buf, &end), 0);
    cr_assert_eq(end, 0, "the server's close_notify: %d", end);
    mcl_free(&m);
    assert_closed_with(s, 0, 0);
    cr_assert_eq(s->rec[0].eofs, 1);
    cr_assert_eq(srv_stats(s).tls_failures, 0);
    srv_stop(s);
}

/* ==== 8. sendfile and async writes over TLS ====================================== */

#define FILE_SEED 91

TLS_TEST(sendfile_over_tls)
{
    char *dir = tu_tmpdir();
    char path[300];
    snprintf(path, sizeof path, "%s/data", dir);
    size_t size = (3u << 20) + 123;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    char *data = malloc(size);
    tu_stream_fill(FILE_SEED, 0, data, size);
    cr_assert_eq(write(fd, data, size), (ssize_t)size);
    struct srv *s = srv_start(M_SENDFILE, NULL);
    s->file_fd = fd;
    s->file_size = size;
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    size_t cap = size + 64;
    char *got = malloc(cap);
    int end;
    size_t n = mcl_recv_all(&m, got, cap, &end);
    mcl_free(&m);
    cr_assert_eq(end, 0, "no close_notify after the file: %d", end);
    cr_assert_eq(n, size + 10, "%zu bytes, want %zu", n, size + 10);
    cr_assert(!memcmp(got, "HEAD\n", 5));
    cr_assert_eq(tu_stream_check(FILE_SEED, 0, got + 5, size), -1, "file bytes differ");
    cr_assert(!memcmp(got + 5 + size, "TAIL\n", 5));
    free(got);
    free(data);
    assert_closed_with(s, 0, 0);
    srv_stop(s);
    tu_tmpdir_free(dir);
}

TLS_TEST(async_writes_over_tls)
{
    struct srv *s = srv_start(M_ASYNC, NULL);
    struct mcl m;
    mcl_new(&m, s->port, NULL);
    mcl_handshake_ok(&m);
    /* TLS 1.3: the server's on_open comes with our Finished */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s->async_id) != 0, CLOSE_MS));
    goev_conn_id id = TU_LOAD(&s->async_id);
    size_t chunk = 3000, count = 400, total = chunk * count;
    char *piece = malloc(chunk);
    for (size_t i = 0; i < count; i++) {
        tu_stream_fill(7, i * chunk, piece, chunk);
        cr_assert_eq(goev_async_write(s->r, id, piece, chunk), 0);
    }
    cr_assert_eq(goev_async_close(s->r, id), 0);
    free(piece);
    char *got = malloc(total + 64);
    int end;
    size_t n = mcl_recv_all(&m, got, total + 64, &end);
    mcl_free(&m);
    cr_assert_eq(end, 0, "no close_notify after the async writes: %d", end);
    cr_assert_eq(n, total);
    cr_assert_eq(tu_stream_check(7, 0, got, total), -1, "async bytes differ");
    free(got);
    assert_closed_with(s, 0, 0);
    srv_stop(s);
}

/* ==== 9. OpenSSL's error queue between connections =============================== */

TLS_TEST(error_state_clean_after_failure)
{
    struct srv *s = srv_start(M_HTTP, NULL);    /* one poller: one thread for all */
    /* a failure first: plaintext */
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    bad_handshake(s, req, sizeof req - 1, GOEV_ETLS, false);
    char failure[256];
    snprintf(failure, sizeof failure, "%s", s->rec[0].err_at_close);
    cr_assert(failure[0]);
    /* then a client that verifies nothing in the way: curl */
    struct tu_output o;
    int st = curl(s, true, &o);
    cr_assert_eq(st, 0, "curl after a failed handshake: %d\n%s", st, o.err);
    cr_assert_str_eq(o.out, hello_body);
    tu_output_free(&o);
    /* and a failed verification, then s_client */
    st = curl(s, false, &o);
    cr_assert_eq(st, 60);
    tu_output_free(&o);
    st = s_client(s, NULL, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &o);
    cr_assert_eq(st, 0, "%s", o.err);
    cr_assert(strstr(o.out, hello_body));
    tu_output_free(&o);
    srv_wait_closes(s, 4);
    cr_assert_eq(s->rec[1].opens, 1);
    cr_assert_eq(s->rec[1].reason, 0, "%s", goev_strerror(s->rec[1].reason));
    cr_assert_eq(s->rec[3].opens, 1);
    cr_assert_eq(s->rec[3].reason, 0, "%s", goev_strerror(s->rec[3].reason));
    /* goev_tls_error_string is the last failure's, as documented ("overwritten
     * by the next failure"): a good connection does not change it */
    cr_assert_str_eq(s->rec[1].err_at_open, failure);
    cr_assert_str_eq(s->rec[1].err_at_close, failure);
    cr_assert_str_eq(s->rec[3].err_at_open, s->rec[2].err_at_close);
    cr_assert_eq(s->rec[1].info_rc, 0);
    cr_assert_eq(s->rec[3].info_rc, 0);
    struct goev_stats gs = srv_stats(s);
    cr_assert_eq(gs.tls_failures, 2);
    cr_assert_eq(gs.tls_handshakes, 2);
    srv_stop(s);    /* asserts no callback saw OpenSSL's queue non-empty */
}
