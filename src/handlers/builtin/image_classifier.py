"""Built-in ``image_classifier``: an image in, the top 5 ``{label: probability}`` out.

Images are prepared as ``vision_handler`` describes (ImageNet's resize 256,
crop 224 and normalisation by default); the model returns one logit per class;
the answer is the softmax's ``topk`` most likely classes, named by
``index_to_name.json`` (by index without it), as TorchServe's image_classifier.

Settings (model-config.yaml ``handler:`` section): ``topk`` (5), and those of
``vision_handler``.
"""

from __future__ import annotations

from typing import Any

from handlers.builtin.vision_handler import VisionHandler
from handlers.context import Context
from handlers.labels import top_labels

__all__ = ["ImageClassifier"]


class ImageClassifier(VisionHandler):
    """Classifies images; answers the most likely classes with their probabilities."""

    topk = 5

    def initialize(self, context: Context) -> None:
        """Load the model; read ``topk`` from the handler settings."""
        super().initialize(context)
        settings = context.model_yaml_config.get("handler") or {}
        self.set_max_result_classes(int(settings.get("topk", self.topk)))

    def set_max_result_classes(self, topk: int) -> None:
        """Answer the ``topk`` most likely classes."""
        self.topk = topk

    def get_max_result_classes(self) -> int:
        """How many classes each answer names."""
        return self.topk

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        """Softmax over the logits; the ``topk`` classes per image."""
        return top_labels(data, self.topk, self.mapping)
