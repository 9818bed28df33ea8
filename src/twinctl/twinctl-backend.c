/* SPDX-License-Identifier: MIT */
/* Which back end the command line asks for, and what its errors mean to a script. */
#include <errno.h>

#include "config.h"
#include "twinctl-backend.h"

const TwinBackendImpl *twin_backend_for(const TwinctlArgs *args)
{
#if HAVE_DIALECT_AZURE
        if (args->azure_file)
                return &twinctl_backend_azure;
#endif
#if HAVE_DIALECT_AWS
        if (args->aws)
                return &twinctl_backend_aws;
#endif
        return &twinctl_backend_broker;
}

int twin_backend_error_to_exit(int r)
{
        switch (-r) {
        case 0:
                return TWINCTL_EXIT_SUCCESS;
        case ENOTCONN:
        case ECONNRESET:
        case EHOSTUNREACH:
                return TWINCTL_EXIT_UNREACHABLE;
        case EACCES:
        case EPERM:
                return TWINCTL_EXIT_ACCESS_DENIED;
        case ETIMEDOUT:
                return TWINCTL_EXIT_TIMEOUT;
        case ENOENT:
                return TWINCTL_EXIT_NOT_FOUND;
        case ESTALE:
                return TWINCTL_EXIT_CONFLICT;
        case EINVAL:
                return TWINCTL_EXIT_USAGE;
        default:
                return TWINCTL_EXIT_FAILURE;
        }
}
