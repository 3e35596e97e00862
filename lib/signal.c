/* signal.c - signals as events: a signalfd per watch, read on the poller
 * thread when the backend reports it readable (a raw watch underneath, so
 * both backends need nothing of their own). */
#include "goev-internal.h"

#include <errno.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

int goev_signal_watch(goev_poller *p, goev_handler *h, const sigset_t *set)
{
    if (!p || !h || !set || !h->ops || !h->ops->on_signal)
        return -EINVAL;
    if (sigismember(set, SIGKILL) == 1 || sigismember(set, SIGSTOP) == 1)
        return -EINVAL;     /* signalfd would drop them without a word */
    bool empty = true;
    for (int s = 1; s < NSIG && empty; s++)
        empty = sigismember(set, s) != 1;
    if (empty || (h->conn_ && (h->conn_->kind != GOEV__K_NONE || h->poller_ != p)))
        return -EINVAL;
    /* Blocked first: a signal arriving between the two calls stays pending
     * and is read from the signalfd, instead of taking its default action. */
    int rc = pthread_sigmask(SIG_BLOCK, set, NULL);
    if (rc)
        return -rc;
    int fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
    GOEV__STAT_ADD(p, sys_other, 2);
    if (fd < 0)
        return -errno;
    rc = goev__watch(p, h, fd, GOEV_READ, GOEV__C_SIGNAL);
    if (rc < 0)
        close(fd);
    return rc;
}

void goev__signals_ready(struct goev__conn *c)
{
    goev_poller *p = c->p;
    goev_handler *h = c->h;
    struct signalfd_siginfo si[16];
    /* A bounded batch: a storm of queued real-time signals must not keep
     * the poller from its other work; the watch is level-triggered, so the
     * rest comes in the next pass. */
    for (int round = 0; round < 4; round++) {
        ssize_t n = read(c->fd, si, sizeof si);
        GOEV__STAT_INC(p, sys_read);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                goev__conn_close(c, -errno);
            return;
        }
        size_t cnt = (size_t)n / sizeof si[0];
        for (size_t i = 0; i < cnt; i++) {
            struct goev_siginfo g = {
                .signo = (int)si[i].ssi_signo,
                .code = si[i].ssi_code,
                .pid = (int)si[i].ssi_pid,
                .uid = (int)si[i].ssi_uid,
                .status = si[i].ssi_status,
                .value = si[i].ssi_int,
            };
            int rc = h->ops->on_signal(h, &g);
            if (rc < 0) {
                goev__conn_close(c, rc);
                return;
            }
            if (c->flags & (GOEV__C_CLOSING | GOEV__C_CLOSE_WANT))
                return;
        }
        if (cnt < sizeof si / sizeof si[0])
            return;
    }
}
