/* epoll.c - the readiness backend.  Level-triggered epoll, one read() per
 * readable connection into the poller's shared buffer, one send()/sendmsg()
 * per dirty connection at the end of the pass (sendfile() for a file range
 * at the head of the queue), EPOLLOUT only while a write is blocked.  An
 * epoll_ctl that fails on a connection closes it with the error.  Only the
 * files of backends/ know the API of their backend. */
#include "goev-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <unistd.h>

enum { MAX_EVENTS = 512, MAX_IOV = 64 };
#define FILE_SLICE ((size_t)1 << 30)

/* epoll_event.data.u64 tags: connections are stored as their pointer,
 * listeners as pointer | 1, the wake-up eventfd as 2. */
#define TAG_LISTENER 1u
#define TAG_WAKE 2u
#define REGISTERED (1u << 31)

struct ep {
    int epfd;
    char *rbuf;             /* the poller's read buffer, shared by its connections */
    size_t rbuf_size;
    struct epoll_event evs[MAX_EVENTS];
};

/* A connection's part (goev__conn_priv): its interest, | REGISTERED. */
struct ep_conn {
    uint32_t events;
};

static inline struct ep *EP(goev_poller *p) { return p->bd; }
static inline struct ep_conn *EPC(struct goev__conn *c) { return goev__conn_priv(c); }

static int ep_poller_init(goev_poller *p)
{
    struct ep *e = goev__calloc(1, sizeof *e);
    if (!e)
        return -ENOMEM;
    e->epfd = -1;
    p->bd = e;
    e->rbuf_size = p->r->opts.read_buf_size ? p->r->opts.read_buf_size : 64 * 1024;
    e->rbuf = goev__malloc(e->rbuf_size);
    if (!e->rbuf)
        return -ENOMEM;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0)
        return -errno;
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_WAKE };
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, p->wake_fd, &ev) < 0)
        return -errno;
    return 0;
}

static void ep_poller_fini(goev_poller *p)
{
    struct ep *e = EP(p);
    if (!e)
        return;
    if (e->epfd >= 0)
        close(e->epfd);
    goev__free(e->rbuf);
    goev__free(e);
    p->bd = NULL;
}

/* Set c's interest to `want` (EPOLLIN/EPOLLOUT), adding, modifying or
 * removing the registration.  An fd with no interest is removed, because
 * epoll reports EPOLLERR/EPOLLHUP even for an empty mask. */
static int set_events(struct goev__conn *c, uint32_t want)
{
    uint32_t cur = EPC(c)->events;
    if ((cur & ~REGISTERED) == want && (want || !(cur & REGISTERED)))
        return 0;
    struct epoll_event ev = { .events = want, .data.ptr = c };
    int op = !(cur & REGISTERED) ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    GOEV__STAT_INC(c->p, sys_ctl);
    if (epoll_ctl(EP(c->p)->epfd, op, c->fd, &ev) < 0)
        return -errno;
    EPC(c)->events = want ? (want | REGISTERED) : 0;
    return 0;
}

/* set_events where nothing returns its failure: c closes with the error. */
static bool set_events_or_close(struct goev__conn *c, uint32_t want)
{
    int rc = set_events(c, want);
    if (GOEV__UNLIKELY(rc < 0)) {
        goev__on_error(c, rc);
        return false;
    }
    return true;
}

static int ep_conn_start(struct goev__conn *c)
{
    return set_events(c, EPOLLIN | (EPC(c)->events & EPOLLOUT));
}

static void ep_conn_pause(struct goev__conn *c)
{
    if (EPC(c)->events & EPOLLIN)
        set_events_or_close(c, EPC(c)->events & EPOLLOUT);
}

/* Send what is queued: one system call for up to MAX_IOV chunks.  A short
 * write waits for EPOLLOUT; from_event says we are answering one. */
