// abi.h: declarations shared by the Go and C halves of the ABI (not part
// of the public header). The const typedefs let cgo's exported prototypes
// match clipmpi.h exactly, so the compiler checks the one against the
// other.
#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include "clipmpi.h"

typedef const float cm_cfloat;
typedef const double cm_cdouble;
typedef const char cm_cchar;
typedef const clipmpi_clip_options cm_cclip_options;
typedef const clipmpi_siglip_options cm_csiglip_options;

void cm_set_error(const char *msg, size_t n);
clipmpi_comm *cm_comm_ptr(uintptr_t h);
uintptr_t cm_comm_handle(clipmpi_comm *p);
clipmpi_loss *cm_loss_ptr(uintptr_t h);
uintptr_t cm_loss_handle(clipmpi_loss *p);
int cm_read_clip_options(const clipmpi_clip_options *in, clipmpi_clip_options *out);
int cm_read_siglip_options(const clipmpi_siglip_options *in, clipmpi_siglip_options *out);
