/* resolve.c - connects by name ("host:port"): c-ares, driven by the
 * poller's own watches and timers, looks the name up; the connection tries
 * its addresses one after the other.
 *
 * One resolver per poller, made at the first name connect and freed with
 * the poller (poller_fini).  Its c-ares channel opens sockets through our
 * socket functions, so that goev decides when such an fd is really closed:
 * only once its watch has let go of it (on io_uring a poll in flight still
 * names the fd; closing it earlier could let c-ares reuse the number under
 * that poll).  The socket-state callback turns c-ares's interest into
 * goev_watch / goev_watch_update, and ares_timeout into one goev timer.
 *
 * Nothing of a connection's is done from inside c-ares: the lookup's
 * callback only records the answer and puts its connections on the later
 * list, and their next step (an attempt, the failure) runs from
 * goev__run_later, where application callbacks may do anything. */
#include "goev-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* "host:port" with a well-formed DNS name (letters, digits, '-', '_',
 * labels of 1..63 bytes, at most 253 in all, a final dot allowed) whose
 * last label is not all digits (that is a malformed numeric address). */
static int split_name(const char *s, char *host, size_t cap, uint16_t *port)
{
    if (!s || strncmp(s, "unix:", 5) == 0 || s[0] == '[')
        return -EINVAL;
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -EINVAL;
    size_t n = (size_t)(colon - s);
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    if (pl == 0 || pl > 5)
        return -EINVAL;
    unsigned v = 0;
    for (size_t i = 0; i < pl; i++) {
        if (ps[i] < '0' || ps[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(ps[i] - '0');
    }
    if (v > 65535)
        return -EINVAL;
    size_t end = n && s[n - 1] == '.' ? n - 1 : n;
    if (end == 0 || end > 253 || n >= cap)
        return -EINVAL;
    size_t label = 0;
    bool digits = true;
    for (size_t i = 0; i < end; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (label == 0)
                return -EINVAL;
            label = 0;
            digits = true;
            continue;
        }
        bool digit = ch >= '0' && ch <= '9';
        if (!digit && !(ch >= 'a' && ch <= 'z') && !(ch >= 'A' && ch <= 'Z') && ch != '-' &&
            ch != '_')
            return -EINVAL;
        digits = digits && digit;
        if (++label > 63)
            return -EINVAL;
    }
    if (label == 0 || digits)
        return -EINVAL;
    memcpy(host, s, n);
    host[n] = 0;
    *port = (uint16_t)v;
    return 0;
}

#ifndef GOEV_HAVE_CARES

int goev__name_check(const char *s)
{
    char host[256];
    uint16_t port;
    int rc = split_name(s, host, sizeof host, &port);
    return rc < 0 ? rc : GOEV_ENORESOLV;
}

int goev__resolve_start(struct goev__conn *c, const char *addr, const struct goev_connect_opts *o)
{
    (void)c, (void)addr, (void)o;
    return GOEV_ENORESOLV;
}

/* Without c-ares no slot is ever flagged GOEV__C_RESOLVING. */
bool goev__resolve_connected(struct goev__conn *c, int err)
{
    (void)err;
    c->flags &= ~GOEV__C_RESOLVING;
    return false;
}

bool goev__resolve_close(struct goev__conn *c, int reason)
{
    (void)reason;
    c->flags &= ~GOEV__C_RESOLVING;
    return false;
}

bool goev__resolve_released(struct goev__conn *c)
{
    c->flags &= ~GOEV__C_RESOLVING;
    return false;
}

void goev__resolve_later(struct goev__conn *c)
{
    c->flags &= ~GOEV__C_RESOLVING;
}

void goev__resolver_free(goev_poller *p)
{
    (void)p;
}

#else /* GOEV_HAVE_CARES */

#include <ares.h>
#include <netinet/in.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_ADDRS 16            /* addresses kept per name */
#define CACHE_MAX 64            /* names cached per poller */
#define CACHE_TTL_MAX 86400     /* seconds: a longer TTL is cut to this */

union rsa {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

struct raddrs {
    unsigned n;
    union rsa a[];
};

struct rcache {
    struct rcache *next;
    uint64_t expires;           /* poller ms */
    int family;
    struct raddrs *addrs;
    char name[];
};

struct rquery {
    struct rquery *next, *prev; /* the resolver's lookups in flight */
    struct goev__resolver *r;
    struct rconn *waiters;
    int family;
    char name[];
};

enum rstate {
    R_LOOKUP,   /* waiting for q (or, while the poller stops, for nothing) */
    R_ATTEMPT,  /* addrs[next - 1] is being connected to by the backend */
    R_ENDING,   /* that attempt failed; the backend is letting go of it */
    R_NEXT,     /* on the later list: try addrs[next], ... */
    R_FAILED,   /* on the later list: fail with err */
};

/* A connect by name, found by its slot in the resolver's table. */
struct rconn {
    struct goev__conn *c;
    struct rconn *hnext;
    struct rquery *q;
    struct rconn *qprev, *qnext;
    uint8_t state;
    uint8_t has_timeout;
    uint16_t port;
    int err;                    /* R_FAILED's error; else the last attempt's */
    unsigned next;
    struct raddrs *addrs;
    struct goev_connect_opts o; /* o.bind_addr points to bind */
    char bind[GOEV_ADDRSTRLEN];
};

/* A socket c-ares opened through sock_funcs. */
struct rsock {
    goev_handler h;             /* its watch; h.user = the rsock */
    struct rsock *next, *prev;
    struct goev__resolver *r;
    int fd;
    uint8_t watched;            /* the watch is attached (its on_close not come) */
    uint8_t closed;             /* c-ares closed it: close the fd once unwatched */
};

struct goev__resolver {
    goev_poller *p;
    ares_channel ch;
    int ai_flags;
    bool freeing;
    goev_handler th;            /* owns tick */
    goev_timer tick;            /* c-ares's next timeout */
    struct rsock *socks;
    struct rquery *queries;
    struct rcache *cache;
    unsigned ncache;
    struct rconn **tab;         /* by slot, chained */
    unsigned tabcap, nconns;
};

/* ---- connections' table ---------------------------------------------------- */

static struct rconn **bucket(struct goev__resolver *r, const struct goev__conn *c)
{
    return &r->tab[c->slot & (r->tabcap - 1)];
}

static struct rconn *rconn_find(const struct goev__conn *c)
{
    struct goev__resolver *r = c->p->resolver;
    if (!r)
        return NULL;
    for (struct rconn *rc = *bucket(r, c); rc; rc = rc->hnext)
        if (rc->c == c)
            return rc;
    return NULL;
}

static void tab_grow(struct goev__resolver *r)
{
    unsigned cap = r->tabcap * 2;
    struct rconn **t = goev__calloc(cap, sizeof *t);
    if (!t)
        return;     /* longer chains, still correct */
    for (unsigned i = 0; i < r->tabcap; i++) {
        struct rconn *rc = r->tab[i];
        while (rc) {
            struct rconn *next = rc->hnext;
            struct rconn **b = &t[rc->c->slot & (cap - 1)];
            rc->hnext = *b;
            *b = rc;
            rc = next;
        }
    }
    goev__free(r->tab);
    r->tab = t;
    r->tabcap = cap;
}

static void rconn_insert(struct goev__resolver *r, struct rconn *rc)
{
    if (r->nconns >= r->tabcap * 2)
        tab_grow(r);
    struct rconn **b = bucket(r, rc->c);
    rc->hnext = *b;
    *b = rc;
    r->nconns++;
    rc->c->flags |= GOEV__C_RESOLVING;
}

static void waiter_unlink(struct rconn *rc)
{
    struct rquery *q = rc->q;
    if (!q)
        return;
    if (rc->qprev)
        rc->qprev->qnext = rc->qnext;
    else
        q->waiters = rc->qnext;
    if (rc->qnext)
        rc->qnext->qprev = rc->qprev;
    rc->q = NULL;
    rc->qprev = rc->qnext = NULL;
}

/* Forget rc: the connection goes on (or ends) as an ordinary one. */
static void rconn_drop(struct rconn *rc)
{
    struct goev__resolver *r = rc->c->p->resolver;
    for (struct rconn **pp = bucket(r, rc->c); *pp; pp = &(*pp)->hnext) {
        if (*pp == rc) {
            *pp = rc->hnext;
            break;
        }
    }
    r->nconns--;
    waiter_unlink(rc);
    rc->c->flags &= ~GOEV__C_RESOLVING;
    goev__free(rc->addrs);
    goev__free(rc);
}

/* ---- errors -------------------------------------------------------------- */

static int map_status(int st)
{
    switch (st) {
    case ARES_SUCCESS: return 0;
    case ARES_ENOTFOUND:
    case ARES_ENODATA:
    case ARES_ENONAME: return GOEV_ENONAME;
    case ARES_ETIMEOUT: return GOEV_EDNSTIMEDOUT;
    case ARES_ENOMEM: return -ENOMEM;
    case ARES_EBADNAME: return -EINVAL;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION: return -ECANCELED;
    default: return GOEV_EDNSFAIL;
    }
}

/* ---- addresses and the cache --------------------------------------------- */

static struct raddrs *addrs_copy(const struct raddrs *a)
{
    size_t size = sizeof *a + a->n * sizeof a->a[0];
    struct raddrs *n = goev__malloc(size);
    if (n)
        memcpy(n, a, size);
    return n;
}

static void cache_free(struct rcache *e)
{
    goev__free(e->addrs);
    goev__free(e);
}

/* The live entry for (name, family); expired entries met are dropped. */
static struct rcache *cache_find(struct goev__resolver *r, const char *name, int family)
{
    uint64_t now = r->p->now_ms;
    for (struct rcache **pp = &r->cache; *pp;) {
        struct rcache *e = *pp;
        if (e->expires <= now) {
            *pp = e->next;
            r->ncache--;
            cache_free(e);
            continue;
        }
        if (e->family == family && strcasecmp(e->name, name) == 0)
            return e;
        pp = &e->next;
    }
    return NULL;
}

/* Keep a copy of a for ttl seconds (the entry that expires first makes
 * room when the cache is full). */
static void cache_put(struct goev__resolver *r, const char *name, int family,
                      const struct raddrs *a, int ttl)
{
    struct rcache *old = cache_find(r, name, family);
    if (old) {
        struct raddrs *n = addrs_copy(a);
        if (!n)
            return;
        goev__free(old->addrs);
        old->addrs = n;
        old->expires = r->p->now_ms + (uint64_t)ttl * 1000u;
        return;
    }
    if (r->ncache >= CACHE_MAX) {
        struct rcache **first = &r->cache;
        for (struct rcache **pp = &r->cache; *pp; pp = &(*pp)->next)
            if ((*pp)->expires < (*first)->expires)
                first = pp;
        struct rcache *e = *first;
        *first = e->next;
        r->ncache--;
        cache_free(e);
    }
    size_t nl = strlen(name) + 1;
    struct rcache *e = goev__malloc(sizeof *e + nl);
    if (!e)
        return;
    if (!(e->addrs = addrs_copy(a))) {
        goev__free(e);
        return;
    }
    memcpy(e->name, name, nl);
    e->family = family;
    e->expires = r->p->now_ms + (uint64_t)ttl * 1000u;
    e->next = r->cache;
    r->cache = e;
    r->ncache++;
}

/* c-ares's answer as addresses (port 0), and its smallest TTL. */
static struct raddrs *addrs_of(const struct ares_addrinfo *res, int *ttl)
{
    unsigned n = 0;
    *ttl = CACHE_TTL_MAX;
    for (const struct ares_addrinfo_node *nd = res ? res->nodes : NULL; nd; nd = nd->ai_next)
        if (nd->ai_family == AF_INET || nd->ai_family == AF_INET6)
            n++;
    if (n > MAX_ADDRS)
        n = MAX_ADDRS;
    struct raddrs *a = goev__calloc(1, sizeof *a + n * sizeof a->a[0]);
    if (!a)
        return NULL;
    for (const struct ares_addrinfo_node *nd = res ? res->nodes : NULL; nd && a->n < n;
         nd = nd->ai_next) {
        union rsa *u = &a->a[a->n];
        if (nd->ai_family == AF_INET && nd->ai_addrlen >= sizeof u->in)
            memcpy(&u->in, nd->ai_addr, sizeof u->in);
        else if (nd->ai_family == AF_INET6 && nd->ai_addrlen >= sizeof u->in6)
            memcpy(&u->in6, nd->ai_addr, sizeof u->in6);
        else
            continue;
        a->n++;
        if (nd->ai_ttl < *ttl)
            *ttl = nd->ai_ttl;
    }
    return a;
}

/* ---- attempts --------------------------------------------------------------- */

/* Start connecting to the next address that does not fail at once.
 * 0, or the last address's error when none is left. */
static int try_next(struct rconn *rc)
{
    struct goev__conn *c = rc->c;
    while (rc->next < rc->addrs->n) {
        union rsa a = rc->addrs->a[rc->next++];
        socklen_t len;
        if (a.sa.sa_family == AF_INET6) {
            a.in6.sin6_port = htons(rc->port);
            len = sizeof a.in6;
        } else {
            a.in.sin_port = htons(rc->port);
            len = sizeof a.in;
        }
        int err = goev__connect_attempt(c, &a.sa, len, &rc->o);
        if (err == 0) {
            rc->state = R_ATTEMPT;
            return 0;
        }
        rc->err = err;
        if (rc->next < rc->addrs->n)
            GOEV__STAT_INC(c->p, connect_next);
    }
    return rc->err ? rc->err : GOEV_ENONAME;
}

void goev__resolve_later(struct goev__conn *c)
{
    struct rconn *rc = rconn_find(c);
    if (!rc) {
        c->flags &= ~GOEV__C_RESOLVING;
        return;
    }
    int err;
    if (rc->state == R_NEXT) {
        if ((err = try_next(rc)) == 0)
            return;
    } else if (rc->state == R_FAILED) {
        err = rc->err;
    } else {
        return;
    }
    rconn_drop(rc);
    goev__on_connected(c, err);
}

bool goev__resolve_connected(struct goev__conn *c, int err)
{
    struct rconn *rc = rconn_find(c);
    if (!rc) {
        c->flags &= ~GOEV__C_RESOLVING;
        return false;
    }
    /* The connect's own timeout covers the whole: no next address then. */
    bool timed_out = err == -ETIMEDOUT && rc->has_timeout &&
                     !(c->cx && goev_timer_active(&c->cx->timer));
    if (err && rc->state == R_ATTEMPT && !timed_out && rc->next < rc->addrs->n &&
        !goev__stopping(c->p)) {
        rc->err = err;
        rc->state = R_ENDING;
        GOEV__STAT_INC(c->p, connect_next);
        c->flags |= GOEV__C_CLOSING;
        c->p->be->conn_close(c);    /* -> goev__resolve_released */
        return true;
    }
    rconn_drop(rc);
    return false;
}

bool goev__resolve_released(struct goev__conn *c)
{
    struct rconn *rc = rconn_find(c);
    if (!rc || rc->state != R_ENDING) {
        if (rc)
            rconn_drop(rc);
        c->flags &= ~GOEV__C_RESOLVING;
        return false;
    }
    /* The backend is done with the attempt: to it the slot is a fresh one
     * again (conn_priv zeroed, as when a slot is taken). */
    c->flags &= ~GOEV__C_CLOSING;
    memset(goev__conn_priv(c), 0, c->p->slot_stride - GOEV__CONN_SIZE);
    rc->state = R_NEXT;
    goev__push_later(c);
    return true;
}

bool goev__resolve_close(struct goev__conn *c, int reason)
{
    (void)reason;
    struct rconn *rc = rconn_find(c);
    if (rc) {
        /* An attempt still being let go of: the close takes it over (the
         * backend's conn_close is idempotent until the release). */
        if (rc->state == R_ENDING)
            c->flags &= ~GOEV__C_CLOSING;
        rconn_drop(rc);     /* a lookup in flight goes on for the cache */
    }
    c->flags &= ~GOEV__C_RESOLVING;
    return false;
}

/* ---- c-ares's sockets ------------------------------------------------------ */

static struct rsock *sock_find(struct goev__resolver *r, int fd)
{
    for (struct rsock *rs = r->socks; rs; rs = rs->next)
        if (rs->fd == fd)
            return rs;
    return NULL;
}

static void sock_free(struct rsock *rs)
{
    struct goev__resolver *r = rs->r;
    if (rs->prev)
        rs->prev->next = rs->next;
    else
        r->socks = rs->next;
    if (rs->next)
        rs->next->prev = rs->prev;
    close(rs->fd);
    goev__free(rs);
}

static void rearm(struct goev__resolver *r);

static int sock_on_ready(goev_handler *h, unsigned events)
{
    struct rsock *rs = h->user;
    struct goev__resolver *r = rs->r;
    /* An error or hang-up: let c-ares read (and write, for a TCP connect)
     * to learn it. */
    bool err = events & GOEV_ERROR;
    ares_socket_t rfd = (events & GOEV_READ) || err ? rs->fd : ARES_SOCKET_BAD;
    ares_socket_t wfd = (events & GOEV_WRITE) || err ? rs->fd : ARES_SOCKET_BAD;
    ares_process_fd(r->ch, rfd, wfd);
    rearm(r);
    return 0;
}

static void sock_on_close(goev_handler *h, int reason)
{
    (void)reason;
    struct rsock *rs = h->user;
    rs->watched = 0;
    /* Closed by the poller's stop while c-ares still has it: keep the fd
     * for c-ares, which closes it at the latest in ares_destroy. */
    if (rs->closed)
        sock_free(rs);
}

static const struct goev_handler_ops sock_ops = {
    .on_ready = sock_on_ready,
    .on_close = sock_on_close,
};

static ares_socket_t s_socket(int domain, int type, int protocol, void *ud)
{
    struct goev__resolver *r = ud;
    struct rsock *rs = goev__calloc(1, sizeof *rs);
    if (!rs) {
        errno = ENOMEM;
        return ARES_SOCKET_BAD;
    }
    int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
    GOEV__STAT_INC(r->p, sys_other);
    if (fd < 0) {
        int e = errno;
        goev__free(rs);
        errno = e;
        return ARES_SOCKET_BAD;
    }
    goev_handler_init(&rs->h, &sock_ops);
    rs->h.user = rs;
    rs->r = r;
    rs->fd = fd;
    rs->next = r->socks;
    if (r->socks)
        r->socks->prev = rs;
    r->socks = rs;
    return fd;
}

static int s_close(ares_socket_t fd, void *ud)
{
    struct goev__resolver *r = ud;
    struct rsock *rs = sock_find(r, fd);
    if (!rs)
        return close(fd);
    rs->closed = 1;
    if (rs->watched && !r->freeing)
        goev_close(&rs->h);     /* sock_on_close closes the fd */
    else
        sock_free(rs);
    return 0;
}

static int s_connect(ares_socket_t fd, const struct sockaddr *sa, ares_socklen_t len, void *ud)
{
    struct goev__resolver *r = ud;
    GOEV__STAT_INC(r->p, sys_other);
    return connect(fd, sa, len);
}

static ares_ssize_t s_recvfrom(ares_socket_t fd, void *buf, size_t len, int flags,
                               struct sockaddr *from, ares_socklen_t *fromlen, void *ud)
{
    struct goev__resolver *r = ud;
    GOEV__STAT_INC(r->p, sys_read);
    return recvfrom(fd, buf, len, flags, from, fromlen);
}

static ares_ssize_t s_sendv(ares_socket_t fd, const struct iovec *iov, int n, void *ud)
{
    struct goev__resolver *r = ud;
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    GOEV__STAT_INC(r->p, sys_write);
    return sendmsg(fd, &m, MSG_NOSIGNAL);
}

static const struct ares_socket_functions sock_funcs = {
    .asocket = s_socket,
    .aclose = s_close,
    .aconnect = s_connect,
    .arecvfrom = s_recvfrom,
    .asendv = s_sendv,
};

/* c-ares wants to know when fd is readable / writable (neither: it is done
 * with it for now). */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct goev__resolver *r = data;
    struct rsock *rs = r->freeing ? NULL : sock_find(r, fd);
    if (!rs)
        return;     /* ares_destroy: the poller and its watches are gone */
    unsigned want = (readable ? GOEV_READ : 0u) | (writable ? GOEV_WRITE : 0u);
    if (rs->watched) {
        goev_watch_update(&rs->h, want);    /* -EINVAL while closing: moot */
        return;
    }
    if (!want || r->freeing || goev__stopping(r->p))
        return;
    int rc = goev_watch(r->p, &rs->h, fd, want | GOEV_WATCH_KEEP_FD);
    if (rc == 0)
        rs->watched = 1;
    else        /* its lookups end at their timeouts, from the timer */
        goev__debug("resolver on poller %d: cannot watch fd %d: %s", r->p->idx, fd,
                    strerror(-rc));
}

/* ---- c-ares's timeouts ------------------------------------------------------ */

static int tick_on_timeout(goev_handler *h, goev_timer *t)
{
    (void)t;
    struct goev__resolver *r = h->user;
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm(r);
    return 0;
}

static const struct goev_handler_ops tick_ops = {.on_timeout = tick_on_timeout};

/* After every call into c-ares: its next timeout, rounded up to the
 * millisecond (rounding down would wake the poller early and in vain). */
static void rearm(struct goev__resolver *r)
{
    if (r->freeing)
        return;
    struct timeval tv, *t = ares_timeout(r->ch, NULL, &tv);
    if (!t) {
        goev_timer_cancel(&r->tick);
        return;
    }
    if (goev__stopping(r->p))
        return;
    uint64_t ms = (uint64_t)t->tv_sec * 1000u + ((uint64_t)t->tv_usec + 999u) / 1000u;
    int rc = goev_timer_start(r->p, &r->th, &r->tick, ms, 0);
    if (rc < 0)     /* no memory: the next socket event or lookup re-arms */
        goev__debug("resolver on poller %d: no timer: %s", r->p->idx, strerror(-rc));
}

/* ---- lookups -------------------------------------------------------------- */

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    struct rquery *q = arg;
    struct goev__resolver *r = q->r;
    if (q->prev)
        q->prev->next = q->next;
    else
        r->queries = q->next;
    if (q->next)
        q->next->prev = q->prev;
    int err = map_status(status);
    int ttl = 0;
    struct raddrs *a = NULL;
    if (!err) {
        a = addrs_of(res, &ttl);
        if (!a)
            err = -ENOMEM;
        else if (!a->n)
            err = GOEV_ENONAME;
        else if (ttl > 0 && !r->freeing)
            cache_put(r, q->name, q->family, a, ttl < CACHE_TTL_MAX ? ttl : CACHE_TTL_MAX);
    }
    if (res)
        ares_freeaddrinfo(res);
    while (q->waiters) {
        struct rconn *rc = q->waiters;
        waiter_unlink(rc);
        if (r->freeing)
            continue;       /* the poller is gone; so are its connections */
        if (!err && !(rc->addrs = addrs_copy(a))) {
            rc->state = R_FAILED;
            rc->err = -ENOMEM;
        } else if (err) {
            rc->state = R_FAILED;
            rc->err = err;
        } else {
            rc->state = R_NEXT;
        }
        goev__push_later(rc->c);
    }
    goev__free(a);
    goev__free(q);
}

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_status;

