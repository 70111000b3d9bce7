"""What every ``fetalhc`` command shares: the command class, ``--debug`` and ``--progress``;
and what ``predict``, ``explain`` and ``evaluate`` share for a model of your own
(:func:`own_model_options`: ``--output-units``, ``--intensity``).

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


# = fetalhc.models.graph.OUTPUT_UNITS and the names of fetalhc.data.INTENSITIES, which
# import Keras / pandas (so not importable for --help); tests/test_own_model_commands.py
# checks that they agree
OUTPUT_UNITS = ("px", "mm")
INTENSITIES = ("zscore", "0-1", "0-255")


def own_model_options(function):
    """``--output-units mm|px`` and ``--intensity zscore|0-1|0-255``: what a model that is
    not fetalhc's needs said (the command receives ``output_units``, ``None`` when not
    given, and ``intensity``)."""
    function = click.option(
        "--intensity", type=click.Choice(INTENSITIES), default="zscore", show_default=True,
        help="What the images' intensities become for your own model: zscore (per image, "
             "fetalhc's pre-processing), 0-1 or 0-255 (the decoded values as they are, "
             "for a model trained on x/255 or on raw pixels). fetalhc models take zscore "
             "only.")(function)
    return click.option(
        "--output-units", type=click.Choice(OUTPUT_UNITS), default=None,
        help="The unit of the HC output of your own model (a .keras file that is not a "
             "fetalhc model): mm, or px (HC in pixels of its input). A fetalhc model says it "
             "itself.")(function)


def show_progress(progress: bool | None) -> bool:
    """The ``--progress`` choice, or whether stderr is a terminal when none was made."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
