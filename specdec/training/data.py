"""Training data for draft heads: gen_distill's JSONL + hidden-state files written and read back as answer
positions (Medusa) or whole conversations (EAGLE, EAGLE-3), and the draft vocabulary they suggest."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor


@dataclass
class HeadData:
    """Per answer position t: the backbone's hidden h_t, tokens (t-1, t, t+1), and head i's label (token t+2+i);
    t+1 is the backbone's own next token, as when drafting."""

    hidden: Tensor  # [N, d] float16
    context: Tensor  # [N, 3] int64
    labels: Tensor  # [N, K] int64, -100 past the end of the answer

    def __len__(self) -> int:
        return self.hidden.shape[0]


def append_records(path: str | Path, shard: str, records: list[dict], hidden: list[Tensor] | None) -> None:
    """Append records (id, prompt, answer token ids) to a JSONL file; their hidden states go to one shard file.

    hidden[r] holds the final hidden state at every position of prompt + answer but the last (then, when the file
    records aux_layers, the hidden states entering those layers); bf16 is kept, anything else stored as fp16.
    """
    path = Path(path)
    lines = []
    if hidden is not None:
        feature_dir = path.with_suffix(".features")
        feature_dir.mkdir(parents=True, exist_ok=True)
        save_file({f"row{r}": (h if h.dtype == torch.bfloat16 else h.to(torch.float16)).contiguous()
                   for r, h in enumerate(hidden)}, str(feature_dir / shard))
    for r, rec in enumerate(records):
        lines.append(json.dumps({**rec, "features": {"file": shard, "row": r}} if hidden is not None else rec))
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def read_records(path: str | Path) -> list[dict]:
    """The JSONL records of gen_distill.py, skipping a line cut short by a kill."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path} (make it with train/gen_distill.py)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not records:
        raise ValueError(f"{path} holds no complete records")
    if "features" not in records[0]:
        raise ValueError(f"{path} has no hidden states: make it with train/gen_distill.py --features")
    return records


DataPaths = str | Path | Sequence[str | Path]


def aux_layers_of(path: str | Path) -> list[int]:
    """The layers whose input hidden states a data file keeps beside the final ones (gen_distill.py --aux-layers)."""
    meta = Path(path).with_suffix(".meta.json")
    return json.loads(meta.read_text()).get("aux_layers", []) if meta.is_file() else []


def records_with_hidden(paths: DataPaths, aux: bool = False):
    """(record, prompt + answer ids, final hidden states at every position but the last) for each record of one data
    file or of several, in order; aux=True adds the kept aux-layer states, concatenated [T - 1, len(aux) * d]."""
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        layers = len(aux_layers_of(path))
        if aux and not layers:
            raise ValueError(f"{path} keeps no aux-layer hidden states (EAGLE-3's fused features): make it with "
                             "train/gen_distill.py --aux-layers eagle3")
        feature_dir = path.with_suffix(".features")
        open_files: dict[str, object] = {}
        for rec in read_records(path):
            ids = torch.tensor(rec["prompt"] + rec["answer"])
            f = rec["features"]
            if f["file"] not in open_files:
                open_files[f["file"]] = safe_open(str(feature_dir / f["file"]), "pt")
            rows = open_files[f["file"]].get_tensor(f"row{f['row']}")
            if rows.shape[0] != len(ids) - 1:
                raise ValueError(f"{path}: record {rec['id']} has {rows.shape[0]} hidden states for {len(ids)} tokens")
            final, rest = rows.tensor_split((rows.shape[1] // (1 + layers),), dim=1)
            yield (rec, ids, final, rest) if aux else (rec, ids, final)


LABELS = ("backbone", "greedy-path", "data")


def head_data(path: DataPaths, num_heads: int, max_positions: int | None = None, labels: str = "backbone") -> HeadData:
    """All answer positions of a data file (the first max_positions), labels for num_heads heads.

    labels="backbone": the backbone's own next tokens ("target" where recorded, else the greedy answer itself);
    "greedy-path": those, kept only where the tokens from t+1 to the label's position are the backbone's own
    choices, as when drafting (teacher-forced text strays from them); "data": the answer's tokens."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    hidden, context, label_rows = [], [], []
    total = 0
    for rec, ids, rows in records_with_hidden(path):
        start, end = len(rec["prompt"]) - 1, len(ids) - 2  # h_t for t in [start, end): head 0's label ids[t+2] exists
        if end <= start:
            continue
        nxt = ids[1:].clone()  # nxt[q]: the token after position q
        if labels != "data" and "target" in rec:
            nxt[start:] = torch.tensor(rec["target"])
        t = torch.arange(start, end)
        hidden.append(rows[start:end])
        # the token after t as it stands in the sequence: labels from t + 1 on were computed after it, and when
        # drafting it is the backbone's own choice
        context.append(torch.stack((ids[(t - 1).clamp(min=0)], ids[t], ids[t + 1]), dim=1))
        ahead = t[:, None] + 1 + torch.arange(num_heads)  # head i predicts the token after position t + 1 + i
        valid = ahead < len(nxt)
        if labels == "greedy-path":  # label i needs tokens t+1 .. t+1+i to be the backbone's picks after t .. t+i
            on_path = ids[1:] == nxt
            valid &= on_path[(ahead - 1).clamp(max=len(nxt) - 1)].cummin(dim=1).values
        label_rows.append(torch.where(valid, nxt[ahead.clamp(max=len(nxt) - 1)], -100))
        total += end - start
        if max_positions is not None and total >= max_positions:
            break
    if not hidden:
        raise ValueError(f"{path} has no answer positions to train on")
    label_t = torch.cat(label_rows)
    keep = label_t[:, 0] != -100  # greedy-path drops positions off the path: no head has a label there
    data = HeadData(torch.cat(hidden)[keep], torch.cat(context)[keep], label_t[keep])
    if max_positions is not None:
        data = HeadData(data.hidden[:max_positions], data.context[:max_positions], data.labels[:max_positions])
    return data


