/* dns_responder.c - see dns_responder.h. */
#include "dns_responder.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define T_A 1
#define T_AAAA 28

static int find_name(const struct dnsr *d, const char *name)
{
    for (int i = 0; i < d->nnames; i++)
        if (strcasecmp(d->names[i].name, name) == 0)
            return i;
    return -1;
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* Answer the query q[0..n) into out (cap bytes): its length, 0 to stay
 * silent, -1 for a malformed query. */
static int answer(struct dnsr *d, const unsigned char *q, int n, bool tcp, unsigned char *out,
                  int cap)
{
    if (n < 12 || ((q[4] << 8) | q[5]) != 1)
        return -1;
    char name[256];
    int pos = 12, nl = 0;
    while (pos < n && q[pos]) {
        int l = q[pos++];
        if (l > 63 || pos + l > n || nl + l + 1 >= (int)sizeof name)
            return -1;
        if (nl)
            name[nl++] = '.';
        memcpy(name + nl, q + pos, (size_t)l);
        nl += l;
        pos += l;
    }
    name[nl] = 0;
    if (pos + 5 > n)
        return -1;
    pos++;                          /* the root label */
    int qtype = (q[pos] << 8) | q[pos + 1];
    int qend = pos + 4;
    int idx = find_name(d, name);
    if (idx < 0)
        __atomic_add_fetch(&d->other_count, 1, __ATOMIC_ACQ_REL);
    else if (qtype == T_A || qtype == T_AAAA)
        __atomic_add_fetch(&d->count[idx][qtype == T_AAAA], 1, __ATOMIC_ACQ_REL);
    if (tcp)
        __atomic_add_fetch(&d->tcp_count, 1, __ATOMIC_ACQ_REL);
    const struct dnsr_name *e = idx >= 0 ? &d->names[idx] : NULL;
    if (e && e->mode == DNSR_SILENT)
        return 0;
    if (qend + 16 * DNSR_MAX_RR * 2 + 12 > cap)
        return -1;
    memcpy(out, q, (size_t)qend);  /* id, flags (rewritten), counts, question */
    unsigned flags = 0x8000u | (q[2] & 0x01u) << 8 | 0x0080u;      /* QR, RD echoed, RA */
    int rcode = !e ? 3 : e->mode == DNSR_NXDOMAIN ? 3 : e->mode == DNSR_SERVFAIL ? 2 : 0;
    bool tc = e && e->mode == DNSR_TRUNCATE && !tcp;
    if (tc)
        flags |= 0x0200u;
    put16(out + 2, flags | (unsigned)rcode);
    put16(out + 6, 0);
    put16(out + 8, 0);
    put16(out + 10, 0);
    int len = qend, an = 0;
    if (e && rcode == 0 && !tc) {
        const char *const *list = qtype == T_A ? e->a : qtype == T_AAAA ? e->aaaa : NULL;
        for (int i = 0; list && i < DNSR_MAX_RR && list[i]; i++) {
            unsigned char addr[16];
            int alen = qtype == T_A ? 4 : 16;
            if (inet_pton(qtype == T_A ? AF_INET : AF_INET6, list[i], addr) != 1)
                return -1;
            unsigned char *r = out + len;
            put16(r, 0xC00C);       /* the name of the question */
            put16(r + 2, (unsigned)qtype);
            put16(r + 4, 1);        /* IN */
            r[6] = (unsigned char)(e->ttl >> 24);
            r[7] = (unsigned char)(e->ttl >> 16);
            r[8] = (unsigned char)(e->ttl >> 8);
            r[9] = (unsigned char)e->ttl;
            put16(r + 10, (unsigned)alen);
            memcpy(r + 12, addr, (size_t)alen);
            len += 12 + alen;
            an++;
        }
    }
    put16(out + 6, (unsigned)an);
    return len;
}

static void on_udp(struct dnsr *d)
{
    unsigned char q[512], out[1024];
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(d->udp, q, sizeof q, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    if (n <= 0)
        return;
    int len = answer(d, q, (int)n, false, out, sizeof out);
    if (len > 0)
        sendto(d->udp, out, (size_t)len, 0, (struct sockaddr *)&from, fl);
}

/* One length-prefixed query from a TCP client; false when it is done. */
static bool on_tcp_client(struct dnsr *d, int fd)
{
    unsigned char hdr[2], q[512], out[1026];
    if (recv(fd, hdr, 2, MSG_WAITALL) != 2)
        return false;
    int n = (hdr[0] << 8) | hdr[1];
    if (n > (int)sizeof q || recv(fd, q, (size_t)n, MSG_WAITALL) != n)
        return false;
    int len = answer(d, q, n, true, out + 2, sizeof out - 2);
    if (len < 0)
        return false;
    if (len == 0)
        return true;
    put16(out, (unsigned)len);
    return send(fd, out, (size_t)len + 2, MSG_NOSIGNAL) == len + 2;
}

static void *serve(void *arg)
{
    struct dnsr *d = arg;
    for (;;) {
        struct pollfd pf[3 + 8];
        int map[3 + 8];
        int n = 0;
        pf[n] = (struct pollfd){.fd = d->wake[0], .events = POLLIN};
        map[n++] = -1;
        pf[n] = (struct pollfd){.fd = d->udp, .events = POLLIN};
        map[n++] = -1;
        pf[n] = (struct pollfd){.fd = d->tcp, .events = POLLIN};
        map[n++] = -1;
        for (int i = 0; i < 8; i++) {
            if (d->clients[i] >= 0) {
                pf[n] = (struct pollfd){.fd = d->clients[i], .events = POLLIN};
                map[n++] = i;
            }
        }
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents)
            break;
        if (pf[1].revents & POLLIN)
            on_udp(d);
        if (pf[2].revents & POLLIN) {
            int fd = accept(d->tcp, NULL, NULL);
            int i;
            for (i = 0; fd >= 0 && i < 8 && d->clients[i] >= 0; i++)
                ;
            if (fd >= 0 && i < 8) {
                struct timeval tv = {.tv_sec = 2};
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                d->clients[i] = fd;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        for (int k = 3; k < n; k++) {
            int i = map[k];
            if (pf[k].revents && !on_tcp_client(d, d->clients[i])) {
                close(d->clients[i]);
                d->clients[i] = -1;
            }
        }
    }
    return NULL;
}

int dnsr_start(struct dnsr *d, const struct dnsr_name *names, int n)
{
    memset(d, 0, sizeof *d);
    d->names = names;
    d->nnames = n < DNSR_MAX_NAMES ? n : DNSR_MAX_NAMES;
    for (int i = 0; i < 8; i++)
        d->clients[i] = -1;
    /* One port for UDP and TCP (c-ares asks both at a server's port): take
     * a free UDP port and try TCP on it, a few times. */
    for (int attempt = 0; attempt < 50; attempt++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof a;
        d->udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        d->tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (d->udp < 0 || d->tcp < 0)
            return -errno;
        if (bind(d->udp, (struct sockaddr *)&a, sizeof a) == 0 &&
            getsockname(d->udp, (struct sockaddr *)&a, &l) == 0 &&
            bind(d->tcp, (struct sockaddr *)&a, sizeof a) == 0 && listen(d->tcp, 16) == 0) {
            d->port = ntohs(a.sin_port);
            break;
        }
        close(d->udp);
        close(d->tcp);
        d->udp = d->tcp = -1;
    }
    if (!d->port)
        return -EADDRINUSE;
    if (pipe(d->wake) < 0)
        return -errno;
    int rc = pthread_create(&d->th, NULL, serve, d);
    return -rc;
}

void dnsr_stop(struct dnsr *d)
{
    char b = 1;
    if (write(d->wake[1], &b, 1) != 1)
        return;
    pthread_join(d->th, NULL);
    close(d->wake[0]);
    close(d->wake[1]);
    close(d->udp);
    close(d->tcp);
    for (int i = 0; i < 8; i++)
        if (d->clients[i] >= 0)
            close(d->clients[i]);
}

int dnsr_count(struct dnsr *d, const char *name, int qtype)
{
    int i = find_name(d, name);
    return i < 0 ? -1 : __atomic_load_n(&d->count[i][qtype == T_AAAA], __ATOMIC_ACQUIRE);
}

int dnsr_tcp_count(struct dnsr *d)
{
    return __atomic_load_n(&d->tcp_count, __ATOMIC_ACQUIRE);
}
