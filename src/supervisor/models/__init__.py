"""The models layer: what a model is made of on disk, and how it gets there.

The model store and safe unpacking (``archive``), building archives
(``archiver``), remote URLs (``urlpolicy``, ``download``), what a crashed run
left behind (``sweep``), TorchServe's configuration files (``tsconfig``),
canary lists (``canary``), and a registration turned into a ``ModelConfig``
(``registration``). Nothing here starts a process; it imports only the
foundation modules (``errors``, ``config``, ``limits``).
"""

__all__: list[str] = []
