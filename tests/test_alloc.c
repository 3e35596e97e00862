/* test_alloc.c - no heap allocation per request in steady state.
 *
 * The test executable interposes malloc/calloc/realloc (ELF lookup finds the
 * executable's definitions before libc's, for the library too) and counts
 * the calls made on the poller thread while a flag, set through goev_post,
 * is up.  After a warm-up that fills the pools, thousands of request/response
 * round trips on several connections - with a timer re-armed on every read,
 * a kept tail and pipelined writes - must not allocate at all.
 *
 * Sanitizers replace malloc themselves; under them the test is skipped. */
#include "testutil.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NO_INTERPOSE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NO_INTERPOSE 1
#endif
#endif

static __thread int counting;
static int allocs;

#if !defined(NO_INTERPOSE) && !defined(TEST_ALLOC_NO_HOOK)
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

void *malloc(size_t n)
{
    if (counting)
        __atomic_add_fetch(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
    if (counting)
        __atomic_add_fetch(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
    if (counting)
        __atomic_add_fetch(&allocs, 1, __ATOMIC_RELAXED);
    return __libc_realloc(p, n);
}
#endif

/* A line protocol: every "\n"-terminated request gets "ok:<line>\n" back;
 * a partial line stays with the library until the rest arrives. */
struct conn {
    goev_handler h;
    goev_timer idle;
    int closed;
};

static int conns_open;

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    struct conn *c = (struct conn *)h;
    goev_timer_start(goev_handler_poller(h), h, &c->idle, 30000, 0);
    size_t used = 0;
    for (;;) {
        const char *nl = memchr(data + used, '\n', len - used);
        if (!nl)
            break;
        size_t n = (size_t)(nl - (data + used)) + 1;
        if (goev_write(h, "ok:", 3) < 0 || goev_write(h, data + used, n) < 0)
            return -EIO;
        used += n;
    }
    return (ssize_t)used;
}

static int on_timeout(goev_handler *h, goev_timer *t)
{
    (void)t;
    return goev_close(h);
}

static void on_close(goev_handler *h, int reason)
{
    (void)reason;
    struct conn *c = (struct conn *)h;
    c->closed = 1;
    __atomic_sub_fetch(&conns_open, 1, __ATOMIC_RELAXED);
    free(c);
}

static int on_open(goev_handler *h)
{
    (void)h;
    __atomic_add_fetch(&conns_open, 1, __ATOMIC_RELAXED);
    return 0;
}

static const struct goev_handler_ops ops = {
    .on_open = on_open, .on_read = on_read, .on_timeout = on_timeout, .on_close = on_close,
};

static goev_handler *new_conn(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &ops);
    goev_timer_init(&c->idle);
    return &c->h;
}

static void count_on(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    counting = 1;
}

static void count_off(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    counting = 0;
}

static void stall(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    tu_sleep_ms(60);
}

enum { NCONN = 8, DEPTH = 4 };

/* rounds x NCONN x DEPTH requests, each request split in two writes so that
 * the library keeps a tail now and then. */
static void traffic(int *fds, int rounds)
{
    static const char req[] = "GET /some/path?with=query and some padding\n";
    const size_t rl = sizeof req - 1;
    char expect[3 + sizeof req];
    memcpy(expect, "ok:", 3);
    memcpy(expect + 3, req, rl);
    char buf[DEPTH * sizeof expect];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < NCONN; i++) {
            for (int d = 0; d < DEPTH; d++) {
                size_t cut = (size_t)(r + d) % rl;
                cr_assert(tu_write_all(fds[i], req, cut) == 0);
                cr_assert(tu_write_all(fds[i], req + cut, rl - cut) == 0);
            }
        }
        for (int i = 0; i < NCONN; i++) {
            cr_assert(tu_read_exact(fds[i], buf, DEPTH * (rl + 3)) == 0, "round %d conn %d", r, i);
            for (int d = 0; d < DEPTH; d++)
                cr_assert(memcmp(buf + d * (rl + 3), expect, rl + 3) == 0);
        }
    }
}

