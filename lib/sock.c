/* sock.c - socket options and addresses of connections, shared by the
 * acceptor (set once on the listener, inherited by accepted sockets), the
 * connector (set before connect) and the per-connection helpers. */
#include "goev-internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int goev__sock_keepalive(int fd, int idle_s, int interval_s, int count)
{
    if (idle_s < 0 || interval_s < 0 || count < 0)
        return -EINVAL;
    int on = idle_s > 0;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0)
        return -errno;
    if (!on)
        return 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s) < 0)
        return -errno;
    if (interval_s && setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s) < 0)
        return -errno;
    if (count && setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) < 0)
        return -errno;
    return 0;
}

int goev__sock_int(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof value) < 0 ? -errno : 0;
}

/* The socket of a connection (not of a raw watch: its fd is the
 * application's, and may not even be a socket). */
static int sock_of(const goev_handler *h)
{
    struct goev__conn *c = h ? h->conn_ : NULL;
    if (!c || c->kind != GOEV__K_STREAM || c->fd < 0 || (c->flags & GOEV__C_CLOSING))
        return -ENOTCONN;
    /* A direct descriptor (io_uring) gets a regular fd, once. */
    return goev__conn_fd(c);
}

int goev_set_nodelay(goev_handler *h, int on)
{
    int fd = sock_of(h);
    if (fd < 0)
        return fd;
    GOEV__STAT_INC(h->poller_, sys_other);
    return goev__sock_int(fd, IPPROTO_TCP, TCP_NODELAY, on != 0);
}

int goev_set_keepalive(goev_handler *h, int idle_s, int interval_s, int count)
{
    int fd = sock_of(h);
    if (fd < 0)
        return fd;
    GOEV__STAT_INC(h->poller_, sys_other);
    return goev__sock_keepalive(fd, idle_s, interval_s, count);
}

static int set_buf(goev_handler *h, int name, int bytes)
{
    int fd = sock_of(h);
    if (fd < 0)
        return fd;
    if (bytes <= 0)
        return -EINVAL;
    GOEV__STAT_INC(h->poller_, sys_other);
    return goev__sock_int(fd, SOL_SOCKET, name, bytes);
}

int goev_set_sndbuf(goev_handler *h, int bytes) { return set_buf(h, SO_SNDBUF, bytes); }
int goev_set_rcvbuf(goev_handler *h, int bytes) { return set_buf(h, SO_RCVBUF, bytes); }

static int name_of(const goev_handler *h, struct sockaddr_storage *ss, socklen_t *len, bool peer)
{
    int fd = sock_of(h);
    if (fd < 0)
        return fd;
    if (!ss || !len)
        return -EINVAL;
    socklen_t l = sizeof *ss;
    GOEV__STAT_INC(h->poller_, sys_other);
    int rc = peer ? getpeername(fd, (struct sockaddr *)ss, &l) : getsockname(fd, (struct sockaddr *)ss, &l);
    if (rc < 0)
        return -errno;
    *len = l;
    return 0;
}

int goev_peer_addr(const goev_handler *h, struct sockaddr_storage *ss, socklen_t *len)
{
    return name_of(h, ss, len, true);
}

int goev_local_addr(const goev_handler *h, struct sockaddr_storage *ss, socklen_t *len)
{
    return name_of(h, ss, len, false);
}
