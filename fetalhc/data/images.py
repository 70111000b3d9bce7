"""Decode every image of an index up front, so no bad file ever reaches ``tf.data``.

:func:`check_images` opens and fully decodes each image (and annotation) of the index rows
with PIL, as the pipeline will decode it with TensorFlow, and raises a one-line
:class:`~fetalhc.data.DataError` naming the first missing, truncated or undecodable file.
Results are memoised per file version ``(path, size, mtime_ns)`` within the process, so a
second call on the same files costs one ``stat`` per file.
"""

from __future__ import annotations

import io
import math
import os
import stat
import threading
import zlib

import pandas as pd

from fetalhc.data.errors import DataError

# what ``tf.io.decode_image`` decodes (the pipeline's decoder)
DECODABLE_FORMATS = ("PNG", "JPEG", "GIF", "BMP")
# PIL modes that are grayscale or convert to it the way the pipeline does (channels=1)
GRAYSCALE_MODES = ("1", "L", "LA", "P", "PA", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA",
                   "RGBX")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = ((_PNG_SIGNATURE, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"))
_MEMO_LIMIT = 65536

_memo: dict[tuple[str, int, int], tuple[str | None, tuple[int, int] | None]] = {}
_memo_lock = threading.Lock()


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decode(path: str, size: int) -> tuple[str | None, tuple[int, int] | None]:
    """(problem or None, (width, height) or None) of one file version; never raises."""
    from PIL import Image, UnidentifiedImageError

    if size == 0:
        return "file is empty (0 bytes)", None
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"cannot read the file ({error.strerror or error})", None
    if _sniff(data) == "PNG":
        problem, data = _png_chunks(data)
        if problem is not None:
            return problem, None
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _sniff(data)
        if kind is not None:
            return f"corrupt or truncated {kind} (PIL cannot identify it)", None
        return ("not an image (neither PNG, JPEG, GIF nor BMP: PIL cannot identify it)",
                None)
    except (OSError, SyntaxError, ValueError) as error:
        return f"cannot read the image header ({_one_line(error)})", None
    try:
        kind = image.format or "image"
        dimensions = image.size
        if kind not in DECODABLE_FORMATS:
            return (f"{kind} image; the pipeline decodes only "
                    f"{', '.join(DECODABLE_FORMATS[:-1])} or {DECODABLE_FORMATS[-1]}"), None
        if dimensions[0] <= 0 or dimensions[1] <= 0:
            return f"{kind} of implausible size {dimensions[0]}x{dimensions[1]} px", None
        if image.mode not in GRAYSCALE_MODES:
            return f"{kind} in mode {image.mode}, which does not convert to grayscale", None
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = _one_line(error)
        lowered = text.lower()
        if "truncat" in lowered or "broken data stream" in lowered or isinstance(error,
                                                                                 EOFError):
            return f"truncated {kind} ({text})", None
        return f"corrupt {kind} ({text})", None
    finally:
        image.close()
    return None, dimensions


def _png_chunks(data: bytes) -> tuple[str | None, bytes]:
    """Walk a PNG's chunks as libpng reads them: (problem or None, the PNG for PIL).

    Truncation (a chunk running past the end, no IEND) and a bad checksum of a critical
    chunk (upper-case first letter: IHDR, PLTE, IDAT, IEND) are problems, as they are for
    TensorFlow's decoder; an ancillary chunk with a bad checksum is dropped, as libpng
    drops it (PIL would refuse the whole file).
    """
    position, kept = len(_PNG_SIGNATURE), [_PNG_SIGNATURE]
    while True:
        if position + 12 > len(data):
            where = "within its header" if position == len(_PNG_SIGNATURE) else \
                "before its IEND chunk"
            return f"truncated PNG (the file ends {where}, at byte {len(data)})", data
        length = int.from_bytes(data[position:position + 4], "big")
        name = data[position + 4:position + 8]
        end = position + 12 + length
        label = name.decode("latin-1")
        if not name.isalpha():
            return f"corrupt PNG (no valid chunk at byte {position})", data
        if end > len(data):
            return (f"truncated PNG (its {label} chunk at byte {position} runs past the end "
                    f"of the file, {len(data)} bytes)"), data
        critical = name[:1].isupper()
        intact = zlib.crc32(data[position + 4:end - 4]) == int.from_bytes(data[end - 4:end],
                                                                          "big")
        if critical and not intact:
            return f"corrupt PNG (bad checksum of its {label} chunk at byte {position})", data
        if intact:
            kept.append(data[position:end])
        position = end
        if name == b"IEND":
            return None, b"".join(kept) if len(kept) > 1 else data


def _sniff(data: bytes) -> str | None:
    """The format a file's first bytes announce, or None."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _file_problem(path: str, what: str) -> tuple[str | None, tuple[int, int] | None, int]:
    """(problem, (width, height), byte size) of one file, memoised per file version."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return f"{what} file is missing", None, -1
    except OSError as error:
        return f"cannot read the {what} file ({error.strerror or error})", None, -1
    if not stat.S_ISREG(status.st_mode):
        return f"{what} path is not a file", None, -1
    key = (path, status.st_size, status.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is None:
        hit = _decode(path, status.st_size)
        with _memo_lock:
            if len(_memo) >= _MEMO_LIMIT:
                _memo.clear()
            _memo[key] = hit
    return hit[0], hit[1], status.st_size


def _rows(index: pd.DataFrame):
    if "image_path" not in index.columns:
        raise ValueError("the index has no 'image_path' column; use fetalhc.data.load_index")
    columns = {name: index[name].tolist() if name in index.columns else [None] * len(index)
               for name in ("image_path", "annotation_path", "width_px", "height_px")}
    return zip(columns["image_path"], columns["annotation_path"], columns["width_px"],
               columns["height_px"], strict=True)


def _row_problems(image_path, annotation_path, width, height, annotations: bool):
    """Problems of one index row (image first), each a one-line message naming the file."""
    problems = []
    if _is_missing(image_path):
        return ["an index row has no image path"], None
    image_path = str(image_path)
    problem, dimensions, byte_size = _file_problem(image_path, "image")
    if problem is not None:
        problems.append(f"{image_path}: {problem}")
    elif not _is_missing(width) and not _is_missing(height) \
            and (int(width), int(height)) != dimensions:
        problems.append(
            f"{image_path}: image is {dimensions[0]}x{dimensions[1]} px but the index says "
            f"{int(width)}x{int(height)} px (the file changed after the index was read)"
        )
    if annotations and not _is_missing(annotation_path):
        annotation_path = str(annotation_path)
        problem, annotation_dimensions, _ = _file_problem(annotation_path, "annotation")
        if problem is not None:
            problems.append(f"{annotation_path}: {problem}")
        elif dimensions is not None and annotation_dimensions != dimensions:
            problems.append(
                f"{annotation_path}: annotation is {annotation_dimensions[0]}x"
                f"{annotation_dimensions[1]} px but its image is "
                f"{dimensions[0]}x{dimensions[1]} px"
            )
    return problems, byte_size


def image_problems(index: pd.DataFrame, annotations: bool = True,
                   progress=None) -> list[tuple[int, str]]:
    """Every problem :func:`check_images` would raise on, in index order.

    A list of ``(row position, one-line message naming the file)``; a row may have two
    (its image and its annotation).
    """
    problems = []
    rows = _rows(index)
    if progress is not None:
        rows = progress(rows, total=len(index), desc="decode", unit="image")
    for position, (image_path, annotation_path, width, height) in enumerate(rows):
        messages = _row_problems(image_path, annotation_path, width, height, annotations)[0]
        problems += [(position, message) for message in messages]
    return problems


def image_byte_sizes(index: pd.DataFrame, annotations: bool = True) -> list[int]:
    """:func:`check_images`, returning the byte size of each row's image as checked."""
    sizes = []
    for image_path, annotation_path, width, height in _rows(index):
        problems, byte_size = _row_problems(image_path, annotation_path, width, height,
                                            annotations)
        if problems:
            raise DataError(problems[0])
        sizes.append(byte_size)
    return sizes


def check_images(index: pd.DataFrame, annotations: bool = True) -> None:
    """Open and fully decode every image of the ``index`` rows; raise on the first bad file.

    ``index`` is a :func:`~fetalhc.data.load_index` DataFrame (or rows of one; only
    ``image_path`` is required). Each image must exist, be a complete PNG, JPEG, GIF or BMP
    that decodes (critical PNG chunk checksums included, as TensorFlow's decoder checks
    them), be grayscale or convertible to it, and
    have the ``width_px`` x ``height_px`` the index recorded. With ``annotations`` (the
    default) the annotation of every row that has one (``annotation_path`` not None) is
    checked the same way and must match its image's size; pass ``annotations=False`` when
    the caller reads the images only (e.g. prediction).

    Raises :class:`~fetalhc.data.DataError` with a one-line message naming the first bad
    file and what is wrong, e.g. ``".../training_set/003_HC.png: truncated PNG (its IDAT
    chunk at byte 33 runs past the end of the file, 34730 bytes)"``. Memoised per file version ``(path, size, mtime_ns)`` within the
    process: a repeated call costs one ``stat`` per file.
    """
    image_byte_sizes(index, annotations=annotations)


def clear_image_memo() -> None:
    """Forget every memoised decode result (tests, or files rewritten within 1 ns)."""
    with _memo_lock:
        _memo.clear()
