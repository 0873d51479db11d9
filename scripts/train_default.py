"""Train the embedded default model of ``gpu-rnn`` (reproducible, torch on the CPU).

The text is the Python standard library's own source (every Python install has it), one
stripped line after another: a character-level LSTM language model is trained on some modules, and a many-to-one head
classifies a single line as code (0) or prose (1: a comment or a docstring line) from the
LSTM's output at the line's last character. Modules held out of training give the shipped
sample data, so the demo runs on text the model has not seen.

    python scripts/train_default.py            # writes gpu_rnn/data/default.safetensors etc.
    python scripts/train_default.py --steps 200 --out /some/dir   # a quick smoke run

Model: Embedding(V, 32) -> LSTM(32, 128) -> Linear(128, V) next-character logits, plus
Linear(128, 2) code/prose logits. V = 97: padding/unknown, newline, printable ASCII.
Weights are float32 safetensors in gpu_rnn's model format (``gpu_rnn.data.save_model``): the
module configs, the vocabulary and these training settings and scores are in its metadata.
Results depend on the Python version whose library is read (recorded in the metadata).
"""
import argparse
import importlib.util
import io
import json
import os
import sys
import time
import tokenize

import numpy as np

TRAIN_MODULES = [
    "argparse", "functools", "collections", "contextlib", "dataclasses", "fractions", "heapq",
    "bisect", "calendar", "pprint", "glob", "base64", "csv", "enum", "abc", "copy", "random",
    "statistics", "difflib", "inspect", "tempfile", "typing", "zipfile", "string", "json.decoder",
    "json.encoder", "ipaddress", "gettext", "locale", "numbers", "operator", "queue", "sched",
    "selectors", "smtplib", "socketserver", "threading", "timeit", "trace", "uuid", "weakref",
]
HELD_OUT_MODULES = ["textwrap", "shlex", "fnmatch", "graphlib", "colorsys", "getopt"]

PAD = "\x00"  # token 0: padding and any character outside the vocabulary
VOCAB = [PAD, "\n"] + [chr(i) for i in range(32, 127)]
LINE_LEN = 80
LABELS = ["code", "prose"]


