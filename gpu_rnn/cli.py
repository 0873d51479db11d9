"""The ``gpu-rnn`` command (also ``python -m gpu_rnn``).

    gpu-rnn run [--model FILE] [--input FILE.npy] [--output FILE.npy] [--batch-size N]
                [--backend NAME] [--mode many-to-many|many-to-one] [--lengths FILE.npy]
    gpu-rnn generate [--model FILE] [--prompt TEXT] [--steps N] [--backend NAME]
    gpu-rnn info
    gpu-rnn profile ...          (the profiling harness, ``gpu_rnn.profiling.cli``)

``run`` is batch inference over a dataset that need not fit in memory: the input ``.npy`` is
memory-mapped and streamed in batches, the output ``.npy`` is written through a memory map.
Input: float features ``(N, T, I)`` (N sequences, batch-major), or integer token ids ``(N, T)``
for a model with an ``embedding`` (token 0 is padding: a sequence's length runs to its last
non-zero token unless ``--lengths`` is given). Output: ``(N, T, V)`` per-step results
(many-to-many, through the model's ``head`` when it has one), or ``(N, C)`` one result per
sequence (many-to-one, through its ``classifier`` when it has one).

With no arguments, ``gpu-rnn`` (or ``gpu-rnn run``) runs the embedded default model, a
character-level LSTM trained on the Python standard library's source, on held-out lines, and
shows all three architectures: scoring lines as code or prose (many-to-one), next-character
predictions (many-to-many) and generated text (one-to-many).

Errors (missing files, wrong shapes or dtypes, unknown backends) print one line on stderr and
exit with status 1 (2 for a malformed command line).
"""
import argparse
import os
import sys
import time

import numpy as np

PROG = "gpu-rnn"


class CliError(Exception):
    """A user error: printed as one line, exit status 1."""


def _fail(msg):
    raise CliError(msg)


# -- shared helpers -------------------------------------------------------------------------
def _load_model(path, backend):
    from . import data
    if path is None:
        return data.load_default(backend=backend)
    if not os.path.exists(path):
        _fail(f"model file {path} does not exist")
    if path.endswith(".onnx"):
        import gpu_rnn
        if not hasattr(gpu_rnn, "from_onnx"):
            _fail("ONNX models need gpu_rnn.from_onnx, which this installation lacks")
        from .layers import RNNBase
        layer = gpu_rnn.from_onnx(path)
        if not isinstance(layer, RNNBase):
            _fail(f"{path}: its recurrent nodes do not form one stacked layer ({type(layer).__name__}); "
                  "gpu-rnn run takes one recurrent layer per model")
        return data.Model({"rnn": layer}, {}, path)
    return data.load_model(path, backend=backend)


def _check_backend(name):
    from . import dispatch
    if name is not None:
        dispatch.check_name(name, "--backend")
    return name


def _describe_plan(layer):
    plan = getattr(layer, "last_plan", None)
    if plan is None:
        return "backend ?"
    why = "; ".join(plan.reasons)
    return f"backend {plan.name}" + (f" ({why})" if why else "")


def _progress(total, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop inference
        tqdm = None
    if tqdm is None or not enabled:
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(total=total, unit="seq", file=sys.stderr, desc="gpu-rnn run", leave=False,
                dynamic_ncols=True, delay=0.5)


# -- run ----------------------------------------------------------------------------------------
def _open_input(path):
    if not os.path.exists(path):
        _fail(f"input file {path} does not exist")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        _fail(f"input file {path} is not a readable .npy array: {e}")
    if not isinstance(arr, np.ndarray):
        _fail(f"input file {path} must hold one .npy array, got {type(arr).__name__}")
    return arr


def _infer_lengths(tok):
    nz = tok != 0
    T = tok.shape[1]
    last = T - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(axis=1), last, 1).astype(np.int64)


