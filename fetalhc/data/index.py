"""The dataset index: the HC18 CSV joined with the files it names, validated.

HC18 layout (also written by :func:`fetalhc.data.phantom.write_phantom_dataset`)::

    root/
    ├── training_set_pixel_size_and_HC.csv   filename,pixel size(mm),head circumference (mm)
    ├── training_set/NNN_HC.png, NNN_HC_Annotation.png, NNN_2HC.png, ...
    ├── test_set_pixel_size.csv              filename,pixel size(mm)
    └── test_set/NNN_HC.png
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.data.errors import DataError

PARTS = {
    "training": ("training_set", "training_set_pixel_size_and_HC.csv"),
    "challenge": ("test_set", "test_set_pixel_size.csv"),
}
FILENAME_COLUMN = "filename"
PIXEL_SIZE_COLUMN = "pixel size(mm)"
HC_COLUMN = "head circumference (mm)"
INDEX_COLUMNS = [
    "filename", "group_id", "image_path", "annotation_path", "pixel_size_mm", "hc_mm",
    "width_px", "height_px",
]
ANNOTATION_SUFFIX = "_Annotation"
_GROUP_PATTERN = re.compile(r"^(\d+)_\d*HC$", re.IGNORECASE)
_LEADING_DIGITS = re.compile(r"^(\d+)(?=\D|$)")


def group_id_of(filename: str) -> str:
    """The examination ID of an HC18 file name: ``010_HC.png`` and ``010_2HC.png`` -> ``"010"``.

    Names that do not follow the ``NNN_[k]HC`` pattern fall back to their leading digits,
    or to the whole stem (each such image is then its own group).
    """
    stem = Path(filename).stem
    match = _GROUP_PATTERN.match(stem) or _LEADING_DIGITS.match(stem)
    return match.group(1) if match else stem


def annotation_name(filename: str) -> str:
    """``001_HC.png`` -> ``001_HC_Annotation.png``."""
    path = Path(filename)
    return f"{path.stem}{ANNOTATION_SUFFIX}{path.suffix}"


@dataclass
class _Problems:
    """Collects problems; ``load_index`` raises on the first, ``check`` reports them all."""

    collect: bool
    messages: list

    def add(self, message: str) -> None:
        message = " ".join(message.split())  # always one line
        if not self.collect:
            raise DataError(message)
        self.messages.append(message)


def _read_csv(csv_path: Path, required: list[str]) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file is missing")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise DataError(f"{csv_path}: cannot parse CSV ({first_line})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise DataError(
            f"{csv_path}: CSV lacks required column(s) {missing}; "
            f"found {list(table.columns)}"
        )
    if len(table) == 0:
        raise DataError(f"{csv_path}: CSV has no rows")
    return table


def _safe_name(name: str) -> bool:
    """A plain file name inside the part folder: no directories, no '..', not absolute."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return False
    return not (len(name) >= 2 and name[1] == ":")  # Windows drive letter


def _positive_number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


@lru_cache(maxsize=16384)
def _header_size(path: str, mtime_ns: int, file_size: int, verify: bool) -> tuple[int, int]:
    """(width, height) from the image header; memoised per file version."""
    from PIL import Image

    if verify:  # reads the whole file and checks its checksums
        with Image.open(path) as image:
            image.verify()
    with Image.open(path) as image:
        return image.size


