"""The seed paper's claims decided with paired tests per image and Holm's correction.

Every comparison here pairs two numbers of the same image (two methods' maps of one model,
a method and the random order, one method's maps of two models): the difference per image
gets a bootstrap CI (:func:`fetalhc.evaluate.stats.paired_test`) and a sign-flip p; the p of
a family of comparisons (named per table) are Holm-adjusted, and a difference counts as
*significant* when its adjusted p is at most :data:`ALPHA`.

Tables (written by :func:`fetalhc.report.study.collect` into ``tables/``):
``paired_vs_random.csv`` (every method against the random order, a family per model and
protocol), ``paired_methods.csv`` (every pair of methods, a family per model and protocol)
and ``claims.csv`` (each claim of the paper: the test, the evidence and the verdict:
``reproduced``, ``refuted`` or ``undecided at this n``).

AOPC in mm (MoRF of |error|, more negative = better); the contour claim uses the richer
protocol's contour-band ratio (larger = closer to the skull).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

ALPHA = 0.05
AOPC = "aopc_morf_abs_error_mm"
RANDOM = "aopc_random_abs_error_mm"
BAND = "band_ratio"
REPRODUCED, REFUTED, UNDECIDED = "reproduced", "refuted", "undecided at this n"
# the per-image columns the claims need (the compact per_image.csv of the report)
PER_IMAGE_COLUMNS = ("abs_error_mm", AOPC, RANDOM, "aopc_lerf_abs_error_mm",
                     "aopc_morf_abs_error_px_original", BAND, "inside_mass_fraction",
                     "inside_area_fraction")
FAMILIES = {"small_cnn": "plain", "vgg16": "plain", "small_resnet": "residual",
            "resnet50": "residual"}
LABELS = {"input_x_gradient": "Input x Gradient", "lrp_z": "LRP-z",
          "lrp_epsilon": "LRP-epsilon", "integrated_gradients": "IG", "gradient": "Gradient",
          "guided_backprop": "Guided Backprop", "deep_taylor": "DeepTaylor",
          "deconvnet": "DeConvNet"}


def _wide(per_image: pd.DataFrame, column: str) -> pd.DataFrame:
    """Images (rows, by file name) x methods (columns) of one per-image column."""
    return per_image.pivot_table(index="filename", columns="method", values=column,
                                 aggfunc="first")


def _test(differences, seed: int = 0) -> dict:
    from fetalhc.evaluate.stats import paired_test

    result = paired_test(differences, seed=seed)
    return {"mean difference": result["mean"], "CI low": result["ci_low"],
            "CI high": result["ci_high"], "images": result["n"], "p": result["p"]}


def _holm(rows: list[dict]) -> list[dict]:
    from fetalhc.evaluate.stats import holm

    adjusted = holm([row["p"] for row in rows])
    for row, value in zip(rows, adjusted, strict=True):
        row["Holm p"] = value
        row["significant"] = bool(np.isfinite(value) and value <= ALPHA)
    return rows


def paired_vs_random(per_image: dict, methods: Sequence[str]) -> pd.DataFrame:
    """Per model and protocol: each method's MoRF − random AOPC (mm) per image; a family
    per model and protocol; ``beats random`` = significant and below 0."""
    rows = []
    for (model, protocol), frame in per_image.items():
        family = []
        for method in methods:
            mine = frame[frame["method"] == method]
            family.append({"model": model, "protocol": protocol, "method": method,
                           **_test(mine[AOPC].to_numpy() - mine[RANDOM].to_numpy())})
        rows += _holm(family)
    table = pd.DataFrame(rows)
    table["beats random"] = table["significant"] & (table["mean difference"] < 0)
    return table.rename(columns={"mean difference": "MoRF - random (mm)"})


def paired_methods(per_image: dict, methods: Sequence[str], column: str = AOPC,
                   protocols: Sequence[str] = ("paper",)) -> pd.DataFrame:
    """Per model and protocol: every pair of methods, ``a − b`` of ``column`` per image;
    Holm over the pairs of one model and protocol."""
    rows = []
    for (model, protocol), frame in per_image.items():
        if protocol not in protocols or column not in frame:
            continue
        wide = _wide(frame, column)
        family = [{"model": model, "protocol": protocol, "metric": column, "method a": a,
                   "method b": b, **_test(wide[a].to_numpy() - wide[b].to_numpy())}
                  for a, b in itertools.combinations(methods, 2)
                  if a in wide and b in wide]
        rows += _holm(family)
    return pd.DataFrame(rows)


def _directions(family: list[dict]) -> tuple[list[dict], list[dict]]:
    """Holm over ``family``; the significant rows with a positive and a negative mean
    difference."""
    family = _holm(family)
    return ([r for r in family if r["significant"] and r["mean difference"] > 0],
            [r for r in family if r["significant"] and r["mean difference"] < 0])


def _pair(pairs: pd.DataFrame, model: str, a: str, b: str, metric: str = AOPC):
    """The row of ``a`` vs ``b`` (either order) as ``(difference a − b, significant)``."""
    rows = pairs[(pairs["model"] == model) & (pairs["metric"] == metric)]
    hit = rows[(rows["method a"] == a) & (rows["method b"] == b)]
    if not hit.empty:
        return float(hit["mean difference"].iloc[0]), bool(hit["significant"].iloc[0])
    hit = rows[(rows["method a"] == b) & (rows["method b"] == a)]
    if not hit.empty:
        return -float(hit["mean difference"].iloc[0]), bool(hit["significant"].iloc[0])
    return float("nan"), False


def _models(models: pd.DataFrame) -> dict[str, tuple[str, str]]:
    return {row["model"]: (FAMILIES.get(str(row.get("backbone")), "other"),
                           str(row.get("loss", "")).upper()) for _, row in models.iterrows()}


def claims(models: pd.DataFrame, per_image: dict, methods: Sequence[str],
           pairs: pd.DataFrame, beats: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims, each with ``test``, ``evidence`` and ``verdict``."""
    kinds = _models(models)
    names = list(kinds)
    paper_beats = beats[beats["protocol"] == "paper"]
    rows = []

    def better_than(model, method):
        """Methods significantly better (lower AOPC) than ``method`` / worse than it."""
        better, worse = [], []
        for other in methods:
            if other == method:
                continue
            difference, significant = _pair(pairs, model, method, other)
            if significant:
                (better if difference > 0 else worse).append(other)
        return better, worse

    for method in ("input_x_gradient", "lrp_z"):
        if method not in methods:
            continue
        verdicts, evidence = [], []
        for model in names:
            better, worse = better_than(model, method)
            beat = paper_beats[(paper_beats["model"] == model)
                               & (paper_beats["method"] == method)]["beats random"]
            beats_random = bool(beat.iloc[0]) if len(beat) else False
            verdicts.append(REFUTED if better else REPRODUCED if beats_random else UNDECIDED)
            evidence.append(f"`{model}`: significantly worse than {len(better)} "
                            f"({', '.join(better) or 'none'}), better than {len(worse)}; "
                            f"beats random: {'yes' if beats_random else 'no'}")
        rows.append({
            "claim": f"{LABELS[method]} is at or near the top for every model and loss",
            "test": f"paired AOPC (mm) of {LABELS[method]} against each other method, Holm "
                    "over the pairs of each model; reproduced for a model when no method is "
                    "significantly better and it beats random, refuted when one is",
            "evidence": "; ".join(evidence), "verdict": _overall(verdicts)})
    plain_mae = [m for m in names if kinds[m] == ("plain", "MAE")]
    if "integrated_gradients" in methods and plain_mae:
        verdicts, evidence = [], []
        for model in plain_mae:
            better, worse = better_than(model, "integrated_gradients")
            verdicts.append(REFUTED if better else REPRODUCED
                            if len(worse) == len(methods) - 1 else UNDECIDED)
            evidence.append(f"`{model}`: {len(better)} methods significantly better than IG "
                            f"({', '.join(better) or 'none'}), {len(worse)} worse")
        rows.append({"claim": "IG is the best method for the plain network with the MAE loss",
                     "test": "paired AOPC (mm) of IG against each other method (Holm per "
                             "model); reproduced when IG is significantly better than all",
                     "evidence": "; ".join(evidence), "verdict": _overall(verdicts)})
    if {"integrated_gradients", "gradient"} <= set(methods):
        found = []
        for model in names:
            difference, significant = _pair(pairs, model, "integrated_gradients", "gradient")
            found.append((model, difference, significant))
        # the paper's case: the residual network with the MAE loss
        tested = [(m, d, s) for m, d, s in found if kinds[m] == ("residual", "MAE")]
        worse = [m for m, d, s in tested if s and d > 0]
        better = [m for m, d, s in tested if s and d < 0]
        rows.append({
            "claim": "IG fails in some settings (ResNet50 / MAE: worse than Gradient)",
            "test": "paired AOPC (mm) IG − Gradient on the residual MAE model(s) (Holm over "
                    "each model's pairs; the other models for context); reproduced when IG "
                    "is significantly worse for one, refuted when it is significantly better "
                    "for all, undecided otherwise or without such a model",
            "evidence": "; ".join(f"`{m}` {_signed(d)} mm{' (significant)' if s else ''}"
                                  for m, d, s in found),
            "verdict": REPRODUCED if worse else REFUTED if tested and len(better) == len(tested)
            else UNDECIDED})
    rows += _residual_claims(kinds, per_image, methods)
    for extra in (_contour_claim(names, per_image), _error_claim(names, per_image, methods)):
        if extra is not None:
            rows.append(extra)
    return pd.DataFrame(rows, columns=["claim", "test", "evidence", "verdict"])


