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
#include "serve.h"

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

int main(int argc, char **argv)
{
    struct serve_opts o;
    goev_reactor *r;
    serve_parse(argc, argv, &o);
    if (serve_reactor_new(&o, &r))
        return 1;
    int status = serve_run(r, &o, new_handler, NULL);
    goev_reactor_free(r);
    return status;
}
