/* connect_pool.c - client connection pool: one per poller and address, no
 * locks.  Built on the public connector and timers; its connections are
 * ordinary goev connections whose handler is the pool's (struct pconn),
 * forwarding callbacks to the application while a connection is leased.
 *
 * All the pool's decisions (hand idle connections to waiters, trim idle
 * ones, start connects) are taken in one place, service(), run from a
 * zero-delay timer that every change arms ("kick"): no decision is taken
 * inside a call of the application's, so a release from inside on_read, an
 * acquire from inside a callback or a free from inside anything is safe. */
#include "goev-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A connection is on the list of its state until on_close; P_CLOSING ones
 * still hold a socket, so they count against max_live. */
enum pstate { P_GONE, P_CONNECTING, P_IDLE, P_ACQUIRED, P_CLOSING };

struct pconn {
    goev_handler h;         /* h.user is the application's during a lease */
    goev_pool *pool;
    struct pconn *prev, *next;  /* on the list of its state */
    uint64_t idle_since;
    uint8_t state;
    uint8_t in_read;        /* inside the application's on_read */
    uint8_t release_due;    /* goev_pool_release called during on_read */
    uint8_t release_reuse;
    uint8_t established;    /* on_open came */
};

struct plist {
    struct pconn *head, *tail;
    unsigned n;
};

struct goev_pool {
    goev_poller *p;
    struct goev_pool_opts o;
    char addr[GOEV_ADDRSTRLEN];
    char bind[GOEV_ADDRSTRLEN];
    char sni[256];          /* o.connect.tls_server_name, copied */
    goev_handler th;        /* owns the service timer and the waiters' timers */
    goev_timer svc;
    struct plist idle;      /* most recently released first */
    struct plist acquired;
    struct plist connecting;
    struct plist closing;
    goev_pool_req *wait_head, *wait_tail;
    unsigned nwaiting;
    unsigned peak;
    unsigned fails;         /* connects failed in a row */
    uint64_t backoff_until;
    uint64_t created, failed, closed, acquires, timeouts;
    int freed;
    int busy;               /* inside callbacks of the application's */
};

/* ---- lists ----------------------------------------------------------------- */

static void list_push_front(struct plist *l, struct pconn *pc)
{
    pc->prev = NULL;
    pc->next = l->head;
    if (l->head)
        l->head->prev = pc;
    else
        l->tail = pc;
    l->head = pc;
    l->n++;
}

static void list_remove(struct plist *l, struct pconn *pc)
{
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        l->head = pc->next;
    if (pc->next)
        pc->next->prev = pc->prev;
    else
        l->tail = pc->prev;
    pc->prev = pc->next = NULL;
    l->n--;
}

static struct plist *list_of(goev_pool *pool, struct pconn *pc)
{
    switch (pc->state) {
    case P_CONNECTING: return &pool->connecting;
    case P_IDLE: return &pool->idle;
    case P_ACQUIRED: return &pool->acquired;
    case P_CLOSING: return &pool->closing;
    default: return NULL;
    }
}

static void set_state(struct pconn *pc, enum pstate st)
{
    goev_pool *pool = pc->pool;
    struct plist *from = list_of(pool, pc);
    if (from)
        list_remove(from, pc);
    pc->state = (uint8_t)st;
    struct plist *to = list_of(pool, pc);
    if (to)
        list_push_front(to, pc);
}

/* Connections that are or will be usable. */
static unsigned usable(const goev_pool *pool)
{
    return pool->idle.n + pool->acquired.n + pool->connecting.n;
}

/* Every socket of the pool's: what max_live bounds. */
static unsigned open_or_opening(const goev_pool *pool)
{
    return pool->idle.n + pool->acquired.n + pool->connecting.n + pool->closing.n;
}

static void waiter_unlink(goev_pool *pool, goev_pool_req *req)
{
    if (req->prev_)
        req->prev_->next_ = req->next_;
    else
        pool->wait_head = req->next_;
    if (req->next_)
        req->next_->prev_ = req->prev_;
    else
        pool->wait_tail = req->prev_;
    req->prev_ = req->next_ = NULL;
    req->pool_ = NULL;
    pool->nwaiting--;
    goev_timer_cancel(&req->timer_);
}

/* Answer the first waiter; the request is idle again before its callback
 * runs, so the callback may reuse it. */
static void waiter_answer(goev_pool *pool, goev_handler *conn, int err)
{
    goev_pool_req *req = pool->wait_head;
    waiter_unlink(pool, req);
    pool->busy++;
    req->cb_(req, conn, err);
    pool->busy--;
}

