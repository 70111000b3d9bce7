"""Process start-up: what must be decided before Keras / TensorFlow is first imported.

Two callers only: the package root (``fetalhc/__init__.py``) asks
:func:`keras_registration_deferred` whether to register fetalhc's Keras objects now, and the
command line (``fetalhc.cli``) calls :func:`prepare_tensorflow` before a command's work.
Imports no fetalhc module, and neither TensorFlow nor Keras at module level.
"""

from __future__ import annotations

import os
import sys

# the console script's entry module (fetalhc_console.py, outside the package)
CONSOLE_MODULE = "fetalhc_console"

_prepared = False


def keras_registration_deferred() -> bool:
    """True inside the ``fetalhc`` console script, whose entry module marks the process
    before ``fetalhc`` is imported: there ``--help``, ``--version`` and completion must not
    wait for TensorFlow, and the commands that load models register the Keras objects
    through ``fetalhc.models.io``. False everywhere else (``import fetalhc`` registers)."""
    return bool(getattr(sys.modules.get(CONSOLE_MODULE), "COMMAND_LINE", False))


def prepare_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter hidden (CUDA probing such as
    ``failed call to cuInit``, CPU-feature and oneDNN notices), and its Python
    retracing warnings turned off. For the command line only: library users see TensorFlow
    as it is. ``FETALHC_VERBOSE_TF=1`` shows everything.

    The lines are written to file descriptor 2 by C++ code before absl logging is set up
    (import) or when devices are first listed (cuInit), so ``TF_CPP_MIN_LOG_LEVEL`` cannot
    silence all of them: descriptor 2 is pointed at /dev/null for both moments.
    """
    global _prepared
    if _prepared or os.environ.get("FETALHC_VERBOSE_TF"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    # Each saliency method is one traced function per model, so a command running several
    # methods trips TensorFlow's "N out of the last M calls ... retracing" heuristic. The
    # tracing is by design (fetalhc.explain.tracing_counts shows one trace per method).
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe happens here, once per process
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _prepared = True
