"""The model's own files: a name from the manifest or the config must stay in the model.

The supervisor checks the manifest's names when it registers a model; a worker
checks again where it opens one (a directory model can change after it is
registered, and a handler setting such as ``vocab`` is never seen by the
supervisor). Stdlib only, as is everything the worker imports before torch.
"""

from __future__ import annotations

import os

__all__ = ["model_file"]


def model_file(model_dir: str, name: str, what: str) -> str:
    """The real path of ``name`` in ``model_dir``, links followed.

    Args:
        model_dir: the model's directory.
        name: a file name relative to it, from the manifest or the model's config.
        what: the field or setting ``name`` came from, for the message.

    Raises:
        ValueError: ``name`` is absolute, climbs out with ``..`` or is a link that
            leads out of ``model_dir``.
    """
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath((root, path)) != root:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ValueError(f"{what} {shown!r} must stay inside the model directory")
    return path
