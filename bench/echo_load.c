/* echo_load - load generator for an echo server (examples/echo).
 *
 * Single thread, one epoll loop, so that pinned to one core (bench/run uses
 * taskset -c 1) it is a steady, known load.  Two modes:
 *
 *   echo_load -p PORT [-c CONNS] [-s SIZE] [-P INFLIGHT] [-d SECS]
 *       CONNS connections each keep INFLIGHT messages of SIZE bytes in
 *       flight; a message is done when its last byte has come back.  Every
 *       echoed byte is checked against what was sent (a pattern that depends
 *       on the connection and the stream offset), so a server that mixes,
 *       drops or reorders bytes fails the run instead of looking fast.
 *       Prints one line:  msgs=N msgs_per_sec=X p50_us= p99_us= ... errors=E
 *
 *   echo_load -p PORT --idle N [--hold SECS]
 *       Opens N connections, makes one 1-byte round trip on each (so the
 *       server has really accepted and served every one), prints
 *       "idle_ready=N" and then holds them idle until SIGTERM/SIGINT or
 *       SECS; at the end prints how many the server dropped meanwhile.
 *
 * Exit status: 0 on success, 1 on a data mismatch or when connections could
 * not be opened, 2 on a usage error. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1   /* the build also passes it through config.h */
#endif
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 251              /* prime: pattern period, see pattern_at */
#define CHUNK (64 * 1024)       /* largest single write/read */
#define CONNECT_WINDOW 256      /* connects in flight at once: larger bursts
                                   overflow the server's accept queue and cost
                                   1 s SYN retransmits */

struct conn {
    int fd;
    uint32_t salt;          /* per-connection pattern shift */
    uint64_t queued;        /* bytes the connection should have written */
    uint64_t sent;          /* bytes written */
    uint64_t recvd;         /* bytes read back and verified */
    uint64_t done;          /* messages fully echoed */
    uint64_t *stamps;       /* send times of in-flight messages (ring) */
    unsigned head, count;
    int want_out;           /* EPOLLOUT currently requested */
    int dead;
};

static uint8_t pattern[PERIOD + CHUNK];
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Bytes at stream offset o of connection c start at pattern + this. */
static const uint8_t *pattern_at(const struct conn *c, uint64_t o)
{
    return pattern + (o + c->salt) % PERIOD;
}

/* ---- latency histogram: log-linear buckets, 64 per octave (~1.6% error),
 *      fixed memory whatever the message rate ---------------------------- */
#define HB 6
#define HSUB (1u << HB)
#define HBUCKETS (HSUB + 58 * (HSUB / 2))

static uint64_t hist[HBUCKETS];
static uint64_t hist_n, hist_max;

static unsigned hist_index(uint64_t v)
{
    if (v < HSUB)
        return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - HB + 1;
    return HSUB + (shift - 1) * (HSUB / 2) + (unsigned)((v >> shift) - HSUB / 2);
}

/* Middle of bucket i. */
static uint64_t hist_value(unsigned i)
{
    if (i < HSUB)
        return i;
    unsigned k = i - HSUB, shift = k / (HSUB / 2) + 1;
    uint64_t m = k % (HSUB / 2) + HSUB / 2;
    return (m << shift) + ((1ull << shift) >> 1);
}

static void hist_add(uint64_t v)
{
    hist[hist_index(v)]++;
    hist_n++;
    if (v > hist_max)
        hist_max = v;
}

static double hist_pct_us(double pct)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)(pct / 100.0 * (double)hist_n + 0.999999), acc = 0;
    if (want < 1)
        want = 1;
    for (unsigned i = 0; i < HBUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            uint64_t v = hist_value(i);
            return (double)(v > hist_max ? hist_max : v) / 1000.0;
        }
    }
    return (double)hist_max / 1000.0;
}

/* ---- connections --------------------------------------------------------- */

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Open n connections to sa, at most CONNECT_WINDOW connecting at a time.
 * Returns how many were established (conns[0..ret)), or -errno. */
static int open_conns(struct conn *conns, int n, const struct sockaddr_in *sa, int timeout_s)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    int started = 0, pending = 0, ok = 0, err = 0;
    uint64_t deadline = now_ns() + (uint64_t)timeout_s * 1000000000u;
    struct epoll_event evs[256];

    while ((started < n || pending) && !stop_flag) {
        while (started < n && pending < CONNECT_WINDOW) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                err = -errno;
                fprintf(stderr, "echo_load: socket after %d: %s\n", started, strerror(errno));
                goto out;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
                err = -errno;
                fprintf(stderr, "echo_load: connect: %s\n", strerror(errno));
                close(fd);
                goto out;
            }
            conns[started].fd = fd;
            struct epoll_event e = { .events = EPOLLOUT, .data.u32 = (uint32_t)started };
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
            started++;
            pending++;
        }
        uint64_t t = now_ns();
        if (t >= deadline) {
            fprintf(stderr, "echo_load: %d connects still pending after %d s\n", pending, timeout_s);
            err = -ETIMEDOUT;
            goto out;
        }
        int m = epoll_wait(ep, evs, 256, (int)((deadline - t) / 1000000u) + 1);
        for (int i = 0; i < m; i++) {
            struct conn *c = &conns[evs[i].data.u32];
            int soerr = 0;
            socklen_t len = sizeof soerr;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            pending--;
            if (soerr) {
                err = -soerr;
                fprintf(stderr, "echo_load: connect: %s\n", strerror(soerr));
                goto out;
            }
            ok++;
        }
    }
