"""Built-in ``text_classifier``: text in, the top ``{label: probability}`` out, torch only.

TorchServe's text_classifier needs torchtext (a pickled ``Vocab`` in
``source_vocab.pt``); this one needs a plain vocabulary in the archive:

* ``vocab.json``: ``{"token": id, ...}`` or a list of tokens (the id is the
  position), or
* ``source_vocab.pt``: such a dict or list saved with ``torch.save``.

Text is cleaned as TorchServe does (HTML tags dropped, lower case, accents
removed) and split into words (``\\w+``); with ``ngrams: 2`` the word pairs are
added, as torchtext's ``ngrams_iterator`` does. Unknown words become ``<unk>``
when the vocabulary has it and are dropped otherwise. The batch goes to the
model as ``[batch, length]`` token ids padded with ``<pad>`` (or 0), or, with
``input: offsets``, as TorchServe's ``model(ids, offsets)`` for an
``EmbeddingBag`` model. The model returns one logit per class.

Settings (model-config.yaml ``handler:`` section): ``vocab`` (file name),
``topk`` (5), ``ngrams`` (1), ``max_length`` (512 tokens), ``input``
(``padded`` or ``offsets``).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any

from handlers.builtin.rejection import BadInput, RejectingHandler
from handlers.context import Context
from handlers.labels import top_labels
from handlers.modelfile import model_file
from handlers.torch_handler import request_payload

__all__ = ["TextClassifier", "load_vocab", "tokenize"]

VOCAB_FILES = ("vocab.json", "source_vocab.pt")
_TAGS = re.compile(r"<[^>]*>")
_WORDS = re.compile(r"\w+")


class TextClassifier(RejectingHandler):
    """Classifies texts with a vocabulary from the archive."""

    topk = 5

    def initialize(self, context: Context) -> None:
        """Load the model and the vocabulary; read the settings.

        Raises:
            RuntimeError: no vocabulary file, or one that is not a dict or list.
        """
        super().initialize(context)
        settings = context.model_yaml_config.get("handler") or {}
        self.topk = int(settings.get("topk", self.topk))
        self.ngrams = int(settings.get("ngrams", 1))
        self.max_length = int(settings.get("max_length", 512))
        self.input_mode = str(settings.get("input", "padded"))
        if self.input_mode not in ("padded", "offsets"):
            raise ValueError("handler input must be 'padded' or 'offsets'")
        model_dir = str(context.system_properties.get("model_dir") or "")
        self.vocab = load_vocab(model_dir, settings.get("vocab"))
        self.unk_id = self.vocab.get("<unk>")
        self.pad_id = self.vocab.get("<pad>", 0)

    def decode_text(self, row: Any) -> Any:
        """One request as a 1-d tensor of token ids.

        Raises:
            BadInput: not UTF-8 text, or no words in it.
        """
        import torch

        value = request_payload(row)
        if isinstance(value, dict):
            value = value.get("text", value.get("data"))
        if isinstance(value, bytes | bytearray):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput("the text is not UTF-8") from None
        if not isinstance(value, str):
            raise BadInput('expected text, or JSON {"text": "..."}')
        tokens = tokenize(value, self.ngrams)
        if not tokens:
            raise BadInput("there is no word in the text")
        ids = [i for i in (self.vocab.get(t, self.unk_id) for t in tokens) if i is not None]
        return torch.tensor(ids[: self.max_length] or [self.pad_id], dtype=torch.long)

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """Padded ``[batch, length]`` ids, or ``(ids, offsets)`` for ``input: offsets``."""
        import torch

        rows = self.decode_rows(data, self.decode_text)
        if self.input_mode == "offsets":
            lengths = torch.tensor([0] + [len(r) for r in rows[:-1]])
            return torch.cat(rows).to(self.device), lengths.cumsum(0).to(self.device)
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.pad_id)
        return padded.to(self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the model; with offsets, as ``model(ids, offsets)``."""
        if isinstance(data, tuple):
            ids, offsets = data
            return super().inference(ids, offsets, *args, **kwargs)
        return super().inference(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        """Softmax over the logits; the ``topk`` classes per text."""
        return top_labels(data, self.topk, self.mapping)


def tokenize(text: str, ngrams: int = 1) -> list[str]:
    """Clean ``text`` and split it into words, plus word n-grams up to ``ngrams``."""
    text = _TAGS.sub(" ", text).lower()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = _WORDS.findall(text)
    grams = [
        " ".join(words[i : i + n]) for n in range(2, ngrams + 1) for i in range(len(words) - n + 1)
    ]
    return words + grams


def load_vocab(model_dir: str, name: str | None = None) -> dict[str, int]:
    """The archive's vocabulary as ``{token: id}``.

    Args:
        model_dir: where the model's files are.
        name: the file to read; default the first of ``vocab.json``, ``source_vocab.pt``.

    Raises:
        RuntimeError: no such file, or not a dict of ids or list of tokens.
        ValueError: the name leads out of the model directory.
    """
    names = (name,) if name else VOCAB_FILES
    paths = (model_file(model_dir, n, "vocab") for n in names)
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise RuntimeError(
            f"text_classifier needs a vocabulary file in the archive: {' or '.join(names)}"
        )
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as file:
            vocab = json.load(file)
    else:
        vocab = _load_torch_vocab(path)
    if isinstance(vocab, list):
        vocab = {str(token): idx for idx, token in enumerate(vocab)}
    if not (isinstance(vocab, dict) and all(isinstance(v, int) for v in vocab.values())):
        raise RuntimeError(
            f"{os.path.basename(path)} must be a dict of token -> id or a token list"
        )
    return vocab


def _load_torch_vocab(path: str) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise RuntimeError(
            f"{os.path.basename(path)} is not a plain dict or list saved with torch.save "
            f"(a torchtext Vocab needs torchtext): {exc}"
        ) from None
