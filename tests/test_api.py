"""One way to build a drafter: make_drafter / SpecModel.load take the same option names as the benchmark's
--drafter-option (config fields included), `weights` for trained weights everywhere, and refuse unknown options."""
from __future__ import annotations

import pytest

from specdec.drafters import drafter_names, drafter_options, make_drafter
from test_eagle import random_draft

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["llama"].load()


def test_config_fields_are_drafter_options(model):
    assert {"draft_len", "max_ngram", "min_ngram"} <= drafter_options("ngram")
    assert {"window", "ngram", "guesses"} <= drafter_options("lookahead")
    drafter = make_drafter("ngram", model, draft_len=6)
    assert drafter.config.draft_len == 6
    assert make_drafter("lookahead", model, window=5).cfg.window == 5
    with pytest.raises(ValueError, match="lookahead needs window >= 1"):
        make_drafter("lookahead", model, window=0)


def test_weights_is_the_one_keyword_for_trained_weights(model):
    for name in drafter_names():
        options = drafter_options(name)
        assert not options & {"heads", "draft"}, name
        # early-exit drafts training-free unless given an adapter as weights
        trained = name.removesuffix("+lookup") in ("medusa", "medusa-trigram", "eagle", "eagle2", "eagle3",
                                                   "early-exit", "early-exit-adapter")
        assert ("weights" in options) == trained, name
    drafter = make_drafter("eagle2", model, weights=random_draft(model), depth=2, top_k=2)
    assert (drafter.depth, drafter.top_k) == (2, 2)


@pytest.mark.parametrize("name,options,msg", [("ngram", {"depth": 3}, "takes no option depth; it takes: .*draft_len"),
                                               ("ngram", {"weights": "x"}, "takes no option weights"),
                                               ("eagle2", {"heads": "x"}, "takes no option heads; .*weights"),
                                               ("vanilla", {"tree": 3}, "it takes: none")])
def test_unknown_options_are_refused_with_the_known_ones(model, name, options, msg):
    with pytest.raises(ValueError, match=msg):
        make_drafter(name, model, **options)
