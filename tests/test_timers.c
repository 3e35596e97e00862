/* test_timers.c - timers through the public API: order, periodic, cancel
 * (also from inside a callback in the same pass), restart, and cancellation
 * by closing the handler.  Timing checks use wide margins: the machine may
 * be loaded, so early is a bug, late only beyond seconds. */
#include "testutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NT 1000

struct th {
    goev_handler h;
    goev_poller *p;
    goev_timer t[NT];
    uint64_t delay[NT];
    uint64_t t0;                /* poller time when scheduled */
    int fired[NT];
    int order[NT];
    int nfired;
    int cancelled[NT];
    int closes, reason;
    int after_close;
    int early;                  /* fired before its deadline */
    int wrong_thread;
    int active_bad;             /* goev_timer_active wrong inside on_timeout */
    /* group cancel: timers [g0, g1) share a deadline; the first to fire
     * cancels the others */
    int g0, g1, group_fired;
    int n;
    uint64_t period;
    int rearm_left;
    int fail_at;                /* return -EPROTO from this timer */
};

static int th_on_timeout(goev_handler *h, goev_timer *t)
{
    struct th *x = (struct th *)h;
    if (x->closes)
        x->after_close++;
    if (goev_current_poller() != x->p)
        x->wrong_thread++;
    int i = (int)(t - x->t);
    TU_CHECK(i >= 0 && i < NT, "on_timeout with a foreign timer");
    if (i < 0 || i >= NT)
        return 0;
    uint64_t now = goev_poller_now_ms(x->p);
    if (!x->period && now < x->t0 + x->delay[i])
        x->early++;
    if (x->cancelled[i])
        TU_CHECK(0, "cancelled timer %d fired", i);
    /* A one-shot timer is idle in its callback, a periodic one rescheduled. */
    if (!!goev_timer_active(t) != !!x->period)
        x->active_bad++;
    if (x->nfired < NT)
        x->order[x->nfired] = i;
    TU_INC(&x->nfired);     /* after order[]: the test thread waits on it */
    TU_INC(&x->fired[i]);
    if (i >= x->g0 && i < x->g1) {
        x->group_fired++;
        for (int j = x->g0; j < x->g1; j++)
            if (j != i && goev_timer_active(&x->t[j])) {
                goev_timer_cancel(&x->t[j]);
                x->cancelled[j] = 1;
            }
    }
    /* set by the test thread while the timer is idle, but it may still be
     * finishing the callback of the fire the test just saw: atomic */
    int left = TU_LOAD(&x->rearm_left);
    if (left > 0 && i == 0) {
        TU_STORE(&x->rearm_left, left - 1);
        x->t0 = now;
        int rc = goev_timer_start(x->p, h, t, x->delay[0], 0);
        TU_CHECK(rc == 0, "re-arm in callback: %d", rc);
    }
    if (x->fail_at == i + 1)
        return -EPROTO;
    return 0;
}

static void th_on_close(goev_handler *h, int reason)
{
    struct th *x = (struct th *)h;
    x->reason = reason;
    TU_INC(&x->closes);
}

static const struct goev_handler_ops th_ops = {
    .on_timeout = th_on_timeout,
    .on_close = th_on_close,
};

static struct th *th_new(goev_reactor *r)
{
    struct th *x = calloc(1, sizeof *x);
    goev_handler_init(&x->h, &th_ops);
    x->p = goev_reactor_poller(r, 0);
    x->g0 = x->g1 = -1;
    for (int i = 0; i < NT; i++)
        goev_timer_init(&x->t[i]);
    return x;
}

static void schedule_all(goev_poller *p, void *arg)
{
    struct th *x = arg;
    x->t0 = goev_poller_now_ms(p);
    for (int i = 0; i < x->n; i++) {
        int rc = goev_timer_start(p, &x->h, &x->t[i], x->delay[i], x->period);
        TU_CHECK(rc == 0, "goev_timer_start %d: %d", i, rc);
    }
}

