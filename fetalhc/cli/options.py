"""What every ``fetalhc`` command shares: the command class, ``--debug`` and ``--progress``.

- :class:`Command` (``@click.command(..., cls=Command)``) adds ``--debug`` to a command and,
  before its callback runs, imports TensorFlow with its C++ start-up chatter hidden (see
  :mod:`fetalhc.startup`). Parsing and ``--help`` never import TensorFlow, so every
  command module imports only click, the standard library and TensorFlow-free fetalhc
  modules at its top; the work is imported inside the callback.
- :func:`progress_option` gives ``--progress/--no-progress``; the default (``None``) means
  "bars only when stderr is a terminal" (:func:`show_progress`), so batch logs do not fill
  with carriage returns.
"""

from __future__ import annotations

import sys

import click

DEBUG_KEY = "fetalhc.debug"


def _remember_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


def debug_requested(ctx: click.Context | None) -> bool:
    """True when ``--debug`` was given to the group or the command (context meta is shared
    by the whole chain of contexts)."""
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


def debug_option(function):
    return click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_remember_debug,
        help="Show the full traceback for errors in the input too (internal errors always "
             "show it).")(function)


class Command(click.Command):
    """A fetalhc sub-command: ``--debug``, and TensorFlow imported quietly before the work
    (``needs_tensorflow=False`` for commands that never touch it)."""

    def __init__(self, *args, needs_tensorflow: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.needs_tensorflow = needs_tensorflow
        self.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, is_eager=True,
            callback=_remember_debug,
            help="Show the full traceback for errors in the input too."))

    def invoke(self, ctx: click.Context):
        if self.needs_tensorflow:
            from fetalhc.startup import prepare_tensorflow

            prepare_tensorflow()
        return super().invoke(ctx)


def progress_option(function):
    """``--progress/--no-progress`` (default: bars only when stderr is a terminal); the
    command receives ``progress`` as ``True``, ``False`` or ``None`` — pass it through
    :func:`show_progress`."""
    return click.option(
        "--progress/--no-progress", "progress", default=None,
        help="Show progress bars (default: only when stderr is a terminal).")(function)


def show_progress(progress: bool | None) -> bool:
    """The ``--progress`` choice, or whether stderr is a terminal when none was made."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
