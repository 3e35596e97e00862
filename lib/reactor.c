/* reactor.c - pollers and their threads, the loop, backend choice,
 * cross-thread posting, timers' public face, statistics. */
#include "goev-internal.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static __thread goev_poller *tls_poller;
static __thread char tls_error[256];

const char *goev_last_error(void)
{
    return tls_error;
}

static void set_error(const char *fmt, const char *a, const char *b)
{
    snprintf(tls_error, sizeof tls_error, fmt, a, b);
}

void goev__clock_refresh(goev_poller *p)
{
    if (tls_poller != p)
        p->now_ms = goev__now_ms();
}

void goev_reactor_opts_init(struct goev_reactor_opts *o)
{
    memset(o, 0, sizeof *o);
}

/* ---- backend choice ---------------------------------------------------- */

#ifdef GOEV_HAVE_URING
/* The kernel or the sandbox refuses io_uring: auto may fall back.  Resource
 * errors (ENOMEM, EMFILE) are real errors and are reported instead. */
static bool fallback_errno(int rc)
{
    return rc == -ENOSYS || rc == -EPERM || rc == -EINVAL || rc == -EOPNOTSUPP;
}
#endif

/* Run fn(arg) on a short-lived thread of its own (all signals blocked),
 * or here if no thread can be had.  What sets up io_uring rings runs so:
 * Linux sends the thread that created a ring (or submitted to it) a
 * task-work notification when the ring is torn down, which makes that
 * thread's next blocking system call fail with EINTR.  The rings of the
 * probe and of the pollers must not do that to the application's thread. */
static void on_fresh_thread(void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    pthread_t th;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        fn(arg);
    else
        pthread_join(th, NULL);
}

#ifdef GOEV_HAVE_URING
struct probe_run {
    const struct goev__backend *be;
    char *why;
    size_t len;
    int rc;
};

static void *probe_main(void *arg)
{
    struct probe_run *pr = arg;
    pr->rc = pr->be->probe ? pr->be->probe(pr->why, pr->len) : 0;
    return NULL;
}

static int run_probe(const struct goev__backend *be, char *why, size_t len)
{
    struct probe_run pr = {.be = be, .why = why, .len = len};
    on_fresh_thread(probe_main, &pr);
    return pr.rc;
}
#endif

/* Pick the backend from GOEV_BACKEND.  An explicit io_uring that cannot be
 * had is an error: an A/B run must never compare epoll with epoll. */
static int choose_backend(goev_reactor *r)
{
    const char *env = secure_getenv("GOEV_BACKEND");
    char why[160] = "";
    if (!env || !*env)
        env = "auto";

    if (strcmp(env, "epoll") == 0) {
        r->be = &goev__epoll_backend;
        snprintf(r->reason, sizeof r->reason, "GOEV_BACKEND=epoll");
        return 0;
    }
    bool want_uring = strcmp(env, "io_uring") == 0;
    if (!want_uring && strcmp(env, "auto") != 0) {
        set_error("GOEV_BACKEND=%s: expected auto, epoll or io_uring%s", env, "");
        return -EINVAL;
    }
#ifdef GOEV_HAVE_URING
    int rc = run_probe(&goev__uring_backend, why, sizeof why);
    if (rc == 0) {
        r->be = &goev__uring_backend;
        snprintf(r->reason, sizeof r->reason, "GOEV_BACKEND=%s: io_uring ready (%s)", env, why);
        return 0;
    }
    if (want_uring || !fallback_errno(rc)) {
        set_error("GOEV_BACKEND=%s: io_uring unavailable: %s", env, why);
        return rc;
    }
    r->be = &goev__epoll_backend;
    snprintf(r->reason, sizeof r->reason, "GOEV_BACKEND=auto: io_uring unavailable (%s); using epoll", why);
    return 0;
#else
    (void)why;
    if (want_uring) {
        set_error("GOEV_BACKEND=%s: goev was built without liburing (no io_uring backend)%s", env, "");
        return -ENOSYS;
    }
    r->be = &goev__epoll_backend;
    snprintf(r->reason, sizeof r->reason, "GOEV_BACKEND=auto: built without liburing; using epoll");
    return 0;
#endif
}

/* ---- pollers ------------------------------------------------------------ */