static void close_h(goev_poller *p, void *arg)
{
    struct th *x = arg;
    int rc = goev_close(&x->h);
    TU_CHECK(rc == 0, "goev_close: %d", rc);
    /* Closing twice is harmless. */
    rc = goev_close(&x->h);
    TU_CHECK(rc == 0, "second goev_close: %d", rc);
}

static void finish(goev_reactor *r, struct th *x)
{
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(x->closes, 1, "on_close called %d times", x->closes);
    cr_assert_eq(x->after_close, 0, "on_timeout after on_close");
    cr_assert_eq(x->wrong_thread, 0, "on_timeout off the poller thread");
    free(x);
    tu_assert_no_failures();
}

Test(timers, fire_in_order, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 300;
    /* Distinct delays in a shuffled order of scheduling. */
    for (int i = 0; i < x->n; i++)
        x->delay[i] = 5 + (uint64_t)i * 2;
    struct tu_rng g;
    tu_rng_seed(&g, 11);
    for (int i = x->n - 1; i > 0; i--) {
        int j = (int)tu_rng_range(&g, 0, (uint64_t)i);
        uint64_t tmp = x->delay[i];
        x->delay[i] = x->delay[j];
        x->delay[j] = tmp;
    }
    tu_run_on(x->p, schedule_all, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->nfired) >= x->n, 5000), "%d of %d fired", x->nfired, x->n);
    tu_sleep_ms(30);
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    cr_assert_eq(x->nfired, x->n, "%d fires for %d timers", x->nfired, x->n);
    for (int i = 0; i < x->n; i++)
        cr_assert_eq(x->fired[i], 1, "timer %d fired %d times", i, x->fired[i]);
    for (int k = 1; k < x->n; k++)
        cr_assert(x->delay[x->order[k - 1]] < x->delay[x->order[k]],
                  "fired out of order: %llu ms before %llu ms",
                  (unsigned long long)x->delay[x->order[k - 1]],
                  (unsigned long long)x->delay[x->order[k]]);
    cr_assert_eq(x->early, 0, "%d timers fired before their deadline", x->early);
    cr_assert_eq(x->active_bad, 0);
    cr_assert_eq(x->reason, 0);
    finish(r, x);
    tu_assert_fds(fds);
}

Test(timers, periodic, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 1;
    x->delay[0] = 20;
    x->period = 20;
    uint64_t t0 = tu_now_ms();
    tu_run_on(x->p, schedule_all, x);
    tu_sleep_ms(1000);
    tu_run_on(x->p, close_h, x);
    uint64_t el = tu_now_ms() - t0;
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    int n = x->fired[0];
    /* Never faster than the period; at least a fraction of the expected 50
     * even on a busy machine. */
    cr_assert(n <= (int)(el / 20) + 2, "%d fires in %llu ms with period 20", n,
              (unsigned long long)el);
    cr_assert(n >= 10, "only %d fires in %llu ms with period 20", n, (unsigned long long)el);
    cr_assert_eq(x->active_bad, 0, "periodic timer not active inside on_timeout");
    finish(r, x);
}

static void cancel_some(goev_poller *p, void *arg)
{
    struct th *x = arg;
    struct tu_rng g;
    tu_rng_seed(&g, 99);
    x->t0 = goev_poller_now_ms(p);
    for (int i = 0; i < x->n; i++) {
        int rc = goev_timer_start(p, &x->h, &x->t[i], x->delay[i], 0);
        TU_CHECK(rc == 0, "goev_timer_start: %d", rc);
    }
    for (int i = 0; i < x->g0; i++)
        if (tu_rng_range(&g, 0, 1)) {
            goev_timer_cancel(&x->t[i]);
            x->cancelled[i] = 1;
            TU_CHECK(!goev_timer_active(&x->t[i]), "cancelled timer still active");
            /* Cancelling an idle timer is harmless. */
            goev_timer_cancel(&x->t[i]);
        }
}

