"""What a command's ``--model`` and ``--split`` name: a run folder's split, or what a bare
``.keras`` file allows (:func:`resolve_model_split`), and the input size of a loaded model
(:func:`model_input_size`), and the model those commands run (:func:`load_command_model`:
an exported model's network with its own pre-processing). The one place for that decision:
``predict``, ``explain`` and ``evaluate`` all resolve their inputs here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fetalhc.data.index import PARTS
from fetalhc.training.config import ALL_IMAGES, DATA_SPLITS
from fetalhc.training.run_folder import CONFIG_FILE, MODEL_FILE, Run, load_run, run_split_index
from fetalhc.training.setup import crop_margin_of


@dataclass(frozen=True)
class ModelSplit:
    """What a command's ``--model`` and ``--split`` resolve to (:func:`resolve_model_split`).

    ``image_size``: the run's input size, or ``None`` for a bare model file (read it from
    the loaded model with :func:`model_input_size`). ``hc_range_mm``: the training split's
    reference HC range (mm) for the outside-range reliability flag
    (:func:`fetalhc.models.reliability.training_hc_range_mm`), ``None`` when unknown."""

    model_file: Path
    run: Run | None
    split: str
    index: pd.DataFrame = field(repr=False)
    image_size: int | None
    hc_range_mm: tuple[float, float] | None = None


def resolve_model_split(model_path: str | os.PathLike, data_dir: str | os.PathLike,
                        split: str | None = None, *, crop_runs: bool = False) -> ModelSplit:
    """``--model`` (a run folder, the ``model.keras`` inside one, or a bare ``.keras`` file)
    and ``--split`` → the model file and the index rows to work on, without loading the
    model (so a bad split fails at once).

    ``split``: a split of the run's record (``train`` / ``val`` / ``test`` / ``val+test``),
    ``challenge`` (an HC18 folder's ``test_set/``), or ``all``: every image of ``data_dir``
    (:func:`fetalhc.data.plain.load_folder_index`; HC18 or plain layout). Default: ``test``
    when ``data_dir`` holds the run's test split, else ``all`` (a bare model file, another
    clinic's folder, a plain folder). A crop run (the measuring stage of
    localise-then-measure, ``[data] crop_margin > 0``) is refused unless ``crop_runs``: only
    prediction places its crops (:func:`fetalhc.training.setup.prediction_index`) so far.
    One-line errors otherwise, each naming the option that fixes it."""
    from fetalhc.data.plain import data_layout, load_folder_index

    path = Path(model_path)
    if path.is_dir():
        model_file = path / MODEL_FILE
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"--model {path}: not a run folder (no {CONFIG_FILE})")
        if not model_file.is_file():
            raise FileNotFoundError(f"--model {path}: the run folder has no {MODEL_FILE} "
                                    "(has its training saved a model?)")
    else:
        model_file = path
        if not model_file.is_file():
            raise FileNotFoundError(f"--model {path}: no such run folder or model file")
    run = load_run(model_file.parent) if (model_file.parent / CONFIG_FILE).is_file() else None
    if run is not None and not crop_runs and crop_margin_of(run.config) > 0:
        raise ValueError(
            f"--model {path} is a crop run (it measures crops placed by its localiser, "
            f"{run.config['data'].get('localiser') or 'none recorded'}): only `fetalhc predict` "
            "runs it so far; explain or evaluate its localiser or a whole-image model")
    layout = data_layout(data_dir)
    if split is None:
        split = "test" if run is not None and _holds_run_split(run, data_dir, layout) \
            else ALL_IMAGES
    if split not in DATA_SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(DATA_SPLITS)}")
    if split == ALL_IMAGES:
        index = load_folder_index(data_dir)
    elif layout == "plain":
        raise ValueError(f"--data {data_dir} is a plain image folder: it has no {split!r} "
                         "split; --split all takes every image of its CSV")
    elif split == "challenge":
        if not (Path(data_dir) / PARTS["challenge"][0]).is_dir():
            raise ValueError(f"--data {data_dir} has no {PARTS['challenge'][0]}/ (the HC18 "
                             "challenge part); --split all takes every image it has")
        index = run_split_index({}, data_dir, split)
    elif not (Path(data_dir) / PARTS["training"][0]).is_dir():
        raise ValueError(f"--data {data_dir} has no {PARTS['training'][0]}/, so not the run's "
                         f"{split!r} split; --split all takes every image it has")
    elif run is None:
        raise ValueError(
            f"{model_file} has no run folder ({CONFIG_FILE} beside it), so it has no "
            f"{split!r} split; use --split all (every image of --data) or challenge")
    else:
        index = run_split_index(run.config, data_dir, split)
    from fetalhc.models.reliability import training_hc_range_mm

    return ModelSplit(model_file=model_file, run=run, split=split,
                      index=index.reset_index(drop=True),
                      image_size=run.image_size if run is not None else None,
                      hc_range_mm=training_hc_range_mm(run.config, data_dir)
                      if run is not None else None)


def _holds_run_split(run: Run, data_dir, layout: str) -> bool:
    """Whether ``data_dir`` (an HC18 folder) has every image of the run's test split."""
    if layout != "hc18" or not (Path(data_dir) / PARTS["training"][0]).is_dir():
        return False
    from fetalhc.data import load_index

    names = run.config.get("split", {}).get("test", [])
    return bool(names) and set(names) <= set(load_index(data_dir, "training",
                                                        validate=False)["filename"])