def module_source(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read().replace("\t", "    ")


def encode(text):
    index = {c: i for i, c in enumerate(VOCAB)}
    return np.array([index.get(c, 0) for c in text], dtype=np.int64)


def flatten(src):
    """The language model's text: every non-blank line without its indentation, so that the
    model learns words rather than runs of spaces, and reads a line as the classifier does."""
    return "\n".join(s for s in (line.strip() for line in src.splitlines()) if s)


def prose_lines(src):
    """Indices (0-based) of the lines of ``src`` that are comments or inside a docstring."""
    prose = set()
    prev = tokenize.NEWLINE
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                prose.add(tok.start[0] - 1)
            elif tok.type == tokenize.STRING and prev in (tokenize.NEWLINE, tokenize.INDENT,
                                                          tokenize.DEDENT, tokenize.NL):
                if tok.string.lstrip("rRbBuU")[:3] in ('"""', "'''"):  # a docstring-like statement
                    prose.update(range(tok.start[0] - 1, tok.end[0]))
            if tok.type not in (tokenize.COMMENT,):
                prev = tok.type
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return prose


def labelled_lines(src):
    """(line, label) for the non-blank lines of a module, stripped of indentation."""
    prose = prose_lines(src)
    out = []
    for i, line in enumerate(src.splitlines()):
        s = line.strip()
        if len(s) < 4 or s in ('"""', "'''"):
            continue
        out.append((s[:LINE_LEN], 1 if i in prose else 0))
    return out


def pad_lines(lines):
    toks = np.zeros((len(lines), LINE_LEN), dtype=np.int64)
    lengths = np.zeros(len(lines), dtype=np.int64)
    for k, (s, _) in enumerate(lines):
        e = encode(s)
        toks[k, :len(e)] = e
        lengths[k] = len(e)
    labels = np.array([lab for _, lab in lines], dtype=np.int64)
    return toks, lengths, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4000, help="language-model training steps")
    ap.add_argument("--head-steps", type=int, default=600, help="code/prose head training steps")
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-lines", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "gpu_rnn", "data"))
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    train_src = [s for s in (module_source(m) for m in TRAIN_MODULES) if s]
    held_src = [s for s in (module_source(m) for m in HELD_OUT_MODULES) if s]
    corpus = encode("\n".join(flatten(s) for s in train_src))
    print(f"corpus: {len(train_src)} modules, {len(corpus)} characters; vocabulary {len(VOCAB)}",
          file=sys.stderr)

    V, E, H = len(VOCAB), args.embed, args.hidden
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H)
    head = torch.nn.Linear(H, V)
    params = list(emb.parameters()) + list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    data = torch.from_numpy(corpus)
    T, B = args.seq_len, args.batch
    t0 = time.time()
    for it in range(args.steps):
        starts = torch.from_numpy(rng.integers(0, len(corpus) - T - 1, B))
        idx = starts[None, :] + torch.arange(T + 1)[:, None]
        chunk = data[idx]  # (T+1, B)
        out, _ = lstm(emb(chunk[:-1]))
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), chunk[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if it % 250 == 0 or it == args.steps - 1:
            print(f"lm step {it:5d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)", file=sys.stderr)

    # Held-out next-character loss and accuracy.
    held = encode("\n".join(flatten(s) for s in held_src))
    with torch.no_grad():
        x = torch.from_numpy(held[:-1])[:, None]
        out, _ = lstm(emb(x))
        logits = head(out)[:, 0]
        tgt = torch.from_numpy(held[1:])
        lm_loss = torch.nn.functional.cross_entropy(logits, tgt).item()
        lm_acc = (logits.argmax(1) == tgt).float().mean().item()
    print(f"held-out next-character: loss {lm_loss:.3f}, accuracy {lm_acc:.3f}", file=sys.stderr)

    # Many-to-one head on the frozen LSTM: the output at each line's last character.
    def features(toks, lengths):
        with torch.no_grad():
            out, _ = lstm(emb(torch.from_numpy(toks.T.copy())))
            return out[torch.from_numpy(lengths - 1), torch.arange(len(lengths))]

    train_lines = [p for s in train_src for p in labelled_lines(s)]
    held_lines = [p for s in held_src for p in labelled_lines(s)]
    tr_toks, tr_len, tr_lab = pad_lines(train_lines)
    he_toks, he_len, he_lab = pad_lines(held_lines)
    f_tr = torch.cat([features(tr_toks[i:i + 2048], tr_len[i:i + 2048]) for i in range(0, len(tr_len), 2048)])
    f_he = features(he_toks, he_len)
    clf = torch.nn.Linear(H, 2)
    copt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    y_tr = torch.from_numpy(tr_lab)
    for it in range(args.head_steps):
        loss = torch.nn.functional.cross_entropy(clf(f_tr), y_tr)
        copt.zero_grad()
        loss.backward()
        copt.step()
    with torch.no_grad():
        clf_acc = (clf(f_he).argmax(1).numpy() == he_lab).mean()
        base = max(he_lab.mean(), 1 - he_lab.mean())
    print(f"code/prose head: held-out accuracy {clf_acc:.3f} (majority class {base:.3f}), "
          f"{len(train_lines)} training lines", file=sys.stderr)

    # Shipped sample: held-out lines, a fixed random subset in source order.
    pick = np.sort(rng.choice(len(he_lab), size=min(args.sample_lines, len(he_lab)), replace=False))
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "sample_tokens.npy"), he_toks[pick].astype(np.int32))
    np.save(os.path.join(args.out, "sample_lengths.npy"), he_len[pick].astype(np.int32))
    np.save(os.path.join(args.out, "sample_labels.npy"), he_lab[pick].astype(np.int8))

    import gpu_rnn
    from gpu_rnn import data
    modules = {"rnn": gpu_rnn.LSTM.from_torch(lstm), "embedding": gpu_rnn.Embedding.from_torch(emb),
               "head": gpu_rnn.Linear.from_torch(head), "classifier": gpu_rnn.Linear.from_torch(clf)}
    vocab = {"tokens": VOCAB, "labels": LABELS, "line_len": LINE_LEN}
    train_info = {
        "python": sys.version.split()[0], "torch": torch.__version__, "seed": args.seed,
        "steps": args.steps, "seq_len": T, "batch": B, "train_modules": TRAIN_MODULES,
        "held_out_modules": HELD_OUT_MODULES, "heldout_char_loss": round(lm_loss, 4),
        "heldout_char_accuracy": round(lm_acc, 4), "heldout_line_accuracy": round(float(clf_acc), 4),
        "heldout_majority": round(float(base), 4),
    }
    path = os.path.join(args.out, "default.safetensors")
    data.save_model(path, modules, {"vocab": json.dumps(vocab), "training": json.dumps(train_info)})
    os.chmod(path, 0o644)
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) and the sample "
          f"({len(pick)} lines) in {args.out}", file=sys.stderr)
    print(json.dumps(train_info))


if __name__ == "__main__":
    main()