Test(timers, cancel, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = NT;
    struct tu_rng g;
    tu_rng_seed(&g, 5);
    /* The last 10 timers share one deadline; whichever fires first cancels
     * the other nine, which have expired in the same pass. */
    x->g0 = NT - 10;
    x->g1 = NT;
    for (int i = 0; i < x->n; i++)
        x->delay[i] = i >= x->g0 ? 150 : tu_rng_range(&g, 10, 300);
    tu_run_on(x->p, cancel_some, x);
    int ncancel = 0;
    for (int i = 0; i < x->g0; i++)
        ncancel += x->cancelled[i];
    cr_assert(ncancel > 300 && ncancel < 700);
    tu_sleep_ms(500);
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    for (int i = 0; i < x->g0; i++)
        cr_assert_eq(x->fired[i], x->cancelled[i] ? 0 : 1, "timer %d (cancelled %d) fired %d",
                     i, x->cancelled[i], x->fired[i]);
    cr_assert_eq(x->group_fired, 1, "%d timers of the same-pass group fired", x->group_fired);
    cr_assert_eq(x->early, 0);
    finish(r, x);
    tu_assert_fds(fds);
}

struct restart {
    struct th *x;
    int i;
    uint64_t delay;
};

static void do_restart(goev_poller *p, void *arg)
{
    struct restart *q = arg;
    q->x->t0 = goev_poller_now_ms(p);
    for (int i = 0; i < 2; i++)
        q->x->delay[i] = q->delay;
    int rc = goev_timer_start(p, &q->x->h, &q->x->t[q->i], q->delay, 0);
    TU_CHECK(rc == 0, "restart: %d", rc);
}

Test(timers, restart, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 1;
    x->delay[0] = 300;
    tu_run_on(x->p, schedule_all, x);
    tu_sleep_ms(40);
    /* Later: it must not fire at the first deadline.  The margins (260 ms
     * for the restart to come before the first deadline, 200 ms for the
     * check to come before the new one) hold on a loaded machine and under
     * ThreadSanitizer. */
    struct restart q = {.x = x, .i = 0, .delay = 600};
    tu_run_on(x->p, do_restart, &q);
    tu_sleep_ms(400);
    cr_assert_eq(TU_LOAD(&x->fired[0]), 0, "fired at the deadline it was moved away from");
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->fired[0]) == 1, 3000), "restarted timer never fired");
    /* Earlier: a timer due in 10 s restarted to 20 ms fires once, soon. */
    q.delay = 10000;
    tu_run_on(x->p, do_restart, &q);
    q.delay = 20;
    tu_run_on(x->p, do_restart, &q);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->fired[0]) == 2, 3000), "earlier restart did not fire");
    /* Re-armed from inside its own callback. */
    TU_STORE(&x->rearm_left, 5);
    q.delay = 5;
    tu_run_on(x->p, do_restart, &q);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->fired[0]) == 8, 3000), "fired %d, want 8", x->fired[0]);
    tu_sleep_ms(50);
    cr_assert_eq(x->fired[0], 8);
    cr_assert_eq(x->early, 0, "a restarted timer fired before its new deadline");
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    finish(r, x);
}

Test(timers, close_cancels_timers, .timeout = TU_TIMEOUT)
{
    int fds = tu_fd_count();
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 5;
    for (int i = 0; i < 5; i++)
        x->delay[i] = 300 + 50 * (uint64_t)i;
    tu_run_on(x->p, schedule_all, x);
    tu_sleep_ms(30);
    /* 270 ms before the first deadline: room enough on a loaded machine and
     * under ThreadSanitizer. */
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000), "timer-only handler: no on_close");
    tu_sleep_ms(550);
    cr_assert_eq(x->nfired, 0, "%d timers fired after their handler closed", x->nfired);
    cr_assert_eq(x->reason, 0);
    finish(r, x);
    tu_assert_fds(fds);
}

