"""Encoder-decoder (sequence to sequence) with gpu_rnn, in a few lines.

The encoder reads a batch of prompts of different lengths in one call (``lengths`` gives
packed-sequence semantics, so each prompt's final state is taken at its own last character);
that state seeds the decoder, which generates greedily through a head and an embedding, one
token fed back per step (on CUDA the whole decoding loop is one kernel launch).

Here encoder and decoder are the embedded default model (a character LSTM trained on the
Python standard library), so the decoder continues each prompt. With your own models, use two
layers: ``enc = gpu_rnn.GRU.from_torch(torch_encoder)``, ``dec = gpu_rnn.GRU.from_torch(torch_decoder)``.

    python examples/seq2seq.py [--backend cpu|cuda] [--steps 60]
"""
import argparse

import numpy as np

import gpu_rnn
from gpu_rnn import data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()

    model = data.load_default(backend=args.backend)
    enc = dec = model.rnn
    emb, head = model.get("embedding"), model.get("head")
    tokens = model.vocab["tokens"]

    prompts = ["def __init__(self", "import ", "Return the number of", "for i in range(len("]
    ids = [data.encode(p, tokens) for p in prompts]
    B, T = len(ids), max(len(i) for i in ids)
    batch = np.zeros((T, B), np.int64)                 # (T, B) token ids, 0-padded
    for b, i in enumerate(ids):
        batch[:len(i), b] = i
    lengths = np.array([len(i) - 1 for i in ids])     # the encoder reads all but the last character

    # encoder: one call over the padded batch; its final state is each prompt's own last state
    _, state = enc(emb(batch[:-1]), lengths=lengths)
    # decoder: seeded by the encoder's state, starts from each prompt's last character
    last = np.array([i[-1] for i in ids])
    _, _, out_tokens = gpu_rnn.generate(dec, last, args.steps, state, head=head, embedding=emb)

    for b, p in enumerate(prompts):
        text = data.decode(out_tokens[:, b], tokens)
        print(f"{p!r:26} -> {text.splitlines()[0] if text.strip() else text!r}")


if __name__ == "__main__":
    main()
