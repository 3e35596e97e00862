/* echo.c - TCP echo server on goev.
 *
 *   examples/echo -p PORT -t POLLERS [-r] [-s]
 *
 * Every byte comes back in order.  A peer that sends faster than it reads
 * is pushed back on by goev itself, with no code here: past the output
 * high-water mark (1 MiB by default, goev_reactor_opts.out_high_water)
 * reading stops, TCP then throttles the peer, and reading resumes once the
 * queue has drained to the low mark.  When the peer half-closes,
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

static ssize_t on_read(goev_handler *h, const char *data, size_t len)
{
    int err = goev_write(h, data, len);
    return err < 0 ? err : (ssize_t)len;
}

static void on_close(goev_handler *h, int reason)
{
    free(h);
}

static const struct goev_handler_ops conn_ops = {
    .on_read = on_read,
    .on_close = on_close,
};

static goev_handler *new_handler(goev_poller *p, void *arg)
{
    goev_handler *h = malloc(sizeof *h);
    if (!h)
        return NULL;
    goev_handler_init(h, &conn_ops);
    return h;
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