def _residual_claims(kinds, per_image, methods) -> list[dict]:
    """Residual vs plain model of one loss, per method on the same images (Holm over the
    methods): reproduced when the residual one is significantly better for some method and
    worse for none, refuted when the reverse or both."""
    rows = []
    for loss in sorted({loss for _, loss in kinds.values()}):
        plain = [m for m, kind in kinds.items() if kind == ("plain", loss)]
        residual = [m for m, kind in kinds.items() if kind == ("residual", loss)]
        for a, b in itertools.product(plain, residual):
            if (a, "paper") not in per_image or (b, "paper") not in per_image:
                continue
            wide_a, wide_b = _wide(per_image[(a, "paper")], AOPC), _wide(per_image[(b, "paper")],
                                                                         AOPC)
            shared = wide_a.index.intersection(wide_b.index)
            family = [{"method": m, **_test(wide_b.loc[shared, m].to_numpy()
                                            - wide_a.loc[shared, m].to_numpy())}
                      for m in methods if m in wide_a and m in wide_b]
            higher, lower = _directions(family)
            better, worse = [r["method"] for r in lower], [r["method"] for r in higher]
            verdict = (REPRODUCED if better and not worse else REFUTED if worse
                       else UNDECIDED)
            rows.append({
                "claim": f"ResNet50 explains better than VGG16 (here `{b}` vs `{a}`, {loss} "
                         "loss)",
                "test": "paired AOPC (mm) residual − plain per image and method on the same "
                        f"{len(shared)} images, Holm over the methods",
                "evidence": f"residual significantly better for {len(better)} of "
                            f"{len(family)} methods ({', '.join(better) or 'none'}), worse "
                            f"for {len(worse)} ({', '.join(worse) or 'none'}); the models' "
                            "errors differ too",
                "verdict": verdict})
    return rows


