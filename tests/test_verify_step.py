"""The padded static-shape verify step: same logits and same greedy output as the eager forward on every family,
one graph per bucket under torch.compile (fullgraph: capturable), and CPU's default left eager."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import CONTEXT, FAMILIES
from specdec.decode import decode
from specdec.drafters import NgramDrafter, make_drafter
from specdec.packed import PackedLinear
from specdec.tree import Tree, shape_from_parents
from specdec.verify_step import VerifyStep, buckets_up_to
from test_decode import HYP, PROMPTS, N, OracleTreeDrafter, check_stats, reference

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def static_runners(tiny_models):
    """One runner per family with a static verify step (its cache grows by the padding slots)."""
    out = {}
    for f in FAMILIES:
        model = tiny_models[f].load()
        out[f] = (model, VerifyStep(model, "static", max_nodes=64))
    return out


def test_buckets():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(60) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(64)[-1] == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_static_logits_equal_the_eager_forward(tiny_models, family):
    model = tiny_models[family].load()
    step = VerifyStep(model, "static", max_nodes=16)
    prompt = PROMPTS[2]
    model.reset()
    model.forward(torch.tensor(prompt))
    model.commit(None, len(prompt))
    parents = [-1, 0, 0, 1, 1, 2, 3]
    shape = shape_from_parents(parents)
    tokens = torch.tensor([5, 9, 11, 13, 17, 19, 23])
    positions = model.length + shape.depth
    eager = model.forward(tokens, positions=positions, tree_mask=shape.mask, hidden_layers=(0,))
    static = step(tokens, positions=positions, tree_mask=shape.mask, hidden_layers=(0,))
    torch.testing.assert_close(static.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(static.hidden, eager.hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(static.layers[0], eager.layers[0], rtol=1e-4, atol=1e-4)
    chain = step(tokens[:3])  # tree_mask None: a causal chain, as in forward
    torch.testing.assert_close(chain.logits, model.forward(tokens[:3]).logits, rtol=1e-4, atol=1e-4)


@HYP
@given(family=st.sampled_from(FAMILIES), p=st.integers(0, len(PROMPTS) - 1), seed=st.integers(0, 2**31),
       max_nodes=st.integers(1, 80), p_true=st.sampled_from([0.0, 0.5, 0.9]))
def test_static_step_is_lossless_on_random_trees(tiny_models, static_runners, family, p, seed, max_nodes, p_true):
    """Trees of 1-80 nodes (the largest bucket is 64: bigger ones go eager), up to the end of the context."""
    model, step = static_runners[family]
    ref = reference(tiny_models, family, p)
    drafter = OracleTreeDrafter(PROMPTS[p] + ref, seed, max_nodes, p_true=p_true, chain_bias=0.4)
    res = decode(model, PROMPTS[p], drafter, max_new_tokens=N, step=step)
    assert res.tokens == ref[:N]
    check_stats(res, N)


def test_static_step_up_to_a_full_context(tiny_models, static_runners):
    model, step = static_runners["llama"]
    prompt = PROMPTS[3]
    n = model.max_seq_len - len(prompt)
    ref = tiny_models["llama"].greedy(prompt, n)
    res = decode(model, prompt, NgramDrafter(), max_new_tokens=n + 10, step=step)
    assert res.tokens == ref and res.stats.stop_reason == "context"


def counted_compile_step(model, max_nodes: int) -> tuple[VerifyStep, list]:
    """A "compile" step whose backend records each graph it is handed (by the shape of its first input), uncompiled."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(tuple(example_inputs[0].shape))
        return gm.forward

    torch._dynamo.reset()
    return VerifyStep(model, "compile", max_nodes=max_nodes, backend=counting_backend), graphs


