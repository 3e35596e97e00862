/* bench/syscall_cost.c - what one system call costs on this machine.
 *
 *   bench/syscall_cost [-n CALLS] [-r REPEATS]
 *
 * Calls getppid(2) through syscall(2) (so that no libc cache can answer)
 * CALLS times in a tight loop, REPEATS times, and prints the median and the
 * fastest repetition in nanoseconds per call:
 *
 *   syscall_ns=... syscall_ns_min=... calls=... repeats=...
 *
 * Time is this thread's CPU time (user + system), so preemption by other
 * processes does not count.  That is the bare price of entering and leaving
 * the kernel (with this kernel's mitigations); bench/run multiplies it by the system calls per
 * request that io_uring saves, to say what the saving is worth.  Pin it
 * (taskset -c 0) where the server runs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The thread's own CPU time, not the wall clock: on a shared machine the
 * loop is preempted, and wall-clock time would count the other processes'
 * turns as the price of a system call. */
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long calls = 200000, reps = 9;
    int opt;
    while ((opt = getopt(argc, argv, "n:r:h")) != -1) {
        switch (opt) {
        case 'n': calls = atol(optarg); break;
        case 'r': reps = atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-n CALLS] [-r REPEATS]\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (calls < 1 || reps < 1 || reps > 1000) {
        fprintf(stderr, "syscall_cost: -n and -r must be >= 1 (-r at most 1000)\n");
        return 2;
    }
    double ns[1000];
    long sink = 0;
    for (long i = 0; i < calls / 10 + 1; i++)   /* warm up caches and clock */
        sink += syscall(SYS_getppid);
    for (long r = 0; r < reps; r++) {
        double t0 = now_ns();
        for (long i = 0; i < calls; i++)
            sink += syscall(SYS_getppid);
        ns[r] = (now_ns() - t0) / (double)calls;
    }
    qsort(ns, (size_t)reps, sizeof ns[0], cmp);
    printf("syscall_ns=%.1f syscall_ns_min=%.1f calls=%ld repeats=%ld%s\n", ns[reps / 2], ns[0],
           calls, reps, sink == 0 ? " (getppid returned 0)" : "");
    return 0;
}
