"""The gpu-rnn command, run as a user runs it: ``python -m gpu_rnn ...`` in a subprocess."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gpu_rnn
from gpu_rnn import data, reference


def gpu_rnn_cmd(*args, cwd=None):
    env = dict(os.environ)
    env.pop("GPU_RNN_BACKEND", None)
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".numba_cache"))
    return subprocess.run([sys.executable, "-m", "gpu_rnn", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def assert_one_line_error(r, *words):
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    # what a terminal shows: a progress bar redraws itself after carriage returns
    lines = [ln.split("\r")[-1] for ln in r.stderr.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gpu-rnn: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_demo_runs_all_three_architectures():
    r = gpu_rnn_cmd("--help")
    assert r.returncode == 0 and "run" in r.stdout and "generate" in r.stdout
    r = gpu_rnn_cmd()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "many-to-one" in out and "many-to-many" in out and "one-to-many" in out
    # the embedded model was really trained: it beats the majority class at scoring lines and
    # predicts the next character far above chance (1/97)
    m = re.search(r"code or prose\? accuracy ([0-9.]+) on \d+ lines \(always guessing '\w+': ([0-9.]+)\)", out)
    assert m, out
    assert float(m.group(1)) > float(m.group(2)) + 0.1
    m = re.search(r"next-character prediction at every step, accuracy ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0.3, out
    assert re.search(r"\d+ sequences, \d+ steps in [0-9.]+ s: [0-9.]+ sequences/s, \d+ steps/s; backend cpu",
                     r.stderr), r.stderr


@pytest.fixture
def gru_model(tmp_path):
    layer = gpu_rnn.GRU(3, 5, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    head = gpu_rnn.Linear(10, 4, dtype="float64", seed=2)
    clf = gpu_rnn.Linear(10, 2, dtype="float64", seed=3)
    path = tmp_path / "gru.safetensors"
    data.save_model(str(path), {"rnn": layer, "head": head, "classifier": clf})
    return path, layer, head, clf


def test_run_streams_a_memory_mapped_dataset(tmp_path, gru_model, rng):
    path, layer, head, clf = gru_model
    N, T = 37, 6  # several batches of 8, the last one short
    x = rng.standard_normal((N, T, 3))
    np.save(tmp_path / "x.npy", x)
    lengths = rng.integers(1, T + 1, N)
    np.save(tmp_path / "len.npy", lengths)
    r = gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "x.npy"), "--output",
                    str(tmp_path / "y.npy"), "--lengths", str(tmp_path / "len.npy"), "--batch-size", "8",
                    "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    assert "sequences/s" in r.stderr and "steps/s" in r.stderr and "backend cpu" in r.stderr
    assert f"{N} sequences, {int(lengths.sum())} steps" in r.stderr
    y = np.load(tmp_path / "y.npy")
    out, _, _ = reference.forward("GRU", np.swapaxes(x, 0, 1), layer.params(), np.zeros((4, N, 5)), None,
                                  lengths, 2)
    want = np.swapaxes(out, 0, 1) @ head.weight.T + head.bias
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)

    r = gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "x.npy"), "--output",
                    str(tmp_path / "z.npy"), "--lengths", str(tmp_path / "len.npy"), "--batch-size", "16",
                    "--mode", "many-to-one", "--no-progress")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "z.npy")
    last = np.stack([np.concatenate([out[lengths[b] - 1, b, :5], out[0, b, 5:]]) for b in range(N)])
    np.testing.assert_allclose(z, last @ clf.weight.T + clf.bias, rtol=1e-10, atol=1e-12)


def test_run_a_layer_saved_by_layer_save(tmp_path, rng):
    layer = gpu_rnn.LSTM(4, 6, proj_size=3, dtype="float64", seed=5)
    layer.save(str(tmp_path / "lstm.safetensors"))
    x = rng.standard_normal((5, 7, 4))
    np.save(tmp_path / "x.npy", x)
    r = gpu_rnn_cmd("run", "--model", str(tmp_path / "lstm.safetensors"), "--input", str(tmp_path / "x.npy"),
                    "--output", str(tmp_path / "y.npy"), "--mode", "many-to-one", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    out, _, _ = reference.forward("LSTM", np.swapaxes(x, 0, 1), layer.params(), np.zeros((1, 5, 3)),
                                  np.zeros((1, 5, 6)), None, 1)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), out[-1], rtol=1e-10, atol=1e-12)


def test_run_token_input_on_the_embedded_model(tmp_path):
    tok, lengths, _ = data.load_sample()
    tok = tok[:20]
    np.save(tmp_path / "tok.npy", tok.astype(np.int32))
    r = gpu_rnn_cmd("run", "--input", str(tmp_path / "tok.npy"), "--output", str(tmp_path / "s.npy"),
                    "--mode", "many-to-one", "--batch-size", "7")
    assert r.returncode == 0, r.stderr
    model = data.load_default(backend="cpu")
    x = model.get("embedding")(tok)
    want = gpu_rnn.many_to_one(model.rnn, np.swapaxes(x, 0, 1), lengths=lengths[:20],
                               head=model.get("classifier"))
    got = np.load(tmp_path / "s.npy")
    assert got.shape == (20, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_generate_and_info():
    r = gpu_rnn_cmd("generate", "--prompt", "import ", "--steps", "40", "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("import ")
    assert len(r.stdout.rstrip("\n")) >= len("import ") + 30  # 40 characters (some may be newlines)
    assert "steps/s" in r.stderr
    r = gpu_rnn_cmd("info")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\s+cpu\s+yes", r.stdout, re.M), r.stdout
    assert re.search(r"^\s+cuda\s+(yes|no\s+\S+)", r.stdout, re.M), r.stdout  # a reason when it cannot run


def test_bad_input_paths(tmp_path, gru_model):
    path, *_ = gru_model
    missing = str(tmp_path / "nope.npy")
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(path), "--input", missing), "does not exist", missing)
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(tmp_path / "no.safetensors"), "--input", missing),
                          "does not exist")
    np.save(tmp_path / "wide.npy", np.ones((4, 3, 7)))
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "wide.npy")),
                          "I = 3", "(4, 3, 7)")
    np.save(tmp_path / "cplx.npy", np.ones((4, 3, 3), dtype=np.complex64))
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "cplx.npy")),
                          "complex64")
    np.save(tmp_path / "ids.npy", np.ones((4, 3), dtype=np.int64))
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "ids.npy")),
                          "no embedding")
    np.save(tmp_path / "x.npy", np.ones((4, 3, 3)))
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(path), "--input", str(tmp_path / "x.npy"),
                                      "--backend", "tpu"), "--backend", "'tpu'")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert_one_line_error(gpu_rnn_cmd("run", "--model", str(tmp_path / "junk.safetensors"), "--input",
                                      str(tmp_path / "x.npy")), "junk.safetensors")
    np.save(tmp_path / "bad_tok.npy", np.full((2, 5), 500, dtype=np.int64))
    assert_one_line_error(gpu_rnn_cmd("run", "--input", str(tmp_path / "bad_tok.npy")), "500")
    assert_one_line_error(gpu_rnn_cmd("generate", "--steps", "0"), "--steps")


@pytest.mark.skipif(shutil.which("gpu-rnn") is None, reason="the console script is not installed")
def test_console_script():
    r = subprocess.run(["gpu-rnn", "info"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "available:" in r.stdout


def test_seq2seq_example_runs():
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", os.path.join(root, ".numba_cache")))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "seq2seq.py"), "--backend", "cpu",
                        "--steps", "12"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("'def __init__(self'"), r.stdout
