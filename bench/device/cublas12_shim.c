/* libcublas.so.12 for FAISS's CUDA 12 wheels on a machine that has CUDA 13 only.
 *
 * PyPI's faiss-gpu wheels link cuBLAS 12; the lent H200 image ships cuBLAS 13, and carrying
 * cuBLAS 12 (580 MB) is over the device tool's 64 MiB. FAISS calls eight cuBLAS functions, whose
 * signatures did not change between 12 and 13 (enums are ints), so this library answers them under
 * the `libcublas.so.12` symbol version and forwards each call to libcublas.so.13, opened on first use
 * (from the loader's path, else from $CUBLAS13_PATH).
 *
 * build: gcc -shared -fPIC -O2 -Wl,-soname,libcublas.so.12 -Wl,--version-script=cublas12.map \
 *        -o libcublas.so.12 cublas12_shim.c -ldl
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t; /* cublasStatus_t */

static void *forward(const char *name) {
    static void *lib;
    if (!lib) {
        lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
        const char *path = getenv("CUBLAS13_PATH");
        if (!lib && path) lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            fprintf(stderr, "cublas12 shim: cannot open libcublas.so.13 (set CUBLAS13_PATH): %s\n", dlerror());
            abort();
        }
    }
    void *fn = dlsym(lib, name);
    if (!fn) {
        fprintf(stderr, "cublas12 shim: libcublas.so.13 has no %s\n", name);
        abort();
    }
    return fn;
}

#define FORWARD(name, params, args)                                \
    status_t name params {                                         \
        static status_t (*fn) params;                              \
        if (!fn) fn = (status_t (*) params) forward(#name);        \
        return fn args;                                            \
    }

FORWARD(cublasCreate_v2, (void **handle), (handle))
FORWARD(cublasDestroy_v2, (void *handle), (handle))
FORWARD(cublasSetStream_v2, (void *handle, void *stream), (handle, stream))
FORWARD(cublasGetMathMode, (void *handle, int *mode), (handle, mode))
FORWARD(cublasSetMathMode, (void *handle, int mode), (handle, mode))
FORWARD(cublasSgemmEx,
        (void *h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int Atype, int lda,
         const void *B, int Btype, int ldb, const float *beta, void *C, int Ctype, int ldc),
        (h, ta, tb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc))
FORWARD(cublasGemmEx,
        (void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int Atype, int lda,
         const void *B, int Btype, int ldb, const void *beta, void *C, int Ctype, int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int Atype, int lda,
         long long sA, const void *B, int Btype, int ldb, long long sB, const void *beta, void *C, int Ctype,
         int ldc, long long sC, int batch, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, Atype, lda, sA, B, Btype, ldb, sB, beta, C, Ctype, ldc, sC, batch, compute,
         algo))
