"""MkDocs hook: the built site loads nothing from another host (no CDN, no web fonts).

After the build, every page's ``link``, ``script``, ``img``, ``iframe`` and ``source`` elements
and every stylesheet's ``url(...)`` and ``@import`` must point into the site itself. Links that a
reader follows (``<a href="https://...">``) are fine. A resource from elsewhere fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REMOTE_ELEMENT = re.compile(
    r"<(?:link|script|img|iframe|source)\b[^>]*?\b(?:href|src|srcset)=[\"']?(?:https?:)?//", re.I
)
REMOTE_CSS = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])(?:https?:)?//", re.I)


def remote_resources(site: Path) -> list[str]:
    """``file: excerpt`` for each resource in ``site`` that comes from another host."""
    found = []
    for path in sorted(site.rglob("*")):
        pattern = {".html": REMOTE_ELEMENT, ".css": REMOTE_CSS}.get(path.suffix)
        if pattern is None:
            continue
        for match in pattern.finditer(path.read_text(errors="replace")):
            found.append(f"{path.relative_to(site)}: {match.group(0)[:80]}")
    return found


def on_post_build(config: Any, **kwargs: Any) -> None:
    """MkDocs event: fail the build if the site would fetch anything from another host."""
    from mkdocs.exceptions import PluginError  # here: the tests import this module without mkdocs

    remote = remote_resources(Path(config["site_dir"]))
    if remote:
        raise PluginError("the site loads resources from other hosts:\n" + "\n".join(remote))