def _contour_claim(names, per_image) -> dict | None:
    """Guided Backprop and DeepTaylor above Gradient and DeConvNet by contour-band ratio
    (4 paired comparisons per model, Holm over all of them)."""
    pairs = [("guided_backprop", "gradient"), ("guided_backprop", "deconvnet"),
             ("deep_taylor", "gradient"), ("deep_taylor", "deconvnet")]
    family = []
    for model in names:
        frame = per_image.get((model, "rich"))
        if frame is None or BAND not in frame:
            continue
        wide = _wide(frame, BAND)
        family += [{"model": model, "pair": f"{LABELS[a]} − {LABELS[b]}",
                    **_test(wide[a].to_numpy() - wide[b].to_numpy())}
                   for a, b in pairs if a in wide and b in wide]
    if not family:
        return None
    higher, lower = _directions(family)
    return {
        "claim": "Guided Backprop and DeepTaylor trace the contour more clearly than Gradient "
                 "and DeConvNet (shown, not measured, in the paper)",
        "test": "paired contour-band ratio (richer protocol) of GB and DT against Gradient and "
                f"DeConvNet, {len(family)} comparisons, Holm over all; reproduced when all "
                "are significantly higher, refuted when any is significantly lower",
        "evidence": f"significantly higher in {len(higher)} of {len(family)}, lower in "
                    f"{len(lower)}" + (f" ({'; '.join(r['model'] + ': ' + r['pair'] for r in lower)})"
                                       if lower else ""),
        "verdict": REFUTED if lower else REPRODUCED if len(higher) == len(family)
        else UNDECIDED}


