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


def accepted_options(factory: Callable) -> set[str]:
    """Keyword names ``factory`` accepts explicitly (its ``**kwargs`` do not count: Keras layers
    forward those to ``Layer.__init__``, which rejects anything but its own)."""
    import inspect

    target = factory.__init__ if inspect.isclass(factory) else factory
    names: set[str] = set()
    for param in list(inspect.signature(target).parameters.values()):
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name != "self":
            names.add(param.name)
    if inspect.isclass(factory):  # a subclass may pass its options up to its parents
        for base in factory.__mro__[1:]:
            if base.__module__.startswith("vae_tf") and "__init__" in vars(base):
                names |= accepted_options(base)
    return names


def check_options(factory: Callable, options: dict, what: str, reserved: tuple[str, ...] = ()) -> None:
    """One-line ConfigError naming unknown options and the valid ones."""
    valid = accepted_options(factory) - set(reserved)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"{what} has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(valid)) or 'none'}")