/* ---- freeing ----------------------------------------------------------------- */

/* Free a freed pool once nothing refers to it: no connection left, the
 * timer handler closed, and no callback of ours on the stack. */
static void maybe_free(goev_pool *pool)
{
    if (pool->freed && !pool->busy && !open_or_opening(pool) && !pool->th.conn_) {
        goev_tls_ctx_free(pool->o.connect.tls);
        goev__free(pool);
    }
}

/* ---- the service pass ----------------------------------------------------- */

static void kick(goev_pool *pool)
{
    if (pool->freed || goev__stopping(pool->p))
        return;
    if (goev_timer_active(&pool->svc) && pool->svc.when_ <= pool->p->now_ms)
        return;
    /* Out of memory: the next event kicks again. */
    goev_timer_start(pool->p, &pool->th, &pool->svc, 0, 0);
}

static void hand_to(goev_pool *pool, struct pconn *pc)
{
    set_state(pc, P_ACQUIRED);
    pool->acquires++;
}

static uint64_t backoff_ms(const goev_pool *pool)
{
    uint64_t d = (uint64_t)pool->o.backoff_min_ms;
    for (unsigned i = 1; i < pool->fails && d < (uint64_t)pool->o.backoff_max_ms; i++)
        d *= 2;
    return d < (uint64_t)pool->o.backoff_max_ms ? d : (uint64_t)pool->o.backoff_max_ms;
}

static const struct goev_handler_ops pconn_ops;

/* A connect attempt failed (callback or at once): count it and back off. */
static void connect_failed(goev_pool *pool, int err)
{
    pool->failed++;
    pool->fails++;
    pool->backoff_until = pool->p->now_ms + backoff_ms(pool);
    /* Nothing open or opening: the waiters would only wait for the next
     * attempt, after the back-off; tell them now.  The ones queued during
     * the back-off get the attempt after it. */
    if (!usable(pool))
        while (pool->wait_head && !pool->freed)
            waiter_answer(pool, NULL, err);
}

static void start_connects(goev_pool *pool, unsigned n)
{
    struct goev_connect_opts co = pool->o.connect;
    co.timeout_ms = pool->o.connect_timeout_ms;
    co.bind_addr = pool->bind[0] ? pool->bind : NULL;
    co.tls_server_name = pool->sni[0] ? pool->sni : NULL;
    while (n-- && !pool->freed) {
        struct pconn *pc = goev__calloc(1, sizeof *pc);
        int rc = pc ? 0 : -ENOMEM;
        if (pc) {
            goev_handler_init(&pc->h, &pconn_ops);
            pc->pool = pool;
            rc = goev_connect_ex(pool->p, &pc->h, pool->addr, &co);
        }
        if (rc < 0) {
            goev__free(pc);
            connect_failed(pool, rc);
            /* No on_connect_fail will kick for this one: without a kick of
             * our own, nothing schedules the attempt after the back-off. */
            kick(pool);
            return;
        }
        set_state(pc, P_CONNECTING);
        unsigned now = open_or_opening(pool);
        if (now > pool->peak)
            pool->peak = now;
    }
}

static void refill(goev_pool *pool)
{
    const struct goev_pool_opts *o = &pool->o;
    int want_idle = o->min_idle - (int)pool->idle.n;
    int need = want_idle > (int)pool->nwaiting ? want_idle : (int)pool->nwaiting;
    need -= (int)pool->connecting.n;
    if (need <= 0)
        return;
    int room = o->max_live - (int)open_or_opening(pool);
    if (room <= 0)
        return;
    /* Go's addNumOnceTime: a batch per round; an empty pool fills to
     * min_idle at once. */
    int n = o->add_batch;
    if (!usable(pool) && o->min_idle > n)
        n = o->min_idle;
    start_connects(pool, (unsigned)(n < room ? n : room));
}

