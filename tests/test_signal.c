/* test_signal.c - signals as events (goev_signal_watch).
 *
 * Each case runs goev in a child process of its own, the way a server
 * runs: the child blocks nothing by hand (goev_signal_watch does it on the
 * thread that will run poller 0), and the test process sends it real
 * process-directed signals with kill(2) and sigqueue(3).  A child process
 * also keeps Criterion's own thread, which blocks nothing, out of the way: a
 * signal the kernel handed to it would kill the test instead of testing goev.
 * The child is this test program executed again (see child_entry), not a
 * bare fork: after fork() a process that had threads may only make
 * async-signal-safe calls, and ThreadSanitizer refuses to start threads in
 * one.
 *
 * The child reports every on_signal as a line on a pipe; the parent checks
 * that each signal sent arrives exactly once, in order, with its sender. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int report_fd = -1;

static void report(const char *fmt, ...)
{
    char line[160];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (write(report_fd, line, (size_t)n) != n)
        _exit(3);
}

/* ---- the child's side ----------------------------------------------------- */

struct watcher {
    goev_handler h;
    goev_reactor *r;
    goev_poller *want_poller;   /* on_signal must run on this poller's thread */
    int fail_on_usr1;           /* return this from on_signal for SIGUSR1 */
    goev_timer stop_timer;
};

static int w_on_signal(goev_handler *h, const struct goev_siginfo *si)
{
    struct watcher *w = (struct watcher *)h;
    if (goev_current_poller() != w->want_poller)
        report("wrong-thread\n");
    report("sig %d code %d pid %d value %d\n", si->signo, si->code, si->pid, si->value);
    if (si->signo == SIGTERM)
        goev_reactor_stop(w->r);
    if (si->signo == SIGUSR1 && w->fail_on_usr1)
        return w->fail_on_usr1;
    return 0;
}

static int w_on_timeout(goev_handler *h, goev_timer *t)
{
    struct watcher *w = t->user;
    goev_reactor_stop(w->r);
    return 0;
}

static const struct goev_handler_ops w_ops = {
    .on_signal = w_on_signal,
};

/* A timer-only handler to end the child when its watch is gone. */
static goev_handler stopper;
static const struct goev_handler_ops stopper_ops = {.on_timeout = w_on_timeout};

static void w_on_close_stop_later(goev_handler *h, int reason)
{
    struct watcher *w = (struct watcher *)h;
    report("closed %d\n", reason);
    if (reason != -ECANCELED) {
        w->stop_timer.user = w;
        goev_timer_start(goev_handler_poller(h), &stopper, &w->stop_timer, 300, 0);
    }
}

static int fd_count(void)
{
    return tu_fd_count();
}

static sigset_t watched(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGRTMIN);
    return set;
}

/* Scenario "main": the watch is made before goev_reactor_run on the main
 * thread, which then runs poller 0. */
static int child_main(int pollers, int fail_on_usr1)
{
    int fds = fd_count();
    goev_reactor *r;
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = pollers;
    if (goev_reactor_new(&r, &o) < 0)
        return 10;
    static struct watcher w;
    static struct goev_handler_ops ops;
    ops = w_ops;
    ops.on_close = w_on_close_stop_later;
    goev_handler_init(&w.h, &ops);
    goev_handler_init(&stopper, &stopper_ops);
    goev_timer_init(&w.stop_timer);
    w.r = r;
    w.want_poller = goev_reactor_poller(r, 0);
    w.fail_on_usr1 = fail_on_usr1;
    sigset_t set = watched();
    int rc = goev_signal_watch(goev_reactor_poller(r, 0), &w.h, &set);
    if (rc < 0) {
        report("watch failed %d\n", rc);
        return 11;
    }
    report("ready\n");
    rc = goev_reactor_run(r);
    goev_reactor_free(r);
    /* What the watch left: SIGUSR1 pending if one came after the close. */
    sigset_t pend;
    sigpending(&pend);
    report("end pending-usr1 %d fds %d\n", sigismember(&pend, SIGUSR1), fd_count() - fds);
    return rc < 0 ? 12 : 0;
}

