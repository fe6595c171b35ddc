"""oneDNN-packed CPU linears: same results as nn.Linear, dense weights still readable, tied ones shared, never saved,
and drafters pack copies, not the modules they are handed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import FAMILIES
from specdec.backbone import load_transformer
from specdec.decode import decode
from specdec.drafters import MedusaDrafter
from specdec.medusa import MedusaConfig, MedusaHeads
from specdec.packed import PackedLinear, can_pack, pack_linears

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not can_pack(torch.zeros(1)), reason="this CPU build has no oneDNN")]

PROMPT = [5, 17, 99, 3, 250, 17, 99, 42]


def test_packed_linear_matches_nn_linear_and_unpacks():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        if not can_pack(torch.zeros(1, dtype=dtype)):
            continue
        lin = nn.Linear(48, 80).to(dtype).requires_grad_(False)
        packed = PackedLinear(lin.weight, lin.bias)
        for rows in (1, 3, 16, 70):
            x = torch.randn(rows, 48, dtype=dtype)
            torch.testing.assert_close(packed(x), lin(x), rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5)
        assert packed(torch.randn(2, 5, 48, dtype=dtype)).shape == (2, 5, 80)
        assert torch.equal(packed.weight, lin.weight) and packed.dense is None
        assert "packed" not in packed.state_dict()


def test_grad_input_falls_back_to_a_differentiable_linear():
    lin = nn.Linear(8, 4).requires_grad_(False)
    packed = PackedLinear(lin.weight, lin.bias)
    x = torch.randn(3, 8, requires_grad=True)
    packed(x).sum().backward()
    torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(3, 8))


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_runners_are_packed_and_decode_like_unpacked_ones(tiny_models, family):
    packed = load_transformer(tiny_models[family].path)
    plain = load_transformer(tiny_models[family].path, pack=False)
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 4 * packed.args.n_layers + 1
    if packed.args.tie_embeddings:  # the lm_head keeps the embedding table, not a copy
        assert packed.output.weight.data_ptr() == packed.tok_embeddings.weight.data_ptr()
    for model in (packed, plain):
        model.setup_cache(64)
    assert decode(packed, PROMPT, max_new_tokens=30).tokens == decode(plain, PROMPT, max_new_tokens=30).tokens


def test_drafters_pack_a_copy_of_the_heads_they_are_given(tiny_models):
    model = tiny_models["llama"].load()
    heads = MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, 2, 1, [True, False])).eval()
    drafter = MedusaDrafter(model, heads, tree=4)
    assert all(type(m) is not PackedLinear for m in heads.modules())  # still trainable
    assert any(type(m) is PackedLinear for m in drafter.heads.modules())
    assert pack_linears(nn.Sequential(nn.Embedding(4, 4))) == 0