Test(timers, callback_error_closes, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 3;
    x->delay[0] = 20;
    x->delay[1] = 60;
    x->delay[2] = 200;
    x->fail_at = 2;         /* the second timer returns -EPROTO */
    tu_run_on(x->p, schedule_all, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 3000), "negative on_timeout did not close");
    tu_sleep_ms(250);
    cr_assert_eq(x->reason, -EPROTO, "on_close(%d)", x->reason);
    cr_assert_eq(x->fired[0], 1);
    cr_assert_eq(x->fired[1], 1);
    cr_assert_eq(x->fired[2], 0, "timer of a closed handler fired");
    finish(r, x);
}

struct misuse {
    struct th *x;
    goev_poller *other;
    int rc_other, rc_closing;
    goev_timer t2;
};

static void misuse_on_p0(goev_poller *p, void *arg)
{
    struct misuse *m = arg;
    int rc = goev_timer_start(p, &m->x->h, &m->x->t[0], 5000, 0);
    TU_CHECK(rc == 0, "goev_timer_start: %d", rc);
    goev_close(&m->x->h);
    /* A closing handler takes no new timer. */
    goev_timer_init(&m->t2);
    m->rc_closing = goev_timer_start(p, &m->x->h, &m->t2, 10, 0);
}

static void misuse_on_p1(goev_poller *p, void *arg)
{
    struct misuse *m = arg;
    goev_timer_init(&m->t2);
    m->rc_other = goev_timer_start(p, &m->x->h, &m->t2, 10, 0);
}

Test(timers, wrong_poller_and_closing, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(2);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    struct misuse m = {.x = x};
    struct th *y = th_new(r);
    /* y is attached to poller 0 by its first timer ... */
    y->n = 1;
    y->delay[0] = 5000;
    tu_run_on(y->p, schedule_all, y);
    /* ... so poller 1 may not give it one. */
    m.x = y;
    tu_run_on(goev_reactor_poller(r, 1), misuse_on_p1, &m);
    cr_assert_eq(m.rc_other, -EINVAL, "timer for a handler of another poller: %d", m.rc_other);
    m.x = x;
    tu_run_on(x->p, misuse_on_p0, &m);
    cr_assert_eq(m.rc_closing, -EINVAL, "timer for a closing handler: %d", m.rc_closing);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    tu_sleep_ms(50);
    cr_assert_eq(x->nfired, 0);
    /* y still holds a timer when the reactor stops: it must still get its
     * one on_close. */
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(y->closes, 1, "handler with a live timer at stop: %d on_close", y->closes);
    cr_assert_eq(y->nfired, 0);
    cr_assert_eq(x->closes, 1);
    free(x);
    free(y);
    tu_assert_no_failures();
}

/* Timers with one deadline fire in the order they were started (libuv's
 * contract too); they used to come out last-started first. */
Test(timers, same_deadline_in_start_order, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 64;
    for (int i = 0; i < x->n; i++)
        x->delay[i] = 20;
    tu_run_on(x->p, schedule_all, x);   /* one pass: one now_ms, one deadline */
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->nfired) >= x->n, 5000), "%d of %d fired", x->nfired, x->n);
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    for (int k = 0; k < x->n; k++)
        cr_assert_eq(x->order[k], k, "fire %d was timer %d: not start order", k, x->order[k]);
    finish(r, x);
}

/* Restarting a timer puts it behind the others of its deadline, as a fresh
 * start would. */
static void restart_first(goev_poller *p, void *arg)
{
    struct th *x = arg;
    goev_timer_start(p, &x->h, &x->t[0], x->delay[0], 0);
}

