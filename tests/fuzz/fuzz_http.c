/* fuzz_http.c - libFuzzer target for the examples' HTTP request parser
 * (examples/http.c).  Beyond "no crash, no out-of-bounds read", it checks
 * what http.h promises:
 *
 *   - a complete request (n > 0) lies inside the input: n <= len, the head
 *     is at most HTTP_REQ_MAX_HEAD, n = head_len + content_length, and every
 *     pointer of struct http_req points inside the head (body: at its end);
 *   - the fields agree with the bytes: the method is a token ending in SP and
 *     method_id names it, the target starts with '/' or '*', path/query are
 *     the parts of the target, minor is 0 or 1, keep_alive follows from the
 *     version, and http_req_field finds the same Host and Content-Length;
 *   - the parser is stateless and sees only buf[0..len): a request split
 *     across reads (any prefix of the bytes, parsed in a buffer of exactly
 *     that size, so ASan sees any read past it) gives 0 while the request is
 *     incomplete, the same request once it is all there, and an error only
 *     if the whole input is an error too ("errors are found as early as the
 *     bytes allow", never where a longer input would be valid);
 *   - a pipeline is walked as a server would (off += n), each request
 *     checked the same way.
 * Any violation aborts, which libFuzzer reports as a crash. */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "fuzz_http: %s:%d: check failed: %s: ",        \
                    __FILE__, __LINE__, #cond);                            \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            abort();                                                       \
        }                                                                  \
    } while (0)

