/* filesend_bench.c - which way should io_uring send a file?  The choice
 * behind goev_sendfile on the io_uring backend, measured.
 *
 *   bench/filesend_bench [-s FILE_MIB | -S FILE_KIB] [-t TOTAL_MIB] [-r ROUNDS] [-c CHUNK_KIB]
 *                        [-C SENDFILE_KIB]
 *
 * A sender pinned to CPU 0 pushes a page-cached file over a loopback TCP
 * connection to a reader process pinned to CPU 1 (recv and discard), again
 * and again until TOTAL_MIB have gone, by one of:
 *
 *   sendfile  sendfile(2) on the (non-blocking) socket from the sender's
 *             thread; when the socket is full, a POLLOUT in an io_uring and
 *             one io_uring_enter to wait for it.  -C bounds what one call
 *             asks for (default: the rest of the file).
 *   splice    an io_uring SPLICE file -> pipe linked to a SPLICE pipe ->
 *             socket, CHUNK_KIB at a time (the pipe is sized to the chunk),
 *             resubmitted as they complete; a socket that is full answers
 *             EAGAIN and is waited for with POLLOUT, like above.  Splice
 *             has no non-blocking issue path in io_uring: both SQEs run on
 *             io-wq worker threads.
 *
 * The figure is the sender process's CPU time (utime + stime of all its
 * threads, io-wq workers included: /proc/self/stat) per MiB sent,
 * and system calls per MiB.  Rounds alternate the order (A B, B A, ...);
 * the ratio splice/sendfile is taken round by round and its median
 * printed, because single rounds on a shared machine swing.
 *
 * Output: one `method=... cpu_us_per_mib=... syscalls_per_mib=... mib_s=...`
 * line per run, then `median_ratio_cpu_splice_over_sendfile=...`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, int err)
{
    fprintf(stderr, "filesend_bench: %s: %s\n", what, strerror(err));
    exit(1);
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % (int)sysconf(_SC_NPROCESSORS_ONLN), &set);
    sched_setaffinity(0, sizeof set, &set);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the whole process from /proc/self/stat: every thread,
 * io_uring's io-wq workers included, live or exited.  (getrusage missed the
 * workers' time here, which made the splice path look cheap.) */
static double cpu_s(void)
{
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A reader process on CPU 1: accept one connection, read to EOF. */
static pid_t start_reader(int *port, int *count_fd)
{
    int cp[2];
    if (pipe2(cp, O_CLOEXEC) < 0)
        die("pipe", errno);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, 4) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sin, &sl) < 0)
        die("listen", errno);
    *port = ntohs(sin.sin_port);
    pid_t pid = fork();
    if (pid < 0)
        die("fork", errno);
    if (pid == 0) {
        pin(1);
        int fd = accept(lfd, NULL, NULL);
        static char buf[1 << 18];
        unsigned long long got = 0;
        ssize_t n;
        while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
            got += (unsigned long long)n;
        if (write(cp[1], &got, sizeof got) != sizeof got)
            _exit(1);
        _exit(0);
    }
    close(lfd);
    close(cp[1]);
    *count_fd = cp[0];
    return pid;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
        die("connect", errno);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

struct run {
    double cpu_us_per_mib, sys_us_per_mib, syscalls_per_mib, mib_s;
};

/* Busy time of the whole machine (all CPUs, /proc/stat), in seconds: on
 * loopback the receiver's TCP work runs partly in the sender's context and
 * partly elsewhere, so the whole machine's cost is the fair total. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[10] = {0};
    if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7]) != 8) {
        if (f)
            fclose(f);
        return 0;
    }
    fclose(f);
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];   /* not idle, iowait */
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

/* Wait for room in sock with a POLLOUT in the ring: one enter. */
static void wait_writable(struct io_uring *ring, int sock, long *sys)
{
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    io_uring_prep_poll_add(s, sock, POLLOUT);
    io_uring_sqe_set_data64(s, 1);
    struct io_uring_cqe *cqe;
    io_uring_submit_and_wait(ring, 1);
    (*sys)++;
    while (io_uring_peek_cqe(ring, &cqe) == 0)
        io_uring_cqe_seen(ring, cqe);
}

