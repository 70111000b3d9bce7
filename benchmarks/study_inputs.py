"""What the study benchmarks share: the command-line options naming a model and its images,
and loading them (the model, its first ``--images`` rows of ``--split``, their arrays)."""

from __future__ import annotations

import argparse
import os


def study_parser(description: str, images: int, split: str = "val+test"
                 ) -> argparse.ArgumentParser:
    """``--model``, ``--data``, ``--split``, ``--images`` (and whatever the caller adds)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="models/hc18-plain-mae")
    parser.add_argument("--data", default=os.environ.get("FETALHC_HC18", "../shared/data/hc18"))
    parser.add_argument("--split", default=split)
    parser.add_argument("--images", type=int, default=images)
    return parser


def load_study_inputs(args, with_annotation: bool = False):
    """``(run, model, rows, arrays)`` of ``args.model`` on the first ``args.images`` images
    of ``args.split`` (a :class:`fetalhc.training.ModelSplit`, the Keras model, the index
    rows, :func:`fetalhc.data.load_arrays` of them)."""
    import fetalhc
    from fetalhc.data import load_arrays
    from fetalhc.training import resolve_model_split

    run = resolve_model_split(args.model, args.data, args.split)
    model = fetalhc.load_model(run.model_file)
    rows = run.index.head(args.images)
    return run, model, rows, load_arrays(rows, image_size=run.image_size,
                                         with_annotation=with_annotation)