static int inside(const char *p, size_t n, const char *lo, const char *hi)
{
    return p >= lo && p <= hi && n <= (size_t)(hi - p);
}

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Everything a successful parse must satisfy; buf[0..n) is the request. */
static void check_request(const char *buf, size_t len, ssize_t n, const struct http_req *rq)
{
    CHECK((size_t)n <= len, "n %zd > len %zu", n, len);
    CHECK(rq->head_len > 0 && rq->head_len <= (size_t)n, "head_len %zu, n %zd", rq->head_len, n);
    CHECK(rq->head_len <= HTTP_REQ_MAX_HEAD, "head_len %zu", rq->head_len);
    CHECK(rq->content_length <= HTTP_REQ_MAX_BODY, "content_length %llu",
          (unsigned long long)rq->content_length);
    CHECK(rq->head_len + rq->content_length == (size_t)n, "head %zu + body %llu != %zd",
          rq->head_len, (unsigned long long)rq->content_length, n);
    CHECK(rq->body == buf + rq->head_len, "body not at head_len");
    const char *he = buf + rq->head_len;
    /* The head ends with an empty line. */
    CHECK(he[-1] == '\n', "head does not end in LF");
    CHECK(rq->head_len >= 2 && (he[-2] == '\n' || (he[-2] == '\r' && rq->head_len >= 3 &&
                                                   he[-3] == '\n')),
          "head does not end in an empty line");

    CHECK(inside(rq->method, rq->method_len, buf, he) && rq->method_len > 0, "method outside");
    for (size_t i = 0; i < rq->method_len; i++)
        CHECK(is_tchar((unsigned char)rq->method[i]), "method byte %zu not a token", i);
    CHECK(rq->method[rq->method_len] == ' ', "method not followed by SP");
    /* Only empty lines come before the method. */
    for (const char *p = buf; p < rq->method; p++)
        CHECK(*p == '\r' || *p == '\n', "non-EOL byte before the request line");
    static const struct { const char *s; int id; } ids[] = {
        {"GET", HTTP_REQ_GET},       {"HEAD", HTTP_REQ_HEAD},
        {"POST", HTTP_REQ_POST},     {"PUT", HTTP_REQ_PUT},
        {"DELETE", HTTP_REQ_DELETE}, {"OPTIONS", HTTP_REQ_OPTIONS},
        {"PATCH", HTTP_REQ_PATCH},
    };
    int want = HTTP_REQ_OTHER;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (strlen(ids[i].s) == rq->method_len && !memcmp(ids[i].s, rq->method, rq->method_len))
            want = ids[i].id;
    CHECK(rq->method_id == want, "method_id %d, want %d", rq->method_id, want);

    CHECK(inside(rq->target, rq->target_len, buf, he) && rq->target_len > 0, "target outside");
    CHECK(rq->target > rq->method, "target before method");
    CHECK(rq->target[0] == '/' || rq->target[0] == '*', "target starts with %#x",
          (unsigned char)rq->target[0]);
    for (size_t i = 0; i < rq->target_len; i++) {
        unsigned char c = (unsigned char)rq->target[i];
        CHECK(c > 0x20 && c != 0x7f, "target byte %#x", c);
    }
    CHECK(rq->target[rq->target_len] == ' ', "target not followed by SP");
    CHECK(rq->path == rq->target && rq->path_len <= rq->target_len, "path");
    CHECK(!memchr(rq->path, '?', rq->path_len) && !memchr(rq->path, '#', rq->path_len),
          "'?' or '#' in path");
    if (rq->query) {
        CHECK(rq->query == rq->path + rq->path_len + 1 && rq->query[-1] == '?', "query start");
        CHECK(rq->query + rq->query_len <= rq->target + rq->target_len, "query end");
        CHECK(!memchr(rq->query, '#', rq->query_len), "'#' in query");
        CHECK(rq->query + rq->query_len == rq->target + rq->target_len ||
                  rq->query[rq->query_len] == '#',
              "query does not end at the target's end or '#'");
    } else {
        CHECK(rq->query_len == 0, "query_len without query");
        CHECK(rq->path_len == rq->target_len || rq->path[rq->path_len] == '#', "path end");
    }
    CHECK(rq->minor == 0 || rq->minor == 1, "minor %d", rq->minor);
    CHECK(rq->keep_alive == 0 || rq->keep_alive == 1, "keep_alive %d", rq->keep_alive);
    if (rq->minor == 0 && rq->keep_alive) {
        /* HTTP/1.0 keeps the connection only when asked to. */
        size_t cl;
        CHECK(http_req_field(rq, "connection", &cl) != NULL, "1.0 keep-alive without Connection");
    }

    size_t hl = 0;
    const char *h = http_req_field(rq, "Host", &hl);
    if (rq->host) {
        CHECK(inside(rq->host, rq->host_len, buf, he), "host outside");
        CHECK(h == rq->host && hl == rq->host_len, "http_req_field(Host) != rq->host");
    } else {
        CHECK(h == NULL && rq->host_len == 0, "Host found by http_req_field only");
    }
    size_t cll = 0;
    const char *cl = http_req_field(rq, "content-length", &cll);
    if (cl) {
        CHECK(inside(cl, cll, buf, he), "content-length value outside");
        uint64_t v = 0;
        for (size_t i = 0; i < cll; i++) {
            CHECK(cl[i] >= '0' && cl[i] <= '9', "content-length byte %#x", (unsigned char)cl[i]);
            if (v <= HTTP_REQ_MAX_BODY)
                v = v * 10 + (uint64_t)(cl[i] - '0');
        }
        CHECK(v == rq->content_length, "content-length %llu, parsed %llu",
              (unsigned long long)v, (unsigned long long)rq->content_length);
    } else {
        CHECK(rq->content_length == 0, "content_length without the field");
    }

    /* Field lines: one per field, between the request line and the empty
     * line; count them. */
    const char *p = memchr(rq->target + rq->target_len, '\n',
                           (size_t)(he - (rq->target + rq->target_len)));
    CHECK(p != NULL, "no LF after the request line");
    unsigned lines = 0;
    for (p++; p < he; lines++) {
        const char *le = memchr(p, '\n', (size_t)(he - p));
        CHECK(le != NULL, "unterminated line inside the head");
        p = le + 1;
    }
    CHECK(lines == rq->nfields + 1, "%u lines after the request line, %u fields", lines,
          rq->nfields);
}

