/* test_http.c - the example HTTP request parser (examples/http.c).
 *
 * Unit cases pin down each documented rule; the split tests feed the same
 * bytes cut at every offset the way goev presents them (unconsumed tail in
 * front of the next bytes); the fuzz cross-check, built when Debian's
 * http_parser is installed, runs both parsers on random and mutated
 * requests and requires them to agree, message by message, on acceptance,
 * method, target, version, keep-alive and length.
 *
 * Every input is placed right before a PROT_NONE page, so a parser read
 * past the end of its buffer crashes the test instead of passing silently. */
#include "../examples/http.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef HAVE_HTTP_PARSER
#include <http_parser.h>
#endif

/* ---- guarded input ------------------------------------------------------ */

#define GUARD_SPACE (64 * 1024)
static char *guard_base;

static void guard_setup(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    guard_base = mmap(NULL, GUARD_SPACE + (size_t)pg, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(guard_base != MAP_FAILED);
    cr_assert_eq(mprotect(guard_base + GUARD_SPACE, (size_t)pg, PROT_NONE), 0);
}

/* A copy of s[0..n) ending exactly at the guard page. */
static const char *guarded(const char *s, size_t n)
{
    cr_assert(n <= GUARD_SPACE);
    char *d = guard_base + GUARD_SPACE - n;
    memcpy(d, s, n);
    return d;
}

static ssize_t parse(const char *s, size_t n, struct http_req *rq)
{
    return http_req_parse(guarded(s, n), n, rq);
}

#define S(lit) lit, sizeof(lit) - 1

TestSuite(http, .init = guard_setup);

/* ---- unit cases ---------------------------------------------------------- */

Test(http, simple_get)
{
    static const char req[] = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:9104\r\n\r\n";
    struct http_req r;
    ssize_t n = parse(S(req), &r);
    cr_assert_eq(n, (ssize_t)sizeof req - 1);
    cr_assert_eq(r.method_id, HTTP_REQ_GET);
    cr_assert_eq(r.method_len, 3);
    cr_assert_eq(r.path_len, 10);
    cr_assert(!memcmp(r.path, "/plaintext", 10));
    cr_assert_null(r.query);
    cr_assert_eq(r.minor, 1);
    cr_assert(r.keep_alive);
    cr_assert_eq(r.host_len, 14);
    cr_assert(!memcmp(r.host, "127.0.0.1:9104", 14));
    cr_assert_eq(r.nfields, 1);
    cr_assert_eq(r.content_length, 0);
    cr_assert_eq(r.head_len, sizeof req - 1);
}

Test(http, path_query_fragment)
{
    struct http_req r;
    cr_assert_gt(parse(S("GET /a/b?x=1&y=2#frag HTTP/1.1\r\n\r\n"), &r), 0);
    cr_assert_eq(r.path_len, 4);
    cr_assert(!memcmp(r.path, "/a/b", 4));
    cr_assert_eq(r.query_len, 7);
    cr_assert(!memcmp(r.query, "x=1&y=2", 7));
    cr_assert_eq(r.target_len, 17);

    cr_assert_gt(parse(S("GET /p#a?b HTTP/1.1\r\n\r\n"), &r), 0);
    cr_assert_eq(r.path_len, 2);
    cr_assert_null(r.query, "a '?' inside the fragment is no query");

    cr_assert_gt(parse(S("GET /? HTTP/1.1\r\n\r\n"), &r), 0);
    cr_assert_not_null(r.query);
    cr_assert_eq(r.query_len, 0);

    cr_assert_gt(parse(S("OPTIONS * HTTP/1.1\r\n\r\n"), &r), 0);
    cr_assert_eq(r.method_id, HTTP_REQ_OPTIONS);
    cr_assert_eq(r.target_len, 1);
}

Test(http, methods)
{
    static const struct { const char *m; int id; } t[] = {
        {"GET", HTTP_REQ_GET}, {"HEAD", HTTP_REQ_HEAD}, {"POST", HTTP_REQ_POST},
        {"PUT", HTTP_REQ_PUT}, {"DELETE", HTTP_REQ_DELETE},
        {"OPTIONS", HTTP_REQ_OPTIONS}, {"PATCH", HTTP_REQ_PATCH},
        {"PROPFIND", HTTP_REQ_OTHER}, {"X-CUSTOM_1", HTTP_REQ_OTHER},
        {"get", HTTP_REQ_OTHER},        /* methods are case-sensitive */
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        char b[128];
        int len = snprintf(b, sizeof b, "%s /x HTTP/1.1\r\n\r\n", t[i].m);
        struct http_req r;
        cr_assert_eq(parse(b, (size_t)len, &r), len, "%s", t[i].m);
        cr_assert_eq(r.method_id, t[i].id, "%s", t[i].m);
        cr_assert_eq(r.method_len, strlen(t[i].m));
        cr_assert(!memcmp(r.method, t[i].m, r.method_len));
    }
}

Test(http, keep_alive_rules)
{
    static const struct { const char *req; int ka; } t[] = {
        {"GET / HTTP/1.1\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: CLOSE \r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: ,,close,,\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n", 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        struct http_req r;
        size_t len = strlen(t[i].req);
        cr_assert_eq(parse(t[i].req, len, &r), (ssize_t)len, "%s", t[i].req);
        cr_assert_eq(r.keep_alive, t[i].ka, "%s", t[i].req);
    }
}

Test(http, pipelined_batch)
{
    static const char one[] = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:9104\r\n\r\n";
    char buf[16 * sizeof one];
    size_t len = 0;
    for (int i = 0; i < 16; i++) {
        memcpy(buf + len, one, sizeof one - 1);
        len += sizeof one - 1;
    }
    const char *g = guarded(buf, len);
    size_t off = 0;
    int count = 0;
    for (;;) {
        struct http_req r;
        ssize_t n = http_req_parse(g + off, len - off, &r);
        cr_assert_geq(n, 0);
        if (!n)
            break;
        cr_assert_eq(n, (ssize_t)sizeof one - 1);
        cr_assert_eq(r.path, g + off + 4);
        off += (size_t)n;
        count++;
    }
    cr_assert_eq(count, 16);
    cr_assert_eq(off, len);
}

Test(http, bodies)
{
    static const char req[] =
        "POST /submit HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        "GET /next HTTP/1.1\r\n\r\n";
    size_t first = sizeof "POST /submit HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" - 1;
    struct http_req r;
    cr_assert_eq(parse(S(req), &r), (ssize_t)first);
    cr_assert_eq(r.content_length, 5);
    cr_assert_eq(r.head_len, first - 5);
    cr_assert(!memcmp(r.body, "hello", 5));

    /* The body is part of the request: not complete until it is all here. */
    for (size_t k = r.head_len; k < first; k++)
        cr_assert_eq(parse(req, k, &r), 0, "cut at %zu", k);

    /* A body that looks like a request is skipped, not parsed. */
    static const char sneaky[] =
        "POST / HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
    cr_assert_eq(parse(S(sneaky), &r), (ssize_t)sizeof sneaky - 1);
    cr_assert_eq(r.content_length, 19);

    cr_assert_eq(parse(S("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), &r), 38);
    static const char padded[] = "POST / HTTP/1.1\r\nContent-Length:  007 \r\n\r\n1234567";
    cr_assert_eq(parse(S(padded), &r), (ssize_t)sizeof padded - 1);
    cr_assert_eq(r.content_length, 7);

    /* Limit: exactly HTTP_REQ_MAX_BODY is fine (and incomplete here). */
    char b[128];
    int len = snprintf(b, sizeof b, "POST / HTTP/1.1\r\nContent-Length: %u\r\n\r\n", HTTP_REQ_MAX_BODY);
    cr_assert_eq(parse(b, (size_t)len, &r), 0);
    len = snprintf(b, sizeof b, "POST / HTTP/1.1\r\nContent-Length: %u\r\n\r\n", HTTP_REQ_MAX_BODY + 1);
    cr_assert_eq(parse(b, (size_t)len, &r), HTTP_REQ_E413);
    cr_assert_eq(parse(S("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"), &r),
                 HTTP_REQ_E413);
}

/* Requests that must be rejected, with the status to answer. */
Test(http, malformed)
{
    static const struct { const char *req; size_t len; ssize_t want; } t[] = {
#define BAD(s, w) {s, sizeof(s) - 1, w}
        BAD(" GET / HTTP/1.1\r\n\r\n", HTTP_REQ_E400),            /* leading SP */
        BAD("GET\t/ HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET /\r\n\r\n", HTTP_REQ_E400),                      /* HTTP/0.9 */
        BAD("GET / \r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1 \r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\r\n\r\n", HTTP_REQ_E400),           /* CR without LF */
        BAD("GET /a b HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET /a\x01 HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET /a\x7f HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET /a\tb HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET /\0 HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET a HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET http://h/ HTTP/1.1\r\n\r\n", HTTP_REQ_E400),     /* absolute-form */
        BAD("G(T / HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("/ HTTP/1.1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nHost\r\n\r\n", HTTP_REQ_E400),     /* no colon */
        BAD("GET / HTTP/1.1\r\n: x\r\n\r\n", HTTP_REQ_E400),      /* empty name */
        BAD("GET / HTTP/1.1\r\nHost : x\r\n\r\n", HTTP_REQ_E400), /* SP before colon */
        BAD("GET / HTTP/1.1\r\nHo st: x\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX: y\r\n z\r\n\r\n", HTTP_REQ_E400), /* obs-fold */
        BAD("GET / HTTP/1.1\r\nX: y\r\n\tz\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX: a\x01\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nX\x80: a\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\n\rX", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: \r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\nxx", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", HTTP_REQ_E400),
        BAD("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", HTTP_REQ_E501),
        BAD("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP_REQ_E501),
        /* Errors are reported before the head is complete. */
        BAD("\x16\x03\x01\x02\x00\x01\x00\x01", HTTP_REQ_E400),   /* a TLS hello */
        BAD("GET / HTTP/1.1\r\nX: \x01", HTTP_REQ_E400),
        BAD("GET / HTTP/1.1\r\nHost : ", HTTP_REQ_E400),
        BAD("GET / HTTP/2", HTTP_REQ_E400),
        BAD("GET / HTTX", HTTP_REQ_E400),
#undef BAD
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        struct http_req r;
        cr_assert_eq(parse(t[i].req, t[i].len, &r), t[i].want, "case %zu: %s", i, t[i].req);
    }
}

Test(http, versions)
{
    static const struct { const char *v; ssize_t ok; } t[] = {
        {"HTTP/1.0", 1}, {"HTTP/1.1", 1}, {"HTTP/1.2", 0}, {"HTTP/2.0", 0},
        {"HTTP/0.9", 0}, {"HTTP/1.", 0}, {"HTTP/1.11", 0}, {"HTTP/11.1", 0},
        {"http/1.1", 0}, {"HTTP/1,1", 0}, {"HTTP 1.1", 0}, {"HTTP/1.1x", 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        char b[64];
        int len = snprintf(b, sizeof b, "GET / %s\r\n\r\n", t[i].v);
        struct http_req r;
        ssize_t n = parse(b, (size_t)len, &r);
        if (t[i].ok) {
            cr_assert_eq(n, len, "%s", t[i].v);
            cr_assert_eq(r.minor, t[i].v[7] - '0');
        } else {
            cr_assert_eq(n, HTTP_REQ_E400, "%s", t[i].v);
        }
    }
}

/* Documented choice: a bare LF ends a line (RFC 9112 2.2), a bare CR is a
 * 400, and empty lines before a request are skipped and counted in it. */
Test(http, bare_lf_and_empty_lines)
{
    struct http_req r;
    cr_assert_eq(parse(S("GET / HTTP/1.1\nHost: h\n\n"), &r), 24);
    cr_assert_eq(r.host_len, 1);
    cr_assert_eq(parse(S("GET / HTTP/1.1\r\nHost: h\n\r\n"), &r), 26);
    cr_assert_eq(parse(S("GET / HTTP/1.1\nHost: h\r\n\n"), &r), 25);
    cr_assert_eq(parse(S("\r\n\n\r\nGET / HTTP/1.1\r\n\r\n"), &r), 23);
    cr_assert_eq(r.method, guard_base + GUARD_SPACE - 23 + 5);
    cr_assert_eq(r.head_len, 23);
    /* Only empty lines: nothing to answer, nothing consumed yet. */
    cr_assert_eq(parse(S("\r\n\r\n"), &r), 0);
    cr_assert_eq(parse(S("\r"), &r), 0);
    cr_assert_eq(parse(S("\rG"), &r), HTTP_REQ_E400);
}

Test(http, field_lookup)
{
    struct http_req r;
    size_t n;
    const char *v;
    static const char req[] = "GET /a:b HTTP/1.1\r\nHost: h\r\nRange:  bytes=0-9 \t\r\n"
                              "x-empty:\r\nUPGRADE: websocket\nrange: second\r\n\r\n";
    cr_assert_eq(parse(S(req), &r), (ssize_t)sizeof req - 1);
    v = http_req_field(&r, "range", &n);
    cr_assert(v && n == 9 && !memcmp(v, "bytes=0-9", 9), "first Range, trimmed");
    v = http_req_field(&r, "Upgrade", &n);
    cr_assert(v && n == 9 && !memcmp(v, "websocket", 9), "bare-LF line, any case");
    v = http_req_field(&r, "X-Empty", &n);
    cr_assert(v && n == 0);
    cr_assert_null(http_req_field(&r, "Hos", &n), "a prefix of a name is not the name");
    cr_assert_null(http_req_field(&r, "b HTTP/1.1\r\nHost", &n));
    cr_assert_null(http_req_field(&r, "Missing", &n));
    cr_assert_eq(parse(S("GET / HTTP/1.1\r\n\r\n"), &r), 18);
    cr_assert_null(http_req_field(&r, "Host", &n));
    /* A body that looks like fields is not searched. */
    cr_assert_eq(parse(S("POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nA: b\r\n\r\n"), &r), 46);
    cr_assert_null(http_req_field(&r, "A", &n));
}

Test(http, incomplete_prefixes)
{
    /* Every proper prefix of a valid request is "need more", never an
     * error, and never reads past the end (the guard page checks that). */
    static const char req[] =
        "\r\nPOST /p?q=1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n"
        "Content-Length: 3\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nabc";
    struct http_req r;
    for (size_t k = 0; k < sizeof req - 1; k++)
        cr_assert_eq(parse(req, k, &r), 0, "prefix %zu", k);
    cr_assert_eq(parse(S(req), &r), (ssize_t)sizeof req - 1);
    cr_assert(r.keep_alive);
    cr_assert_eq(r.minor, 0);
    cr_assert_eq(r.nfields, 4);
}

Test(http, head_limit)
{
    static char buf[3 * HTTP_REQ_MAX_HEAD];
    static const char line[] = "GET / HTTP/1.1\r\nX: ";
    struct http_req r;

    /* A head of exactly HTTP_REQ_MAX_HEAD bytes is accepted. */
    size_t fill = HTTP_REQ_MAX_HEAD - (sizeof line - 1) - 4;
    memcpy(buf, line, sizeof line - 1);
    memset(buf + sizeof line - 1, 'a', fill);
    memcpy(buf + sizeof line - 1 + fill, "\r\n\r\n", 4);
    cr_assert_eq(parse(buf, HTTP_REQ_MAX_HEAD, &r), HTTP_REQ_MAX_HEAD);

    /* One byte more is a 431, whether the end is in the buffer or not. */
    memcpy(buf + sizeof line - 1, "a", 1);
    memset(buf + sizeof line - 1, 'a', fill + 1);
    memcpy(buf + sizeof line - 1 + fill + 1, "\r\n\r\n", 4);
    cr_assert_eq(parse(buf, HTTP_REQ_MAX_HEAD + 1, &r), HTTP_REQ_E431);
    cr_assert_eq(parse(buf, HTTP_REQ_MAX_HEAD + 4, &r), HTTP_REQ_E431);
    cr_assert_eq(parse(buf, HTTP_REQ_MAX_HEAD + 5, &r), HTTP_REQ_E431);
    cr_assert_eq(parse(buf, HTTP_REQ_MAX_HEAD - 1, &r), 0);

    /* Endless header lines, and endless empty lines. */
    size_t len = 0;
    memcpy(buf, "GET / HTTP/1.1\r\n", 16);
    for (len = 16; len + 8 < sizeof buf; len += 8)
        memcpy(buf + len, "A: bcd\r\n", 8);
    cr_assert_eq(parse(buf, len, &r), HTTP_REQ_E431);
    for (len = 0; len < 2 * HTTP_REQ_MAX_HEAD; len += 2)
        memcpy(buf + len, "\r\n", 2);
    cr_assert_eq(parse(buf, len, &r), HTTP_REQ_E431);

    /* A malformed line inside an oversized head is still a 400 when it
     * comes first. */
    memset(buf, 'a', sizeof buf);
    memcpy(buf, "GET / HTTP/1.1\r\nBad Name: x\r\n", 29);
    cr_assert_eq(parse(buf, sizeof buf, &r), HTTP_REQ_E400);
}

/* ---- split feeding ------------------------------------------------------- */

struct msg {
    int method_id;
    size_t method_len, target_len, len;
    char target[64];
    int minor, keep_alive;
    uint64_t cl;
};

struct run {
    struct msg m[32];
    int n;
    ssize_t err;        /* 0, or the error that ended the run */
};

static void note(struct run *out, const struct http_req *r, ssize_t n)
{
    cr_assert_lt(out->n, 32);
    struct msg *m = &out->m[out->n++];
    memset(m, 0, sizeof *m);
    m->method_id = r->method_id;
    m->method_len = r->method_len;
    m->target_len = r->target_len;
    memcpy(m->target, r->target, r->target_len < 63 ? r->target_len : 63);
    m->minor = r->minor;
    m->keep_alive = r->keep_alive;
    m->cl = r->content_length;
    m->len = (size_t)n;
}

/* Feed data in pieces cut at cuts[0..ncuts), like goev does: the tail a
 * parse left unconsumed comes back in front of the next bytes. */
static void feed(const char *data, size_t len, const size_t *cuts, int ncuts, struct run *out)
{
    static char carry[GUARD_SPACE];
    size_t have = 0, pos = 0;
    memset(out, 0, sizeof *out);
    for (int c = 0; c <= ncuts; c++) {
        size_t upto = c < ncuts ? cuts[c] : len;
        memcpy(carry + have, data + pos, upto - pos);
        have += upto - pos;
        pos = upto;
        const char *g = guarded(carry, have);
        size_t off = 0;
        for (;;) {
            struct http_req r;
            ssize_t n = http_req_parse(g + off, have - off, &r);
            if (n < 0) {
                out->err = n;
                return;
            }
            if (!n)
                break;
            note(out, &r, n);
            off += (size_t)n;
        }
        memmove(carry, carry + off, have - off);
        have -= off;
    }
}

static void same_run(const struct run *a, const struct run *b, const char *what, size_t at)
{
    cr_assert_eq(a->n, b->n, "%s %zu: %d vs %d requests", what, at, a->n, b->n);
    cr_assert_eq(a->err, b->err, "%s %zu", what, at);
    for (int i = 0; i < a->n; i++)
        cr_assert(!memcmp(&a->m[i], &b->m[i], sizeof a->m[i]), "%s %zu: request %d", what, at, i);
}

static const char batch[] =
    "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:9104\r\n\r\n"
    "POST /form?a=b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
    "\r\n"
    "GET /json HTTP/1.0\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n"
    "HEAD /x HTTP/1.1\nConnection: close\n\n"
    "DELETE /y HTTP/1.1\r\nContent-Length: 0\r\nUser-Agent: test/1.0 (x; y)\r\n\r\n";

Test(http, split_at_every_offset)
{
    struct run whole, part;
    feed(batch, sizeof batch - 1, NULL, 0, &whole);
    cr_assert_eq(whole.n, 5);
    cr_assert_eq(whole.err, 0);
    cr_assert_eq(whole.m[1].cl, 11);
    cr_assert_eq(whole.m[2].keep_alive, 1);
    cr_assert_eq(whole.m[3].keep_alive, 0);
    size_t total = 0;
    for (int i = 0; i < whole.n; i++)
        total += whole.m[i].len;
    cr_assert_eq(total, sizeof batch - 1);

    for (size_t k = 0; k <= sizeof batch - 1; k++) {
        size_t cut = k;
        feed(batch, sizeof batch - 1, &cut, 1, &part);
        same_run(&whole, &part, "cut at", k);
    }
    /* Three cuts at pseudo-random places, many times. */
    uint64_t x = 42;
    for (int it = 0; it < 2000; it++) {
        size_t cuts[3];
        for (int j = 0; j < 3; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            cuts[j] = (size_t)(x >> 33) % (sizeof batch);
        }
        for (int a = 0; a < 3; a++)                 /* sort */
            for (int b = a + 1; b < 3; b++)
                if (cuts[b] < cuts[a]) { size_t t = cuts[a]; cuts[a] = cuts[b]; cuts[b] = t; }
        feed(batch, sizeof batch - 1, cuts, 3, &part);
        same_run(&whole, &part, "iteration", (size_t)it);
    }
}

Test(http, byte_at_a_time)
{
    struct run whole, part;
    size_t cuts[sizeof batch];
    for (size_t i = 0; i < sizeof batch - 1; i++)
        cuts[i] = i + 1;
    feed(batch, sizeof batch - 1, NULL, 0, &whole);
    feed(batch, sizeof batch - 1, cuts, (int)(sizeof batch - 1), &part);
    same_run(&whole, &part, "bytewise", 0);
}

/* A malformed request after good ones: the good ones are answered first. */
Test(http, error_after_good_requests)
{
    static const char in[] = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/9.9\r\n\r\n";
    struct run out;
    feed(in, sizeof in - 1, NULL, 0, &out);
    cr_assert_eq(out.n, 2);
    cr_assert_eq(out.err, HTTP_REQ_E400);
}

/* ---- fuzz cross-check against http_parser --------------------------------- */

#ifdef HAVE_HTTP_PARSER

static uint64_t rs;
static uint64_t rnd(void)
{
    rs ^= rs >> 12;
    rs ^= rs << 25;
    rs ^= rs >> 27;
    return rs * 0x2545F4914F6CDD1Dull;
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static const char *const corpus[] = {
    "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:9104\r\n\r\n",
    "GET /json HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET /index.html?x=1&y=%20z HTTP/1.0\r\nConnection: Keep-Alive\r\nUser-Agent: curl/7.88.1\r\n\r\n",
    "POST /api/v1/items HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!",
    "PUT /f HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    "DELETE /r/1 HTTP/1.1\r\nHost: example.org\r\nCookie: a=b; c=d\r\n\r\n",
    "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "PATCH /p HTTP/1.1\r\nContent-Length: 2\r\nX-A:\t tab \t\r\n\r\nok",
    "GET /a?b#c HTTP/1.1\nHost: lf-only\n\n",
    "\r\nGET /after-empty-line HTTP/1.1\r\nX-Empty:\r\n\r\n",
    "GET /x HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
    "GET /y HTTP/1.1\r\nAccept-Language: \xc3\xa9t\xc3\xa9\r\nReferer: http://a/b?c\r\n\r\n",
    "PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\nContent-Length: 0\r\n\r\n",
};
#define NCORPUS (sizeof corpus / sizeof *corpus)

/* Bytes the mutator inserts: the ones that decide how a head is split. */
static const char specials[] = "\r\n \t:\0,/?#.0123456789HT";

static size_t gen(char *b, size_t cap)
{
    size_t len = 0;
    int kind = (int)below(10);
    if (kind == 0) {                            /* random bytes */
        len = below(200);
        for (size_t i = 0; i < len; i++)
            b[i] = (char)(below(4) ? specials[below(sizeof specials - 1)] : (char)rnd());
        return len;
    }
    int nreq = 1 + (int)below(4);               /* a pipelined batch */
    for (int i = 0; i < nreq; i++) {
        const char *c = corpus[below(NCORPUS)];
        size_t n = strlen(c);
        memcpy(b + len, c, n);
        len += n;
    }
    if (kind == 1 && len + 12000 < cap) {       /* a long header in the last request */
        size_t n = 1000 + below(10000);
        char *eoh = NULL;
        for (char *s = b; (s = memmem(s, len - (size_t)(s - b), "\r\n\r\n", 4)); s += 4)
            eoh = s;
        if (eoh) {
            size_t at = (size_t)(eoh - b) + 2;
            memmove(b + at + n + 5, b + at, len - at);
            memcpy(b + at, "X-L: ", 5);
            memset(b + at + 5, 'v', n - 2);
            memcpy(b + at + 5 + n - 2, "\r\n", 2);
            len += n + 5;
        }
    }
    int nmut = kind == 2 ? 0 : 1 + (int)below(3);
    for (int m = 0; m < nmut && len > 0; m++) {
        size_t at = below(len);
        switch (below(6)) {
        case 0: b[at] = (char)rnd(); break;
        case 1: b[at] ^= (char)(1u << below(8)); break;
        case 2: b[at] = specials[below(sizeof specials - 1)]; break;
        case 3:                                 /* insert */
            if (len + 1 < cap) {
                memmove(b + at + 1, b + at, len - at);
                b[at] = specials[below(sizeof specials - 1)];
                len++;
            }
            break;
        case 4:                                 /* delete */
            memmove(b + at, b + at + 1, len - at - 1);
            len--;
            break;
        case 5: len = at; break;                /* truncate */
        }
    }
    return len;
}

struct hp_msg {
    char method[24];
    char target[128];
    size_t target_len;
    int major, minor, keep_alive, upgrade;
    size_t len;
};

struct hp_run {
    struct hp_msg m[32];
    int n;
    int err;            /* enum http_errno that ended the run */
    size_t err_at;      /* offset of the message that failed */
    size_t url_len;
    char url[128];
};

static int hp_begin(http_parser *p)
{
    struct hp_run *hr = p->data;
    hr->url_len = 0;
    return 0;
}

static int hp_url(http_parser *p, const char *at, size_t n)
{
    struct hp_run *hr = p->data;
    size_t room = sizeof hr->url - hr->url_len;
    memcpy(hr->url + hr->url_len, at, n < room ? n : room);
    hr->url_len += n;
    return 0;
}

static int hp_complete(http_parser *p)
{
    struct hp_run *hr = p->data;
    if (hr->n >= 32)
        return 1;
    struct hp_msg *m = &hr->m[hr->n++];
    memset(m, 0, sizeof *m);
    snprintf(m->method, sizeof m->method, "%s", http_method_str(p->method));
    m->target_len = hr->url_len;
    memcpy(m->target, hr->url, hr->url_len < sizeof m->target ? hr->url_len : sizeof m->target);
    m->major = p->http_major;
    m->minor = p->http_minor;
    m->keep_alive = http_should_keep_alive(p);
    http_parser_pause(p, 1);            /* to learn where the message ends */
    return 0;
}

static void hp_parse(const char *b, size_t len, struct hp_run *hr)
{
    static http_parser_settings st = {
        .on_message_begin = hp_begin, .on_url = hp_url, .on_message_complete = hp_complete,
    };
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    memset(hr, 0, sizeof *hr);
    p.data = hr;
    size_t off = 0;
    for (;;) {
        size_t n = http_parser_execute(&p, &st, b + off, len - off);
        enum http_errno e = HTTP_PARSER_ERRNO(&p);
        if (e == HPE_PAUSED) {
            /* The byte that completed the message is counted in n. */
            struct hp_msg *m = &hr->m[hr->n - 1];
            m->len = n;
            m->upgrade = p.upgrade;
            off += n;
            http_parser_pause(&p, 0);
            if (p.upgrade)
                return;
            continue;
        }
        if (e != HPE_OK) {
            hr->err = (int)e;
            hr->err_at = off;
        }
        return;
    }
}

struct my_run {
    struct http_req r[32];
    size_t len[32];
    int n;
    ssize_t err;
    int incomplete;
};

static void my_parse(const char *b, size_t len, struct my_run *mr)
{
    memset(mr, 0, sizeof *mr);
    size_t off = 0;
    while (mr->n < 32) {
        ssize_t n = http_req_parse(b + off, len - off, &mr->r[mr->n]);
        if (n < 0) {
            mr->err = n;
            return;
        }
        if (!n) {
            mr->incomplete = off < len;
            return;
        }
        mr->len[mr->n++] = (size_t)n;
        off += (size_t)n;
    }
}

static int hp_knows_method(const char *m, size_t n)
{
    for (unsigned i = 0; i < 64; i++) {
        const char *s = http_method_str((enum http_method)i);
        if (!strcmp(s, "<unknown>"))
            break;
        if (strlen(s) == n && !memcmp(s, m, n))
            return 1;
    }
    return 0;
}

/* http_parser (as Debian builds it) accepts some things this parser
 * rejects on purpose (see http.h).  Look for them in the head that starts
 * at b[0..len): CR or LF end it (a bare CR too, since http_parser takes any
 * byte after a CR at the end of the head as its LF). */
enum known {
    K_NONE,
    K_TARGET_CTL,       /* HTAB or FF inside the request-target */
    K_FOLD,             /* obs-fold line */
    K_NAME_WS,          /* whitespace in a field-name */
    K_BARE_CR,          /* CR not followed by LF */
    K_HTTP_LITERAL,     /* "HTTP/" misspelt after its H */
    K_VALUE_CTL,        /* a control byte first in a field-value */
    K_COUNT
};

static enum known lenient_construct(const char *b, size_t len)
{
    size_t i = 0;
    for (; i < len && (b[i] == '\r' || b[i] == '\n'); i++)
        if (b[i] == '\r' && i + 1 < len && b[i + 1] != '\n')
            return K_BARE_CR;   /* http_parser skips lone CRs before a request */
    {
        /* http_parser (built non-strict) checks only the H of "HTTP/". */
        size_t v = i;
        while (v < len && b[v] != ' ' && b[v] != '\n')
            v++;
        while (v < len && b[v] == ' ')
            v++;
        while (v < len && b[v] != ' ' && b[v] != '\n')
            v++;
        while (v < len && b[v] == ' ')
            v++;
        if (v < len && b[v] == 'H' && memcmp(b + v, "HTTP/", len - v < 5 ? len - v : 5))
            return K_HTTP_LITERAL;
    }
    size_t line = 0;
    size_t ls = i;          /* start of the current line */
    int in_name = 1;        /* in a field-name (header lines only) */
    for (; i < len; i++) {
        char c = b[i];
        if (c == '\r') {
            if (i + 1 < len && b[i + 1] != '\n' && i == ls && line > 0)
                return K_BARE_CR;
            continue;
        }
        if (c == '\n') {
            size_t n = i - ls - (i > ls && b[i - 1] == '\r');
            if (n == 0)
                return K_NONE;              /* the empty line: end of head */
            if (i + 1 < len && (b[i + 1] == ' ' || b[i + 1] == '\t'))
                return K_FOLD;
            line++;
            ls = i + 1;
            in_name = 1;
            continue;
        }
        if (line == 0 && (c == '\t' || c == '\f'))
            return K_TARGET_CTL;
        if (line > 0 && in_name) {
            if (c == ':') {
                in_name = 0;
                /* http_parser checks every byte of a value but its first. */
                size_t v = i + 1;
                while (v < len && (b[v] == ' ' || b[v] == '\t'))
                    v++;
                if (v < len && (((uint8_t)b[v] < 0x20 && b[v] != '\r' && b[v] != '\n') ||
                                b[v] == 0x7f))
                    return K_VALUE_CTL;
                /* ... and takes any byte after the CR of an empty value. */
                if (v + 1 < len && b[v] == '\r' && b[v + 1] != '\n')
                    return K_BARE_CR;
            }
            else if (c == ' ' || c == '\t')
                return K_NAME_WS;
        }
    }
    return K_NONE;
}

/* C-escaped copy of b[0..n) (at most 300 bytes of it), for messages. */
static const char *esc(const char *b, size_t n)
{
    static char out[300 * 4 + 1];
    size_t o = 0;
    for (size_t i = 0; i < n && i < 300; i++) {
        uint8_t c = (uint8_t)b[i];
        if (c == '\r')
            o += (size_t)sprintf(out + o, "\\r");
        else if (c == '\n')
            o += (size_t)sprintf(out + o, "\\n");
        else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            o += (size_t)sprintf(out + o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    out[o] = 0;
    return out;
}

static int strcasestr_n(const char *b, size_t len, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i + n <= len; i++)
        if (!strncasecmp(b + i, lit, n))
            return 1;
    return 0;
}

/* Has a Connection field of the head at b[0..len) an empty list element
 * (",x", "x,,y", "x, ,y") or an HTAB (http_parser takes only SP as OWS)? */
static int conn_empty_element(const char *b, size_t len)
{
    for (size_t i = 0; i + 11 <= len; i++) {
        if ((i == 0 || b[i - 1] == '\n') && !strncasecmp(b + i, "connection:", 11)) {
            int seen_token = 0;
            for (size_t k = i + 11; k < len && b[k] != '\r' && b[k] != '\n'; k++) {
                if (b[k] == ',') {
                    if (!seen_token)
                        return 1;
                    seen_token = 0;
                } else if (b[k] == '\t') {
                    return 1;
                } else if (b[k] != ' ') {
                    seen_token = 1;
                }
            }
        }
    }
    return 0;
}

/* Counters for the summary at the end, so a run that agrees only by
 * excusing everything shows up. */
struct tally {
    unsigned cases, both_ok_msgs, both_reject, exact;
    unsigned known[K_COUNT + 8];
};

enum { X_METHOD = K_COUNT, X_VERSION, X_TARGET_FORM, X_431, X_413, X_TE, X_UPGRADE, X_CL_TAB };

/* Does a Content-Length field of the head at b[0..len) hold an HTAB? */
static int cl_has_tab(const char *b, size_t len)
{
    for (size_t i = 0; i + 16 <= len; i++) {
        if ((i == 0 || b[i - 1] == '\n') && !strncasecmp(b + i, "content-length:", 15)) {
            for (size_t k = i + 15; k < len && b[k] != '\r' && b[k] != '\n'; k++)
                if (b[k] == '\t')
                    return 1;
        }
    }
    return 0;
}

static void cross_check(const char *b, size_t len, struct tally *t)
{
    struct my_run mine;
    struct hp_run hp;
    my_parse(b, len, &mine);
    hp_parse(b, len, &hp);
    t->cases++;

    size_t off = 0;
    int i;
    for (i = 0; i < mine.n && i < hp.n; i++) {
        const struct http_req *r = &mine.r[i];
        const struct hp_msg *h = &hp.m[i];
        if (h->major != 1 || h->minor > 1)
            break;      /* I reject those: handled below */
        cr_assert_eq(mine.len[i], h->len, "message %d length %zu vs %zu", i, mine.len[i], h->len);
        cr_assert_eq(strlen(h->method), r->method_len, "message %d method", i);
        cr_assert(!memcmp(h->method, r->method, r->method_len), "message %d method", i);
        cr_assert_eq(h->target_len, r->target_len, "message %d target", i);
        cr_assert(!memcmp(h->target, r->target, r->target_len < 128 ? r->target_len : 128));
        cr_assert_eq(h->minor, r->minor);
        if (h->keep_alive != r->keep_alive) {
            /* http_parser lets "keep-alive" win over "close" in HTTP/1.0,
             * and loses the tokens of a list with an empty element or
             * an HTAB. */
            cr_assert((!r->keep_alive && r->minor == 0) || conn_empty_element(b + off, mine.len[i]), "message %d keep-alive %d vs %d: \"%s\"", i,
                      r->keep_alive, h->keep_alive, esc(b + off, len - off));
        }
        t->both_ok_msgs++;
        if (h->upgrade) {
            t->known[X_UPGRADE]++;
            return;     /* http_parser stops at an upgrade */
        }
        off += mine.len[i];
    }

    int my_bad = i == mine.n && mine.err != 0;
    int hp_bad = i == hp.n && hp.err != 0;
    if (i == mine.n && i == hp.n && my_bad == hp_bad) {
        if (my_bad)
            t->both_reject++;
        else
            t->exact++;
        return;
    }

    /* They disagree on message i, which starts at b + off. */
    const char *m = b + off;
    size_t mlen = len - off;
    if (i < hp.n && (hp.m[i].major != 1 || hp.m[i].minor > 1)) {
        cr_assert(my_bad, "version %d.%d must be rejected", hp.m[i].major, hp.m[i].minor);
        t->known[X_VERSION]++;
        return;
    }
    if (mine.err == HTTP_REQ_E431 && i == mine.n) {
        /* Only if the head really does not end within the limit. */
        size_t k = 0;
        while (k < mlen && (m[k] == '\r' || m[k] == '\n'))
            k++;
        const char *e1 = memmem(m + k, mlen - k, "\n\r\n", 3);
        const char *e2 = memmem(m + k, mlen - k, "\n\n", 2);
        const char *e = !e1 ? e2 : !e2 ? e1 : e1 < e2 ? e1 : e2;
        size_t head = e ? (size_t)(e - m) + (e == e2 ? 2 : 3) : mlen;
        cr_assert_gt(head, HTTP_REQ_MAX_HEAD, "431 for a %zu-byte head", head);
        t->known[X_431]++;
        return;
    }
    if (mine.err == HTTP_REQ_E413 && i == mine.n) {
        t->known[X_413]++;
        return;
    }
    if (mine.err == HTTP_REQ_E501 && i == mine.n) {
        cr_assert(strcasestr_n(m, mlen, "transfer-encoding"));
        t->known[X_TE]++;
        return;
    }
    if (!my_bad && hp_bad && hp.err == HPE_INVALID_METHOD) {
        /* I accept any token as a method; http_parser knows a fixed list. */
        size_t k = 0, mk;
        while (k < mlen && (m[k] == '\r' || m[k] == '\n'))
            k++;
        for (mk = k; mk < mlen && m[mk] != ' '; mk++)
            ;
        cr_assert(!hp_knows_method(m + k, mk - k), "method '%.*s' rejected by http_parser",
                  (int)(mk - k), m + k);
        t->known[X_METHOD]++;
        return;
    }
    if (!my_bad && hp_bad && hp.err == HPE_INVALID_CONTENT_LENGTH && cl_has_tab(m, mlen)) {
        /* RFC 9110 5.5 allows HTAB as OWS; http_parser only takes SP. */
        t->known[X_CL_TAB]++;
        return;
    }
    cr_assert(my_bad, "http_parser rejects (%s) what I accept (message %d of %d): \"%s\"",
              http_errno_name((enum http_errno)hp.err), i, mine.n, esc(m, len - off));
    /* I reject: either a documented leniency of http_parser ... */
    enum known k = lenient_construct(m, mlen);
    if (k != K_NONE) {
        t->known[k]++;
        return;
    }
    /* ... or a request-target form I do not take. */
    size_t s = 0;
    while (s < mlen && (m[s] == '\r' || m[s] == '\n'))
        s++;
    while (s < mlen && m[s] != ' ')
        s++;
    while (s < mlen && m[s] == ' ')
        s++;
    if (s < mlen && m[s] != '/' && m[s] != '*') {
        t->known[X_TARGET_FORM]++;
        return;
    }
    /* ... or http_parser has not decided yet where I have. */
    cr_assert(!hp_bad && i == hp.n,
              "I reject (%zd) what http_parser accepts: message %d: \"%s\"",
              mine.err, i, esc(m, mlen));
    cr_assert(!hp_bad);
    t->known[K_NONE]++;
}

Test(http_fuzz, cross_check_http_parser, .init = guard_setup, .timeout = 60)
{
    static char b[GUARD_SPACE];
    struct tally t;
    memset(&t, 0, sizeof t);
    static const uint64_t seeds[] = {1, 2, 3, 0xC0FFEE, 0xDEADBEEF, 20240601};
    for (size_t s = 0; s < sizeof seeds / sizeof *seeds; s++) {
        rs = seeds[s] * 0x9E3779B97F4A7C15ull + 1;
        for (int it = 0; it < 100000; it++) {
            size_t len = gen(b, sizeof b - 16);
            cross_check(guarded(b, len), len, &t);
        }
    }
    cr_log_info("cases=%u exact=%u both_ok_msgs=%u both_reject=%u "
                "known: undecided=%u target_ctl=%u fold=%u name_ws=%u bare_cr=%u http_literal=%u value_ctl=%u method=%u "
                "version=%u target_form=%u 431=%u 413=%u te=%u upgrade=%u cl_tab=%u",
                t.cases, t.exact, t.both_ok_msgs, t.both_reject, t.known[K_NONE],
                t.known[K_TARGET_CTL], t.known[K_FOLD], t.known[K_NAME_WS], t.known[K_BARE_CR],
                t.known[K_HTTP_LITERAL], t.known[K_VALUE_CTL],
                t.known[X_METHOD], t.known[X_VERSION], t.known[X_TARGET_FORM], t.known[X_431],
                t.known[X_413], t.known[X_TE], t.known[X_UPGRADE], t.known[X_CL_TAB]);
    /* The generator must exercise both sides of the question. */
    cr_assert_gt(t.exact, t.cases / 10);
    cr_assert_gt(t.both_reject, t.cases / 10);
    cr_assert_gt(t.both_ok_msgs, t.cases);
    cr_assert_gt(t.known[X_431], 100);
    /* "Undecided" (I reject, http_parser still waits for bytes) must stay
     * rare: it means I saw an error earlier than http_parser did. */
    cr_assert_lt(t.known[K_NONE], t.cases / 100);
}

#endif /* HAVE_HTTP_PARSER */
