"""Entry point of the ``fetalhc`` console script.

Each sub-command lives in its own module of this package and exposes a click command (or
group) named ``command``. Errors a user can cause (bad files, bad options, bad configs) are
raised by the library as ``ValueError`` / ``FileNotFoundError`` and turned here into a
one-line ``Error: ...`` with a non-zero exit status.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (module in fetalhc.cli, command name). Modules are imported lazily, so `fetalhc --help`
# stays fast and one broken command cannot take the others down.
COMMAND_MODULES: dict[str, str] = {
    "data": "fetalhc.cli.data",
    "train": "fetalhc.cli.train",
    "predict": "fetalhc.cli.predict",
    "explain": "fetalhc.cli.explain",
    "evaluate": "fetalhc.cli.evaluate",
    "demo": "fetalhc.cli.demo",
    "merge": "fetalhc.cli.merge",
}

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError)


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

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
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise click.ClickException(str(message)) from None


def _module_exists(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fetalhc")
def cli():
    """fetalhc: train, explain and evaluate regression CNNs for fetal head circumference."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="fetalhc", standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
