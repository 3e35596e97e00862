/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- failures ----------------------------------------------------------- */

static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
static int fail_count;
static char fail_msg[512];

void tu_fail_at(const char *file, int line, const char *fmt, ...)
{
    pthread_mutex_lock(&fail_mu);
    if (fail_count++ == 0) {
        int n = snprintf(fail_msg, sizeof fail_msg, "%s:%d: ", file, line);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(fail_msg + n, sizeof fail_msg - (size_t)n, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&fail_mu);
}

int tu_failures(void)
{
    pthread_mutex_lock(&fail_mu);
    int n = fail_count;
    pthread_mutex_unlock(&fail_mu);
    return n;
}

void tu_assert_no_failures(void)
{
    pthread_mutex_lock(&fail_mu);
    int n = fail_count;
    char msg[sizeof fail_msg];
    memcpy(msg, fail_msg, sizeof msg);
    pthread_mutex_unlock(&fail_mu);
    cr_assert(n == 0, "%d failure(s) off the test thread; first: %s", n, msg);
}

/* ---- reactor ------------------------------------------------------------ */

const char *tu_backend_env(void)
{
    const char *b = getenv("GOEV_BACKEND");
    return b ? b : "";
}

goev_reactor *tu_reactor_new_opts(const struct goev_reactor_opts *o)
{
    goev_reactor *r = NULL;
    int rc = goev_reactor_new(&r, o);
    /* Only a kernel that refuses io_uring is a reason to skip; on a kernel
     * that has it, any failure is a bug. */
    if ((rc == -ENOSYS || rc == -EPERM || rc == -EOPNOTSUPP) && strcmp(tu_backend_env(), "io_uring") == 0)
        cr_skip_test("io_uring unavailable: %s", goev_last_error());
    cr_assert(rc == 0 && r != NULL, "goev_reactor_new: %s (%s)", strerror(-rc),
              goev_last_error());
    const char *want = tu_backend_env();
    if (strcmp(want, "epoll") == 0 || strcmp(want, "io_uring") == 0)
        cr_assert_str_eq(goev_backend_name(r), want,
                         "GOEV_BACKEND=%s but backend is %s", want, goev_backend_name(r));
    return r;
}

goev_reactor *tu_reactor_new(int pollers)
{
    struct goev_reactor_opts o;
    goev_reactor_opts_init(&o);
    o.pollers = pollers;
    return tu_reactor_new_opts(&o);
}

void tu_reactor_start(goev_reactor *r)
{
    int rc = goev_reactor_start(r);
    cr_assert(rc == 0, "goev_reactor_start: %s", strerror(-rc));
}

void tu_reactor_stop_wait(goev_reactor *r)
{
    int rc = goev_reactor_stop(r);
    cr_assert(rc == 0, "goev_reactor_stop: %s", strerror(-rc));
    rc = goev_reactor_wait(r);
    cr_assert(rc == 0, "goev_reactor_wait: %s", strerror(-rc));
}

struct run_on {
    goev_post_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static void run_on_tramp(goev_poller *p, void *arg)
{
    struct run_on *ro = arg;
    ro->fn(p, ro->arg);
    pthread_mutex_lock(&ro->mu);
    ro->done = 1;
    pthread_cond_signal(&ro->cv);
    pthread_mutex_unlock(&ro->mu);
}

void tu_run_on(goev_poller *p, goev_post_fn fn, void *arg)
{
    struct run_on ro = {.fn = fn, .arg = arg};
    pthread_mutex_init(&ro.mu, NULL);
    pthread_cond_init(&ro.cv, NULL);
    int rc = goev_post(p, run_on_tramp, &ro);
    cr_assert(rc == 0, "goev_post: %s", strerror(-rc));
    pthread_mutex_lock(&ro.mu);
    while (!ro.done)
        pthread_cond_wait(&ro.cv, &ro.mu);
    pthread_mutex_unlock(&ro.mu);
    pthread_cond_destroy(&ro.cv);
    pthread_mutex_destroy(&ro.mu);
}

/* ---- sockets ------------------------------------------------------------ */

void tu_set_io_timeout(int fd, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

int tu_connect_fd(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINTR)
        return -1;
    /* An interrupted connect goes on in the kernel: wait for its outcome
     * instead of calling connect again (which would say EALREADY). */
    struct pollfd pfd = { .fd = fd, .events = POLLOUT };
    int n;
    do
        n = poll(&pfd, 1, TU_IO_TIMEOUT_MS);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        errno = ETIMEDOUT;
    if (n <= 0)
        return -1;
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        return -1;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int tu_connect_sa(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    tu_set_io_timeout(fd, TU_IO_TIMEOUT_MS);
    if (tu_connect_fd(fd, sa, len) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int tu_connect_tcp4(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return tu_connect_sa((struct sockaddr *)&sin, sizeof sin);
}

int tu_connect_tcp6(int port)
{
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    s6.sin6_addr = in6addr_loopback;
    return tu_connect_sa((struct sockaddr *)&s6, sizeof s6);
}

int tu_connect_unix(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sun.sun_path, path);
    return tu_connect_sa((struct sockaddr *)&sun, sizeof sun);
}

int tu_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int tu_read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t tu_read_to_eof(int fd, void *buf, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        ssize_t n = read(fd, (char *)buf + got, cap - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

int tu_wait_eof(int fd, int ms, size_t *discarded)
{
    uint64_t deadline = tu_now_ms() + (uint64_t)ms;
    char buf[65536];
    size_t total = 0;
    for (;;) {
        uint64_t now = tu_now_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)(deadline - now));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) {
            if (discarded)
                *discarded = total;
            return 1;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return -errno;
        }
        total += (size_t)n;
    }
    if (discarded)
        *discarded = total;
    return 0;
}

int tu_listen_tcp4(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sin;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, backlog) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

/* ---- fds ---------------------------------------------------------------- */

int tu_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

void tu_assert_fds(int before)
{
    /* Closing may finish on a poller thread a moment after the wait
     * returned (io_uring close completions); give it a little time. */
    int now = tu_fd_count();
    for (int i = 0; i < 200 && now != before; i++) {
        tu_sleep_ms(10);
        now = tu_fd_count();
    }
    cr_assert_eq(now, before, "fd leak: %d open before, %d after", before, now);
}

/* ---- child processes ---------------------------------------------------- */

/* Servers started and not yet stopped, by pid and stderr fd (copies: the
 * caller's struct may be on a stack that a failed assertion unwound). */
#define TU_MAX_SERVERS 16
static struct {
    pid_t pid;
    int err_fd;
} live_servers[TU_MAX_SERVERS];

static void live_add(pid_t pid, int err_fd)
{
    for (int i = 0; i < TU_MAX_SERVERS; i++)
        if (!live_servers[i].pid) {
            live_servers[i].pid = pid;
            live_servers[i].err_fd = err_fd;
            return;
        }
}

static void live_del(pid_t pid)
{
    for (int i = 0; i < TU_MAX_SERVERS; i++)
        if (live_servers[i].pid == pid)
            live_servers[i].pid = 0;
}

void tu_servers_cleanup(void)
{
    for (int i = 0; i < TU_MAX_SERVERS; i++) {
        pid_t pid = live_servers[i].pid;
        if (!pid)
            continue;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        close(live_servers[i].err_fd);
        live_servers[i].pid = 0;
    }
}

static int wait_status(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* In a freshly forked child, before exec: die with the parent, drop every
 * fd but 0-2 (the test process's pipes are not the child's business) and
 * undo the signal state the test process may have (blocked or ignored
 * signals are inherited across exec). */
static void child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)        /* the parent died before prctl */
        _exit(127);
    if (syscall(SYS_close_range, 3u, ~0u, 0u) < 0)
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
}

/* Append what can be read from fd now (or within ms) to *buf.  Returns 1
 * at EOF, 0 otherwise.  Keeps at most 1 MiB. */
static int drain_fd(int fd, char **buf, size_t *len, size_t *cap, int ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int rc = poll(&pfd, 1, ms);
    if (rc <= 0)
        return 0;
    char tmp[4096];
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : 1;
    if (n == 0)
        return 1;
    if (*len + (size_t)n + 1 > *cap && *len < (1u << 20)) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + (size_t)n + 1)
            c *= 2;
        char *b = realloc(*buf, c);
        if (b) {
            *buf = b;
            *cap = c;
        }
    }
    if (*len + (size_t)n + 1 <= *cap) {
        memcpy(*buf + *len, tmp, (size_t)n);
        *len += (size_t)n;
        (*buf)[*len] = '\0';
    }
    return 0;
}

