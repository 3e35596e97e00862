/* testutil.h - helpers shared by the goev I/O suites.
 *
 * Criterion forks one process per test and runs them in parallel, so every
 * helper avoids fixed ports (port 0 + goev_acceptor_port) and fixed paths
 * (tu_tmpdir).  Criterion assertions must only run on the test's own thread:
 * a failing cr_assert longjmps, which is undefined from a poller thread or a
 * client thread.  Code running elsewhere reports with TU_CHECK, and the test
 * thread turns recorded failures into an assertion with tu_assert_no_failures.
 */
#ifndef GOEV_TESTUTIL_H
#define GOEV_TESTUTIL_H

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "goev.h"

/* Per-test timeout: a hang fails the test instead of blocking CI. */
#define TU_TIMEOUT 20.0

/* Relaxed-enough atomics for counters shared between pollers and the test. */
#define TU_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define TU_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define TU_INC(p) __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)
#define TU_ADD(p, n) __atomic_add_fetch((p), (n), __ATOMIC_ACQ_REL)

/* ---- failures from other threads ---------------------------------------- */

void tu_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define TU_CHECK(cond, ...)                                          \
    do {                                                             \
        if (!(cond))                                                 \
            tu_fail_at(__FILE__, __LINE__, __VA_ARGS__);             \
    } while (0)
/* Number of failures recorded so far. */
int tu_failures(void);
/* cr_assert that nothing was recorded; prints the first message. */
void tu_assert_no_failures(void);

/* ---- reactor ------------------------------------------------------------ */

/* Create a reactor with `pollers` pollers (opts may be NULL).  On io_uring
 * when the kernel refuses it (-ENOSYS/-EPERM) the test is skipped; any other
 * failure fails the test. */
goev_reactor *tu_reactor_new(int pollers);
goev_reactor *tu_reactor_new_opts(const struct goev_reactor_opts *o);
/* GOEV_BACKEND of this run ("" if unset). */
const char *tu_backend_env(void);

/* goev_reactor_start, asserting success. */
void tu_reactor_start(goev_reactor *r);
/* goev_reactor_stop + goev_reactor_wait, asserting success. */
void tu_reactor_stop_wait(goev_reactor *r);

/* Run fn(p, arg) on poller p and wait for it to finish (reactor running).
 * The way for the test thread to call poller-thread functions. */
void tu_run_on(goev_poller *p, goev_post_fn fn, void *arg);

/* ---- sockets ------------------------------------------------------------ */

/* Blocking client sockets with SO_RCVTIMEO/SO_SNDTIMEO of TU_IO_TIMEOUT_MS,
 * so a lost byte shows as an error instead of a hang.  -1 (errno set) on
 * failure. */
#define TU_IO_TIMEOUT_MS 10000
int tu_connect_tcp4(int port);
int tu_connect_tcp6(int port);
int tu_connect_unix(const char *path);
int tu_connect_sa(const struct sockaddr *sa, socklen_t len);
/* connect() on an existing blocking socket, riding out EINTR: 0 or -1. */
int tu_connect_fd(int fd, const struct sockaddr *sa, socklen_t len);
void tu_set_io_timeout(int fd, int ms);

/* Write all len bytes: 0 or -errno. */
int tu_write_all(int fd, const void *buf, size_t len);
/* Read exactly len bytes: 0, -EPIPE on early EOF, or -errno (-EAGAIN on
 * timeout). */
int tu_read_exact(int fd, void *buf, size_t len);
/* Read until EOF or cap bytes: count read, or -errno. */
ssize_t tu_read_to_eof(int fd, void *buf, size_t cap);
/* Wait up to ms for EOF (after draining and discarding data): 1 on EOF,
 * 0 on timeout, -errno on error (e.g. -ECONNRESET). */
int tu_wait_eof(int fd, int ms, size_t *discarded);

/* A listening TCP socket on 127.0.0.1:0 (blocking), its port in *port. */
int tu_listen_tcp4(int backlog, int *port);

/* ---- fds ---------------------------------------------------------------- */

/* Entries in /proc/self/fd (the directory fd itself not counted). */
int tu_fd_count(void);
/* Assert the count returns to `before`, giving late closes up to 2 s. */
void tu_assert_fds(int before);

/* ---- child processes: example servers and client programs --------------- */

/* An example server started by tu_server_start.  The fields are the
 * caller's to read. */
struct tu_server {
    pid_t pid;              /* 0 once stopped */
    int port;               /* from its "listening on PORT backend=NAME" line */
    char backend[16];       /* NAME from that line */
    int err_fd;             /* read end of the child's stderr, -1 once closed */
    char *log;              /* what the child wrote on stderr so far (NUL-ended) */
    size_t log_len;
};

/* Start argv (argv[0] is a path; argv NULL-terminated) as a child process
 * and wait up to TU_IO_TIMEOUT_MS for the line "listening on PORT
 * backend=NAME" on its stderr.  The child inherits this process's
 * environment (so GOEV_BACKEND reaches it) but no fd other than 0-2: stdin
 * is /dev/null, stdout is this process's, stderr a pipe read into s->log.
 * It gets SIGKILL when the test process dies (PR_SET_PDEATHSIG), and
 * tu_servers_cleanup kills it if the test ends before tu_server_stop.
 * Asserts that it started, and that NAME is GOEV_BACKEND when that says
 * epoll or io_uring.  Skips the test, as tu_reactor_new does, when
 * GOEV_BACKEND=io_uring and the kernel refuses io_uring. */
