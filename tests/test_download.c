/* test_download.c - examples/download, driven from outside as a user would:
 * the server runs as a child process (GOEV_BACKEND comes with the
 * environment, so this suite runs once per backend) and is talked to with
 * curl and with plain sockets.
 *
 * Each case makes its own directory (mkdtemp) with the files it needs and
 * its own server on port 0 (read from the server's "listening on PORT"
 * line), so the cases run in parallel.  Every server is stopped with
 * SIGTERM at the end of its case and must exit with status 0 (under ASan
 * that includes LeakSanitizer's verdict); if a case fails first, the .fini
 * hook and PR_SET_PDEATHSIG make sure no server outlives it.
 *
 * Without curl the cases skip, unless CI is set: then they fail. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define BIG_SIZE (32u << 20)
#define MID_SIZE (1u << 20)
#define SMALL_SIZE 1000u
#define SPARSE_SIZE (1ull << 30)
#define SECRET "outside-DIR-secret-7f3a9c\n"
/* One timeout for every case: the two pacing downloads (6 s) dominate.
 * Uniform on purpose - with cases of different timeouts running in
 * parallel, Criterion 2.4.1's runner leaks 48 bytes, which LeakSanitizer
 * then reports against the suite under ASan. */
#define DL_TIMEOUT 40.0

/* ---- child processes ------------------------------------------------------- */

/* Every child this case started and has not reaped: killed by dl_fini. */
static pid_t dl_children[16];

static void dl_track(pid_t pid, bool add)
{
    for (size_t i = 0; i < sizeof dl_children / sizeof dl_children[0]; i++) {
        if (add ? dl_children[i] == 0 : dl_children[i] == pid) {
            dl_children[i] = add ? pid : 0;
            return;
        }
    }
}

static void dl_rmtree(const char *path);

/* Temporary directories of this case not yet removed: dl_fini removes them
 * when a failed assertion skipped the case's own cleanup. */
static char *dl_dirs[8];

static void dl_fini(void)
{
    for (size_t i = 0; i < sizeof dl_children / sizeof dl_children[0]; i++) {
        if (dl_children[i] > 0) {
            kill(dl_children[i], SIGKILL);
            waitpid(dl_children[i], NULL, 0);
            dl_children[i] = 0;
        }
    }
    for (size_t i = 0; i < sizeof dl_dirs / sizeof dl_dirs[0]; i++) {
        if (dl_dirs[i]) {
            dl_rmtree(dl_dirs[i]);
            dl_dirs[i] = NULL;
        }
    }
}

static void dl_init(void)
{
    /* curl and the sockets here must not kill the test with a SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
}

/* Start argv[0] (a path) with stdout and stderr to the files named (NULL:
 * /dev/null) and the environment plus env_add ("NAME=value", NULL-ended;
 * may be NULL).  The child dies with the test (PR_SET_PDEATHSIG).  Only
 * async-signal-safe calls after the fork: the test process has threads. */
static pid_t dl_spawn(char *const argv[], const char *out, const char *err,
                      char *const env_add[])
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    while (env_add && env_add[k])
        k++;
    char **envp = calloc(n + k + 1, sizeof *envp);
    cr_assert(envp);
    memcpy(envp, environ, n * sizeof *envp);
    if (k)
        memcpy(envp + n, env_add, k * sizeof *envp);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        signal(SIGPIPE, SIG_DFL);
        int o = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int e = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (o < 0 || e < 0 || nul < 0 || dup2(nul, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(126);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    free(envp);
    dl_track(pid, true);
    return pid;
}

/* Wait up to ms for pid: its wait status, or -1 after killing it. */
static int dl_wait(pid_t pid, unsigned ms)
{
    uint64_t end = tu_now_ms() + ms;
    int st;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            st = -1;
            break;
        }
        if (tu_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            st = -1;
            break;
        }
        tu_sleep_ms(5);
    }
    dl_track(pid, false);
    return st;
}

/* The whole file, NUL-terminated (len without the NUL); NULL if unreadable.
 * Read to EOF, not by st_size: /proc files say 0. */
static char *dl_slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, got = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (got + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + got, cap - got - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (len)
        *len = got;
    return buf;
}

