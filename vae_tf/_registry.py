"""A tiny name -> factory registry shared by latents, likelihoods, networks and objectives."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from vae_tf.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps config names to classes or factories; unknown names give a one-line ConfigError."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in or a test that registered it for a while)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def check_options(factory: Callable, options: dict, what: str, reserved: tuple[str, ...] = ()) -> None:
    """Validate ``options`` against ``factory``'s signature (:func:`vae_tf._schema.signature_model`):
    one-line ConfigError for an unknown option (with a "did you mean") or a value of the wrong type.
    ``what`` is the options' config path, e.g. ``model.likelihood``."""
    from vae_tf._schema import check_factory_options

    check_factory_options(factory, options, what, tuple(reserved))
