"""One-to-many generation: gpu_rnn.generate against a torch per-step loop, same model, same device.

torch has no one-call generation: each step is an embedding lookup, an LSTM call, a Linear and
an argmax, launched from Python. gpu_rnn.generate on CUDA runs every step in one kernel launch.
Prints the median time per step of each (runs interleaved, one of each per round, after a
warm-up run of each) and their ratio; run it on a GPU machine to record the issue's target
(1000 steps at B = 1: at least 10x faster than the torch loop).

    python examples/bench_generation.py [--backend cuda] [--hidden 256] [--steps 1000] [--repeat 5]
"""
import argparse
import statistics
import time

import numpy as np

import gpu_rnn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--mode", default="LSTM", choices=["LSTM", "GRU", "RNN"])
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=97)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    cls = getattr(torch.nn, args.mode)
    rnn_t = cls(args.input, args.hidden, args.layers)
    head_t, emb_t = torch.nn.Linear(args.hidden, args.vocab), torch.nn.Embedding(args.vocab, args.input)
    backend = gpu_rnn.default_backend() if args.backend == "auto" else args.backend
    dev = "cuda" if backend.startswith("cuda") else "cpu"
    layer = getattr(gpu_rnn, args.mode).from_torch(rnn_t, backend=backend)  # same weights
    head, emb = gpu_rnn.Linear.from_torch(head_t), gpu_rnn.Embedding.from_torch(emb_t)
    rnn_d, head_d, emb_d = rnn_t.to(dev), head_t.to(dev), emb_t.to(dev)
    start = np.zeros(args.batch, np.int64)

    def run_torch():
        with torch.no_grad():
            tok = torch.zeros(args.batch, dtype=torch.long, device=dev)
            hx, toks = None, []
            for _ in range(args.steps):
                y, hx = rnn_d(emb_d(tok)[None], hx)
                tok = head_d(y[0]).argmax(1)
                toks.append(tok)
            out = torch.stack(toks)
            if dev == "cuda":
                torch.cuda.synchronize()
            return out.cpu().numpy()

    def run_gpu_rnn():
        return gpu_rnn.generate(layer, start, args.steps, head=head, embedding=emb, backend=backend)[2]

    def once(f):
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    agree = np.mean(run_torch() == run_gpu_rnn())  # also the warm-up (compiles, allocates)
    # interleaved: each round times one run of each, so a slow spell of the machine hits both
    ts = {run_torch: [], run_gpu_rnn: []}
    for _ in range(args.repeat):
        for f, t in ts.items():
            t.append(once(f))
    t_torch, t_ours = (statistics.median(ts[f]) / args.steps * 1e6 for f in (run_torch, run_gpu_rnn))
    print(f"{args.mode} I={args.input} H={args.hidden} V={args.vocab} L={args.layers} B={args.batch}, "
          f"{args.steps} greedy steps, backend {backend}, torch on {dev}")
    print(f"torch per-step loop: {t_torch:.1f} us/step; gpu_rnn.generate: {t_ours:.1f} us/step; "
          f"ratio {t_torch / t_ours:.1f}x; tokens agree on {agree:.1%} of steps")


if __name__ == "__main__":
    main()
