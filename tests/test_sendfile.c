/* test_sendfile.c - goev_sendfile: file bytes equal to the file, ordered
 * with goev_write on the same connection, a slow reader (back-pressure and
 * on_drained), a file that shrinks under a queued range (-ENODATA), a peer
 * that resets in the middle (no SIGPIPE even on the thread that called
 * goev_reactor_run), the duplicate descriptors closed in every path, and
 * the argument errors. */
#include "testutil.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void init_test(void)
{
    /* A SIGPIPE raised by sendfile must kill the test, not pass it. */
    signal(SIGPIPE, SIG_DFL);
}

#define FILE_SEED 77

/* A file in a fresh directory whose bytes are stream FILE_SEED. */
struct tfile {
    char *dir;
    char path[256];
    int fd;
    size_t size;
};

static void tfile_make(struct tfile *f, size_t size)
{
    f->dir = tu_tmpdir();
    snprintf(f->path, sizeof f->path, "%s/data", f->dir);
    f->fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(f->fd >= 0);
    f->size = size;
    char *buf = malloc(1 << 20);
    for (size_t off = 0; off < size; off += 1 << 20) {
        size_t n = size - off < (1 << 20) ? size - off : (1 << 20);
        tu_stream_fill(FILE_SEED, off, buf, n);
        cr_assert_eq(pwrite(f->fd, buf, n, (off_t)off), (ssize_t)n);
    }
    free(buf);
}

static void tfile_free(struct tfile *f)
{
    close(f->fd);
    tu_tmpdir_free(f->dir);
}

/* ---- a server whose connection runs a script in on_open ---------------- */

struct srv;
typedef void (*script_fn)(struct srv *s, goev_handler *h);

struct srv {
    goev_reactor *r;
    goev_acceptor *a;
    goev_handler h;
    int made;
    script_fn script;
    struct tfile *file;
    /* what the connection saw */
    int opens, closes, reason, drained;
    size_t max_pending;
    int rc[8];
    uint64_t seed;      /* for the interleaving script */
    /* the expected byte stream, built by the script */
    char *expect;
    size_t expect_len, expect_cap;
};

static int s_on_open(goev_handler *h)
{
    struct srv *s = h->user;
    s->script(s, h);
    size_t pend = goev_pending(h);
    if (pend > s->max_pending)
        s->max_pending = pend;
    TU_INC(&s->opens);
    return 0;
}

static ssize_t s_on_read(goev_handler *h, const char *d, size_t n)
{
    return (ssize_t)n;
}

static int s_on_drained(goev_handler *h)
{
    struct srv *s = h->user;
    TU_INC(&s->drained);
    return 0;
}

static void s_on_close(goev_handler *h, int reason)
{
    struct srv *s = h->user;
    s->reason = reason;
    TU_INC(&s->closes);
}

static const struct goev_handler_ops s_ops = {
    .on_open = s_on_open, .on_read = s_on_read, .on_drained = s_on_drained,
    .on_close = s_on_close,
};

static goev_handler *s_new(goev_poller *p, void *arg)
{
    struct srv *s = arg;
    if (s->made++)
        return NULL;
    goev_handler_init(&s->h, &s_ops);
    s->h.user = s;
    return &s->h;
}

static char *expect_room(struct srv *s, size_t n)
{
    if (s->expect_len + n > s->expect_cap) {
        size_t cap = s->expect_cap ? s->expect_cap : 1 << 16;
        while (cap < s->expect_len + n)
            cap *= 2;
        s->expect = realloc(s->expect, cap);
        s->expect_cap = cap;
    }
    char *at = s->expect + s->expect_len;
    s->expect_len += n;
    return at;
}

static void expect_add(struct srv *s, const void *d, size_t n)
{
    memcpy(expect_room(s, n), d, n);
}

static void expect_file(struct srv *s, uint64_t off, uint64_t len)
{
    tu_stream_fill(FILE_SEED, off, expect_room(s, len), len);
}

static void srv_start(struct srv *s, script_fn script, struct tfile *f, bool run_async)
{
    s->script = script;
    s->file = f;
    s->r = tu_reactor_new(1);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, "127.0.0.1:0", NULL, s_new, s);
    cr_assert_eq(rc, 0);
    if (run_async)
        tu_reactor_start(s->r);
}

