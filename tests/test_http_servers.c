/* test_http_servers.c - the HTTP example servers (examples/techempower and
 * examples/async_http) run as child processes and driven by real clients:
 * curl, a raw-socket Python script (tests/http_client.py) and wrk.
 *
 * Every check is written once, as a function of the server's command line,
 * and registered for both servers by SERVER_TEST.  Each test starts its own
 * server on port 0 (Criterion runs tests in parallel processes), and ends by
 * stopping it with SIGTERM and asserting exit status 0 - which an ASan/LSan
 * build of the server fails on a leak.  The server inherits GOEV_BACKEND,
 * so the suite runs once per backend like the other I/O suites.
 *
 * A missing client program fails the test when CI is set and skips it
 * otherwise (tu_require_tool). */
#include "testutil.h"
#ifdef GOEV_TEST_TLS
#include "tls_testutil.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef TOP_BUILDDIR
#define TOP_BUILDDIR "."
#endif
#ifndef TOP_SRCDIR
#define TOP_SRCDIR "."
#endif

#define CLIENT_MS 15000         /* a client command that takes longer has hung */

struct server_cmd {
    const char *name;
    const char *argv[12];
};

static const struct server_cmd techempower = {
    "techempower", { TOP_BUILDDIR "/examples/techempower", "-p", "0", "-t", "2", NULL },
};
/* Three workers and up to 300 us of simulated work per request, so that
 * answers finish in shuffled order behind the scenes. */
static const struct server_cmd async_http = {
    "async_http",
    { TOP_BUILDDIR "/examples/async_http", "-p", "0", "-t", "2", "-w", "3", "-d", "300", NULL },
};

static void init_test(void)
{
    signal(SIGPIPE, SIG_IGN);
}

/* Register check(cmd) as a test for each server. */
#define SERVER_TEST(check)                                                          \
    Test(http_servers, check##_techempower, .init = init_test,                      \
         .fini = tu_servers_cleanup, .timeout = TU_TIMEOUT)                         \
    {                                                                               \
        check(&techempower);                                                        \
    }                                                                               \
    Test(http_servers, check##_async_http, .init = init_test,                       \
         .fini = tu_servers_cleanup, .timeout = TU_TIMEOUT)                         \
    {                                                                               \
        check(&async_http);                                                         \
    }

/* ---- running clients ------------------------------------------------------ */

static void url(char *buf, size_t cap, const struct tu_server *s, const char *path)
{
    snprintf(buf, cap, "http://127.0.0.1:%d%s", s->port, path);
}

/* Run a client, asserting exit status 0; its output stays in *o. */
static void run_ok(const char *const argv[], struct tu_output *o)
{
    int st = tu_run(argv, NULL, CLIENT_MS, o);
    cr_assert(st == 0, "%s exited with %d\nstdout:\n%s\nstderr:\n%s", argv[0], st, o->out,
              o->err);
}

/* ---- parsing answers as curl prints them ---------------------------------- */

struct answer {
    int status;
    char reason[64];
    char server[128], ctype[128], date[128], conn[128];
    long clen;                  /* -1: no Content-Length */
    int nheaders;
    const char *body;           /* into the parsed text */
    size_t body_len;
};

/* Parse one answer (head and, with_body, Content-Length bytes of body) at
 * *p; advances *p past it.  Returns 0, or -1 if it is not one. */
static int parse_answer(const char **p, const char *end, int with_body, struct answer *a)
{
    memset(a, 0, sizeof *a);
    a->clen = -1;
    const char *s = *p;
    const char *eoh = memmem(s, (size_t)(end - s), "\r\n\r\n", 4);
    if (!eoh || sscanf(s, "HTTP/1.1 %d %63[^\r\n]", &a->status, a->reason) != 2)
        return -1;
    const char *line = memchr(s, '\n', (size_t)(eoh - s));
    while (line && line < eoh) {
        line++;
        const char *le = memmem(line, (size_t)(eoh + 2 - line), "\r\n", 2);
        if (!le)
            break;
        char name[64], value[128];
        int n = (int)(le - line);
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%.*s", n < 255 ? n : 255, line);
        if (sscanf(tmp, "%63[^:]: %127[^\r\n]", name, value) == 2) {
            a->nheaders++;
            if (!strcasecmp(name, "Server"))
                snprintf(a->server, sizeof a->server, "%s", value);
            else if (!strcasecmp(name, "Content-Type"))
                snprintf(a->ctype, sizeof a->ctype, "%s", value);
            else if (!strcasecmp(name, "Date"))
                snprintf(a->date, sizeof a->date, "%s", value);
            else if (!strcasecmp(name, "Connection"))
                snprintf(a->conn, sizeof a->conn, "%s", value);
            else if (!strcasecmp(name, "Content-Length"))
                a->clen = atol(value);
        } else {
            return -1;
        }
        line = le + 1;
        if (le == eoh)
            break;
    }
    a->body = eoh + 4;
    a->body_len = 0;
    if (with_body && a->clen > 0) {
        if ((size_t)(end - a->body) < (size_t)a->clen)
            return -1;
        a->body_len = (size_t)a->clen;
    }
    *p = a->body + a->body_len;
    return 0;
}

