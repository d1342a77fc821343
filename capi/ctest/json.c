/* json.c: see json.h. Recursive descent over the whole file in memory. */
#include "json.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *begin, *p, *end;
    const char *path;
    int failed;
} parser;

static void fail(parser *ps, const char *what) {
    if (!ps->failed) {
        fprintf(stderr, "%s: JSON error at byte %ld: %s\n", ps->path, (long)(ps->p - ps->begin), what);
    }
    ps->failed = 1;
}

static void skip(parser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p)) ps->p++;
}

static json *node(jtype t) {
    json *j = calloc(1, sizeof *j);
    if (j) j->t = t;
    return j;
}

static void push(json *j, json *item, char *key) {
    j->items = realloc(j->items, (j->n + 1) * sizeof *j->items);
    if (j->t == J_OBJ) j->keys = realloc(j->keys, (j->n + 1) * sizeof *j->keys);
    j->items[j->n] = item;
    if (j->t == J_OBJ) j->keys[j->n] = key;
    j->n++;
}

static char *parse_string(parser *ps) {
    if (ps->p >= ps->end || *ps->p != '"') {
        fail(ps, "expected a string");
        return NULL;
    }
    ps->p++;
    size_t cap = 16, n = 0;
    char *s = malloc(cap);
    while (ps->p < ps->end && *ps->p != '"') {
        char c = *ps->p++;
        if (c == '\\' && ps->p < ps->end) c = *ps->p++;
        if (n + 1 >= cap) s = realloc(s, cap *= 2);
        s[n++] = c;
    }
    if (ps->p >= ps->end) {
        fail(ps, "unterminated string");
        free(s);
        return NULL;
    }
    ps->p++;
    s[n] = 0;
    return s;
}

static json *parse_value(parser *ps) {
    skip(ps);
    if (ps->p >= ps->end) {
        fail(ps, "unexpected end");
        return NULL;
    }
    char c = *ps->p;
    if (c == '{' || c == '[') {
        json *j = node(c == '{' ? J_OBJ : J_ARR);
        char close = c == '{' ? '}' : ']';
        ps->p++;
        skip(ps);
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return j;
        }
        for (;;) {
            char *key = NULL;
            if (j->t == J_OBJ) {
                skip(ps);
                key = parse_string(ps);
                skip(ps);
                if (ps->failed || ps->p >= ps->end || *ps->p != ':') {
                    fail(ps, "expected ':'");
                    free(key);
                    return j;
                }
                ps->p++;
            }
            json *v = parse_value(ps);
            if (ps->failed) {
                free(key);
                json_free(v);
                return j;
            }
            push(j, v, key);
            skip(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                return j;
            }
            fail(ps, "expected ',' or a closing bracket");
            return j;
        }
    }
    if (c == '"') {
        json *j = node(J_STR);
        j->str = parse_string(ps);
        return j;
    }
    if (strncmp(ps->p, "true", 4) == 0 || strncmp(ps->p, "false", 5) == 0) {
        json *j = node(J_BOOL);
        j->num = c == 't';
        ps->p += c == 't' ? 4 : 5;
        return j;
    }
    if (strncmp(ps->p, "null", 4) == 0) {
        ps->p += 4;
        return node(J_NULL);
    }
    char *e;
    double x = strtod(ps->p, &e);
    if (e == ps->p) {
        fail(ps, "expected a value");
        return NULL;
    }
    ps->p = e;
    json *j = node(J_NUM);
    j->num = x;
    return j;
}

json *json_read(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    parser ps = {buf, buf, buf + n, path, 0};
    json *j = parse_value(&ps);
    free(buf);
    if (ps.failed) {
        json_free(j);
        return NULL;
    }
    return j;
}

void json_free(json *j) {
    if (!j) return;
    for (size_t i = 0; i < j->n; i++) {
        json_free(j->items[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->str);
    free(j);
}

json *json_get(const json *o, const char *key) {
    if (!o || o->t != J_OBJ) return NULL;
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->keys[i], key) == 0) return o->items[i];
    }
    return NULL;
}

double *json_matrix(const json *a, size_t rows, size_t cols) {
    if (!a || a->t != J_ARR || a->n != rows) return NULL;
    double *m = malloc((rows * cols + 1) * sizeof *m);
    for (size_t i = 0; i < rows; i++) {
        const json *r = a->items[i];
        if (r->t != J_ARR || r->n != cols) {
            free(m);
            return NULL;
        }
        for (size_t k = 0; k < cols; k++) {
            if (r->items[k]->t != J_NUM) {
                free(m);
                return NULL;
            }
            m[i * cols + k] = r->items[k]->num;
        }
    }
    return m;
}
