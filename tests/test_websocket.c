/* test_websocket.c - examples/websocket against a real RFC 6455 client.
 *
 * Each test starts `examples/websocket -p 0 -t 2` as a child process (it
 * inherits GOEV_BACKEND, so the suite runs once per backend), reads the port
 * from its stderr, and drives it with tests/ws/client.js: Node with the npm
 * package ws, installed into the build tree by `make check`.  The client
 * prints what it got as key=value lines, which are asserted here.  After
 * each error the server must still serve another client, and at the end it
 * must exit with status 0 on SIGTERM (under the sanitizers that also means
 * it leaked nothing).
 *
 * Without node or ws the tests skip, or fail when CI is set.  The server
 * dies with the test process (PR_SET_PDEATHSIG) and is killed in .fini, so
 * a failed assertion never leaves it running. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef WS_SERVER
#error "WS_SERVER, WS_CLIENT and WS_NODE_PATH come from Makefile.am"
#endif

/* client.js gives up after 10 s by itself, tu_scale() times that when
 * GOEV_TEST_SCALE says the build is slower. */
#define CLIENT_KILL_MS (5000 + 10000 * tu_scale())
#define SERVER_START_MS 10000
#define SERVER_STOP_MS 10000

/* ---- child processes ---------------------------------------------------- */

static pid_t server_pid = -1;
static int server_err = -1;     /* read end of the server's stderr */
static int server_port;
static char server_log[4096];   /* what it printed on stderr */
static size_t server_log_len;

/* Fork a child that dies with us, stdout/stderr to out/err (-1: inherit). */
static pid_t spawn(const char *const *argv, int out, int err, const char *node_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
        dup2(devnull, 0);
    if (out >= 0)
        dup2(out, 1);
    if (err >= 0)
        dup2(err, 2);
    if (node_path)
        setenv("NODE_PATH", node_path, 1);
    execvp(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Wait up to ms for pid; its wait status, or -1 on timeout. */
static int wait_ms(pid_t pid, unsigned ms)
{
    uint64_t deadline = tu_now_ms() + ms;
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return st;
        if (w < 0 && errno != EINTR)
            return -1;
        if (tu_now_ms() >= deadline)
            return -1;
        tu_sleep_ms(5);
    }
}

/* Append what fd has now to the server log (without blocking). */
static void server_log_drain(void)
{
    while (server_err >= 0 && server_log_len < sizeof server_log - 1) {
        ssize_t n = read(server_err, server_log + server_log_len,
                         sizeof server_log - 1 - server_log_len);
        if (n <= 0)
            break;
        server_log_len += (size_t)n;
    }
    server_log[server_log_len] = 0;
}

static void server_kill(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
        server_pid = -1;
    }
    if (server_err >= 0) {
        close(server_err);
        server_err = -1;
    }
}

static void server_start(void)
{
    int p[2];
    cr_assert(pipe2(p, O_CLOEXEC) == 0);
    const char *argv[] = { WS_SERVER, "-p", "0", "-t", "2", NULL };
    server_pid = spawn(argv, -1, p[1], NULL);
    close(p[1]);
    cr_assert(server_pid > 0, "fork: %s", strerror(errno));
    server_err = p[0];
    fcntl(server_err, F_SETFL, O_NONBLOCK);

    uint64_t deadline = tu_now_ms() + SERVER_START_MS;
    const char *line;
    while (!(line = strstr(server_log, "listening on ")) || !strchr(line, '\n')) {
        struct pollfd pfd = { .fd = server_err, .events = POLLIN };
        int left = (int)(deadline - tu_now_ms());
        cr_assert(left > 0 && poll(&pfd, 1, left) >= 0, "server did not start: %s", server_log);
        size_t before = server_log_len;
        server_log_drain();
        if (server_log_len == before) {     /* EOF: it exited */
            int st = wait_ms(server_pid, 2000);
            server_pid = -1;
            /* As tu_reactor_new: a kernel or sandbox that refuses io_uring
             * skips the io_uring run. */
            if (strstr(server_log, "goev_reactor_new") &&
                (strstr(server_log, "not permitted") || strstr(server_log, "not implemented")))
                cr_skip_test("io_uring unavailable: %s", server_log);
            cr_assert_fail("server exited (status %d): %s", st, server_log);
        }
    }
    char backend[32] = "";
    cr_assert(sscanf(line, "listening on %d backend=%31s", &server_port, backend) == 2,
              "server said: %s", server_log);
    const char *want = tu_backend_env();
    if (*want && strcmp(want, "auto"))
        cr_assert_str_eq(backend, want, "GOEV_BACKEND=%s but the server runs %s", want, backend);
}

