"""Write a key file with new random keys, for ``--keys-from`` or a Kubernetes Secret.

The file has TorchServe's key-file layout (``inference``, ``management`` and ``API``
entries), is created with mode 0600, and an existing file is never overwritten.

Usage: python3 deploy/make_key_file.py deploy/kubernetes/key_file.json
"""

import json
import os
import secrets
import sys


def main(path: str) -> None:
    """Write new keys to ``path``, which must not exist yet."""
    body = {
        kind: {"key": secrets.token_urlsafe(32), "expiration time": None}
        for kind in ("management", "inference")
    }
    body["API"] = {"key": secrets.token_urlsafe(32)}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        sys.exit(f"{path} exists: remove it first to make new keys")
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle, indent=2)
        handle.write("\n")
    print(f"wrote new keys to {path} (mode 0600)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1])
