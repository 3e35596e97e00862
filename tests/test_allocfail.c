/* test_allocfail.c - allocation-failure injection.
 *
 * goev_replace_allocator routes every allocation of the library through a
 * counting allocator.  Armed with N, it makes the Nth allocation counted
 * since arming fail (NULL) and lets every other one through.  Each scenario
 * is run for N = 1, 2, ... until a run completes without reaching N
 * allocations, and every run must end cleanly:
 *
 *   - the call that needed the memory returns -ENOMEM and has no effect
 *     (no callback later for the work it refused), or
 *   - the connection it hit is closed, on_close (after on_connect_fail for a
 *     connect) says why, and the peer sees the stream end - never a stream
 *     with a hole in it;
 *   - every handler the library took gets exactly one on_close, nothing
 *     hangs (every wait is bounded), no fd is left open, and (ASan/LSan in
 *     CI) no memory is leaked.
 *
 * Every run then shows that the library recovered: the call that failed
 * succeeds when tried again, and the same reactor serves a fresh connection
 * (or a fresh reactor comes up) with no failure armed.
 *
 * Only the library's allocations are counted (Criterion, the test and libc
 * keep malloc), and only between af_arm and af_disarm.  Poller threads
 * allocate too: the counter is a global atomic.
 *
 * Internal timers (a connect's timeout, a listener's EMFILE back-off) are
 * made to need memory too: timer_heap_size 1, held by a long timer, so
 * arming one grows the heap. */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define WAIT_MS 3000        /* longest a clean outcome may take */
#define CLI_TIMEOUT_MS 3000 /* client sockets: a lost byte is an error */
#define SWEEP_MAX 400       /* more allocations than this in a scenario: a loop */

/* ---- the failing allocator ------------------------------------------------ */

static int af_armed;        /* atomic */
static long af_count;       /* allocations counted since af_arm */
static long af_fail_at;     /* the one that fails (1-based) */
static long af_failed;      /* failures injected since af_arm */

static bool af_fail_now(void)
{
    if (!__atomic_load_n(&af_armed, __ATOMIC_ACQUIRE))
        return false;
    long n = __atomic_add_fetch(&af_count, 1, __ATOMIC_ACQ_REL);
    if (n != __atomic_load_n(&af_fail_at, __ATOMIC_ACQUIRE))
        return false;
    __atomic_add_fetch(&af_failed, 1, __ATOMIC_ACQ_REL);
    if (getenv("ALLOCFAIL_TRACE")) {   /* where: addr2line -e .libs/libgoev.so */
        void *bt[8];
        backtrace_symbols_fd(bt, backtrace(bt, 8), 2);
    }
    return true;
}

static void *af_malloc(size_t n) { return af_fail_now() ? NULL : malloc(n); }
static void *af_realloc(void *p, size_t n) { return af_fail_now() ? NULL : realloc(p, n); }
static void *af_calloc(size_t k, size_t n) { return af_fail_now() ? NULL : calloc(k, n); }
static void af_free(void *p) { free(p); }

static void af_arm(long n)
{
    __atomic_store_n(&af_armed, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&af_count, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&af_failed, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&af_fail_at, n, __ATOMIC_SEQ_CST);
    __atomic_store_n(&af_armed, 1, __ATOMIC_SEQ_CST);
}

/* Stop counting; true if the failure was injected. */
static bool af_disarm(void)
{
    __atomic_store_n(&af_armed, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&af_failed, __ATOMIC_SEQ_CST) > 0;
}

static bool af_hit(void)
{
    return __atomic_load_n(&af_failed, __ATOMIC_SEQ_CST) > 0;
}

/* Pause and resume counting (around what the scenario does not test). */
static void af_hold(void) { __atomic_store_n(&af_armed, 0, __ATOMIC_SEQ_CST); }
static void af_resume(void) { __atomic_store_n(&af_armed, 1, __ATOMIC_SEQ_CST); }

static void init_test(void)
{
    signal(SIGPIPE, SIG_IGN);
    cr_assert(goev_replace_allocator(af_malloc, af_realloc, af_calloc, af_free) == 0);
}

/* Run scenario fn(N) for N = 1, 2, ... until it completes without reaching
 * N allocations; fn returns whether the failure hit.  Between runs: no
 * failure reported by other threads, and as many fds open as before. */
static void sweep(const char *name, bool (*fn)(long n))
{
    long n;
    const char *only = getenv("ALLOCFAIL_ONLY");     /* debugging: one N */
    for (n = only ? atol(only) : 1; n < SWEEP_MAX; n++) {
        int fd0 = tu_fd_count();
        if (getenv("ALLOCFAIL_VERBOSE"))
            fprintf(stderr, "allocfail %s: N=%ld\n", name, n);
        bool hit = fn(n);
        af_disarm();
        tu_assert_no_failures();
        tu_assert_fds(fd0);
        if (!hit || only)
            break;
    }
    if (only)
        return;
    cr_assert(n > 1, "%s: the scenario allocated nothing", name);
    cr_assert(n < SWEEP_MAX, "%s: still allocating after %d allocations", name, SWEEP_MAX);
    fprintf(stderr, "allocfail %s (%s): %ld allocation sites swept\n", name,
            tu_backend_env(), n - 1);
}

/* A call that needed memory: 0, or -ENOMEM when (and only when) the
 * failure is armed.  Tried again once, it must succeed (one failure only). */
#define ENOMEM_OK(rc, what)                                                      \
    TU_CHECK((rc) == 0 || ((rc) == -ENOMEM && af_hit()), "%s: %d (%s)", (what), \
             (rc), strerror(-(rc)))

static goev_reactor *mk_reactor(int pollers, unsigned heap)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = pollers;
    o.read_bufs = 64;
    o.read_buf_size = 4096;
    o.timer_heap_size = heap;
    return tu_reactor_new_opts(&o);
}

static void stop_free(goev_reactor *r, goev_acceptor *a)
{
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
}

/* ---- server side: the acceptor's handlers ------------------------------- */

enum { M_ECHO, M_MSG, M_WRITER, M_ASYNC };
enum { MAXC = 32 };
#define MSG_LEN ((size_t)48 * 1024)    /* M_MSG: kept until complete */
#define SMALL_N 24                      /* M_WRITER: 24 writes of 1000 B, */
#define BIG_LEN ((size_t)1100 * 1024)   /* one past the largest pool class, */
#define FILE_LEN ((size_t)64 * 1024)    /* and a file range */
#define WRITER_LEN (SMALL_N * 1000 + BIG_LEN + FILE_LEN)
#define WSEED 11

struct server;
struct sconn {
    goev_handler h;
    struct server *s;
    int idx;
    int opens, closes, reason, extra;   /* extra: a callback after on_close */
    int write_err;
    size_t queued;
    goev_conn_id id;
};

struct server {
    int mode;
    goev_acceptor *a;
    int port;
    int made, opens, closes;
    struct sconn *c[MAXC];
    char *wbuf;             /* M_WRITER: the first bytes of stream WSEED */
    int file_fd;            /* ... and the file with the rest */
    char *dir;
};

static struct sconn *SC(goev_handler *h) { return (struct sconn *)h; }