static void lib_init(void)
{
    lib_status = ares_library_init(ARES_LIB_INIT_ALL);
}

static int resolver_new(goev_poller *p)
{
    pthread_once(&lib_once, lib_init);
    if (lib_status != ARES_SUCCESS)
        return -ENOMEM;
    const char *conf = secure_getenv("GOEV_RESOLV_CONF");
    const char *servers = secure_getenv("GOEV_DNS_SERVERS");
    if (conf && *conf && access(conf, R_OK) < 0) {
        int e = errno;
        goev__debug("GOEV_RESOLV_CONF=%s: %s", conf, strerror(e));
        return -e;
    }
    struct goev__resolver *r = goev__calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->p = p;
    r->tabcap = 64;
    if (!(r->tab = goev__calloc(r->tabcap, sizeof *r->tab))) {
        goev__free(r);
        return -ENOMEM;
    }
    struct ares_options o;
    memset(&o, 0, sizeof o);
    int mask = ARES_OPT_SOCK_STATE_CB;
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = r;
    if (conf && *conf) {
        o.resolvconf_path = (char *)conf;
        mask |= ARES_OPT_RESOLVCONF;
    }
    int st = ares_init_options(&r->ch, &o, mask);
    if (st == ARES_SUCCESS) {
        ares_set_socket_functions(r->ch, &sock_funcs, r);
        if (servers && *servers && (st = ares_set_servers_ports_csv(r->ch, servers)) != ARES_SUCCESS) {
            goev__debug("GOEV_DNS_SERVERS=%s: %s", servers, ares_strerror(st));
            ares_destroy(r->ch);
            goev__free(r->tab);
            goev__free(r);
            return st == ARES_ENOMEM ? -ENOMEM : -EINVAL;
        }
    } else {
        goev__debug("resolver on poller %d: ares_init_options: %s", p->idx, ares_strerror(st));
        goev__free(r->tab);
        goev__free(r);
        return st == ARES_ENOMEM ? -ENOMEM : GOEV_EDNSFAIL;
    }
    r->ai_flags = secure_getenv("CARES_HOSTS") ? ARES_AI_ENVHOSTS : 0;
    goev_handler_init(&r->th, &tick_ops);
    r->th.user = r;
    goev_timer_init(&r->tick);
    p->resolver = r;
    return 0;
}