out:
    close(ep);
    if (err) {
        for (int i = 0; i < started; i++)
            close(conns[i].fd);
        return err;
    }
    return stop_flag ? -EINTR : ok;
}

static int want_out(int ep, struct conn *c, int on)
{
    if (c->want_out == on)
        return 0;
    c->want_out = on;
    struct epoll_event e = { .events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c };
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_kill(int ep, struct conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
}

/* Write as much of the queued bytes as the socket takes. */
static int flush_out(int ep, struct conn *c)
{
    while (c->sent < c->queued) {
        uint64_t left = c->queued - c->sent;
        size_t len = left > CHUNK ? CHUNK : (size_t)left;
        ssize_t w = send(c->fd, pattern_at(c, c->sent), len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN)
                return want_out(ep, c, 1);
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c->sent += (uint64_t)w;
    }
    return want_out(ep, c, 0);
}

static void queue_msg(struct conn *c, unsigned inflight, size_t size, uint64_t t)
{
    c->stamps[(c->head + c->count) % inflight] = t;
    c->count++;
    c->queued += size;
}

/* Read what arrived, check it, complete messages.  Returns the number of
 * bytes that did not match (0 when all is well), or -1 on EOF/error. */
static long read_in(struct conn *c, uint8_t *buf)
{
    ssize_t r = recv(c->fd, buf, CHUNK, 0);
    if (r == 0)
        return -1;
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if ((uint64_t)r > c->sent - c->recvd)
        return r;               /* more came back than was sent */
    long bad = 0;
    if (memcmp(buf, pattern_at(c, c->recvd), (size_t)r) != 0) {
        const uint8_t *want = pattern_at(c, c->recvd);
        for (ssize_t i = 0; i < r; i++)
            bad += buf[i] != want[i];
    }
    c->recvd += (uint64_t)r;
    return bad;
}

static int run_load(const struct sockaddr_in *sa, int nconns, size_t size, unsigned inflight,
                    double secs)
{
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    uint64_t *stamps = calloc((size_t)nconns * inflight, sizeof *stamps);
    uint8_t *buf = malloc(CHUNK);
    if (!conns || !stamps || !buf) {
        fprintf(stderr, "echo_load: out of memory\n");
        return 1;
    }
    int n = open_conns(conns, nconns, sa, 30);
    if (n < 0) {
        fprintf(stderr, "echo_load: could not open %d connections: %s\n", nconns, strerror(-n));
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(secs * 1e9);
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        c->salt = (uint32_t)i * 37u;
        c->stamps = stamps + (size_t)i * inflight;
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
        for (unsigned k = 0; k < inflight; k++)
            queue_msg(c, inflight, size, t0);
        if (flush_out(ep, c) < 0)
            conn_kill(ep, c);
    }

    uint64_t msgs = 0, mismatched = 0, lost = 0;
    struct epoll_event evs[512];
    uint64_t t = t0;
    while (t < end && !stop_flag) {
        int m = epoll_wait(ep, evs, 512, (int)((end - t) / 1000000u) + 1);
        t = now_ns();
        for (int i = 0; i < m; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                long bad = read_in(c, buf);
                if (bad < 0) {
                    lost++;
                    conn_kill(ep, c);
                    continue;
                }
                if (bad) {
                    mismatched += (uint64_t)bad;
                    conn_kill(ep, c);
                    continue;
                }
                /* Messages whose last byte is now back. */
                while (c->count && c->recvd >= (c->done + 1) * size) {
                    uint64_t sent_at = c->stamps[c->head];
                    c->head = (c->head + 1) % inflight;
                    c->count--;
                    c->done++;
                    if (t <= end) {
                        msgs++;
                        hist_add(t - sent_at);
                        queue_msg(c, inflight, size, t);
                    }
                }
            }
            if (flush_out(ep, c) < 0) {
                lost++;
                conn_kill(ep, c);
            }
        }
    }
    double elapsed = (double)((t < end ? t : end) - t0) / 1e9;
    printf("conns=%d size=%zu inflight=%u secs=%.2f msgs=%" PRIu64 " msgs_per_sec=%.0f "
           "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
           "mismatched_bytes=%" PRIu64 " lost_conns=%" PRIu64 " errors=%" PRIu64 "\n",
           n, size, inflight, elapsed, msgs, elapsed > 0 ? (double)msgs / elapsed : 0.0,
           hist_pct_us(50), hist_pct_us(90), hist_pct_us(99), hist_pct_us(99.9),
           (double)hist_max / 1000.0, mismatched, lost, mismatched + lost);
    fflush(stdout);
    for (int i = 0; i < n; i++)
        close(conns[i].fd);
    close(ep);
    free(conns);
    free(stamps);
    free(buf);
    return mismatched || lost || !msgs ? 1 : 0;
}

