"""Time ``make hc18-model`` end to end and write what it cost (issue #19's acceptance).

    python scripts/hc18_make_time.py --run runs/levers/recipe-make \\
        [--out docs/hc18-model/make-time.json]

Runs ``make hc18-model HC18_RUN=<run>`` (stage 1 into ``<run>-localiser``, stage 2 into
``<run>``) and writes ``--out`` (JSON): the command, the wall time in seconds, the CPU
seconds of make and everything it started (user + system, from ``getrusage``), their ratio
to the wall time (2.0 = both cores busy the whole time), the 1-minute load average before
the start and its samples every 30 s during the run (the training itself makes ~2 on 2
cores; more means something else ran), and per stage the epochs, the kept epoch, the
summed epoch wall time and the val / test MAE from its ``metrics.json``.

Refuses when either run folder already holds a finished run: ``make`` would skip that stage
and the time would not be a full training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 30.0


def stage_record(run: Path) -> dict:
    """Epochs, kept epoch, summed epoch wall time and val / test MAE of a finished run."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "run": str(run),
        "epochs_run": metrics.get("epochs_run"),
        "best_epoch": metrics.get("best_epoch"),
        "train_seconds": metrics.get("train_seconds"),
        "val_mae_mm": metrics.get("val", {}).get("mae_mm"),
        "test_mae_mm": metrics.get("test", {}).get("mae_mm"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="HC18_RUN (stage 2's run folder)")
    parser.add_argument("--out", default=str(REPO / "docs" / "hc18-model" / "make-time.json"))
    args = parser.parse_args(argv)
    run = Path(args.run)
    localiser = Path(f"{args.run}-localiser")
    for folder in (localiser, run):
        if (folder / "metrics.json").is_file():
            raise SystemExit(f"{folder} already holds a finished run: make would skip it and "
                             "the time would not be a full training; delete it or pick "
                             "another --run")
    command = ["make", "hc18-model", f"HC18_RUN={args.run}"]
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            samples.append(round(os.getloadavg()[0], 2))

    load_before = os.getloadavg()[0]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO)
    wall = time.perf_counter() - started
    done.set()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {completed.returncode}")
    cpu = usage.ru_utime + usage.ru_stime
    record = {
        "command": "python scripts/hc18_make_time.py " + shlex.join(sys.argv[1:] if argv is None
                                                                    else argv),
        "make_command": shlex.join(command),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "cpu_per_wall": cpu / wall if wall > 0 else None,
        "cores": os.cpu_count(),
        "load_1min_before": round(load_before, 2),
        "load_1min_samples": samples,
        "sample_seconds": SAMPLE_SECONDS,
        "stages": {"localiser": stage_record(localiser), "crop": stage_record(run)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from fetalhc.files import write_json

    write_json(out, record)
    print(json.dumps({key: record[key] for key in ("wall_seconds", "cpu_per_wall")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
