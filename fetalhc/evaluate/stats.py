"""Scores of curves and their uncertainty: AOPC, areas under curves, bootstrap CIs, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fetalhc.evaluate.settings import check_error_split


def aopc(curves) -> np.ndarray:
    """Per-image AOPC for regression: ``e(0) - 1/(K+1) * sum_{k=0..K} e(k)``.

    ``curves`` is ``(N, K+1)`` (or one curve ``(K+1,)``): an error (or |shift|) after
    ``k`` perturbation steps. The error grows as relevant regions are destroyed, so a more
    negative AOPC is better. The unit is that of the curve (mm).
    """
    values = np.asarray(curves, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    return values[:, 0] - values.mean(axis=1)


def area_under_curve(curves, fractions) -> np.ndarray:
    """Per-image trapezoid area under ``curves`` ``(N, F)`` over ``fractions`` ``(F,)``,
    divided by the span of the fraction axis (so the area is a mean value, same unit)."""
    values = np.asarray(curves, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    x = np.asarray(fractions, dtype=np.float64)
    if x.shape != values.shape[1:]:
        raise ValueError(f"{x.size} fractions for curves of {values.shape[1]} points")
    span = x[-1] - x[0]
    if span <= 0:
        raise ValueError("the fraction axis must increase")
    widths = np.diff(x)
    return (0.5 * (values[:, 1:] + values[:, :-1]) * widths).sum(axis=1) / span


def bootstrap_ci(
    values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, int]:
    """Mean and percentile bootstrap CI over images: ``(mean, low, high, n)``.

    NaN values (images without a reference) are left out; with none left everything is NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    n = int(data.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(data.mean())
    if n == 1:
        return mean, mean, mean, 1
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    # Chunked resampling: memory stays bounded for many images.
    chunk = max(1, 2_000_000 // n)
    for start in range(0, int(n_boot), chunk):
        stop = min(start + chunk, int(n_boot))
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = data[index].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # The percentile interval of a skewed sample can miss the mean by a hair; widen to it.
    return mean, float(min(low, mean)), float(max(high, mean)), n


def summarise(
    frame: pd.DataFrame,
    metrics,
    by=("method",),
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table: one row per group and metric with ``mean``, ``ci_low``, ``ci_high``, ``n``."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    groups = frame.groupby(by, sort=False, dropna=False) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            if metric not in group:
                continue
            mean, low, high, n = bootstrap_ci(group[metric], confidence, n_boot, seed)
            rows.append({**dict(zip(by, key, strict=True)), "metric": metric, "mean": mean,
                         "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=[*by, "metric", "mean", "ci_low", "ci_high", "n"])


def error_groups(abs_error_mm, threshold_mm=None, quantiles=None) -> np.ndarray:
    """Label each image by its prediction error (mm) for split analyses.

    ``threshold_mm`` (a number or a list) splits at fixed errors; ``quantiles`` (e.g.
    ``[0.5]`` or ``[0.25, 0.75]``) at quantiles of the errors given. Labels read like
    ``"error <= 2.0 mm"``, ``"2.0 < error <= 5.0 mm"``, ``"error > 5.0 mm"``; images without
    a reference get ``"no reference"``.
    """
    errors = np.asarray(abs_error_mm, dtype=np.float64).reshape(-1)
    if (threshold_mm is None) == (quantiles is None):
        raise ValueError("give exactly one of threshold_mm and quantiles")
    check_error_split(threshold_mm, quantiles)
    finite = np.isfinite(errors)
    if threshold_mm is not None:
        edges = np.atleast_1d(np.asarray(threshold_mm, dtype=np.float64))
    else:
        q = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
        if np.any((q <= 0) | (q >= 1)):
            raise ValueError(f"quantiles must lie strictly between 0 and 1; got {list(q)}")
        if not finite.any():  # e.g. the challenge split: nothing to split on
            return np.full(errors.shape, "no reference", dtype=object)
        edges = np.quantile(errors[finite], q)
    edges = np.unique(edges)
    names = []
    for i in range(len(edges) + 1):
        if i == 0:
            names.append(f"error <= {edges[0]:.2f} mm")
        elif i == len(edges):
            names.append(f"error > {edges[-1]:.2f} mm")
        else:
            names.append(f"{edges[i - 1]:.2f} < error <= {edges[i]:.2f} mm")
    labels = np.full(errors.shape, "no reference", dtype=object)
    bins = np.searchsorted(edges, errors[finite], side="left")
    labels[finite] = np.asarray(names, dtype=object)[bins]
    return labels


# ----------------------------------------------------------------------------- paired tests
def paired_test(differences, confidence: float = 0.95, n_boot: int = 2000,
                n_flips: int = 10000, seed: int = 0) -> dict:
    """Per-image paired differences ``a - b`` (NaN left out) → ``mean`` with its percentile
    bootstrap CI (``ci_low``, ``ci_high``), ``n`` and a two-sided ``p`` of the sign-flip
    randomisation test (H0: the differences are symmetric about 0; each image's sign is
    flipped at random ``n_flips`` times; ``p >= 1 / (n_flips + 1)``)."""
    data = np.asarray(differences, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    mean, low, high, n = bootstrap_ci(data, confidence, n_boot, seed)
    if n < 2:
        return {"mean": mean, "ci_low": low, "ci_high": high, "n": n, "p": float("nan")}
    rng = np.random.default_rng(seed + 1)
    observed = abs(data.mean())
    extreme = 0
    chunk = max(1, 2_000_000 // n)
    for start in range(0, int(n_flips), chunk):
        count = min(chunk, int(n_flips) - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(count, n))
        extreme += int((np.abs((signs * data).mean(axis=1)) >= observed - 1e-12).sum())
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n,
            "p": (extreme + 1) / (int(n_flips) + 1)}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN): the adjusted
    p of the k-th smallest is ``max_{j <= k} min(1, (m - j + 1) p_(j))`` over the m finite
    ones; reject at level alpha where the adjusted p is at most alpha."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