static void service(goev_pool *pool)
{
    goev_poller *p = pool->p;
    const struct goev_pool_opts *o = &pool->o;
    /* 1. Idle connections to waiters, first come first served.  A callback
     * may release, acquire or free: look at the pool again each time. */
    while (pool->wait_head && pool->idle.head && !pool->freed) {
        struct pconn *pc = pool->idle.head;
        hand_to(pool, pc);
        waiter_answer(pool, &pc->h, 0);
    }
    if (pool->freed || goev__stopping(p))
        return;
    /* 2. Idle too long: close the oldest, down to min_idle. */
    uint64_t next = UINT64_MAX;
    if (o->idle_timeout_ms > 0) {
        while (pool->idle.n > (unsigned)o->min_idle) {
            struct pconn *old = pool->idle.tail;
            uint64_t due = old->idle_since + (uint64_t)o->idle_timeout_ms;
            if (due > p->now_ms) {
                next = due;
                break;
            }
            set_state(old, P_CLOSING);
            goev_close(&old->h);
        }
    }
    /* 3. Connect more, unless backing off. */
    if (pool->backoff_until > p->now_ms) {
        int want_idle = o->min_idle - (int)pool->idle.n;
        if (want_idle > 0 || pool->nwaiting)
            next = pool->backoff_until < next ? pool->backoff_until : next;
    } else {
        refill(pool);
    }
    if (next != UINT64_MAX && !pool->freed)
        goev_timer_start(p, &pool->th, &pool->svc, next - p->now_ms, 0);
}

/* ---- the pool's internal handler (timers) --------------------------------- */

static int th_on_timeout(goev_handler *h, goev_timer *t)
{
    goev_pool *pool = h->user;
    if (t == &pool->svc) {
        service(pool);
        return 0;
    }
    goev_pool_req *req = goev__container_of(t, goev_pool_req, timer_);
    if (req->pool_ == pool) {
        pool->timeouts++;
        waiter_unlink(pool, req);
        req->cb_(req, NULL, -ETIMEDOUT);
    }
    return 0;
}

/* The timer handler closes at reactor stop (with the waiters' timers);
 * the next timer start re-attaches it. */
static void th_on_close(goev_handler *h, int reason)
{
    goev_pool *pool = h->user;
    /* Closed by the reactor's stop (the waiters' timers went with it):
     * nothing will answer the waiters any more. */
    if (goev__stopping(pool->p))
        while (pool->wait_head)
            waiter_answer(pool, NULL, -ECANCELED);
    maybe_free(pool);
}

static const struct goev_handler_ops th_ops = {
    .on_timeout = th_on_timeout,
    .on_close = th_on_close,
};

/* ---- pooled connections ----------------------------------------------------- */

static struct pconn *pc_of(goev_handler *h)
{
    return (struct pconn *)h;
}

static const struct goev_handler_ops *app(const struct pconn *pc)
{
    return pc->pool->o.ops;
}

static void lease_end(struct pconn *pc, int reuse, bool in_read);

static int pc_on_open(goev_handler *h)
{
    struct pconn *pc = pc_of(h);
    goev_pool *pool = pc->pool;
    pool->created++;
    pc->established = 1;
    pool->fails = 0;
    pool->backoff_until = 0;
    pc->idle_since = pool->p->now_ms;
    set_state(pc, P_IDLE);
    kick(pool);
    return 0;
}

static void pc_on_connect_fail(goev_handler *h, int err)
{
    struct pconn *pc = pc_of(h);
    goev_pool *pool = pc->pool;
    set_state(pc, P_CLOSING);   /* on_close follows and frees it */
    connect_failed(pool, err);
    kick(pool);
}

static ssize_t pc_on_read(goev_handler *h, const char *data, size_t len)
{
    struct pconn *pc = pc_of(h);
    if (pc->state == P_IDLE)
        return -EPROTO;     /* bytes nobody asked for: the stream is not reusable */
    if (pc->state != P_ACQUIRED)
        return (ssize_t)len;    /* closing after its lease: nobody's */
    pc->in_read = 1;
    pc->pool->busy++;
    ssize_t n = app(pc)->on_read(h, data, len);
    pc->pool->busy--;
    pc->in_read = 0;
    if (pc->release_due) {
        pc->release_due = 0;
        /* What on_read did not consume stays as input: not reusable. */
        lease_end(pc, pc->release_reuse && n >= 0 && (size_t)n == len, true);
    }
    return n;
}

static int pc_on_eof(goev_handler *h)
{
    struct pconn *pc = pc_of(h);
    if (pc->state == P_ACQUIRED && app(pc)->on_eof) {
        pc->pool->busy++;
        int rc = app(pc)->on_eof(h);
        pc->pool->busy--;
        return rc;
    }
    goev_close(h);      /* idle: leaves the pool; acquired: the lease ends */
    return 0;
}

static int pc_on_drained(goev_handler *h)
{
    struct pconn *pc = pc_of(h);
    if (pc->state == P_ACQUIRED && app(pc)->on_drained) {
        pc->pool->busy++;
        int rc = app(pc)->on_drained(h);
        pc->pool->busy--;
        return rc;
    }
    return 0;
}