static void srv_stop(struct srv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    free(s->expect);
}

/* Read everything up to EOF and compare with what the script promised. */
static void read_and_check(struct srv *s, int fd)
{
    char *got = malloc(s->expect_len + 1);
    ssize_t n = tu_read_to_eof(fd, got, s->expect_len + 1);
    cr_assert_eq(n, (ssize_t)s->expect_len, "read %zd of %zu bytes", n, s->expect_len);
    if (memcmp(got, s->expect, s->expect_len) != 0)
        for (size_t i = 0; i < s->expect_len; i++)
            if (got[i] != s->expect[i])
                cr_assert_fail("byte %zu differs (of %zu)", i, s->expect_len);
    free(got);
}

/* ---- whole file between two writes ------------------------------------ */

static void script_whole(struct srv *s, goev_handler *h)
{
    static const char head[] = "HEAD\n", tail[] = "\nTAIL";
    s->rc[0] = goev_write(h, head, 5);
    s->rc[1] = goev_sendfile(h, s->file->fd, 0, s->file->size);
    s->rc[2] = goev_write(h, tail, 5);
    expect_add(s, head, 5);
    expect_file(s, 0, s->file->size);
    expect_add(s, tail, 5);
    goev_close(h);
}

Test(sendfile, whole_file_between_writes, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, (8u << 20) + 123);
    struct srv s = {0};
    srv_start(&s, script_whole, &f, true);
    int fd = tu_connect_tcp4(goev_acceptor_port(s.a));
    cr_assert(fd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == 1, 5000));
    for (int i = 0; i < 3; i++)
        cr_assert_eq(s.rc[i], 0, "call %d: %s", i, strerror(-s.rc[i]));
    cr_assert_eq(s.max_pending, 5 + f.size + 5, "goev_pending counts the file range");
    read_and_check(&s, fd);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.reason, 0);
    srv_stop(&s);
    tfile_free(&f);
    tu_assert_fds(fds);
}

/* ---- many ranges interleaved with writes -------------------------------- */

static void script_interleaved(struct srv *s, goev_handler *h)
{
    struct tu_rng g;
    tu_rng_seed(&g, s->seed);
    char buf[3000];
    for (int i = 0; i < 200; i++) {
        if (tu_rng_range(&g, 0, 1)) {
            size_t n = (size_t)tu_rng_range(&g, 1, sizeof buf);
            for (size_t k = 0; k < n; k++)
                buf[k] = (char)('a' + (i + k) % 26);
            if (goev_write(h, buf, n) != 0)
                s->rc[0] = -1;
            expect_add(s, buf, n);
        } else {
            uint64_t off = tu_rng_range(&g, 0, s->file->size - 1);
            uint64_t len = tu_rng_range(&g, 1, s->file->size - off < 200000 ? s->file->size - off : 200000);
            if (goev_sendfile(h, s->file->fd, off, len) != 0)
                s->rc[1] = -1;
            expect_file(s, off, len);
        }
    }
    goev_close(h);
}

Test(sendfile, interleaved_with_writes, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, 1u << 20);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct srv s = {.seed = seed};
        srv_start(&s, script_interleaved, &f, true);
        int fd = tu_connect_tcp4(goev_acceptor_port(s.a));
        cr_assert(fd >= 0);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == 1, 5000));
        cr_assert_eq(s.rc[0], 0, "a goev_write failed");
        cr_assert_eq(s.rc[1], 0, "a goev_sendfile failed");
        read_and_check(&s, fd);
        close(fd);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
        srv_stop(&s);
    }
    tfile_free(&f);
    tu_assert_fds(fds);
}

/* ---- a slow reader: back-pressure, on_drained, then all of it ------------ */

