"""Regions, relevance rankings and replacement images for perturbation curves.

A *rank map* ``(N, H, W)`` gives, for every pixel, the position of its region (or of the
pixel itself) in the removal order: after ``k`` removals exactly the pixels with
``rank < k`` have been replaced. Every curve in this package is built from a rank map and
a list of removal counts, which is what lets the forward pass run in one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fetalhc.evaluate.settings import (
    AGGREGATIONS,
    ORDERS,
    PERTURBATIONS,
    grid_shape,
    region_sizes,
    require_choice,
)


@dataclass(frozen=True)
class RegionGrid:
    """A grid of ``rows x cols`` equal regions of ``height x width`` pixels."""

    rows: int
    cols: int
    height: int
    width: int

    @property
    def n_regions(self) -> int:
        return self.rows * self.cols

    def labels(self) -> np.ndarray:
        """Region index of every pixel, ``(rows*height, cols*width)``, row-major."""
        row = np.arange(self.rows * self.height) // self.height
        col = np.arange(self.cols * self.width) // self.width
        return (row[:, None] * self.cols + col[None, :]).astype(np.int32)


def make_grid(image_shape, grid=None, region_size=None) -> RegionGrid:
    """The region grid for images of ``(H, W)``: ``grid`` regions per side or ``region_size`` px.

    The grid must divide the image exactly; otherwise a ValueError says so and lists sizes
    that would.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    if (grid is None) == (region_size is None):
        raise ValueError("give exactly one of grid (regions per side) and region_size (pixels)")
    if grid is not None:
        rows, cols = grid_shape((height, width), tuple(np.ravel(grid)) if np.ndim(grid)
                                else grid)
        return RegionGrid(rows, cols, height // rows, width // cols)
    rh, rw = region_sizes((height, width), tuple(np.ravel(region_size))
                          if np.ndim(region_size) else region_size)
    return RegionGrid(height // rh, width // rw, rh, rw)


def region_scores(maps: np.ndarray, grid: RegionGrid, aggregation: str = "mean") -> np.ndarray:
    """Relevance per region ``(N, R)``: mean signed relevance, or mean absolute (``"abs"``)."""
    require_choice(aggregation, AGGREGATIONS, "aggregation")
    values = np.abs(maps) if aggregation == "abs" else maps
    n = values.shape[0]
    blocks = values.reshape(n, grid.rows, grid.height, grid.cols, grid.width)
    return blocks.mean(axis=(2, 4), dtype=np.float64).reshape(n, grid.n_regions)


def removal_order(scores: np.ndarray, order: str, rng: np.random.Generator | None = None,
                  positions=None):
    """Indices ``(N, R)`` of regions in removal order (most relevant first for MoRF).

    Ties keep the lower index first. ``random`` draws one permutation per image from ``rng``;
    with ``positions`` (the images' positions in a larger set, e.g. a shard's) image ``k``
    gets the permutation the image at ``positions[k]`` gets when the whole set is drawn.
    """
    require_choice(order, ORDERS, "order")
    if order == "morf":
        return np.argsort(-scores, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(scores, axis=1, kind="stable")
    if rng is None:
        raise ValueError("random order needs a seeded numpy Generator")
    if positions is not None:
        return _draws_at(positions, scores.shape[0], lambda: rng.permutation(scores.shape[1]))
    return np.stack([rng.permutation(scores.shape[1]) for _ in range(scores.shape[0])])


def _draws_at(positions, n: int, draw) -> np.ndarray:
    """``draw()`` called once per image of the whole set (up to the largest position), in
    order, keeping the draws of ``positions`` (so a subset gets the whole set's draws)."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.shape[0] != n or (positions < 0).any():
        raise ValueError(f"positions must be {n} non-negative image positions")
    wanted: dict[int, list[int]] = {}
    for row, position in enumerate(positions):
        wanted.setdefault(int(position), []).append(row)
    result = None
    for position in range(int(positions.max()) + 1 if n else 0):
        value = draw()
        if position in wanted:
            if result is None:
                result = np.empty((n, *np.shape(value)), dtype=np.asarray(value).dtype)
            for row in wanted[position]:
                result[row] = value
    return result


def region_rank_map(order: np.ndarray, grid: RegionGrid) -> np.ndarray:
    """Rank map ``(N, H, W)``: position of each pixel's region in ``order`` ``(N, R)``."""
    n = order.shape[0]
    position = np.empty_like(order)
    position[np.arange(n)[:, None], order] = np.arange(order.shape[1])[None, :]
    return position[:, grid.labels()].astype(np.int32)


def pixel_rank_map(maps: np.ndarray, aggregation: str = "mean") -> np.ndarray:
    """Rank map ``(N, H, W)`` of single pixels, most relevant first (signed, or ``"abs"``)."""
    require_choice(aggregation, AGGREGATIONS, "aggregation")
    values = np.abs(maps) if aggregation == "abs" else maps
    n, height, width = values.shape
    order = np.argsort(-values.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(height * width)[None, :]
    return rank.reshape(n, height, width).astype(np.int32)


def replacement_images(
    images: np.ndarray,
    perturbation: str = "noise",
    *,
    noise_sd: float = 0.3,
    blur_sigma: float = 4.0,
    seed: int = 0,
    positions=None,
) -> np.ndarray:
    """What replaces a removed pixel, per image ``(N, H, W, C)``.

    ``noise``: N(0, noise_sd) drawn once per image (seeded; with ``positions``, the images'
    positions in a larger set, each image gets the noise it gets in the whole set, so
    shards reproduce an unsharded run); ``mean``: the image's own mean
    (0 under the z-score convention, computed anyway); ``zeros``: 0; ``blur``: the image
    blurred with a Gaussian of ``blur_sigma`` pixels; ``speckle``: the image's own pixels in
    a seeded random order (one permutation per image, drawn from ``seed`` and the image's
    position): the replacement has exactly the image's intensity histogram (its speckle and
    its dark background alike) and no structure; unlike real speckle it is uncorrelated
    from pixel to pixel.
    """
    require_choice(perturbation, PERTURBATIONS, "perturbation")
    if perturbation == "noise":
        if noise_sd < 0:
            raise ValueError(f"noise_sd must be non-negative; got {noise_sd}")
        rng = np.random.default_rng(seed)
        if positions is not None and images.shape[0]:
            return _draws_at(positions, images.shape[0],
                             lambda: rng.normal(0.0, noise_sd, size=images.shape[1:])
                             ).astype(np.float32)
        return rng.normal(0.0, noise_sd, size=images.shape).astype(np.float32)
    if perturbation == "mean":
        means = images.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
        return np.broadcast_to(means, images.shape).astype(np.float32)
    if perturbation == "zeros":
        return np.zeros_like(images, dtype=np.float32)
    if perturbation == "speckle":
        where = np.arange(images.shape[0]) if positions is None else np.asarray(positions)
        if where.shape != (images.shape[0],) or (where < 0).any():
            raise ValueError(f"positions must be {images.shape[0]} non-negative image positions")
        shuffled = np.empty(images.shape, dtype=np.float32)
        for row, position in enumerate(where):
            pixels = images[row].reshape(-1, images.shape[-1])
            order = np.random.default_rng([int(seed), int(position)]).permutation(len(pixels))
            shuffled[row] = pixels[order].reshape(images.shape[1:])
        return shuffled
    if blur_sigma <= 0:
        raise ValueError(f"blur_sigma must be positive; got {blur_sigma}")
    return ndimage.gaussian_filter(
        images, sigma=(0, blur_sigma, blur_sigma, 0), mode="nearest"
    ).astype(np.float32)