def header_size(path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, or ``None`` when it is missing or
    unreadable (memoised per file version)."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    try:
        stat = path.stat()
        if not path.is_file():
            return None
        return _header_size(str(path), stat.st_mtime_ns, stat.st_size, False)
    except (OSError, UnidentifiedImageError, SyntaxError):
        return None


def _image_size(path: Path, problems: _Problems, where: str, what: str, verify: bool):
    from PIL import UnidentifiedImageError

    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        problems.add(f"{where}: {what} {path} is missing")
        return None
    try:
        return _header_size(str(path), stat.st_mtime_ns, stat.st_size, verify)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        problems.add(f"{where}: {what} {path} is unreadable ({error})")
        return None


def _check_annotation(path: Path, problems: _Problems, where: str) -> None:
    from fetalhc.data.ellipse import read_annotation

    try:
        mask = read_annotation(path)
    except DataError as error:
        problems.add(f"{where}: {error}")
        return
    if np.count_nonzero(mask) < 5:
        problems.add(f"{where}: annotation {path} holds no ellipse (no outline pixels)")


def _load(root, part: str, validate: bool, problems: _Problems, progress=None) -> pd.DataFrame:
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}; got {part!r}")
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder is missing")
    folder_name, csv_name = PARTS[part]
    folder = root / folder_name
    csv_path = root / csv_name
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder is missing")
    training = part == "training"
    required = [FILENAME_COLUMN, PIXEL_SIZE_COLUMN] + ([HC_COLUMN] if training else [])
    table = _read_csv(csv_path, required)

    rows = []
    seen: dict[str, int] = {}
    iterator = table.iterrows()
    if progress is not None:
        iterator = progress(iterator, total=len(table), desc=f"index {part}", unit="image")
    for position, row in iterator:
        line = position + 2  # header is line 1
        filename = str(row[FILENAME_COLUMN]).strip()
        where = f"{csv_name} line {line} ({filename or 'no filename'})"
        if not filename:
            problems.add(f"{where}: filename is empty")
            continue
        if not _safe_name(filename):
            problems.add(
                f"{where}: filename must be a plain file name inside {folder_name}/ "
                "(no folders, '..' or absolute paths)"
            )
            continue
        if filename in seen:
            problems.add(f"{where}: duplicate filename (also on line {seen[filename]})")
            continue
        seen[filename] = line
        pixel_size = _positive_number(row[PIXEL_SIZE_COLUMN])
        if pixel_size is None:
            problems.add(
                f"{where}: {PIXEL_SIZE_COLUMN} is {row[PIXEL_SIZE_COLUMN]!r}; "
                "it must be a positive number"
            )
        hc_mm = float("nan")
        if training:
            hc_value = _positive_number(row[HC_COLUMN])
            if hc_value is None:
                problems.add(
                    f"{where}: {HC_COLUMN} is {row[HC_COLUMN]!r}; it must be a positive number"
                )
            else:
                hc_mm = hc_value
        image_path = folder / filename
        size = _image_size(image_path, problems, where, "image", validate)
        annotation_path = None
        if training:
            annotation_path = folder / annotation_name(filename)
            annotation_size = _image_size(annotation_path, problems, where, "annotation",
                                          validate)
            if size is not None and annotation_size is not None and annotation_size != size:
                problems.add(
                    f"{where}: annotation {annotation_path.name} is "
                    f"{annotation_size[0]}x{annotation_size[1]} px but its image is "
                    f"{size[0]}x{size[1]} px"
                )
            elif validate and annotation_size is not None:
                _check_annotation(annotation_path, problems, where)
        if size is None or pixel_size is None or (training and not math.isfinite(hc_mm)):
            continue
        rows.append({
            "filename": filename,
            "group_id": group_id_of(filename),
            "image_path": str(image_path),
            "annotation_path": None if annotation_path is None else str(annotation_path),
            "pixel_size_mm": pixel_size,
            "hc_mm": hc_mm,
            "width_px": int(size[0]),
            "height_px": int(size[1]),
        })
    return index_frame(rows)


def index_frame(rows: list[dict]) -> pd.DataFrame:
    """Index rows (dicts of :data:`INDEX_COLUMNS`) as the index DataFrame, typed."""
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    index["pixel_size_mm"] = index["pixel_size_mm"].astype(np.float64)
    index["hc_mm"] = index["hc_mm"].astype(np.float64)
    index["width_px"] = index["width_px"].astype(np.int64)
    index["height_px"] = index["height_px"].astype(np.int64)
    index["annotation_path"] = index["annotation_path"].astype(object)
    return index


def load_index(root, part: str = "training", validate: bool = True) -> pd.DataFrame:
    """Read and validate one part of an HC18-layout folder into a DataFrame.

    Columns: ``filename, group_id, image_path, annotation_path`` (None for the challenge
    part), ``pixel_size_mm`` (of the original image), ``hc_mm`` (NaN for the challenge part),
    ``width_px, height_px`` (original image size). Rows keep the CSV order.

    Every row's image (and, for ``part="training"``, annotation) must exist and be a readable
    image of the same size; pixel sizes and HCs must be positive numbers; file names must be
    plain names inside the part's folder. ``validate=True`` additionally verifies every PNG's
    checksums and decodes every annotation to check that it holds an outline (about 3 ms
    per image; ``validate=False`` reads the headers only). The first problem raises
    :class:`~fetalhc.data.DataError` naming the file or CSV line.
    """
    return _load(root, part, validate, _Problems(collect=False, messages=[]))


def index_problems(root, part: str = "training", validate: bool = True,
                   progress=None) -> tuple[pd.DataFrame, list]:
    """Like :func:`load_index`, but collect every row problem instead of raising the first.

    Returns the index of the good rows and the list of one-line problem messages. Problems
    with the folder or the CSV as a whole still raise :class:`~fetalhc.data.DataError`.
    """
    problems = _Problems(collect=True, messages=[])
    index = _load(root, part, validate, problems, progress=progress)
    return index, problems.messages