def _two_sample_p(a: np.ndarray, b: np.ndarray, n_shuffles: int = 5000,
                  seed: int = 0) -> float:
    """Two-sided permutation p of the difference of the means of ``a`` and ``b``."""
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for _ in range(n_shuffles):
        shuffled = rng.permutation(pooled)
        extreme += abs(shuffled[:len(a)].mean() - shuffled[len(a):].mean()) >= observed - 1e-12
    return (extreme + 1) / (n_shuffles + 1)


def _error_claim(names, per_image, methods) -> dict | None:
    """AOPC (mm) of the images above each model's median error against those at or below
    it, per model and method (two samples: a permutation p, Holm over all pairs)."""
    family = []
    for model in names:
        frame = per_image.get((model, "paper"))
        if frame is None:
            continue
        for method in methods:
            mine = frame[frame["method"] == method]
            error, aopc = mine["abs_error_mm"].to_numpy(), mine[AOPC].to_numpy()
            high = error > np.median(error)
            if high.sum() < 2 or (~high).sum() < 2:
                continue
            family.append({"model": model, "method": method,
                           "mean difference": float(aopc[high].mean() - aopc[~high].mean()),
                           "p": _two_sample_p(aopc[high], aopc[~high])})
    if not family:
        return None
    worse, better = _directions(family)
    return {
        "claim": "Map quality is worse where the prediction error is high (shown with "
                 "examples, not measured, in the paper)",
        "test": "AOPC (mm) of the images above each model's median |error| minus those at or "
                f"below it, per model and method ({len(family)} pairs), permutation p, Holm "
                "over all; reproduced when some are significantly worse and none better",
        "evidence": f"significantly worse (less negative) in the high-error half for "
                    f"{len(worse)} of {len(family)} model-method pairs, better for "
                    f"{len(better)}; mean difference "
                    f"{_signed(float(np.mean([r['mean difference'] for r in family])))} mm",
        "verdict": REPRODUCED if worse and not better else REFUTED if better
        else UNDECIDED}


def _overall(verdicts: list[str]) -> str:
    """A claim about every model: refuted by one, reproduced by all, undecided otherwise."""
    if REFUTED in verdicts:
        return REFUTED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else UNDECIDED


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.2f}".replace("-", "−")


# ----------------------------------------------------------------------------- ranks
def ranks(values) -> np.ndarray:
    """Rank 1 = most negative (best AOPC); ties share the mean rank."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=float))


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences."""
    a, b = ranks(a) - ranks(a).mean(), ranks(b) - ranks(b).mean()
    scale = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / scale) if scale > 0 else float("nan")


def permutation_p(a, b) -> float:
    """Exact one-sided p of a Spearman rho at least the observed one over every ordering
    of ``b`` (NaN above 9 methods)."""
    if len(a) > 9:
        return float("nan")
    rho = np.array([spearman(a, order) for order in itertools.permutations(ranks(b))])
    return float(np.mean(rho >= spearman(a, b) - 1e-12))


def rho_interval(per_image: pd.DataFrame, methods, reference, column: str, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of Spearman's rho between the per-method means and
    ``reference`` over bootstrap resamples of the images (the same for every method)."""
    wide = per_image.pivot_table(index="filename", columns="method", values=column)
    values = wide[list(methods)].to_numpy(float)
    rng = np.random.default_rng(seed)
    resampled = (np.nanmean(values[rng.integers(0, len(values), len(values))], axis=0)
                 for _ in range(n_boot))
    rho = [spearman(means, reference) for means in resampled
           if np.all(np.isfinite(means)) and np.ptp(means) > 0]
    if not rho:
        return float("nan"), float("nan")
    low, high = np.quantile(rho, [0.025, 0.975])
    return float(low), float(high)
