/* SPDX-License-Identifier: MIT */
#include "twinctl-output.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json-util.h"
#include "macro.h"
#include "utf8.h"

static bool use_color;

void output_setup(bool no_color)
{
        const char *nc = getenv("NO_COLOR"), *term = getenv("TERM");

        /* https://no-color.org: any non-empty NO_COLOR disables colour. */
        use_color = !no_color && isatty(STDOUT_FILENO) && !(nc && *nc) &&
                    !(term && strcmp(term, "dumb") == 0);
}

const char *output_color_on(enum OutputColor c)
{
        if (!use_color)
                return "";
        switch (c) {
        case OUTPUT_COLOR_NONE:
                return "";
        case OUTPUT_COLOR_RED:
                return "\033[31;1m";
        case OUTPUT_COLOR_GREEN:
                return "\033[32m";
        case OUTPUT_COLOR_YELLOW:
                return "\033[33;1m";
        case OUTPUT_COLOR_BOLD:
                return "\033[1m";
        case OUTPUT_COLOR_GREY:
                return "\033[90m";
        }
        return "";
}

enum OutputColor output_state_color(const char *state)
{
        if (!state)
                return OUTPUT_COLOR_NONE;
        if (strcmp(state, "success") == 0)
                return OUTPUT_COLOR_GREEN;
        if (strcmp(state, "failed") == 0)
                return OUTPUT_COLOR_RED;
        if (strcmp(state, "pending") == 0 || strcmp(state, "applying") == 0 ||
            strcmp(state, "drifted") == 0)
                return OUTPUT_COLOR_YELLOW;
        return OUTPUT_COLOR_NONE;
}

const char *output_color_off(void)
{
        return use_color ? "\033[0m" : "";
}

static int output_json_flags(const json_t *j, size_t flags)
{
        _cleanup_free_ char *s = json_dumps(j, flags | JSON_ENCODE_ANY);

        if (!s)
                return -ENOMEM;
        if (puts(s) == EOF || fflush(stdout) == EOF)
                return -EIO;
        return 0;
}

int output_json(const json_t *j)
{
        return output_json_flags(j, isatty(STDOUT_FILENO) ? JSON_INDENT(2) : JSON_COMPACT);
}

int output_json_line(const json_t *j)
{
        return output_json_flags(j, JSON_COMPACT);
}

char *output_sanitize(char *s)
{
        uint8_t *in = (uint8_t *)s, *out = (uint8_t *)s;

        if (!s)
                return NULL;
        while (*in) {
                size_t n = 0, l;

                while (n < 4 && in[n])
                        n++;
                l = utf8_sequence_length(in, n);
                /* C1 controls (U+0080..U+009F) are C2 80..C2 9F: some terminals obey them too. */
                if (l == 0 || (l == 1 && (*in < 0x20 || *in == 0x7F)) ||
                    (l == 2 && in[0] == 0xC2 && in[1] <= 0x9F)) {
                        *out++ = '?';
                        in += l ? l : 1;
                        continue;
                }
                memmove(out, in, l);
                out += l;
                in += l;
        }
        *out = 0;
        return s;
}

char *output_value(const json_t *v, bool bare)
{
        if (!v)
                return strdup("-");
        if (bare && json_is_string(v))
                return output_sanitize(strdup(json_string_value(v)));
        if (json_is_true(v))
                return strdup("yes");
        if (json_is_false(v))
                return strdup("no");
        /* jansson escapes C0 controls, not C1 ones. */
        return output_sanitize(json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY));
}

struct Table {
        size_t n_columns;
        size_t n_rows;
        char **cells; /* n_rows + 1 rows (the first is the header) of n_columns */
        enum OutputColor *colors;
};

Table *table_new(size_t n_columns, const char *const *headers)
{
        Table *t = calloc(1, sizeof *t);

        if (!t)
                return NULL;
        t->n_columns = n_columns;
        if (table_add_row(t, headers, NULL) < 0)
                return table_free(t);
        return t;
}

int table_add_row(Table *t, const char *const *cells, const enum OutputColor *colors)
{
        size_t base = t->n_rows * t->n_columns;
        char **c;
        enum OutputColor *k;

        c = realloc(t->cells, (base + t->n_columns) * sizeof *c);
        if (!c)
                return -ENOMEM;
        t->cells = c;
        k = realloc(t->colors, (base + t->n_columns) * sizeof *k);
        if (!k)
                return -ENOMEM;
        t->colors = k;
        for (size_t i = 0; i < t->n_columns; i++) {
                c[base + i] = output_sanitize(strdup(cells[i] ? cells[i] : "-"));
                k[base + i] = colors ? colors[i] : OUTPUT_COLOR_NONE;
                if (!c[base + i]) {
                        for (size_t j = 0; j < i; j++)
                                free(c[base + j]);
                        return -ENOMEM;
                }
        }
        t->n_rows++;
        return 0;
}

void table_print(const Table *t)
{
        _cleanup_free_ size_t *width = calloc(t->n_columns, sizeof(size_t));

        if (!width)
                return;
        for (size_t r = 0; r < t->n_rows; r++)
                for (size_t i = 0; i < t->n_columns; i++) {
                        size_t l = strlen(t->cells[r * t->n_columns + i]);
                        if (l > width[i])
                                width[i] = l;
                }
        for (size_t r = 0; r < t->n_rows; r++) {
                for (size_t i = 0; i < t->n_columns; i++) {
                        const char *s = t->cells[r * t->n_columns + i];
                        enum OutputColor c =
                            r == 0 ? OUTPUT_COLOR_BOLD : t->colors[r * t->n_columns + i];
                        bool last = i + 1 == t->n_columns;

                        /* Pad outside the colour so alignment counts visible characters. */
                        printf("%s%s%s", output_color_on(c), s,
                               c == OUTPUT_COLOR_NONE ? "" : output_color_off());
                        if (!last)
                                printf("%*s", (int)(width[i] - strlen(s) + 2), "");
                }
                putchar('\n');
        }
        fflush(stdout);
}

Table *table_free(Table *t)
{
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_rows * t->n_columns; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t->colors);
        free(t);
        return NULL;
}

void output_fields(size_t n, char *const *keys, char *const *values)
{
        size_t width = 0;

        for (size_t i = 0; i < n; i++)
                if (strlen(keys[i]) > width)
                        width = strlen(keys[i]);
        for (size_t i = 0; i < n; i++)
                printf("%*s: %s\n", (int)width, keys[i], values[i] ? values[i] : "-");
        fflush(stdout);
}

char *output_ago(const char *iso, time_t now, char *buf, size_t len)
{
        struct tm tm = { 0 };
        const char *rest;
        time_t t;
        long d;

        if (!iso)
                return NULL;
        rest = strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!rest)
                return NULL;
        if (*rest == '.')
                rest += 1 + strspn(rest + 1, "0123456789");
        if (strcmp(rest, "Z") != 0)
                return NULL;
        t = timegm(&tm);
        d = t < now ? (long)(now - t) : 0;
        if (d < 120)
                snprintf(buf, len, "%lds ago", d);
        else if (d < 120 * 60)
                snprintf(buf, len, "%ldm ago", d / 60);
        else if (d < 48 * 3600)
                snprintf(buf, len, "%ldh ago", d / 3600);
        else
                snprintf(buf, len, "%ldd ago", d / 86400);
        return buf;
}
