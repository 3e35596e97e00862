/* echo.c - TCP echo server on goev.
 *
 *   examples/echo -p PORT -t POLLERS [-r] [-s]
 *
 * Every byte comes back in order.  A peer that sends faster than it reads
 * is pushed back on: past 4 MiB queued for it, reading stops (TCP then
 * throttles the peer) until the queue drains.  When the peer half-closes,
 * what is queued is still sent, then the connection closes (on_eof is left
 * NULL for exactly that).  -p 0 picks a free port; -r gives each poller
 * its own SO_REUSEPORT listener; -s prints the summed statistics on exit. */
#include "goev.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HIGH_WATER (4u << 20)

struct conn {
    goev_handler h;
    int paused;
};

static goev_reactor *g_reactor;

static struct conn *conn_of(goev_handler *h)
{
    return (struct conn *)((char *)h - offsetof(struct conn, h));
}

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    int err = goev_write(h, data, len);
    if (err < 0)
        return err;
    if (goev_pending(h) > HIGH_WATER) {
        struct conn *c = conn_of(h);
        if (!c->paused && goev_pause_read(h) == 0)
            c->paused = 1;
    }
    return (ssize_t)len;
}

static int on_drained(goev_handler *h)
{
    struct conn *c = conn_of(h);
    if (c->paused) {
        c->paused = 0;
        return goev_resume_read(h);
    }
    return 0;
}

static void on_close(goev_handler *h, int reason)
{
    free(conn_of(h));
}

static const struct goev_handler_ops conn_ops = {
    .on_read = on_read,
    .on_drained = on_drained,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    goev_handler_init(&c->h, &conn_ops);
    return &c->h;
}

static void on_signal(int sig)
{
    goev_reactor_stop(g_reactor);
}

static void print_stats(goev_reactor *r)
{
    struct goev_stats st;
    if (goev_stats_get(r, -1, &st) < 0)
        return;
    unsigned long long sys = st.sys_wait + st.sys_submit + st.sys_read + st.sys_write +
                             st.sys_accept + st.sys_ctl + st.sys_other;
    fprintf(stderr,
            "passes=%llu events=%llu sys_wait=%llu sys_submit=%llu sys_read=%llu "
            "sys_write=%llu sys_accept=%llu sys_ctl=%llu sys_other=%llu cqes=%llu "
            "enobufs=%llu rearms=%llu bytes_in=%llu bytes_out=%llu accepted=%llu "
            "syscalls=%llu backend=%s\n",
            (unsigned long long)st.passes, (unsigned long long)st.events,
            (unsigned long long)st.sys_wait, (unsigned long long)st.sys_submit,
            (unsigned long long)st.sys_read, (unsigned long long)st.sys_write,
            (unsigned long long)st.sys_accept, (unsigned long long)st.sys_ctl,
            (unsigned long long)st.sys_other, (unsigned long long)st.cqes,
            (unsigned long long)st.enobufs, (unsigned long long)st.rearms,
            (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
            (unsigned long long)st.accepted, sys, goev_backend_name(r));
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s -p PORT [-t POLLERS] [-r] [-s]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int port = -1, pollers = 1, reuseport = 0, stats = 0, opt;
    while ((opt = getopt(argc, argv, "p:t:rs")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 't': pollers = atoi(optarg); break;
        case 'r': reuseport = 1; break;
        case 's': stats = 1; break;
        default: usage(argv[0]);
        }
    }
    if (port < 0 || port > 65535 || pollers < 1 || optind != argc)
        usage(argv[0]);

    struct goev_reactor_opts ro;
    goev_reactor_opts_init(&ro);
    ro.pollers = pollers;
    goev_reactor *r;
    int err = goev_reactor_new(&r, &ro);
    if (err < 0) {
        fprintf(stderr, "goev_reactor_new: %s (%s)\n", strerror(-err), goev_last_error());
        return 1;
    }

    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.reuseport = reuseport;
    char addr[16];
    snprintf(addr, sizeof addr, ":%d", port);
    goev_acceptor *a;
    err = goev_acceptor_new(&a, r, r, addr, &ao, new_handler, NULL);
    if (err < 0) {
        fprintf(stderr, "listen on %s: %s\n", addr, strerror(-err));
        goev_reactor_free(r);
        return 1;
    }

    g_reactor = r;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fprintf(stderr, "listening on %d backend=%s\n", goev_acceptor_port(a), goev_backend_name(r));
    err = goev_reactor_run(r);
    if (err < 0)
        fprintf(stderr, "goev_reactor_run: %s\n", strerror(-err));
    if (stats)
        print_stats(r);
    goev_acceptor_free(a);
    goev_reactor_free(r);
    return err < 0 ? 1 : 0;
}