/* ---- idle mode ------------------------------------------------------------ */

static int run_idle(const struct sockaddr_in *sa, int nconns, double hold)
{
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns) {
        fprintf(stderr, "echo_load: out of memory\n");
        return 1;
    }
    uint64_t t0 = now_ns();
    int n = open_conns(conns, nconns, sa, 60);
    if (n < 0) {
        fprintf(stderr, "echo_load: could not open %d connections: %s\n", nconns, strerror(-n));
        return 1;
    }
    /* One byte each way: a connection still in the accept queue would
     * otherwise count as open without costing the server anything. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int verified = 0, lost = 0;
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        c->salt = (uint32_t)i * 37u;
        struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
        c->queued = 1;
        if (flush_out(ep, c) < 0 || c->sent != 1) {
            lost++;
            conn_kill(ep, c);
        }
    }
    struct epoll_event evs[512];
    uint8_t buf[64];
    uint64_t deadline = now_ns() + 30ull * 1000000000u;
    while (verified + lost < n && !stop_flag) {
        uint64_t t = now_ns();
        if (t >= deadline)
            break;
        int m = epoll_wait(ep, evs, 512, (int)((deadline - t) / 1000000u) + 1);
        for (int i = 0; i < m; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->dead)
                continue;
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            if (r == 1 && buf[0] == *pattern_at(c, 0)) {
                verified++;
                c->recvd = 1;
                /* From here on only a hang-up is of interest. */
                struct epoll_event e = { .events = EPOLLRDHUP, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
            } else {
                lost++;
                conn_kill(ep, c);
            }
        }
    }
    printf("idle_ready=%d requested=%d lost=%d open_ms=%.0f\n", verified, nconns, lost,
           (double)(now_ns() - t0) / 1e6);
    fflush(stdout);

    /* Hold.  A drop by the server shows as EPOLLRDHUP/EPOLLHUP. */
    uint64_t hold_end = hold > 0 ? now_ns() + (uint64_t)(hold * 1e9) : UINT64_MAX;
    int dropped = 0;
    while (!stop_flag) {
        uint64_t t = now_ns();
        if (t >= hold_end)
            break;
        int tmo = hold_end == UINT64_MAX ? 1000 : (int)((hold_end - t) / 1000000u) + 1;
        int m = epoll_wait(ep, evs, 512, tmo);
        for (int i = 0; i < m; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->dead && c->recvd == 1) {
                dropped++;
                conn_kill(ep, c);
            }
        }
    }
    printf("idle_done=%d dropped=%d\n", verified - dropped, dropped);
    fflush(stdout);
    for (int i = 0; i < n; i++)
        close(conns[i].fd);
    close(ep);
    free(conns);
    return verified == nconns && !dropped ? 0 : 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: echo_load -p PORT [-H IPV4] [-c CONNS] [-s SIZE] [-P INFLIGHT] [-d SECS]\n"
        "       echo_load -p PORT [-H IPV4] --idle N [--hold SECS]\n"
        "  -c  connections (64)          -s  message size in bytes (64)\n"
        "  -P  messages in flight per connection (1)\n"
        "  -d  seconds of load (4)       --hold  idle mode: seconds to hold, 0 = until signal\n");
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "idle", required_argument, NULL, 'I' },
        { "hold", required_argument, NULL, 'O' },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    const char *host = "127.0.0.1";
    int port = 0, nconns = 64, idle = 0;
    long size = 64, inflight = 1;
    double secs = 4, hold = 0;
    int o;
    while ((o = getopt_long(argc, argv, "H:p:c:s:P:d:h", lopts, NULL)) != -1) {
        switch (o) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': size = atol(optarg); break;
        case 'P': inflight = atol(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'I': idle = atoi(optarg); break;
        case 'O': hold = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        nconns < 1 || size < 1 || inflight < 1 || inflight > 4096 || secs <= 0 || idle < 0 ||
        hold < 0) {
        usage(stderr);
        return 2;
    }
    for (int i = 0; i < (int)sizeof pattern; i++)
        pattern[i] = (uint8_t)((i % PERIOD) * 131 + 7);

    struct sigaction act = { .sa_handler = on_signal };
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    if (idle)
        return run_idle(&sa, idle, hold);
    return run_load(&sa, nconns, (size_t)size, (unsigned)inflight, secs);
}