static int dl_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void dl_rmtree(const char *path)
{
    nftw(path, dl_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *dl_mkdtemp(void)
{
    const char *t = getenv("TMPDIR");
    char *p;
    cr_assert(asprintf(&p, "%s/goev-dl-XXXXXX", t && *t ? t : "/tmp") > 0);
    cr_assert(mkdtemp(p), "mkdtemp: %s", strerror(errno));
    for (size_t i = 0; i < sizeof dl_dirs / sizeof dl_dirs[0]; i++) {
        if (!dl_dirs[i]) {
            dl_dirs[i] = p;
            break;
        }
    }
    return p;
}

/* ---- curl ---------------------------------------------------------------------- */

static const char *dl_curl_path(void)
{
    static char found[PATH_MAX];
    if (found[0])
        return found;
    const char *path = getenv("PATH");
    char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
    for (char *save, *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(found, sizeof found, "%s/curl", d);
        if (access(found, X_OK) == 0) {
            free(copy);
            return found;
        }
    }
    free(copy);
    found[0] = '\0';
    return NULL;
}

static void dl_need_curl(void)
{
    tu_require_tool("curl");
}

/* Run curl with args (NULL-ended, after the common ones); what it writes on
 * stdout (the -w output, or -I headers) in *out.  Returns its exit code. */
static int dl_curl(char **out, const char *dir, const char *const args[])
{
    char *argv[160];
    int n = 0;
    argv[n++] = (char *)dl_curl_path();
    argv[n++] = "-q";                   /* no ~/.curlrc */
    argv[n++] = "-sS";
    argv[n++] = "--noproxy";
    argv[n++] = "*";
    argv[n++] = "--max-time";
    argv[n++] = "25";
    for (int i = 0; args[i]; i++) {
        cr_assert(n < 159);
        argv[n++] = (char *)args[i];
    }
    argv[n] = NULL;
    char outp[PATH_MAX], errp[PATH_MAX];
    snprintf(outp, sizeof outp, "%s/curl.out", dir);
    snprintf(errp, sizeof errp, "%s/curl.err", dir);
    pid_t pid = dl_spawn(argv, outp, errp, NULL);
    int st = dl_wait(pid, 30000);
    cr_assert(st != -1, "curl did not finish");
    if (out)
        *out = dl_slurp(outp, NULL);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        char *e = dl_slurp(errp, NULL);
        cr_log_info("curl failed (status %d): %s", st, e ? e : "");
        free(e);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- the directory served --------------------------------------------------------- */

struct dl_dir {
    char *dir;          /* DIR */
    char *outside;      /* another directory, holding "secret" */
    char *work;         /* curl's output files */
    char *big;          /* contents of DIR/big (NULL unless asked for) */
    char small[SMALL_SIZE];
    char *mid;          /* contents of DIR/mid */
};

static void dl_fill(char *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(buf + i, &x, len - i < 8 ? len - i : 8);
    }
}

static void dl_write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "%s: %s", p, strerror(errno));
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, (const char *)data + done, len - done);
        cr_assert(n > 0 || errno == EINTR, "%s: %s", p, strerror(errno));
        if (n > 0)
            done += (size_t)n;
    }
    close(fd);
}

/* DIR: big (32 MiB, only if want_big), mid (1 MiB), small, empty, sub/ (a
 * directory with a file), in_link -> small, out_abs -> OUTSIDE/secret,
 * out_rel -> ../OUTSIDE-NAME/secret, sparse (1 GiB, no blocks). */
static void dl_dir_make(struct dl_dir *d, bool want_big)
{
    memset(d, 0, sizeof *d);
    d->dir = dl_mkdtemp();
    d->outside = dl_mkdtemp();
    d->work = dl_mkdtemp();
    char p[PATH_MAX], q[PATH_MAX];
    dl_write_file(d->outside, "secret", SECRET, strlen(SECRET));
    if (want_big) {
        d->big = malloc(BIG_SIZE);
        dl_fill(d->big, BIG_SIZE, 1);
        dl_write_file(d->dir, "big", d->big, BIG_SIZE);
    }
    d->mid = malloc(MID_SIZE);
    dl_fill(d->mid, MID_SIZE, 2);
    dl_write_file(d->dir, "mid", d->mid, MID_SIZE);
    dl_fill(d->small, SMALL_SIZE, 3);
    dl_write_file(d->dir, "small", d->small, SMALL_SIZE);
    dl_write_file(d->dir, "empty", "", 0);
    snprintf(p, sizeof p, "%s/sub", d->dir);
    cr_assert_eq(mkdir(p, 0755), 0);
    dl_write_file(p, "inner", "inner\n", 6);
    snprintf(p, sizeof p, "%s/in_link", d->dir);
    cr_assert_eq(symlink("small", p), 0);
    snprintf(p, sizeof p, "%s/out_abs", d->dir);
    snprintf(q, sizeof q, "%s/secret", d->outside);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(p, sizeof p, "%s/out_rel", d->dir);
    snprintf(q, sizeof q, "../%s/secret", strrchr(d->outside, '/') + 1);
    cr_assert_eq(symlink(q, p), 0);
    snprintf(p, sizeof p, "%s/sparse", d->dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0);
    cr_assert_eq(ftruncate(fd, (off_t)SPARSE_SIZE), 0);
    close(fd);
}

static void dl_dir_free(struct dl_dir *d)
{
    for (size_t i = 0; i < sizeof dl_dirs / sizeof dl_dirs[0]; i++)
        dl_dirs[i] = NULL;
    dl_rmtree(d->dir);
    dl_rmtree(d->outside);
    dl_rmtree(d->work);
    free(d->dir);
    free(d->outside);
    free(d->work);
    free(d->big);
    free(d->mid);
}

/* ---- the server ----------------------------------------------------------------- */

struct dl_srv {
    pid_t pid;
    int port;
    char err[PATH_MAX];     /* its stderr */
    char base[64];          /* "http://127.0.0.1:PORT" */
};

static const char *dl_server_path(void)
{
    const char *p = getenv("DL_SERVER");
    return p && *p ? p : "examples/download";
}

