"""Evaluation: datasets in their released layouts, dataset-level metrics, the published inference protocols.

>>> from segconvert.eval import get_dataset, get_protocol, evaluate
>>> result = evaluate(model, get_dataset("cityscapes", root), get_protocol("pspnet", "cityscapes"))
"""

from __future__ import annotations

from segconvert.eval.datasets import DATASETS, get_dataset
from segconvert.eval.metrics import CityscapesScorer, ConfusionMatrix, EvalResult, SegScorer
from segconvert.eval.protocols import PROTOCOLS, Preprocessing, Runtime, get_protocol, parse_scales
from segconvert.eval.runner import evaluate, score_folder

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "CityscapesScorer",
    "ConfusionMatrix",
    "EvalResult",
    "Preprocessing",
    "Runtime",
    "SegScorer",
    "evaluate",
    "get_dataset",
    "get_protocol",
    "parse_scales",
    "score_folder",
]