/* Scenario "poller": the application's own thread blocks the signals, runs
 * the reactor on threads of goev's, and the watch is made on poller 1 from
 * its own thread. */
struct post_arg {
    struct watcher *w;
    int rc;
    int done;
};

static void watch_on_poller(goev_poller *p, void *arg)
{
    struct post_arg *pa = arg;
    sigset_t set = watched();
    pa->rc = goev_signal_watch(p, &pa->w->h, &set);
    TU_STORE(&pa->done, 1);
}

static void w_on_close_report(goev_handler *h, int reason)
{
    report("closed %d\n", reason);
}

static int child_poller(void)
{
    sigset_t set = watched();
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    goev_reactor *r;
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = 2;
    if (goev_reactor_new(&r, &o) < 0)
        return 10;
    static struct watcher w;
    static struct goev_handler_ops ops;
    ops = w_ops;
    ops.on_close = w_on_close_report;
    goev_handler_init(&w.h, &ops);
    w.r = r;
    w.want_poller = goev_reactor_poller(r, 1);
    if (goev_reactor_start(r) < 0)
        return 11;
    struct post_arg pa = {.w = &w};
    goev_post(goev_reactor_poller(r, 1), watch_on_poller, &pa);
    while (!TU_LOAD(&pa.done))
        usleep(1000);
    if (pa.rc < 0) {
        report("watch failed %d\n", pa.rc);
        goev_reactor_stop(r);
    } else {
        report("ready\n");
    }
    goev_reactor_wait(r);
    goev_reactor_free(r);
    return 0;
}

/* ---- the parent's side ---------------------------------------------------- */

struct child {
    pid_t pid;
    int fd;             /* read end of the report pipe */
    char buf[1 << 16];
    size_t len;
};

/* The child's scenario, from the environment of the re-executed program:
 * CHILD_ENV=main,POLLERS,FAIL_ON_USR1,FD or poller,0,0,FD, FD being the
 * write end of the report pipe.  Runs before Criterion's main. */
#define CHILD_ENV "GOEV_TEST_SIGNAL_CHILD"

__attribute__((constructor)) static void child_entry(void)
{
    const char *v = getenv(CHILD_ENV);
    if (!v)
        return;
    char kind[16];
    int a, b, fd;
    if (sscanf(v, "%15[a-z],%d,%d,%d", kind, &a, &b, &fd) != 4)
        _exit(20);
    report_fd = fd;
    _exit(strcmp(kind, "main") == 0 ? child_main(a, b) : child_poller());
}

extern char **environ;

static void start_child(struct child *ch, int (*fn)(int, int), int a, int b, int (*fn0)(void))
{
    int pfd[2];
    cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
    cr_assert(fn == child_main || fn0 == child_poller);
    /* Everything exec needs is made before the fork. */
    static char var[96];
    snprintf(var, sizeof var, CHILD_ENV "=%s,%d,%d,%d", fn ? "main" : "poller", a, b, pfd[1]);
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    cr_assert(envp);
    memcpy(envp, environ, n * sizeof *envp);
    envp[n] = var;
    char *const argv[] = {"test_signal-child", NULL};
    ch->len = 0;
    ch->pid = fork();
    cr_assert(ch->pid >= 0);
    if (ch->pid == 0) {
        /* A failing assertion ends the test process: take the child along. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fcntl(pfd[1], F_SETFD, 0);      /* the report pipe survives exec */
        execve("/proc/self/exe", argv, envp);
        _exit(21);
    }
    free(envp);
    close(pfd[1]);
    ch->fd = pfd[0];
}

/* Read the child's reports until `want` appears in a line after `from`,
 * or ms pass.  Returns a pointer into ch->buf at the match, or NULL. */