/* Wait up to ms for needle in the server's stderr. */
static bool dl_srv_saw(struct dl_srv *s, const char *needle, unsigned ms)
{
    uint64_t end = tu_now_ms() + ms;
    do {
        char *e = dl_slurp(s->err, NULL);
        bool yes = e && strstr(e, needle);
        free(e);
        if (yes)
            return true;
        tu_sleep_ms(10);
    } while (tu_now_ms() < end);
    return false;
}

/* Start examples/download -p 0 -t 2 -d DIR [extra...] with env_add. */
static void dl_srv_start(struct dl_srv *s, struct dl_dir *d, const char *extra[],
                         char *const env_add[])
{
    memset(s, 0, sizeof *s);
    snprintf(s->err, sizeof s->err, "%s/server.err", d->work);
    char *argv[16] = {(char *)dl_server_path(), "-p", "0", "-t", "2", "-d", d->dir};
    int n = 7;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    cr_assert_eq(access(argv[0], X_OK), 0, "%s: %s (run from the build directory, or set DL_SERVER)",
                 argv[0], strerror(errno));
    s->pid = dl_spawn(argv, NULL, s->err, env_add);
    uint64_t end = tu_now_ms() + 10000;
    for (;;) {
        char *e = dl_slurp(s->err, NULL);
        char *l = e ? strstr(e, "listening on ") : NULL;
        char backend[32] = "";
        if (l && sscanf(l, "listening on %d backend=%31s", &s->port, backend) == 2) {
            const char *want = tu_backend_env();
            if (!strcmp(want, "epoll") || !strcmp(want, "io_uring"))
                cr_assert_str_eq(backend, want, "GOEV_BACKEND=%s, server on %s", want, backend);
            free(e);
            break;
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            dl_track(s->pid, false);
            /* Like tu_reactor_new: only a kernel refusing io_uring skips. */
            if (!strcmp(tu_backend_env(), "io_uring") && e &&
                (strstr(e, strerror(EPERM)) || strstr(e, strerror(ENOSYS)) ||
                 strstr(e, strerror(EOPNOTSUPP))))
                cr_skip_test("io_uring unavailable: %s", e);
            cr_assert_fail("server exited at start (status %d): %s", st, e ? e : "");
        }
        free(e);
        cr_assert(tu_now_ms() < end, "no \"listening on\" line from the server");
        tu_sleep_ms(10);
    }
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
}

/* SIGTERM; the server must exit with status 0 (LeakSanitizer included)
 * and have said nothing a sanitizer says. */
static void dl_srv_stop(struct dl_srv *s)
{
    cr_assert_eq(kill(s->pid, SIGTERM), 0);
    int st = dl_wait(s->pid, 10000);
    char *e = dl_slurp(s->err, NULL);
    cr_assert(st != -1, "the server did not exit on SIGTERM: %s", e ? e : "");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "server exit status %d: %s", st, e ? e : "");
    /* Under -fsanitize=undefined a finding is only a line on stderr. */
    cr_assert(e && !strstr(e, "runtime error") && !strstr(e, "Sanitizer"), "server: %s", e ? e : "");
    free(e);
}

static long dl_proc_rss_kb(pid_t pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    char *s = dl_slurp(p, NULL);
    const char *l = s ? strstr(s, "VmRSS:") : NULL;
    long kb = l ? strtol(l + 6, NULL, 10) : -1;
    free(s);
    return kb;
}

/* The server's descriptor count once it stops changing (a connection just
 * closed by the client may take the server a moment). */
static int dl_proc_fds_settled(pid_t pid)
{
    int a = tu_proc_fd_count(pid), b;
    for (int i = 0; i < 40; i++, a = b) {
        tu_sleep_ms(50);
        if ((b = tu_proc_fd_count(pid)) == a)
            break;
    }
    return a;
}

/* ---- helpers on curl's results ----------------------------------------------------- */

/* GET url into DIR-work/name; returns "-w" output (code size ...). */
static char *dl_get(struct dl_dir *d, struct dl_srv *s, const char *path, const char *file,
                    const char *const more[])
{
    char url[512], out[PATH_MAX];
    snprintf(url, sizeof url, "%s%s", s->base, path);
    snprintf(out, sizeof out, "%s/%s", d->work, file);
    const char *args[24] = {"--path-as-is", "-o", out, "-w", "%{http_code} %{size_download}"};
    int n = 5;
    for (int i = 0; more && more[i]; i++)
        args[n++] = more[i];
    args[n++] = url;
    args[n] = NULL;
    char *w = NULL;
    int rc = dl_curl(&w, d->work, args);
    cr_assert_eq(rc, 0, "curl %s: exit %d", path, rc);
    cr_assert(w);
    return w;
}

/* The downloaded file work/name must hold exactly want[0..len). */
static void dl_expect_file(struct dl_dir *d, const char *file, const void *want, size_t len)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", d->work, file);
    size_t got_len;
    char *got = dl_slurp(p, &got_len);
    cr_assert(got, "no %s", p);
    cr_assert_eq(got_len, len, "%s: %zu bytes, want %zu", file, got_len, len);
    cr_assert(memcmp(got, want, len) == 0, "%s: bytes differ", file);
    free(got);
}

/* A header's value in a block of headers (case-insensitive name). */
static bool dl_header(const char *hdrs, const char *name, char *val, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *l = hdrs; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (!strncasecmp(l, name, nl) && l[nl] == ':') {
            const char *v = l + nl + 1;
            while (*v == ' ')
                v++;
            size_t n = strcspn(v, "\r\n");
            snprintf(val, cap, "%.*s", (int)n, v);
            return true;
        }
    }
    return false;
}