/* The Date header is an IMF-fixdate of about now. */
static void assert_date(const char *date)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    cr_assert(rest && !*rest && strlen(date) == 29, "bad Date: '%s'", date);
    time_t t = timegm(&tm);
    cr_assert(labs((long)(t - time(NULL))) <= 60, "Date '%s' is not now", date);
}

/* Assert a is `status` with body `body` (NULL: head only, Content-Length
 * blen) and Connection header `conn` ("" for none). */
static void assert_answer(const struct answer *a, int status, const char *reason,
                          const char *ctype, const char *body, size_t blen, const char *conn)
{
    cr_assert_eq(a->status, status, "status %d, want %d", a->status, status);
    cr_assert_str_eq(a->reason, reason);
    cr_assert_str_eq(a->server, "goev");
    cr_assert_str_eq(a->ctype, ctype);
    cr_assert_eq(a->clen, (long)blen, "Content-Length %ld, want %zu", a->clen, blen);
    cr_assert_str_eq(a->conn, conn);
    assert_date(a->date);
    cr_assert_eq(a->nheaders, 4 + (*conn != 0), "%d header fields", a->nheaders);
    if (body) {
        cr_assert(a->body_len == blen && !memcmp(a->body, body, blen), "body '%.*s', want '%s'",
                  (int)a->body_len, a->body, body);
    }
}

static const char plain[] = "Hello, World!";
static const char json[] = "{\"message\":\"Hello, World!\"}";

/* ---- curl ------------------------------------------------------------------ */

/* GET /plaintext and /json: status, every header field, the exact body. */
static void curl_get(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u1[64], u2[64];
    url(u1, sizeof u1, &s, "/plaintext");
    url(u2, sizeof u2, &s, "/json");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-sS", "-i", u1, NULL }, &o);
    const char *p = o.out, *end = o.out + o.out_len;
    struct answer a;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "text/plain", plain, sizeof plain - 1, "");
    cr_assert(p == end, "bytes after the answer:\n%s", p);
    tu_output_free(&o);

    run_ok((const char *[]){ "curl", "-sS", "-i", u2, NULL }, &o);
    p = o.out, end = o.out + o.out_len;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "application/json", json, sizeof json - 1, "");
    cr_assert(p == end, "bytes after the answer:\n%s", p);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(curl_get)

/* HEAD: the head of the GET answer, Content-Length of its body, no body.
 * Two HEADs on one connection: a body sent after the first would be read
 * by curl as the second answer's status line, and fail it. */
