"""Draft-head checkpoints: safetensors + config.json, tied to the backbone they were trained on."""
from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from specdec.model import Transformer

WEIGHTS, CONFIG = "model.safetensors", "config.json"
SHIPPED = Path(__file__).parent / "weights"
_PROBE_ROWS = 8


def backbone_fingerprint(model: Transformer) -> dict:
    """Shapes plus a few lm_head values: enough to tell a checkpoint's backbone from another one."""
    w = model.output.weight
    probe = w[_probe_rows(w).to(w.device), :4].float().flatten().tolist()
    return {"dim": model.args.dim, "vocab_size": model.args.vocab_size, "n_layers": model.args.n_layers,
            "lm_head_probe": probe}


def _probe_rows(w: Tensor) -> Tensor:
    return torch.linspace(0, w.shape[0] - 1, _PROBE_ROWS).long()


def check_backbone(saved: dict, model: Transformer, path: Path) -> None:
    """Raise a clear error when the heads at `path` were trained on another backbone."""
    now = backbone_fingerprint(model)
    for key in ("dim", "vocab_size", "n_layers"):
        if saved.get(key) != now[key]:
            raise ValueError(f"heads at {path} were trained for a backbone with {key}={saved.get(key)}, "
                             f"this backbone has {key}={now[key]}: train heads for it with train/train_heads.py")
    old, new = torch.tensor(saved["lm_head_probe"]), torch.tensor(now["lm_head_probe"])
    tolerance = 2e-3 + 2e-2 * old.abs()  # bf16 rounding passes
    scales = getattr(model.output, "scales", None)
    if scales is not None:  # an int8 lm_head: each value within half its row's quantisation step
        tolerance = tolerance + scales[_probe_rows(scales)].float().cpu().repeat_interleave(4) / 2
    if old.shape != new.shape or not bool(((old - new).abs() <= tolerance).all()):
        raise ValueError(f"heads at {path} were trained for a different backbone (same shapes, other weights): "
                         "train heads for this one with train/train_heads.py")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A fresh directory to fill that replaces `path` when the block ends without error: a half-written directory
    never replaces a good one. Readable by other users (a model directory is often served by another account)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_heads(path: str | Path, kind: str, config: dict, state: dict[str, Tensor], model: Transformer,
               extra: dict | None = None) -> Path:
    """Write heads atomically (see atomic_directory)."""
    with atomic_directory(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS))
        meta = {"kind": kind, "config": config, "backbone": backbone_fingerprint(model), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=1))
    return Path(path)


def read_config(path: str | Path) -> dict:
    """config.json of a heads directory, with clear errors for a missing or corrupt file."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {path}: not a draft-head checkpoint directory")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON (truncated or corrupt?): {e}") from e


def load_heads(path: str | Path, kind: str, model: Transformer) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, weights) of heads of `kind` trained on `model`'s backbone."""
    path = Path(path)
    meta = read_config(path)
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds {meta.get('kind')!r} heads, not {kind!r}")
    check_backbone(meta["backbone"], model, path)
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"cannot read {path / WEIGHTS} (truncated or corrupt?): {e}") from e
    return meta, state


def load_module(path: str | Path, kind: str, model: Transformer, build) -> tuple[torch.nn.Module, dict]:
    """A module of `kind` built from its saved config (build(config)) with its weights loaded; plus metadata."""
    meta, state = load_heads(path, kind, model)
    module = build(meta["config"])
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its config.json: {e}") from e
    return module, meta


def shipped_heads(model: Transformer, variant: str) -> Path:
    """The draft weights shipped in the package for this backbone (matched by fingerprint)."""
    for path in sorted(SHIPPED.glob(f"*/{variant}")):
        try:
            check_backbone(read_config(path)["backbone"], model, path)
            return path
        except ValueError:
            continue
    raise FileNotFoundError(f"no shipped {variant!r} weights for this backbone: train some with "
                            "train/train_heads.py and pass their directory")


def resolve_weights(spec: str | Path, model: Transformer, shipped: tuple[str, ...]) -> Path:
    """The directory behind a weights argument: an existing path, or a bare shipped name (one of `shipped`, no
    folder part). Anything else is an error naming the shipped choices: a missing path never means shipped weights."""
    path = Path(spec)
    if path.exists():
        return path
    if str(spec) in shipped:
        return shipped_heads(model, str(spec))
    close = difflib.get_close_matches(path.name, shipped, n=1)
    hint = f"; did you mean the shipped {close[0]!r}?" if close and path.name != close[0] else ""
    raise FileNotFoundError(f"weights not found: {spec} does not exist. Pass a directory of trained weights or a "
                            f"shipped name ({', '.join(shipped)}){hint}")