static void send_queued(struct goev__conn *c, bool from_event)
{
    goev_poller *p = c->p;
    for (;;) {
        struct iovec iov[MAX_IOV];
        size_t total;
        int n = goev__outq_iov(&c->out, 0, iov, MAX_IOV, &total);
        ssize_t w;
        if (!n) {
            struct goev__fileref *f = goev__outq_head_file(&c->out);
            if (!f)
                break;
            /* The kernel takes what fits in the socket buffer; asking for
             * more than that in one call costs nothing. */
            total = f->left < FILE_SLICE ? (size_t)f->left : FILE_SLICE;
            off_t off = (off_t)f->off;
            w = sendfile(c->fd, f->fd, &off, total);
            if (w == 0) {           /* the file ended before the range */
                goev__on_error(c, -ENODATA);
                return;
            }
        } else if (n == 1) {
            w = send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
            w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        GOEV__STAT_INC(p, sys_write);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                goev__on_error(c, -errno);
                return;
            }
            w = 0;
        }
        bool blocked = (size_t)w < total;
        goev__on_sent(c, (size_t)w, blocked);
        if (c->flags & GOEV__C_CLOSING)
            return;
        if (blocked) {
            if (c->out.bytes && !(EPC(c)->events & EPOLLOUT))
                set_events_or_close(c, (EPC(c)->events & EPOLLIN) | EPOLLOUT);
            return;
        }
    }
    if (from_event || (EPC(c)->events & EPOLLOUT))
        set_events_or_close(c, EPC(c)->events & EPOLLIN);
}

static void ep_flush(struct goev__conn *c)
{
    /* While EPOLLOUT is armed the kernel is full: wait for the event. */
    if (!(EPC(c)->events & EPOLLOUT))
        send_queued(c, false);
}

static void ep_conn_close(struct goev__conn *c)
{
    goev_poller *p = c->p;
    /* Closing an fd leaves the epoll set only when no other descriptor
     * refers to its file.  The sockets goev makes are never dup'ed, but a
     * watched fd is the application's and may be (dup, fork): remove it
     * first, or its events would keep coming for a dead or reused slot. */
    if ((c->flags & GOEV__C_KEEP_FD) || c->kind == GOEV__K_WATCH) {
        if (EPC(c)->events & REGISTERED) {
            GOEV__STAT_INC(p, sys_ctl);
            if (epoll_ctl(EP(p)->epfd, EPOLL_CTL_DEL, c->fd, NULL) < 0)   /* closing anyway */
                goev__debug("epoll poller %d: removing watched fd %d: %s", p->idx, c->fd,
                            strerror(errno));
        }
    }
    EPC(c)->events = 0;
    goev__on_released(c);
}

static int ep_watch(struct goev__conn *c, unsigned events)
{
    uint32_t want = ((events & GOEV_READ) ? EPOLLIN : 0) | ((events & GOEV_WRITE) ? EPOLLOUT : 0);
    return set_events(c, want);
}

static int ep_listen_start(struct goev__listener *l)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uintptr_t)l | TAG_LISTENER };
    GOEV__STAT_INC(l->p, sys_ctl);
    if (epoll_ctl(EP(l->p)->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0)
        return -errno;
    l->b.ep.registered = 1;
    return 0;
}

static void ep_listen_stop(struct goev__listener *l)
{
    if (l->b.ep.registered) {
        if (epoll_ctl(EP(l->p)->epfd, EPOLL_CTL_DEL, l->fd, NULL) < 0)
            goev__debug("epoll poller %d: removing listener fd %d: %s", l->p->idx, l->fd,
                        strerror(errno));
        GOEV__STAT_INC(l->p, sys_ctl);
        l->b.ep.registered = 0;
    }
}

static int ep_connect(struct goev__conn *c, const struct sockaddr *sa, socklen_t len)
{
    GOEV__STAT_INC(c->p, sys_other);
    if (connect(c->fd, sa, len) < 0 && errno != EINPROGRESS)
        return -errno;
    /* Even an immediate success is reported from the loop, never from
     * inside goev_connect. */
    return set_events(c, EPOLLOUT);
}

static void on_listener(struct goev__listener *l)
{
    goev_poller *p = l->p;
    /* A bounded batch keeps one busy listener from starving the loop. */
    for (int i = 0; i < 64 && !l->paused; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        GOEV__STAT_INC(p, sys_accept);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno != EAGAIN)
                goev__on_accept_error(l, -errno);
            return;
        }
        goev__on_accept(l, fd);
    }
}