static void curl_head(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u1[64], u2[64];
    url(u1, sizeof u1, &s, "/plaintext");
    url(u2, sizeof u2, &s, "/json");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-sS", "-I", "-w", "connects=%{num_connects}\\r\\n\\r\\n",
                             u1, u2, NULL }, &o);
    const char *p = o.out, *end = o.out + o.out_len;
    struct answer a;
    cr_assert(parse_answer(&p, end, 0, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "text/plain", NULL, sizeof plain - 1, "");
    cr_assert(!strncmp(p, "connects=1\r\n\r\n", 14), "first HEAD: %s", p);
    p += 14;
    cr_assert(parse_answer(&p, end, 0, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "application/json", NULL, sizeof json - 1, "");
    cr_assert(!strcmp(p, "connects=0\r\n\r\n"), "second HEAD did not reuse the connection: %s", p);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(curl_head)

/* 404 for other paths, 405 for other methods on the two known paths (a
 * DELETE, then a POST with a body the server must skip). */
static void curl_errors(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u1[64], u2[64];
    url(u1, sizeof u1, &s, "/nope?x=1");
    url(u2, sizeof u2, &s, "/plaintext");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-sS", "-i", u1, NULL }, &o);
    const char *p = o.out, *end = o.out + o.out_len;
    struct answer a;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 404, "Not Found", "text/plain", "Not Found", 9, "");
    tu_output_free(&o);

    run_ok((const char *[]){ "curl", "-sS", "-i", "-X", "DELETE", u2, "--next", "-sS", "-i", "-d",
                             "x=1", u2, NULL }, &o);
    p = o.out, end = o.out + o.out_len;
    for (int i = 0; i < 2; i++) {
        cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer %d:\n%s", i, o.out);
        assert_answer(&a, 405, "Method Not Allowed", "text/plain", "Method Not Allowed", 18, "");
    }
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(curl_errors)

/* HTTP/1.1 keep-alive: two URLs, one connection. */
static void curl_keepalive(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u1[64], u2[64];
    url(u1, sizeof u1, &s, "/plaintext");
    url(u2, sizeof u2, &s, "/json");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-w",
                             "%{http_code} %{num_connects}\\n", u1, u2, NULL }, &o);
    cr_assert_str_eq(o.out, "200 1\n200 0\n", "curl -w says:\n%s", o.out);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(curl_keepalive)

/* HTTP/1.0: the server closes after each answer and says so, unless the
 * client asks for keep-alive, which the answer then confirms. */
static void curl_http10(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u1[64], u2[64];
    url(u1, sizeof u1, &s, "/plaintext");
    url(u2, sizeof u2, &s, "/json");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-0", "-sS", "-i", u1, NULL }, &o);
    const char *p = o.out, *end = o.out + o.out_len;
    struct answer a;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "text/plain", plain, sizeof plain - 1, "close");
    tu_output_free(&o);
    run_ok((const char *[]){ "curl", "-0", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-w",
                             "%{http_code} %{num_connects}\\n", u1, u2, NULL }, &o);
    cr_assert_str_eq(o.out, "200 1\n200 1\n", "HTTP/1.0 connection reused:\n%s", o.out);
    tu_output_free(&o);

    run_ok((const char *[]){ "curl", "-0", "-sS", "-i", "-H", "Connection: keep-alive", u2, NULL },
           &o);
    p = o.out, end = o.out + o.out_len;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "application/json", json, sizeof json - 1, "keep-alive");
    tu_output_free(&o);
    run_ok((const char *[]){ "curl", "-0", "-sS", "-H", "Connection: keep-alive", "-o",
                             "/dev/null", "-o", "/dev/null", "-w",
                             "%{http_code} %{num_connects}\\n", u1, u2, NULL }, &o);
    cr_assert_str_eq(o.out, "200 1\n200 0\n", "HTTP/1.0 keep-alive not kept:\n%s", o.out);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(curl_http10)

/* ---- raw sockets (tests/http_client.py) ------------------------------------ */

static void python_check(const struct server_cmd *cmd, const char *check)
{
    tu_require_tool("python3");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    struct tu_output o;
    int st = tu_run((const char *[]){ "python3", TOP_SRCDIR "/tests/http_client.py", port, check,
                                      NULL }, NULL, CLIENT_MS, &o);
    cr_assert(st == 0 && !strncmp(o.out, "ok ", 3), "http_client.py %s: exit %d\n%s%s", check,
              st, o.out, o.err);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}

/* 1000 pipelined requests in one write, then "Connection: close". */
static void py_pipeline(const struct server_cmd *cmd)
{
    python_check(cmd, "pipeline");
}
SERVER_TEST(py_pipeline)

/* 400/413/431/501, alone and after good requests: answer, then EOF. */
static void py_malformed(const struct server_cmd *cmd)
{
    python_check(cmd, "malformed");
}
SERVER_TEST(py_malformed)

/* Requests split one byte per write. */
static void py_bytewise(const struct server_cmd *cmd)
{
    python_check(cmd, "bytewise");
}
SERVER_TEST(py_bytewise)

/* ---- wrk -------------------------------------------------------------------- */

/* 2 s, 16 connections, 8-deep pipelining (bench/pipeline.lua): every
 * answer a 200, no socket error.  Not a speed test. */
