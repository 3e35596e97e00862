/* alloc.c - the allocator every allocation of the library goes through
 * (goev_replace_allocator). */
#include "goev-internal.h"

#include <errno.h>
#include <stdlib.h>

struct goev__allocator goev__alloc = {malloc, realloc, calloc, free};

int goev_replace_allocator(goev_malloc_fn m, goev_realloc_fn re, goev_calloc_fn c, goev_free_fn f)
{
    if (!m && !re && !c && !f) {
        goev__alloc = (struct goev__allocator){malloc, realloc, calloc, free};
        return 0;
    }
    if (!m || !re || !c || !f)
        return -EINVAL;
    goev__alloc = (struct goev__allocator){m, re, c, f};
    return 0;
}