def test_compiled_step_is_one_graph_per_bucket(tiny_models):
    """fullgraph=True fails on any graph break; a graph per bucket (not per step) shows the shapes are static."""
    model = tiny_models["qwen2"].load()
    step, graphs = counted_compile_step(model, 16)
    ref = reference(tiny_models, "qwen2", 1)
    drafter = OracleTreeDrafter(PROMPTS[1] + ref, seed=3, max_nodes=16, p_true=0.8, chain_bias=0.5)
    res = decode(model, PROMPTS[1], drafter, max_new_tokens=N, step=step)
    assert res.tokens == ref[:N]
    used = {next(b for b in step.buckets if b >= size) for size in res.stats.tree_sizes}
    assert res.stats.steps > len(used) > 1
    assert len(graphs) == len(used), f"{len(graphs)} graphs for buckets {sorted(used)}: a shape is not static"


def test_warm_up_compiles_every_bucket_and_leaves_decoding_unchanged(tiny_models):
    model = tiny_models["llama"].load()
    step, graphs = counted_compile_step(model, 16)
    step.warm_up()
    assert len(graphs) == len(step.buckets) == 5 and model.length == 0
    ref = reference(tiny_models, "llama", 2)
    drafter = OracleTreeDrafter(PROMPTS[2] + ref, seed=5, max_nodes=16, p_true=0.8, chain_bias=0.5)
    assert decode(model, PROMPTS[2], drafter, max_new_tokens=N, step=step).tokens == ref[:N]
    assert len(graphs) == len(step.buckets), "a bucket compiled after warm_up"


@pytest.fixture(scope="module")
def inductor_step(tiny_models):
    """The real "compile" step on the CPU (linears unpacked, inductor with freezing), every bucket compiled."""
    torch._dynamo.reset()
    model = tiny_models["llama"].load()
    step = VerifyStep(model, "compile", max_nodes=8)
    step.warm_up()
    return model, step


def test_inductor_step_equals_the_eager_forward_and_never_recompiles(tiny_models, inductor_step):
    model, step = inductor_step
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    eager = tiny_models["llama"].load()
    shape = shape_from_parents([-1, 0, 0, 1, 2, 2])
    tokens = torch.tensor([5, 9, 11, 13, 17, 19])
    for runner in (eager, model):
        runner.reset()
        runner.forward(torch.tensor(PROMPTS[2]))
        runner.commit(None, len(PROMPTS[2]))
    positions = eager.length + shape.depth
    want = eager.forward(tokens, positions=positions, tree_mask=shape.mask, hidden_layers=(1,))
    got = step(tokens, positions=positions, tree_mask=shape.mask, hidden_layers=(1,))
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.layers[1], want.layers[1], rtol=1e-4, atol=1e-4)
    # a whole generation: trees of 1-8 nodes on a growing context (the attended width changes every 64 slots)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for p in range(len(PROMPTS)):
            ref = reference(tiny_models, "llama", p)
            drafter = OracleTreeDrafter(PROMPTS[p] + ref, seed=p, max_nodes=8, p_true=0.7, chain_bias=0.4)
            res = decode(model, PROMPTS[p], drafter, max_new_tokens=N, step=step)
            assert res.tokens == ref[:N] and len(set(res.stats.tree_sizes)) > 2


@pytest.mark.parametrize("name", ["ngram", "lookahead", "medusa-trigram+lookup", "eagle2+lookup", "eagle3"])
def test_every_drafter_is_lossless_through_the_inductor_step(tiny_models, inductor_step, name):
    from test_eagle import random_draft
    from test_eagle3 import random_eagle3
    from test_medusa import random_heads

    model, step = inductor_step
    weights = {"medusa-trigram+lookup": lambda: random_heads(model, 3, True),
               "eagle2+lookup": lambda: random_draft(model), "eagle3": lambda: random_eagle3(model)}
    drafter = make_drafter(name, model, **({"weights": weights[name]()} if name in weights else {}))
    for p in range(len(PROMPTS)):
        ref = reference(tiny_models, "llama", p)
        assert decode(model, PROMPTS[p], drafter, max_new_tokens=N, step=step).tokens == ref[:N]