/* Whether this process can use io_uring (for the skip rule of
 * tu_server_start): a reactor made and freed at once. */
static void require_backend(void)
{
    if (strcmp(tu_backend_env(), "io_uring") != 0)
        return;
    goev_reactor *r = tu_reactor_new(1);    /* skips the test if refused */
    goev_reactor_free(r);
}

void tu_server_start(struct tu_server *s, const char *const argv[])
{
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
    require_backend();
    int ep[2];
    cr_assert(pipe2(ep, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(ep[1], 2);
        child_setup(parent);
        execv(argv[0], (char *const *)argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(ep[1]);
    s->pid = pid;
    s->err_fd = ep[0];
    live_add(pid, ep[0]);

    size_t cap = 0;
    uint64_t deadline = tu_now_ms() + TU_IO_TIMEOUT_MS;
    const char *line = NULL;
    int eof = 0;
    while (!eof && tu_now_ms() < deadline) {
        eof = drain_fd(s->err_fd, &s->log, &s->log_len, &cap, 10);
        if (s->log && (line = strstr(s->log, "listening on ")) && strchr(line, '\n'))
            break;
        line = NULL;
    }
    if (!line) {
        int st = tu_server_stop(s, SIGKILL, 1000);
        cr_assert_fail("%s did not start (%s, exit status %d); its stderr:\n%s", argv[0],
                       eof ? "stderr closed" : "timed out", st, s->log ? s->log : "");
    }
    cr_assert(sscanf(line, "listening on %d backend=%15s", &s->port, s->backend) == 2 &&
                  s->port > 0,
              "cannot read the port from: %s", line);
    const char *want = tu_backend_env();
    if (strcmp(want, "epoll") == 0 || strcmp(want, "io_uring") == 0)
        cr_assert_str_eq(s->backend, want, "GOEV_BACKEND=%s but %s says backend=%s", want,
                         argv[0], s->backend);
}

int tu_server_stop(struct tu_server *s, int sig, int ms)
{
    if (!s->pid)
        return -1;
    kill(s->pid, sig);
    size_t cap = s->log_len + 1;
    uint64_t deadline = tu_now_ms() + (uint64_t)ms;
    int status = -1, st, eof = s->err_fd < 0;
    for (;;) {
        if (!eof)
            eof = drain_fd(s->err_fd, &s->log, &s->log_len, &cap, 10);
        else
            tu_sleep_ms(5);
        pid_t w = waitpid(s->pid, &st, WNOHANG);
        if (w == s->pid) {
            status = wait_status(st);
            break;
        }
        if (tu_now_ms() >= deadline) {
            kill(s->pid, SIGKILL);
            while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
                ;
            break;
        }
    }
    /* What the child wrote last (a sanitizer's report) is in the pipe. */
    for (int i = 0; !eof && i < 100; i++)
        eof = drain_fd(s->err_fd, &s->log, &s->log_len, &cap, 10);
    live_del(s->pid);
    if (s->err_fd >= 0)
        close(s->err_fd);
    s->err_fd = -1;
    s->pid = 0;
    return status;
}

void tu_server_free(struct tu_server *s)
{
    if (s->pid)
        tu_server_stop(s, SIGKILL, 1000);
    free(s->log);
    s->log = NULL;
    s->log_len = 0;
}

void tu_server_stop_ok(struct tu_server *s)
{
    int st = tu_server_stop(s, SIGTERM, TU_IO_TIMEOUT_MS);
    if (st != 0) {
        /* Copy what the assertion prints: s->log is freed first. */
        char msg[4096];
        snprintf(msg, sizeof msg, "%s", s->log ? s->log : "");
        tu_server_free(s);
        cr_assert_fail("server exit status %d after SIGTERM (want 0); its stderr:\n%s", st, msg);
    }
    tu_server_free(s);
}

int tu_proc_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

void tu_output_free(struct tu_output *o)
{
    if (!o)
        return;
    free(o->out);
    free(o->err);
    memset(o, 0, sizeof *o);
}

int tu_run(const char *const argv[], const char *input, int ms, struct tu_output *o)
{
    struct tu_output local = {0};
    struct tu_output *out = o ? o : &local;
    memset(out, 0, sizeof *out);
    int ip[2] = {-1, -1}, op[2], ep[2];
    if (input && pipe2(ip, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(op, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int in = input ? ip[0] : open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(op[1], 1);
        dup2(ep[1], 2);
        child_setup(parent);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(op[1]);
    close(ep[1]);
    if (input)
        close(ip[0]);
    int in_fd = input ? ip[1] : -1;
    size_t in_off = 0, in_len = input ? strlen(input) : 0;
    if (in_fd >= 0 && in_len == 0) {
        close(in_fd);
        in_fd = -1;
    }
    if (in_fd >= 0)
        fcntl(in_fd, F_SETFL, O_NONBLOCK);
    size_t ocap = 0, ecap = 0;
    int oeof = 0, eeof = 0, status = -1, st;
    uint64_t deadline = tu_now_ms() + (uint64_t)ms;
    while (!(oeof && eeof)) {
        uint64_t now = tu_now_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd[3] = {
            {.fd = oeof ? -1 : op[0], .events = POLLIN},
            {.fd = eeof ? -1 : ep[0], .events = POLLIN},
            {.fd = in_fd, .events = POLLOUT},
        };
        int rc = poll(pfd, 3, (int)(deadline - now));
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0)
            continue;
        if (pfd[0].revents)
            oeof = drain_fd(op[0], &out->out, &out->out_len, &ocap, 0);
        if (pfd[1].revents)
            eeof = drain_fd(ep[0], &out->err, &out->err_len, &ecap, 0);
        if (in_fd >= 0 && pfd[2].revents) {
            ssize_t n = write(in_fd, input + in_off, in_len - in_off);
            if (n > 0)
                in_off += (size_t)n;
            if ((n < 0 && errno != EAGAIN && errno != EINTR) || in_off == in_len) {
                close(in_fd);
                in_fd = -1;
            }
        }
    }
    if (in_fd >= 0)
        close(in_fd);
    close(op[0]);
    close(ep[0]);
    if (oeof && eeof) {
        /* Both pipes closed: the child is exiting (or handed them on). */
        while (tu_now_ms() < deadline) {
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid) {
                status = wait_status(st);
                break;
            }
            tu_sleep_ms(2);
        }
    }
    if (status == -1) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    /* Never NULL for the caller, so that strstr and printing are safe. */
    if (!out->out)
        out->out = calloc(1, 1);
    if (!out->err)
        out->err = calloc(1, 1);
    if (!o)
        tu_output_free(&local);
    return status;
}

bool tu_have_tool(const char *name)
{
    const char *path = getenv("PATH");
    if (!path || strchr(name, '/'))
        return access(name, X_OK) == 0;
    char buf[4096];
    for (const char *p = path;;) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, n ? p : ".", name);
        struct stat sb;
        if (stat(buf, &sb) == 0 && S_ISREG(sb.st_mode) && access(buf, X_OK) == 0)
            return true;
        if (!c)
            return false;
        p = c + 1;
    }
}

void tu_require_tool(const char *name)
{
    if (tu_have_tool(name))
        return;
    if (getenv("CI"))
        cr_assert_fail("%s is not installed; CI is set, so this check must run "
                       "(scripts/deps installs it)", name);
    cr_skip_test("%s is not installed: check skipped (set CI to make this a failure)", name);
}

/* ---- temporary directory ------------------------------------------------ */

/* A failed assertion ends the test before tu_tmpdir_free: remove what is
 * left when the test process exits. */
static char *live_dirs[8];

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static void rm_live_dirs(void)
{
    for (int i = 0; i < 8; i++)
        if (live_dirs[i])
            rm_dir(live_dirs[i]);
}

char *tu_tmpdir(void)
{
    static int registered;
    char *d = strdup("/tmp/goev-test-XXXXXX");
    cr_assert(d && mkdtemp(d), "mkdtemp: %s", strerror(errno));
    if (!registered++)
        atexit(rm_live_dirs);
    for (int i = 0; i < 8; i++)
        if (!live_dirs[i]) {
            live_dirs[i] = d;
            break;
        }
    return d;
}

void tu_tmpdir_free(char *dir)
{
    if (!dir)
        return;
    for (int i = 0; i < 8; i++)
        if (live_dirs[i] == dir)
            live_dirs[i] = NULL;
    rm_dir(dir);
    free(dir);
}

/* ---- time --------------------------------------------------------------- */

long tu_scale(void)
{
    const char *e = getenv("GOEV_TEST_SCALE");
    long div = e ? strtol(e, NULL, 10) : 1;
    return div > 1 ? div : 1;
}

long tu_scaled(long n, long min)
{
    n /= tu_scale();
    return n < min ? min : n;
}

uint64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void tu_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- randomness --------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void tu_rng_seed(struct tu_rng *g, uint64_t seed)
{
    g->s = seed;
}

uint64_t tu_rng_next(struct tu_rng *g)
{
    g->s += 0x9e3779b97f4a7c15ull;
    return splitmix64(g->s);
}

uint64_t tu_rng_range(struct tu_rng *g, uint64_t lo, uint64_t hi)
{
    return lo + tu_rng_next(g) % (hi - lo + 1);
}

uint8_t tu_stream_byte(uint64_t seed, uint64_t i)
{
    return (uint8_t)(splitmix64(seed * 0x100000001b3ull ^ (i >> 3)) >> ((i & 7) * 8));
}

void tu_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len)
{
    uint8_t *b = buf;
    size_t k = 0;
    /* Whole 8-byte words at a time: the suites move tens of megabytes. */
    while (k < len && ((off + k) & 7))
        b[k] = tu_stream_byte(seed, off + k), k++;
    while (len - k >= 8) {
        uint64_t w = splitmix64(seed * 0x100000001b3ull ^ ((off + k) >> 3));
        for (int j = 0; j < 8; j++)
            b[k + (size_t)j] = (uint8_t)(w >> (j * 8));
        k += 8;
    }
    while (k < len)
        b[k] = tu_stream_byte(seed, off + k), k++;
}

ptrdiff_t tu_stream_check(uint64_t seed, uint64_t off, const void *buf, size_t len)
{
    const uint8_t *b = buf;
    uint8_t tmp[4096];
    for (size_t k = 0; k < len;) {
        size_t n = len - k < sizeof tmp ? len - k : sizeof tmp;
        tu_stream_fill(seed, off + k, tmp, n);
        if (memcmp(tmp, b + k, n) != 0) {
            for (size_t j = 0; j < n; j++)
                if (tmp[j] != b[k + j])
                    return (ptrdiff_t)(k + j);
        }
        k += n;
    }
    return -1;
}

/* ---- allocation failures -------------------------------------------------- */

static unsigned alloc_mask, alloc_refused;

static bool alloc_refuse(unsigned kind)
{
    if (!(__atomic_load_n(&alloc_mask, __ATOMIC_ACQUIRE) & kind))
        return false;
    __atomic_add_fetch(&alloc_refused, 1, __ATOMIC_ACQ_REL);
    return true;
}

static void *tu_malloc(size_t n) { return alloc_refuse(TU_FAIL_MALLOC) ? NULL : malloc(n); }
static void *tu_realloc(void *p, size_t n) { return alloc_refuse(TU_FAIL_REALLOC) ? NULL : realloc(p, n); }
static void *tu_calloc(size_t k, size_t n) { return alloc_refuse(TU_FAIL_CALLOC) ? NULL : calloc(k, n); }

void tu_alloc_fail(unsigned mask)
{
    static bool installed;
    if (!installed) {
        cr_assert_eq(goev_replace_allocator(tu_malloc, tu_realloc, tu_calloc, free), 0);
        installed = true;
    }
    __atomic_store_n(&alloc_mask, mask, __ATOMIC_RELEASE);
}

unsigned tu_alloc_refused(void)
{
    return __atomic_load_n(&alloc_refused, __ATOMIC_ACQUIRE);
}
