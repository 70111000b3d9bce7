"""The plain image layout: a folder of images and one CSV that names them.

For data that is not in the HC18 layout (:mod:`fetalhc.data.index`), e.g. a new clinic's
images::

    folder/
    ├── images.csv            filename,pixel_size_mm[,hc_mm]   (any one *.csv at the top)
    ├── a.png                 any image tf.io.decode_image reads (PNG, JPEG, BMP, GIF)
    ├── a_Annotation.png      optional: the head outline, as in HC18 (localisation needs it)
    └── more/b.jpg            file names may be paths inside the folder

``pixel_size_mm`` is the original image's pixel size in mm; ``hc_mm``, the reference head
circumference in mm, is optional (a missing column or an empty cell is unknown: NaN).
:func:`load_plain_index` returns the same index columns as :func:`~fetalhc.data.load_index`,
so every command works on it; :func:`write_plain_dataset` writes index rows in this layout.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path, PurePosixPath

import pandas as pd

from fetalhc.data.errors import DataError
from fetalhc.data.index import ANNOTATION_SUFFIX, group_id_of
from fetalhc.files import write_csv

FILENAME, PIXEL_SIZE, HC = "filename", "pixel_size_mm", "hc_mm"
PLAIN_CSV = "images.csv"  # the name write_plain_dataset gives its CSV


def plain_csv(root) -> Path:
    """The CSV of a plain-layout ``root``: ``root`` itself when it is a ``.csv`` file, else the
    one ``*.csv`` at the top of the folder with a ``filename`` and a ``pixel_size_mm``
    column. One-line :class:`DataError` otherwise, saying what a plain folder holds."""
    root = Path(root).expanduser()
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder is missing")
    candidates = sorted(path for path in root.glob("*.csv") if _has_plain_header(path))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(
            f"{root}: neither the HC18 layout (training_set/, test_set/ and their CSVs) nor a "
            f"plain folder (images and one CSV with columns {FILENAME},{PIXEL_SIZE}[,{HC}])")
    raise DataError(f"{root}: {len(candidates)} CSVs could index its images "
                    f"({', '.join(path.name for path in candidates)}); give the one to use "
                    "as --data FILE.csv")


def is_plain_layout(root) -> bool:
    """Whether ``root`` is a plain-layout CSV or folder (see the module docstring)."""
    try:
        plain_csv(root)
    except DataError:
        return False
    return True


def _has_plain_header(path: Path) -> bool:
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    columns = {str(column).strip() for column in header}
    return FILENAME in columns and PIXEL_SIZE in columns


def _inside(name: str) -> bool:
    """A relative path inside the folder: no '..', not absolute, no drive letter."""
    if not name or "\x00" in name or "\\" in name:
        return False
    path = PurePosixPath(name)
    return (not path.is_absolute() and ".." not in path.parts
            and not (len(name) >= 2 and name[1] == ":"))


def _number(text: str, where: str, column: str, optional: bool) -> float:
    from fetalhc.data.index import _positive_number

    text = str(text).strip()
    if optional and text == "":
        return math.nan
    value = _positive_number(text)
    if value is None:
        raise DataError(f"{where}: {column} is {text!r}; it must be a positive number"
                        + (" (or empty when unknown)" if optional else ""))
    return value


def load_plain_index(root) -> pd.DataFrame:
    """Read a plain-layout folder (or its CSV) into the index columns of
    :func:`~fetalhc.data.load_index`, rows in the CSV's order. Each image's header is read
    (size); an annotation ``<stem>_Annotation<suffix>`` beside an image is used when it
    exists. The first problem raises a one-line :class:`DataError` naming the CSV line."""
    from fetalhc.data.index import _read_csv, header_size, index_frame

    csv_path = plain_csv(root)
    folder = csv_path.parent.absolute()
    table = _read_csv(csv_path, [FILENAME, PIXEL_SIZE])
    rows, seen = [], {}
    for position, row in table.iterrows():
        line = position + 2
        name = str(row[FILENAME]).strip()
        where = f"{csv_path.name} line {line} ({name or 'no filename'})"
        if not _inside(name):
            raise DataError(f"{where}: filename must be a path inside {folder} (no '..', not "
                            "absolute)")
        if name in seen:
            raise DataError(f"{where}: duplicate filename (also on line {seen[name]})")
        seen[name] = line
        pixel_size = _number(row[PIXEL_SIZE], where, PIXEL_SIZE, optional=False)
        hc_mm = _number(row[HC], where, HC, optional=True) if HC in table.columns else math.nan
        image_path = folder / name
        size = header_size(image_path)
        if size is None:
            raise DataError(f"{where}: image {image_path} is missing or unreadable")
        stem = PurePosixPath(name)
        annotation = folder / stem.with_name(f"{stem.stem}{ANNOTATION_SUFFIX}{stem.suffix}")
        annotation_path = None
        if annotation.is_file():
            if header_size(annotation) != size:
                raise DataError(f"{where}: annotation {annotation.name} is not the size of "
                                "its image")
            annotation_path = str(annotation)
        rows.append({"filename": name, "group_id": group_id_of(stem.name),
                     "image_path": str(image_path), "annotation_path": annotation_path,
                     "pixel_size_mm": pixel_size, "hc_mm": hc_mm,
                     "width_px": int(size[0]), "height_px": int(size[1])})
    return index_frame(rows)


def write_plain_dataset(out_dir, index: pd.DataFrame, annotations: bool = True,
                        overwrite: bool = False) -> Path:
    """Copy the images of ``index`` rows (any layout) into ``out_dir`` in the plain layout,
    with ``images.csv`` (``filename,pixel_size_mm,hc_mm``; an unknown HC left empty) and, when
    ``annotations`` and a row has one, its ``_Annotation`` file. Written into a temporary
    folder and moved into place (nothing partial on an error); a non-empty ``out_dir`` is
    refused unless ``overwrite``. Returns ``out_dir``."""
    from fetalhc.data.phantom import write_folder_atomically

    def write(folder: Path) -> None:
        for row in index.itertuples(index=False):
            (folder / row.filename).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(row.image_path, folder / row.filename)
            annotation = getattr(row, "annotation_path", None)
            if annotations and isinstance(annotation, str) and annotation:
                stem = Path(row.filename)
                shutil.copyfile(annotation,
                                folder / stem.with_name(f"{stem.stem}{ANNOTATION_SUFFIX}{stem.suffix}"))
        table = pd.DataFrame({
            FILENAME: index["filename"].tolist(),
            PIXEL_SIZE: [repr(float(value)) for value in index["pixel_size_mm"]],
            HC: [repr(float(value)) if math.isfinite(value) else ""
                 for value in index["hc_mm"].astype(float)],
        })
        write_csv(table, folder / PLAIN_CSV)

    return write_folder_atomically(out_dir, write, overwrite)


def data_layout(root) -> str:
    """``"hc18"`` when ``root`` has ``training_set/`` or ``test_set/`` (the HC18 layout),
    ``"plain"`` for a plain-layout folder or CSV; a one-line :class:`DataError` otherwise."""
    from fetalhc.data.index import PARTS

    root = Path(root).expanduser()
    if root.is_dir() and any((root / folder).is_dir() for folder, _ in PARTS.values()):
        return "hc18"
    plain_csv(root)  # raises, saying what either layout holds
    return "plain"


def load_folder_index(root) -> pd.DataFrame:
    """Every image of a data folder (``--split all``): a plain folder's CSV rows; an HC18
    folder's training part (references and annotations) when it has one, else its test part
    (``test_set/``). The two HC18 parts are not joined: their file names overlap. File
    headers are read, images not decoded."""
    from fetalhc.data.index import PARTS, load_index

    root = Path(root).expanduser()
    if data_layout(root) == "plain":
        return load_plain_index(root)
    part = "training" if (root / PARTS["training"][0]).is_dir() else "challenge"
    return load_index(root, part, validate=False)
