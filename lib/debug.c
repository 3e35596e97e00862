/* debug.c - the library's only words on stderr: log lines when GOEV_DEBUG
 * is set (and not "0"), and the message of a failed internal assertion. */
#include "goev-internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int debug_state = -1;    /* atomic: -1 not looked at yet, 0 off, 1 on */

bool goev__debug_on(void)
{
    int v = __atomic_load_n(&debug_state, __ATOMIC_RELAXED);
    if (GOEV__UNLIKELY(v < 0)) {
        const char *e = getenv("GOEV_DEBUG");
        v = e && strcmp(e, "0") != 0;
        __atomic_store_n(&debug_state, v, __ATOMIC_RELAXED);
    }
    return v != 0;
}

void goev__debug(const char *fmt, ...)
{
    if (!goev__debug_on())
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "goev: %s\n", line);
}

void goev__assert_fail(const char *what, const char *file, int line, const char *func)
{
    fprintf(stderr, "goev: internal error: %s:%d: %s: assertion '%s' failed\n", file, line, func,
            what);
    abort();
}
