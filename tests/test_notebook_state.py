"""Importing fetalhc in a notebook leaves the notebook alone (#18).

A fresh interpreter chooses a matplotlib backend of its own (here ``svg``, neither Agg nor a
GUI), then imports every fetalhc library module (all but ``fetalhc.cli``, whose process may
set things up for itself) and draws every kind of figure fetalhc draws. Nothing global may
change: the matplotlib backend and rcParams, pyplot's figure list (fetalhc builds
``matplotlib.figure.Figure`` objects, never pyplot figures), Keras' dtype policy / floatx /
image format, the TensorFlow and root loggers, warning filters, numpy's print options and
the environment. The check runs in a subprocess so that the test session's own imports
cannot hide a change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r'''
    import json, logging, os, pkgutil, importlib, sys, warnings, tempfile
    from pathlib import Path

    import matplotlib
    matplotlib.use("svg")            # the notebook's own choice
    import numpy as np
    import keras                     # the notebook imported Keras (and TensorFlow) first
    import tensorflow as tf
    import pandas, scipy.special, PIL.Image  # noqa: F401  their own import-time filters are theirs


    def state():
        return {
            "backend": matplotlib.get_backend(),
            "rcParams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
            "dtype_policy": keras.config.dtype_policy().name,
            "floatx": keras.config.floatx(),
            "image_data_format": keras.config.image_data_format(),
            "tensorflow_logger": logging.getLogger("tensorflow").level,
            "root_logger": logging.getLogger().level,
            "root_handlers": len(logging.getLogger().handlers),
            "logging_disabled": logging.root.manager.disable,
            "warning_filters": [repr(f) for f in warnings.filters],
            "printoptions": repr(np.get_printoptions()),
            "environ": dict(os.environ),
            "run_eagerly": tf.config.functions_run_eagerly(),
        }


    before = state()
    problems = []
    pyplot_loaded = "matplotlib.pyplot" in sys.modules  # Keras 3 itself may import pyplot

    import fetalhc
    modules = []
    for info in pkgutil.walk_packages(fetalhc.__path__, "fetalhc."):
        if info.name == "fetalhc.cli" or info.name.startswith("fetalhc.cli."):
            continue
        modules.append(info.name)
    for name in sorted(modules):
        importlib.import_module(name)
    for name in ("fetalhc.viz.overlay", "fetalhc.viz.curves", "fetalhc.viz.figures",
                 "fetalhc.viz.agreement", "fetalhc.callbacks"):
        if name not in sys.modules:
            problems.append(f"{name} was not imported")
    if not pyplot_loaded and "matplotlib.pyplot" in sys.modules:
        problems.append("importing fetalhc imported matplotlib.pyplot")

    def compare(when):
        after = state()
        for key, value in before.items():
            if after[key] != value:
                if isinstance(value, dict):
                    changed = sorted(k for k in set(value) | set(after[key])
                                     if value.get(k) != after[key].get(k))
                    problems.append(f"{when}: {key} changed at {changed[:10]}")
                elif isinstance(value, list):
                    added = [v for v in after[key] if v not in value]
                    removed = [v for v in value if v not in after[key]]
                    problems.append(f"{when}: {key} gained {added}, lost {removed}")
                else:
                    problems.append(f"{when}: {key} changed from {value!r} to {after[key]!r}")

    compare("after importing fetalhc")

    # draw every kind of figure fetalhc draws, save some, render one for TensorBoard
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from fetalhc.viz import agreement, curves, figures, overlay

    rng = np.random.default_rng(0)
    image, saliency = rng.normal(size=(16, 16)), rng.normal(size=(16, 16))
    contour = np.zeros((16, 16)); contour[4, 4:12] = 1
    curve = (np.arange(4), np.arange(4.0), np.arange(4.0) - 1, np.arange(4.0) + 1)
    made = {
        "overlay_figure": overlay.overlay_figure(image, saliency, contour, title="t", units="mm"),
        "grid_figure": overlay.grid_figure([image, image], {"m": [saliency, saliency]},
                                           contours=[contour, contour]),
        "perturbation_figure": curves.perturbation_figure(
            {"m": {"morf": curve, "lerf": curve, "random": curve}}),
        "deletion_insertion_figure": curves.deletion_insertion_figure(
            {"m": {"deletion": curve, "insertion": curve}}),
        "localisation_boxplot": curves.localisation_boxplot({"m": np.ones(3)}, "ratio"),
        "error_split_bars": curves.error_split_bars(["low", "high"], ["m"], np.ones((1, 2)),
                                                    np.zeros((1, 2)), 2 * np.ones((1, 2)), "mm"),
        "bland_altman_figure": agreement.bland_altman_figure([1.0, 2.0, 3.0], [1.1, 2.2, 2.9]),
        "scatter_figure": agreement.scatter_figure([1.0, 2.0, 3.0], [1.1, 2.2, 2.9]),
    }
    for name, figure in made.items():
        if not isinstance(figure, Figure):
            problems.append(f"{name} returned {type(figure).__name__}, not a Figure")
    if plt.get_fignums():
        problems.append(f"pyplot holds figures {plt.get_fignums()} after drawing")
    rgb = figures.figure_to_rgb(made["grid_figure"])
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.size == 0:
        problems.append(f"figure_to_rgb gave {rgb.dtype} {rgb.shape}")
    with tempfile.TemporaryDirectory() as folder:
        for name in ("overlay_figure", "bland_altman_figure"):
            path = overlay.save_figure(made[name], Path(folder) / f"{name}.png")
            if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                problems.append(f"{name} saved no PNG")
        curves.save_figure(made["perturbation_figure"], Path(folder) / "curves.svg")
        figures.save_figure(made["scatter_figure"], Path(folder) / "scatter.pdf")
    if plt.get_fignums():
        problems.append(f"pyplot holds figures {plt.get_fignums()} after saving")
    compare("after drawing and saving figures")

    print("RESULT " + json.dumps(problems))
''')


def test_importing_fetalhc_and_drawing_leaves_global_state_alone(tmp_path):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env.pop("MPLBACKEND", None)
    completed = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    problems = json.loads(lines[-1][len("RESULT "):])
    assert not problems, "\n".join(problems)
