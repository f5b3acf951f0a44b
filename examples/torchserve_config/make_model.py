"""Build the model: a bag of words with one sentiment score per word.

The scores are set by hand here; a trained model would save its own. Writes
``vocab.json`` (word -> row) and ``sentiment.pt`` (the embedding's state dict).
"""

from __future__ import annotations

import json

import torch

SCORES = {
    "good": 1.0,
    "great": 2.0,
    "love": 2.0,
    "fun": 1.0,
    "bad": -1.0,
    "boring": -1.5,
    "awful": -2.0,
    "hate": -2.0,
}


def main() -> None:
    vocab = {word: row for row, word in enumerate(SCORES, start=1)}  # row 0: unknown words
    bag = torch.nn.EmbeddingBag(len(vocab) + 1, 1, mode="sum")
    with torch.no_grad():
        bag.weight.copy_(torch.tensor([[0.0], *([s] for s in SCORES.values())]))
    torch.save(bag.state_dict(), "sentiment.pt")
    with open("vocab.json", "w") as f:
        json.dump(vocab, f, indent=1)
    print(f"wrote sentiment.pt and vocab.json ({len(vocab)} words)")


if __name__ == "__main__":
    main()
