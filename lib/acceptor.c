/* acceptor.c - listening sockets, their options, the EMFILE back-off and the
 * hand-off of accepted connections to the pollers of a (maybe other)
 * reactor.  The backends only accept; what happens next is decided here. */
#include "goev-internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

struct goev_acceptor {
    goev_reactor *accept_r, *conn_r;
    goev_new_handler_fn new_handler;
    void *arg;
    struct goev_acceptor_opts o;
    int port;
    int local;              /* reuseport on one reactor: keep what you accept */
    uint32_t rr;            /* atomic: round-robin cursor */
    char unix_path[108];
    int nl;
    struct goev__listener l[];
};


void goev_acceptor_opts_init(struct goev_acceptor_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backlog = 4096;
    o->reuseaddr = 1;
    o->unlink_unix = 1;
}

int goev_acceptor_port(const goev_acceptor *a)
{
    return a ? a->port : 0;
}

static int listen_one(goev_acceptor *a, const struct sockaddr_storage *ss, socklen_t len, int *out)
{
    const struct goev_acceptor_opts *o = &a->o;
    int one = 1;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (ss->ss_family != AF_UNIX) {
        if (o->reuseaddr)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
            goto fail;
        /* Linux copies TCP_NODELAY from the listener to every accepted
         * socket: one setsockopt here instead of one per connection. */
        if (!o->no_nodelay)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (ss->ss_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    if (o->rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &o->rcvbuf, sizeof o->rcvbuf) < 0)
        goto fail;
    if (o->sndbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &o->sndbuf, sizeof o->sndbuf) < 0)
        goto fail;
    if (ss->ss_family != AF_UNIX && o->keepalive_idle) {
        int rc = goev__sock_keepalive(fd, o->keepalive_idle, o->keepalive_interval,
                                      o->keepalive_count);
        if (rc < 0) {
            close(fd);
            return rc;
        }
    }
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, o->backlog) < 0)
        goto fail;
    *out = fd;
    return 0;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

static int backoff_done(goev_handler *bh, goev_timer *t)
{
    struct goev__listener *l = bh->user;
    (void)t;
    l->paused = 0;
    int rc = l->p->be->listen_start(l);
    if (rc < 0)     /* still starved: try again later */
        goev__on_accept_error(l, rc == -ENOMEM ? -ENOMEM : -ENOBUFS);
    return 0;
}

static const struct goev_handler_ops backoff_ops = { .on_timeout = backoff_done };

int goev_acceptor_new(goev_acceptor **out, goev_reactor *accept_r, goev_reactor *conn_r,
                      const char *addr, const struct goev_acceptor_opts *opts,
                      goev_new_handler_fn new_handler, void *arg)
{
    if (!out || !accept_r || !new_handler)
        return -EINVAL;
    *out = NULL;
    if (!conn_r)
        conn_r = accept_r;
    struct goev_acceptor_opts o;
    if (opts)
        o = *opts;
    else
        goev_acceptor_opts_init(&o);
    if (o.backlog <= 0)
        o.backlog = 4096;
    if (o.backoff_ms <= 0)
        o.backoff_ms = 100;

    struct sockaddr_storage ss;
    socklen_t len;
    int rc = goev__parse_addr(addr, &ss, &len);
    if (rc < 0)
        return rc;
    if (ss.ss_family == AF_UNIX)
        o.reuseport = 0;
    if (o.tls && !goev__tls_ctx_server(o.tls))
        return -EINVAL;     /* a client context cannot serve */
    int nl = o.reuseport ? accept_r->npollers : 1;
    goev_acceptor *a = goev__calloc(1, sizeof *a + (size_t)nl * sizeof a->l[0]);
    if (!a)
        return -ENOMEM;
    a->accept_r = accept_r;
    a->conn_r = conn_r;
    a->new_handler = new_handler;
    a->arg = arg;
    a->o = o;
    goev__tls_ctx_ref(o.tls);   /* dropped where a is freed */
    a->local = o.reuseport && accept_r == conn_r;
    for (int i = 0; i < nl; i++)
        a->l[i].fd = -1;

    if (ss.ss_family == AF_UNIX && o.unlink_unix)
        unlink(((const struct sockaddr_un *)&ss)->sun_path);
    for (int i = 0; i < nl; i++) {
        rc = listen_one(a, &ss, len, &a->l[i].fd);
        if (rc < 0)
            goto fail;
        /* Only a socket file we bound is ours to remove later. */
        if (ss.ss_family == AF_UNIX)
            memcpy(a->unix_path, ((const struct sockaddr_un *)&ss)->sun_path, sizeof a->unix_path);
        if (i == 0 && ss.ss_family != AF_UNIX) {
            /* Port 0: the others must share the port the kernel chose. */
            struct sockaddr_storage got;
            socklen_t gl = sizeof got;
            getsockname(a->l[0].fd, (struct sockaddr *)&got, &gl);
            uint16_t port = got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                      : ((struct sockaddr_in *)&got)->sin_port;
            a->port = ntohs(port);
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = port;
            else
                ((struct sockaddr_in *)&ss)->sin_port = port;
        }
    }
    a->nl = nl;
    for (int i = 0; i < nl; i++) {
        struct goev__listener *l = &a->l[i];
        l->a = a;
        l->p = &accept_r->pollers[i];
        goev_handler_init(&l->bh, &backoff_ops);
        l->bh.user = l;
        l->bh.poller_ = l->p;
        goev_timer_init(&l->backoff);
        rc = l->p->be->listen_start(l);
        if (rc < 0) {
            a->nl = i;
            goev_acceptor_free(a);
            return rc;
        }
        l->next = l->p->listeners;
        l->p->listeners = l;
    }
    *out = a;
    return 0;
fail:
    for (int i = 0; i < nl; i++)
        if (a->l[i].fd >= 0)
            close(a->l[i].fd);
    if (a->unix_path[0])
        unlink(a->unix_path);
    goev_tls_ctx_free(a->o.tls);
    goev__free(a);
    return rc;
}

