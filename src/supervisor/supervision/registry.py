"""Models by name and version, with a default version per name and each version's canaries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from supervisor.errors import ModelConflict, ModelNotFound, ModelVersionNotFound
from supervisor.models.canary import Canary
from supervisor.supervision.pool import Pool

__all__ = ["Registry"]


class Registry:
    """Which pool serves ``name`` (and ``version``); the first version is the default."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, Pool]] = {}
        self._default: dict[str, str] = {}
        self._canaries: dict[Pool, tuple[Canary, ...]] = {}

    def add(self, pool: Pool, canaries: Sequence[Canary] = ()) -> None:
        """Register a pool under its model's name and version, with its canaries.

        Raises:
            ModelConflict: that name and version are already registered.
        """
        name, version = pool.config.name, pool.config.version
        versions = self._models.setdefault(name, {})
        if version in versions:
            raise ModelConflict(f"Model version {version} is already registered for model {name}")
        versions[version] = pool
        self._canaries[pool] = tuple(canaries)
        self._default.setdefault(name, version)

    def get(self, name: str, version: str | None = None) -> Pool:
        """The pool for ``name`` at ``version`` (the default version if None).

        Raises:
            ModelNotFound: no model by that name.
            ModelVersionNotFound: the model has no such version.
        """
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        pool = versions.get(version or self._default[name])
        if pool is None:
            raise ModelVersionNotFound(f"Model version: {version} does not exist for model: {name}")
        return pool

    def versions(self, name: str) -> list[Pool]:
        """Every version of ``name``, default first (raises ModelNotFound)."""
        default = self.get(name)
        return [default, *(p for p in self._models[name].values() if p is not default)]

    def canaries(self, pool: Pool) -> tuple[Canary, ...]:
        """The canaries ``pool`` was registered with (checked before it becomes the default)."""
        return self._canaries.get(pool, ())

    def is_default(self, pool: Pool) -> bool:
        """Whether ``pool`` is its model's default version."""
        return self._default.get(pool.config.name) == pool.config.version

    def set_default(self, name: str, version: str) -> None:
        """Make ``version`` the default of ``name`` (raises if unknown)."""
        self.get(name, version)
        self._default[name] = version

    def remove(self, pool: Pool) -> None:
        """Forget ``pool``; a removed default passes to another version."""
        name = pool.config.name
        self._canaries.pop(pool, None)
        versions = self._models.get(name, {})
        if versions.get(pool.config.version) is pool:
            del versions[pool.config.version]
        if not versions:
            self._models.pop(name, None)
            self._default.pop(name, None)
        elif self._default.get(name) == pool.config.version:
            self._default[name] = next(iter(versions))

    def names(self) -> list[str]:
        """Model names, sorted."""
        return sorted(self._models)

    def __iter__(self) -> Iterator[Pool]:
        for name in self.names():
            yield from self._models[name].values()