/* ---- whole files, HEAD, ranges ------------------------------------------------------ */

Test(download, whole_head_ranges, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, true);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    char *w, hv[128];

    w = dl_get(&d, &s, "/big", "big", NULL);
    cr_assert_str_eq(w, "200 33554432");
    free(w);
    dl_expect_file(&d, "big", d.big, BIG_SIZE);

    /* HEAD: the length of the whole, no body. */
    char url[256];
    snprintf(url, sizeof url, "%s/big", s.base);
    const char *head[] = {"-I", url, NULL};
    cr_assert_eq(dl_curl(&w, d.work, head), 0);
    cr_assert(!strncmp(w, "HTTP/1.1 200", 12), "HEAD: %s", w);
    cr_assert(dl_header(w, "Content-Length", hv, sizeof hv) && !strcmp(hv, "33554432"), "%s", w);
    cr_assert(dl_header(w, "Content-Type", hv, sizeof hv) && !strcmp(hv, "application/octet-stream"));
    cr_assert(dl_header(w, "Accept-Ranges", hv, sizeof hv) && !strcmp(hv, "bytes"));
    cr_assert(dl_header(w, "Last-Modified", hv, sizeof hv) && strstr(hv, " GMT"));
    free(w);
    const char *head_w[] = {"-I", "-o", "/dev/null", "-w", "%{size_download}", url, NULL};
    cr_assert_eq(dl_curl(&w, d.work, head_w), 0);
    cr_assert_str_eq(w, "0", "HEAD carried a body");
    free(w);

    /* Ranges: 206, the bytes, Content-Range. */
    static const struct {
        const char *spec, *content_range;
        size_t off, len;
    } rg[] = {
        {"0-99", "bytes 0-99/33554432", 0, 100},
        {"1000-", "bytes 1000-33554431/33554432", 1000, BIG_SIZE - 1000},
        {"-500", "bytes 33553932-33554431/33554432", BIG_SIZE - 500, 500},
        {"33554000-99999999999", "bytes 33554000-33554431/33554432", 33554000, 432},
    };
    for (size_t i = 0; i < sizeof rg / sizeof rg[0]; i++) {
        char hdr[PATH_MAX];
        snprintf(hdr, sizeof hdr, "%s/range.hdr", d.work);
        const char *more[] = {"-r", rg[i].spec, "-D", hdr, NULL};
        w = dl_get(&d, &s, "/big", "range", more);
        char want[64];
        snprintf(want, sizeof want, "206 %zu", rg[i].len);
        cr_assert_str_eq(w, want, "-r %s", rg[i].spec);
        free(w);
        dl_expect_file(&d, "range", d.big + rg[i].off, rg[i].len);
        char *h = dl_slurp(hdr, NULL);
        cr_assert(dl_header(h, "Content-Range", hv, sizeof hv), "-r %s: %s", rg[i].spec, h);
        cr_assert_str_eq(hv, rg[i].content_range, "-r %s", rg[i].spec);
        free(h);
    }

    /* Unsatisfiable: 416 with bytes * /SIZE. */
    char hdr[PATH_MAX];
    snprintf(hdr, sizeof hdr, "%s/unsat.hdr", d.work);
    const char *unsat[] = {"-r", "99999999999-", "-D", hdr, NULL};
    w = dl_get(&d, &s, "/big", "unsat", unsat);
    cr_assert(!strncmp(w, "416 ", 4), "%s", w);
    free(w);
    char *h = dl_slurp(hdr, NULL);
    cr_assert(dl_header(h, "Content-Range", hv, sizeof hv) && !strcmp(hv, "bytes */33554432"), "%s", h);
    free(h);

    /* Several ranges, or nonsense: ignored, the whole file (RFC 9110 14.2). */
    const char *multi[] = {"-r", "0-9,20-29", NULL};
    w = dl_get(&d, &s, "/small", "multi", multi);
    cr_assert_str_eq(w, "200 1000");
    free(w);
    dl_expect_file(&d, "multi", d.small, SMALL_SIZE);
    const char *junk[] = {"-H", "Range: bytes=9-2", NULL};
    w = dl_get(&d, &s, "/small", "junk", junk);
    cr_assert_str_eq(w, "200 1000");
    free(w);

    /* The small and the empty file. */
    w = dl_get(&d, &s, "/small", "small", NULL);
    cr_assert_str_eq(w, "200 1000");
    free(w);
    dl_expect_file(&d, "small", d.small, SMALL_SIZE);
    snprintf(hdr, sizeof hdr, "%s/empty.hdr", d.work);
    const char *empty[] = {"-D", hdr, NULL};
    w = dl_get(&d, &s, "/empty", "empty", empty);
    cr_assert_str_eq(w, "200 0");
    free(w);
    h = dl_slurp(hdr, NULL);
    cr_assert(dl_header(h, "Content-Length", hv, sizeof hv) && !strcmp(hv, "0"), "%s", h);
    free(h);

    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* ---- 404, 405, keep-alive -------------------------------------------------------------- */

