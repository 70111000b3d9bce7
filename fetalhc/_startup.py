"""Process start-up details that must run before TensorFlow is first imported."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probing, CPU features) hidden,
    and its Python warnings about retracing turned off.

    Those lines are written to file descriptor 2 before absl logging is initialised, so
    ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them. Only the ``fetalhc`` command does this
    (library users see TensorFlow as usual); ``FETALHC_VERBOSE_TF=1`` shows them there too.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("FETALHC_VERBOSE_TF") or "tensorflow" in sys.modules:
        return
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
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def running_as_cli() -> bool:
    return os.path.basename(sys.argv[0] if sys.argv else "") == "fetalhc"