/* SIGTERM: the server must stop cleanly and exit with 0. */
static void server_stop(void)
{
    cr_assert(kill(server_pid, SIGTERM) == 0);
    int st = wait_ms(server_pid, SERVER_STOP_MS);
    if (st != -1)
        server_pid = -1;
    server_log_drain();
    cr_assert(st != -1, "server did not exit within %d ms of SIGTERM", SERVER_STOP_MS);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "server exit status %d (signal %d); it said: %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1,
              WIFSIGNALED(st) ? WTERMSIG(st) : 0, server_log);
    /* A sanitizer that recovers from an error still reports it. */
    cr_assert(!strstr(server_log, "runtime error") && !strstr(server_log, "Sanitizer"),
              "the server reported: %s", server_log);
}

static int server_fds(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)server_pid);
    DIR *d = opendir(path);
    cr_assert(d, "%s: %s", path, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* ---- the Node client ---------------------------------------------------- */

struct run {
    int status;             /* wait status; -1 if it had to be killed */
    char out[16384], err[4096];
    size_t out_len, err_len;
};

/* Run a program with NODE_PATH set, collecting its stdout and stderr. */
static void run(struct run *r, const char *const *argv)
{
    memset(r, 0, sizeof *r);
    int o[2], e[2];
    cr_assert(pipe2(o, O_CLOEXEC) == 0 && pipe2(e, O_CLOEXEC) == 0);
    pid_t pid = spawn(argv, o[1], e[1], WS_NODE_PATH);
    close(o[1]);
    close(e[1]);
    cr_assert(pid > 0, "fork: %s", strerror(errno));

    uint64_t deadline = tu_now_ms() + CLIENT_KILL_MS;
    struct pollfd pfd[2] = { { .fd = o[0], .events = POLLIN }, { .fd = e[0], .events = POLLIN } };
    int open_fds = 2;
    while (open_fds) {
        int left = (int)(deadline - tu_now_ms());
        if (left <= 0 || poll(pfd, 2, left) == 0)
            break;
        for (int i = 0; i < 2; i++) {
            if (pfd[i].fd < 0 || !pfd[i].revents)
                continue;
            char *buf = i ? r->err : r->out;
            size_t *len = i ? &r->err_len : &r->out_len;
            size_t cap = (i ? sizeof r->err : sizeof r->out) - 1;
            char scratch[4096];
            ssize_t n = read(pfd[i].fd, *len < cap ? buf + *len : scratch,
                             *len < cap ? cap - *len : sizeof scratch);
            if (n > 0 && *len < cap) {
                *len += (size_t)n;
            } else if (n == 0 || (n < 0 && errno != EINTR)) {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                open_fds--;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (pfd[i].fd >= 0)
            close(pfd[i].fd);
    r->status = wait_ms(pid, open_fds ? 0 : 2000);
    if (r->status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* Exit statuses of a client that could not start: exec failed (no node),
 * or client.js could not load ws. */
#define NO_NODE 127
#define NO_WS 3

/* Missing node or ws: a skip, but a failure in CI. */
static void missing_client(const struct run *r)
{
    const char *ci = getenv("CI");
    if (ci && *ci)
        cr_assert_fail("CI is set but the websocket client cannot run (node, with ws from %s): %s",
                       WS_NODE_PATH, r->err);
    cr_skip_test("no node with the npm package ws (make check installs it into %s with npm): %s",
                 WS_NODE_PATH, r->err);
}

/* Run client.js SCENARIO PORT ARGS... (args: the scenario, then its
 * arguments) and assert it succeeded. */
static void client_args(struct run *r, const char *const *args)
{
    char port[16];
    snprintf(port, sizeof port, "%d", server_port);
    const char *scenario = args[0];
    const char *argv[64] = { "node", WS_CLIENT, scenario, port };
    size_t n = 4;
    for (args++; *args; args++) {
        cr_assert(n < sizeof argv / sizeof argv[0] - 1, "too many client arguments");
        argv[n++] = *args;
    }
    argv[n] = NULL;
    run(r, argv);
    server_log_drain();
    if (r->status != -1 && WIFEXITED(r->status) &&
        (WEXITSTATUS(r->status) == NO_NODE || WEXITSTATUS(r->status) == NO_WS))
        missing_client(r);
    cr_assert(r->status == 0, "client %s: status %d\nstdout:\n%s\nstderr:\n%s\nserver:\n%s", scenario,
              r->status, r->out, r->err, server_log);
}
#define CLIENT(r, ...) client_args((r), (const char *const[]){ __VA_ARGS__, NULL })

/* The value of key in the client's report ("" if absent). */
static const char *kv(const struct run *r, const char *key)
{
    static char val[4][8192];
    static int k;
    char *v = val[k++ & 3];
    size_t klen = strlen(key);
    v[0] = 0;
    for (const char *p = r->out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, key, klen) && p[klen] == '=') {
            const char *s = p + klen + 1, *e = strchr(s, '\n');
            size_t n = e ? (size_t)(e - s) : strlen(s);
            if (n >= sizeof val[0])
                n = sizeof val[0] - 1;
            memcpy(v, s, n);
            v[n] = 0;
            break;
        }
    }
    return v;
}

#define ASSERT_KV(r, key, want) \
    cr_assert_str_eq(kv((r), (key)), (want), "%s: got %s=%s, want %s\n%s", (key), (key), \
                     kv((r), (key)), (want), (r)->out)

/* A client frame in hex: first byte b0, masked with the key 0 (so the
 * payload stays as given), payload in hex.  The result lives until 32 more
 * calls. */
static const char *frame(unsigned b0, const char *payload_hex)
{
    static char bufs[32][600];
    static int k;
    char *o = bufs[k++ & 31];
    size_t n = strlen(payload_hex) / 2;
    if (n < 126)
        snprintf(o, sizeof bufs[0], "%02x%02zx00000000%s", b0, 0x80 | n, payload_hex);
    else
        snprintf(o, sizeof bufs[0], "%02xfe%04zx00000000%s", b0, n, payload_hex);
    return o;
}

/* ---- scenarios ---------------------------------------------------------- */

static void ws_init(void)
{
    signal(SIGPIPE, SIG_IGN);
}

static void ws_fini(void)
{
    server_kill();
}

/* Under ThreadSanitizer the server is several times slower, and the big
 * messages of back_pressure take more than TU_TIMEOUT on a loaded machine. */
#if defined(__SANITIZE_THREAD__)
#define WS_TIMEOUT (3 * TU_TIMEOUT)
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WS_TIMEOUT (3 * TU_TIMEOUT)
#endif
#endif
#ifndef WS_TIMEOUT
#define WS_TIMEOUT TU_TIMEOUT
#endif
#define WS_TEST(name) Test(websocket, name, .init = ws_init, .fini = ws_fini, .timeout = WS_TIMEOUT)

static void echo_ok(size_t size, const char *type)
{
    struct run r;
    char s[32];
    snprintf(s, sizeof s, "%zu", size);
    CLIENT(&r, "echo", s, type);
    ASSERT_KV(&r, "echoed", s);
    ASSERT_KV(&r, "type", type);
    ASSERT_KV(&r, "equal", "1");
    /* One unfragmented frame (FIN set) of the same type, then our close. */
    char frames[64];
    snprintf(frames, sizeof frames, "%d:1:%zu,8:1:2", strcmp(type, "text") ? 2 : 1, size);
    ASSERT_KV(&r, "frames", frames);
    ASSERT_KV(&r, "code", "1000");
}

/* After an error the server must go on serving others. */
static void still_serving(void)
{
    echo_ok(100, "text");
}

#define ECHO_TEST(name, size, type) \
    WS_TEST(name)                   \
    {                               \
        server_start();                    \
        echo_ok((size), (type));    \
        server_stop();                      \
    }

ECHO_TEST(echo_text_0, 0, "text")
ECHO_TEST(echo_text_1, 1, "text")
ECHO_TEST(echo_text_125, 125, "text")
ECHO_TEST(echo_text_126, 126, "text")
ECHO_TEST(echo_text_65535, 65535, "text")
ECHO_TEST(echo_text_65536, 65536, "text")
ECHO_TEST(echo_text_1MiB, 1 << 20, "text")
ECHO_TEST(echo_binary_0, 0, "binary")
ECHO_TEST(echo_binary_1, 1, "binary")
ECHO_TEST(echo_binary_125, 125, "binary")
ECHO_TEST(echo_binary_126, 126, "binary")
ECHO_TEST(echo_binary_65535, 65535, "binary")
ECHO_TEST(echo_binary_65536, 65536, "binary")
ECHO_TEST(echo_binary_1MiB, 1 << 20, "binary")
/* The largest message allowed: goev keeps no payload for the server. */
ECHO_TEST(echo_binary_16MiB, 16 << 20, "binary")

WS_TEST(fragmented)
{
    server_start();
    struct run r;
    CLIENT(&r, "frag");
    /* "h\u00e9llo \u20ac!", one text frame; the ping between fragments got
     * its pong first. */
    ASSERT_KV(&r, "message", "68c3a96c6c6f20e282ac21");
    ASSERT_KV(&r, "type", "text");
    ASSERT_KV(&r, "pong", "6d6964");
    ASSERT_KV(&r, "frames", "10:1:3,1:1:11,8:1:2");
    server_stop();
}

WS_TEST(fragmented_binary_in_many_frames)
{
    server_start();
    struct run r;
    CLIENT(&r, "big", "300000", "7");
    ASSERT_KV(&r, "messages", "1");
    ASSERT_KV(&r, "equal", "1");
    ASSERT_KV(&r, "code", "1000");
    server_stop();
}

WS_TEST(ping_pong)
{
    server_start();
    struct run r;
    CLIENT(&r, "ping");
    char want[512] = ",68656c6c6f,";
    for (int i = 0; i < 125; i++)
        strcat(want, "70");
    ASSERT_KV(&r, "pongs", want);
    server_stop();
}

WS_TEST(close_1000)
{
    server_start();
    struct run r;
    CLIENT(&r, "close", "1000");
    ASSERT_KV(&r, "code", "1000");
    server_stop();
}

WS_TEST(close_4000_with_reason)
{
    server_start();
    struct run r;
    CLIENT(&r, "close", "4000", "going, with a reason \xc3\xa9");
    ASSERT_KV(&r, "code", "4000");
    CLIENT(&r, "close", "3000");
    ASSERT_KV(&r, "code", "3000");
    CLIENT(&r, "close", "4999", "x");
    ASSERT_KV(&r, "code", "4999");
    server_stop();
}

WS_TEST(close_empty)
{
    server_start();
    struct run r;
    /* An empty close is answered with an empty one: the client reports
     * 1005, "no status received". */
    CLIENT(&r, "close");
    ASSERT_KV(&r, "code", "1005");
    server_stop();
}

/* Groups of raw frames (written behind ws's back), separated by "|", each
 * on a connection of its own, after each of which the server must close
 * with `code` and echo nothing.  One client run for all: Node's start-up
 * is most of a scenario's time. */
static void raw_closes(const char *code, const char *const *args)
{
    char codes[512] = "", zeros[256] = "";
    for (const char *const *a = args; *a; a++) {
        if (a == args + 1 || !strcmp(*a, "|")) {
            snprintf(codes + strlen(codes), sizeof codes - strlen(codes), "%s%s",
                     *codes ? "," : "", code);
            snprintf(zeros + strlen(zeros), sizeof zeros - strlen(zeros), "%s0",
                     *zeros ? "," : "");
        }
    }
    struct run r;
    client_args(&r, args);
    ASSERT_KV(&r, "code", codes);
    ASSERT_KV(&r, "messages", zeros);
}
#define RAW_CLOSES(code, ...) raw_closes((code), (const char *const[]){ "raw", __VA_ARGS__, NULL })

WS_TEST(unmasked_frame_1002)
{
    server_start();
    RAW_CLOSES("1002", "81026869");       /* text "hi", no mask */
    still_serving();
    server_stop();
}

WS_TEST(too_big_1009)
{
    server_start();
    struct run r;
    CLIENT(&r, "big", "17825792");       /* 17 MiB */
    ASSERT_KV(&r, "code", "1009");
    ASSERT_KV(&r, "messages", "0");
    still_serving();
    server_stop();
}

WS_TEST(too_big_in_fragments_1009)
{
    server_start();
    struct run r;
    CLIENT(&r, "big", "18874368", "2");  /* 2 x 9 MiB */
    ASSERT_KV(&r, "code", "1009");
    ASSERT_KV(&r, "messages", "0");
    still_serving();
    server_stop();
}

WS_TEST(too_big_from_the_header_1009)
{
    server_start();
    /* A header announcing 17 MiB and no payload: the answer cannot wait
     * for the payload. */
    RAW_CLOSES("1009", "82ff000000000110000000000000");
    still_serving();
    server_stop();
}

WS_TEST(invalid_utf8_1007)
{
    server_start();
    struct run r;
    CLIENT(&r, "text", "c328");
    ASSERT_KV(&r, "code", "1007");
    ASSERT_KV(&r, "messages", "0");
    still_serving();
    server_stop();
}

WS_TEST(invalid_utf8_variants_1007)
{
    server_start();
    RAW_CLOSES("1007",
               frame(0x81, "c080"), "|",                     /* overlong NUL */
               frame(0x81, "eda080"), "|",                   /* surrogate */
               frame(0x81, "f4908080"), "|",                 /* past U+10FFFF */
               frame(0x81, "61f8"), "|",                     /* F8 lead */
               /* truncated at the end of the final fragment */
               frame(0x01, "61e2"), frame(0x80, "82"), "|",
               /* found in the first fragment, not waiting for the rest */
               frame(0x01, "c328"), "|",
               frame(0x88, "03e8c328"));                     /* in a close reason */
    still_serving();
    server_stop();
}

WS_TEST(invalid_close_code_1002)
{
    server_start();
    /* 999, 1004, 1005, 1006, 1012, 2999, 5000, and a 1-byte payload */
    RAW_CLOSES("1002", frame(0x88, "03e7"), "|", frame(0x88, "03ec"), "|", frame(0x88, "03ed"),
               "|", frame(0x88, "03ee"), "|", frame(0x88, "03f4"), "|", frame(0x88, "0bb7"), "|",
               frame(0x88, "1388"), "|", frame(0x88, "03"));
    still_serving();
    server_stop();
}

WS_TEST(protocol_errors_1002)
{
    server_start();
    char big[253] = "";
    for (int i = 0; i < 126; i++)
        strcat(big, "70");
    RAW_CLOSES("1002",
               frame(0xC1, "6869"), "|",                     /* RSV1 */
               frame(0xA1, "6869"), "|",                     /* RSV2 */
               frame(0x83, "6869"), "|",                     /* opcode 3 */
               frame(0x8B, ""), "|",                         /* opcode 0xB */
               frame(0x09, "6869"), "|",                     /* ping without FIN */
               frame(0x89, big), "|",                        /* ping of 126 bytes */
               frame(0x80, "6869"), "|",                     /* continuation first */
               frame(0x01, "6869"), frame(0x81, "6869"), "|", /* new message inside one */
               "82ff800000000000000000000000");              /* 64-bit length, top bit */
    still_serving();
    server_stop();
}

WS_TEST(pong_ignored_and_control_between_fragments)
{
    server_start();
    struct run r;
    /* pong, fragment, ping, pong, close: one pong back and the close. */
    CLIENT(&r, "raw", frame(0x8A, "7a"), frame(0x01, "6869"), frame(0x89, "7878"),
           frame(0x8A, ""), frame(0x80, "21"), frame(0x88, "03e8"));
    ASSERT_KV(&r, "code", "1000");
    ASSERT_KV(&r, "messages", "1");
    ASSERT_KV(&r, "pongs", "1");
    server_stop();
}

/* A client that does not read its echoes: the server stops reading it
 * (its queue is bounded) and resumes once it drains; messages of several
 * MiB at once must not leave it paused. */
WS_TEST(back_pressure)
{
    server_start();
    struct run r;
    CLIENT(&r, "series", "0", "4300000", "5000000", "6000000", "100", "16000000", "10");
    ASSERT_KV(&r, "echoed", "6");
    ASSERT_KV(&r, "equal", "6");
    const char *const slow[] = { "series", "1000", "1048576", "1048576", "1048576", "1048576", "1048576",
                                 "1048576", "1048576", "1048576", "1048576", "1048576", NULL };
    client_args(&r, slow);
    ASSERT_KV(&r, "echoed", "10");
    ASSERT_KV(&r, "equal", "10");
    server_stop();
}

#define GET(extra) "GET / HTTP/1.1\r\nHost: localhost\r\n" extra "\r\n"
#define KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define UPGRADE "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"

WS_TEST(plain_http_426)
{
    server_start();
    struct run r;
    /* Keep-alive as the client allows: three answers, then the close it
     * asked for. */
    CLIENT(&r, "http", GET("") GET("") GET("Connection: close\r\n"));
    ASSERT_KV(&r, "statuses", "426,426,426");
    ASSERT_KV(&r, "upgrade", "websocket");
    ASSERT_KV(&r, "version", "13");
    ASSERT_KV(&r, "connection", "Upgrade");
    ASSERT_KV(&r, "eof", "1");
    /* Then the upgrade on the same connection; RFC 6455's example key. */
    CLIENT(&r, "http", GET("") GET(UPGRADE KEY "Sec-WebSocket-Version: 13\r\n"));
    ASSERT_KV(&r, "statuses", "426,101");
    ASSERT_KV(&r, "accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    server_stop();
}

WS_TEST(bad_handshake_400)
{
    server_start();
    struct run r;
    static const char *const bad[] = {
        GET(UPGRADE "Sec-WebSocket-Version: 13\r\n"),                    /* no key */
        GET(UPGRADE "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n"),
        GET(UPGRADE "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\nSec-WebSocket-Version: 13\r\n"),
        GET(UPGRADE KEY "Sec-WebSocket-Version: 8\r\n"),
        GET(UPGRADE KEY),                                                  /* no version */
        "POST / HTTP/1.1\r\nHost: x\r\n" UPGRADE KEY "Sec-WebSocket-Version: 13\r\n\r\n",
        "GET / HTTP/1.1\r\nHost x\r\n\r\n",                                /* malformed */
        "GET / HTTP/1.1\r\nHost: x\r\n\rGET\r\n\r\n",
    };
    _Static_assert(sizeof bad / sizeof bad[0] == 8, "the call below names each");
    /* Each on a connection of its own: 400, then the server closes. */
    CLIENT(&r, "http", bad[0], bad[1], bad[2], bad[3], bad[4], bad[5], bad[6], bad[7]);
    ASSERT_KV(&r, "statuses", "400;400;400;400;400;400;400;400");
    ASSERT_KV(&r, "eof", "1,1,1,1,1,1,1,1");
    ASSERT_KV(&r, "version", "13");
    still_serving();
    server_stop();
}

WS_TEST(no_fd_leak)
{
    server_start();
    still_serving();
    int before = server_fds();
    struct run r;
    CLIENT(&r, "burst", "50");
    ASSERT_KV(&r, "closed", "50");
    ASSERT_KV(&r, "ok", "50");
    int now = before;
    cr_assert(TU_WAIT_FOR((now = server_fds()) == before, 2000),
              "server fds: %d before 50 connections, %d after", before, now);
    server_stop();
}

/* ---- the linger after our close frame (raw sockets, no Node) ------------ */

/* Handshake on a raw socket; returns the connected fd. */
static int raw_upgrade(void)
{
    int fd = tu_connect_tcp4(server_port);
    cr_assert(fd >= 0, "connect: %s", strerror(errno));
    static const char req[] = GET(UPGRADE KEY "Sec-WebSocket-Version: 13\r\n");
    cr_assert(tu_write_all(fd, req, sizeof req - 1) == 0);
    char head[512];
    size_t n = 0;
    while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4)) {
        cr_assert(n < sizeof head - 1 && tu_read_exact(fd, head + n, 1) == 0, "handshake");
        n++;
    }
    head[n] = 0;
    cr_assert(strstr(head, "HTTP/1.1 101 ") == head, "%s", head);
    cr_assert(strstr(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "%s", head);
    return fd;
}

/* Provoke a 1002 and read the close frame. */
static void raw_protocol_error(int fd)
{
    static const unsigned char unmasked[] = { 0x81, 0x02, 'h', 'i' };
    cr_assert(tu_write_all(fd, unmasked, sizeof unmasked) == 0);
    unsigned char got[4];
    cr_assert(tu_read_exact(fd, got, 4) == 0);
    cr_assert(got[0] == 0x88 && got[1] == 2 && got[2] == 0x03 && got[3] == 0xEA,
              "got %02x %02x %02x %02x, want a close frame with 1002", got[0], got[1], got[2],
              got[3]);
}

WS_TEST(linger_ends_at_eof)
{
    server_start();
    int fd = raw_upgrade();
    raw_protocol_error(fd);
    /* More frames are discarded, not answered; our EOF ends it at once. */
    static const unsigned char ping[] = { 0x89, 0x80, 0, 0, 0, 0 };
    cr_assert(tu_write_all(fd, ping, sizeof ping) == 0);
    shutdown(fd, SHUT_WR);
    uint64_t t0 = tu_now_ms();
    size_t extra = 0;
    cr_assert_eq(tu_wait_eof(fd, 3000, &extra), 1, "no EOF after ours");
    cr_assert_eq(extra, 0, "%zu bytes after the close frame", extra);
    cr_assert(tu_now_ms() - t0 < 2000);
    close(fd);
    server_stop();
}

WS_TEST(linger_ends_after_5s)
{
    server_start();
    int fd = raw_upgrade();
    uint64_t t0 = tu_now_ms();
    raw_protocol_error(fd);
    /* A client that never answers the close frame: the server waits 5 s. */
    size_t extra = 0;
    cr_assert_eq(tu_wait_eof(fd, 9000, &extra), 1, "the server never closed");
    uint64_t waited = tu_now_ms() - t0;
    cr_assert(waited >= 4900 && waited < 8000, "closed after %llu ms", (unsigned long long)waited);
    cr_assert_eq(extra, 0);
    close(fd);
    server_stop();
}