static void produce(struct sconn *c)
{
    struct server *s = c->s;
    goev_handler *h = &c->h;
    int rc = 0;
    size_t off = 0;
    for (int i = 0; i < SMALL_N && rc == 0; i++)
        if ((rc = goev_write(h, s->wbuf + off, 1000)) == 0)
            off += 1000;
    if (rc == 0 && (rc = goev_write(h, s->wbuf + off, BIG_LEN)) == 0)
        off += BIG_LEN;
    if (rc == 0 && (rc = goev_sendfile(h, s->file_fd, 0, FILE_LEN)) == 0)
        off += FILE_LEN;
    ENOMEM_OK(rc, "goev_write/goev_sendfile");
    c->write_err = rc;
    TU_STORE(&c->queued, off);
    /* Output pending: close or shut down once it is sent. */
    rc = (c->idx % 2 == 0) ? goev_close(h) : goev_shutdown(h);
    TU_CHECK(rc == 0, "close/shutdown with output pending: %d", rc);
}

static int s_open(goev_handler *h)
{
    struct sconn *c = SC(h);
    TU_INC(&c->opens);
    TU_INC(&c->s->opens);
    if (TU_LOAD(&c->closes))
        TU_INC(&c->extra);
    if (c->s->mode == M_WRITER)
        produce(c);
    else if (c->s->mode == M_ASYNC)
        TU_STORE(&c->id, goev_handler_id(h));
    return 0;
}

static ssize_t s_read(goev_handler *h, const char *d, size_t len)
{
    struct sconn *c = SC(h);
    int rc;
    if (TU_LOAD(&c->closes))
        TU_INC(&c->extra);
    switch (c->s->mode) {
    case M_ECHO:
        rc = goev_write(h, d, len);
        ENOMEM_OK(rc, "echo goev_write");
        if (rc < 0) {
            c->write_err = rc;
            return rc;      /* closes with -ENOMEM */
        }
        return (ssize_t)len;
    case M_MSG:
        if (len < MSG_LEN)
            return 0;       /* kept until the message is complete */
        TU_CHECK(tu_stream_check(7, 0, d, MSG_LEN) < 0, "kept tail corrupted");
        rc = goev_write(h, "OK\n", 3);
        ENOMEM_OK(rc, "ack goev_write");
        if (rc < 0) {
            c->write_err = rc;
            return rc;
        }
        return (ssize_t)MSG_LEN;
    default:
        return (ssize_t)len;
    }
}

static void s_close(goev_handler *h, int reason)
{
    struct sconn *c = SC(h);
    c->reason = reason;
    TU_INC(&c->closes);
    TU_INC(&c->s->closes);
}

static const struct goev_handler_ops s_ops = {
    .on_open = s_open, .on_read = s_read, .on_close = s_close,
};

static goev_handler *s_new(goev_poller *p, void *arg)
{
    struct server *s = arg;
    (void)p;
    int idx = TU_INC(&s->made) - 1;
    if (idx >= MAXC) {
        TU_CHECK(0, "more than %d connections", MAXC);
        return NULL;
    }
    struct sconn *c = calloc(1, sizeof *c);
    goev_handler_init(&c->h, &s_ops);
    c->s = s;
    c->idx = idx;
    TU_STORE(&s->c[idx], c);
    return &c->h;
}

static void server_init(struct server *s, int mode)
{
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->file_fd = -1;
    if (mode == M_WRITER) {
        size_t head = SMALL_N * 1000 + BIG_LEN;
        s->wbuf = malloc(head);
        tu_stream_fill(WSEED, 0, s->wbuf, head);
        s->dir = tu_tmpdir();
        char path[512];
        snprintf(path, sizeof path, "%s/f", s->dir);
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        cr_assert(fd >= 0);
        char *fb = malloc(FILE_LEN);
        tu_stream_fill(WSEED, head, fb, FILE_LEN);
        cr_assert(write(fd, fb, FILE_LEN) == (ssize_t)FILE_LEN);
        free(fb);
        s->file_fd = fd;
    }
}

static int server_listen(struct server *s, goev_reactor *r)
{
    int rc = goev_acceptor_new(&s->a, r, r, "127.0.0.1:0", NULL, s_new, s);
    if (rc == 0)
        s->port = goev_acceptor_port(s->a);
    return rc;
}

/* Every connection the acceptor took closes (the clients are gone). */
static void server_wait_closed(struct server *s)
{
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s->closes) == TU_LOAD(&s->made), WAIT_MS),
              "%d of %d server connections closed: one is stuck", TU_LOAD(&s->closes),
              TU_LOAD(&s->made));
}

/* After the reactor stopped: one on_close per handler, none before on_open
 * or after on_close; a handler never opened was refused for memory. */
static void server_check(struct server *s)
{
    for (int i = 0; i < s->made && i < MAXC; i++) {
        struct sconn *c = s->c[i];
        cr_assert_eq(c->closes, 1, "server conn %d: %d on_close", i, c->closes);
        cr_assert(c->opens <= 1 && !c->extra, "server conn %d: callbacks out of order", i);
        if (!c->opens)
            cr_assert_eq(c->reason, -ENOMEM, "server conn %d never opened: reason %d", i,
                         c->reason);
    }
}

static void server_fini(struct server *s)
{
    for (int i = 0; i < s->made && i < MAXC; i++)
        free(s->c[i]);
    free(s->wbuf);
    if (s->file_fd >= 0)
        close(s->file_fd);
    if (s->dir)
        tu_tmpdir_free(s->dir);
}

/* ---- client side (test thread, blocking sockets) ------------------------ */

static int cli_connect(int port)
{
    int fd = tu_connect_tcp4(port);
    cr_assert(fd >= 0, "connect: %s", strerror(errno));
    tu_set_io_timeout(fd, CLI_TIMEOUT_MS);
    return fd;
}

/* Read until EOF: bytes read; *err 0 (EOF) or -errno.  A timeout (-EAGAIN)
 * means the server neither answered nor closed: a hang. */
