"""CUDA kernels (numba.cuda), generic over the cell (``kernels.cells`` compiled with
``cuda.jit(device=True)``).

Layer-level interface shared by the stepwise and the persistent variants (both directions of a
layer in the same launches). Every array is a device array in the storage dtype (float32,
float64, float16; bfloat16 as uint16 bits), arithmetic is in float32 (float64 for float64):

    run_layer(mode, xp, w_hh, b_hh, w_hr, h0, c0, lengths, out, h_n, c_n, opts, peep, stream)

    mode     int, ``kernels.cells`` mode
    xp       (T, B, D*G*H)  input projection of all steps, ``b_ih`` included (one GEMM of x by
                            the stacked ``W_ih`` of both directions)
    w_hh     (D, G*H, P)    torch layout, stacked by direction
    b_hh     (D, G*H)
    w_hr     (D, P, H)      LSTM projection, or an empty (0, 0, 0) array
    h0       (D, B, P), c0 (D, B, H)
    lengths  (B,) int64     1 <= lengths[b] <= T; past its length a sequence keeps its state
                            and writes zeros; the reverse direction starts at lengths[b] - 1
    out      (T, B, D*P)    direction d writes out[:, :, d*P:(d+1)*P]
    h_n      (D, B, P), c_n (D, B, H)
    opts     (cells.OPTS_SIZE,) options of the extended cell modes
    peep     (D, 3, H)      peepholes (ONNX order i, o, f) or an empty (0, 0, 0) array
    stream   numba CUDA stream

The modules import numba.cuda; import them only from the CUDA backend.
"""