Test(download, not_found_and_keep_alive, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    static const char *const missing[] = {"/nope", "/sub", "/sub/", "/", "/small/", "/sub/nope"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        char *w = dl_get(&d, &s, missing[i], "nf", NULL);
        cr_assert(!strncmp(w, "404 ", 4), "%s: %s", missing[i], w);
        free(w);
    }
    char *w = dl_get(&d, &s, "/sub/inner", "inner", NULL);
    cr_assert_str_eq(w, "200 6");
    free(w);
    const char *post[] = {"-X", "POST", "-d", "x=1", NULL};
    w = dl_get(&d, &s, "/small", "post", post);
    cr_assert(!strncmp(w, "405 ", 4), "POST: %s", w);
    free(w);

    /* Two files on one connection: the second transfer connects 0 times. */
    char u1[256], u2[256], o1[PATH_MAX], o2[PATH_MAX];
    snprintf(u1, sizeof u1, "%s/mid", s.base);
    snprintf(u2, sizeof u2, "%s/small", s.base);
    snprintf(o1, sizeof o1, "%s/ka1", d.work);
    snprintf(o2, sizeof o2, "%s/ka2", d.work);
    const char *ka[] = {"-w", "%{http_code} %{num_connects}\\n", "-o", o1, u1, "-o", o2, u2, NULL};
    cr_assert_eq(dl_curl(&w, d.work, ka), 0);
    cr_assert_str_eq(w, "200 1\n200 0\n", "keep-alive: %s", w);
    free(w);
    dl_expect_file(&d, "ka1", d.mid, MID_SIZE);
    dl_expect_file(&d, "ka2", d.small, SMALL_SIZE);

    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* ---- nothing outside DIR ---------------------------------------------------------------- */

static void traversal(char *const env[])
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, env);
    const char *on = strrchr(d.outside, '/') + 1;   /* OUTSIDE's name, beside DIR */
    char paths[12][PATH_MAX];
    int n = 0;
    snprintf(paths[n++], PATH_MAX, "/../%s/secret", on);
    snprintf(paths[n++], PATH_MAX, "/%%2e%%2e/%s/secret", on);
    snprintf(paths[n++], PATH_MAX, "/%%2E%%2E%%2F%s%%2Fsecret", on);
    snprintf(paths[n++], PATH_MAX, "/sub/../../%s/secret", on);
    snprintf(paths[n++], PATH_MAX, "/sub/%%2e%%2e/%%2e%%2e/%s/secret", on);
    snprintf(paths[n++], PATH_MAX, "/..");
    snprintf(paths[n++], PATH_MAX, "//etc/passwd");
    snprintf(paths[n++], PATH_MAX, "/%s/secret", d.outside);    /* "//tmp/.../secret" */
    snprintf(paths[n++], PATH_MAX, "/out_abs");
    snprintf(paths[n++], PATH_MAX, "/out_rel");
    for (int i = 0; i < n; i++) {
        char *w = dl_get(&d, &s, paths[i], "trav", NULL);
        cr_assert(!strncmp(w, "403 ", 4) || !strncmp(w, "404 ", 4), "%s: %s", paths[i], w);
        free(w);
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/trav", d.work);
        char *body = dl_slurp(p, NULL);
        cr_assert(body && !strstr(body, "outside-DIR-secret") && !strstr(body, "root:"),
                  "%s: %s", paths[i], body ? body : "");
        free(body);
    }
    /* An encoded NUL is a malformed path: 400 (and the connection closes). */
    static const char *const nul[] = {"/%00", "/small%00", "/out_abs%00.txt"};
    for (size_t i = 0; i < sizeof nul / sizeof nul[0]; i++) {
        char *w = dl_get(&d, &s, nul[i], "nul", NULL);
        cr_assert(!strncmp(w, "400 ", 4), "%s: %s", nul[i], w);
        free(w);
    }
    /* A symlink inside DIR, to a file inside DIR, works. */
    char *w = dl_get(&d, &s, "/in_link", "in_link", NULL);
    cr_assert_str_eq(w, "200 1000");
    free(w);
    dl_expect_file(&d, "in_link", d.small, SMALL_SIZE);
    w = dl_get(&d, &s, "/sub/../small", "dotdot_inside", NULL);
    cr_assert(!strncmp(w, "403 ", 4), "a .. segment is refused even inside DIR: %s", w);
    free(w);
    w = dl_get(&d, &s, "/./sub//inner", "dot", NULL);
    cr_assert_str_eq(w, "200 6");
    free(w);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

Test(download, traversal, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    traversal(NULL);
}

/* The same with the walk used on kernels without openat2. */
Test(download, traversal_without_openat2, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    char *env[] = {"GOEV_DOWNLOAD_NO_OPENAT2=1", NULL};
    traversal(env);
}

/* ---- pipelining and bad requests, on a plain socket ----------------------------------------- */

struct dl_resp {
    int status;
    char hdrs[2048];
    size_t body_off, body_len;
};

/* Parse the response at buf[*off..len): status, headers, body by
 * Content-Length (none for HEAD).  false if incomplete. */
