/* test_pool.c - the client connection pool against a goev echo server on
 * another reactor: min_idle kept, max_live never exceeded under 1000
 * concurrent acquires (counted on the server side too), waiters served in
 * order, cancel, acquire timeout, idle timeout, a server restart recovered
 * from, back-off on a refused address, the release rules, and freeing. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void init_test(void)
{
    signal(SIGPIPE, SIG_DFL);
}

/* ---- the echo server, counting its connections ------------------------- */

struct esrv {
    goev_reactor *r;
    goev_acceptor *a;
    int port;
    int cur, peak, opens;
    int mute;       /* accept, but answer nothing */
    int chatty;     /* send "hello\n" as soon as a connection opens */
};

struct econn {
    goev_handler h;
    struct esrv *s;
};

static int ec_open(goev_handler *h)
{
    struct esrv *s = ((struct econn *)h)->s;
    int cur = TU_INC(&s->cur);
    int peak;
    while ((peak = TU_LOAD(&s->peak)) < cur && !__atomic_compare_exchange_n(
               &s->peak, &peak, cur, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
    TU_INC(&s->opens);
    if (TU_LOAD(&s->chatty))
        goev_write(h, "hello\n", 6);
    return 0;
}

static ssize_t ec_read(goev_handler *h, const char *d, size_t n)
{
    struct esrv *s = ((struct econn *)h)->s;
    if (!TU_LOAD(&s->mute))
        goev_write(h, d, n);
    return (ssize_t)n;
}

static void ec_close(goev_handler *h, int reason)
{
    struct esrv *s = ((struct econn *)h)->s;
    TU_ADD(&s->cur, -1);
    free(h);
}

static const struct goev_handler_ops ec_ops = {
    .on_open = ec_open, .on_read = ec_read, .on_close = ec_close,
};

static goev_handler *ec_new(goev_poller *p, void *arg)
{
    struct econn *c = calloc(1, sizeof *c);
    goev_handler_init(&c->h, &ec_ops);
    c->s = arg;
    return &c->h;
}

/* Listen on port (0: any) and run. */
static void esrv_start(struct esrv *s, int port)
{
    s->r = tu_reactor_new(1);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    int rc = goev_acceptor_new(&s->a, s->r, s->r, addr, NULL, ec_new, s);
    cr_assert_eq(rc, 0, "server on %s: %s", addr, strerror(-rc));
    s->port = goev_acceptor_port(s->a);
    tu_reactor_start(s->r);
}

/* Stop: every connection it has is closed (the pool's idle ones see EOF). */
static void esrv_stop(struct esrv *s)
{
    tu_reactor_stop_wait(s->r);
    goev_acceptor_free(s->a);
    goev_reactor_free(s->r);
    s->r = NULL;
}

/* ---- the client side ------------------------------------------------------ */

struct job {
    goev_pool_req req;
    struct cli *cl;
    int idx;
    int got_conn, err, done, closes, close_reason;
    char buf[64];
    size_t len;
    int release;        /* how to release when the answer is in: 1 reuse, 0 close */
    goev_handler *conn;
};

struct cli {
    goev_reactor *r;
    goev_poller *p;
    goev_pool *pool;
    struct goev_pool_opts o;
    char addr[64];
    int rc;
    int peak_usable;        /* most idle+acquired+connecting seen */
    int order[64], norder;  /* job indexes in the order their callbacks ran */
    int done, errors, callbacks;
    struct job *jobs;
    int njobs;
};

static void cli_peak(struct cli *cl)
{
    struct goev_pool_stats st;
    goev_pool_stats_get(cl->pool, &st);
    int u = (int)(st.live + st.connecting);
    if (u > cl->peak_usable)
        cl->peak_usable = u;
}

/* Lease callbacks: the answer to our line ends with '\n'. */
static ssize_t lease_read(goev_handler *h, const char *d, size_t n)
{
    struct job *j = h->user;
    if (!j)
        return (ssize_t)n;
    size_t take = 0;
    while (take < n && j->len < sizeof j->buf) {
        char c = d[take++];
        j->buf[j->len++] = c;
        if (c == '\n') {
            char want[64];
            snprintf(want, sizeof want, "job %d\n", j->idx);
            TU_CHECK(j->len == strlen(want) && memcmp(j->buf, want, j->len) == 0,
                     "job %d got another answer", j->idx);
            j->done = 1;
            TU_INC(&j->cl->done);
            goev_pool_release(h, j->release);
            return (ssize_t)take;
        }
    }
    return (ssize_t)take;
}

static void lease_close(goev_handler *h, int reason)
{
    struct job *j = h->user;
    if (j) {
        j->close_reason = reason;
        TU_INC(&j->closes);     /* last: the test thread waits on it */
    }
}

static const struct goev_handler_ops lease_ops = {
    .on_read = lease_read, .on_close = lease_close,
};

static void job_cb(goev_pool_req *req, goev_handler *conn, int err)
{
    struct job *j = req->user;
    struct cli *cl = j->cl;
    if (cl->norder < 64)
        cl->order[cl->norder++] = j->idx;
    cli_peak(cl);
    j->err = err;
    /* After what it publishes: the test thread waits on it, then reads
     * err and order. */
    TU_INC(&cl->callbacks);
    if (!conn) {
        TU_INC(&cl->errors);
        return;
    }
    j->got_conn++;
    j->conn = conn;
    conn->user = j;
    char line[32];
    int n = snprintf(line, sizeof line, "job %d\n", j->idx);
    TU_CHECK(goev_write(conn, line, (size_t)n) == 0, "write on a pooled connection");
}

static void make_pool(goev_poller *p, void *arg)
{
    struct cli *cl = arg;
    cl->rc = goev_pool_new(&cl->pool, p, cl->addr, &cl->o);
}

/* The pool's defaults, with the lease callbacks above and the given sizes;
 * a test changes more of cl->o before cli_start. */
static void cli_init(struct cli *cl, int min_idle, int max_live)
{
    memset(cl, 0, sizeof *cl);
    goev_pool_opts_init(&cl->o);
    cl->o.ops = &lease_ops;
    cl->o.min_idle = min_idle;
    cl->o.max_live = max_live;
}

static void cli_start(struct cli *cl, int port)
{
    cl->r = tu_reactor_new(1);
    cl->p = goev_reactor_poller(cl->r, 0);
    snprintf(cl->addr, sizeof cl->addr, "127.0.0.1:%d", port);
    tu_reactor_start(cl->r);
    tu_run_on(cl->p, make_pool, cl);
    cr_assert_eq(cl->rc, 0, "goev_pool_new: %s", strerror(-cl->rc));
}

static void free_pool(goev_poller *p, void *arg)
{
    struct cli *cl = arg;
    goev_pool_free(cl->pool);
    cl->pool = NULL;
}

static void cli_stop(struct cli *cl)
{
    if (cl->pool)
        tu_run_on(cl->p, free_pool, cl);
    tu_reactor_stop_wait(cl->r);
    goev_reactor_free(cl->r);
    free(cl->jobs);
}

struct stats_arg {
    struct cli *cl;
    struct goev_pool_stats st;
};

static void get_stats(goev_poller *p, void *arg)
{
    struct stats_arg *sa = arg;
    goev_pool_stats_get(sa->cl->pool, &sa->st);
}

static struct goev_pool_stats stats(struct cli *cl)
{
    struct stats_arg sa = {.cl = cl};
    tu_run_on(cl->p, get_stats, &sa);
    return sa.st;
}

#define WAIT_STATS(cl, cond, ms)                                            \
    ({                                                                      \
        struct goev_pool_stats st_;                                         \
        TU_WAIT_FOR((st_ = stats(cl), (cond)), ms);                         \
    })

/* Queue jobs [from, to) with goev_pool_acquire on the poller. */
struct queue_arg {
    struct cli *cl;
    int from, to, timeout_ms;
    int rc;
};

static void queue_jobs(goev_poller *p, void *arg)
{
    struct queue_arg *qa = arg;
    struct cli *cl = qa->cl;
    for (int i = qa->from; i < qa->to; i++) {
        struct job *j = &cl->jobs[i];
        goev_pool_req_init(&j->req);
        j->req.user = j;
        j->cl = cl;
        j->idx = i;
        j->release = 1;
        int rc = goev_pool_acquire(cl->pool, &j->req, qa->timeout_ms, job_cb);
        if (rc < 0)
            qa->rc = rc;
    }
}

static void jobs_alloc(struct cli *cl, int n)
{
    cl->jobs = calloc((size_t)n, sizeof *cl->jobs);
    cl->njobs = n;
}

static int queue(struct cli *cl, int from, int to, int timeout_ms)
{
    struct queue_arg qa = {.cl = cl, .from = from, .to = to, .timeout_ms = timeout_ms};
    tu_run_on(cl->p, queue_jobs, &qa);
    return qa.rc;
}

/* ---- tests ------------------------------------------------------------------- */

Test(pool, min_idle_kept, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 3, 10);
    cl.o.add_batch = 1;
    cli_start(&cl, s.port);
    cr_assert(WAIT_STATS(&cl, st_.idle == 3, 5000), "idle never reached 3");
    tu_sleep_ms(100);
    struct goev_pool_stats st = stats(&cl);
    cr_assert_eq(st.idle, 3, "idle %u: more than min_idle opened", st.idle);
    cr_assert_eq(st.created, 3);
    cr_assert_eq(TU_LOAD(&s.cur), 3, "server sees %d connections", s.cur);
    /* Two jobs take two idle connections; the pool tops idle up again. */
    jobs_alloc(&cl, 2);
    cr_assert_eq(queue(&cl, 0, 2, 5000), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 2, 5000));
    /* The refill races with the releases: 3 to 5 idle, never fewer. */
    cr_assert(WAIT_STATS(&cl, st_.idle >= 3 && st_.acquired == 0 && st_.connecting == 0, 5000),
              "after the releases, at least min_idle must be idle");
    st = stats(&cl);
    cr_assert_leq(st.idle, 5);
    cr_assert_eq(st.created, st.idle, "nothing closed, so every connection made is idle");
    cr_assert_eq(st.acquires, 2);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(pool, max_live_under_1000_acquires, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 2, 20);
    cl.o.add_batch = 5;
    cli_start(&cl, s.port);
    jobs_alloc(&cl, 1000);
    cr_assert_eq(queue(&cl, 0, 1000, 15000), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 1000 || TU_LOAD(&cl.errors), 15000),
              "done %d of 1000", TU_LOAD(&cl.done));
    cr_assert_eq(TU_LOAD(&cl.errors), 0);
    struct goev_pool_stats st = stats(&cl);
    cr_assert_leq(st.peak, 20, "pool peak %u", st.peak);
    cr_assert_leq(cl.peak_usable, 20);
    cr_assert_leq(TU_LOAD(&s.peak), 20, "the server saw %d at once", s.peak);
    cr_assert_geq(TU_LOAD(&s.peak), 10, "the pool hardly grew: %d", s.peak);
    cr_assert_eq(st.acquires, 1000);
    cr_assert_eq(st.waiting, 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(cl.jobs[i].got_conn, 1, "job %d: %d connections", i, cl.jobs[i].got_conn);
    /* FIFO: callbacks in queueing order (the first 64 recorded). */
    for (int i = 0; i < 64; i++)
        cr_assert_eq(cl.order[i], i, "callback %d was job %d", i, cl.order[i]);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* One connection, several waiters: they get it in order; a cancelled one
 * is skipped and never called back. */
static void cancel_job(goev_poller *p, void *arg)
{
    struct job *j = arg;
    j->err = goev_pool_cancel(&j->req);
}

static void release_job0(goev_poller *p, void *arg)
{
    struct cli *cl = arg;
    cl->rc = goev_pool_release(cl->jobs[0].conn, 1);
}

Test(pool, waiters_in_order_and_cancel, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct esrv s = {0};
    s.mute = 1;     /* answers nothing, so job 0 holds the connection */
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 0, 1);
    cli_start(&cl, s.port);
    jobs_alloc(&cl, 5);
    cr_assert_eq(queue(&cl, 0, 1, 0), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 1, 5000));
    cr_assert_eq(queue(&cl, 1, 5, 0), 0);
    tu_sleep_ms(50);
    cr_assert_eq(stats(&cl).waiting, 4);
    cr_assert_eq(stats(&cl).connecting, 0, "max_live 1 is taken: no connect");
    tu_run_on(cl.p, cancel_job, &cl.jobs[2]);
    cr_assert_eq(cl.jobs[2].err, 0, "cancel of a waiting request");
    tu_run_on(cl.p, cancel_job, &cl.jobs[2]);
    cr_assert_eq(cl.jobs[2].err, -ENOENT, "cancel twice");
    /* Job 0's line went to a mute server; job 0 gives the connection
     * back by hand, and from now on the server answers: each answer
     * releases the connection to the next waiter. */
    TU_STORE(&s.mute, 0);
    tu_run_on(cl.p, release_job0, &cl);
    cr_assert_eq(cl.rc, 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 3, 8000), "done %d", cl.done);
    cr_assert_eq(cl.norder, 4);
    cr_assert_eq(cl.order[0], 0);
    cr_assert_eq(cl.order[1], 1);
    cr_assert_eq(cl.order[2], 3);
    cr_assert_eq(cl.order[3], 4);
    cr_assert_eq(cl.jobs[2].got_conn, 0, "the cancelled request was served");
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
}

