"""Bad input gets a clear error (or a warning) and loses nothing: weights paths never fall back to shipped weights,
configs the runner would decode wrongly are refused, and malformed options name what is wrong."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import FAMILIES
from specdec.chat import detect_chat_format
from specdec.decode import decode
from specdec.drafters import MedusaDrafter
from specdec.eagle import load_eagle
from specdec.medusa import MedusaConfig, MedusaHeads, load_medusa
from specdec.model import ModelArgs, Transformer
from specdec.sampling import SamplingConfig
from test_medusa import official_state

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["llama"].load()


@pytest.mark.parametrize("load,spec,closest", [(load_eagle, "runs/eagle/eagle", "eagle"),
                                               (load_eagle, "eagle-3", "eagle3"),
                                               (load_medusa, "runs/typo/medusa", "medusa"),
                                               (load_medusa, "medusa_trigram", "medusa-trigram")])
def test_a_missing_weights_path_is_an_error_naming_the_shipped_choices(model, load, spec, closest):
    # a path whose last folder is a shipped name used to load the shipped weights silently
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        load(spec, model)
    assert f"'{closest}'" in str(e.value) or closest in str(e.value).split("(")[1]


def test_bare_shipped_names_still_mean_shipped_weights(model):
    with pytest.raises(FileNotFoundError, match="no shipped 'eagle3'"):  # the tiny backbone has none shipped
        load_eagle("eagle3", model)


def test_rope_types_the_static_table_cannot_express_are_refused():
    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                max_position_embeddings=64)
    rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0],
            "original_max_position_embeddings": 16}
    model = Transformer(ModelArgs.from_hf({**base, "model_type": "llama", "rope_parameters": rope}))
    with pytest.raises(ValueError, match="longrope"):
        model.setup_cache(8)


def test_malformed_options_name_the_problem(model):
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="drafts nothing"):
        MedusaDrafter(model, MedusaHeads(MedusaConfig(model.args.dim, model.args.vocab_size, 2)), tree="[]")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(model, [5, model.args.vocab_size + 3], max_new_tokens=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(model, [-1, 5], max_new_tokens=4)


def test_official_medusa_files_that_do_not_match_their_config(model, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 4, "medusa_num_layers": 1}))
    save_file(official_state(model, 2, 1), str(tmp_path / "medusa_lm_head.safetensors"))
    with pytest.raises(ValueError, match="claims 4 heads.*2.0.linear.weight"):
        load_medusa(tmp_path, model)
    state = official_state(model, 2, 1)
    state["0.0.linear.weight"] = torch.zeros(model.args.dim + 2, model.args.dim)
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1}))
    save_file(state, str(tmp_path / "medusa_lm_head.safetensors"))
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*do not fit"):
        load_medusa(tmp_path, model)


def test_a_tokenizer_without_a_chat_template_is_said_once(tmp_path):
    class Plain:
        chat_template = None

    with pytest.warns(UserWarning, match="no chat template"):
        assert detect_chat_format(Plain(), tmp_path) == "raw"


def test_every_family_refuses_out_of_vocabulary_ids(tiny_models):
    for family in FAMILIES:
        m = tiny_models[family].load()
        with pytest.raises(ValueError, match="outside the vocabulary"):
            decode(m, [m.args.vocab_size], max_new_tokens=2)