static bool dl_parse_resp(const char *buf, size_t len, size_t *off, bool head, struct dl_resp *r)
{
    const char *p = buf + *off;
    const char *end = memmem(p, len - *off, "\r\n\r\n", 4);
    if (!end || sscanf(p, "HTTP/1.1 %d", &r->status) != 1)
        return false;
    size_t hl = (size_t)(end - p) + 4;
    snprintf(r->hdrs, sizeof r->hdrs, "%.*s", (int)hl, p);
    char v[64];
    r->body_len = 0;
    if (!head && dl_header(r->hdrs, "Content-Length", v, sizeof v))
        r->body_len = strtoull(v, NULL, 10);
    r->body_off = *off + hl;
    if (r->body_off + r->body_len > len)
        return false;
    *off = r->body_off + r->body_len;
    return true;
}

static char *dl_read_all(int fd, size_t *len)
{
    size_t cap = 4 << 20;
    char *buf = malloc(cap);
    ssize_t n = tu_read_to_eof(fd, buf, cap);
    cr_assert(n >= 0, "read: %s", strerror((int)-n));
    *len = (size_t)n;
    return buf;
}

Test(download, pipelined_in_order, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    /* Six requests in one write: every answer must come whole, in order. */
    static const char req[] =
        "GET /mid HTTP/1.1\r\nHost: x\r\n\r\n"
        "HEAD /mid HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /small HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n"
        "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /small HTTP/1.0\r\n\r\n";
    cr_assert_eq(tu_write_all(fd, req, sizeof req - 1), 0);
    size_t len, off = 0;
    char *buf = dl_read_all(fd, &len);
    close(fd);
    struct dl_resp r;
    cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200, "1st: %s", r.hdrs);
    cr_assert_eq(r.body_len, MID_SIZE);
    cr_assert(memcmp(buf + r.body_off, d.mid, MID_SIZE) == 0, "1st: body differs");
    cr_assert(dl_parse_resp(buf, len, &off, true, &r) && r.status == 200, "HEAD: %s", r.hdrs);
    cr_assert(strstr(r.hdrs, "Content-Length: 1048576\r\n"), "HEAD: %s", r.hdrs);
    cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 206, "range: %s", r.hdrs);
    cr_assert(r.body_len == 10 && !memcmp(buf + r.body_off, d.small + 10, 10));
    cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 404, "404: %s", r.hdrs);
    cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200 && r.body_len == 0,
              "empty: %s", r.hdrs);
    /* HTTP/1.0 without keep-alive: the last answer, then the server closes. */
    cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200, "1.0: %s", r.hdrs);
    cr_assert(r.body_len == SMALL_SIZE && !memcmp(buf + r.body_off, d.small, SMALL_SIZE));
    cr_assert(strstr(r.hdrs, "Connection: close\r\n"), "1.0: %s", r.hdrs);
    cr_assert_eq(off, len, "%zu bytes after the last answer", len - off);
    free(buf);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* Many pipelined requests for big bodies: answered in order while the
 * server holds back (a bounded queue per connection), all bytes right. */
Test(download, pipelined_deep, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    enum { N = 40 };
    char *req = malloc(N * 64);
    size_t rl = 0;
    for (int i = 0; i < N; i++)
        rl += (size_t)sprintf(req + rl, "GET /%s HTTP/1.1\r\nHost: x\r\n%s\r\n", i % 2 ? "small" : "mid",
                              i == N - 1 ? "Connection: close\r\n" : "");
    cr_assert_eq(tu_write_all(fd, req, rl), 0);
    free(req);
    size_t cap = (size_t)N * (MID_SIZE + 1024), len = 0;
    char *buf = malloc(cap);
    ssize_t n = tu_read_to_eof(fd, buf, cap);
    cr_assert(n > 0);
    len = (size_t)n;
    close(fd);
    size_t off = 0;
    for (int i = 0; i < N; i++) {
        struct dl_resp r;
        cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200, "answer %d", i);
        const char *want = i % 2 ? d.small : d.mid;
        size_t wl = i % 2 ? SMALL_SIZE : MID_SIZE;
        cr_assert(r.body_len == wl && !memcmp(buf + r.body_off, want, wl), "answer %d differs", i);
    }
    cr_assert_eq(off, len);
    free(buf);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

static void bad_request(int port, const char *req, size_t len, int want)
{
    int fd = tu_connect_tcp4(port);
    cr_assert(fd >= 0);
    cr_assert_eq(tu_write_all(fd, req, len), 0);
    size_t got, off = 0;
    char *buf = dl_read_all(fd, &got);     /* to EOF: the server closes */
    close(fd);
    struct dl_resp r;
    cr_assert(dl_parse_resp(buf, got, &off, false, &r), "no answer to a bad request (%zu bytes)", got);
    cr_assert_eq(r.status, want, "%.60s: %d", req, r.status);
    cr_assert(strstr(r.hdrs, "Connection: close\r\n"), "%s", r.hdrs);
    cr_assert_eq(off, got, "bytes after the error answer");
    free(buf);
}