static size_t cli_read_all(int fd, char *buf, size_t cap, int *err)
{
    size_t got = 0;
    *err = 0;
    for (;;) {
        char sink[4096];
        char *to = got < cap ? buf + got : sink;
        size_t room = got < cap ? cap - got : sizeof sink;
        ssize_t n = read(fd, to, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = -errno;
            break;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    cr_assert(*err != -EAGAIN && *err != -EWOULDBLOCK, "no answer and no close in %d ms",
              CLI_TIMEOUT_MS);
    return got;
}

/* Send "ping\n": 1 if it came back, 0 if the connection ended instead. */
static int cli_ping(int fd)
{
    char buf[8];
    if (tu_write_all(fd, "ping\n", 5) < 0)
        return 0;
    int rc = tu_read_exact(fd, buf, 5);
    cr_assert(rc != -EAGAIN, "ping: no answer and no close in %d ms", CLI_TIMEOUT_MS);
    if (rc < 0)
        return 0;
    cr_assert(memcmp(buf, "ping\n", 5) == 0, "echo corrupted");
    return 1;
}

/* ---- scenario: goev_reactor_new ----------------------------------------- */

static void post_count(goev_poller *p, void *arg)
{
    (void)p;
    TU_INC((int *)arg);
}

/* A reactor that works: every poller runs what is posted to it. */
static void reactor_smoke(goev_reactor *r)
{
    int ran = 0;
    tu_reactor_start(r);
    for (int i = 0; i < goev_poller_count(r); i++)
        tu_run_on(goev_reactor_poller(r, i), post_count, &ran);
    cr_assert_eq(ran, goev_poller_count(r));
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
}

static bool sc_reactor_new(long n)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 2;
    o.read_bufs = 64;
    goev_reactor *r = (goev_reactor *)1;
    af_arm(n);
    int rc = goev_reactor_new(&r, &o);
    bool hit = af_disarm();
    cr_assert(rc == 0 || rc == -ENOMEM, "goev_reactor_new: %d (%s)", rc, goev_last_error());
    cr_assert_eq(rc < 0, hit, "goev_reactor_new returned %d with the failure %s", rc,
                 hit ? "injected" : "not reached");
    if (rc < 0) {
        cr_assert_null(r, "*out set on failure");
        cr_assert(goev_last_error()[0], "goev_reactor_new: -ENOMEM and goev_last_error empty");
        r = mk_reactor(2, 0);   /* recovery: a fresh reactor comes up */
    }
    reactor_smoke(r);
    return hit;
}

Test(allocfail, reactor_new, .init = init_test, .timeout = 60)
{
    goev_reactor_free(mk_reactor(1, 0));    /* skips where io_uring is refused */
    sweep("reactor_new", sc_reactor_new);
}

/* ---- scenario: partial setup, then free ----------------------------------- */

/* A handler of the setup scenario: counts everything. */
struct ph {
    goev_handler h;
    goev_timer t;
    int opens, closes, fails, fires, readies, reason, fail_err, extra;
};

static struct ph *PH(goev_handler *h) { return (struct ph *)h; }

static int ph_open(goev_handler *h)
{
    TU_INC(&PH(h)->opens);
    return 0;
}

static ssize_t ph_read(goev_handler *h, const char *d, size_t n)
{
    (void)h;
    (void)d;
    return (ssize_t)n;
}

static int ph_timeout(goev_handler *h, goev_timer *t)
{
    (void)t;
    TU_INC(&PH(h)->fires);
    return 0;
}

static int ph_ready(goev_handler *h, unsigned ev)
{
    (void)ev;
    TU_INC(&PH(h)->readies);
    return 0;
}

static void ph_fail(goev_handler *h, int err)
{
    struct ph *x = PH(h);
    TU_STORE(&x->fail_err, err);
    TU_INC(&x->fails);
}

static void ph_close(goev_handler *h, int reason)
{
    struct ph *x = PH(h);
    if (TU_LOAD(&x->closes))
        TU_INC(&x->extra);
    x->reason = reason;
    TU_INC(&x->closes);
}

static int ph_signal(goev_handler *h, const struct goev_siginfo *si)
{
    (void)h;
    (void)si;
    return 0;
}

static const struct goev_handler_ops ph_ops = {
    .on_open = ph_open, .on_read = ph_read, .on_timeout = ph_timeout, .on_ready = ph_ready,
    .on_connect_fail = ph_fail, .on_close = ph_close, .on_signal = ph_signal,
};

static void ph_init(struct ph *x)
{
    memset(x, 0, sizeof *x);
    goev_handler_init(&x->h, &ph_ops);
    goev_timer_init(&x->t);
}

/* Registered (rc 0): exactly one on_close.  Refused: no callback at all. */
static void ph_check(const struct ph *x, int rc, const char *what)
{
    if (rc == 0) {
        cr_assert_eq(x->closes, 1, "%s: %d on_close", what, x->closes);
        cr_assert(!x->extra && x->opens <= 1 && x->fails <= 1, "%s: callbacks repeated", what);
        if (x->fails)
            cr_assert_eq(x->reason, x->fail_err, "%s: on_close %d after on_connect_fail %d",
                         what, x->reason, x->fail_err);
    } else {
        cr_assert(x->closes + x->opens + x->fails + x->fires + x->readies == 0,
                  "%s failed (%d) but called back", what, rc);
    }
}

static int setup_start;     /* variant: start and stop the reactor before freeing */

static bool sc_setup(long n)
{
    int port;
    int lfd = tu_listen_tcp4(16, &port);
    cr_assert(lfd >= 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    int pfd[2];
    cr_assert(pipe2(pfd, O_CLOEXEC | O_NONBLOCK) == 0);
    int sv[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    struct ph tm, wa, co, ad, sg;
    ph_init(&tm);
    ph_init(&wa);
    ph_init(&co);
    ph_init(&ad);
    ph_init(&sg);
    int ran = 0;
    int rc_a = -1, rc_t = -1, rc_w = -1, rc_c = -1, rc_p = -1, rc_o = -1, rc_s = -1;
    goev_acceptor *a = NULL;
    struct server s;
    server_init(&s, M_ECHO);
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 2;
    o.read_bufs = 64;
    o.timer_heap_size = 1;
    goev_reactor *r = NULL;

    af_arm(n);
    int rc = goev_reactor_new(&r, &o);
    cr_assert(rc == 0 || (rc == -ENOMEM && af_hit()), "goev_reactor_new: %d", rc);
    if (rc == 0) {
        goev_poller *p0 = goev_reactor_poller(r, 0), *p1 = goev_reactor_poller(r, 1);
        rc_a = goev_acceptor_new(&a, r, r, "127.0.0.1:0", NULL, s_new, &s);
        cr_assert(rc_a == 0 || (rc_a == -ENOMEM && af_hit()), "goev_acceptor_new: %d", rc_a);
        rc_t = goev_timer_start(p0, &tm.h, &tm.t, 60000, 0);
        cr_assert(rc_t == 0 || (rc_t == -ENOMEM && af_hit()), "goev_timer_start: %d", rc_t);
        rc_w = goev_watch(p0, &wa.h, pfd[0], GOEV_READ);
        cr_assert(rc_w == 0 || (rc_w == -ENOMEM && af_hit()), "goev_watch: %d", rc_w);
        rc_c = goev_connect(p1, &co.h, addr, 60000);
        cr_assert(rc_c == 0 || (rc_c == -ENOMEM && af_hit()), "goev_connect: %d", rc_c);
        rc_p = goev_post(p1, post_count, &ran);
        cr_assert(rc_p == 0 || (rc_p == -ENOMEM && af_hit()), "goev_post: %d", rc_p);
        rc_o = goev_conn_open(p1, &ad.h, sv[0]);
        cr_assert(rc_o == 0 || (rc_o == -ENOMEM && af_hit()), "goev_conn_open: %d", rc_o);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR2);
        rc_s = goev_signal_watch(p0, &sg.h, &set);
        cr_assert(rc_s == 0 || (rc_s == -ENOMEM && af_hit()), "goev_signal_watch: %d", rc_s);
        if (setup_start) {
            rc = goev_reactor_start(r);
            cr_assert(rc == 0 || (rc == -ENOMEM && af_hit()), "goev_reactor_start: %d", rc);
            if (rc < 0) {   /* nothing started (freeing it so is setup_then_free) */
                rc = goev_reactor_start(r);
                cr_assert_eq(rc, 0, "goev_reactor_start again: %d", rc);
            }
            if (rc == 0) {
                /* Let the pollers see what was set up before stopping. */
                af_hold();
                cr_assert(TU_WAIT_FOR(TU_LOAD(&ran) == (rc_p == 0) &&
                                      (rc_c || TU_LOAD(&co.opens) || TU_LOAD(&co.closes)),
                                      WAIT_MS));
                af_resume();
                tu_reactor_stop_wait(r);
            }
        }
        if (rc_a == 0)
            goev_acceptor_free(a);
        goev_reactor_free(r);   /* never ran, or stopped: closes what is left */
    }
    bool hit = af_disarm();
    if (rc == 0 || r) {
        ph_check(&tm, rc_t, "timer");
        ph_check(&wa, rc_w, "watch");
        ph_check(&co, rc_c, "connect");
        ph_check(&ad, rc_o, "conn_open");
        ph_check(&sg, rc_s, "signal_watch");
        cr_assert_eq(ran, rc_p == 0, "posted function ran %d times (goev_post %d)", ran, rc_p);
        if (rc_t == 0)
            cr_assert_eq(tm.reason, -ECANCELED);
    }
    if (rc_w != 0)
        close(pfd[0]);      /* refused: still the caller's */
    if (rc_o != 0)
        close(sv[0]);
    close(sv[1]);
    close(pfd[1]);
    close(lfd);
    server_check(&s);
    server_fini(&s);
    if (hit)
        reactor_smoke(mk_reactor(2, 1));
    return hit;
}

Test(allocfail, setup_then_free, .init = init_test, .timeout = 60)
{
    goev_reactor_free(mk_reactor(1, 0));
    setup_start = 0;
    sweep("setup_then_free", sc_setup);
}

Test(allocfail, setup_run_free, .init = init_test, .timeout = 60)
{
    goev_reactor_free(mk_reactor(1, 0));
    setup_start = 1;
    sweep("setup_run_free", sc_setup);
}

/* ---- scenario: accept ----------------------------------------------------- */

static int barrier_fn_timeout(goev_handler *h, goev_timer *t)
{
    (void)h;
    (void)t;
    return 0;
}

static bool sc_accept(long n)
{
    goev_reactor *r = mk_reactor(2, 0);
    struct server s;
    server_init(&s, M_ECHO);
    af_arm(n);
    int rc = server_listen(&s, r);
    cr_assert(rc == 0 || (rc == -ENOMEM && af_hit()), "goev_acceptor_new: %d", rc);
    if (rc < 0)
        cr_assert_eq(server_listen(&s, r), 0, "goev_acceptor_new again");
    af_hold();
    tu_reactor_start(r);
    af_resume();
    enum { K = 4 };
    int fds[K], ok = 0;
    for (int i = 0; i < K; i++) {
        fds[i] = cli_connect(s.port);
        ok += cli_ping(fds[i]);
    }
    bool hit = af_disarm();
    cr_assert(ok >= K - 1 && (hit || ok == K), "%d of %d clients served (failure %s)", ok, K,
              hit ? "injected" : "not reached");
    /* Recovery: the same listener serves new clients on both pollers. */
    for (int i = 0; i < 2; i++) {
        int fd = cli_connect(s.port);
        cr_assert(cli_ping(fd), "after the failure, a new client is not served");
        close(fd);
    }
    for (int i = 0; i < K; i++)
        close(fds[i]);
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    server_fini(&s);
    return hit;
}

Test(allocfail, accept, .init = init_test, .timeout = 60)
{
    sweep("accept", sc_accept);
}

/* ---- scenario: accept at EMFILE, the back-off timer ---------------------- */

static int highest_fd(void)
{
    int hi = -1;
    for (int fd = 0; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            hi = fd;
    return hi;
}

static void gate_wait(goev_poller *p, void *arg)
{
    int *gate = arg;
    while (!TU_LOAD(gate))
        tu_sleep_ms(1);
}

static bool sc_accept_backoff(long n)
{
    enum { K = 5, ROOM = 2 };
    goev_reactor *r = mk_reactor(1, 1);
    struct server s;
    server_init(&s, M_ECHO);
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.backoff_ms = 20;
    cr_assert_eq(goev_acceptor_new(&s.a, r, r, "127.0.0.1:0", &ao, s_new, &s), 0);
    /* timer_heap_size 1, taken by a long timer: arming the back-off timer
     * makes the heap grow. */
    goev_handler keep;
    goev_timer keep_t;
    static const struct goev_handler_ops keep_ops_ = { .on_timeout = barrier_fn_timeout };
    goev_handler_init(&keep, &keep_ops_);
    goev_timer_init(&keep_t);
    cr_assert_eq(goev_timer_start(goev_reactor_poller(r, 0), &keep, &keep_t, 600000, 0), 0);
    int fds[K];
    for (int i = 0; i < K; i++)     /* queued in the backlog before the reactor runs */
        fds[i] = cli_connect(goev_acceptor_port(s.a));
    struct rlimit old, low;
    cr_assert(getrlimit(RLIMIT_NOFILE, &old) == 0);
    low = old;
    low.rlim_cur = (rlim_t)highest_fd() + 1 + ROOM;
    cr_assert(setrlimit(RLIMIT_NOFILE, &low) == 0);
    /* The poller's first pass waits at a gate until the count is resumed,
     * so that the accepts (and the back-off) are counted even when the
     * poller thread outruns this one (it does under ThreadSanitizer). */
    int gate = 0;
    cr_assert_eq(goev_post(goev_reactor_poller(r, 0), gate_wait, &gate), 0);
    af_arm(n);
    af_hold();
    tu_reactor_start(r);
    af_resume();
    TU_STORE(&gate, 1);
    bool backed_off = TU_WAIT_FOR(({
        struct goev_stats st_;
        goev_stats_get(r, 0, &st_);
        st_.accept_backoffs > 0;
    }), WAIT_MS);
    cr_assert(setrlimit(RLIMIT_NOFILE, &old) == 0);
    cr_assert(backed_off, "no accept back-off at EMFILE");
    /* Descriptors again: the listener retries and takes the rest. */
    bool all = TU_WAIT_FOR(TU_LOAD(&s.made) == K, 1000);
    bool hit = af_disarm();
    cr_assert(all, "listener never retried after EMFILE (%d of %d accepted, failure %s)",
              s.made, K, hit ? "injected" : "not reached");
    {
        int ok = 0;
        for (int i = 0; i < K; i++)
            ok += cli_ping(fds[i]);
        cr_assert(ok >= K - 1, "%d of %d clients served", ok, K);
        int fd = cli_connect(goev_acceptor_port(s.a));
        cr_assert(cli_ping(fd), "after the failure, a new client is not served");
        close(fd);
    }
    for (int i = 0; i < K; i++)
        close(fds[i]);
    server_wait_closed(&s);
    tu_reactor_stop_wait(r);
    goev_acceptor_free(s.a);
    goev_reactor_free(r);
    server_check(&s);
    server_fini(&s);
    return hit;
}

Test(allocfail, accept_backoff, .init = init_test, .timeout = 60)
{
    /* EMFILE is a limit of regular fds: direct descriptors (io_uring) do
     * not take one, so this checks the regular accept path (test_direct
     * covers the file table filling up). */
    setenv("GOEV_URING_DIRECT", "0", 1);
    sweep("accept_backoff", sc_accept_backoff);
}

/* ---- scenario: read, the kept tail growing -------------------------------- */

/* Send one MSG_LEN message; 1 if it was acknowledged, 0 if the connection
 * ended instead. */
static int cli_msg(int fd)
{
    char *m = malloc(MSG_LEN);
    tu_stream_fill(7, 0, m, MSG_LEN);
    int rc = tu_write_all(fd, m, MSG_LEN);
    free(m);
    cr_assert(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "send: %d", rc);
    char ack[3];
    if (rc == 0)
        rc = tu_read_exact(fd, ack, 3);
    cr_assert(rc != -EAGAIN, "message: no answer and no close in %d ms", CLI_TIMEOUT_MS);
    if (rc < 0)
        return 0;
    cr_assert(memcmp(ack, "OK\n", 3) == 0);
    return 1;
}

static bool sc_read(long n)
{
    goev_reactor *r = mk_reactor(1, 0);
    struct server s;
    server_init(&s, M_MSG);
    cr_assert_eq(server_listen(&s, r), 0);
    tu_reactor_start(r);
    af_arm(n);
    int fd = cli_connect(s.port);
    int ok = cli_msg(fd), ok2 = 0;
    if (ok)     /* a second message on the same connection, tail buffer reused */
        ok2 = cli_msg(fd);
    bool hit = af_disarm();
    cr_assert(hit || (ok && ok2), "message lost with no failure injected");
    /* Recovery: the same reactor takes a new client's messages. */
    int fd2 = cli_connect(s.port);
    cr_assert(cli_msg(fd2) && cli_msg(fd2), "after the failure, a new client is not served");
    close(fd2);
    close(fd);
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    /* The connection that lost its message was closed for the memory. */
    if (!ok || !ok2)
        cr_assert_eq(s.c[0]->reason, -ENOMEM, "message lost, reason %d", s.c[0]->reason);
    server_fini(&s);
    return hit;
}

Test(allocfail, read_tail, .init = init_test, .timeout = 60)
{
    sweep("read_tail", sc_read);
}

/* ---- scenario: write, large writes, close and shutdown with output pending */

/* Read a writer connection to its end and check it got exactly what the
 * server queued: the stream, cut where a write failed, never with a hole. */
static void cli_writer(struct server *s, int fd, int idx, char *buf)
{
    int err;
    size_t got = cli_read_all(fd, buf, WRITER_LEN, &err);
    cr_assert_eq(err, 0, "writer conn %d: read error %d", idx, err);
    ptrdiff_t bad = tu_stream_check(WSEED, 0, buf, got < WRITER_LEN ? got : WRITER_LEN);
    cr_assert(bad < 0, "writer conn %d: byte %td differs", idx, bad);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s->made) > idx && TU_LOAD(&s->c[idx]) != NULL, WAIT_MS));
    struct sconn *c = TU_LOAD(&s->c[idx]);
    size_t queued = TU_LOAD(&c->queued);
    cr_assert_eq(got, queued, "writer conn %d: got %zu of %zu queued (write_err %d)", idx, got,
                 queued, c->write_err);
    if (idx % 2) {      /* shut down: still reading */
        int rc = tu_write_all(fd, "bye", 3);
        cr_assert(rc == 0 || !TU_LOAD(&c->opens), "bye: %d", rc);
        shutdown(fd, SHUT_WR);
    }
}