static const char *wait_line(struct child *ch, size_t from, const char *want, int ms)
{
    uint64_t deadline = tu_now_ms() + (uint64_t)ms;
    for (;;) {
        ch->buf[ch->len] = 0;
        const char *hit = strstr(ch->buf + from, want);
        if (hit)
            return hit;
        int left = (int)(deadline - tu_now_ms());
        if (left <= 0)
            return NULL;
        struct pollfd pf = {.fd = ch->fd, .events = POLLIN};
        if (poll(&pf, 1, left) <= 0)
            continue;
        ssize_t n = read(ch->fd, ch->buf + ch->len, sizeof ch->buf - 1 - ch->len);
        if (n <= 0)
            return NULL;
        ch->len += (size_t)n;
    }
}

static int count_of(const struct child *ch, const char *what)
{
    int n = 0;
    for (const char *p = ch->buf; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

static int end_child(struct child *ch)
{
    int st = 0;
    uint64_t deadline = tu_now_ms() + 5000;
    pid_t w;
    while ((w = waitpid(ch->pid, &st, WNOHANG)) == 0 && tu_now_ms() < deadline)
        tu_sleep_ms(5);
    if (w == 0) {
        kill(ch->pid, SIGKILL);
        waitpid(ch->pid, &st, 0);
        cr_assert_fail("child did not exit; it reported:\n%s", ch->buf);
    }
    /* The rest of the reports. */
    ssize_t n;
    while ((n = read(ch->fd, ch->buf + ch->len, sizeof ch->buf - 1 - ch->len)) > 0)
        ch->len += (size_t)n;
    ch->buf[ch->len] = 0;
    close(ch->fd);
    return st;
}

static void expect_exit0(struct child *ch)
{
    int st = end_child(ch);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "child status %#x; it reported:\n%s", st, ch->buf);
    cr_assert_eq(count_of(ch, "wrong-thread"), 0, "on_signal on another thread:\n%s", ch->buf);
}

Test(signal, each_signal_once, .timeout = TU_TIMEOUT)
{
    static struct child ch;
    start_child(&ch, child_main, 1, 0, NULL);
    cr_assert(wait_line(&ch, 0, "ready\n", 5000), "child never ready:\n%s", ch.buf);
    char want[96];
    /* One at a time: each kill is answered by exactly one on_signal. */
    for (int i = 0; i < 20; i++) {
        size_t from = ch.len;
        cr_assert_eq(kill(ch.pid, SIGUSR1), 0);
        snprintf(want, sizeof want, "sig %d code %d pid %d", SIGUSR1, SI_USER, (int)getpid());
        cr_assert(wait_line(&ch, from, want, 3000), "SIGUSR1 #%d not reported:\n%s", i, ch.buf);
    }
    size_t from = ch.len;
    kill(ch.pid, SIGUSR2);
    snprintf(want, sizeof want, "sig %d code %d", SIGUSR2, SI_USER);
    cr_assert(wait_line(&ch, from, want, 3000), "SIGUSR2 not reported:\n%s", ch.buf);
    /* Real-time signals queue: all 50 arrive, in order, with their values. */
    from = ch.len;
    for (int i = 0; i < 50; i++) {
        union sigval v = {.sival_int = 1000 + i};
        cr_assert_eq(sigqueue(ch.pid, SIGRTMIN, v), 0, "%s", strerror(errno));
    }
    snprintf(want, sizeof want, "value %d\n", 1049);
    cr_assert(wait_line(&ch, from, want, 3000), "queued signals missing:\n%s", ch.buf + from);
    const char *p = ch.buf + from;
    for (int i = 0; i < 50; i++) {
        snprintf(want, sizeof want, "sig %d code %d pid %d value %d\n", SIGRTMIN, SI_QUEUE,
                 (int)getpid(), 1000 + i);
        const char *hit = strstr(p, want);
        cr_assert(hit, "queued signal %d missing or out of order:\n%s", i, ch.buf + from);
        p = hit + strlen(want);
    }
    tu_sleep_ms(50);
    cr_assert_eq(count_of(&ch, "sig 10 "), 20, "SIGUSR1 reports:\n%s", ch.buf);
    cr_assert_eq(count_of(&ch, "sig 12 "), 1);
    kill(ch.pid, SIGTERM);
    expect_exit0(&ch);
    snprintf(want, sizeof want, "sig %d ", SIGTERM);
    cr_assert_eq(count_of(&ch, want), 1, "SIGTERM reports:\n%s", ch.buf);
    cr_assert(strstr(ch.buf, "closed -125\n"), "watch not closed at stop:\n%s", ch.buf);
    cr_assert(strstr(ch.buf, "fds 0\n"), "the signalfd leaked:\n%s", ch.buf);
}

Test(signal, watch_on_a_poller_thread, .timeout = TU_TIMEOUT)
{
    static struct child ch;
    start_child(&ch, NULL, 0, 0, child_poller);
    cr_assert(wait_line(&ch, 0, "ready\n", 5000), "child never ready:\n%s", ch.buf);
    for (int i = 0; i < 5; i++) {
        size_t from = ch.len;
        kill(ch.pid, SIGUSR2);
        cr_assert(wait_line(&ch, from, "sig 12 ", 3000), "SIGUSR2 #%d:\n%s", i, ch.buf);
    }
    kill(ch.pid, SIGTERM);
    expect_exit0(&ch);
    cr_assert_eq(count_of(&ch, "sig 12 "), 5);
    cr_assert(strstr(ch.buf, "closed -125\n"), "%s", ch.buf);
}

Test(signal, callback_error_closes_the_watch, .timeout = TU_TIMEOUT)
{
    static struct child ch;
    start_child(&ch, child_main, 1, -EIO, NULL);
    cr_assert(wait_line(&ch, 0, "ready\n", 5000), "child never ready:\n%s", ch.buf);
    kill(ch.pid, SIGUSR1);
    cr_assert(wait_line(&ch, 0, "closed -5\n", 3000), "on_close(-EIO) missing:\n%s", ch.buf);
    /* The watch is gone; the signal stays blocked and waits, pending. */
    kill(ch.pid, SIGUSR1);
    expect_exit0(&ch);
    cr_assert_eq(count_of(&ch, "sig 10 "), 1, "%s", ch.buf);
    cr_assert(strstr(ch.buf, "end pending-usr1 1 fds 0\n"), "%s", ch.buf);
}

static int bad_on_signal(goev_handler *h, const struct goev_siginfo *si)
{
    return 0;
}

Test(signal, bad_arguments, .timeout = TU_TIMEOUT)
{
    goev_reactor *r = tu_reactor_new(1);
    goev_poller *p = goev_reactor_poller(r, 0);
    static const struct goev_handler_ops ops = {.on_signal = bad_on_signal};
    static const struct goev_handler_ops no_cb = {.on_close = NULL};
    goev_handler h;
    goev_handler_init(&h, &ops);
    sigset_t set;
    sigemptyset(&set);
    cr_assert_eq(goev_signal_watch(p, &h, &set), -EINVAL, "empty set");
    sigaddset(&set, SIGKILL);
    cr_assert_eq(goev_signal_watch(p, &h, &set), -EINVAL, "SIGKILL");
    sigemptyset(&set);
    sigaddset(&set, SIGSTOP);
    cr_assert_eq(goev_signal_watch(p, &h, &set), -EINVAL, "SIGSTOP");
    sigemptyset(&set);
    sigaddset(&set, SIGWINCH);
    goev_handler h2;
    goev_handler_init(&h2, &no_cb);
    cr_assert_eq(goev_signal_watch(p, &h2, &set), -EINVAL, "no on_signal");
    cr_assert_eq(goev_signal_watch(p, &h, NULL), -EINVAL);
    /* A handler already in use cannot become a signal watch too. */
    cr_assert_eq(goev_signal_watch(p, &h, &set), 0);
    cr_assert_eq(goev_signal_watch(p, &h, &set), -EINVAL, "h already watching");
    goev_reactor_free(r);   /* never ran: closes the watch here */
}
