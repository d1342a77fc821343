/* json.h: a small JSON reader for the golden cases (objects, arrays,
 * numbers, strings without escapes beyond \" and \\, true, false, null).
 * Enough for test/testdata/golden; not a general parser. */
#ifndef CTEST_JSON_H
#define CTEST_JSON_H

#include <stddef.h>

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct json {
    jtype t;
    double num;          /* J_NUM, J_BOOL (0 or 1) */
    char *str;           /* J_STR */
    size_t n;            /* J_ARR, J_OBJ: number of items */
    struct json **items; /* J_ARR, J_OBJ */
    char **keys;         /* J_OBJ */
} json;

/* json_read parses the file at path; NULL (and a message on stderr) on
 * error. */
json *json_read(const char *path);
void json_free(json *j);
/* json_get returns the member key of object o, or NULL. */
json *json_get(const json *o, const char *key);
/* json_matrix flattens an array of rows of numbers into a new array of
 * rows*cols doubles (malloc); NULL if the shape differs. */
double *json_matrix(const json *a, size_t rows, size_t cols);

#endif