static bool sc_write(long n)
{
    goev_reactor *r = mk_reactor(1, 0);
    struct server s;
    server_init(&s, M_WRITER);
    cr_assert_eq(server_listen(&s, r), 0);
    tu_reactor_start(r);
    char *buf = malloc(WRITER_LEN);
    int fds[4];
    af_arm(n);
    for (int i = 0; i < 2; i++) {
        fds[i] = cli_connect(s.port);
        cli_writer(&s, fds[i], i, buf);
    }
    bool hit = af_disarm();
    /* Recovery: the same reactor sends everything to new clients. */
    for (int i = 2; i < 4; i++) {
        fds[i] = cli_connect(s.port);
        cli_writer(&s, fds[i], i, buf);
        cr_assert_eq(s.c[i]->queued, WRITER_LEN, "after the failure: %zu queued",
                     s.c[i]->queued);
    }
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    for (int i = 0; i < 4; i++)     /* never opened: server_check saw -ENOMEM */
        cr_assert(s.c[i]->reason == 0 || !s.c[i]->opens, "writer conn %d: reason %d", i,
                  s.c[i]->reason);
    if (!hit)
        cr_assert(s.c[0]->queued == WRITER_LEN && s.c[1]->queued == WRITER_LEN);
    free(buf);
    server_fini(&s);
    return hit;
}

