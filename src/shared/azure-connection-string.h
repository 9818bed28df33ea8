/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Azure IoT Hub connection strings, pure: "Name=Value;Name=Value..." as the portal and the az
 * CLI print them. A device's: HostName, DeviceId, SharedAccessKey (or x509=true), optional
 * ModuleId and GatewayHostName=host[:port]. A service's: HostName, SharedAccessKeyName,
 * SharedAccessKey, optional GatewayHostName. Errors name the field, never a key's value.
 */

#include <stdbool.h>
#include <stddef.h>

enum AzureConnectionStringKind {
        AZURE_CONNECTION_STRING_DEVICE,
        AZURE_CONNECTION_STRING_SERVICE,
};

typedef struct AzureConnectionString {
        char *host_name;
        char *device_id;
        char *module_id;
        char *shared_access_key;
        char *shared_access_key_name;
        char *gateway_host; /* GatewayHostName without the port; NULL when absent */
        int gateway_port;   /* 0 when GatewayHostName has none */
        bool x509;
} AzureConnectionString;

/* Parses text as a connection string of kind into *ret (zeroed first). Returns 0, -ENOMEM, or
 * -EINVAL with one line in err naming the field ("SharedAccessKey: not base64"). */
int azure_connection_string_parse(const char *text, enum AzureConnectionStringKind kind,
                                  AzureConnectionString *ret, char *err, size_t errlen);

/* Frees the fields, wiping the key. */
void azure_connection_string_done(AzureConnectionString *c);

/* The host to connect to: GatewayHostName when given, otherwise HostName. Borrowed. */
const char *azure_connection_string_connect_host(const AzureConnectionString *c);
