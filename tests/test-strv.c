/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>

#include "strv.h"
#include "test-util.h"

/* Splits cmdline and checks the words: the expected list ends with NULL. */
static void check_split(int line, const char *cmdline, ...)
{
        _cleanup_strv_free_ char **l = NULL;
        va_list ap;
        size_t i = 0;
        const char *w;
        int r;

        r = strv_split_command(cmdline, &l);
        if (r < 0) {
                fprintf(stderr, "%s:%d: splitting <%s> failed: %d\n", __FILE__, line, cmdline, r);
                test_failures++;
                return;
        }
        va_start(ap, cmdline);
        while ((w = va_arg(ap, const char *))) {
                if (i >= strv_length(l) || strcmp(l[i], w) != 0) {
                        fprintf(stderr, "%s:%d: <%s> word %zu is <%s>, expected <%s>\n", __FILE__,
                                line, cmdline, i, i < strv_length(l) ? l[i] : "(none)", w);
                        test_failures++;
                }
                i++;
        }
        va_end(ap);
        if (strv_length(l) != i) {
                fprintf(stderr, "%s:%d: <%s> gave %zu words, expected %zu\n", __FILE__, line,
                        cmdline, strv_length(l), i);
                test_failures++;
        }
}

static void check_refused(int line, const char *cmdline)
{
        char **l = NULL;
        int r = strv_split_command(cmdline, &l);

        if (r != -EINVAL || l) {
                fprintf(stderr, "%s:%d: <%s> gave %d, expected -EINVAL\n", __FILE__, line,
                        cmdline ? cmdline : "(null)", r);
                test_failures++;
        }
        strv_free(l);
}

static void test_extend_and_join(void)
{
        _cleanup_strv_free_ char **l = NULL;
        char *j;

        j = strv_join(l, ", ");
        CHECK_STR_EQ(j, "");
        free(j);
        CHECK_INT_EQ(strv_extend(&l, "a"), 0);
        CHECK_INT_EQ(strv_extend(&l, "b c"), 0);
        CHECK_INT_EQ(strv_length(l), 2);
        CHECK(strv_contains(l, "b c") && !strv_contains(l, "b"));
        j = strv_join(l, ", ");
        CHECK_STR_EQ(j, "a, b c");
        free(j);
}

int main(void)
{
        test_extend_and_join();
        check_split(__LINE__, "/usr/bin/apply", "/usr/bin/apply", NULL);
        check_split(__LINE__, "  /bin/echo   a\tb\nc  ", "/bin/echo", "a", "b", "c", NULL);
        check_split(__LINE__, "sh -c \"echo hello world\"", "sh", "-c", "echo hello world", NULL);
        check_split(__LINE__, "sh -c 'echo $HOME; exit 3'", "sh", "-c", "echo $HOME; exit 3", NULL);
        /* Quotes group but do not separate: adjacent pieces make one word. */
        check_split(__LINE__, "a\"b c\"d'e f'g", "ab cde fg", NULL);
        /* Empty quotes make an empty word. */
        check_split(__LINE__, "cmd \"\" ''", "cmd", "", "", NULL);
        /* Each quote kind holds the other literally. */
        check_split(__LINE__, "x \"it's\" 'say \"hi\"'", "x", "it's", "say \"hi\"", NULL);
        /* Backslash escapes blanks, quotes and itself outside single quotes. */
        check_split(__LINE__, "a\\ b c\\\"d \\\\", "a b", "c\"d", "\\", NULL);
        check_split(__LINE__, "\"a\\\"b\\\\c\"", "a\"b\\c", NULL);
        check_split(__LINE__, "'a\\b'", "a\\b", NULL);
        /* No shell features: these are ordinary characters. */
        check_split(__LINE__, "echo $X * ; | > && `x`", "echo", "$X", "*", ";", "|", ">", "&&",
                    "`x`", NULL);

        check_refused(__LINE__, "");
        check_refused(__LINE__, "   \t\n ");
        check_refused(__LINE__, NULL);
        check_refused(__LINE__, "sh -c \"echo");
        check_refused(__LINE__, "sh -c 'echo");
        check_refused(__LINE__, "echo \\");
        check_refused(__LINE__, "'a\"");

        CHECK_INT_EQ(strv_length(NULL), 0);
        CHECK(strv_free(NULL) == NULL);
        return test_exit("test-strv");
}
