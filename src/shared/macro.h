/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers used everywhere: cleanup attributes and ownership transfer. */

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _unused_       __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_     __attribute__((noreturn))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Hand ownership out of a cleanup-managed local: returns the pointer, leaves NULL behind. */
#define TAKE_PTR(p)                                                                                \
        __extension__({                                                                            \
                __typeof__(p) _ptr_ = (p);                                                         \
                (p) = NULL;                                                                        \
                _ptr_;                                                                             \
        })

/* Same for file descriptors: returns the fd, leaves -1 behind. */
#define TAKE_FD(fd)                                                                                \
        __extension__({                                                                            \
                int _fd_ = (fd);                                                                   \
                (fd) = -1;                                                                         \
                _fd_;                                                                              \
        })

static inline void freep(void *p)
{
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd)
{
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
#define _cleanup_close_ _cleanup_(closep)

/* Declares type##_freep() for a foo_free(Foo *) that accepts NULL. */
#define DEFINE_FREE_FUNC(type, func)                                                               \
        static inline void func##p(type **p)                                                       \
        {                                                                                          \
                if (*p)                                                                            \
                        func(*p);                                                                  \
        }

static inline int negative_errno(void)
{
        return errno > 0 ? -errno : -EIO;
}
