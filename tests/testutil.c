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
#include <sys/stat.h>
#include <sys/un.h>
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