int goev__name_check(const char *s)
{
    char host[256];
    uint16_t port;
    return split_name(s, host, sizeof host, &port);
}

int goev__resolve_start(struct goev__conn *c, const char *addr, const struct goev_connect_opts *o)
{
    goev_poller *p = c->p;
    char host[256];
    uint16_t port;
    int rc = split_name(addr, host, sizeof host, &port);
    if (rc < 0)
        return rc;
    int family = AF_UNSPEC;
    if (o->bind_addr) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (strlen(o->bind_addr) >= GOEV_ADDRSTRLEN || goev__parse_addr(o->bind_addr, &ss, &len) < 0 ||
            (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
            return -EINVAL;
        family = ss.ss_family;
    }
    if (!p->resolver && (rc = resolver_new(p)) < 0)
        return rc;
    struct goev__resolver *r = p->resolver;
    struct rconn *w = goev__calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->c = c;
    w->port = port;
    w->has_timeout = o->timeout_ms > 0;
    w->o = *o;
    if (o->bind_addr) {
        strcpy(w->bind, o->bind_addr);
        w->o.bind_addr = w->bind;
    }
    w->state = R_LOOKUP;
    rconn_insert(r, w);
    /* Stopping: the next round of the stop closes c (-ECANCELED); a lookup
     * now would only be cancelled with it. */
    if (goev__stopping(p))
        return 0;

    struct rcache *e = cache_find(r, host, family);
    if (e) {
        GOEV__STAT_INC(p, resolve_hits);
        if (!(w->addrs = addrs_copy(e->addrs))) {
            rconn_drop(w);
            return -ENOMEM;
        }
        /* As a numeric address: connecting at once, or the error now. */
        if ((rc = try_next(w)) < 0)
            rconn_drop(w);
        return rc;
    }
    struct rquery *q;
    for (q = r->queries; q; q = q->next)
        if (q->family == family && strcasecmp(q->name, host) == 0)
            break;
    bool fresh = !q;
    if (fresh) {
        size_t nl = strlen(host) + 1;
        if (!(q = goev__calloc(1, sizeof *q + nl))) {
            rconn_drop(w);
            return -ENOMEM;
        }
        memcpy(q->name, host, nl);
        q->r = r;
        q->family = family;
        q->next = r->queries;
        if (r->queries)
            r->queries->prev = q;
        r->queries = q;
    }
    w->q = q;
    w->qnext = q->waiters;
    if (q->waiters)
        q->waiters->qprev = w;
    q->waiters = w;
    if (fresh) {
        struct ares_addrinfo_hints hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = family;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = r->ai_flags;
        GOEV__STAT_INC(p, resolves);
        /* May answer at once (hosts file, errors): on_addrinfo then puts c
         * on the later list, so the outcome still comes from the loop. */
        ares_getaddrinfo(r->ch, q->name, NULL, &hints, on_addrinfo, q);
        rearm(r);
    }
    return 0;
}

void goev__resolver_free(goev_poller *p)
{
    struct goev__resolver *r = p->resolver;
    if (!r)
        return;
    r->freeing = true;
    /* Every connection closed at the stop, which dropped its rconn; the
     * lookups still in flight end here (ARES_EDESTRUCTION), and c-ares
     * closes its sockets through s_close. */
    ares_destroy(r->ch);
    while (r->socks)
        sock_free(r->socks);
    for (unsigned i = 0; i < r->tabcap; i++) {
        while (r->tab[i]) {
            struct rconn *rc = r->tab[i];
            r->tab[i] = rc->hnext;
            rc->c->flags &= ~GOEV__C_RESOLVING;
            goev__free(rc->addrs);
            goev__free(rc);
        }
    }
    while (r->cache) {
        struct rcache *e = r->cache;
        r->cache = e->next;
        cache_free(e);
    }
    goev__free(r->tab);
    goev__free(r);
    p->resolver = NULL;
}

#endif /* GOEV_HAVE_CARES */