static void wrk_load(const struct server_cmd *cmd)
{
    tu_require_tool("wrk");
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char u[64];
    url(u, sizeof u, &s, "/plaintext");
    struct tu_output o;
    run_ok((const char *[]){ "wrk", "-t", "2", "-c", "16", "-d", "2s", "-s",
                             TOP_SRCDIR "/bench/pipeline.lua", u, "--", "8", NULL }, &o);
    const char *r = strstr(o.out, " requests in ");
    cr_assert(r, "no request count in wrk's output:\n%s", o.out);
    while (r > o.out && r[-1] >= '0' && r[-1] <= '9')
        r--;
    cr_assert(atol(r) > 0, "wrk made no request:\n%s", o.out);
    /* wrk prints these lines only when a count is not zero. */
    cr_assert(!strstr(o.out, "Socket errors"), "wrk saw socket errors:\n%s", o.out);
    cr_assert(!strstr(o.out, "Non-2xx"), "wrk saw answers other than 2xx:\n%s", o.out);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(wrk_load)

#ifdef GOEV_TEST_TLS
/* ---- HTTPS: the same servers with --tls-cert/--tls-key ------------------------ */

/* cmd's argv and the test certificate's flags, in argv (cap 20). */
static void tls_argv(const struct server_cmd *cmd, const char *argv[20])
{
    int n = 0;
    while (cmd->argv[n]) {
        argv[n] = cmd->argv[n];
        n++;
    }
    argv[n++] = "--tls-cert";
    argv[n++] = tu_tls_cert("server.pem");
    argv[n++] = "--tls-key";
    argv[n++] = tu_tls_cert("server.key");
    argv[n] = NULL;
}

/* curl --cacert: /plaintext and /json over one HTTPS connection, exact
 * answers; without the CA curl refuses the certificate (exit 60). */
static void https_curl(const struct server_cmd *cmd)
{
    tu_require_tool("curl");
    const char *argv[20];
    tls_argv(cmd, argv);
    struct tu_server s;
    tu_server_start(&s, argv);
    cr_assert(strstr(s.log, "tls=on"), "the server does not say tls=on:\n%s", s.log);
    char u1[80], u2[80];
    snprintf(u1, sizeof u1, "https://localhost:%d/plaintext", s.port);
    snprintf(u2, sizeof u2, "https://localhost:%d/json", s.port);
    const char *ca = tu_tls_cert("ca.pem");
    struct tu_output o;
    run_ok((const char *[]){ "curl", "-sS", "-i", "--cacert", ca, u1, u2, "-w",
                             "connects=%{num_connects}\r\n\r\n", NULL }, &o);
    const char *p = o.out, *end = o.out + o.out_len;
    struct answer a;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not an answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "text/plain", plain, sizeof plain - 1, "");
    cr_assert(strncmp(p, "connects=1\r\n\r\n", 14) == 0, "curl -w says:\n%s", p);
    p += 14;
    cr_assert(parse_answer(&p, end, 1, &a) == 0, "not a second answer:\n%s", o.out);
    assert_answer(&a, 200, "OK", "application/json", json, sizeof json - 1, "");
    cr_assert_str_eq(p, "connects=0\r\n\r\n", "the second request was not on the same connection:\n%s", o.out);
    tu_output_free(&o);

    int st = tu_run((const char *[]){ "curl", "-sS", "-o", "/dev/null", u1, NULL }, NULL, CLIENT_MS, &o);
    cr_assert_eq(st, 60, "curl without the CA: exit %d\n%s", st, o.err);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(https_curl)

/* wrk over HTTPS, pipelined: requests made, no socket error, only 2xx. */
static void https_wrk(const struct server_cmd *cmd)
{
    tu_require_tool("wrk");
    const char *argv[20];
    tls_argv(cmd, argv);
    struct tu_server s;
    tu_server_start(&s, argv);
    char u[80];
    snprintf(u, sizeof u, "https://127.0.0.1:%d/plaintext", s.port);
    struct tu_output o;
    run_ok((const char *[]){ "wrk", "-t", "1", "-c", "8", "-d", "1s", "-s",
                             TOP_SRCDIR "/bench/pipeline.lua", u, "--", "4", NULL }, &o);
    const char *r = strstr(o.out, " requests in ");
    cr_assert(r, "no request count in wrk's output:\n%s", o.out);
    while (r > o.out && r[-1] >= '0' && r[-1] <= '9')
        r--;
    cr_assert(atol(r) > 0, "wrk made no request:\n%s", o.out);
    cr_assert(!strstr(o.out, "Socket errors"), "wrk saw socket errors:\n%s", o.out);
    cr_assert(!strstr(o.out, "Non-2xx"), "wrk saw answers other than 2xx:\n%s", o.out);
    tu_output_free(&o);
    tu_server_stop_ok(&s);
}
SERVER_TEST(https_wrk)
#endif

/* ---- examples/connect_pool, goev's pooled client ------------------------------ */

/* 3000 requests, 32 at a time, over a pool of at most 8 connections: all
 * answered, none failed, the pool never above 8 and never more connections
 * made than it holds (the server keeps them alive). */
static void pool_client(const struct server_cmd *cmd)
{
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s.port);
    struct tu_output o;
    run_ok((const char *[]){ TOP_BUILDDIR "/examples/connect_pool", "-c", addr, "-n", "3000", "-k",
                             "32", "--min-idle", "2", "--max-live", "8", NULL }, &o);
    long req = -1, err = -1, created = -1, max_live = -1;
    const char *l = strstr(o.out, "requests=");
    cr_assert(l && sscanf(l, "requests=%ld errors=%ld created=%ld max_live=%ld", &req, &err,
                          &created, &max_live) == 4, "connect_pool printed:\n%s", o.out);
    cr_assert_eq(req, 3000, "%s", o.out);
    cr_assert_eq(err, 0, "%s%s", o.out, o.err);
    cr_assert(max_live >= 1 && max_live <= 8, "max_live %ld", max_live);
    cr_assert(created >= 1 && created <= 8, "created %ld connections for a pool of 8", created);
    cr_assert(strstr(o.out, "latency_us p50="), "no latency line:\n%s", o.out);
    tu_output_free(&o);
    /* The server going away: every request fails cleanly, and fast. */
    tu_server_stop_ok(&s);
    int st = tu_run((const char *[]){ TOP_BUILDDIR "/examples/connect_pool", "-c", addr, "-n", "20",
                                      "-k", "4", "--timeout", "3000", NULL },
                    NULL, CLIENT_MS, &o);
    cr_assert_eq(st, 1, "connect_pool against a closed port: status %d\n%s", st, o.err);
    cr_assert(strstr(o.out, "requests=20 errors=20"), "%s", o.out);
    tu_output_free(&o);
}
SERVER_TEST(pool_client)