Test(pool, acquire_timeout, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct esrv s = {0};
    s.mute = 1;
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 0, 1);
    cli_start(&cl, s.port);
    jobs_alloc(&cl, 2);
    cr_assert_eq(queue(&cl, 0, 1, 0), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 1, 5000));
    uint64_t t0 = tu_now_ms();
    cr_assert_eq(queue(&cl, 1, 2, 150), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 2, 5000));
    cr_assert_geq(tu_now_ms() - t0, 140, "timed out early");
    cr_assert_eq(cl.jobs[1].err, -ETIMEDOUT);
    struct goev_pool_stats st = stats(&cl);
    cr_assert_eq(st.timeouts, 1);
    cr_assert_eq(st.waiting, 0);
    cr_assert_eq(st.acquired, 1);
    tu_run_on(cl.p, free_pool, &cl);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.jobs[0].closes) == 1, 5000), "the held lease ends when the pool is freed");
    cr_assert_eq(cl.jobs[0].close_reason, -ECANCELED);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
}

Test(pool, idle_timeout, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct esrv s = {0};
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 1, 8);
    cl.o.add_batch = 8;
    cl.o.idle_timeout_ms = 300;
    cli_start(&cl, s.port);
    /* 8 at once: the pool grows to 8, then the releases leave 8 idle. */
    jobs_alloc(&cl, 8);
    cr_assert_eq(queue(&cl, 0, 8, 5000), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 8, 5000));
    struct goev_pool_stats st = stats(&cl);
    cr_assert_geq(st.idle, 2, "idle %u after the burst", st.idle);
    cr_assert(WAIT_STATS(&cl, st_.idle == 1, 3000), "idle never trimmed to min_idle");
    tu_sleep_ms(400);
    st = stats(&cl);
    cr_assert_eq(st.idle, 1, "min_idle must stay");
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.cur) == 1, 2000), "server still has %d", s.cur);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
}

