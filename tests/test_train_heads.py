"""Head training (specdec.training; train/train_heads.py is its command line) on a tiny backbone: labels, falling
loss, resume after a kill, 2-process torchrun,
and trained heads that are accepted yet lossless."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import VOCAB
from specdec.decode import decode
from specdec.drafters import EagleDrafter, MedusaDrafter, eagle3
from specdec.eagle import load_eagle
from specdec.eagle3 import Eagle3Draft
from specdec.medusa import load_medusa
from specdec.training.config import TrainConfig
from specdec.training.data import append_records, head_data, records_with_hidden, sequence_data
from specdec.training.loop import TIMING_START, TIMING_STEPS, fitted_total, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def make_distill(model, path: Path, n: int, seed: int, answer_len: int = 48) -> list[list[int]]:
    """gen_distill.py's format from a tiny backbone: greedy answers to random prompts plus hidden states."""
    g = torch.Generator().manual_seed(seed)
    records, hidden, sequences = [], [], []
    for i in range(n):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        answer = decode(model, prompt, max_new_tokens=answer_len).tokens
        ids = prompt + answer
        model.reset()
        hidden.append(model.forward(torch.tensor(ids[:-1])).hidden)
        records.append({"id": f"s{seed}-{i}", "prompt": prompt, "answer": answer})
        sequences.append(ids)
    append_records(path, f"{seed:05d}.safetensors", records, hidden)
    return sequences


@pytest.fixture(scope="module")
def distilled(tiny_models, tmp_path_factory):
    tiny = tiny_models["llama"]
    model = tiny.load()
    root = tmp_path_factory.mktemp("distill")
    seqs = make_distill(model, root / "train.jsonl", 24, seed=1)
    make_distill(model, root / "eval.jsonl", 4, seed=2)
    return tiny, model, root, seqs


def flags_for(tiny, root: Path, out: Path, *extra: str) -> list[str]:
    """train/train_heads.py's flags for a small run on the tiny backbone's data."""
    return ["--backbone", str(tiny.path), "--data", str(root / "train.jsonl"), "--eval-data", str(root / "eval.jsonl"),
            "--out", str(out), "--num-heads", "3", "--micro-batch", "64", "--lr", "3e-3", "--warmup", "2",
            "--save-every", "2", "--eval-every", "1000", *extra]


def config_for(tiny, root: Path, out: Path, **options) -> TrainConfig:
    """The same small run as a TrainConfig (options override)."""
    small = dict(num_heads=3, micro_batch=64, lr=3e-3, warmup=2, save_every=2, eval_every=1000)
    return TrainConfig(backbone=str(tiny.path), data=[root / "train.jsonl"], eval_data=root / "eval.jsonl", out=out,
                       **{**small, **options})


def test_labels_are_the_backbones_next_tokens(distilled):
    _, _, root, seqs = distilled
    data = head_data(root / "train.jsonl", 3)
    ids = seqs[0]
    start = 4  # any answer position t of the first record: head i's label is token t + 2 + i
    prompt_len = len(ids) - 48
    t = prompt_len - 1 + start
    assert data.labels[start].tolist() == ids[t + 2 : t + 5]
    assert data.context[start].tolist() == ids[t - 1 : t + 2]
    # 47 positions per 48-token answer; the last ones have fewer labels, then the next record starts
    assert data.labels[45, 2] == -100 and data.labels[46].tolist()[1:] == [-100, -100]
    nxt = seqs[1]
    assert data.labels[47].tolist() == nxt[len(nxt) - 48 + 1 : len(nxt) - 48 + 4]


def test_several_data_files_are_read_in_order(distilled):
    _, _, root, _ = distilled
    files = [root / "train.jsonl", root / "eval.jsonl"]
    one, other, both = head_data(files[0], 2), head_data(files[1], 2), head_data(files, 2)
    assert torch.equal(both.labels, torch.cat((one.labels, other.labels)))
    assert torch.equal(both.hidden, torch.cat((one.hidden, other.hidden)))
    assert len(sequence_data(files)) == len(sequence_data(files[0])) + len(sequence_data(files[1]))


