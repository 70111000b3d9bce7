"""The ``fetalhc`` console script's entry point, kept outside the ``fetalhc`` package.

``import fetalhc`` imports Keras (and so TensorFlow, 6-8 s here) to register fetalhc's
serializable Keras objects, so that ``keras.models.load_model`` works after it. The console
script does not need that for ``--help``, ``--version`` or shell completion: this module,
which Python can import without running ``fetalhc/__init__.py``, marks the process as the
command line before the package is imported, and the package root then leaves the
registration to the commands that load models (``fetalhc.models.io`` registers on import).
See docs/architecture.md, "Start-up".
"""

from __future__ import annotations

import sys

# Read by fetalhc.startup.keras_registration_deferred(); True only inside `fetalhc`.
COMMAND_LINE = False


def main(argv: list[str] | None = None) -> int:
    global COMMAND_LINE
    COMMAND_LINE = True
    from fetalhc.cli.main import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
