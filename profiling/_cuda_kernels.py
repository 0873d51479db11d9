"""CUDA kernels of the ceiling measurements (imports numba.cuda: import it lazily)."""
from numba import cuda, float32

FMA_CHAINS = 8


def _fma_body(out, n_iter):
    """8 independent FMA chains per thread; typed from ``out`` so a float32 kernel stays float32."""
    i = cuda.grid(1)
    if i >= out.shape[0]:
        return
    x = out[i]
    m = type(x)(0.999)
    c = type(x)(0.001)
    a0 = x
    a1 = x + type(x)(1)
    a2 = x + type(x)(2)
    a3 = x + type(x)(3)
    a4 = x + type(x)(4)
    a5 = x + type(x)(5)
    a6 = x + type(x)(6)
    a7 = x + type(x)(7)
    for _ in range(n_iter):
        a0 = a0 * m + c
        a1 = a1 * m + c
        a2 = a2 * m + c
        a3 = a3 * m + c
        a4 = a4 * m + c
        a5 = a5 * m + c
        a6 = a6 * m + c
        a7 = a7 * m + c
    out[i] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


def _smem_body(out, n_iter):
    """Each thread reads float32 words of a shared array (conflict-free stride) and sums them."""
    buf = cuda.shared.array(1024, dtype=float32)
    tid = cuda.threadIdx.x
    k = tid
    while k < 1024:
        buf[k] = float32(k)
        k += cuda.blockDim.x
    cuda.syncthreads()
    acc0 = float32(0)
    acc1 = float32(0)
    j = tid & 1023
    for _ in range(n_iter):
        acc0 += buf[j]
        acc1 += buf[(j + 512) & 1023]
        j = (j + 32) & 1023
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = acc0 + acc1


def _grid_sync_body(out, n):
    """``n`` grid-wide barriers and nothing else (a cooperative launch: the grid must be
    co-resident); thread 0 writes how many it passed."""
    g = cuda.cg.this_grid()
    k = 0
    for _ in range(n):
        g.sync()
        k += 1
    if cuda.grid(1) == 0:
        out[0] = k


fma_kernel = cuda.jit(_fma_body)
smem_kernel = cuda.jit(_smem_body)
grid_sync_kernel = cuda.jit(_grid_sync_body)