def test_recorded_backbone_targets_are_the_default_labels(tmp_path):
    # teacher-forced ShareGPT records carry the backbone's argmax per answer position as "target"
    prompt, answer, target = [5, 6, 7], [8, 9, 10, 11, 12], [20, 21, 22, 23, 24]
    rows = [torch.randn(len(prompt) + len(answer) - 1, 4)]
    append_records(tmp_path / "d.jsonl", "a.safetensors",
                   [{"id": "x", "prompt": prompt, "answer": answer, "target": target}], rows)
    backbone = head_data(tmp_path / "d.jsonl", 2)
    text = head_data(tmp_path / "d.jsonl", 2, labels="data")
    # position t = 2 (last prompt token): head 0 predicts the token after t + 1, head 1 the one after t + 2
    assert backbone.labels[0].tolist() == [21, 22] and text.labels[0].tolist() == [9, 10]
    assert backbone.labels[-1].tolist() == [24, -100] and len(backbone) == 4
    assert torch.equal(backbone.hidden[0], rows[0][2].half())
    # t-1, t, t+1 as in the sequence: the label 21 is the backbone's choice after 8, not after its own 20
    assert backbone.context[0].tolist() == text.context[0].tolist() == [6, 7, 8]


def test_greedy_path_labels_stop_where_the_text_leaves_the_backbones_choices(tmp_path):
    # after 9 the backbone would say 30, the text says 10: labels at or past that point are not drafting's
    prompt, answer, target = [5, 6, 7], [8, 9, 10, 11, 12], [8, 9, 30, 11, 12]
    rows = [torch.randn(len(prompt) + len(answer) - 1, 4)]
    append_records(tmp_path / "d.jsonl", "a.safetensors",
                   [{"id": "x", "prompt": prompt, "answer": answer, "target": target}], rows)
    data = head_data(tmp_path / "d.jsonl", 2, labels="greedy-path")
    assert data.labels.tolist() == [[9, 30], [30, -100], [12, -100]]
    assert torch.equal(data.hidden, rows[0][[2, 3, 5]].half())  # position 4 (token 9 -> 10) is off the path
    assert len(head_data(tmp_path / "d.jsonl", 2)) == 4


def test_loss_falls_and_eval_reports_every_head(distilled, tmp_path):
    tiny, model, root, _ = distilled
    out = train(config_for(tiny, root, tmp_path / "run", epochs=4, lr=1e-2, trigram="0"))
    first, last = (sum(map(sum, out["losses"][s])) / 3 for s in (slice(0, 3), slice(-3, None)))
    assert last < 0.8 * first
    assert len(out["eval"]["top1"]) == 3 and all(0 <= a <= b <= 1
                                                 for a, b in zip(out["eval"]["top1"], out["eval"]["top5"]))
    heads, meta = load_medusa(tmp_path / "run" / "heads", model)
    assert heads.config.trigram == [True, False, False]