/* Resident memory of pid in KiB, from /proc/PID/status. */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert(f, "%s: %s", path, strerror(errno));
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* A client that pipelines requests and never reads the answers: the server
 * must stop reading it (the library's output high-water mark) instead of
 * queueing answers without bound, and must answer everything once the
 * client reads.  Before the watermarks, the techempower example grew by
 * 121 MiB for a million such requests. */
static void unread_pipeline(const struct server_cmd *cmd)
{
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    int fd = tu_connect_tcp4(s.port);
    cr_assert(fd >= 0);
    static const char req[] = "GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";
    enum { RL = sizeof req - 1, BATCH = 2048, MAX_REQS = 1000000 };
    static char burst[RL * BATCH];
    for (int i = 0; i < BATCH; i++)
        memcpy(burst + (size_t)i * RL, req, RL);
    tu_sleep_ms(100);
    long rss0 = rss_kib(s.pid);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    size_t sent = 0;    /* bytes */
    uint64_t blocked_since = 0;
    while (sent < (size_t)MAX_REQS * RL) {
        size_t off = sent % sizeof burst;
        ssize_t n = send(fd, burst + off, sizeof burst - off, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t)n;
            blocked_since = 0;
            continue;
        }
        cr_assert(n < 0 && errno == EAGAIN, "send: %s", strerror(errno));
        if (!blocked_since)
            blocked_since = tu_now_ms();
        else if (tu_now_ms() - blocked_since > 500)
            break;
        tu_sleep_ms(5);
    }
    long rss1 = rss_kib(s.pid);
    size_t nreq = sent / RL;
    cr_assert(nreq < MAX_REQS, "the server read all %d unanswered requests: not throttled",
              MAX_REQS);
    cr_assert(rss1 - rss0 < 32 * 1024, "server grew by %ld KiB for %zu unread answers",
              rss1 - rss0, nreq);
    /* Read every answer (a request cut short by the last send stays
     * unanswered). */
    fcntl(fd, F_SETFL, 0);
    tu_set_io_timeout(fd, 10000);
    static char buf[65536 + 16];
    size_t answers = 0, keep = 0;
    while (answers < nreq) {
        ssize_t n = read(fd, buf + keep, sizeof buf - 16 - keep);
        cr_assert(n > 0, "%zu of %zu answers: %s", answers, nreq, n < 0 ? strerror(errno) : "EOF");
        size_t len = keep + (size_t)n;
        const char *q = buf, *end = buf + len;
        const char *m;
        while ((m = memmem(q, (size_t)(end - q), "Hello, World!", 13))) {
            answers++;
            q = m + 13;
        }
        keep = (size_t)(end - q) < 12 ? (size_t)(end - q) : 12;
        memmove(buf, end - keep, keep);
    }
    cr_assert_eq(answers, nreq);
    close(fd);
    tu_server_stop_ok(&s);
}
/* techempower only: async_http answers through workers that simulate up
 * to 300 us of work per request, too slow for 100,000+ answers here, and it
 * bounds its queues itself. */