def run_batches(model, inp, *, lengths=None, mode="many-to-many", batch_size=64, backend=None,
                out=None, progress=True):
    """Stream ``inp`` (N, T, I) floats or (N, T) token ids through the model in batches.

    Returns ``(out, stats)``: the (N, T, V) or (N, C) results (``out`` when given, e.g. a
    memory map, else a new array) and a dict of counts, seconds and the plan."""
    from .generation import many_to_one
    layer = model.rnn
    emb = model.get("embedding")
    head = model.get("head") if mode == "many-to-many" else model.get("classifier")
    D, P = layer.num_directions, layer.output_size
    tokens = inp.dtype.kind in "iu"
    if inp.dtype.kind not in "iuf" or inp.dtype == np.float16:
        _fail(f"input must be float32/float64 features (N, T, I) or integer token ids (N, T), got dtype {inp.dtype}")
    if tokens:
        if emb is None:
            _fail(f"input holds integer token ids {inp.shape} but the model has no embedding; "
                  f"give float features (N, T, {layer.input_size})")
        if inp.ndim != 2:
            _fail(f"integer token input must have shape (N, T), got {inp.shape}")
    elif inp.ndim != 3 or inp.shape[2] != layer.input_size:
        _fail(f"float input must have shape (N, T, I) with I = {layer.input_size}, got {inp.shape}")
    N, T = inp.shape[0], inp.shape[1]
    if N == 0 or T == 0:
        _fail(f"input must hold at least one sequence of at least one step, got shape {inp.shape}")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (N,) or lengths.dtype.kind not in "iu":
            _fail(f"lengths must be integers of shape (N,) = ({N},), got {lengths.dtype} {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > T:
            _fail(f"lengths must lie in [1, T] = [1, {T}], got min {lengths.min()} and max {lengths.max()}")
    V = head.out_features if head is not None else D * P
    shape = (N, T, V) if mode == "many-to-many" else (N, V)
    dt = layer.param_dtype
    if out is None:
        out = np.empty(shape, dt)
    bar = _progress(N, progress)
    t0 = time.perf_counter()
    steps = 0
    try:
        for i in range(0, N, batch_size):
            xb = np.asarray(inp[i:i + batch_size])
            if tokens:
                lb = lengths[i:i + batch_size] if lengths is not None else _infer_lengths(xb)
                xb = emb(xb)
            else:
                lb = lengths[i:i + batch_size] if lengths is not None else None
            xb = np.ascontiguousarray(xb if layer.batch_first else np.swapaxes(xb, 0, 1), dtype=dt)
            if mode == "many-to-one":
                out[i:i + batch_size] = many_to_one(layer, xb, lengths=lb, head=head, backend=backend)
            else:
                y, _ = layer(xb, lengths=lb, backend=backend)
                y = y if layer.batch_first else np.swapaxes(y, 0, 1)
                out[i:i + batch_size] = head(y) if head is not None else y
            steps += int(lb.sum()) if lb is not None else xb.shape[0 if layer.batch_first else 1] * T
            bar.update(min(batch_size, N - i))
    finally:
        bar.close()
    secs = max(time.perf_counter() - t0, 1e-9)
    return out, {"sequences": N, "steps": steps, "seconds": secs, "plan": _describe_plan(layer)}


def _closing_line(stats):
    s = stats
    return (f"{s['sequences']} sequences, {s['steps']} steps in {s['seconds']:.3f} s: "
            f"{s['sequences'] / s['seconds']:.1f} sequences/s, {s['steps'] / s['seconds']:.0f} steps/s; "
            f"{s['plan']}")


def cmd_run(args):
    backend = _check_backend(args.backend)
    if args.batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input is None and args.model is None:
        return _demo(args, backend)
    if args.input is None:
        _fail("--input FILE.npy is required with --model (without both, the embedded demo runs)")
    inp = _open_input(args.input)
    lengths = None
    if args.lengths:
        lengths = np.asarray(_open_input(args.lengths))
    model = _load_model(args.model, backend)
    out = None
    if args.output:
        layer = model.rnn
        head = model.get("head") if args.mode == "many-to-many" else model.get("classifier")
        V = head.out_features if head is not None else layer.num_directions * layer.output_size
        if inp.ndim < 2:
            _fail(f"input must have shape (N, T, I) or (N, T), got {inp.shape}")
        shape = (inp.shape[0], inp.shape[1], V) if args.mode == "many-to-many" else (inp.shape[0], V)
        try:
            out = np.lib.format.open_memmap(args.output, mode="w+", dtype=layer.param_dtype, shape=shape)
        except OSError as e:
            _fail(f"cannot write the output file {args.output}: {e.strerror or e}")
    result, stats = run_batches(model, inp, lengths=lengths, mode=args.mode, batch_size=args.batch_size,
                                backend=backend, out=out, progress=not args.no_progress)
    if out is not None:
        out.flush()
        print(f"wrote {args.output}: {result.dtype} {result.shape}")
    else:
        print(f"results {result.dtype} {result.shape} (not saved: give --output FILE.npy); first rows:")
        with np.printoptions(precision=4, suppress=True, threshold=20, edgeitems=3):
            print(result[:2])
    print(_closing_line(stats), file=sys.stderr)
    return 0


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _demo(args, backend):
    from . import data
    from .generation import generate
    model = data.load_default(backend=backend)
    vocab = model.vocab or data.load_vocab()
    toks, labels_name = vocab["tokens"], vocab["labels"]
    tok, lengths, labels = data.load_sample()
    print(f"gpu-rnn: the embedded default model ({os.path.basename(data.DEFAULT_MODEL)}): "
          f"Embedding({len(toks)}, {model.get('embedding').embedding_dim}) -> {model.rnn!r}, "
          f"trained on the Python standard library's source; {len(lengths)} held-out lines.\n")

    # many-to-one: score each line as code or prose
    scores, stats = run_batches(model, tok, lengths=lengths, mode="many-to-one",
                                batch_size=args.batch_size, backend=backend, progress=not args.no_progress)
    pred = scores.argmax(1)
    prob = _softmax(scores.astype(np.float64))[:, 1]
    print(f"many-to-one: code or prose? accuracy {np.mean(pred == labels):.3f} on {len(labels)} lines "
          f"(always guessing '{labels_name[int(np.mean(labels) > 0.5)]}': {max(labels.mean(), 1 - labels.mean()):.3f})")
    for k in np.linspace(0, len(labels) - 1, 6).astype(int):
        line = data.decode(tok[k, :lengths[k]], toks)
        print(f"  P(prose) {prob[k]:.2f}  [{labels_name[labels[k]]:5s}]  {line[:68]}")
    print(_closing_line(stats), file=sys.stderr)

    # many-to-many: the next character at every position
    logits, stats2 = run_batches(model, tok, lengths=lengths, mode="many-to-many",
                                 batch_size=args.batch_size, backend=backend, progress=not args.no_progress)
    nxt = logits.argmax(2)
    mask = np.arange(tok.shape[1])[None, :] < (lengths[:, None] - 1)
    acc = np.mean((nxt[:, :-1] == tok[:, 1:])[mask[:, :-1]])
    k = int(np.argmax(lengths))
    print(f"\nmany-to-many: next-character prediction at every step, accuracy {acc:.3f}")
    print("  text:      " + data.decode(tok[k, :lengths[k]], toks)[:70])
    print("  predicted:  " + data.decode(nxt[k, :lengths[k] - 1], toks)[:69])
    print(_closing_line(stats2), file=sys.stderr)

    # one-to-many: greedy text
    print("\none-to-many: generated text (greedy), prompt 'def ':")
    text, secs, plan = _generate_text(model, toks, "def ", 160, backend)
    print("  " + text.replace("\n", "\n  "))
    print(f"160 steps generated in {secs:.3f} s ({160 / secs:.0f} steps/s); {plan}", file=sys.stderr)
    return 0


def _generate_text(model, toks, prompt, steps, backend):
    from . import data
    from .generation import _cpu_compiled, generate
    layer, emb, head = model.rnn, model.get("embedding"), model.get("head")
    if emb is None or head is None or not toks:
        _fail("generate needs a character model with an embedding, a head and a vocabulary "
              "(the embedded default is one)")
    if not prompt:
        _fail("--prompt must not be empty")
    ids = data.encode(prompt, toks)
    t0 = time.perf_counter()
    hx = None
    if len(ids) > 1:
        x = emb(ids[:-1])[:, None, :].astype(layer.param_dtype)
        _, hx = layer(x, backend=backend)
    # one step first: the kernels' compile (or load from the cache) is timed apart
    generate(layer, ids[-1:], 1, hx, head=head, embedding=emb, backend=backend)
    t1 = time.perf_counter()
    _, _, tokens = generate(layer, ids[-1:], steps, hx, head=head, embedding=emb, backend=backend)
    secs = max(time.perf_counter() - t1, 1e-9)
    setup = t1 - t0
    from . import dispatch
    _, name, variant, _ = dispatch.resolve(backend, layer.backend)
    if name == "cuda":
        how = "every step in one kernel launch (head, argmax and embedding on the device)"
    elif _cpu_compiled(layer, 1, steps):
        how = "every step in one compiled loop (layers, head, argmax and embedding)"
    else:
        how = "a fused step of the stack per token, head and argmax in NumPy"
    return (prompt + data.decode(tokens[:, 0], toks), secs,
            f"backend {name}: {how}; before them {setup:.2f} s for the prompt and the kernels' "
            f"compile or load")


def cmd_generate(args):
    from . import data
    backend = _check_backend(args.backend)
    if args.steps < 1:
        _fail(f"--steps must be >= 1, got {args.steps}")
    model = _load_model(args.model, backend)
    vocab = model.vocab or (data.load_vocab() if args.model is None else None)
    if vocab is None:
        _fail(f"{args.model} has no vocabulary (metadata 'vocab'): generate needs a character model")
    text, secs, plan = _generate_text(model, vocab["tokens"], args.prompt, args.steps, backend)
    print(text)
    print(f"{args.steps} steps generated in {secs:.3f} s ({args.steps / secs:.0f} steps/s); {plan}", file=sys.stderr)
    return 0


# -- info ---------------------------------------------------------------------------------------
def cmd_info(args):
    import gpu_rnn
    from . import dispatch
    print(f"gpu_rnn {gpu_rnn.__version__}, numpy {np.__version__}", end="")
    try:
        import numba
        print(f", numba {numba.__version__}")
    except ImportError:
        print(", numba not installed")
    env = os.environ.get(dispatch.ENV_VAR, "")
    print(f"default backend: {gpu_rnn.default_backend()}" + (f" ({dispatch.ENV_VAR}={env})" if env else ""))
    print("available: " + ", ".join(gpu_rnn.available_backends()))
    for name, (ok, reason) in gpu_rnn.backend_status().items():
        print(f"  {name:6s} {'yes' if ok else 'no '}" + (f"  {reason}" if reason else ""))
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("CUDA simulator enabled (NUMBA_ENABLE_CUDASIM=1): a testing device, never picked by auto")
    try:
        from numba import cuda
        if cuda.is_available() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            for dev in cuda.list_devices():
                with dev:
                    d = cuda.get_current_device()
                    ctx = cuda.current_context()
                    free, total = ctx.get_memory_info()
                    print(f"device {dev.id}: {d.name.decode() if isinstance(d.name, bytes) else d.name}, "
                          f"compute capability {d.compute_capability[0]}.{d.compute_capability[1]}, "
                          f"{d.MULTIPROCESSOR_COUNT} SMs, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), "
                          f"{d.MAX_SHARED_MEMORY_PER_BLOCK // 1024} KiB shared/block, "
                          f"{d.MAX_THREADS_PER_BLOCK} threads/block")
        else:
            print("no CUDA device")
    except Exception as e:  # noqa: BLE001 - info must report, not crash
        print(f"no CUDA device ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return 0


def cmd_profile(argv):
    try:
        from .profiling import cli as pcli
    except ImportError as e:
        _fail(f"the profiling harness is not available (gpu_rnn.profiling.cli: {e})")
    if not hasattr(pcli, "main"):
        _fail("the profiling harness has no main(argv)")
    return pcli.main(argv) or 0


# -- entry point ----------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(prog=PROG, description="Recurrent-network inference (RNN, LSTM, GRU) on "
                                "CUDA GPUs and CPUs. With no command: the embedded demo (gpu-rnn run).")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="batch inference over a .npy dataset (default: the embedded demo)")
    r.add_argument("--model", help="model file: gpu_rnn safetensors (a layer.save file or a multi-module "
                   "model), or .onnx; default: the embedded model")
    r.add_argument("--input", help="input .npy: float (N, T, I) or integer token ids (N, T); memory-mapped")
    r.add_argument("--output", help="output .npy, written through a memory map")
    r.add_argument("--lengths", help="optional (N,) integer .npy of sequence lengths")
    r.add_argument("--batch-size", type=int, default=64, help="sequences per batch (default 64)")
    r.add_argument("--backend", help="auto, cpu, cuda, cuda:stepwise or cuda:persistent")
    r.add_argument("--mode", choices=["many-to-many", "many-to-one"], default="many-to-many",
                   help="per-step results (N, T, V) or one per sequence (N, C)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = sub.add_parser("generate", help="generate text with a character model (default: the embedded one)")
    g.add_argument("--model", help="model file with an embedding, a head and a vocabulary")
    g.add_argument("--prompt", default="def ", help="text to start from (default 'def ')")
    g.add_argument("--steps", type=int, default=200, help="characters to generate (default 200)")
    g.add_argument("--backend", help="auto, cpu, cuda, cuda:stepwise or cuda:persistent")
    sub.add_parser("info", help="backends, why one is unavailable, device properties")
    sub.add_parser("profile", help="the kernel profiling harness (gpu_rnn.profiling)", add_help=False)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "profile":
            return cmd_profile(argv[1:])
        args = _parser().parse_args(argv)
        if args.command is None:
            args = _parser().parse_args(["run"])
        return {"run": cmd_run, "generate": cmd_generate, "info": cmd_info}[args.command](args)
    except (CliError, FileNotFoundError) as e:
        msg = str(e)
    except Exception as e:  # noqa: BLE001 - library errors (shapes, dtypes, backends) as one line
        from .errors import GpuRnnError
        if not isinstance(e, (GpuRnnError, ValueError, TypeError, OSError)):
            raise
        msg = str(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: " + " ".join(msg.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