Test(allocfail, write_close_shutdown, .init = init_test, .timeout = 60)
{
    sweep("write_close_shutdown", sc_write);
}

/* ---- scenario: connect ---------------------------------------------------- */

struct cc {
    goev_handler h;
    int opens, closes, fails, reason, fail_err, extra, echoed, rc;
    size_t got;
};

static int cc_open(goev_handler *h)
{
    struct cc *c = (struct cc *)h;
    TU_INC(&c->opens);
    int rc = goev_write(h, "hello\n", 6);
    ENOMEM_OK(rc, "client goev_write");
    return rc;
}

static ssize_t cc_read(goev_handler *h, const char *d, size_t n)
{
    struct cc *c = (struct cc *)h;
    if (n < 6)
        return 0;
    TU_CHECK(memcmp(d, "hello\n", 6) == 0, "client: echo corrupted");
    TU_STORE(&c->echoed, 1);
    goev_close(h);
    return (ssize_t)n;
}

static void cc_fail(goev_handler *h, int err)
{
    struct cc *c = (struct cc *)h;
    if (TU_LOAD(&c->closes) || TU_LOAD(&c->opens))
        TU_INC(&c->extra);
    TU_STORE(&c->fail_err, err);
    TU_INC(&c->fails);
}

static void cc_close(goev_handler *h, int reason)
{
    struct cc *c = (struct cc *)h;
    if (TU_LOAD(&c->closes))
        TU_INC(&c->extra);
    c->reason = reason;
    TU_INC(&c->closes);
}

static const struct goev_handler_ops cc_ops = {
    .on_open = cc_open, .on_read = cc_read, .on_connect_fail = cc_fail, .on_close = cc_close,
};

struct connects {
    char echo_addr[64], hang_addr[64];
    struct cc c[3];
    goev_handler keep;      /* owns a long timer: the heap is full */
    goev_timer keep_t;
    long n;
};

static int keep_timeout(goev_handler *h, goev_timer *t)
{
    (void)h;
    (void)t;
    return 0;
}

static const struct goev_handler_ops keep_ops = { .on_timeout = keep_timeout };

/* On the poller: three connects, each tried again once if it ran out of
 * memory: plain, with options and a bound address, and with a timeout to a
 * peer that never answers. */
