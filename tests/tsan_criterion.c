/* tsan_criterion.c - lets Criterion start under ThreadSanitizer.
 *
 * Linked into every test program; compiles to nothing unless the build uses
 * -fsanitize=thread.
 *
 * Criterion (through BoxFort, linked into libcriterion) maps the arena it
 * shares with its worker processes with mmap(MAP_FIXED) at a random address
 * in 0x2000_0000_0000..0x6000_0000_0000, drawn with rand_r(), and gives up
 * after ten draws ("Could not initialize inheritable arena").  Under TSan
 * nearly all of that range is TSan's shadow and meta memory or a protected
 * gap, and TSan's mmap refuses MAP_FIXED outside application memory: only
 * 0x5500_0000_0000..0x5680_0000_0000 (where PIE executables load) can be
 * had, about one draw in 43, so most runs abort before any test
 * (Snaipe/Criterion issue 274).  This rand_r keeps what glibc's rand_r
 * returns for every caller but libcriterion, and for libcriterion's draws
 * keeps only the low bits BoxFort uses, moved into that usable window
 * (BoxFort: base = 0x2000_0000_0000 + (r & 0x3fffff) << 24).  BoxFort still
 * checks with mincore() that the pages are free and draws again if not.
 *
 * It also gives the test programs a TSan default (TSAN_OPTIONS adds to
 * and overrides it): halt_on_error=1, so a report ends the process at once
 * with TSan's exit code (66).  A Criterion worker that exits non-zero is a
 * failed test; one that went on would _Exit(0) at the end of the test,
 * which loses TSan's verdict.
 */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GOEV_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define GOEV_TSAN 1
#endif

#ifdef GOEV_TSAN
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

int rand_r(unsigned *seed)
{
    static int (*next)(unsigned *);
    if (!next)
        next = (int (*)(unsigned *))dlsym(RTLD_NEXT, "rand_r");
    int v = next(seed);
    Dl_info di;
    if (dladdr(__builtin_return_address(0), &di) && di.dli_fname &&
        strstr(di.dli_fname, "libcriterion")) {
        /* 0x350000..0x367fff << 24 lands in 0x5500..0x5680 << 32. */
        v = (v & ~0x3fffff) | (0x350000 + (v & 0x3fffff) % 0x18000);
    }
    return v;
}

const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "halt_on_error=1";
}
#endif