def test_more_graphs_than_dynamos_default_limit(tiny_models):
    """Every bucket under several hidden_layers tuples (12 graphs; dynamo allows 8 per function by default), as an
    MT-Bench run with EAGLE and early-exit drafters on one step asks for; a tuple's first call compiles all its
    buckets, so no later call of any size compiles again."""
    torch._dynamo.reset()
    model = tiny_models["llama"].load()
    step = VerifyStep(model, "compile", max_nodes=8, backend="eager")
    step.warm_up()
    with torch.inference_mode():
        for layers in ((0,), (1,)):
            step(torch.tensor([3]), hidden_layers=layers)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for layers in ((), (0,), (1,)):
                for size in step.buckets:
                    step(torch.arange(size) + 3, hidden_layers=layers)


def test_two_models_of_one_shape_keep_their_own_frozen_weights():
    """Freezing bakes weights into the graph: a second model of the same shape (same compiled code) must get a graph
    of its own, not the first one's constants."""
    from specdec.model import ModelArgs, Transformer

    args = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64,
                     norm_eps=1e-5)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, eager = Transformer(args), Transformer(args)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        eager.load_state_dict(model.state_dict())
        for m in (model, eager):
            m.setup_cache(32)
        step = VerifyStep(model, "compile", max_nodes=1)
        with torch.inference_mode():
            for m in (model, eager):
                m.reset()
                m.forward(torch.tensor([1, 2, 3]))
                m.commit(None, 3)
            torch.testing.assert_close(step(torch.tensor([4])).logits, eager.forward(torch.tensor([4])).logits,
                                       rtol=1e-4, atol=1e-4)


def test_int8_backbone_compiles_on_the_same_path(tiny_models):
    """Weight-only int8 linears stay int8 under the compiled step (no unpacking) and decode as they do eagerly."""
    from specdec.backbone import load_transformer
    from specdec.quantize import WeightOnlyInt8Linear

    torch._dynamo.reset()
    eager, model = (load_transformer(tiny_models["qwen2"].path, quantize="int8") for _ in range(2))
    for m in (eager, model):
        m.setup_cache(CONTEXT)
    step = VerifyStep(model, "compile", max_nodes=2)
    assert sum(isinstance(m, WeightOnlyInt8Linear) for m in model.modules()) == 3 * 4 + 1
    ref = decode(eager, PROMPTS[1], None, N).tokens
    drafter = OracleTreeDrafter(PROMPTS[1] + ref, seed=1, max_nodes=2, p_true=0.8, chain_bias=0.5)
    assert decode(model, PROMPTS[1], drafter, N, step=step).tokens == ref


def test_cpu_default_is_eager_and_modes_are_checked(tiny_models):
    model = tiny_models["llama"].load()
    kv = model.kv
    step = VerifyStep(model)
    assert step.mode == "eager" and model.kv is kv, "the CPU path must stay the eager forward"
    ref = reference(tiny_models, "llama", 0)
    assert decode(model, PROMPTS[0], NgramDrafter(), N, step=step).tokens == ref[:N]
    with pytest.raises(ValueError, match="unknown verify mode"):
        VerifyStep(model, "fast")
    with pytest.raises(ValueError, match="CUDA"):
        VerifyStep(model, "graphs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_step_is_lossless(tiny_models, family):
    """On a GPU: the captured step (fp32, so the reference is exact) over random trees == transformers greedy."""
    from specdec.backbone import load_transformer

    model = load_transformer(tiny_models[family].path, device="cuda")
    model.setup_cache(CONTEXT)
    step = VerifyStep(model)
    assert step.mode == "graphs"
    for p in range(len(PROMPTS)):
        ref = reference(tiny_models, family, p)
        drafter = OnCuda(PROMPTS[p] + ref, seed=p, max_nodes=40, p_true=0.8, chain_bias=0.4)
        res = decode(model, PROMPTS[p], drafter, max_new_tokens=N, step=step)
        assert res.tokens == ref[:N]


class OnCuda(OracleTreeDrafter):
    """The oracle's trees, on the GPU."""

    def propose(self, state):
        tree = super().propose(state)
        return Tree(tree.tokens.cuda(), tree.shape.to("cuda"))