def test_resume_after_a_kill_gives_the_same_heads(distilled, tmp_path):
    tiny, model, root, _ = distilled
    whole = train(config_for(tiny, root, tmp_path / "whole", epochs=2, draft_vocab=200))
    part = train(config_for(tiny, root, tmp_path / "cut", epochs=2, draft_vocab=200, max_steps=3))
    assert part["step"] == 3  # not a save step (every 2): the stop itself saves a checkpoint and usable heads
    assert load_medusa(tmp_path / "cut" / "heads", model)[1]["train"]["complete"] is False
    # at step 3
    rest = train(config_for(tiny, root, tmp_path / "cut", epochs=2, draft_vocab=200))
    assert rest["step"] == whole["step"] and len(rest["losses"]) == whole["step"] - 3
    assert torch.allclose(torch.tensor(rest["losses"]), torch.tensor(whole["losses"][3:]), rtol=1e-5)
    a, _ = load_medusa(tmp_path / "whole" / "heads", model)
    b, _ = load_medusa(tmp_path / "cut" / "heads", model)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_torchrun_two_processes(distilled, tmp_path):
    tiny, model, root, _ = distilled
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # medusa under a time budget too: both ranks must stop at the same, shortened, step
    for head, extra, load in (("medusa", ("--micro-batch", "32", "--minutes", "1e-6"), load_medusa),
                              ("eagle", EAGLE_FLAGS, load_eagle)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train" / "train_heads.py"), *flags_for(tiny, root, tmp_path / head, "--epochs", "1", *extra)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 process(es)" in proc.stdout
        _, meta = load(tmp_path / head / ("heads" if head == "medusa" else "eagle"), model)
        assert meta["train"]["processes"] == 2 and meta["train"]["command"].startswith("train/train_heads.py ")
        if head == "medusa":  # 1,128 positions, 64 per step: 17 steps planned, shortened once the timed steps end
            assert meta["train"]["steps"] == TIMING_START + TIMING_STEPS + 1 < 17


def test_the_command_line_refuses_options_of_another_head_kind():
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "train_heads.py"), "--data", "x", "--out", "y",
                           "--rollout-steps", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "rollout_steps (--rollout-steps) must be" in proc.stderr


def test_trained_heads_decode_losslessly(distilled, tmp_path):
    # a random tiny backbone's answers are not learnable enough for acceptance: test_real_model shows tau
    tiny, model, root, seqs = distilled
    train(config_for(tiny, root, tmp_path / "run", epochs=3, trigram="all", draft_vocab=100, trigram_tokens="pending"))
    drafter = MedusaDrafter(model, tmp_path / "run" / "heads", tree=8)
    for ids in seqs[:3]:
        prompt = ids[: len(ids) - 48]
        assert decode(model, prompt, drafter, max_new_tokens=48).tokens == tiny.greedy(prompt, 48)


EAGLE_FLAGS = ("--head", "eagle", "--micro-batch", "4", "--lr", "3e-3", "--eval-depth", "3", "--eval-positions", "64")
EAGLE = dict(head="eagle", micro_batch=4, lr=3e-3, eval_depth=3, eval_positions=64)


def test_eagle_loss_falls_and_eval_reports_every_depth(distilled, tmp_path):
    tiny, model, root, _ = distilled
    out = train(config_for(tiny, root, tmp_path / "run", **EAGLE, epochs=6, draft_vocab=300))
    first, last = (torch.tensor(out["losses"][s]).mean(0) for s in (slice(0, 3), slice(-3, None)))
    assert (last < 0.8 * first).all(), (first, last)  # the feature loss and the token loss
    acc = out["eval"]
    assert len(acc["top1"]) == 3 and acc["positions"] == 64 and acc["chain_tau"] >= 1
    assert all(0 <= a <= b <= 1 for a, b in zip(acc["top1"], acc["top5"]))
    draft, meta = load_eagle(tmp_path / "run" / "eagle", model)
    assert len(draft.vocab_ids) == 300 and meta["eval"]["rank_accuracy"] == acc["rank_accuracy"]
    for tree in ("dynamic", 6):
        drafter = EagleDrafter(model, tmp_path / "run" / "eagle", tree=tree, verify_cost={})
        for ids in seqs_of(distilled)[:3]:
            prompt = ids[: len(ids) - 48]
            assert decode(model, prompt, drafter, max_new_tokens=48).tokens == tiny.greedy(prompt, 48)


def seqs_of(distilled) -> list[list[int]]:
    return distilled[3]