static int pc_on_timeout(goev_handler *h, goev_timer *t)
{
    struct pconn *pc = pc_of(h);
    if (pc->state == P_ACQUIRED && app(pc)->on_timeout) {
        pc->pool->busy++;
        int rc = app(pc)->on_timeout(h, t);
        pc->pool->busy--;
        return rc;
    }
    return 0;
}

static void pc_on_close(goev_handler *h, int reason)
{
    struct pconn *pc = pc_of(h);
    goev_pool *pool = pc->pool;
    int was = pc->state;
    if (pc->established)
        pool->closed++;
    set_state(pc, P_GONE);
    if (was == P_ACQUIRED && app(pc)->on_close) {
        pool->busy++;
        app(pc)->on_close(h, reason);
        pool->busy--;
    }
    goev__free(pc);
    kick(pool);
    maybe_free(pool);
}

static const struct goev_handler_ops pconn_ops = {
    .on_open = pc_on_open,
    .on_read = pc_on_read,
    .on_eof = pc_on_eof,
    .on_drained = pc_on_drained,
    .on_timeout = pc_on_timeout,
    .on_connect_fail = pc_on_connect_fail,
    .on_close = pc_on_close,
};

/* ---- public -------------------------------------------------------------------- */

void goev_pool_opts_init(struct goev_pool_opts *o)
{
    memset(o, 0, sizeof *o);
    o->min_idle = 1;
    o->max_live = 64;
    o->add_batch = 4;
    o->connect_timeout_ms = 3000;
    o->idle_timeout_ms = 60000;
    o->backoff_min_ms = 100;
    o->backoff_max_ms = 10000;
    goev_connect_opts_init(&o->connect);
}

void goev_pool_req_init(goev_pool_req *req)
{
    memset(req, 0, sizeof *req);
    goev_timer_init(&req->timer_);
}

int goev_pool_new(goev_pool **out, goev_poller *p, const char *addr,
                  const struct goev_pool_opts *opts)
{
    struct goev_pool_opts o;
    struct sockaddr_storage ss;
    socklen_t len;
    if (!out || !p || !opts)
        return -EINVAL;
    *out = NULL;
    o = *opts;
    if (!o.ops || !o.ops->on_read || o.max_live < 1 || o.min_idle < 0 ||
        o.min_idle > o.max_live || o.add_batch < 1 || o.connect_timeout_ms < 0 ||
        o.idle_timeout_ms < 0 || o.backoff_min_ms < 0 || o.backoff_max_ms < o.backoff_min_ms)
        return -EINVAL;
    if (!addr || strlen(addr) >= GOEV_ADDRSTRLEN)
        return -EINVAL;
    if (goev__parse_addr(addr, &ss, &len) < 0) {
        int rc = goev__name_check(addr);     /* "host:port": each connect resolves it */
        if (rc < 0)
            return rc;
    }
    const char *bind = o.connect.bind_addr;
    if (bind && (goev__parse_addr(bind, &ss, &len) < 0 || strlen(bind) >= GOEV_ADDRSTRLEN))
        return -EINVAL;
    if (o.connect.tls && goev__tls_ctx_server(o.connect.tls))
        return -EINVAL;
    const char *sni = o.connect.tls_server_name;
    if (sni && (!*sni || strlen(sni) >= sizeof ((goev_pool *)0)->sni))
        return -EINVAL;
    goev_pool *pool = goev__calloc(1, sizeof *pool);
    if (!pool)
        return -ENOMEM;
    pool->p = p;
    pool->o = o;
    pool->o.connect.bind_addr = NULL;
    strcpy(pool->addr, addr);
    if (bind)
        strcpy(pool->bind, bind);
    pool->o.connect.tls_server_name = NULL;
    if (sni)
        strcpy(pool->sni, sni);
    goev_handler_init(&pool->th, &th_ops);
    pool->th.user = pool;
    goev_timer_init(&pool->svc);
    /* The first service pass starts the connects: without its timer the
     * pool would never fill (kick's "the next event kicks again" needs an
     * event, and nothing may come). */
    int rc = goev__stopping(p) ? 0 : goev_timer_start(p, &pool->th, &pool->svc, 0, 0);
    if (rc < 0) {
        goev__free(pool);
        return rc;
    }
    goev__tls_ctx_ref(pool->o.connect.tls);
    *out = pool;
    return 0;
}