static int same_request(const struct http_req *a, const struct http_req *b)
{
    return a->method == b->method && a->method_len == b->method_len &&
           a->method_id == b->method_id && a->target == b->target &&
           a->target_len == b->target_len && a->path == b->path && a->path_len == b->path_len &&
           a->query == b->query && a->query_len == b->query_len && a->minor == b->minor &&
           a->keep_alive == b->keep_alive && a->host == b->host && a->host_len == b->host_len &&
           a->nfields == b->nfields && a->head_len == b->head_len &&
           a->content_length == b->content_length && a->body == b->body;
}

/* Parse the first k bytes of buf in a buffer of exactly k bytes. */
static ssize_t parse_prefix(const char *buf, size_t k, struct http_req *rq, const char **copy)
{
    char *b = malloc(k ? k : 1);
    if (!b)
        abort();
    memcpy(b, buf, k);
    ssize_t n = http_req_parse(b, k, rq);
    *copy = b;
    return n;
}

/* The request at buf[0..len): check it, and the same bytes cut at k. */
static ssize_t check_one(const char *buf, size_t len, uint64_t seed)
{
    struct http_req rq, rk;
    memset(&rq, 0xa5, sizeof rq);
    struct http_req untouched = rq;
    ssize_t n = http_req_parse(buf, len, &rq);
    CHECK(n >= 0 || n == HTTP_REQ_E400 || n == HTTP_REQ_E413 || n == HTTP_REQ_E431 ||
              n == HTTP_REQ_E501,
          "result %zd", n);
    if (n <= 0)
        CHECK(!memcmp(&rq, &untouched, sizeof rq), "*rq written for result %zd", n);
    else
        check_request(buf, len, n, &rq);
    if (n == HTTP_REQ_E431)
        CHECK(len >= HTTP_REQ_MAX_HEAD, "431 for %zu bytes", len);

    /* A few cut points: every one for short inputs, else some picked by the
     * seed plus those around the end of the request. */
    size_t cuts[24], ncut = 0;
    if (len <= 24) {
        for (size_t k = 0; k < len; k++)
            cuts[ncut++] = k;
    } else {
        uint64_t s = seed | 1;
        while (ncut < 20) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            cuts[ncut++] = (size_t)(s % len);
        }
        if (n > 0) {
            cuts[ncut++] = (size_t)n - 1;
            cuts[ncut++] = rq.head_len - 1;
            if ((size_t)n < len)
                cuts[ncut++] = (size_t)n;
        }
    }
    for (size_t i = 0; i < ncut; i++) {
        size_t k = cuts[i];
        const char *copy;
        ssize_t nk = parse_prefix(buf, k, &rk, &copy);
        if (n > 0 && k < (size_t)n)
            CHECK(nk == 0, "prefix of %zu of a %zd-byte request gives %zd", k, n, nk);
        if (nk > 0) {
            CHECK(nk == n, "prefix of %zu gives %zd, the whole %zu gives %zd", k, nk, len, n);
            /* Same request, pointers moved to the copy. */
            struct http_req moved = rq;
            ptrdiff_t d = copy - buf;
            moved.method += d, moved.target += d, moved.path += d, moved.body += d;
            if (moved.query)
                moved.query += d;
            if (moved.host)
                moved.host += d;
            CHECK(same_request(&moved, &rk), "prefix of %zu parses differently", k);
        }
        if (nk < 0)
            CHECK(n < 0, "prefix of %zu is an error (%zd) but %zu bytes give %zd", k, nk, len, n);
        free((void *)copy);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < size && i < 64; i++)
        seed = (seed ^ data[i]) * 0x100000001b3ull;

    /* The pipeline, as a server walks it. */
    size_t off = 0;
    for (int reqs = 0; off < size && reqs < 64; reqs++) {
        ssize_t n = check_one(buf + off, size - off, seed + (uint64_t)reqs);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    return 0;
}