def model_input_size(model, model_file=None) -> int:
    """The square input size a loaded model declares; a one-line error for a model that
    takes any size (give the size then, or use its run folder) and for an exported
    end-to-end model (:func:`load_command_model` takes its network out)."""
    from fetalhc.models.export import preprocessing_layer

    if preprocessing_layer(model) is not None:
        raise ValueError(f"{model_file or model.name} is an exported end-to-end model (raw "
                         "images and pixel sizes in): load it with "
                         "fetalhc.training.load_command_model, which takes out the network "
                         "and its input size")
    side = model.inputs[0].shape[1]
    if side is None:
        raise ValueError(f"{model_file or model.name} takes any input size; use its run "
                         "folder (or give the size, e.g. --image-size)")
    return int(side)


@dataclass(frozen=True)
class CommandModel:
    """What :func:`load_command_model` gives: the model the commands feed pre-processed
    images to, its input size, and the training split's reference HC range (mm) an exported
    model's card carries (``None`` otherwise: a run folder's comes with its split)."""

    model: object = field(repr=False)
    image_size: int
    hc_range_mm: tuple[float, float] | None = None


def load_command_model(model_file, output_units: str | None = None,
                       image_size: int | None = None, run_image_size: int | None = None,
                       intensity: str = "zscore") -> CommandModel:
    """The model ``predict``, ``explain`` and ``evaluate`` feed pre-processed images to, and
    its input size (:class:`CommandModel`).

    An exported end-to-end model (``fetalhc export``) gives its network
    (:func:`fetalhc.models.export.inner_network`), the size of its own pre-processing and
    the training HC range of its card (for the outside-range reliability flag); an
    ``image_size`` that contradicts it is a one-line error. Any other model is loaded as
    it is (``output_units`` declares the unit of a model that is not fetalhc's; one of ``C``
    channels takes the gray image repeated, :func:`fetalhc.models.graph.grayscale_input_view`), with
    ``image_size`` (``--image-size``), else the run's ``run_image_size``, else the size the
    model declares (:func:`model_input_size`). ``intensity`` other than the z-score
    (``fetalhc.data.INTENSITIES``) is for a model that is not fetalhc's: a fetalhc model
    learned on z-scored images, so it is refused for one."""
    import fetalhc
    from fetalhc.data.pipeline import check_intensity
    from fetalhc.models.export import inner_network, read_model_card
    from fetalhc.models.graph import grayscale_input_view, hc_output_units
    from fetalhc.models.reliability import check_hc_range

    check_intensity(intensity)
    model = fetalhc.load_model(model_file, output_units=output_units)
    if intensity != "zscore" and hc_output_units(model) is not None:
        raise ValueError(f"{model_file} is a fetalhc model: it learned on z-scored images; "
                         f"--intensity {intensity} is for a model of your own (leave it out)")
    inner = inner_network(model)
    if inner is not None:
        network, size = inner
        if output_units == "mm":
            raise ValueError(f"{model_file} is an exported fetalhc model: its network's HC "
                             "output is in px, and the commands read it so; leave out "
                             "--output-units")
        if image_size is not None and int(image_size) != size:
            raise ValueError(f"{model_file} is an exported model whose pre-processing makes "
                             f"{size} px inputs; --image-size {image_size} contradicts it "
                             "(leave it out)")
        card = read_model_card(model) or {}
        hc_range = card.get("training", {}).get("hc_range_mm")
        try:
            hc_range = check_hc_range(hc_range) if hc_range and None not in hc_range else None
        except ValueError:  # a card without a usable range: the flag stays unknown
            hc_range = None
        return CommandModel(network, size, hc_range)
    model = grayscale_input_view(model)  # an RGB model of your own takes the gray image 3 times
    size = image_size or run_image_size or model_input_size(model, model_file)
    return CommandModel(model, int(size))