static void send_sendfile(struct io_uring *ring, int sock, int file, size_t fsize, size_t total,
                          size_t chunk, long *sys)
{
    size_t sent = 0;
    off_t off = 0;
    while (sent < total) {
        size_t want = fsize - (size_t)off;
        if (want > total - sent)
            want = total - sent;
        if (chunk && want > chunk)
            want = chunk;
        ssize_t n = sendfile(sock, file, &off, want);
        (*sys)++;
        if (n < 0) {
            if (errno != EAGAIN)
                die("sendfile", errno);
            wait_writable(ring, sock, sys);
            continue;
        }
        sent += (size_t)n;
        if ((size_t)off == fsize)
            off = 0;
        if ((size_t)n < want)
            wait_writable(ring, sock, sys);
    }
}

enum { UD_IN = 2, UD_OUT = 3, UD_POLL = 4 };

static void send_splice(struct io_uring *ring, int sock, int file, size_t fsize, size_t total,
                        size_t chunk, long *sys)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        die("pipe", errno);
    fcntl(pfd[1], F_SETPIPE_SZ, (int)chunk);
    size_t sent = 0, in_pipe = 0;
    uint64_t foff = 0;
    while (sent < total) {
        struct io_uring_sqe *s;
        int expect = 0;
        if (!in_pipe) {
            size_t n = chunk;
            if (n > fsize - foff)
                n = fsize - foff;
            if (n > total - sent)
                n = total - sent;
            s = io_uring_get_sqe(ring);
            io_uring_prep_splice(s, file, (int64_t)foff, pfd[1], -1, (unsigned)n, 0);
            s->flags |= IOSQE_IO_LINK;
            io_uring_sqe_set_data64(s, UD_IN);
            s = io_uring_get_sqe(ring);
            io_uring_prep_splice(s, pfd[0], -1, sock, -1, (unsigned)n, 0);
            io_uring_sqe_set_data64(s, UD_OUT);
            expect = 2;
        } else {
            s = io_uring_get_sqe(ring);
            io_uring_prep_splice(s, pfd[0], -1, sock, -1, (unsigned)in_pipe, 0);
            io_uring_sqe_set_data64(s, UD_OUT);
            expect = 1;
        }
        io_uring_submit_and_wait(ring, (unsigned)expect);
        (*sys)++;
        int got = 0, blocked = 0;
        while (got < expect) {
            struct io_uring_cqe *cqe;
            if (io_uring_peek_cqe(ring, &cqe) != 0) {
                io_uring_submit_and_wait(ring, 1);
                (*sys)++;
                continue;
            }
            uint64_t ud = cqe->user_data;
            int res = cqe->res;
            io_uring_cqe_seen(ring, cqe);
            got++;
            if (ud == UD_IN) {
                if (res <= 0)
                    die("splice file->pipe", res ? -res : ENODATA);
                in_pipe += (size_t)res;
                foff += (uint64_t)res;
                if (foff == fsize)
                    foff = 0;
            } else if (ud == UD_OUT) {
                if (res == -EAGAIN || res == -ECANCELED) {
                    blocked = res == -EAGAIN;
                } else if (res < 0) {
                    die("splice pipe->socket", -res);
                } else {
                    in_pipe -= (size_t)res;
                    sent += (size_t)res;
                }
            }
        }
        if (blocked)
            wait_writable(ring, sock, sys);
    }
    close(pfd[0]);
    close(pfd[1]);
}

static size_t sf_chunk;    /* -C: most one sendfile asks for; 0 = the rest of the file */