/* A client with a small receive buffer, so that a server's send blocks. */
static int small_client(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 32 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    tu_set_io_timeout(fd, TU_IO_TIMEOUT_MS);
    cr_assert_eq(tu_connect_fd(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    return fd;
}

static void script_big(struct srv *s, goev_handler *h)
{
    goev_set_sndbuf(h, 64 * 1024);
    s->rc[0] = goev_sendfile(h, s->file->fd, 1000, s->file->size - 1000);
    s->rc[1] = goev_write(h, "END", 3);
    expect_file(s, 1000, s->file->size - 1000);
    expect_add(s, "END", 3);
    goev_shutdown(h);
}

Test(sendfile, slow_reader, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, 16u << 20);
    struct srv s = {0};
    srv_start(&s, script_big, &f, true);
    int fd = small_client(goev_acceptor_port(s.a));
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == 1, 5000));
    cr_assert_eq(s.rc[0], 0);
    cr_assert_eq(s.rc[1], 0);
    /* Read slowly for a while: the server must not busy-loop or buffer, so
     * most of the range is still pending on its side. */
    char *got = malloc(s.expect_len + 1);
    size_t have = 0;
    for (int i = 0; i < 20; i++) {
        ssize_t n = read(fd, got + have, 16 * 1024);
        cr_assert(n > 0);
        have += (size_t)n;
        tu_sleep_ms(10);
    }
    cr_assert_eq(TU_LOAD(&s.drained), 0, "drained while the reader sleeps");
    struct goev_stats st0, st1;
    goev_stats_get(s.r, -1, &st0);
    tu_sleep_ms(200);
    goev_stats_get(s.r, -1, &st1);
    cr_assert_leq(st1.sys_write - st0.sys_write, 4, "%llu sends while the peer read nothing",
                  (unsigned long long)(st1.sys_write - st0.sys_write));
    ssize_t n = tu_read_to_eof(fd, got + have, s.expect_len + 1 - have);
    cr_assert(n >= 0);
    have += (size_t)n;
    cr_assert_eq(have, s.expect_len, "read %zu of %zu", have, s.expect_len);
    cr_assert_eq(memcmp(got, s.expect, have), 0, "bytes differ");
    free(got);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.drained) == 1, 5000), "on_drained %d times", s.drained);
    close(fd);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.reason, 0);
    srv_stop(&s);
    tfile_free(&f);
    tu_assert_fds(fds);
}

/* ---- the file shrinks under a queued range ------------------------------ */

static void script_shrink(struct srv *s, goev_handler *h)
{
    goev_set_sndbuf(h, 64 * 1024);
    s->rc[0] = goev_write(h, "X", 1);
    s->rc[1] = goev_sendfile(h, s->file->fd, 0, s->file->size);
}

Test(sendfile, file_shorter_than_range, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, 8u << 20);
    struct srv s = {0};
    srv_start(&s, script_shrink, &f, true);
    int fd = small_client(goev_acceptor_port(s.a));
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.opens) == 1, 5000));
    cr_assert_eq(s.rc[1], 0);
    tu_sleep_ms(50);
    /* The range is queued and blocked on the reader; cut the file. */
    cr_assert_eq(ftruncate(f.fd, 1u << 20), 0);
    char *got = malloc(f.size + 1);
    ssize_t n = tu_read_to_eof(fd, got, f.size + 1);
    cr_assert(n > 0 || n == -ECONNRESET, "read: %zd", n);
    if (n > 0) {
        cr_assert_leq((size_t)n, 1 + ((size_t)1 << 20), "more bytes than the file has: %zd", n);
        cr_assert_eq(got[0], 'X');
        cr_assert_eq(tu_stream_check(FILE_SEED, 0, got + 1, (size_t)n - 1), -1,
                     "bytes other than the file's");
    }
    free(got);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.reason, -ENODATA, "close reason %d", s.reason);
    close(fd);
    srv_stop(&s);
    tfile_free(&f);
    tu_assert_fds(fds);
}

/* ---- the peer resets mid-file; the reactor runs on the test's thread ---- */

static void script_reset(struct srv *s, goev_handler *h)
{
    goev_set_sndbuf(h, 64 * 1024);
    for (int i = 0; i < 4; i++)
        s->rc[i] = goev_sendfile(h, s->file->fd, 0, s->file->size);
}

/* A write side shut down behind goev's back: the kernel answers the next
 * sendfile with EPIPE and SIGPIPE, deterministically. */
static void script_epipe(struct srv *s, goev_handler *h)
{
    shutdown(goev_handler_fd_install(h), SHUT_WR);    /* a regular fd also for a direct descriptor */
    s->rc[0] = goev_sendfile(h, s->file->fd, 0, s->file->size);
}

struct resetter {
    struct srv *s;
    int port;
    int ok;
};

