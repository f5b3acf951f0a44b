"""Class labels for classifiers: ``index_to_name.json`` and ``{label: probability}`` rows.

The same helpers as TorchServe's ``ts.utils.util``, so handlers written for it
find them under the names they expect. torch is imported only by ``top_labels``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "list_classes_from_module",
    "load_label_mapping",
    "map_class_to_label",
    "top_labels",
]


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """Read a ``{"class index": "label"}`` JSON file; None (and a log line) if absent.

    A label may also be a list, whose last item is taken (``["n01440764",
    "tench"]`` in ImageNet's file), and ``{"object_type_names": [...]}`` is read as
    a list of labels.

    Raises:
        ValueError: the file is not a mapping of indexes to labels.
    """
    if not os.path.isfile(mapping_file_path):
        print(
            f"{mapping_file_path!r} is missing: answers will name classes by index",
            file=sys.stderr,
        )
        return None
    with open(mapping_file_path, encoding="utf-8") as file:
        mapping = json.load(file)
    if not isinstance(mapping, dict):
        raise ValueError('index_to_name.json must map "class index" to "label"')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): str(name) for index, name in enumerate(names)}
    labels = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError("labels in index_to_name.json must be strings or lists of them")
        labels[str(key)] = label
    return labels


def map_class_to_label(
    probs: list[list[float]],
    mapping: dict[str, str] | None = None,
    lbl_classes: Iterable[Sequence[int]] | None = None,
) -> list[dict[str, float]]:
    """One ``{label: probability}`` dict per row of ``probs``.

    Args:
        probs: per row, the probabilities (of the classes ``lbl_classes`` names).
        mapping: class index (as a string) to label; without it the label is the index.
        lbl_classes: per row, the class index of each probability (default 0, 1, ...).
    """
    if not isinstance(probs, list):
        raise TypeError("convert the probabilities to a list before mapping them to labels")
    if lbl_classes is None:
        width = len(probs[0]) if probs else 0
        lbl_classes = itertools.repeat(range(width), len(probs))
    return [
        {_label(mapping, index): prob for index, prob in zip(classes, row, strict=True)}
        for classes, row in zip(lbl_classes, probs, strict=True)
    ]


def top_labels(logits: Any, topk: int, mapping: dict[str, str] | None) -> list[dict[str, float]]:
    """Per row of ``logits``, the ``topk`` most likely classes as ``{label: probability}``."""
    import torch

    probs = torch.softmax(logits.float(), dim=1)
    values, classes = torch.topk(probs, min(topk, probs.shape[1]), dim=1)
    return map_class_to_label(values.tolist(), mapping, classes.tolist())


def _label(mapping: dict[str, str] | None, index: int) -> str:
    key = str(index)
    return mapping.get(key, key) if mapping is not None else key


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes defined in ``module`` itself (subclasses of ``parent_class`` only)."""
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [cls for cls in classes if issubclass(cls, parent_class)]
    return classes