static struct run one_run(int splice, int file, size_t fsize, size_t total, size_t chunk)
{
    int port, count_fd;
    pid_t reader = start_reader(&port, &count_fd);
    int sock = connect_to(port);
    struct io_uring ring;
    int rc = io_uring_queue_init(64, &ring, 0);
    if (rc < 0)
        die("io_uring_queue_init", -rc);
    long sys = 0;
    double c0 = cpu_s(), t0 = now_s(), m0 = machine_busy_s();
    if (splice)
        send_splice(&ring, sock, file, fsize, total, chunk, &sys);
    else
        send_sendfile(&ring, sock, file, fsize, total, sf_chunk, &sys);
    double c1 = cpu_s(), t1 = now_s();
    io_uring_queue_exit(&ring);
    close(sock);
    unsigned long long got = 0;
    if (read(count_fd, &got, sizeof got) != sizeof got || got != total) {
        fprintf(stderr, "filesend_bench: the reader got %llu bytes of %zu\n", got, total);
        exit(1);
    }
    close(count_fd);
    waitpid(reader, NULL, 0);
    double m1 = machine_busy_s();
    double mib = (double)total / (1 << 20);
    return (struct run){
        .cpu_us_per_mib = (c1 - c0) * 1e6 / mib,
        .sys_us_per_mib = (m1 - m0) * 1e6 / mib,
        .syscalls_per_mib = (double)sys / mib,
        .mib_s = mib / (t1 - t0),
    };
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t fsize = 64u << 20, total = 2048u << 20, chunk = 1u << 20;
    int rounds = 9, opt;
    while ((opt = getopt(argc, argv, "s:S:t:r:c:C:")) != -1) {
        switch (opt) {
        case 's': fsize = (size_t)atol(optarg) << 20; break;
        case 'S': fsize = (size_t)atol(optarg) << 10; break;
        case 't': total = (size_t)atol(optarg) << 20; break;
        case 'r': rounds = atoi(optarg); break;
        case 'c': chunk = (size_t)atol(optarg) << 10; break;
        case 'C': sf_chunk = (size_t)atol(optarg) << 10; break;
        default:
            fprintf(stderr, "usage: %s [-s FILE_MIB] [-t TOTAL_MIB] [-r ROUNDS] [-c CHUNK_KIB] "
                            "[-C SENDFILE_KIB]\n", argv[0]);
            return 2;
        }
    }
    if (!fsize || !total || rounds < 1 || chunk < 4096)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    pin(0);
    char path[] = "/tmp/goev-filesend-XXXXXX";
    int file = mkstemp(path);
    if (file < 0)
        die("mkstemp", errno);
    unlink(path);
    char *buf = malloc(1 << 20);
    for (size_t i = 0; i < (1 << 20); i++)
        buf[i] = (char)(i * 7 + 3);
    for (size_t off = 0; off < fsize; off += 1 << 20) {
        size_t n = fsize - off < (1 << 20) ? fsize - off : (1 << 20);
        if (pwrite(file, buf, n, (off_t)off) != (ssize_t)n)
            die("pwrite", errno);
    }
    free(buf);
    /* Warm the page cache: both methods read the file from memory. */
    one_run(0, file, fsize, fsize, chunk);

    double *ratio = calloc((size_t)rounds, sizeof *ratio);
    double *mratio = calloc((size_t)rounds, sizeof *mratio);
    for (int r = 0; r < rounds; r++) {
        struct run res[2];
        for (int k = 0; k < 2; k++) {
            int splice = (r & 1) ? !k : k;      /* A B, B A, ... */
            res[splice] = one_run(splice, file, fsize, total, chunk);
            printf("round=%d method=%s cpu_us_per_mib=%.1f machine_us_per_mib=%.1f "
                   "syscalls_per_mib=%.2f mib_s=%.0f\n", r, splice ? "splice" : "sendfile",
                   res[splice].cpu_us_per_mib, res[splice].sys_us_per_mib,
                   res[splice].syscalls_per_mib, res[splice].mib_s);
            fflush(stdout);
        }
        ratio[r] = res[1].cpu_us_per_mib / res[0].cpu_us_per_mib;
        mratio[r] = res[1].sys_us_per_mib / res[0].sys_us_per_mib;
    }
    qsort(ratio, (size_t)rounds, sizeof *ratio, cmp_d);
    qsort(mratio, (size_t)rounds, sizeof *mratio, cmp_d);
    printf("chunk_kib=%zu rounds=%d median_ratio_cpu_splice_over_sendfile=%.3f (min %.3f max %.3f) "
           "median_ratio_machine=%.3f (min %.3f max %.3f)\n", chunk >> 10, rounds,
           ratio[rounds / 2], ratio[0], ratio[rounds - 1], mratio[rounds / 2], mratio[0],
           mratio[rounds - 1]);
    free(ratio);
    free(mratio);
    close(file);
    return 0;
}
