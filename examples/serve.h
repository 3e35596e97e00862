/* serve.h - the command line and life cycle the example servers share:
 *
 *   PROG -p PORT [-t POLLERS] [-r] [-s] [--tls-cert FILE --tls-key FILE]
 *        [program options]
 *
 * -p 0 picks a free port (printed on stderr), -t sets the number of pollers,
 * -r gives each poller of the accepting reactor its own SO_REUSEPORT
 * listener, -s prints the summed goev statistics on exit as key=value pairs
 * (bench/run reads them).  --tls-cert and --tls-key (PEM files) serve TLS
 * on the same port with the same handlers (ALPN offers http/1.1).  SIGINT and SIGTERM stop the reactor(s); the
 * servers then exit cleanly.
 *
 * One-reactor servers (echo, techempower) call serve_parse, serve_reactor_new
 * and serve_run.  A server that accepts on one reactor and serves the
 * connections on another (async_http) calls serve_parse_extra for its own
 * options, serve_reactor_new_n twice and serve_run2. */
#ifndef EXAMPLES_SERVE_H
#define EXAMPLES_SERVE_H

#include "goev.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct serve_opts {
    int port, pollers, reuseport, stats;
    const char *tls_cert, *tls_key;     /* --tls-cert, --tls-key */
};

/* A program's own options on top of the shared ones. */
struct serve_extra {
    const char *optstring;      /* getopt letters, e.g. "w:d:" */
    const char *usage;          /* appended to the usage line, e.g. "[-w WORKERS]" */
    /* Take option opt (with its argument, or NULL); 0, or -1 for a bad value. */
    int (*take)(int opt, const char *arg, void *ctx);
    void *ctx;
    const char *help;           /* printed under the usage line; may be NULL */
};

/* The reactors the signal handler stops: the accepting and the serving one
 * (the same for one-reactor servers, the second entry then NULL). */
static goev_reactor *serve_reactors_[2];

static void serve_on_signal(int sig)
{
    (void)sig;
    for (int i = 0; i < 2; i++)
        if (serve_reactors_[i])
            goev_reactor_stop(serve_reactors_[i]);   /* async-signal-safe */
}

static inline void serve_usage(const char *prog, const struct serve_extra *x)
{
    fprintf(stderr, "usage: %s -p PORT [-t POLLERS] [-r] [-s] [--tls-cert FILE --tls-key FILE]%s%s\n", prog,
            x && x->usage ? " " : "", x && x->usage ? x->usage : "");
    if (x && x->help)
        fputs(x->help, stderr);
    exit(2);
}

static inline void serve_parse_extra(int argc, char **argv, struct serve_opts *o,
                                     const struct serve_extra *x)
{
    char optstring[64];
    snprintf(optstring, sizeof optstring, "p:t:rs%s", x && x->optstring ? x->optstring : "");
    int opt, bad = 0;
    *o = (struct serve_opts){ .port = -1, .pollers = 1 };
    static const struct option longs[] = {
        { "tls-cert", required_argument, NULL, 0x100 },
        { "tls-key", required_argument, NULL, 0x101 },
        { NULL, 0, NULL, 0 },
    };
    while (!bad && (opt = getopt_long(argc, argv, optstring, longs, NULL)) != -1) {
        switch (opt) {
        case 0x100: o->tls_cert = optarg; break;
        case 0x101: o->tls_key = optarg; break;
        case 'p': o->port = atoi(optarg); break;
        case 't': o->pollers = atoi(optarg); break;
        case 'r': o->reuseport = 1; break;
        case 's': o->stats = 1; break;
        case '?': bad = 1; break;
        default: bad = !x || !x->take || x->take(opt, optarg, x->ctx) < 0; break;
        }
    }
    if (bad || o->port < 0 || o->port > 65535 || o->pollers < 1 || optind != argc ||
        (o->tls_key && !o->tls_cert))
        serve_usage(argv[0], x);
}

static inline void serve_parse(int argc, char **argv, struct serve_opts *o)
{
    serve_parse_extra(argc, argv, o, NULL);
}

/* Create a reactor with `pollers` pollers: 0, or prints why and returns
 * non-zero. */
static inline int serve_reactor_new_n(int pollers, goev_reactor **r)
{
    struct goev_reactor_opts ro;
    goev_reactor_opts_init(&ro);
    ro.pollers = pollers;
    int err = goev_reactor_new(r, &ro);
    if (err < 0)
        fprintf(stderr, "goev_reactor_new: %s (%s)\n", strerror(-err), goev_last_error());
    return err < 0;
}

