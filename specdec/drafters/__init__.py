"""Drafters by name; each one plugs into the same decode loop."""
from __future__ import annotations

import inspect
from typing import Callable

from specdec.drafters.base import DecodeState, Drafter, NoDrafter
from specdec.drafters.eagle import EagleDrafter, eagle2, eagle3
from specdec.drafters.lookahead import LookaheadConfig, LookaheadDrafter
from specdec.drafters.medusa import MedusaDrafter, medusa_trigram
from specdec.drafters.ngram import NgramConfig, NgramDrafter

DRAFTERS = {"vanilla": NoDrafter, "ngram": NgramDrafter, "lookahead": LookaheadDrafter,
            "medusa": MedusaDrafter, "medusa-trigram": medusa_trigram, "eagle": EagleDrafter, "eagle2": eagle2,
            "eagle3": eagle3}
LOOKUP_SUFFIX = "+lookup"  # "eagle2+lookup": the drafter with a prompt-lookup branch (specdec.drafters.lookup)


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
    return list(DRAFTERS) + [n + LOOKUP_SUFFIX for n, f in DRAFTERS.items() if "lookup" in inspect.signature(f).parameters]


def make_drafter(name: str, **options) -> Drafter:
    """A drafter by name (see drafter_names); an unknown name raises with the list of available ones."""
    factory = drafter_factory(name)
    if name.endswith(LOOKUP_SUFFIX):
        options.setdefault("lookup", True)
    return factory(**options)


__all__ = ["DRAFTERS", "DecodeState", "Drafter", "EagleDrafter", "eagle2", "eagle3", "MedusaDrafter", "LookaheadConfig", "LookaheadDrafter", "NgramConfig", "NgramDrafter", "NoDrafter", "drafter_factory", "drafter_names", "make_drafter"]
