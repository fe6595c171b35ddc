"""The torch twins against a naive reference, and the Triton kernels (interpreted on CPU) against the twins."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import specdec.kernels
from specdec.kernels import accept, commit
from specdec.tree import shape_from_parents

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# triton jit-decorates its own library (tl.min, ...) at import, so interpret mode is fixed for the whole process
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if INTERPRETED else "cuda"
needs_triton_device = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="needs CUDA or TRITON_INTERPRET=1 at startup; test_triton_interpreted runs these in a subprocess",
)


@st.composite
def trees(draw) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, target, paths) of a random, chain, star or root-only tree; small vocabularies so drafts match."""
    k = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "chain", "star"]))
    parents = [-1] + [{"random": draw(st.integers(0, i - 1)), "chain": i - 1, "star": 0}[kind] for i in range(1, k)]
    vocab = draw(st.integers(1, 4))
    target = draw(st.lists(st.integers(0, vocab - 1), min_size=k, max_size=k))
    match = draw(st.sampled_from(["random", "all", "none"]))
    if match == "random":
        tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=k, max_size=k))
    else:
        tokens = [0] + [target[p] + (match == "none") for p in parents[1:]]
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    paths = shape_from_parents(parents).paths
    return torch.tensor(tokens, dtype=dtype), torch.tensor(target, dtype=dtype), paths


@st.composite
def batches(draw) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens [R, k], target [R, k], paths [R, P, L]): 1-4 random trees padded to one size, as a batch step pads
    them (padding nodes: token 0; padding paths: all -1)."""
    rows = [draw(trees()) for _ in range(draw(st.integers(1, 4)))]
    k = max(t.shape[0] for t, _, _ in rows)
    P = max(p.shape[0] for _, _, p in rows)
    L = max(p.shape[1] for _, _, p in rows)
    dtype = rows[0][0].dtype
    tokens = torch.zeros(len(rows), k, dtype=dtype)
    target = torch.zeros(len(rows), k, dtype=dtype)
    paths = torch.full((len(rows), P, L), -1, dtype=torch.long)
    for r, (tok, tgt, pth) in enumerate(rows):
        tokens[r, : tok.shape[0]], target[r, : tgt.shape[0]] = tok, tgt
        paths[r, : pth.shape[0], : pth.shape[1]] = pth
    return tokens, target, paths


@st.composite
def commits(draw) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(kv, starts, accepted, counts): a random batch cache and per row an ascending accepted subset of a window
    after its start, padded with junk past its count."""
    max_len, n_rows = draw(st.integers(1, 40)), draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), 2, n_rows, draw(st.integers(1, 3)), max_len, draw(st.sampled_from([8, 80, 128])))
    kv = torch.randn(shape).to(draw(st.sampled_from(DTYPES)))
    starts, chosen = [], []
    for _ in range(n_rows):
        start = draw(st.integers(0, max_len - 1))
        window = draw(st.integers(1, max_len - start))
        starts.append(start)
        chosen.append(sorted(draw(st.sets(st.integers(0, window - 1), min_size=1))))
    width = max(len(c) for c in chosen)
    accepted = torch.tensor([c + [draw(st.integers(0, 99))] * (width - len(c)) for c in chosen])
    return kv, torch.tensor(starts), accepted, torch.tensor([len(c) for c in chosen])


def naive_accept(tokens: Tensor, target: Tensor, paths: Tensor) -> tuple[int, int, int]:
    """Walk each path while the draft equals the backbone's choice at its parent; keep the first longest."""
    best, best_n = 0, -1
    for p, path in enumerate(paths.tolist()):
        n = 0
        while n + 1 < len(path) and path[n + 1] >= 0 and tokens[path[n + 1]] == target[path[n]]:
            n += 1
        if n > best_n:
            best, best_n = p, n
    return best, best_n, int(target[paths[best, best_n]])


def naive_commit(kv: Tensor, starts: Tensor, accepted: Tensor, counts: Tensor) -> Tensor:
    """A copy of kv where, in row r, slot start+i is taken from the original slot start+accepted[r, i]."""
    out = kv.clone()
    for r, (start, n) in enumerate(zip(starts.tolist(), counts.tolist())):
        for i, a in enumerate(accepted[r, :n].tolist()):
            out[:, :, r, :, start + i] = kv[:, :, r, :, start + a]
    return out


