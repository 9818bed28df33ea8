/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "strv.h"

char **strv_free(char **l)
{
        if (!l)
                return NULL;
        for (char **p = l; *p; p++)
                free(*p);
        free(l);
        return NULL;
}

bool strv_contains(char *const *l, const char *s)
{
        for (; l && *l; l++)
                if (strcmp(*l, s) == 0)
                        return true;
        return false;
}

int strv_extend(char ***l, const char *s)
{
        size_t n = strv_length(*l);
        char *copy = strdup(s), **nl;

        if (!copy)
                return -ENOMEM;
        nl = realloc(*l, (n + 2) * sizeof(char *));
        if (!nl) {
                free(copy);
                return -ENOMEM;
        }
        nl[n] = copy;
        nl[n + 1] = NULL;
        *l = nl;
        return 0;
}

char *strv_join(char *const *l, const char *sep)
{
        size_t len = 1, n = strv_length(l);
        char *s;

        for (size_t i = 0; i < n; i++)
                len += strlen(l[i]) + (i > 0 ? strlen(sep) : 0);
        s = malloc(len);
        if (!s)
                return NULL;
        s[0] = '\0';
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        strcat(s, sep);
                strcat(s, l[i]);
        }
        return s;
}

size_t strv_length(char *const *l)
{
        size_t n = 0;

        if (!l)
                return 0;
        while (l[n])
                n++;
        return n;
}

static bool is_blank(char c)
{
        return c == ' ' || c == '\t' || c == '\n';
}

/* Appends word (taken over) to *l of n entries, keeping it NULL-terminated. */
static int strv_push(char ***l, size_t *n, char *word)
{
        char **t = realloc(*l, (*n + 2) * sizeof(char *));

        if (!t) {
                free(word);
                return -ENOMEM;
        }
        t[(*n)++] = word;
        t[*n] = NULL;
        *l = t;
        return 0;
}

int strv_split_command(const char *cmdline, char ***ret)
{
        _cleanup_strv_free_ char **l = NULL;
        _cleanup_free_ char *word = NULL;
        size_t n = 0;
        const char *p;

        if (!cmdline)
                return -EINVAL;
        /* No word is longer than the command line, so one buffer of that size always fits. */
        word = malloc(strlen(cmdline) + 1);
        if (!word)
                return -ENOMEM;

        p = cmdline;
        for (;;) {
                size_t len = 0;
                char quote = 0;
                int r;

                while (is_blank(*p))
                        p++;
                if (!*p)
                        break;

                for (; *p; p++) {
                        if (quote == '\'') {
                                /* Single quotes keep everything literal, as in the shell. */
                                if (*p == '\'')
                                        quote = 0;
                                else
                                        word[len++] = *p;
                        } else if (*p == '\\') {
                                if (!p[1])
                                        return -EINVAL; /* nothing left to escape */
                                word[len++] = *++p;
                        } else if (quote == '"') {
                                if (*p == '"')
                                        quote = 0;
                                else
                                        word[len++] = *p;
                        } else if (*p == '"' || *p == '\'')
                                quote = *p;
                        else if (is_blank(*p))
                                break;
                        else
                                word[len++] = *p;
                }
                if (quote)
                        return -EINVAL;

                word[len] = '\0';
                char *w = strdup(word);
                if (!w)
                        return -ENOMEM;
                r = strv_push(&l, &n, w);
                if (r < 0)
                        return r;
        }

        if (n == 0)
                return -EINVAL;
        *ret = TAKE_PTR(l);
        return 0;
}