static void *reset_client(void *arg)
{
    struct resetter *rs = arg;
    int fd = tu_connect_tcp4(rs->port);
    char buf[4096];
    if (fd >= 0 && TU_WAIT_FOR(TU_LOAD(&rs->s->opens) == 1, 5000) && read(fd, buf, sizeof buf) >= 0) {
        if (rs->s->script == script_reset) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fd);      /* RST: the server's next sendfile fails */
            fd = -1;
        }
        rs->ok = TU_WAIT_FOR(TU_LOAD(&rs->s->closes) == 1, 5000);
    }
    if (fd >= 0)
        close(fd);
    goev_reactor_stop(rs->s->r);
    return NULL;
}

static void no_sigpipe(script_fn script, int reason1, int reason2)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, 8u << 20);
    struct srv s = {0};
    srv_start(&s, script, &f, false);
    struct resetter rs = {.s = &s, .port = goev_acceptor_port(s.a)};
    pthread_t th;
    pthread_create(&th, NULL, reset_client, &rs);
    /* Poller 0 runs here, on a thread that does not block SIGPIPE. */
    cr_assert_eq(goev_reactor_run(s.r), 0);
    pthread_join(th, NULL);
    cr_assert(rs.ok, "the server never closed the reset connection");
    cr_assert(s.reason == reason1 || s.reason == reason2, "reason %d", s.reason);
    sigset_t pend;
    sigpending(&pend);
    cr_assert_eq(sigismember(&pend, SIGPIPE), 0, "a SIGPIPE was left pending");
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    cr_assert_eq(sigismember(&cur, SIGPIPE), 0, "the thread's mask was not restored");
    goev_acceptor_free(s.a);
    goev_reactor_free(s.r);
    free(s.expect);
    tfile_free(&f);
    tu_assert_fds(fds);
}

Test(sendfile, peer_reset_no_sigpipe, .init = init_test, .timeout = TU_TIMEOUT)
{
    no_sigpipe(script_reset, -ECONNRESET, -EPIPE);
}

Test(sendfile, epipe_no_sigpipe, .init = init_test, .timeout = TU_TIMEOUT)
{
    no_sigpipe(script_epipe, -EPIPE, -EPIPE);
}

/* ---- closing with ranges queued; argument errors ------------------------- */

static void script_errors(struct srv *s, goev_handler *h)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) == 0) {
        s->rc[0] = goev_sendfile(h, pfd[0], 0, 10);
        close(pfd[0]);
        close(pfd[1]);
    }
    s->rc[1] = goev_sendfile(h, -1, 0, 10);
    s->rc[2] = goev_sendfile(h, s->file->fd, 0, s->file->size + 1);
    s->rc[3] = goev_sendfile(h, s->file->fd, UINT64_MAX - 5, 10);
    s->rc[4] = goev_sendfile(h, s->file->fd, 0, 0);
    /* Queued, never sent: the duplicates must still be closed. */
    goev_set_sndbuf(h, 64 * 1024);
    for (int i = 0; i < 10; i++)
        goev_sendfile(h, s->file->fd, 0, s->file->size);
    s->rc[5] = goev_abort(h);
    s->rc[6] = goev_sendfile(h, s->file->fd, 0, 1);
}

Test(sendfile, errors_and_abort, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct tfile f;
    tfile_make(&f, 4u << 20);
    struct srv s = {0};
    srv_start(&s, script_errors, &f, true);
    int fd = tu_connect_tcp4(goev_acceptor_port(s.a));
    cr_assert(fd >= 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.closes) == 1, 5000));
    cr_assert_eq(s.rc[0], -EINVAL, "a pipe: %d", s.rc[0]);
    cr_assert_eq(s.rc[1], -EINVAL, "fd -1: %d", s.rc[1]);
    cr_assert_eq(s.rc[2], -ENODATA, "past the end: %d", s.rc[2]);
    cr_assert_eq(s.rc[3], -EINVAL, "overflowing range: %d", s.rc[3]);
    cr_assert_eq(s.rc[4], 0, "len 0");
    cr_assert_eq(s.rc[5], 0);
    cr_assert_eq(s.rc[6], -ENOTCONN, "after abort: %d", s.rc[6]);
    cr_assert_eq(s.reason, -ECONNABORTED);
    close(fd);
    srv_stop(&s);
    tfile_free(&f);
    tu_assert_fds(fds);
}