@settings(max_examples=300, deadline=None)
@given(batches())
def test_accept_torch_matches_naive(batch: tuple[Tensor, Tensor, Tensor]) -> None:
    best, n, bonus = accept.greedy_accept_torch(*batch)
    for r, row in enumerate(zip(*batch)):
        assert (int(best[r]), int(n[r]), int(bonus[r])) == naive_accept(*row)


@settings(max_examples=200, deadline=None)
@given(commits())
def test_commit_torch_matches_naive(case: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    expected = naive_commit(*case)
    got = case[0].clone()
    commit.commit_kv_torch(got, *case[1:])
    assert torch.equal(got, expected)


@needs_triton_device
@settings(max_examples=200, deadline=None)
@given(batches())
def test_accept_triton_matches_torch(batch: tuple[Tensor, Tensor, Tensor]) -> None:
    got = accept.greedy_accept_triton(*(t.to(TRITON_DEVICE) for t in batch))
    want = accept.greedy_accept_torch(*batch)
    for g, w in zip(got, want):
        assert (g.shape, g.dtype, g.device.type) == (w.shape, w.dtype, TRITON_DEVICE)
        assert torch.equal(g.cpu(), w)


@needs_triton_device
@settings(max_examples=100, deadline=None)
@given(commits())
def test_commit_triton_matches_torch(case: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    kv, *rest = case
    got, want = kv.to(TRITON_DEVICE), kv.clone()
    commit.commit_kv_triton(got, *(t.to(TRITON_DEVICE) for t in rest))
    commit.commit_kv_torch(want, *rest)
    assert torch.equal(got.cpu(), want)


@pytest.mark.skipif(INTERPRETED, reason="this process already interprets")
def test_triton_interpreted() -> None:
    """The Triton comparisons above, in a fresh process that interprets Triton on CPU tensors."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "triton_matches_torch"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.splitlines()[-1].startswith("2 passed"), run.stdout[-4000:]


@pytest.mark.parametrize("forced", [False, True])
def test_dispatch(monkeypatch: pytest.MonkeyPatch, forced: bool) -> None:
    pytest.importorskip("triton")
    calls: list[str] = []
    monkeypatch.setattr(specdec.kernels, "greedy_accept_triton", lambda *a: calls.append("triton"))
    monkeypatch.setattr(specdec.kernels, "greedy_accept_torch", lambda *a: calls.append("torch"))
    monkeypatch.setattr(specdec.kernels, "commit_kv_triton", lambda *a: calls.append("triton"))
    monkeypatch.setattr(specdec.kernels, "commit_kv_torch", lambda *a: calls.append("torch"))
    if forced:
        monkeypatch.setenv("SPECDEC_TRITON", "1")
    else:
        monkeypatch.delenv("SPECDEC_TRITON", raising=False)
    one = torch.zeros(1, 1, dtype=torch.long)
    specdec.kernels.greedy_accept(one, one, torch.zeros(1, 1, 1, dtype=torch.long))
    specdec.kernels.commit_kv(torch.zeros(1, 2, 1, 1, 1, 8), one[0], one, one[0] + 1)
    assert calls == ["triton" if forced else "torch"] * 2


def test_works_without_triton() -> None:
    """With triton unimportable, specdec.kernels imports and even SPECDEC_TRITON=1 falls back to the twins."""
    code = textwrap.dedent("""
        import sys; sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch, specdec.kernels as k
        best, n, bonus = k.greedy_accept(torch.tensor([[5, 2]]), torch.tensor([[2, 7]]), torch.tensor([[[0, 1]]]))
        assert (int(best[0]), int(n[0]), int(bonus[0])) == (0, 1, 7)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "SPECDEC_TRITON": "1"})


def test_the_kernels_folder_is_harmless_when_the_repo_root_is_on_the_path():
    # from the repo root (a notebook, python -c) transformers' probe for the Hugging Face `kernels` package finds
    # this folder and imports it: that must not import specdec half-way through transformers' own imports
    root = Path(__file__).resolve().parents[1]
    code = "import transformers.activations, specdec; from specdec.kernels import greedy_accept"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
