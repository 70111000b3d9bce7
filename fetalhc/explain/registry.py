"""The one registry of explanation methods: name -> :class:`~fetalhc.explain.method.Method` subclass.

Every method module registers its class with :func:`register` at import time;
``fetalhc.explain`` imports every module of its package, so a new method module is picked up
without touching any list. The CLI, the callbacks and the evaluation only go through
:func:`get_method` and :func:`available_methods`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

# The registry stores classes without importing :class:`Method`: method modules import the
# registry, never the other way round (no import cycle).
MethodClass = TypeVar("MethodClass", bound=type)

_REGISTRY: dict[str, type] = {}


def register(name: str | None = None) -> Callable[[MethodClass], MethodClass]:
    """Class decorator: register a :class:`Method` subclass under ``name`` (default ``cls.name``).

    Registering a second, different class under a taken name raises ``ValueError`` (re-importing
    the same module, e.g. after ``importlib.reload``, replaces the entry).
    """

    def decorator(cls: MethodClass) -> MethodClass:
        key = name or getattr(cls, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"method class {cls.__qualname__} needs a non-empty `name`")
        existing = _REGISTRY.get(key)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(
                f"explanation method {key!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type:
    """The method class registered under ``name``; unknown names raise a one-line ValueError."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(
        f"unknown explanation method {name!r}; known methods: {', '.join(available_methods())}"
    )