Test(pool, server_restart, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    esrv_start(&s, 0);
    int port = s.port;
    struct cli cl;
    cli_init(&cl, 4, 8);
    cl.o.backoff_min_ms = 20;
    cl.o.backoff_max_ms = 100;
    cli_start(&cl, port);
    cr_assert(WAIT_STATS(&cl, st_.idle == 4, 5000));
    /* Every pooled connection is closed by the server going away. */
    esrv_stop(&s);
    cr_assert(WAIT_STATS(&cl, st_.idle == 0, 5000), "idle connections outlived the server");
    tu_sleep_ms(200);
    struct goev_pool_stats st = stats(&cl);
    cr_assert_geq(st.failed, 1, "no reconnect attempt while the server was down");
    esrv_start(&s, port);
    cr_assert(WAIT_STATS(&cl, st_.idle == 4, 5000), "the pool did not refill");
    jobs_alloc(&cl, 4);
    cr_assert_eq(queue(&cl, 0, 4, 5000), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 4, 5000));
    cr_assert_eq(TU_LOAD(&cl.errors), 0);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

Test(pool, backoff_on_refused, .init = init_test, .timeout = TU_TIMEOUT)
{
    int port;
    int lfd = tu_listen_tcp4(1, &port);
    close(lfd);     /* a port nobody listens on */
    struct cli cl;
    cli_init(&cl, 1, 64);
    cl.o.add_batch = 1;
    cl.o.backoff_min_ms = 20;
    cl.o.backoff_max_ms = 160;
    cli_start(&cl, port);
    tu_sleep_ms(1000);
    /* Attempts at 0, 20, 60, 140, 300, 460, 620, 780, 940 ms: about 9.
     * Without back-off a refused loopback connect would repeat thousands
     * of times a second. */
    struct goev_pool_stats st = stats(&cl);
    cr_assert_geq(st.failed, 5, "%llu attempts in 1 s", (unsigned long long)st.failed);
    cr_assert_leq(st.failed, 14, "%llu attempts in 1 s", (unsigned long long)st.failed);
    cr_assert_eq(st.created, 0);
    /* A waiter gets the refusal of the next attempt, not its timeout. */
    jobs_alloc(&cl, 1);
    uint64_t t0 = tu_now_ms();
    cr_assert_eq(queue(&cl, 0, 1, 10000), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 1, 3000), "the waiter was not answered");
    cr_assert_eq(cl.jobs[0].err, -ECONNREFUSED, "err %d", cl.jobs[0].err);
    cr_assert_lt(tu_now_ms() - t0, 2000);
    cli_stop(&cl);
    tu_assert_no_failures();
}

