"""Built-in ``vision_handler``: images in (JPEG, PNG... via Pillow), tensors to the model.

Each image is decoded with Pillow, converted to RGB, its shorter side resized
to ``resize`` pixels (bilinear), center-cropped to ``crop_size`` square, scaled
to [0, 1] and normalised with ``mean``/``std`` per channel: what TorchServe's
ImageNet pipeline does with torchvision, here with Pillow and torch ops. A
request may also be base64 text of an image, or an already prepared
``[3, crop_size, crop_size]`` nested list (used as is, as TorchServe does).

Settings (model-config.yaml ``handler:`` section): ``resize`` (256),
``crop_size`` (224), ``mean`` and ``std`` (ImageNet's).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from handlers.builtin.rejection import BadInput, RejectingHandler
from handlers.context import Context
from handlers.torch_handler import request_payload

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VisionHandler", "center_crop_box", "resized_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionHandler(RejectingHandler):
    """Decodes and normalises images; the model's output is returned as lists."""

    resize = 256
    crop_size = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def initialize(self, context: Context) -> None:
        """Load the model; read the image settings."""
        from PIL import Image

        super().initialize(context)
        settings = context.model_yaml_config.get("handler") or {}
        self.resize = int(settings.get("resize", self.resize))
        self.crop_size = int(settings.get("crop_size", self.crop_size))
        self.mean = tuple(float(v) for v in settings.get("mean", self.mean))
        self.std = tuple(float(v) for v in settings.get("std", self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("handler mean and std need one value per channel (3)")
        if context.system_properties.get("limit_max_image_pixels") is False:
            Image.MAX_IMAGE_PIXELS = None

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """The accepted images as one ``[batch, 3, crop, crop]`` tensor."""
        import torch

        return torch.stack(self.decode_rows(data, self.decode_image)).to(self.device)

    def decode_image(self, row: Any) -> Any:
        """One request as a normalised ``[3, crop, crop]`` float tensor.

        Raises:
            BadInput: not an image Pillow can read, nor a prepared tensor.
        """
        value = request_payload(row)
        if isinstance(value, str):
            try:
                value = base64.b64decode(value)
            except binascii.Error:
                raise BadInput("text input must be a base64-encoded image") from None
        if isinstance(value, list):
            return self._prepared(value)
        if not isinstance(value, bytes | bytearray):
            raise BadInput("expected image bytes (JPEG, PNG...)")
        return self.image_tensor(_open_image(bytes(value)))

    def image_tensor(self, image: Any) -> Any:
        """Resize, crop, scale and normalise a Pillow image into a tensor."""
        import torch
        from PIL import Image

        image = image.convert("RGB")
        size = resized_size(image.size, self.resize)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        image = image.crop(center_crop_box(image.size, self.crop_size))
        width, height = image.size
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        tensor = pixels.view(height, width, 3).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def _prepared(self, value: list[Any]) -> Any:
        import torch

        try:
            tensor = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise BadInput("a prepared image must be a nested list of numbers") from None
        expected = (3, self.crop_size, self.crop_size)
        if tuple(tensor.shape) != expected:
            raise BadInput(f"a prepared image must have shape {list(expected)}")
        return tensor


def _open_image(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError:
        raise BadInput("the image has too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadInput("the input is not an image Pillow can read (JPEG, PNG...)") from None
    return image


def resized_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shorter``, keeping the aspect ratio."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a centered ``crop`` square."""
    width, height = size
    left = round((width - crop) / 2.0)
    top = round((height - crop) / 2.0)
    return left, top, left + crop, top + crop
