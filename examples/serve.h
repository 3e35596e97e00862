/* serve.h - the command line and life cycle the example servers share:
 *
 *   PROG -p PORT [-t POLLERS] [-r] [-s]
 *
 * -p 0 picks a free port (printed on stderr), -t sets the number of pollers,
 * -r gives each poller its own SO_REUSEPORT listener, -s prints the summed
 * goev statistics on exit as key=value pairs (bench/run reads them).
 * SIGINT and SIGTERM stop the reactor; the servers then exit cleanly. */
#ifndef EXAMPLES_SERVE_H
#define EXAMPLES_SERVE_H

#include "goev.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct serve_opts {
    int port, pollers, reuseport, stats;
};

static goev_reactor *serve_reactor_;

static void serve_on_signal(int sig)
{
    (void)sig;
    goev_reactor_stop(serve_reactor_);   /* async-signal-safe */
}

static inline void serve_parse(int argc, char **argv, struct serve_opts *o)
{
    int opt;
    *o = (struct serve_opts){ .port = -1, .pollers = 1 };
    while ((opt = getopt(argc, argv, "p:t:rs")) != -1) {
        switch (opt) {
        case 'p': o->port = atoi(optarg); break;
        case 't': o->pollers = atoi(optarg); break;
        case 'r': o->reuseport = 1; break;
        case 's': o->stats = 1; break;
        default: o->port = -1; optind = argc + 1; break;
        }
    }
    if (o->port < 0 || o->port > 65535 || o->pollers < 1 || optind != argc) {
        fprintf(stderr, "usage: %s -p PORT [-t POLLERS] [-r] [-s]\n", argv[0]);
        exit(2);
    }
}

/* Create the reactor: 0, or prints why and returns non-zero. */
static inline int serve_reactor_new(const struct serve_opts *o, goev_reactor **r)
{
    struct goev_reactor_opts ro;
    goev_reactor_opts_init(&ro);
    ro.pollers = o->pollers;
    int err = goev_reactor_new(r, &ro);
    if (err < 0)
        fprintf(stderr, "goev_reactor_new: %s (%s)\n", strerror(-err), goev_last_error());
    return err < 0;
}

static inline void serve_print_stats(goev_reactor *r)
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

/* Listen on :port, run until SIGINT/SIGTERM, print the statistics if asked.
 * The caller frees r afterwards.  Returns the process exit status. */
static inline int serve_run(goev_reactor *r, const struct serve_opts *o,
                            goev_new_handler_fn new_handler, void *arg)
{
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.reuseport = o->reuseport;
    char addr[16];
    snprintf(addr, sizeof addr, ":%d", o->port);
    goev_acceptor *a;
    int err = goev_acceptor_new(&a, r, r, addr, &ao, new_handler, arg);
    if (err < 0) {
        fprintf(stderr, "listen on %s: %s\n", addr, strerror(-err));
        return 1;
    }

    serve_reactor_ = r;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = serve_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fprintf(stderr, "listening on %d backend=%s\n", goev_acceptor_port(a), goev_backend_name(r));
    err = goev_reactor_run(r);
    /* The reactor is about to be freed: a further SIGINT/SIGTERM during the
     * teardown must not reach goev_reactor_stop on freed memory. */
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (err < 0)
        fprintf(stderr, "goev_reactor_run: %s\n", strerror(-err));
    if (o->stats)
        serve_print_stats(r);
    goev_acceptor_free(a);
    return err < 0;
}

#endif