static int poller_init(goev_reactor *r, goev_poller *p, int idx)
{
    const struct goev_reactor_opts *o = &r->opts;
    p->r = r;
    p->be = r->be;
    p->idx = idx;
    p->wake_fd = -1;
    p->now_ms = goev__now_ms();
    p->retry_at = UINT64_MAX;
    p->out_high = o->out_high_water >= UINT32_MAX ? UINT32_MAX : (uint32_t)o->out_high_water;
    p->out_low = o->out_low_water >= UINT32_MAX ? UINT32_MAX : (uint32_t)o->out_low_water;
    pthread_mutex_init(&p->mq.mu, NULL);
    p->mq.tailp = &p->mq.head;
    goev__pool_init(&p->pool, 8u << 20);
    if (goev__heap_init(&p->timers, o->timer_heap_size ? o->timer_heap_size : 1024) < 0)
        return -ENOMEM;
    p->chunks = goev__calloc(GOEV__MAX_SLOTS / GOEV__SLOT_CHUNK, sizeof *p->chunks);
    if (!p->chunks)
        return -ENOMEM;
    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->wake_fd < 0)
        return -errno;
    p->slot_stride = goev__slot_stride(p->be->conn_priv);
    return p->be->poller_init(p);
}

static void poller_fini(goev_poller *p)
{
    if (!p->r)
        return;
    goev__resolver_free(p);
    goev__tls_poller_fini(p);
    p->be->poller_fini(p);
    goev__slots_fini(p);
    goev__free(p->chunks);
    goev__heap_fini(&p->timers);
    goev__pool_fini(&p->pool);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    pthread_mutex_destroy(&p->mq.mu);
}

struct init_run {
    goev_reactor *r;
    int rc, failed;
};

static void *init_pollers(void *arg)
{
    struct init_run *ir = arg;
    for (int i = 0; i < ir->r->npollers; i++) {
        ir->rc = poller_init(ir->r, &ir->r->pollers[i], i);
        if (ir->rc < 0) {
            ir->failed = i;
            break;
        }
    }
    return NULL;
}

int goev_reactor_new(goev_reactor **out, const struct goev_reactor_opts *opts)
{
    tls_error[0] = 0;
    if (!out) {
        set_error("goev_reactor_new: out is NULL%s%s", "", "");
        return -EINVAL;
    }
    *out = NULL;
    struct goev_reactor_opts o;
    if (opts)
        o = *opts;
    else
        goev_reactor_opts_init(&o);
    if (o.pollers < 0 || o.pollers > GOEV__MAX_POLLERS || (o.read_bufs & (o.read_bufs - 1)) ||
        o.read_bufs > 32768 || (o.read_buf_size && o.read_buf_size < 512)) {
        set_error("goev_reactor_new: bad option (pollers 0..255, read_bufs a power of "
                  "two <= 32768, read_buf_size >= 512)%s%s", "", "");
        return -EINVAL;
    }
    if (o.pollers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.pollers = n > 0 ? (n > GOEV__MAX_POLLERS ? GOEV__MAX_POLLERS : (int)n) : 1;
    }
    if (!o.max_input)
        o.max_input = 16u << 20;
    if (!o.out_high_water)
        o.out_high_water = 1u << 20;
    if (!o.out_low_water)
        o.out_low_water = o.out_high_water == SIZE_MAX ? 0 : o.out_high_water / 2;
    if (o.out_low_water >= o.out_high_water) {
        set_error("goev_reactor_new: out_low_water must be below out_high_water%s%s", "", "");
        return -EINVAL;
    }
    if (o.max_input > UINT32_MAX)   /* the kept tail's length is 32 bits */
        o.max_input = UINT32_MAX;

    goev_reactor *r = goev__calloc(1, sizeof *r);
    if (!r) {
        set_error("goev_reactor_new: out of memory for the reactor%s%s", "", "");
        return -ENOMEM;
    }
    r->opts = o;
    int rc = choose_backend(r);
    if (rc < 0) {
        goev__free(r);
        return rc;
    }
    goev__debug("backend %s: %s", r->be->name, r->reason);

    r->npollers = o.pollers;
    r->pollers = goev__calloc((size_t)o.pollers, sizeof *r->pollers);
    if (!r->pollers) {
        set_error("goev_reactor_new: out of memory for %s pollers%s", "the", "");
        goev__free(r);
        return -ENOMEM;
    }
    struct init_run ir = {.r = r};
    on_fresh_thread(init_pollers, &ir);
    if (ir.rc < 0) {
        set_error("goev_reactor_new: setting up a %s poller: %s", r->be->name, strerror(-ir.rc));
        for (int j = 0; j <= ir.failed; j++)
            poller_fini(&r->pollers[j]);
        goev__free(r->pollers);
        goev__free(r);
        return ir.rc;
    }
    *out = r;
    return 0;
}

