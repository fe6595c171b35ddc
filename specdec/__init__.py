"""specdec: lossless speculative decoding for Llama-family chat models, one loop with pluggable drafters."""
from specdec.backbone import Backbone, load_backbone
from specdec.decode import DecodeResult, DecodeStats, decode
from specdec.drafters import (
    Drafter,
    LookaheadConfig,
    LookaheadDrafter,
    NgramConfig,
    NgramDrafter,
    NoDrafter,
    make_drafter,
)
from specdec.model import ModelArgs, Transformer
from specdec.sampling import SamplingConfig
from specdec.speculative import EagleModel, Generation, LookaheadModel, MedusaModel, NgramModel, SpecModel
from specdec.tree import Tree, TreeShape, parse_choices, shape_from_parents

__all__ = [
    "Backbone", "DecodeResult", "EagleModel", "Generation", "LookaheadConfig", "LookaheadDrafter", "LookaheadModel",
    "MedusaModel", "NgramModel", "SpecModel", "DecodeStats", "Drafter", "ModelArgs", "NgramConfig", "NgramDrafter",
    "NoDrafter",
    "SamplingConfig", "Transformer", "Tree", "TreeShape", "decode", "load_backbone", "make_drafter", "parse_choices",
    "shape_from_parents",
]
