"""Drafters by name; each one plugs into the same decode loop."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from specdec.drafters.base import DecodeState, Drafter, NoDrafter
from specdec.drafters.eagle import EagleDrafter, eagle2, eagle3
from specdec.drafters.early_exit import EarlyExitDrafter, early_exit_adapter
from specdec.drafters.lookahead import LookaheadConfig, LookaheadDrafter
from specdec.drafters.medusa import MedusaDrafter, medusa_trigram
from specdec.drafters.ngram import NgramConfig, NgramDrafter
from specdec.model import Transformer

DRAFTERS = {"vanilla": NoDrafter, "ngram": NgramDrafter, "lookahead": LookaheadDrafter,
            "medusa": MedusaDrafter, "medusa-trigram": medusa_trigram, "eagle": EagleDrafter, "eagle2": eagle2,
            "eagle3": eagle3, "early-exit": EarlyExitDrafter, "early-exit-adapter": early_exit_adapter}
LOOKUP_SUFFIX = "+lookup"  # "eagle2+lookup": the drafter with a prompt-lookup branch (specdec.drafters.lookup)
WEIGHT_PARAMS = ("heads", "draft", "adapter")  # the factories' name for trained weights: Medusa heads, an EAGLE draft,
# an early-exit adapter


def drafter_factory(name: str) -> Callable[..., Drafter]:
    """The constructor behind a drafter name (a "+lookup" name: its base drafter's), or a clear error."""
    base = name.removesuffix(LOOKUP_SUFFIX)
    if base not in DRAFTERS:
        raise ValueError(f"drafter {name!r} is unknown; available: {', '.join(drafter_names())}")
    if base != name and "lookup" not in inspect.signature(DRAFTERS[base]).parameters:
        raise ValueError(f"drafter {base!r} takes no prompt-lookup branch; ones that do: "
                         f"{', '.join(n for n in drafter_names() if n.endswith(LOOKUP_SUFFIX))}")
    return DRAFTERS[base]


def drafter_names() -> list[str]:
    """Every drafter name: the registry's, then "+lookup" for those that score their candidates."""
    return list(DRAFTERS) + [n + LOOKUP_SUFFIX for n, f in DRAFTERS.items()
                             if "lookup" in inspect.signature(f).parameters]


def drafter_options(name: str) -> set[str]:
    """The keywords a drafter takes (its config's fields for config-driven drafters), `weights` for those that load
    trained weights; the same names serve make_drafter, SpecModel.load and the benchmark's --drafter-option."""
    factory = drafter_factory(name)
    params = inspect.signature(factory).parameters
    names = {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and hasattr(factory, "config_class"):
        names |= {f.name for f in dataclasses.fields(factory.config_class)}
    if names & set(WEIGHT_PARAMS):
        names = (names - set(WEIGHT_PARAMS)) | {"weights"}
    return names


def make_drafter(name: str, model: Transformer | None = None, **options) -> Drafter:
    """A drafter by name (see drafter_names) for `model`, with its own options (see drafter_options): `weights` are
    trained heads or a draft, a directory or a shipped name. An unknown name or option raises, listing the known."""
    factory = drafter_factory(name)
    known = drafter_options(name)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"drafter {name!r} takes no option {', '.join(unknown)}; it takes: "
                         f"{', '.join(sorted(known - {'model'})) or 'none'}")
    if "weights" in options:
        options[next(p for p in WEIGHT_PARAMS if p in inspect.signature(factory).parameters)] = options.pop("weights")
    if "model" in known:
        options["model"] = model
    if name.endswith(LOOKUP_SUFFIX):
        options.setdefault("lookup", True)
    return factory(**options)


__all__ = ["DRAFTERS", "DecodeState", "Drafter", "EagleDrafter", "EarlyExitDrafter", "eagle2", "eagle3",
           "early_exit_adapter", "MedusaDrafter", "LookaheadConfig",
           "LookaheadDrafter", "NgramConfig", "NgramDrafter", "NoDrafter", "drafter_factory", "drafter_names",
           "drafter_options", "make_drafter"]