const char *goev_backend_name(const goev_reactor *r) { return r->be->name; }
const char *goev_backend_reason(const goev_reactor *r) { return r->reason; }
int goev_poller_count(const goev_reactor *r) { return r->npollers; }
goev_poller *goev_current_poller(void) { return tls_poller; }
int goev_poller_index(const goev_poller *p) { return p->idx; }
goev_reactor *goev_poller_reactor(goev_poller *p) { return p->r; }
uint64_t goev_poller_now_ms(const goev_poller *p) { return p->now_ms; }

goev_poller *goev_reactor_poller(goev_reactor *r, int i)
{
    return (r && i >= 0 && i < r->npollers) ? &r->pollers[i] : NULL;
}

void *goev_poller_local(goev_poller *p, unsigned slot)
{
    return slot < GOEV_LOCAL_SLOTS ? p->local[slot] : NULL;
}

void goev_poller_set_local(goev_poller *p, unsigned slot, void *value)
{
    if (slot < GOEV_LOCAL_SLOTS)
        p->local[slot] = value;
}

/* ---- cross-thread queue -------------------------------------------------- */

static bool mq_nonempty(goev_poller *p)
{
    return __atomic_load_n(&p->mq.head, __ATOMIC_SEQ_CST) != NULL;
}

/* Queue m for p.  Only the producer that makes the queue non-empty may need
 * to wake the poller, and only if it is (about to be) blocked: the poller
 * publishes `sleeping` before its last look at the queue (both seq_cst).
 * Once the poller's stop is over nobody would ever take m: -ESHUTDOWN, and
 * m stays the caller's. */
/* Wake p from another thread (async-signal-safe): the backend keeps a read
 * of p->wake_fd armed, which ends its wait. */
static void poller_wake(goev_poller *p)
{
    uint64_t one = 1;
    ssize_t rc = write(p->wake_fd, &one, sizeof one);
    (void)rc;   /* EAGAIN: the counter is already non-zero, the wake is due */
}

static int mq_push(goev_poller *p, struct goev__msg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&p->mq.mu);
    if (p->mq.closed) {
        pthread_mutex_unlock(&p->mq.mu);
        return -ESHUTDOWN;
    }
    bool was_empty = p->mq.head == NULL;
    if (was_empty)
        __atomic_store_n(&p->mq.head, m, __ATOMIC_SEQ_CST);
    else
        *p->mq.tailp = m;
    p->mq.tailp = &m->next;
    pthread_mutex_unlock(&p->mq.mu);
    if (was_empty && __atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST))
        poller_wake(p);
    return 0;
}

/* Take the whole queue; with close, refuse every later message. */
static struct goev__msg *mq_take(goev_poller *p, bool close)
{
    pthread_mutex_lock(&p->mq.mu);
    struct goev__msg *m = p->mq.head;
    __atomic_store_n(&p->mq.head, NULL, __ATOMIC_SEQ_CST);
    p->mq.tailp = &p->mq.head;
    if (close)
        p->mq.closed = 1;
    pthread_mutex_unlock(&p->mq.mu);
    return m;
}

static void mq_run(goev_poller *p, struct goev__msg *m, bool stopping)
{
    while (m) {
        struct goev__msg *next = m->next;
        switch (m->kind) {
        case GOEV__M_POST:
            m->u.post.fn(p, m->u.post.arg);
            break;
        case GOEV__M_WRITE:
        case GOEV__M_CLOSE: {
            struct goev__conn *c = goev__slot_conn(p, goev__id_slot(m->u.write.id));
            if (stopping || !c || goev__gen(c) != goev__id_gen(m->u.write.id) || c->kind != GOEV__K_STREAM)
                GOEV__STAT_INC(p, async_dropped);
            else if (m->kind == GOEV__M_CLOSE)
                goev_close(c->h);
            else {
                int rc = goev_write(c->h, m->data, m->u.write.len);
                if (rc < 0) {
                    GOEV__STAT_INC(p, async_dropped);
                    /* Bytes the caller was told are on their way are lost:
                     * going on would send the stream with a hole in it. */
                    if (rc != -ENOTCONN)
                        goev__conn_close(c, rc);
                }
            }
            break;
        }
        case GOEV__M_HANDOFF:
            if (stopping) {
                close(m->u.handoff.fd);
                GOEV__STAT_INC(p, sys_other);
            } else {
                goev__handoff(p, m->u.handoff.a, m->u.handoff.fd);
            }
            break;
        }
        goev__free(m);
        m = next;
    }
}