/* ---- release rules ------------------------------------------------------------ */

struct rel {
    struct cli *cl;
    goev_handler *c1, *c2;
    int rc[4];
};

static void try_two(goev_poller *p, void *arg)
{
    struct rel *rl = arg;
    rl->c1 = goev_pool_try_acquire(rl->cl->pool);
    rl->c2 = goev_pool_try_acquire(rl->cl->pool);
}

static void release_both(goev_poller *p, void *arg)
{
    struct rel *rl = arg;
    rl->rc[0] = goev_pool_release(rl->c1, 1);
    rl->rc[1] = goev_pool_release(rl->c2, 0);
    rl->rc[2] = goev_pool_release(rl->c1, 1);   /* not acquired any more */
    goev_handler other;
    goev_handler_init(&other, &lease_ops);
    rl->rc[3] = goev_pool_release(&other, 1);   /* not a pool's */
}

Test(pool, release_rules, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 2, 2);
    cli_start(&cl, s.port);
    cr_assert(WAIT_STATS(&cl, st_.idle == 2, 5000));
    struct rel rl = {.cl = &cl};
    tu_run_on(cl.p, try_two, &rl);
    cr_assert(rl.c1 && rl.c2 && rl.c1 != rl.c2);
    tu_run_on(cl.p, release_both, &rl);
    cr_assert_eq(rl.rc[0], 0);
    cr_assert_eq(rl.rc[1], 0);
    cr_assert_eq(rl.rc[2], -EINVAL);
    cr_assert_eq(rl.rc[3], -EINVAL);
    /* reuse 0 closed one (the server sees it go) and a new one replaces it. */
    cr_assert(WAIT_STATS(&cl, st_.idle == 2 && st_.closed == 1 && st_.created == 3, 5000));
    /* The reused one is handed out first (most recently released). */
    struct rel rl2 = {.cl = &cl};
    tu_run_on(cl.p, try_two, &rl2);
    cr_assert(rl2.c1 == rl.c1 || rl2.c2 == rl.c1, "the healthy connection was not reused");
    tu_run_on(cl.p, release_both, &rl2);

    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* An idle connection that receives bytes nobody asked for is closed and
 * replaced. */
