/* serve.h - the command line and life cycle the example servers share:
 *
 *   PROG -p PORT [-t POLLERS] [-r] [-s] [the server's own options]
 *
 * -p 0 picks a free port (printed on stderr), -t sets the number of pollers,
 * -r gives each poller its own SO_REUSEPORT listener, -s prints the summed
 * goev statistics on exit as key=value pairs (bench/run reads them).
 * SIGINT and SIGTERM stop the reactor; the servers then exit cleanly.
 * A server with options of its own describes them in a struct serve_extra
 * and parses with serve_parse_ex; the letters p, t, r and s stay common. */
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

/* Options of one server beyond the common ones.  letters: getopt letters
 * ("d:b:"), none of p, t, r, s; usage: appended to the usage line
 * (" -d DIR [-b RATE]"); help: printed under it (may be NULL); opt: called
 * with each letter and its argument (NULL for a flag), returns 0, or -1 for
 * a bad value (the usage is printed and the program exits with status 2). */
struct serve_extra {
    const char *letters;
    const char *usage;
    const char *help;
    int (*opt)(int letter, const char *arg, void *ctx);
    void *ctx;
};

/* Print the usage line (x may be NULL) and exit with status 2. */
static inline void serve_usage(const char *prog, const struct serve_extra *x)
{
    fprintf(stderr, "usage: %s -p PORT [-t POLLERS] [-r] [-s]%s\n", prog, x ? x->usage : "");
    if (x && x->help)
        fputs(x->help, stderr);
    exit(2);
}

static inline void serve_parse_ex(int argc, char **argv, struct serve_opts *o,
                                  const struct serve_extra *x)
{
    char letters[64];
    int opt, bad = 0;
    snprintf(letters, sizeof letters, "p:t:rs%s", x ? x->letters : "");
    *o = (struct serve_opts){ .port = -1, .pollers = 1 };
    while (!bad && (opt = getopt(argc, argv, letters)) != -1) {
        switch (opt) {
        case 'p': o->port = atoi(optarg); break;
        case 't': o->pollers = atoi(optarg); break;
        case 'r': o->reuseport = 1; break;
        case 's': o->stats = 1; break;
        case '?': case ':': bad = 1; break;
        default: bad = !x || x->opt(opt, optarg, x->ctx) < 0; break;
        }
    }
    if (bad || o->port < 0 || o->port > 65535 || o->pollers < 1 || optind != argc)
        serve_usage(argv[0], x);
}

static inline void serve_parse(int argc, char **argv, struct serve_opts *o)
{
    serve_parse_ex(argc, argv, o, NULL);
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
