"""Publish a finished run folder as a named model under ``models/<name>/`` (issue #19).

Copies ``config.toml``, ``history.csv`` and ``metrics.json``, saves ``model.keras`` without
its optimizer state (loaded with ``compile=False`` and saved again: a third of the size,
the same weights), checks that the published model predicts exactly what the run's model
predicts on a fixed random batch, refuses a file of 10 MB or more, and writes
``provenance.json`` (source run, the command that trained it, both SHA-256 digests).

    python scripts/publish_model.py runs/levers/base-e60 hc18-plain-mae \\
        --command "python scripts/hc18_levers.py run base-e60 --epochs 60"

A crop run (the measuring stage of localise-then-measure) needs its localiser published
first: ``--localiser NAME`` names it; the published ``config.toml`` then records
``[run] localiser_file = "../NAME/model.keras"`` (relative to the model's folder) after
checking that NAME was published from the very localiser file the run used (SHA-256).

    python scripts/publish_model.py runs/levers/crop-e200 hc18-recipe \
        --localiser hc18-plain-mae --command "..."

Load it with ``fetalhc.models.pretrained("hc18-plain-mae")`` (module fetalhc.models.shipped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 10 * 1024 * 1024
COPIED = ("config.toml", "history.csv", "metrics.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relink_localiser(config_path: Path, run: Path, localiser: str | None,
                     models_root: Path | None = None) -> dict:
    """Point a published crop run's config at its published localiser; returns what the
    provenance records. A whole-image run is left as it is (``localiser`` must be None)."""
    import tomli_w

    from fetalhc.training.config import read_toml
    from fetalhc.training.setup import crop_margin_of, localiser_file

    config = read_toml(config_path)
    if crop_margin_of(config) <= 0:
        if localiser:
            raise SystemExit(f"{run} is a whole-image run: it has no localiser to relink")
        return {}
    if not localiser:
        raise SystemExit(f"{run} is a crop run: publish its localiser first and name it with "
                         "--localiser")
    source = localiser_file(config, run)
    published = (models_root or ROOT / "models") / localiser
    if not (published / "provenance.json").is_file():
        raise SystemExit(f"no published model {localiser!r} in {published.parent} (publish "
                         "the localiser first)")
    record = json.loads((published / "provenance.json").read_text())
    if record.get("source_model_sha256") != sha256(source):
        raise SystemExit(f"models/{localiser} was not published from {source}, the localiser "
                         "this run used")
    config["run"]["localiser_file"] = f"../{localiser}/model.keras"
    config["data"]["localiser"] = f"../{localiser}"
    config_path.write_bytes(tomli_w.dumps(config).encode())
    return {"localiser": localiser, "localiser_source": str(source),
            "localiser_source_sha256": record["source_model_sha256"]}


def _save_checked(run: Path, staging: Path) -> int:
    """Save the run's model without its optimizer into ``staging``, check it predicts what
    the run's model predicts on a fixed random batch and is under the size limit; returns
    its size in bytes."""
    import fetalhc
    from fetalhc.models.graph import hc_output_value

    model = fetalhc.load_model(run / "model.keras")
    model.save(staging / "model.keras")
    published = fetalhc.load_model(staging / "model.keras")
    batch = np.random.default_rng(0).normal(size=(4, *model.inputs[0].shape[1:]))
    batch = batch.astype(np.float32)
    before = np.asarray(hc_output_value(model(batch, training=False), model))
    after = np.asarray(hc_output_value(published(batch, training=False), published))
    if not np.array_equal(before, after):
        raise SystemExit("the published model does not predict what the run's model predicts")
    size = (staging / "model.keras").stat().st_size
    if size >= LIMIT_BYTES:
        raise SystemExit(f"the model file has {size} bytes, over the 10 MB limit")
    return size


def publish(run: Path, name: str, command: str, overwrite: bool = False,
            localiser: str | None = None, models_root: Path | None = None) -> Path:
    """Publish ``run`` as ``<models_root>/<name>/`` (default the repository's ``models/``);
    returns the folder. ``SystemExit`` with one line for an unfinished run, an existing
    name without ``overwrite``, a crop run without its published ``localiser`` (or with
    another one), a whole-image run given a localiser, a changed prediction or a file of
    10 MB or more; nothing is left behind then."""
    from fetalhc.files import write_json

    run = Path(run)
    for required in ("model.keras", *COPIED):
        if not (run / required).is_file():
            raise SystemExit(f"{run} is not a finished run folder: {required} is missing")
    models_root = Path(models_root) if models_root is not None else ROOT / "models"
    destination = models_root / name
    if destination.exists() and not overwrite:
        raise SystemExit(f"{destination} exists; pass --overwrite to replace it")
    staging = destination.with_name(f".{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file_name in COPIED:
        shutil.copy2(run / file_name, staging / file_name)
    try:
        relinked = relink_localiser(staging / "config.toml", run, localiser, models_root)
        size = _save_checked(run, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_json(staging / "provenance.json", {
        "name": name,
        "source_run": str(run),
        "command": command,
        "source_model_sha256": sha256(run / "model.keras"),
        "model_sha256": sha256(staging / "model.keras"),
        "model_bytes": size,
        "published_by": "python scripts/publish_model.py " + shlex.join(sys.argv[1:]),
        "metrics": json.loads((run / "metrics.json").read_text()),
        **relinked,
    })
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return destination


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished run folder")
    parser.add_argument("name", help="model name (folder under models/)")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--localiser", help="published name of a crop run's localiser")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder of published models (default: the repository's models/)")
    args = parser.parse_args(argv)
    print(publish(args.run, args.name, args.command, args.overwrite, args.localiser,
                  args.models))


if __name__ == "__main__":
    main()