static void do_connects(goev_poller *p, void *arg)
{
    struct connects *k = arg;
    struct goev_connect_opts co;
    goev_connect_opts_init(&co);
    co.bind_addr = "127.0.0.1:0";
    co.timeout_ms = 2000;
    co.sndbuf = 65536;
    if (k->n)
        af_arm(k->n);
    for (int i = 0; i < 3; i++) {
        struct cc *c = &k->c[i];
        for (int tries = 0; tries < 2; tries++) {
            goev_handler_init(&c->h, &cc_ops);
            if (i == 0)
                c->rc = goev_connect(p, &c->h, k->echo_addr, 0);
            else if (i == 1)
                c->rc = goev_connect_ex(p, &c->h, k->echo_addr, &co);
            else
                c->rc = goev_connect(p, &c->h, k->hang_addr, 100);
            ENOMEM_OK(c->rc, "goev_connect");
            if (c->rc == 0)
                break;
            TU_CHECK(!c->opens && !c->closes && !c->fails, "refused connect called back");
        }
        TU_CHECK(c->rc == 0, "goev_connect failed twice: %d", c->rc);
    }
}

static void keep_stop(goev_poller *p, void *arg)
{
    (void)p;
    struct connects *k = arg;
    goev_close(&k->keep);
}

static void keep_start(goev_poller *p, void *arg)
{
    struct connects *k = arg;
    goev_handler_init(&k->keep, &keep_ops);
    goev_timer_init(&k->keep_t);
    TU_CHECK(goev_timer_start(p, &k->keep, &k->keep_t, 600000, 0) == 0, "keep timer");
}

/* A listener whose accept queue is full: a connect to it hangs. */
static int hang_listener(int *port, int fill[16], int *nfill)
{
    int lfd = tu_listen_tcp4(0, port);
    cr_assert(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool hanging = false;
    *nfill = 0;
    while (*nfill < 16 && !hanging) {
        int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert(f >= 0);
        fill[(*nfill)++] = f;
        connect(f, (struct sockaddr *)&sin, sizeof sin);
        struct pollfd pfd = {.fd = f, .events = POLLOUT};
        hanging = poll(&pfd, 1, 100) == 0;
    }
    cr_assert(hanging, "could not fill the accept queue");
    return lfd;
}

/* The two connects to the echo server: echoed, or (failure injected) ended
 * by the memory - theirs (-ENOMEM) or the server's (EOF, reset). */
static void connects_check(struct connects *k, bool recovery)
{
    for (int i = 0; i < 2; i++) {
        struct cc *c = &k->c[i];
        cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closes) == 1, WAIT_MS), "connect %d never closed", i);
        cr_assert(!c->extra, "connect %d: callbacks repeated or out of order", i);
        if (!c->echoed) {
            cr_assert(af_hit() && !recovery, "connect %d: no echo (reason %d, fail %d)", i,
                      c->reason, c->fail_err);
            cr_assert(c->reason == -ENOMEM || c->reason == 0 || c->reason == -ECONNRESET,
                      "connect %d: no echo, reason %d", i, c->reason);
        } else {
            cr_assert_eq(c->reason, 0);
        }
    }
}

static bool sc_connect(long n)
{
    int port, fill[16], nfill;
    int hl = hang_listener(&port, fill, &nfill);
    goev_reactor *r = mk_reactor(1, 1);
    struct server s;
    server_init(&s, M_ECHO);
    cr_assert_eq(server_listen(&s, r), 0);
    tu_reactor_start(r);
    goev_poller *p = goev_reactor_poller(r, 0);
    struct connects k;
    memset(&k, 0, sizeof k);
    snprintf(k.echo_addr, sizeof k.echo_addr, "127.0.0.1:%d", s.port);
    snprintf(k.hang_addr, sizeof k.hang_addr, "127.0.0.1:%d", port);
    /* timer_heap_size 1, taken by this timer: the connects' timeouts make
     * the heap grow. */
    tu_run_on(p, keep_start, &k);
    k.n = n;
    tu_run_on(p, do_connects, &k);
    connects_check(&k, false);
    struct cc *h = &k.c[2];
    bool hung = !TU_WAIT_FOR(TU_LOAD(&h->closes) == 1, 1000);
    bool hit = af_disarm();
    cr_assert(!hung, "connect with a 100 ms timeout still pending after 1 s (failure %s)",
              hit ? "injected" : "not reached");
    if (h->fails == 0) {
        /* Closed without on_connect_fail: only for the memory. */
        cr_assert(hit && h->reason == -ENOMEM, "timed-out connect closed with %d", h->reason);
    } else {
        cr_assert_eq(h->fails, 1, "timed-out connect: %d on_connect_fail", h->fails);
        cr_assert(h->fail_err == -ETIMEDOUT || (hit && h->fail_err == -ENOMEM),
                  "timed-out connect failed with %d", h->fail_err);
        cr_assert_eq(h->reason, h->fail_err);
    }
    cr_assert(!h->extra && !h->opens, "timed-out connect: callbacks out of order");
    /* Recovery: the same poller connects again, timeouts included. */
    memset(k.c, 0, sizeof k.c);
    k.n = 0;
    tu_run_on(p, do_connects, &k);
    connects_check(&k, true);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&k.c[2].closes) == 1, WAIT_MS));
    cr_assert_eq(k.c[2].reason, -ETIMEDOUT);
    tu_run_on(p, keep_stop, &k);
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    server_fini(&s);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    close(hl);
    return hit;
}

Test(allocfail, connect, .init = init_test, .timeout = 60)
{
    sweep("connect", sc_connect);
}

/* ---- scenario: goev_async_write / goev_async_close from another thread -- */

#define ASYNC_SEED 5

/* From the test thread: a stream of async writes, then an async close.
 * Returns the bytes accepted. */
static size_t async_feed(goev_reactor *r, goev_conn_id id, const char *stream, size_t cap)
{
    size_t off = 0;
    for (int k = 0; off < cap; k++) {
        size_t len = (k % 5 == 4) ? 40000 : 3000;
        if (len > cap - off)
            len = cap - off;
        int rc = goev_async_write(r, id, stream + off, len);
        /* -ENOTCONN: the poller could not queue an earlier write and
         * closed the connection (checked by the caller). */
        TU_CHECK(rc == 0 || ((rc == -ENOMEM || rc == -ENOTCONN) && af_hit()),
                 "goev_async_write: %d", rc);
        if (rc == -ENOTCONN)
            return off;
        if (rc < 0)
            break;      /* stop: what follows would leave a hole */
        off += len;
    }
    int rc = goev_async_close(r, id);
    TU_CHECK(rc == 0 || ((rc == -ENOMEM || rc == -ENOTCONN) && af_hit()),
             "goev_async_close: %d", rc);
    if (rc == -ENOMEM)
        cr_assert_eq((rc = goev_async_close(r, id)), 0, "goev_async_close again: %d", rc);
    return off;
}