static void on_conn(struct goev__conn *c, uint32_t ev)
{
    goev_poller *p = c->p;
    if (c->kind == GOEV__K_WATCH) {
        unsigned g = ((ev & EPOLLIN) ? GOEV_READ : 0) | ((ev & EPOLLOUT) ? GOEV_WRITE : 0) |
                     ((ev & (EPOLLERR | EPOLLHUP)) ? GOEV_ERROR : 0);
        goev__on_ready(c, g);
        return;
    }
    if (c->flags & GOEV__C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        GOEV__STAT_INC(p, sys_other);
        if (!err && !(ev & (EPOLLERR | EPOLLHUP))) {
            EPC(c)->events = REGISTERED;    /* conn_start's MOD replaces EPOLLOUT */
        } else if (!err) {
            err = ECONNREFUSED;
        }
        goev__on_connected(c, -err);
        /* Not reading (paused or closing gracefully from on_open): the
         * kernel still has the connect's EPOLLOUT, which would fire on
         * every wait.  Drop the registration; conn_start adds it back. */
        if (!err && !(c->flags & GOEV__C_CLOSING) && EPC(c)->events == REGISTERED)
            set_events_or_close(c, 0);
        return;
    }
    if ((ev & EPOLLOUT) && (EPC(c)->events & EPOLLOUT)) {
        send_queued(c, true);
        if (c->flags & GOEV__C_CLOSING)
            return;
    }
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    if (!(EPC(c)->events & EPOLLIN)) {
        /* Not reading (paused, EOF): an error or hang-up would be reported
         * on every wait; stop listening until reading resumes. */
        if ((ev & (EPOLLERR | EPOLLHUP)) && !(EPC(c)->events & EPOLLOUT))
            set_events_or_close(c, 0);
        return;
    }
    struct ep *e = EP(p);
    ssize_t n = read(c->fd, e->rbuf, e->rbuf_size);
    GOEV__STAT_INC(p, sys_read);
    if (n > 0)
        goev__on_data(c, e->rbuf, (size_t)n);
    else if (n == 0)
        goev__on_eof(c);
    else if (errno != EAGAIN && errno != EINTR)
        goev__on_error(c, -errno);
}

static int ep_wait(goev_poller *p, int timeout_ms)
{
    struct ep *e = EP(p);
    int n = epoll_wait(e->epfd, e->evs, MAX_EVENTS, timeout_ms);
    GOEV__STAT_INC(p, sys_wait);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    GOEV__STAT_ADD(p, events, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        uint64_t u = e->evs[i].data.u64;
        if (u == TAG_WAKE) {
            uint64_t v;
            ssize_t rc = read(p->wake_fd, &v, sizeof v);
            (void)rc;
            GOEV__STAT_INC(p, sys_read);   /* the loop drains the queue */
        } else if (u & TAG_LISTENER) {
            on_listener((struct goev__listener *)(uintptr_t)(u & ~(uint64_t)TAG_LISTENER));
        } else {
            struct goev__conn *c = e->evs[i].data.ptr;
            /* A connection closed earlier in this batch keeps its slot until
             * the end of the pass, so the pointer is still safe to look at. */
            if (!(c->flags & (GOEV__C_CLOSING | GOEV__C_DEAD)))
                on_conn(c, e->evs[i].events);
        }
    }
    return 0;
}

const struct goev__backend goev__epoll_backend = {
    .name = "epoll",
    .conn_priv = sizeof(struct ep_conn),
    .poller_init = ep_poller_init,
    .poller_fini = ep_poller_fini,
    .conn_start = ep_conn_start,
    .conn_pause = ep_conn_pause,
    .flush = ep_flush,
    .conn_close = ep_conn_close,
    .watch = ep_watch,
    .listen_start = ep_listen_start,
    .listen_stop = ep_listen_stop,
    .connect = ep_connect,
    .wait = ep_wait,
};