Test(download, bad_requests, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    static const char garbage[] = "NOT HTTP AT ALL\r\n\r\nGET /small HTTP/1.1\r\n\r\n";
    bad_request(s.port, garbage, sizeof garbage - 1, 400);
    static const char esc[] = "GET /a%zzb HTTP/1.1\r\n\r\nGET /small HTTP/1.1\r\n\r\n";
    bad_request(s.port, esc, sizeof esc - 1, 400);
    static const char star[] = "GET * HTTP/1.1\r\n\r\n";
    bad_request(s.port, star, sizeof star - 1, 400);
    static const char te[] = "GET /small HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    bad_request(s.port, te, sizeof te - 1, 501);
    char *big = malloc(20000);
    int n = sprintf(big, "GET /small HTTP/1.1\r\nX: ");
    memset(big + n, 'a', 12000);
    n += 12000;
    n += sprintf(big + n, "\r\n\r\n");
    bad_request(s.port, big, (size_t)n, 431);
    free(big);
    /* A method we do not serve is no reason to close. */
    int fd = tu_connect_tcp4(s.port);
    static const char post[] = "POST /small HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                               "GET /small HTTP/1.1\r\nConnection: close\r\n\r\n";
    cr_assert_eq(tu_write_all(fd, post, sizeof post - 1), 0);
    size_t got, off = 0;
    char *buf = dl_read_all(fd, &got);
    close(fd);
    struct dl_resp r;
    cr_assert(dl_parse_resp(buf, got, &off, false, &r) && r.status == 405);
    cr_assert(strstr(r.hdrs, "Allow: GET, HEAD\r\n"), "%s", r.hdrs);
    cr_assert(dl_parse_resp(buf, got, &off, false, &r) && r.status == 200 && r.body_len == SMALL_SIZE);
    free(buf);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* ---- a slow reader of 1 GiB: the server's memory stays flat ------------------------------ */

Test(download, slow_reader_flat_rss, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    char *w = dl_get(&d, &s, "/small", "warm", NULL);   /* warm the server up */
    cr_assert_str_eq(w, "200 1000");
    free(w);
    int fds0 = dl_proc_fds_settled(s.pid);
    long rss0 = dl_proc_rss_kb(s.pid);
    cr_assert(rss0 > 0);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    tu_set_io_timeout(fd, TU_IO_TIMEOUT_MS);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s.port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(tu_connect_fd(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    static const char req[] = "GET /sparse HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(tu_write_all(fd, req, sizeof req - 1), 0);

    /* About 1 MiB/s for 3 s: 50 KiB every 50 ms. */
    char *buf = malloc(64 * 1024);
    size_t total = 0;
    long rss_max = rss0;
    bool head_seen = false;
    uint64_t start = tu_now_ms();
    while (tu_now_ms() - start < 3000) {
        size_t want = 50 * 1024, got = 0;
        while (got < want) {
            ssize_t n = read(fd, buf + got, want - got);
            cr_assert(n > 0, "read: %zd (%s)", n, strerror(errno));
            got += (size_t)n;
        }
        size_t body = 0;
        if (!head_seen) {
            char *e = memmem(buf, got, "\r\n\r\n", 4);
            cr_assert(e, "no header in the first 50 KiB");
            cr_assert(!strncmp(buf, "HTTP/1.1 200", 12));
            cr_assert(memmem(buf, (size_t)(e - buf), "Content-Length: 1073741824\r\n", 28));
            body = (size_t)(e + 4 - buf);
            head_seen = true;
        }
        for (size_t i = body; i < got; i++)
            cr_assert(buf[i] == 0, "sparse file byte %zu not zero", total + i);
        total += got;
        long rss = dl_proc_rss_kb(s.pid);
        if (rss > rss_max)
            rss_max = rss;
        tu_sleep_ms(50);
    }
    cr_log_info("read %zu bytes in 3 s; server VmRSS %ld -> max %ld kB", total, rss0, rss_max);
    cr_assert_lt(rss_max - rss0, 16 * 1024, "server RSS grew by %ld kB serving 1 GiB slowly",
                 rss_max - rss0);
    free(buf);
    close(fd);

    /* The server lets go of that connection and keeps serving. */
    w = dl_get(&d, &s, "/mid", "after", NULL);
    cr_assert_str_eq(w, "200 1048576");
    free(w);
    dl_expect_file(&d, "after", d.mid, MID_SIZE);
    cr_assert(TU_WAIT_FOR(tu_proc_fd_count(s.pid) == fds0, 5000), "server fds %d, were %d",
              tu_proc_fd_count(s.pid), fds0);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* ---- pacing: -b, and SIGUSR1 doubling the rate on every poller ---------------------------- */

static uint64_t timed_get(struct dl_dir *d, struct dl_srv *s, const char *file)
{
    uint64_t t0 = tu_now_ms();
    char *w = dl_get(d, s, "/mid", file, NULL);
    uint64_t t = tu_now_ms() - t0;
    cr_assert_str_eq(w, "200 1048576");
    free(w);
    dl_expect_file(d, file, d->mid, MID_SIZE);
    return t;
}

Test(download, pacing_and_rate_change, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    const char *extra[] = {"-b", "262144", NULL};
    dl_srv_start(&s, &d, extra, NULL);
    /* 1 MiB at 256 KiB/s: 4 s.  Only a lower bound is checked: pacing can
     * make a download slower, never faster, and a loaded machine is slow. */
    uint64_t t1 = timed_get(&d, &s, "paced1");
    cr_log_info("1 MiB at 262144 B/s: %llu ms", (unsigned long long)t1);
    cr_assert_geq(t1, 3000, "1 MiB at 256 KiB/s took only %llu ms", (unsigned long long)t1);

    cr_assert_eq(kill(s.pid, SIGUSR1), 0);
    cr_assert(dl_srv_saw(&s, "rate=524288\n", 5000), "no rate=524288 after SIGUSR1");
    uint64_t t2 = timed_get(&d, &s, "paced2");
    cr_log_info("1 MiB at 524288 B/s: %llu ms", (unsigned long long)t2);
    cr_assert_geq(t2, 1500, "1 MiB at 512 KiB/s took only %llu ms", (unsigned long long)t2);
    /* Nominally 2 s against 4 s; load only adds time, so "faster" is what
     * can be asserted without flaking on a busy machine. */
    cr_assert_lt(t2, t1, "after doubling the rate: %llu ms, before %llu ms",
                 (unsigned long long)t2, (unsigned long long)t1);

    /* SIGUSR2 halves it again. */
    cr_assert_eq(kill(s.pid, SIGUSR2), 0);
    cr_assert(dl_srv_saw(&s, "rate=262144\n", 5000), "no rate=262144 after SIGUSR2");
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* Paced bodies with pipelining and a half-close: the requests behind a
 * paced body wait for it (in order), and a client that shuts its side down
 * after its requests still gets every answer whole. */
Test(download, paced_pipelined_and_half_close, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    const char *extra[] = {"-b", "4194304", NULL};      /* 4 MiB/s: 3 slices per mid */
    dl_srv_start(&s, &d, extra, NULL);
    static const char req[] =
        "GET /mid HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /small HTTP/1.1\r\nHost: x\r\nRange: bytes=-100\r\n\r\n"
        "HEAD /mid HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /mid HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-\r\n\r\n";
    static const char last[] = "GET /empty HTTP/1.1\r\nConnection: close\r\n\r\n";
    for (int half_close = 0; half_close < 2; half_close++) {
        int fd = tu_connect_tcp4(s.port);
        cr_assert(fd >= 0);
        cr_assert_eq(tu_write_all(fd, req, sizeof req - 1), 0);
        if (half_close)
            cr_assert_eq(shutdown(fd, SHUT_WR), 0);
        else
            cr_assert_eq(tu_write_all(fd, last, strlen(last)), 0);
        size_t len, off = 0;
        char *buf = dl_read_all(fd, &len);
        close(fd);
        struct dl_resp r;
        cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200, "1st: %zu bytes", len);
        cr_assert(r.body_len == MID_SIZE && !memcmp(buf + r.body_off, d.mid, MID_SIZE));
        cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 206);
        cr_assert(r.body_len == 100 && !memcmp(buf + r.body_off, d.small + SMALL_SIZE - 100, 100));
        cr_assert(dl_parse_resp(buf, len, &off, true, &r) && r.status == 200);
        cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 206, "4th");
        cr_assert(r.body_len == MID_SIZE - 1000 && !memcmp(buf + r.body_off, d.mid + 1000, MID_SIZE - 1000));
        if (!half_close)
            cr_assert(dl_parse_resp(buf, len, &off, false, &r) && r.status == 200 && r.body_len == 0);
        cr_assert_eq(off, len, "%zu bytes after the last answer", len - off);
        free(buf);
    }
    dl_srv_stop(&s);
    dl_dir_free(&d);
}

/* ---- no descriptor leak; SIGTERM exits with 0 ------------------------------------------------ */

Test(download, no_fd_leak_and_sigterm, .init = dl_init, .fini = dl_fini, .timeout = DL_TIMEOUT)
{
    dl_need_curl();
    struct dl_dir d;
    dl_dir_make(&d, false);
    struct dl_srv s;
    dl_srv_start(&s, &d, NULL, NULL);
    char *w = dl_get(&d, &s, "/small", "warm", NULL);
    free(w);
    int fds0 = dl_proc_fds_settled(s.pid);
    cr_assert(fds0 > 0);

    /* 50 downloads: 25 on one keep-alive connection, 25 on a connection
     * each ("Connection: close"), whole files and ranges. */
    for (int round = 0; round < 2; round++) {
        const char *args[120];
        char urls[25][128];
        int n = 0;
        if (round == 1) {
            args[n++] = "-H";
            args[n++] = "Connection: close";
        }
        args[n++] = "-w";
        args[n++] = "%{http_code}\\n";
        for (int i = 0; i < 25; i++) {
            snprintf(urls[i], sizeof urls[i], "%s/%s", s.base, i % 3 == 0 ? "mid" : i % 3 == 1 ? "small" : "in_link");
            args[n++] = "-o";
            args[n++] = "/dev/null";
            args[n++] = urls[i];
        }
        args[n] = NULL;
        cr_assert_eq(dl_curl(&w, d.work, args), 0);
        int ok = 0;
        for (char *l = w; (l = strstr(l, "200\n")); l += 4)
            ok++;
        cr_assert_eq(ok, 25, "round %d: %s", round, w);
        free(w);
    }
    cr_assert(TU_WAIT_FOR(tu_proc_fd_count(s.pid) == fds0, 5000), "server fds %d, were %d",
              tu_proc_fd_count(s.pid), fds0);
    dl_srv_stop(&s);
    dl_dir_free(&d);
}