Test(pool, idle_connection_with_data_replaced, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct esrv s = {0};
    s.chatty = 1;
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 1, 1);
    cl.o.backoff_min_ms = 10;
    cli_start(&cl, s.port);
    /* Each connection is greeted while idle, so it is closed and a new one
     * made: the pool keeps replacing them. */
    cr_assert(WAIT_STATS(&cl, st_.closed >= 3, 5000), "greeted idle connections kept");
    TU_STORE(&s.chatty, 0);
    cr_assert(WAIT_STATS(&cl, st_.idle == 1, 5000));
    tu_sleep_ms(100);
    struct goev_pool_stats st = stats(&cl);
    cr_assert_eq(st.idle, 1, "a quiet connection stays idle");
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
}

/* Unconsumed input at release: on_read consumes only the answer line;
 * the server's second line is left, so the connection is not reused. */
static ssize_t half_read(goev_handler *h, const char *d, size_t n)
{
    struct job *j = h->user;
    const char *nl = memchr(d, '\n', n);
    if (!nl)
        return 0;
    j->done = 1;
    TU_INC(&j->cl->done);
    goev_pool_release(h, 1);
    return nl - d + 1;
}

static const struct goev_handler_ops half_ops = {.on_read = half_read};

static void job_two_lines(goev_pool_req *req, goev_handler *conn, int err)
{
    struct job *j = req->user;
    j->err = err;
    TU_INC(&j->cl->callbacks);
    if (!conn)
        return;
    conn->user = j;
    goev_write(conn, "a\nb\n", 4);   /* echoed as two lines in one read, likely */
}