Test(alloc, steady_state_allocates_nothing, .timeout = TU_TIMEOUT)
{
#ifdef NO_INTERPOSE
    cr_skip_test("malloc is the sanitizer's in this build");
#else
    int fd0 = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    goev_acceptor *a;
    cr_assert(goev_acceptor_new(&a, r, r, "127.0.0.1:0", NULL, new_conn, NULL) == 0);
    tu_reactor_start(r);
    int fds[NCONN];
    for (int i = 0; i < NCONN; i++) {
        cr_assert((fds[i] = tu_connect_tcp4(goev_acceptor_port(a))) >= 0);
        int one = 1;    /* split requests must not wait for delayed ACKs */
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    cr_assert(TU_WAIT_FOR(__atomic_load_n(&conns_open, __ATOMIC_RELAXED) == NCONN, 5000));

    /* Warm-up: pools and buffers reach their size.  Each connection is
     * made to keep a tail once (half a request, a pause, the rest), so its
     * tail buffer exists before counting starts. */
    traffic(fds, 200);
    /* And every connection needs an output chunk in the same pass once:
     * stall the poller while all of them send, so the pool reaches its
     * high-water mark here and not during the count. */
    goev_poller *p = goev_reactor_poller(r, 0);
    for (int k = 0; k < 3; k++) {
        cr_assert(goev_post(p, stall, NULL) == 0);
        tu_sleep_ms(10);
        for (int i = 0; i < NCONN; i++)
            cr_assert(tu_write_all(fds[i], "x\n", 2) == 0);
        for (int i = 0; i < NCONN; i++) {
            char reply[5];
            cr_assert(tu_read_exact(fds[i], reply, 5) == 0);
        }
    }
    for (int i = 0; i < NCONN; i++) {
        char reply[64];
        cr_assert(tu_write_all(fds[i], "half a req", 10) == 0);
        tu_sleep_ms(20);
        cr_assert(tu_write_all(fds[i], "uest\n", 5) == 0);
        cr_assert(tu_read_exact(fds[i], reply, 3 + 15) == 0);
        cr_assert(memcmp(reply, "ok:half a request\n", 18) == 0);
    }
    tu_run_on(p, count_on, NULL);
    struct goev_stats s0, s1;
    goev_stats_get(r, 0, &s0);
    traffic(fds, 1000);
    goev_stats_get(r, 0, &s1);
    tu_run_on(p, count_off, NULL);
    int n = __atomic_load_n(&allocs, __ATOMIC_RELAXED);
    uint64_t reqs = 1000ull * NCONN * DEPTH;
    cr_assert(s1.bytes_in - s0.bytes_in >= reqs * 40, "traffic did not reach the server");
    cr_assert_eq(n, 0, "%d heap allocations on the poller thread for %llu requests (%s)", n,
                 (unsigned long long)reqs, goev_backend_name(r));

    for (int i = 0; i < NCONN; i++)
        close(fds[i]);
    cr_assert(TU_WAIT_FOR(__atomic_load_n(&conns_open, __ATOMIC_RELAXED) == 0, 5000));
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    tu_assert_fds(fd0);
#endif
}

/* ---- idle memory per connection ------------------------------------------
 * Issue 8's budget is 256 B per idle connection on epoll and 384 B on
 * io_uring, library and application together, after one round trip on
 * each.  The library's part, counted through goev_replace_allocator (live
 * bytes as malloc_usable_size reports them), must stay under 160 B: a slot
 * (struct goev__conn and the backend's part), its share of the slot id
 * table and of the pool blocks its answer used.  One connection at a time
 * makes its round trip, so the pool holds one answer's block, not a
 * burst's: the figure is the layout's, not the machine's timing. */
#include <malloc.h>

static long live_bytes;

static void *cnt_malloc(size_t n)
{
    void *p = malloc(n);
    if (p)
        __atomic_add_fetch(&live_bytes, (long)malloc_usable_size(p), __ATOMIC_RELAXED);
    return p;
}

static void *cnt_calloc(size_t k, size_t n)
{
    void *p = calloc(k, n);
    if (p)
        __atomic_add_fetch(&live_bytes, (long)malloc_usable_size(p), __ATOMIC_RELAXED);
    return p;
}

static void *cnt_realloc(void *q, size_t n)
{
    long old = q ? (long)malloc_usable_size(q) : 0;
    void *p = realloc(q, n);
    if (p)
        __atomic_add_fetch(&live_bytes, (long)malloc_usable_size(p) - old, __ATOMIC_RELAXED);
    return p;
}

static void cnt_free(void *p)
{
    if (p)
        __atomic_sub_fetch(&live_bytes, (long)malloc_usable_size(p), __ATOMIC_RELAXED);
    free(p);
}

static ssize_t echo_read(goev_handler *h, const char *data, size_t len)
{
    int err = goev_write(h, data, len);
    return err < 0 ? err : (ssize_t)len;
}

static void echo_close(goev_handler *h, int reason)
{
    (void)reason;
    __atomic_sub_fetch(&conns_open, 1, __ATOMIC_RELAXED);
    free(h);
}

static const struct goev_handler_ops echo_ops = {
    .on_open = on_open, .on_read = echo_read, .on_close = echo_close,
};

static goev_handler *new_echo(goev_poller *p, void *arg)
{
    (void)p;
    (void)arg;
    goev_handler *h = malloc(sizeof *h);
    if (h)
        goev_handler_init(h, &echo_ops);
    return h;
}

/* 2001 connections fill two chunks of 1024 slots almost exactly */
enum { IDLE_CONNS = 2000, LIB_BYTES_PER_IDLE_CONN = 160 };

Test(alloc, idle_connection_bytes, .timeout = TU_TIMEOUT)
{
    cr_assert(goev_replace_allocator(cnt_malloc, cnt_realloc, cnt_calloc, cnt_free) == 0);
    int fd0 = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    goev_acceptor *a;
    cr_assert(goev_acceptor_new(&a, r, r, "127.0.0.1:0", NULL, new_echo, NULL) == 0);
    tu_reactor_start(r);
    tu_sleep_ms(50);
    /* Counted from before the first connection: the slot chunks it and the
     * others take (1024 slots each) are the connections' memory. */
    long before = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
    int warm = tu_connect_tcp4(goev_acceptor_port(a));
    char b;
    cr_assert(warm >= 0 && tu_write_all(warm, "w", 1) == 0 && tu_read_exact(warm, &b, 1) == 0);
    static int fds[IDLE_CONNS];
    for (int i = 0; i < IDLE_CONNS; i++) {
        cr_assert((fds[i] = tu_connect_tcp4(goev_acceptor_port(a))) >= 0, "connect %d", i);
        char c = (char)('a' + i % 26), back = 0;
        cr_assert(tu_write_all(fds[i], &c, 1) == 0);
        cr_assert(tu_read_exact(fds[i], &back, 1) == 0 && back == c, "round trip %d", i);
    }
    tu_sleep_ms(50);
    long after = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
    long per = (after - before) / (IDLE_CONNS + 1);
    cr_log_info("%s: %ld library bytes per idle connection", goev_backend_name(r), per);
    cr_assert(per <= LIB_BYTES_PER_IDLE_CONN, "%s: %ld library bytes per idle connection (at most %d)",
              goev_backend_name(r), per, LIB_BYTES_PER_IDLE_CONN);
    for (int i = 0; i < IDLE_CONNS; i++)
        close(fds[i]);
    close(warm);
    cr_assert(TU_WAIT_FOR(__atomic_load_n(&conns_open, __ATOMIC_RELAXED) == 0, 10000));
    tu_reactor_stop_wait(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    cr_assert_eq(__atomic_load_n(&live_bytes, __ATOMIC_RELAXED), 0, "the library freed all it took");
    cr_assert(goev_replace_allocator(NULL, NULL, NULL, NULL) == 0);
    tu_assert_fds(fd0);
}
