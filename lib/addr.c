/* addr.c - the address strings of goev.h ("1.2.3.4:80", ":80", "[::1]:80",
 * "unix:/path"), and the clock. */
#include "goev-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

static int parse_port(const char *s, uint16_t *port)
{
    char *end;
    if (!*s)
        return -EINVAL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > 65535 || *s == '-' || *s == '+' || *s == ' ')
        return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

int goev__parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    if (!s || !ss || !len)
        return -EINVAL;
    memset(ss, 0, sizeof *ss);

    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        const char *path = s + 5;
        size_t n = strlen(path);
        if (n == 0 || n >= sizeof un->sun_path)
            return -EINVAL;
        un->sun_family = AF_UNIX;
        if (path[0] == '@') {
            /* Abstract namespace: a leading NUL, the name, no terminator. */
            if (n == 1)
                return -EINVAL;
            memcpy(un->sun_path + 1, path + 1, n - 1);
            *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
            return 0;
        }
        memcpy(un->sun_path, path, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
    }

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        char host[INET6_ADDRSTRLEN + 1];
        size_t n = (size_t)(close - s - 1);
        if (n == 0 || n >= sizeof host)
            return -EINVAL;
        memcpy(host, s + 1, n);
        host[n] = 0;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        uint16_t port;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1 || parse_port(close + 2, &port))
            return -EINVAL;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof *a6;
        return 0;
    }

    const char *colon = strrchr(s, ':');
    if (!colon)
        return -EINVAL;
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    uint16_t port;
    if (parse_port(colon + 1, &port))
        return -EINVAL;
    size_t n = (size_t)(colon - s);
    if (n == 0) {
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else {
        char host[INET_ADDRSTRLEN + 1];
        if (n >= sizeof host)
            return -EINVAL;
        memcpy(host, s, n);
        host[n] = 0;
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return -EINVAL;
    }
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    *len = sizeof *a4;
    return 0;
}

int goev_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    return goev__parse_addr(s, ss, len);
}

int goev_addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap)
{
    char tmp[GOEV_ADDRSTRLEN];
    int n;
    if (!sa || len < sizeof(sa_family_t))
        return -EINVAL;
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
        char host[INET_ADDRSTRLEN];
        if (len < sizeof *a4)
            return -EINVAL;
        inet_ntop(AF_INET, &a4->sin_addr, host, sizeof host);
        n = snprintf(tmp, sizeof tmp, "%s:%u", host, ntohs(a4->sin_port));
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
        char host[INET6_ADDRSTRLEN];
        if (len < sizeof *a6)
            return -EINVAL;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
        n = snprintf(tmp, sizeof tmp, "[%s]:%u", host, ntohs(a6->sin6_port));
        break;
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t plen = len > off ? len - off : 0;
        if (plen > sizeof un->sun_path)
            plen = sizeof un->sun_path;
        if (plen == 0) {
            n = snprintf(tmp, sizeof tmp, "unix:");
        } else if (un->sun_path[0] == 0) {
            /* Abstract: the name is every byte after the NUL (it may hold
             * NULs of its own; those cannot be written as a string). */
            n = snprintf(tmp, sizeof tmp, "unix:@%.*s", (int)(plen - 1), un->sun_path + 1);
        } else {
            n = snprintf(tmp, sizeof tmp, "unix:%.*s", (int)strnlen(un->sun_path, plen),
                         un->sun_path);
        }
        break;
    }
    default:
        return -EAFNOSUPPORT;
    }
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            buf[0] = 0;
        return -ENOSPC;
    }
    memcpy(buf, tmp, (size_t)n + 1);
    return n;
}

uint64_t goev__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