def test_eagle_resume_after_a_kill_gives_the_same_draft(distilled, tmp_path):
    tiny, model, root, _ = distilled
    run = lambda out, **x: train(config_for(tiny, root, tmp_path / out, **EAGLE, epochs=1, **x))  # noqa: E731
    whole = run("whole")
    assert run("cut", max_steps=3)["step"] == 3  # not a save step: the stop saves one, and usable weights
    _, meta = load_eagle(tmp_path / "cut" / "eagle", model)
    assert meta["train"] == {"steps": 3, "of_steps": whole["step"], "complete": False}
    rest = run("cut")
    assert rest["step"] == whole["step"] and len(rest["losses"]) == whole["step"] - 3
    assert torch.allclose(torch.tensor(rest["losses"]), torch.tensor(whole["losses"][3:]), rtol=1e-4)
    a, _ = load_eagle(tmp_path / "whole" / "eagle", model)
    b, _ = load_eagle(tmp_path / "cut" / "eagle", model)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_init_continues_from_saved_weights_and_eagle_trains_steps_ahead(distilled, tmp_path):
    tiny, model, root, _ = distilled
    medusa = train(config_for(tiny, root, tmp_path / "m", epochs=3, lr=1e-2, draft_vocab=200))
    again = train(config_for(tiny, root, tmp_path / "m2", epochs=1, num_heads=5, init=str(tmp_path / "m" / "heads")))
    assert sum(again["losses"][0]) < 0.8 * sum(medusa["losses"][0])  # starts where the first run ended
    heads, _ = load_medusa(tmp_path / "m2" / "heads", model)
    assert heads.config.num_heads == 3 and len(heads.vocab_ids) == 200  # the saved config, not the options
    first = train(config_for(tiny, root, tmp_path / "e", **EAGLE, epochs=3, draft_vocab=300))
    ahead = train(config_for(tiny, root, tmp_path / "e2", **EAGLE, epochs=3, rollout_steps=3,
                             init=str(tmp_path / "e" / "eagle")))
    assert ahead["losses"][-1][1] < ahead["losses"][0][1]
    assert ahead["eval"]["top1"][0] > 0 and len(ahead["eval"]["top1"]) == 3
    drafter = EagleDrafter(model, tmp_path / "e2" / "eagle", tree="dynamic", verify_cost={})
    assert len(drafter.draft.vocab_ids) == 300 and first["eval"]["positions"] == ahead["eval"]["positions"]
    for ids in seqs_of(distilled)[:2]:
        prompt = ids[: len(ids) - 48]
        assert decode(model, prompt, drafter, max_new_tokens=48).tokens == tiny.greedy(prompt, 48)
    with pytest.raises(ValueError, match="rollout"):
        TrainConfig(data=["x"], out="y", rollout_steps=2)  # Medusa has no steps ahead


def test_fitted_total_shortens_a_run_to_its_time_budget():
    assert fitted_total(step=13, total=1000, seconds_per_step=0.5, seconds_left=50) == 113
    assert fitted_total(13, 100, 0.5, 500) == 100  # never longer than planned
    assert fitted_total(13, 100, 0.5, -3) == 14  # over budget already: one more step ends it