goev_handler *goev_pool_try_acquire(goev_pool *pool)
{
    if (!pool || pool->freed || pool->wait_head || !pool->idle.head)
        return NULL;
    struct pconn *pc = pool->idle.head;
    hand_to(pool, pc);
    if (pool->idle.n < (unsigned)pool->o.min_idle)
        kick(pool);
    return &pc->h;
}

int goev_pool_acquire(goev_pool *pool, goev_pool_req *req, int timeout_ms, goev_pool_cb cb)
{
    if (!pool || !req || !cb)
        return -EINVAL;
    if (req->pool_)
        return -EBUSY;
    if (pool->freed || goev__stopping(pool->p))
        return -ESHUTDOWN;
    if (timeout_ms > 0) {
        int rc = goev_timer_start(pool->p, &pool->th, &req->timer_, (uint64_t)timeout_ms, 0);
        if (rc < 0)
            return rc;
    }
    req->cb_ = cb;
    req->pool_ = pool;
    req->next_ = NULL;
    req->prev_ = pool->wait_tail;
    if (pool->wait_tail)
        pool->wait_tail->next_ = req;
    else
        pool->wait_head = req;
    pool->wait_tail = req;
    pool->nwaiting++;
    kick(pool);
    return 0;
}

int goev_pool_cancel(goev_pool_req *req)
{
    if (!req || !req->pool_)
        return -ENOENT;
    waiter_unlink(req->pool_, req);
    return 0;
}

/* The application is done with pc: to idle, or closed.  in_read: called
 * as on_read returns, having consumed all it was given - which may be the
 * kept tail itself (c->in, still counted in in_len until the core takes
 * the bytes off), so in_len says nothing then. */
static void lease_end(struct pconn *pc, int reuse, bool in_read)
{
    goev_pool *pool = pc->pool;
    goev_handler *h = &pc->h;
    while (h->timers_)
        goev_timer_cancel(h->timers_);
    h->user = NULL;
    struct goev__conn *c = h->conn_;
    bool healthy = reuse && c && !pool->freed &&
                   !(c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT | GOEV__C_EOF |
                                 GOEV__C_SHUT_WANT | GOEV__C_SHUT_DONE)) &&
                   (in_read || c->in_len == 0);
    if (!healthy) {
        set_state(pc, P_CLOSING);
        goev_close(h);
        kick(pool);
        return;
    }
    if (c->flags & GOEV__C_PAUSED)
        goev_resume_read(h);    /* idle connections must see EOF and resets */
    pc->idle_since = pool->p->now_ms;
    set_state(pc, P_IDLE);
    kick(pool);
}

int goev_pool_release(goev_handler *conn, int reuse)
{
    if (!conn || conn->ops != &pconn_ops)
        return -EINVAL;
    struct pconn *pc = pc_of(conn);
    if (pc->state != P_ACQUIRED || pc->release_due)
        return -EINVAL;
    if (pc->in_read) {
        /* Whether input is left over is known when on_read returns. */
        pc->release_due = 1;
        pc->release_reuse = reuse != 0;
        return 0;
    }
    lease_end(pc, reuse != 0, false);
    return 0;
}

void goev_pool_free(goev_pool *pool)
{
    if (!pool || pool->freed)
        return;
    pool->freed = 1;
    while (pool->wait_head)
        waiter_answer(pool, NULL, -ECANCELED);
    /* Close from the heads: each close may take its connection off the
     * list at once (timer slots) or only in on_close, so walk snapshots. */
    struct plist *lists[] = {&pool->idle, &pool->connecting, &pool->acquired, &pool->closing};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        for (struct pconn *pc = lists[i]->head; pc; pc = pc->next)
            if (pc->h.conn_)
                goev__conn_close(pc->h.conn_, -ECANCELED);
    if (pool->th.conn_)
        goev__conn_close(pool->th.conn_, -ECANCELED);
    maybe_free(pool);
}

int goev_pool_stats_get(const goev_pool *pool, struct goev_pool_stats *st)
{
    if (!pool || !st)
        return -EINVAL;
    st->idle = pool->idle.n;
    st->acquired = pool->acquired.n;
    st->live = pool->idle.n + pool->acquired.n;
    st->connecting = pool->connecting.n;
    st->waiting = pool->nwaiting;
    st->peak = pool->peak;
    st->created = pool->created;
    st->failed = pool->failed;
    st->closed = pool->closed;
    st->acquires = pool->acquires;
    st->timeouts = pool->timeouts;
    return 0;
}