Test(http_servers, unread_pipeline_techempower, .init = init_test, .fini = tu_servers_cleanup,
     .timeout = TU_TIMEOUT)
{
    unread_pipeline(&techempower);
}

/* ---- life cycle ------------------------------------------------------------- */

/* 100 connections, all open at once, ended four ways (the server closes
 * after "Connection: close"; the client closes after an answer; the client
 * closes without a word; the client resets in the middle of a request):
 * the server's fd count comes back to what it was, then SIGTERM ends it
 * with status 0. */
static void fds_and_sigterm(const struct server_cmd *cmd)
{
    struct tu_server s;
    tu_server_start(&s, cmd->argv);
    /* The pollers open their rings (io_uring) as their threads start, which
     * may be after the "listening" line: a few finished connections first,
     * which reach every connection poller (round-robin), then count. */
    static const char req_close[] = "GET /plaintext HTTP/1.1\r\nConnection: close\r\n\r\n";
    char buf[4096];
    for (int i = 0; i < 4; i++) {
        int fd = tu_connect_tcp4(s.port);
        cr_assert(fd >= 0, "connect: %s", strerror(errno));
        cr_assert(tu_write_all(fd, req_close, sizeof req_close - 1) == 0);
        cr_assert(tu_read_to_eof(fd, buf, sizeof buf) > 0);
        close(fd);
    }
    int before = -1, prev;
    do {
        prev = before;
        tu_sleep_ms(20);
        before = tu_proc_fd_count(s.pid);
    } while (before != prev);
    cr_assert(before > 0, "cannot read /proc/%d/fd", (int)s.pid);

    enum { N = 100 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = tu_connect_tcp4(s.port);
        cr_assert(fds[i] >= 0, "connect %d: %s", i, strerror(errno));
    }
    static const char req_keep[] = "GET /json HTTP/1.1\r\n\r\n";
    static const char req_half[] = "GET /json HTTP/1.1\r\nHost: x";
    for (int i = 0; i < N; i++) {
        int rc = 0;
        if (i % 4 == 0)
            rc = tu_write_all(fds[i], req_close, sizeof req_close - 1);
        else if (i % 4 == 1)
            rc = tu_write_all(fds[i], req_keep, sizeof req_keep - 1);
        else if (i % 4 == 3)
            rc = tu_write_all(fds[i], req_half, sizeof req_half - 1);
        cr_assert(rc == 0, "write %d: %s", i, strerror(-rc));
    }
    for (int i = 0; i < N; i++) {
        if (i % 4 == 0) {
            ssize_t n = tu_read_to_eof(fds[i], buf, sizeof buf);
            cr_assert(n > 0 && !strncmp(buf, "HTTP/1.1 200 OK\r\n", 17), "conn %d: %zd", i, n);
        } else if (i % 4 == 1) {
            /* The whole answer: 12 header lines' worth is more than enough. */
            size_t got = 0;
            while (!memmem(buf, got, "Hello, World!\"}", 15) && got < sizeof buf) {
                ssize_t n = read(fds[i], buf + got, sizeof buf - got);
                if (n < 0 && errno == EINTR)    /* see tu_connect_fd */
                    continue;
                cr_assert(n > 0, "conn %d: read %zd (%s)", i, n, strerror(errno));
                got += (size_t)n;
            }
        } else if (i % 4 == 3) {
            struct linger lg = { .l_onoff = 1, .l_linger = 0 };
            setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fds[i]);
    }
    int now = -1;
    bool back = TU_WAIT_FOR((now = tu_proc_fd_count(s.pid)) == before, 5000);
    cr_assert(back, "server fds: %d before the connections, %d after they all closed", before,
              now);
    tu_server_stop_ok(&s);
}
SERVER_TEST(fds_and_sigterm)