static void queue_two(goev_poller *p, void *arg)
{
    struct cli *cl = arg;
    struct job *j = &cl->jobs[0];
    goev_pool_req_init(&j->req);
    j->req.user = j;
    j->cl = cl;
    cl->rc = goev_pool_acquire(cl->pool, &j->req, 5000, job_two_lines);
}

Test(pool, unconsumed_input_not_reused, .init = init_test, .timeout = TU_TIMEOUT)
{
    struct esrv s = {0};
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 1, 1);
    cl.o.ops = &half_ops;
    cli_start(&cl, s.port);
    cr_assert(WAIT_STATS(&cl, st_.idle == 1, 5000));
    jobs_alloc(&cl, 1);
    tu_run_on(cl.p, queue_two, &cl);
    cr_assert_eq(cl.rc, 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.done) == 1, 5000));
    /* Either way the second line is unconsumed input: in the same read
     * (returned as not consumed) or arriving while idle.  The connection
     * is closed and replaced. */
    cr_assert(WAIT_STATS(&cl, st_.closed == 1 && st_.idle == 1 && st_.created == 2, 5000),
              "the connection with input left over was reused");
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
}

/* Freeing with a waiter, an idle and an acquired connection; and bad
 * options. */
static void bad_options(goev_poller *p, void *arg)
{
    int *rc = arg;
    struct goev_pool_opts o;
    goev_pool *pool;
    goev_pool_opts_init(&o);
    rc[0] = goev_pool_new(&pool, p, "127.0.0.1:1", &o);     /* no ops */
    o.ops = &lease_ops;
    o.min_idle = 5;
    o.max_live = 4;
    rc[1] = goev_pool_new(&pool, p, "127.0.0.1:1", &o);
    o.min_idle = 1;
    o.add_batch = 0;
    rc[2] = goev_pool_new(&pool, p, "127.0.0.1:1", &o);
    o.add_batch = 1;
    rc[3] = goev_pool_new(&pool, p, "no..such..host:1", &o);  /* names are taken; not this one */
    goev_pool_req req;
    goev_pool_req_init(&req);
    rc[4] = goev_pool_cancel(&req);
}

Test(pool, free_answers_everyone, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    s.mute = 1;
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 1, 2);
    cli_start(&cl, s.port);
    jobs_alloc(&cl, 4);
    cr_assert_eq(queue(&cl, 0, 4, 0), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 2, 5000));
    cr_assert_eq(stats(&cl).waiting, 2);
    tu_run_on(cl.p, free_pool, &cl);
    cr_assert_eq(cl.callbacks, 4, "waiters answered during goev_pool_free");
    cr_assert_eq(cl.jobs[2].err, -ECANCELED);
    cr_assert_eq(cl.jobs[3].err, -ECANCELED);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.jobs[0].closes) == 1 && TU_LOAD(&cl.jobs[1].closes) == 1, 5000));
    cr_assert_eq(cl.jobs[0].close_reason, -ECANCELED);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&s.cur) == 0, 5000), "server still has %d", s.cur);
    int rc[5];
    tu_run_on(cl.p, bad_options, rc);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(rc[i], -EINVAL, "bad option set %d: %d", i, rc[i]);
    cr_assert_eq(rc[4], -ENOENT);
    cli_stop(&cl);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}

/* The reactor stops with everything in flight: leases end with -ECANCELED,
 * waiters are answered, and the pool is freed afterwards without touching
 * the stopped reactor. */
Test(pool, reactor_stop_then_free, .init = init_test, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    struct esrv s = {0};
    s.mute = 1;
    esrv_start(&s, 0);
    struct cli cl;
    cli_init(&cl, 1, 1);
    cli_start(&cl, s.port);
    jobs_alloc(&cl, 3);
    cr_assert_eq(queue(&cl, 0, 3, 0), 0);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&cl.callbacks) == 1, 5000));
    tu_reactor_stop_wait(cl.r);
    cr_assert_eq(cl.callbacks, 3, "waiters not answered at stop");
    cr_assert_eq(cl.jobs[1].err, -ECANCELED);
    cr_assert_eq(cl.jobs[0].closes, 1);
    cr_assert_eq(cl.jobs[0].close_reason, -ECANCELED);
    goev_pool_free(cl.pool);    /* after the stop, from this thread */
    goev_reactor_free(cl.r);
    free(cl.jobs);
    esrv_stop(&s);
    tu_assert_no_failures();
    tu_assert_fds(fds);
}