Test(timers, restarted_goes_last_among_equals, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    /* Set up before run: all in one call, so one clock reading. */
    struct th *x = th_new(r);
    x->n = 8;
    for (int i = 0; i < x->n; i++)
        x->delay[i] = 30;
    schedule_all(x->p, x);
    restart_first(x->p, x);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->nfired) >= x->n, 5000));
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    /* Timer 0 may have a later deadline (the clock may have ticked between
     * the calls) or the same one: either way it fires last. */
    cr_assert_eq(x->order[x->n - 1], 0, "restarted timer fired at position %d",
                 x->order[0] == 0 ? 0 : -1);
    for (int k = 0; k < x->n - 1; k++)
        cr_assert_eq(x->order[k], k + 1);
    finish(r, x);
}

/* A delay or period too large for the clock saturates at "never": it used
 * to wrap, firing a UINT64_MAX delay at once and spinning on a UINT64_MAX
 * period. */
Test(timers, huge_delay_and_period_saturate, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    tu_reactor_start(r);
    struct th *x = th_new(r);
    x->n = 4;
    x->delay[0] = UINT64_MAX;
    x->delay[1] = UINT64_MAX - 1;
    x->delay[2] = UINT64_MAX / 2 + 12345;
    x->delay[3] = 1;            /* fires once, then its period is "never" */
    x->period = 0;
    tu_run_on(x->p, schedule_all, x);
    struct th *y = th_new(r);   /* periodic: a huge period after a 1 ms delay */
    y->n = 1;
    y->delay[0] = 1;
    y->period = UINT64_MAX;
    tu_run_on(y->p, schedule_all, y);
    struct th *z = th_new(r);
    z->n = 1;
    z->delay[0] = 1;
    z->period = UINT64_MAX - 5;
    tu_run_on(z->p, schedule_all, z);
    tu_sleep_ms(150);
    struct goev_stats st;
    goev_stats_get(r, 0, &st);
    cr_assert_eq(TU_LOAD(&x->fired[0]), 0, "UINT64_MAX delay fired");
    cr_assert_eq(TU_LOAD(&x->fired[1]), 0, "UINT64_MAX-1 delay fired");
    cr_assert_eq(TU_LOAD(&x->fired[2]), 0, "huge delay fired");
    cr_assert_eq(TU_LOAD(&x->fired[3]), 1);
    cr_assert_eq(TU_LOAD(&y->fired[0]), 1, "UINT64_MAX period fired %d times in 150 ms", y->fired[0]);
    cr_assert_eq(TU_LOAD(&z->fired[0]), 1, "huge period fired %d times in 150 ms", z->fired[0]);
    cr_assert(st.passes < 1000, "%llu loop passes in 150 ms: the loop spins",
              (unsigned long long)st.passes);
    tu_run_on(y->p, close_h, y);
    tu_run_on(z->p, close_h, z);
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1 && TU_LOAD(&y->closes) == 1 &&
                          TU_LOAD(&z->closes) == 1, 2000));
    tu_reactor_stop_wait(r);
    goev_reactor_free(r);
    cr_assert_eq(y->closes, 1);
    cr_assert_eq(z->closes, 1);
    free(y);
    free(z);
    cr_assert_eq(x->closes, 1);
    free(x);
    tu_assert_no_failures();
}

/* A timer started before the reactor runs counts from when it was started,
 * not from goev_reactor_new (the poller's clock is not ticking yet). */
Test(timers, started_before_run_counts_from_start, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    struct th *x = th_new(r);
    tu_sleep_ms(150);
    x->n = 1;
    x->delay[0] = 200;
    uint64_t t0 = tu_now_ms();
    schedule_all(x->p, x);
    tu_reactor_start(r);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->nfired) >= 1, 5000));
    uint64_t took = tu_now_ms() - t0;
    cr_assert(took >= 195, "a 200 ms timer started before run fired after %llu ms",
              (unsigned long long)took);
    cr_assert_eq(x->early, 0);
    tu_run_on(x->p, close_h, x);
    cr_assert(TU_WAIT_FOR(TU_LOAD(&x->closes) == 1, 2000));
    finish(r, x);
}