static bool sc_async(long n)
{
    enum { CAP = 240000 };
    goev_reactor *r = mk_reactor(1, 0);
    struct server s;
    server_init(&s, M_ASYNC);
    cr_assert_eq(server_listen(&s, r), 0);
    tu_reactor_start(r);
    char *stream = malloc(CAP), *buf = malloc(CAP);
    tu_stream_fill(ASYNC_SEED, 0, stream, CAP);
    bool hit = false;
    for (int round = 0; round < 2; round++) {     /* 1: recovery, nothing armed */
        int fd = cli_connect(s.port);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&s.c[round]) && TU_LOAD(&s.c[round]->id), WAIT_MS));
        struct sconn *c = s.c[round];
        if (round == 0)
            af_arm(n);
        size_t sent = async_feed(r, c->id, stream, CAP);
        int err;
        size_t got = cli_read_all(fd, buf, CAP, &err);
        if (round == 0)
            hit = af_disarm();
        cr_assert_eq(err, 0, "async conn: read error %d", err);
        cr_assert(tu_stream_check(ASYNC_SEED, 0, buf, got) < 0, "async stream corrupted");
        cr_assert(TU_WAIT_FOR(TU_LOAD(&c->closes) == 1, WAIT_MS));
        if (got != sent) {
            /* The poller could not queue an accepted write: the
             * connection must end there, and say why. */
            cr_assert(got < sent && round == 0 && hit, "async: got %zu of %zu sent", got, sent);
            cr_assert_eq(c->reason, -ENOMEM, "async: %zu of %zu bytes, reason %d", got, sent,
                         c->reason);
        } else {
            cr_assert_eq(c->reason, 0, "async conn: reason %d", c->reason);
        }
        if (round == 1)
            cr_assert_eq(sent, (size_t)CAP);
        close(fd);
    }
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    server_fini(&s);
    free(stream);
    free(buf);
    return hit;
}

Test(allocfail, async_write_close, .init = init_test, .timeout = 60)
{
    sweep("async_write_close", sc_async);
}

/* ---- scenario: goev_post / goev_broadcast --------------------------------- */

struct bcast {
    int mask;   /* atomic: pollers it ran on */
    int runs;
};

static void bcast_fn(goev_poller *p, void *arg)
{
    struct bcast *b = arg;
    __atomic_fetch_or(&b->mask, 1 << goev_poller_index(p), __ATOMIC_ACQ_REL);
    TU_INC(&b->runs);
}

static void barrier_fn(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
}

static bool sc_post(long n)
{
    enum { NP = 3, POSTS = 4, BCASTS = 3 };
    goev_reactor *r = mk_reactor(NP, 0);
    tu_reactor_start(r);
    int ran[POSTS] = {0}, rc_p[POSTS];
    struct bcast b[BCASTS];
    int rc_b[BCASTS];
    memset(b, 0, sizeof b);
    af_arm(n);
    for (int i = 0; i < POSTS; i++) {
        rc_p[i] = goev_post(goev_reactor_poller(r, i % NP), post_count, &ran[i]);
        ENOMEM_OK(rc_p[i], "goev_post");
    }
    for (int i = 0; i < BCASTS; i++) {
        rc_b[i] = goev_broadcast(r, bcast_fn, &b[i]);
        ENOMEM_OK(rc_b[i], "goev_broadcast");
    }
    bool hit = af_disarm();
    /* Functions posted to one poller run in order: after the barrier every
     * one posted before has run. */
    for (int i = 0; i < NP; i++)
        tu_run_on(goev_reactor_poller(r, i), barrier_fn, NULL);
    for (int i = 0; i < POSTS; i++)
        cr_assert_eq(ran[i], rc_p[i] == 0, "post %d (rc %d) ran %d times", i, rc_p[i], ran[i]);
    for (int i = 0; i < BCASTS; i++) {
        cr_assert_eq(b[i].runs, __builtin_popcount((unsigned)b[i].mask), "broadcast %d repeated",
                     i);
        if (rc_b[i] == 0)
            cr_assert_eq(b[i].mask, (1 << NP) - 1, "broadcast %d: mask %#x", i, b[i].mask);
        else    /* posted to the pollers before the one that failed */
            cr_assert((b[i].mask & (b[i].mask + 1)) == 0 && b[i].mask != (1 << NP) - 1,
                      "broadcast %d failed but ran on %#x", i, b[i].mask);
    }
    /* Recovery: posting works again. */
    struct bcast again = {0};
    cr_assert_eq(goev_broadcast(r, bcast_fn, &again), 0);
    for (int i = 0; i < NP; i++)
        tu_run_on(goev_reactor_poller(r, i), barrier_fn, NULL);
    cr_assert_eq(again.mask, (1 << NP) - 1);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    return hit;
}

Test(allocfail, post_broadcast, .init = init_test, .timeout = 60)
{
    sweep("post_broadcast", sc_post);
}

/* ---- scenario: timers, the heap growing ------------------------------------ */

enum { TH = 5, TPER = 8 };   /* handlers, timers each (the first periodic) */

struct tset {
    struct th {
        goev_handler h;
        goev_timer t[TPER];
        int fires[TPER];
        int rc[TPER];
        int closes, reason, close_rc;
    } h[TH];
    long n;
};

static int tset_timeout(goev_handler *h, goev_timer *t)
{
    struct th *x = (struct th *)h;
    int i = (int)(t - x->t);
    TU_INC(&x->fires[i]);
    return 0;
}

static void tset_close(goev_handler *h, int reason)
{
    struct th *x = (struct th *)h;
    x->reason = reason;
    TU_INC(&x->closes);
}

static const struct goev_handler_ops tset_ops = { .on_timeout = tset_timeout,
                                                  .on_close = tset_close };

/* On the poller: TH fresh handlers with TPER timers each, 40 in a heap made
 * for 2; the first of each periodic. */
static void tset_start(goev_poller *p, void *arg)
{
    struct tset *ts = arg;
    if (ts->n)
        af_arm(ts->n);
    for (int i = 0; i < TH; i++) {
        struct th *x = &ts->h[i];
        for (int j = 0; j < TPER; j++) {
            x->rc[j] = goev_timer_start(p, &x->h, &x->t[j], (uint64_t)(1 + (i * TPER + j) % 13),
                                        j == 0 ? 3 : 0);
            ENOMEM_OK(x->rc[j], "goev_timer_start");
        }
    }
    af_hold();
}

static void tset_close_all(goev_poller *p, void *arg)
{
    (void)p;
    struct tset *ts = arg;
    for (int i = 0; i < TH; i++)
        ts->h[i].close_rc = goev_close(&ts->h[i].h);
}

static void tset_run(goev_reactor *r, struct tset *ts, long n)
{
    memset(ts->h, 0, sizeof ts->h);
    for (int i = 0; i < TH; i++) {
        goev_handler_init(&ts->h[i].h, &tset_ops);
        for (int j = 0; j < TPER; j++)
            goev_timer_init(&ts->h[i].t[j]);
    }
    ts->n = n;
    goev_poller *p = goev_reactor_poller(r, 0);
    tu_run_on(p, tset_start, ts);
    /* Every timer started fires: one-shots once, the periodic ones on. */
    for (int i = 0; i < TH; i++)
        for (int j = 0; j < TPER; j++) {
            struct th *x = &ts->h[i];
            if (x->rc[j] == 0)
                cr_assert(TU_WAIT_FOR(TU_LOAD(&x->fires[j]) >= (j == 0 ? 2 : 1), WAIT_MS),
                          "timer %d.%d never fired", i, j);
        }
    tu_sleep_ms(20);
    tu_run_on(p, tset_close_all, ts);
    for (int i = 0; i < TH; i++) {
        struct th *x = &ts->h[i];
        bool any = false;
        for (int j = 0; j < TPER; j++) {
            any |= x->rc[j] == 0;
            if (x->rc[j] != 0)
                cr_assert_eq(x->fires[j], 0, "refused timer %d.%d fired", i, j);
            else if (j)
                cr_assert_eq(x->fires[j], 1, "one-shot timer %d.%d fired %d times", i, j,
                             x->fires[j]);
        }
        /* A handler none of whose timers started was left untouched. */
        cr_assert_eq(x->close_rc, any ? 0 : -EINVAL, "handler %d: goev_close %d", i, x->close_rc);
        cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == (any ? 1 : 0), WAIT_MS),
                  "handler %d: %d on_close", i, x->closes);
    }
}