def test_minutes_budget_ends_the_run_early_and_a_rerun_keeps_its_length(distilled, tmp_path):
    tiny, model, root, _ = distilled
    config = config_for(tiny, root, tmp_path / "run", epochs=5, minutes=1e-6, max_grad_norm=0.5)
    out = train(config)
    timed = TIMING_START + TIMING_STEPS
    assert out["total_steps"] == out["step"] == timed + 1 < 5 * (1128 // 64)  # 1,128 positions, 64 per step
    _, meta = load_medusa(tmp_path / "run" / "heads", model)
    assert meta["train"]["steps"] == timed + 1
    again = train(config)  # resumes from the final checkpoint: the shortened run is already done
    assert again["step"] == again["total_steps"] == timed + 1 and again["losses"] == []


AUX = [1, 2]  # the tiny backbones have 3 layers: the hidden states entering layers 1 and 2


@torch.no_grad()
def make_distill_aux(model, path: Path, sequences: list[list[int]], answer_len: int = 48) -> None:
    """gen_distill.py --aux-layers 1,2 on a tiny backbone: final hidden states then the fused layers' inputs."""
    records, rows = [], []
    for i, ids in enumerate(sequences):
        model.reset()
        out = model.forward(torch.tensor(ids[:-1]), hidden_layers=tuple(i - 1 for i in AUX))
        rows.append(torch.cat([out.hidden] + [out.layers[i - 1] for i in AUX], dim=-1))
        records.append({"id": f"a{i}", "prompt": ids[: len(ids) - answer_len], "answer": ids[len(ids) - answer_len :]})
    path.with_suffix(".meta.json").write_text(json.dumps({"aux_layers": AUX}))
    append_records(path, "aux.safetensors", records, rows)


@pytest.fixture(scope="module")
def distilled_aux(distilled, tmp_path_factory):
    tiny, model, root, seqs = distilled
    aux_root = tmp_path_factory.mktemp("distill-aux")
    make_distill_aux(model, aux_root / "train.jsonl", seqs)
    eval_seqs = [ids for _, ids, _ in records_with_hidden(root / "eval.jsonl")]
    make_distill_aux(model, aux_root / "eval.jsonl", [t.tolist() for t in eval_seqs])
    return tiny, model, aux_root, seqs


EAGLE3 = dict(head="eagle3", micro_batch=4, lr=3e-3, eval_depth=3, eval_positions=64, draft_vocab=300, rollout_steps=3)


def test_eagle3_loss_falls_eval_reports_every_depth_and_decoding_is_lossless(distilled_aux, tmp_path):
    tiny, model, root, seqs = distilled_aux
    out = train(config_for(tiny, root, tmp_path / "run", **EAGLE3, epochs=6))
    first, last = (torch.tensor(out["losses"][s]).mean(0) for s in (slice(0, 3), slice(-3, None)))
    assert len(first) == 3 and (last < 0.8 * first).all(), (first, last)  # every training-time-test step
    acc = out["eval"]
    assert len(acc["top1"]) == 3 and acc["positions"] == 64 and acc["chain_tau"] >= 1
    draft, meta = load_eagle(tmp_path / "run" / "eagle3", model)
    assert isinstance(draft, Eagle3Draft) and draft.config.aux_layers == AUX and len(draft.vocab_ids) == 300
    assert meta["eval"]["rank_accuracy"] == acc["rank_accuracy"]
    drafter = eagle3(model, tmp_path / "run" / "eagle3", verify_cost={}, lookup=True)
    for ids in seqs[:3]:
        prompt = ids[: len(ids) - 48]
        assert decode(model, prompt, drafter, max_new_tokens=48).tokens == tiny.greedy(prompt, 48)


def test_eagle3_resume_after_a_kill_gives_the_same_draft(distilled_aux, tmp_path):
    tiny, model, root, _ = distilled_aux
    run = lambda out, **x: train(config_for(tiny, root, tmp_path / out, **EAGLE3, epochs=1, **x))  # noqa: E731
    whole = run("whole")
    assert run("cut", max_steps=3)["step"] == 3
    rest = run("cut")
    assert rest["step"] == whole["step"]
    assert torch.allclose(torch.tensor(rest["losses"]), torch.tensor(whole["losses"][3:]), rtol=1e-4)
    a, _ = load_eagle(tmp_path / "whole" / "eagle3", model)
    b, _ = load_eagle(tmp_path / "cut" / "eagle3", model)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), name


def test_eagle3_needs_the_fused_layers_in_its_data(distilled, tmp_path):
    tiny, _, root, _ = distilled
    with pytest.raises(ValueError, match="aux-layer"):
        train(config_for(tiny, root, tmp_path / "run", **EAGLE3, epochs=1))