/* Stop accepting for good (reactor stop, acceptor free). */
void goev__listener_shutdown(struct goev__listener *l)
{
    goev_timer_cancel(&l->backoff);
    l->retry_at = 0;
    if (!l->paused && l->fd >= 0) {
        l->p->be->listen_stop(l);
        l->paused = 1;
    }
}

void goev_acceptor_free(goev_acceptor *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->nl; i++) {
        struct goev__listener *l = &a->l[i];
        goev__listener_shutdown(l);
        for (struct goev__listener **pp = &l->p->listeners; *pp; pp = &(*pp)->next)
            if (*pp == l) {
                *pp = l->next;
                break;
            }
        close(l->fd);
    }
    if (a->unix_path[0])
        unlink(a->unix_path);
    goev_tls_ctx_free(a->o.tls);
    goev__free(a);
}

/* Make the handler and open the connection on fd (cflags: GOEV__C_DIRECT
 * or 0).  0, or a negative errno and fd is still the caller's. */
static int adopt_new(goev_poller *p, goev_acceptor *a, int fd, uint32_t cflags)
{
    goev_handler *h = a->new_handler(p, a->arg);
    if (!h)
        return -ENOMEM;
    int rc = goev__adopt(p, h, fd, false, cflags, a->o.tls);
    /* The handler was made for this connection: let its owner free it. */
    if (rc < 0 && h->ops && h->ops->on_close)
        h->ops->on_close(h, rc);
    return rc;
}

/* On the target poller's thread: make the handler and open the connection. */
void goev__handoff(goev_poller *p, goev_acceptor *a, int fd)
{
    if (adopt_new(p, a, fd, 0) < 0) {
        close(fd);
        GOEV__STAT_INC(p, sys_other);
    }
}

bool goev__listener_local(const struct goev__listener *l)
{
    const goev_acceptor *a = l->a;
    return a->local || (a->conn_r->npollers == 1 && &a->conn_r->pollers[0] == l->p);
}

int goev__on_accept_direct(struct goev__listener *l, int idx)
{
    goev__assert(goev__listener_local(l));
    GOEV__STAT_INC(l->p, accepted);
    return adopt_new(l->p, l->a, idx, GOEV__C_DIRECT);
}

void goev__on_accept(struct goev__listener *l, int fd)
{
    goev_acceptor *a = l->a;
    goev_poller *p = l->p;
    GOEV__STAT_INC(p, accepted);
    goev_poller *target = p;
    if (!a->local) {
        goev_reactor *cr = a->conn_r;
        uint32_t n = __atomic_fetch_add(&a->rr, 1, __ATOMIC_RELAXED);
        target = &cr->pollers[n % (uint32_t)cr->npollers];
    }
    if (target == p)
        goev__handoff(p, a, fd);
    else
        goev__post_handoff(target, a, fd);
}

/* Out of descriptors or memory: accepting again at once would spin (the
 * pending connection keeps the listener readable), so pause for a while. */
void goev__on_accept_error(struct goev__listener *l, int err)
{
    if (err != -EMFILE && err != -ENFILE && err != -ENOBUFS && err != -ENOMEM)
        return;
    goev_poller *p = l->p;
    GOEV__STAT_INC(p, accept_backoffs);
    if (!l->paused) {
        p->be->listen_stop(l);
        l->paused = 1;
    }
    uint64_t delay = (uint64_t)l->a->o.backoff_ms;
    if (goev__timer_arm(p, &l->bh, &l->backoff, delay) == 0)
        return;
    /* No memory for the timer either: the loop itself wakes up for this
     * listener when the back-off is over (goev__listeners_retry), so a
     * starved listener is never paused for good. */
    l->retry_at = goev__deadline(p->now_ms, delay);
    if (l->retry_at < p->retry_at)
        p->retry_at = l->retry_at;
}

/* Resume the listeners whose back-off timer could not be armed and whose
 * back-off is over; called by the loop once p->retry_at has passed. */
void goev__listeners_retry(goev_poller *p)
{
    p->retry_at = UINT64_MAX;
    for (struct goev__listener *l = p->listeners; l; l = l->next) {
        if (!l->retry_at)
            continue;
        if (l->retry_at <= p->now_ms) {
            l->retry_at = 0;
            backoff_done(&l->bh, &l->backoff);  /* may set a new retry_at */
        }
        if (l->retry_at && l->retry_at < p->retry_at)
            p->retry_at = l->retry_at;
    }
}
