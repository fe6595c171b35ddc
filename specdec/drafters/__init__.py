"""Drafters by name; each one plugs into the same decode loop."""
from __future__ import annotations

from specdec.drafters.base import DecodeState, Drafter, NoDrafter
from specdec.drafters.eagle import EagleDrafter, eagle2, eagle2_lookup
from specdec.drafters.lookahead import LookaheadConfig, LookaheadDrafter
from specdec.drafters.medusa import MedusaDrafter, medusa_trigram
from specdec.drafters.ngram import NgramConfig, NgramDrafter

DRAFTERS = {"vanilla": NoDrafter, "ngram": NgramDrafter, "lookahead": LookaheadDrafter,
            "medusa": MedusaDrafter, "medusa-trigram": medusa_trigram, "eagle": EagleDrafter, "eagle2": eagle2,
            "eagle2-lookup": eagle2_lookup}


def make_drafter(name: str, **options) -> Drafter:
    """A drafter by registry name; unknown or not-yet-available names raise with the list of available ones."""
    if name not in DRAFTERS:
        raise ValueError(f"drafter {name!r} is unknown; available: {', '.join(DRAFTERS)}")
    return DRAFTERS[name](**options)


__all__ = ["DRAFTERS", "DecodeState", "Drafter", "EagleDrafter", "eagle2", "MedusaDrafter", "LookaheadConfig", "LookaheadDrafter", "NgramConfig", "NgramDrafter", "NoDrafter", "make_drafter"]
