"""The built-in handlers (tensor_handler, image_classifier, text_classifier), end to end.

Every model, image and vocabulary is made here; nothing is downloaded. Each
answer is checked against the same computation done in the test.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import warnings
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import torch
import trio
from PIL import Image

from handlers.base import load_handler
from handlers.builtin.tensor_handler import output_rows
from handlers.builtin.text_classifier import load_vocab, tokenize
from handlers.builtin.vision_handler import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_box,
    resized_size,
)
from handlers.context import Context
from handlers.runtime import read_manifest
from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import make_mar

LABELS = {str(i): name for i, name in enumerate("abcdefghij")}
SENTIMENTS = {"0": "positive", "1": "negative", "2": "neutral"}
VOCAB = ["<pad>", "<unk>", "good", "great", "bad", "awful", "movie", "good movie"]

MEAN_POOL_MODEL = """
import torch


class MeanPool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(8, 3, padding_idx=0)
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, ids):
        mask = (ids != 0).unsqueeze(-1).float()
        return self.fc((self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))
"""

BAG_MODEL = """
import torch


class Bag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(8, 3, mode="mean")
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))
"""


# Models, files and pictures, all made here


def quiet_jit(function, *args):
    """Call a torch.jit function without its deprecation warning (an error under pytest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return function(*args)


def torchscript_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    quiet_jit(torch.jit.save, quiet_jit(torch.jit.trace, model.eval(), example), buffer)
    return buffer.getvalue()


def image_model() -> torch.nn.Module:
    torch.manual_seed(3)
    pool = torch.nn.AdaptiveAvgPool2d(2)
    return torch.nn.Sequential(pool, torch.nn.Flatten(), torch.nn.Linear(12, 10)).eval()


def linear_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Linear(3, 2).eval()


def text_weights() -> dict[str, torch.Tensor]:
    """Embeddings that make "good"/"great" positive and "bad"/"awful" negative."""
    embedding = torch.zeros(8, 3)
    embedding[1] = torch.tensor([0.0, 0.0, 1.0])  # <unk>: neutral
    embedding[2] = embedding[3] = embedding[7] = torch.tensor([4.0, 0.0, 0.0])
    embedding[4] = embedding[5] = torch.tensor([0.0, 4.0, 0.0])
    embedding[6] = torch.tensor([0.0, 0.0, 0.5])
    return {"embedding.weight": embedding, "fc.weight": torch.eye(3), "fc.bias": torch.zeros(3)}


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def picture(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    width, height = size
    data = bytes(
        (x * seed + y * (seed + 2) + c * 85) % 256
        for y in range(height)
        for x in range(width)
        for c in range(3)
    )
    return Image.frombytes("RGB", size, data).convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def expected_top(
    model: torch.nn.Module, data: bytes, topk: int = 5, resize: int = 256, crop: int = 224
) -> dict[str, float]:
    """What image_classifier should answer, computed here the torchvision way."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = resize / min(width, height)
    size = (resize, int(height * scale)) if width <= height else (int(width * scale), resize)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    image = image.crop((left, top, left + crop, top + crop))
    pixels = torch.tensor(list(image.tobytes()), dtype=torch.float32) / 255
    tensor = pixels.view(crop, crop, 3).permute(2, 0, 1)
    tensor = (tensor - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    with torch.no_grad():
        probs = torch.softmax(model(tensor[None]), dim=1)[0]
    values, classes = probs.topk(topk)
    return {LABELS[str(int(c))]: float(v) for v, c in zip(values, classes, strict=True)}


def expected_sentiment(words: list[str]) -> dict[str, float]:
    """The text model's answer for these (known) words, computed here."""
    embedding = text_weights()["embedding.weight"]
    ids = [VOCAB.index(w) for w in words]
    probs = torch.softmax(embedding[ids].mean(0), dim=0).tolist()
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    return {SENTIMENTS[str(i)]: probs[i] for i in ranked}


def assert_top(answer: dict[str, float], expected: dict[str, float]) -> None:
    """Same labels and probabilities, most likely first (ties in either order)."""
    assert answer == pytest.approx(expected, abs=1e-5)
    values = list(answer.values())
    assert values == sorted(values, reverse=True)


ARCHIVES: dict[str, tuple[dict[str, str], dict[str, str | bytes]]] = {}


def archives() -> dict[str, tuple[dict[str, str], dict[str, str | bytes]]]:
    """name -> (manifest model fields, files) of each built-in model archive."""
    if not ARCHIVES:
        weights = state_bytes(text_weights())
        vocab = json.dumps(VOCAB)
        ARCHIVES.update(
            images=(
                {"handler": "image_classifier", "serializedFile": "model.pt"},
                {
                    "model.pt": torchscript_bytes(image_model(), torch.zeros(1, 3, 224, 224)),
                    "index_to_name.json": json.dumps(LABELS),
                },
            ),
            texts=(
                {"handler": "text_classifier", "serializedFile": "w.pt", "modelFile": "pool.py"},
                {
                    "pool.py": MEAN_POOL_MODEL,
                    "w.pt": weights,
                    "vocab.json": vocab,
                    "index_to_name.json": json.dumps(SENTIMENTS),
                },
            ),
            bags=(
                {"handler": "text_classifier", "serializedFile": "w.pt", "modelFile": "bag.py"},
                {
                    "bag.py": BAG_MODEL,
                    "w.pt": weights,
                    "source_vocab.pt": state_bytes({w: i for i, w in enumerate(VOCAB)}),
                    "index_to_name.json": json.dumps(SENTIMENTS),
                    "model-config.yaml": "handler:\n  input: offsets\n  ngrams: 2\n  topk: 2\n",
                },
            ),
            tensors=(
                {"handler": "tensor_handler", "serializedFile": "linear.pt"},
                {"linear.pt": torchscript_bytes(linear_model(), torch.zeros(1, 3))},
            ),
        )
    return ARCHIVES


# In-process: the handlers as a worker runs them


@pytest.fixture
def imports(monkeypatch, tmp_path):
    """Undo what a test adds to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def loaded(imports, tmp_path):
    """Unpack an archive of ARCHIVES into a directory and load its handler there."""

    def load(name: str, **handler_settings: object):
        model, files = archives()[name]
        directory = tmp_path / name
        (directory / "MAR-INF").mkdir(parents=True)
        for file_name, content in files.items():
            path = directory / file_name
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        manifest = {"runtime": "python", "model": {"modelName": name, **model}}
        (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
        sys.path.insert(0, str(directory))
        yaml = {"handler": handler_settings}
        if name == "bags":
            yaml = {"handler": {"input": "offsets", "ngrams": 2, "topk": 2, **handler_settings}}
        context = Context(name, "1.0", str(directory), 8, None, yaml, read_manifest(str(directory)))
        return load_handler(model["handler"], context), context

    return load


def run(loaded_handler, rows: list) -> tuple[list, list[int]]:
    """Run a batch; the answers and the status of each."""
    handle, context = loaded_handler
    context.start_batch([f"r{i}" for i in range(len(rows))], [{} for _ in rows])
    answers = handle(rows, context)
    return answers, [context.response_status(i) for i in range(len(rows))]


def test_image_classifier_png_jpeg_and_grayscale(loaded):
    images = [
        encoded(picture((320, 240), 1), "PNG"),
        encoded(picture((200, 300), 5), "JPEG"),
        encoded(picture((256, 256), 9, mode="L"), "PNG"),
        encoded(picture((230, 230), 3, mode="P"), "GIF"),
    ]
    answers, statuses = run(loaded("images"), [{"body": data} for data in images])
    assert statuses == [200] * 4
    for answer, data in zip(answers, images, strict=True):
        assert_top(answer, expected_top(image_model(), data))


def test_image_classifier_inputs_and_per_request_errors(loaded):
    png = encoded(picture((300, 260), 2), "PNG")
    prepared = torch.zeros(3, 224, 224).tolist()
    rows = [
        {"data": png},
        {"body": base64.b64encode(png).decode()},
        {"body": b"not an image"},
        {"body": prepared},
        {"body": [[1.0]]},
        {"body": {"what": "ever"}},
    ]
    answers, statuses = run(loaded("images"), rows)
    assert statuses == [200, 200, 400, 200, 400, 400]
    assert_top(answers[0], expected_top(image_model(), png))
    assert answers[1] == answers[0]
    assert answers[2] == {
        "code": 400,
        "type": "BadRequest",
        "message": "the input is not an image Pillow can read (JPEG, PNG...)",
    }
    assert "shape [3, 224, 224]" in answers[4]["message"]
    with torch.no_grad():
        zeros = torch.softmax(image_model()(torch.zeros(1, 3, 224, 224)), dim=1)[0]
    assert max(answers[3].values()) == pytest.approx(float(zeros.max()), abs=1e-6)


def test_image_classifier_settings(loaded):
    png = encoded(picture((120, 90), 4), "PNG")
    handler = loaded("images", resize=64, crop_size=56, topk=3)
    answers, _ = run(handler, [{"body": png}])
    assert_top(answers[0], expected_top(image_model(), png, topk=3, resize=64, crop=56))
    assert handler[0].__self__.get_max_result_classes() == 3


def test_all_requests_rejected(loaded):
    answers, statuses = run(loaded("images"), [{"body": b"x"}, {"body": b"y"}])
    assert statuses == [400, 400]
    assert all(a["type"] == "BadRequest" for a in answers)


def test_text_classifier_padded_batch(loaded):
    rows = [
        {"body": "Great movie!"},
        {"body": b"<p>An AWFUL, bad film</p>"},
        {"body": {"text": "good"}},
        {"body": "   "},
        {"body": b"\xff\xfe"},
        {"body": "plot twist"},
    ]
    answers, statuses = run(loaded("texts"), rows)
    assert statuses == [200, 200, 200, 400, 400, 200]
    assert_top(answers[0], expected_sentiment(["great", "movie"]))
    assert_top(answers[1], expected_sentiment(["<unk>", "awful", "bad", "<unk>"]))
    assert_top(answers[2], expected_sentiment(["good"]))
    assert answers[3]["message"] == "there is no word in the text"
    assert answers[4]["message"] == "the text is not UTF-8"
    assert_top(answers[5], expected_sentiment(["<unk>", "<unk>"]))
    assert next(iter(answers[0])) == "positive"
    assert next(iter(answers[1])) == "negative"


def test_text_classifier_offsets_ngrams_and_torch_vocab(loaded):
    answers, _ = run(loaded("bags"), [{"body": "good movie"}, {"body": "bad movie"}])
    expected = expected_sentiment(["good", "movie", "good movie"])
    assert_top(answers[0], dict(list(expected.items())[:2]))  # topk: 2
    expected = expected_sentiment(["bad", "movie", "<unk>"])  # "bad movie" is unknown
    assert_top(answers[1], dict(list(expected.items())[:2]))


def test_tokenize_and_vocabularies(tmp_path):
    assert tokenize("<b>Crème</b> brûlée, GOOD!") == ["creme", "brulee", "good"]
    assert tokenize("a b c", ngrams=3) == ["a", "b", "c", "a b", "b c", "a b c"]
    (tmp_path / "vocab.json").write_text(json.dumps({"x": 0, "y": 1}))
    assert load_vocab(str(tmp_path)) == {"x": 0, "y": 1}
    (tmp_path / "words.json").write_text(json.dumps(["x", "y"]))
    assert load_vocab(str(tmp_path), "words.json") == {"x": 0, "y": 1}
    (tmp_path / "bad.json").write_text(json.dumps({"x": "zero"}))
    with pytest.raises(RuntimeError, match="dict of token -> id"):
        load_vocab(str(tmp_path), "bad.json")
    torch.save(torch.nn.Linear(1, 1), tmp_path / "pickled.pt")
    with pytest.raises(RuntimeError, match="not a plain dict or list"):
        load_vocab(str(tmp_path), "pickled.pt")
    with pytest.raises(RuntimeError, match="needs a vocabulary file"):
        load_vocab(str(tmp_path / "nowhere"))


def test_tensor_handler_groups_shapes_and_rejects_bad_rows(loaded):
    rows = [
        {"body": [1, 2, 3]},
        {"body": {"data": [4.0, 5.0, 6.0]}},
        {"body": [[1, 2, 3], [0, 0, 1]]},
        {"body": b"[0.5, 0.5, 0.5]"},
        {"body": b"oops"},
        {"body": [1, [2]]},
    ]
    answers, statuses = run(loaded("tensors"), rows)
    assert statuses == [200, 200, 200, 200, 400, 400]
    model = linear_model()
    with torch.no_grad():
        flat = model(torch.tensor([[1.0, 2, 3], [4, 5, 6], [0.5, 0.5, 0.5]])).tolist()
        nested = model(torch.tensor([[1.0, 2, 3], [0, 0, 1]])).tolist()
    got = [answers[0], answers[1], answers[3], answers[2]]
    for got_one, want in zip(got, [*flat, nested], strict=True):
        torch.testing.assert_close(torch.tensor(got_one), torch.tensor(want))
    assert answers[4]["message"] == "the input is not JSON"


def test_tensor_handler_dtype_setting(loaded):
    with pytest.raises(ValueError, match="not a torch dtype"):
        loaded("tensors", dtype="float99")


def test_output_rows_of_tuples_and_dicts():
    a, b = torch.tensor([[1, 2], [3, 4]]), torch.tensor([5, 6])
    assert output_rows(a) == [[1, 2], [3, 4]]
    assert output_rows((a, b)) == [[[1, 2], 5], [[3, 4], 6]]
    assert output_rows({"x": a, "y": b}) == [{"x": [1, 2], "y": 5}, {"x": [3, 4], "y": 6}]


def test_image_geometry_matches_torchvision():
    assert resized_size((320, 240), 256) == (341, 256)
    assert resized_size((200, 300), 256) == (256, 384)
    assert center_crop_box((341, 256), 224) == (58, 16, 282, 240)
    assert center_crop_box((200, 200), 224) == (-12, -12, 212, 212)  # padded, as torchvision


# Real server, .mar archives

LOCAL = "127.0.0.1:0"

CUSTOM_HANDLER = """
import json

from ts.torch_handler.base_handler import BaseHandler


class Custom(BaseHandler):
    def preprocess(self, data):
        if data[0].get("body") == "boom":
            raise ValueError("boom on purpose")
        return super().preprocess(data)

    def get_insights(self, tensor_data, raw_input, target=0):
        return [{"target": target.decode(), "input": raw_input}]  # a form field: bytes

    def describe_handle(self):
        return json.dumps({"inputs": 3, "device": str(self.device)})
"""


@pytest.fixture
async def server(nursery, tmp_path) -> AsyncIterator[tuple[BaseURLs, httpx.AsyncClient]]:
    store = tmp_path / "store"
    names = ("images", "bags", "tensors")
    for name in names:
        model, files = archives()[name]
        make_mar(store, name, None, extra=files, manifest_model=model)
    tensor_model, tensor_files = archives()["tensors"]
    make_mar(
        store,
        "custom",
        CUSTOM_HANDLER,
        module="custom_handler",
        extra=tensor_files,
        manifest_model={"serializedFile": tensor_model["serializedFile"]},
    )
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        model_store=str(store),
        models=tuple(ModelConfig(name=n, url=f"{n}.mar") for n in (*names, "custom")),
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=60) as client:
        for name in (*names, "custom"):
            await wait_ready(client, endpoints, name)
        yield endpoints, client
    shutdown.set()


async def wait_ready(client: httpx.AsyncClient, endpoints: BaseURLs, name: str) -> None:
    with trio.fail_after(60):
        while True:
            [desc] = (await client.get(f"{endpoints.management}/models/{name}")).json()
            if desc["state"] != "LOADING":
                break
            await trio.sleep(0.05)
    assert desc["state"] == "READY", desc


@pytest.mark.slow
async def test_builtin_handlers_named_in_archives(server):
    endpoints, client = server
    predict = f"{endpoints.inference}/predictions"
    jpeg = encoded(picture((320, 240), 6), "JPEG")
    r = await client.post(f"{predict}/images", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert_top(r.json(), expected_top(image_model(), jpeg))
    png = encoded(picture((240, 320), 8), "PNG")
    r = await client.post(f"{predict}/images", files={"data": ("x.png", png, "image/png")})
    assert_top(r.json(), expected_top(image_model(), png))
    r = await client.post(f"{predict}/images", content=b"junk")
    assert r.status_code == 400
    assert r.json()["type"] == "BadRequest"

    r = await client.post(
        f"{predict}/bags", content="good movie", headers={"Content-Type": "text/plain"}
    )
    expected = expected_sentiment(["good", "movie", "good movie"])
    assert_top(r.json(), dict(list(expected.items())[:2]))

    r = await client.post(f"{predict}/tensors", json=[1.0, 2.0, 3.0])
    with torch.no_grad():
        want = linear_model()(torch.tensor([1.0, 2.0, 3.0])).tolist()
    torch.testing.assert_close(torch.tensor(r.json()), torch.tensor(want))


@pytest.mark.slow
async def test_describe_explain_and_errors_of_a_base_handler_subclass(server):
    endpoints, client = server
    r = await client.get(f"{endpoints.management}/models/custom", params={"customized": "true"})
    assert r.json()[0]["customizedMetadata"] == {"inputs": 3, "device": "cpu"}
    r = await client.post(
        f"{endpoints.inference}/explanations/custom",
        files={"data": ("x.json", b"[1.0, 2.0, 3.0]", "application/json")},
        data={"target": "1"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"target": "1", "input": [1.0, 2.0, 3.0]}
    [before] = (await client.get(f"{endpoints.management}/models/custom")).json()[0]["workers"]
    r = await client.post(
        f"{endpoints.inference}/predictions/custom",
        content=b"boom",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 503
    assert "boom on purpose" in r.json()["message"]
    r = await client.post(f"{endpoints.inference}/predictions/custom", json=[1.0, 2.0, 3.0])
    assert r.status_code == 200
    with torch.no_grad():
        want = linear_model()(torch.tensor([1.0, 2.0, 3.0])).tolist()
    torch.testing.assert_close(torch.tensor(r.json()), torch.tensor(want))
    [after] = (await client.get(f"{endpoints.management}/models/custom")).json()[0]["workers"]
    assert (after["pid"], after["incarnation"]) == (before["pid"], before["incarnation"])