/* The reactor of a one-reactor server, with -t pollers. */
static inline int serve_reactor_new(const struct serve_opts *o, goev_reactor **r)
{
    return serve_reactor_new_n(o->pollers, r);
}

/* Print the statistics summed over a and b (b may be NULL or a). */
static inline void serve_print_stats(goev_reactor *a, goev_reactor *b)
{
    struct goev_stats st, sb;
    if (goev_stats_get(a, -1, &st) < 0)
        return;
    if (b && b != a && goev_stats_get(b, -1, &sb) == 0) {
        uint64_t *d = (uint64_t *)&st;
        const uint64_t *s = (const uint64_t *)&sb;
        for (size_t i = 0; i < sizeof st / sizeof *d; i++)
            d[i] += s[i];
    }
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
            (unsigned long long)st.accepted, sys, goev_backend_name(a));
}

static inline void serve_signals(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Listen on :port, accepting on accept_r and serving the connections on
 * conn_r (which may be accept_r), run both until SIGINT/SIGTERM, print the
 * statistics if asked.  accept_r runs on the calling thread; a distinct
 * conn_r is started first (so that no connection is handed to a reactor
 * that is not running yet) and stopped and joined after accept_r returned,
 * whatever ended it.  When this returns no poller thread is left: the
 * caller may stop the threads that write to conn_r's connections, then free
 * the reactors.  Returns the process exit status. */
static inline int serve_run2(goev_reactor *accept_r, goev_reactor *conn_r,
                             const struct serve_opts *o,
                             goev_new_handler_fn new_handler, void *arg)
{
    int two = conn_r != accept_r;
    struct goev_acceptor_opts ao;
    goev_acceptor_opts_init(&ao);
    ao.reuseport = o->reuseport;
    if (o->tls_cert) {
        struct goev_tls_opts to;
        goev_tls_opts_init(&to);
        to.cert_file = o->tls_cert;
        to.key_file = o->tls_key;
        to.alpn = "http/1.1";
        int err = goev_tls_ctx_new(&ao.tls, 1, &to);
        if (err < 0) {
            fprintf(stderr, "TLS: %s (%s)\n", goev_strerror(err), goev_tls_error_string());
            return 1;
        }
    }
    char addr[16];
    snprintf(addr, sizeof addr, ":%d", o->port);
    goev_acceptor *a;
    int err = goev_acceptor_new(&a, accept_r, conn_r, addr, &ao, new_handler, arg);
    goev_tls_ctx_free(ao.tls);      /* the acceptor holds its own reference */
    if (err < 0) {
        fprintf(stderr, "listen on %s: %s\n", addr, strerror(-err));
        return 1;
    }

    /* Set before the handler is installed; a signal that comes before the
     * reactors run still stops them (the stop flag is kept). */
    serve_reactors_[0] = accept_r;
    serve_reactors_[1] = two ? conn_r : NULL;
    serve_signals(serve_on_signal);

    fprintf(stderr, "listening on %d backend=%s%s\n", goev_acceptor_port(a),
            goev_backend_name(conn_r), o->tls_cert ? " tls=on" : "");
    int status = 0;
    if (two && (err = goev_reactor_start(conn_r)) < 0) {
        fprintf(stderr, "goev_reactor_start: %s\n", strerror(-err));
        status = 1;
    } else {
        err = goev_reactor_run(accept_r);
        if (err < 0) {
            fprintf(stderr, "goev_reactor_run: %s\n", strerror(-err));
            status = 1;
        }
        if (two) {
            goev_reactor_stop(conn_r);
            goev_reactor_wait(conn_r);
        }
    }
    /* The reactors are about to be freed: a further SIGINT/SIGTERM during
     * the teardown must not reach goev_reactor_stop on freed memory. */
    serve_signals(SIG_IGN);
    if (o->stats)
        serve_print_stats(accept_r, conn_r);
    goev_acceptor_free(a);
    return status;
}

/* The one-reactor life cycle: accept and serve on r.  The caller frees r
 * afterwards.  Returns the process exit status. */
static inline int serve_run(goev_reactor *r, const struct serve_opts *o,
                            goev_new_handler_fn new_handler, void *arg)
{
    return serve_run2(r, r, o, new_handler, arg);
}

#endif