void tu_server_start(struct tu_server *s, const char *const argv[]);

/* Send sig to the server and wait up to ms for it to exit, reading the rest
 * of its stderr into s->log.  Returns its exit status (0..255), 128 + N if
 * signal N killed it, or -1 if it did not exit in time (it is then killed
 * with SIGKILL and reaped).  Frees nothing the caller reads: call
 * tu_server_free afterwards. */
int tu_server_stop(struct tu_server *s, int sig, int ms);

/* tu_server_stop(s, SIGTERM, TU_IO_TIMEOUT_MS), asserting exit status 0
 * (which an ASan/LSan build of the server fails on a leak), then
 * tu_server_free.  The usual end of a test. */
void tu_server_stop_ok(struct tu_server *s);

/* Release s->log (and kill the server if it still runs). */
void tu_server_free(struct tu_server *s);

/* Kill with SIGKILL and reap every server this process started and did not
 * stop.  For a test's .fini, so that a failed assertion leaves no server
 * behind; harmless when there is none. */
void tu_servers_cleanup(void);

/* Open fds of process pid (the entries of /proc/PID/fd), or -1. */
int tu_proc_fd_count(pid_t pid);

/* What tu_run captured: NUL-terminated, malloc'd; free with
 * tu_output_free. */
struct tu_output {
    char *out, *err;
    size_t out_len, err_len;
};

/* Run argv (argv[0] looked up on PATH), feeding it `input` on stdin (NULL:
 * /dev/null), capturing stdout and stderr into *o (o may be NULL to
 * discard them), for at most ms.  The child has only fds 0-2 and dies with
 * the test process.  Returns the exit status (0..255; 127 if it could not
 * be executed), 128 + N if signal N killed it, or -1 on timeout (it is then
 * killed) or if it could not be started. */
int tu_run(const char *const argv[], const char *input, int ms, struct tu_output *o);
void tu_output_free(struct tu_output *o);

/* true if an executable called name is on PATH. */
bool tu_have_tool(const char *name);

/* A check that needs the client program `name` (curl, python3, wrk...):
 * if it is not on PATH, fail the test when the environment variable CI is
 * set (a CI machine must run every check) and skip it otherwise. */
void tu_require_tool(const char *name);

/* ---- allocation failures -------------------------------------------------- */

/* Make goev's allocations of the kinds in mask fail (return NULL) from now
 * on, from every thread; 0 lets them through again.  Installs a libc-backed
 * allocator with goev_replace_allocator on first use. */
#define TU_FAIL_MALLOC  1u
#define TU_FAIL_REALLOC 2u
#define TU_FAIL_CALLOC  4u
void tu_alloc_fail(unsigned mask);
/* Allocations refused so far. */
unsigned tu_alloc_refused(void);

/* ---- temporary directory ------------------------------------------------ */

/* mkdtemp under /tmp; the path is valid until tu_tmpdir_free. */
char *tu_tmpdir(void);
/* Remove the directory and the files directly in it. */
void tu_tmpdir_free(char *dir);

/* ---- time --------------------------------------------------------------- */

uint64_t tu_now_ms(void);
/* An iteration count for a heavy loop: n divided by GOEV_TEST_SCALE (a
 * whole number, 1 if unset; the ThreadSanitizer stage of CI sets it, as
 * TSan makes every memory access several times slower), but never below
 * min. */
long tu_scaled(long n, long min);
/* GOEV_TEST_SCALE (>= 1): how much slower the build is. */
long tu_scale(void);
void tu_sleep_ms(unsigned ms);
/* Poll cond every millisecond for up to ms; evaluates to true if it held. */
#define TU_WAIT_FOR(cond, ms)                                          \
    ({                                                                 \
        uint64_t tu_deadline_ = tu_now_ms() + (ms);                    \
        bool tu_ok_;                                                   \
        while (!(tu_ok_ = (cond)) && tu_now_ms() < tu_deadline_)       \
            tu_sleep_ms(1);                                            \
        tu_ok_;                                                        \
    })

/* ---- deterministic randomness ------------------------------------------- */

struct tu_rng {
    uint64_t s;
};
void tu_rng_seed(struct tu_rng *g, uint64_t seed);
uint64_t tu_rng_next(struct tu_rng *g);
/* Uniform in [lo, hi]. */
uint64_t tu_rng_range(struct tu_rng *g, uint64_t lo, uint64_t hi);

/* Byte i of the stream named by seed: no short period, so a lost,
 * duplicated or reordered chunk is detected. */
uint8_t tu_stream_byte(uint64_t seed, uint64_t i);
/* Fill buf with bytes [off, off + len) of stream seed. */
void tu_stream_fill(uint64_t seed, uint64_t off, void *buf, size_t len);
/* Offset of the first byte of buf that differs from the stream, or -1. */
ptrdiff_t tu_stream_check(uint64_t seed, uint64_t off, const void *buf, size_t len);

#endif
