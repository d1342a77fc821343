//go:build cgo

// The C half of the ABI: the thread-local error message, the conversions
// between handles and the opaque pointer types, and reading an options
// struct of any struct_size. Definitions live here because a cgo preamble
// with //export may hold declarations only.

#include <stdlib.h>
#include <string.h>
#include "abi.h"

// The message of the last failed call on each thread; "" after a success.
static __thread char *cm_errmsg;

const char *clipmpi_last_error(void) { return cm_errmsg ? cm_errmsg : ""; }

void cm_set_error(const char *msg, size_t n) {
	free(cm_errmsg);
	cm_errmsg = NULL;
	if (n == 0) return;
	cm_errmsg = malloc(n + 1);
	if (cm_errmsg == NULL) return;
	memcpy(cm_errmsg, msg, n);
	cm_errmsg[n] = 0;
}

clipmpi_comm *cm_comm_ptr(uintptr_t h) { return (clipmpi_comm *)h; }
uintptr_t cm_comm_handle(clipmpi_comm *p) { return (uintptr_t)p; }
clipmpi_loss *cm_loss_ptr(uintptr_t h) { return (clipmpi_loss *)h; }
uintptr_t cm_loss_handle(clipmpi_loss *p) { return (uintptr_t)p; }

void clipmpi_clip_options_init(clipmpi_clip_options *opt) {
	if (opt == NULL) return;
	memset(opt, 0, sizeof *opt);
	opt->struct_size = sizeof *opt;
}

void clipmpi_siglip_options_init(clipmpi_siglip_options *opt) {
	if (opt == NULL) return;
	memset(opt, 0, sizeof *opt);
	opt->struct_size = sizeof *opt;
}

// cm_read_clip_options copies the first struct_size bytes of *in over the
// defaults in *out; in may be NULL. It returns 0, or -1 if struct_size is
// too small to hold itself.
int cm_read_clip_options(const clipmpi_clip_options *in, clipmpi_clip_options *out) {
	clipmpi_clip_options_init(out);
	if (in == NULL) return 0;
	if (in->struct_size < (int64_t)sizeof in->struct_size) return -1;
	size_t n = (size_t)in->struct_size < sizeof *out ? (size_t)in->struct_size : sizeof *out;
	memcpy(out, in, n);
	out->struct_size = sizeof *out;
	return 0;
}

int cm_read_siglip_options(const clipmpi_siglip_options *in, clipmpi_siglip_options *out) {
	clipmpi_siglip_options_init(out);
	if (in == NULL) return 0;
	if (in->struct_size < (int64_t)sizeof in->struct_size) return -1;
	size_t n = (size_t)in->struct_size < sizeof *out ? (size_t)in->struct_size : sizeof *out;
	memcpy(out, in, n);
	out->struct_size = sizeof *out;
	return 0;
}