static void mq_drain(goev_poller *p, bool stopping)
{
    mq_run(p, mq_take(p, false), stopping);
}

int goev_post(goev_poller *p, goev_post_fn fn, void *arg)
{
    if (!p || !fn)
        return -EINVAL;
    struct goev__msg *m = goev__malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    m->kind = GOEV__M_POST;
    m->u.post.fn = fn;
    m->u.post.arg = arg;
    int rc = mq_push(p, m);
    if (rc < 0)
        goev__free(m);
    return rc;
}

int goev_broadcast(goev_reactor *r, goev_post_fn fn, void *arg)
{
    if (!r || !fn)
        return -EINVAL;
    for (int i = 0; i < r->npollers; i++) {
        int rc = goev_post(&r->pollers[i], fn, arg);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Queue an async write (kind WRITE) or close (kind CLOSE) for id. */
static int async_msg(goev_reactor *r, goev_conn_id id, uint8_t kind, const void *data, size_t len)
{
    uint32_t pi = goev__id_poller(id), slot = goev__id_slot(id), gen = goev__id_gen(id);
    if (!r || !gen || pi >= (uint32_t)r->npollers || (!data && len))
        return -EINVAL;
    goev_poller *p = &r->pollers[pi];
    /* Early answer for a connection already gone; a close that races with
     * this call is caught again on the poller, which checks the generation. */
    struct goev__conn *chunk = __atomic_load_n(&p->chunks[slot / GOEV__SLOT_CHUNK], __ATOMIC_ACQUIRE);
    if (!chunk ||
        goev__gen(goev__chunk_slot(p, chunk, slot % GOEV__SLOT_CHUNK)) != gen)
        return -ENOTCONN;
    struct goev__msg *m = goev__malloc(sizeof *m + len);
    if (!m)
        return -ENOMEM;
    m->kind = kind;
    m->u.write.id = id;
    m->u.write.len = len;
    if (len)
        memcpy(m->data, data, len);
    if (mq_push(p, m) < 0) {
        goev__free(m);
        return -ENOTCONN;
    }
    return 0;
}

int goev_async_write(goev_reactor *r, goev_conn_id id, const void *data, size_t len)
{
    return async_msg(r, id, GOEV__M_WRITE, data, len);
}

int goev_async_close(goev_reactor *r, goev_conn_id id)
{
    return async_msg(r, id, GOEV__M_CLOSE, NULL, 0);
}

/* Hand an accepted fd to p's thread (acceptor.c decides when). */
void goev__post_handoff(goev_poller *p, goev_acceptor *a, int fd)
{
    struct goev__msg *m = goev__malloc(sizeof *m);
    if (!m) {
        close(fd);
        return;
    }
    m->kind = GOEV__M_HANDOFF;
    m->u.handoff.fd = fd;
    m->u.handoff.a = a;
    if (mq_push(p, m) < 0) {     /* that reactor has stopped */
        goev__free(m);
        close(fd);
    }
}


/* ---- the loop ---------------------------------------------------------- */

static int next_timeout(goev_poller *p)
{
    uint64_t when = p->timers.n ? goev__heap_top_when(&p->timers) : UINT64_MAX;
    if (p->retry_at < when)
        when = p->retry_at;
    if (when == UINT64_MAX)
        return -1;
    if (when <= p->now_ms)
        return 0;
    uint64_t d = when - p->now_ms;
    return d > 3600000u ? 3600000 : (int)d;
}

static bool stopping(goev_reactor *r)
{
    return __atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) != 0;
}

/* A poller that cannot go on (its wait failed, its thread could not start)
 * stops the whole reactor, and goev_reactor_run / goev_reactor_wait return
 * the first such error: half a reactor that keeps accepting connections
 * for a dead poller would be worse. */
static void poller_failed(goev_poller *p, int err, const char *what)
{
    int zero = 0;
    p->failed = 1;
    __atomic_compare_exchange_n(&p->r->error, &zero, err, false, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
    goev__debug("%s %s failed on poller %d: %s; stopping the reactor", p->be->name, what,
                p->idx, strerror(-err));
    goev_reactor_stop(p->r);
}

static void poller_loop(goev_poller *p)
{
    goev_reactor *r = p->r;
    while (!stopping(r)) {
        p->now_ms = goev__now_ms();
        goev__run_timers(p);
        if (GOEV__UNLIKELY(p->retry_at <= p->now_ms))
            goev__listeners_retry(p);
        if (mq_nonempty(p))
            mq_drain(p, false);
        goev__run_later(p);
        goev__flush_dirty(p);

        __atomic_store_n(&p->sleeping, 1, __ATOMIC_SEQ_CST);
        int timeout = next_timeout(p);
        if (p->later || mq_nonempty(p) || stopping(r))
            timeout = 0;
        int rc = p->be->wait(p, timeout);
        __atomic_store_n(&p->sleeping, 0, __ATOMIC_RELAXED);
        GOEV__STAT_INC(p, passes);
        if (GOEV__UNLIKELY(rc < 0 && rc != -EINTR)) {
            poller_failed(p, rc, "wait");
            break;
        }
    }
}

/* Close everything p owns and wait (bounded) for the backend to let go.
 * Functions posted before the stop still run here, and they (or on_close
 * callbacks) may open connections or start timers: each round closes what
 * is open again.  The last round closes the queue, so nothing posted later
 * is left behind unrun and unfreed. */
bool goev__stopping(const goev_poller *p)
{
    return p->closing || stopping(p->r);
}

static void poller_shutdown(goev_poller *p)
{
    p->closing = 1;
    for (struct goev__listener *l = p->listeners; l; l = l->next)
        goev__listener_shutdown(l);
    uint64_t deadline = goev__now_ms() + 5000;
    bool closed = false;
    for (int round = 0;; round++) {
        for (;;) {
            goev__close_all(p, -ECANCELED);
            p->now_ms = goev__now_ms();
            goev__run_later(p);
            goev__flush_dirty(p);
            if (!p->nlive || p->now_ms > deadline)
                break;
            int rc = p->failed ? -EIO : p->be->wait(p, 10);
            if (rc < 0 && rc != -EINTR) {
                /* The backend is dead and will release nothing more: let
                 * go of its connections here (fds closed, on_close called);
                 * what the kernel still holds goes with the instance
                 * (poller_fini). */
                p->failed = 1;
                goev__abandon_all(p);
                goev__run_later(p);
            }
        }
        if (closed)
            break;
        struct goev__msg *m;
        if (round < 8 && mq_nonempty(p)) {
            m = mq_take(p, false);
        } else {
            m = mq_take(p, true);
            closed = true;
            if (!m)
                break;
        }
        mq_run(p, m, true);
    }
    goev__run_later(p);
    if (p->be->thread_stop)
        p->be->thread_stop(p);
    /* thread_stop reaps the last completions: what they released still gets
     * its on_close. */
    goev__run_later(p);
}

static void pin(goev_poller *p)
{
    const struct goev_reactor_opts *o = &p->r->opts;
    if (!o->pin_cpus)
        return;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((unsigned)((o->cpu_base + p->idx) % n), &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* sendfile(2) and splice have no MSG_NOSIGNAL: writing a file to a socket
 * whose peer has gone raises SIGPIPE on the writing thread.  Poller threads
 * of goev's own block every signal; the thread that calls goev_reactor_run
 * (or frees a reactor that never ran) is the application's, so SIGPIPE is
 * blocked there while goev works on it, and one that became pending
 * meanwhile is taken off before the mask is restored. */
struct sigpipe_guard {
    sigset_t old;
    bool was_pending;
};

static void sigpipe_block(struct sigpipe_guard *g)
{
    sigset_t pipe_set, pend;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &g->old);
    sigpending(&pend);
    g->was_pending = sigismember(&pend, SIGPIPE) == 1;
}

static void sigpipe_restore(struct sigpipe_guard *g)
{
    sigset_t pipe_set, pend;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pend);
    if (!g->was_pending && sigismember(&pend, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static void *poller_main(void *arg)
{
    goev_poller *p = arg;
    struct sigpipe_guard guard;
    sigpipe_block(&guard);
    tls_poller = p;
    pin(p);
    int rc = p->be->thread_start ? p->be->thread_start(p) : 0;
    if (rc < 0) {
        poller_failed(p, rc, "thread start");
    } else {
        poller_loop(p);
    }
    poller_shutdown(p);
    tls_poller = NULL;
    sigpipe_restore(&guard);
    return NULL;
}

static int start_threads(goev_reactor *r, int first)
{
    if (r->state != 0)
        return -EALREADY;
    r->threads = goev__calloc((size_t)r->npollers, sizeof *r->threads);
    if (!r->threads)
        return -ENOMEM;
    r->state = 1;
    /* Poller threads take no process signals: the application's handlers
     * run on its own threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    for (int i = first; i < r->npollers; i++) {
        rc = -pthread_create(&r->threads[i], NULL, poller_main, &r->pollers[i]);
        if (rc < 0) {
            goev_reactor_stop(r);
            for (int j = first; j < i; j++)
                pthread_join(r->threads[j], NULL);
            r->state = 2;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int goev_reactor_run(goev_reactor *r)
{
    if (!r)
        return -EINVAL;
    int rc = start_threads(r, 1);
    if (rc < 0)
        return rc;
    poller_main(&r->pollers[0]);
    for (int i = 1; i < r->npollers; i++)
        pthread_join(r->threads[i], NULL);
    r->state = 2;
    return __atomic_load_n(&r->error, __ATOMIC_SEQ_CST);
}

int goev_reactor_start(goev_reactor *r)
{
    if (!r)
        return -EINVAL;
    int rc = start_threads(r, 0);
    if (rc == 0)
        r->started_async = 1;
    return rc;
}

int goev_reactor_wait(goev_reactor *r)
{
    if (!r || !r->started_async)
        return -EINVAL;
    for (int i = 0; i < r->npollers; i++)
        pthread_join(r->threads[i], NULL);
    r->started_async = 0;
    r->state = 2;
    return __atomic_load_n(&r->error, __ATOMIC_SEQ_CST);
}

int goev_reactor_stop(goev_reactor *r)
{
    if (!r)
        return -EINVAL;
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < r->npollers; i++)
        poller_wake(&r->pollers[i]);
    return 0;
}

/* A reactor that never ran: close what was set up, as the pollers would
 * have, each poller in turn on one thread (see on_fresh_thread for why not
 * the caller's). */
static void *shutdown_unrun(void *arg)
{
    goev_reactor *r = arg;
    goev_poller *saved = tls_poller;   /* not on a fresh thread if none could be had */
    struct sigpipe_guard guard;
    sigpipe_block(&guard);
    for (int i = 0; i < r->npollers; i++) {
        goev_poller *p = &r->pollers[i];
        tls_poller = p;
        if (!p->be->thread_start || p->be->thread_start(p) == 0)
            poller_shutdown(p);
    }
    tls_poller = saved;
    sigpipe_restore(&guard);
    return NULL;
}

void goev_reactor_free(goev_reactor *r)
{
    if (!r)
        return;
    if (r->state == 0)
        on_fresh_thread(shutdown_unrun, r);
    for (int i = 0; i < r->npollers; i++)
        poller_fini(&r->pollers[i]);
    goev__free(r->pollers);
    goev__free(r->threads);
    goev__free(r);
}

/* ---- statistics ---------------------------------------------------------- */

int goev_stats_get(goev_reactor *r, int i, struct goev_stats *out)
{
    if (!r || !out || i < -1 || i >= r->npollers)
        return -EINVAL;
    enum { N = sizeof(struct goev_stats) / sizeof(uint64_t) };
    uint64_t *o = (uint64_t *)out;
    memset(out, 0, sizeof *out);
    for (int k = (i < 0 ? 0 : i); k < (i < 0 ? r->npollers : i + 1); k++) {
        const uint64_t *s = (const uint64_t *)&r->pollers[k].stats;
        for (int f = 0; f < N; f++)
            o[f] += __atomic_load_n(&s[f], __ATOMIC_RELAXED);
    }
    return 0;
}
