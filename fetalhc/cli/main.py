"""Entry point of the ``fetalhc`` console script (reached through ``fetalhc_console.main``).

Each sub-command lives in its own module of this package and exposes a click command (or
group) named ``command``; the modules are imported only when their command is named (or
listed by ``--help``), and none of them imports TensorFlow before its work starts
(:class:`fetalhc.cli.options.Command`), so ``--help``, ``--version`` and shell completion
answer at once.

Errors: a mistake in the input (bad files, options, configs) is raised by the library as
``ValueError`` / ``FileNotFoundError`` / ... and printed here as one line ``Error: ...``
with exit status 1; ``--debug`` (on the group or any command) shows its traceback instead.
Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from fetalhc.cli.options import debug_option, debug_requested

# command name -> module in fetalhc.cli. Imported lazily, so one broken command cannot take
# the others down and `fetalhc --help` imports only the command modules themselves.
COMMAND_MODULES: dict[str, str] = {
    "data": "fetalhc.cli.data",
    "train": "fetalhc.cli.train",
    "predict": "fetalhc.cli.predict",
    "export": "fetalhc.cli.export",
    "explain": "fetalhc.cli.explain",
    "evaluate": "fetalhc.cli.evaluate",
    "demo": "fetalhc.cli.demo",
    "merge": "fetalhc.cli.merge",
    "study": "fetalhc.cli.study",
    "benchmark": "fetalhc.cli.benchmark",
}

# Exceptions the library raises for mistakes in the user's input. KeyError is not one of
# them: a KeyError escaping the library is a bug and shows its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError)


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use, and which turns user
    errors into one line."""

    def list_commands(self, ctx):
        return [name for name, module in COMMAND_MODULES.items() if _module_exists(module)]

    def get_command(self, ctx, name):
        module_name = COMMAND_MODULES.get(name)
        if module_name is None or not _module_exists(module_name):
            return None
        return importlib.import_module(module_name).command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            if debug_requested(ctx):
                raise
            raise click.ClickException(str(error)) from None


def _module_exists(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fetalhc")
@debug_option
def cli():
    """fetalhc: train, explain and evaluate regression CNNs for fetal head circumference."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="fetalhc", standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
