/* http_bench.c - the example server's request parser (examples/http.c)
 * against Debian's http_parser on the benchmark's own traffic: 16 pipelined
 * wrk-style requests per buffer, every request fully parsed (method, path,
 * version, keep-alive) by both.  Prints ns per request for each and their
 * ratio, as name=value lines for bench/run.
 *
 *   bench/http_bench [-n ITERATIONS] */
#include "../examples/http.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char REQ[] = "GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
enum { DEPTH = 16 };

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* http_parser: count messages and touch the URL, as a server would. */
struct hp_state {
    unsigned done;
    size_t url_len;
};

static int hp_url(http_parser *p, const char *at, size_t len)
{
    ((struct hp_state *)p->data)->url_len += len;
    return 0;
}

static int hp_complete(http_parser *p)
{
    struct hp_state *s = p->data;
    s->done += http_should_keep_alive(p) && p->method == HTTP_GET;
    return 0;
}

int main(int argc, char **argv)
{
    long iters = 200000;
    int opt;
    while ((opt = getopt(argc, argv, "n:")) != -1) {
        if (opt == 'n')
            iters = atol(optarg);
        else {
            fprintf(stderr, "usage: %s [-n ITERATIONS]\n", argv[0]);
            return 2;
        }
    }
    const size_t rl = sizeof REQ - 1;
    char buf[DEPTH * sizeof REQ];
    for (int i = 0; i < DEPTH; i++)
        memcpy(buf + (size_t)i * rl, REQ, rl);
    const size_t len = DEPTH * rl;

    /* goev example parser */
    unsigned long long ok1 = 0;
    double t0 = now_ns();
    for (long it = 0; it < iters; it++) {
        size_t off = 0;
        struct http_req rq;
        ssize_t n;
        while (off < len && (n = http_req_parse(buf + off, len - off, &rq)) > 0) {
            ok1 += rq.method_id == HTTP_REQ_GET && rq.keep_alive && rq.path_len == 10;
            off += (size_t)n;
        }
    }
    double own = (now_ns() - t0) / ((double)iters * DEPTH);

    /* http_parser 2.9 */
    http_parser_settings st;
    http_parser_settings_init(&st);
    st.on_url = hp_url;
    st.on_message_complete = hp_complete;
    struct hp_state s = { 0, 0 };
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    p.data = &s;
    t0 = now_ns();
    for (long it = 0; it < iters; it++) {
        size_t n = http_parser_execute(&p, &st, buf, len);
        if (n != len || HTTP_PARSER_ERRNO(&p) != HPE_OK) {
            fprintf(stderr, "http_parser: %s\n", http_errno_name(HTTP_PARSER_ERRNO(&p)));
            return 1;
        }
    }
    double hp = (now_ns() - t0) / ((double)iters * DEPTH);

    unsigned long long want = (unsigned long long)iters * DEPTH;
    if (ok1 != want || s.done != want) {
        fprintf(stderr, "parsed %llu / %u of %llu requests\n", ok1, s.done, want);
        return 1;
    }
    printf("# http request parsing, %d pipelined %zu-byte requests per buffer, ns/request\n",
           DEPTH, rl);
    printf("http_parse_goev_ns=%.1f\nhttp_parse_http_parser_ns=%.1f\nhttp_parse_ratio=%.3f\n",
           own, hp, own / hp);
    return 0;
}