@dataclass
class SequenceData:
    """Whole conversations for a feature-level draft (EAGLE): hidden states at every position but the last,
    token ids, prompt lengths, the backbone's own next token after each position, and for EAGLE-3 the fused
    layers' hidden states."""

    hidden: list[Tensor]  # [T_i - 1, d] float16 / bfloat16
    tokens: list[Tensor]  # [T_i] int64
    prompt_len: list[int]
    best: list[Tensor] = field(default_factory=list)  # [T_i - 1]: the backbone's argmax after each position
    aux: list[Tensor] = field(default_factory=list)  # [T_i - 1, k * d] when read with aux=True

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def answer_positions(self) -> int:
        return sum(len(t) - p for t, p in zip(self.tokens, self.prompt_len))


def sequence_data(path: DataPaths, max_positions: int | None = None, aux: bool = False) -> SequenceData:
    """Conversations with at least two answer tokens, up to max_positions answer tokens in all; aux=True also reads
    the fused layers' hidden states (EAGLE-3)."""
    data = SequenceData([], [], [])
    for rec, ids, rows, *rest in records_with_hidden(path, aux):
        if len(rec["answer"]) < 2:
            continue
        data.hidden.append(rows)
        data.tokens.append(ids)
        data.prompt_len.append(len(rec["prompt"]))
        best = ids[1:].clone()
        if "target" in rec:  # teacher-forced text: the backbone's own picks over the answer
            best[len(rec["prompt"]) - 1 :] = torch.tensor(rec["target"])
        data.best.append(best)
        if aux:
            data.aux.append(rest[0])
        if max_positions is not None and data.answer_positions >= max_positions:
            break
    if not data.tokens:
        raise ValueError(f"{path} has no answers to train on")
    return data


def frequent_tokens(labels: Tensor, n: int, vocab_size: int = 0) -> Tensor:
    """The n most frequent tokens among labels (ties by id): the draft vocabulary."""
    counts = torch.bincount(labels[labels >= 0], minlength=max(n, vocab_size))
    return counts.argsort(descending=True, stable=True)[:n]