static bool sc_timers(long n)
{
    goev_reactor *r = mk_reactor(1, 2);
    tu_reactor_start(r);
    struct tset *ts = calloc(1, sizeof *ts);
    tset_run(r, ts, n);
    bool hit = af_disarm();
    /* Recovery: the same poller runs all of them. */
    tset_run(r, ts, 0);
    for (int i = 0; i < TH; i++)
        for (int j = 0; j < TPER; j++)
            cr_assert_eq(ts->h[i].rc[j], 0);
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    free(ts);
    return hit;
}

Test(allocfail, timers, .init = init_test, .timeout = 60)
{
    sweep("timers", sc_timers);
}

/* ---- scenario: the connection pool ---------------------------------------- */

enum { PREQS = 3 };

struct pool_run {
    struct server *s;
    goev_pool *pool;
    char addr[64];
    long n;
    int new_rc;
    struct preq {
        goev_pool_req req;
        int rc;         /* goev_pool_acquire */
        int answers, err, echoed, closes, gaveup;
    } q[PREQS];
};

static ssize_t pl_read(goev_handler *h, const char *d, size_t n)
{
    struct preq *q = h->user;
    if (n < 2)
        return 0;
    TU_CHECK(memcmp(d, "x\n", 2) == 0, "pool: echo corrupted");
    TU_STORE(&q->echoed, 1);
    goev_pool_release(h, 1);
    return (ssize_t)n;
}

static void pl_close(goev_handler *h, int reason)
{
    struct preq *q = h->user;
    TU_CHECK(reason == -ENOMEM || reason == 0 || reason == -ECONNRESET,
             "pool conn closed during its lease: %d", reason);
    TU_INC(&q->closes);
}

static const struct goev_handler_ops pl_ops = { .on_read = pl_read, .on_close = pl_close };

static void pl_cb(goev_pool_req *req, goev_handler *conn, int err)
{
    struct preq *q = req->user;
    if (conn) {
        conn->user = q;
        int rc = goev_write(conn, "x\n", 2);
        ENOMEM_OK(rc, "pool goev_write");
        if (rc < 0) {   /* the lease ends here: no callback of it follows */
            TU_STORE(&q->gaveup, 1);
            goev_pool_release(conn, 0);
        }
    }
    q->err = err;
    TU_INC(&q->answers);
}

static void pool_start(goev_poller *p, void *arg)
{
    struct pool_run *pr = arg;
    struct goev_pool_opts o;
    goev_pool_opts_init(&o);
    o.min_idle = 1;
    o.max_live = 4;
    o.add_batch = 1;    /* one connect per service pass: each can be the only one */
    o.connect_timeout_ms = 1000;
    o.backoff_min_ms = 5;
    o.backoff_max_ms = 20;
    o.ops = &pl_ops;
    if (pr->n)
        af_arm(pr->n);
    pr->new_rc = goev_pool_new(&pr->pool, p, pr->addr, &o);
    ENOMEM_OK(pr->new_rc, "goev_pool_new");
    if (pr->new_rc < 0)
        pr->new_rc = goev_pool_new(&pr->pool, p, pr->addr, &o);
    TU_CHECK(pr->new_rc == 0, "goev_pool_new again: %d", pr->new_rc);
}

static void pool_acquire_all(goev_poller *p, void *arg)
{
    (void)p;
    struct pool_run *pr = arg;
    if (pr->n)
        af_resume();
    for (int i = 0; i < PREQS; i++) {
        struct preq *q = &pr->q[i];
        goev_pool_req_init(&q->req);
        q->req.user = q;
        q->rc = goev_pool_acquire(pr->pool, &q->req, 2000, pl_cb);
        ENOMEM_OK(q->rc, "goev_pool_acquire");
    }
}

static void pool_stop(goev_poller *p, void *arg)
{
    (void)p;
    struct pool_run *pr = arg;
    goev_pool_free(pr->pool);
}

static void pool_run(goev_reactor *r, struct pool_run *pr, long n)
{
    memset(pr->q, 0, sizeof pr->q);
    pr->n = n;
    pr->pool = NULL;
    goev_poller *p = goev_reactor_poller(r, 0);
    int opens0 = TU_LOAD(&pr->s->opens);
    tu_run_on(p, pool_start, pr);
    cr_assert_eq(pr->new_rc, 0);
    /* min_idle 1: the pool connects by itself, whatever ran out of memory
     * on the way (a failed attempt is retried after the back-off). */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&pr->s->opens) > opens0, WAIT_MS),
              "the pool never connected to keep min_idle");
    af_hold();      /* tu_run_on posts; pool_acquire_all resumes */
    tu_run_on(p, pool_acquire_all, pr);
    for (int i = 0; i < PREQS; i++) {
        struct preq *q = &pr->q[i];
        if (q->rc < 0)
            continue;
        cr_assert(TU_WAIT_FOR(TU_LOAD(&q->answers) == 1, WAIT_MS), "pool request %d unanswered",
                  i);
        cr_assert(q->err == 0 || q->err == -ENOMEM, "pool request %d: %d", i, q->err);
        if (q->err == 0)
            cr_assert(TU_WAIT_FOR(TU_LOAD(&q->echoed) || TU_LOAD(&q->closes) ||
                                  TU_LOAD(&q->gaveup), WAIT_MS),
                      "pool request %d: no echo", i);
    }
    af_hold();      /* tu_run_on posts */
    tu_run_on(p, pool_stop, pr);
    for (int i = 0; i < PREQS; i++) {
        struct preq *q = &pr->q[i];
        cr_assert(q->answers == (q->rc == 0), "pool request %d: %d answers (acquire %d)", i,
                  q->answers, q->rc);
        cr_assert(q->closes <= 1);
    }
}

static bool sc_pool(long n)
{
    goev_reactor *r = mk_reactor(1, 0);
    struct server s;
    server_init(&s, M_ECHO);
    cr_assert_eq(server_listen(&s, r), 0);
    tu_reactor_start(r);
    struct pool_run pr;
    memset(&pr, 0, sizeof pr);
    snprintf(pr.addr, sizeof pr.addr, "127.0.0.1:%d", s.port);
    pr.s = &s;
    pool_run(r, &pr, n);
    bool hit = af_disarm();
    /* Recovery: a new pool on the same poller hands out connections. */
    pool_run(r, &pr, 0);
    for (int i = 0; i < PREQS; i++)
        cr_assert(pr.q[i].rc == 0 && pr.q[i].err == 0 && pr.q[i].echoed,
                  "after the failure: pool request %d (rc %d err %d)", i, pr.q[i].rc,
                  pr.q[i].err);
    server_wait_closed(&s);
    stop_free(r, s.a);
    server_check(&s);
    server_fini(&s);
    return hit;
}

Test(allocfail, pool, .init = init_test, .timeout = 60)
{
    sweep("pool", sc_pool);
}
