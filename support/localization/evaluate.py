"""CAMs of finished runs and ensembles on test images with lesions; per-image metrics; tables with 95 % CIs.

Protocol (notebook 07):

1. images: up to ``n_images`` TEST images with a non-empty lesion mask (a
   seeded sample, the same for every model; normal images have no lesion to
   find and are left out); ``threshold_images`` VALIDATION images with lesions
   choose each model's IoU/Dice threshold (:func:`.metrics.best_threshold`);
2. targets: the image's true class (where does the model see evidence of the
   disease the image has?);
3. models (:class:`Entry`): every single run; per seed, the top-K runs by
   validation MCC combined by each ensemble method's member weights (CAM =
   weighted mean of the members' CAMs) and the model-level ensemble of the same
   members (CAM on its 1x1 merge conv);
4. metrics at the masks' resolution against the lesion and the lung masks,
   plus ROAD (faithfulness) for models with one forward pass;
5. tables: per model and CAM method, the mean over images of the seed-averaged
   per-image value, sd over seeds, and a 95 % stratified bootstrap interval
   over images (:func:`support.stats.resample_indices`).

CAMs are cached under ``runs/localization/cams/<key>.npz``; the key covers
the run key, a hash of its ``best.pt``, the method, layer, image ids and
targets (so a retrained run is never read with stale CAMs).
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import artifacts, ensembles, inference, paths, stats  # ensembles: registers model_level, so run.model() loads those runs
from ..runs import Run
from ..tables import interval_cells
from . import metrics as M
from .cams import CamExtractor, LocalizationError, ensemble_cam, get_method, resize_cams

CACHE_VERSION = 1
#: Columns of the display table (primary CAM method), in order.
DISPLAY_METRICS = ("lesion_pointing", "lesion_energy", "lesion_iou@best", "lesion_dice@best", "lung_energy", "road")


@dataclass
class Entry:
    """One model to explain: a run, a prediction-level ensemble of runs, or a model-level run."""

    name: str
    kind: str                        # single | ensemble | model_level
    seed: int
    runs: List[Run]
    weights: Optional[List[float]] = None


@dataclass
class LocalizationResult:
    """Per-image metrics, notes on what was skipped, and the test CAMs (for figures)."""

    per_image: pd.DataFrame
    notes: List[str]
    test_index: np.ndarray            # rows of the test split that were explained
    cams: Dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)  # (entry, seed, method) -> [n, H, W]
    thresholds: pd.DataFrame = field(default_factory=pd.DataFrame)


# ----------------------------------------------------------------------------- inputs
def lesion_index(split, n: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of up to ``n`` images with a non-empty lesion mask (seeded sample); [] without masks."""
    if split.lesion_masks is None:
        return np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(split.lesion_masks.flatten(1).any(1).numpy())
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return rows


def class_interleaved(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` rows, a seeded shuffle of each class taken in turn (class 0, 1, ..., 0, 1, ...): the
    images explained on a source without lesion masks, so that the first rows show every class."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    order = [rows[i] for i in range(max(map(len, per_class), default=0)) for rows in per_class if i < len(rows)]
    return np.array(order[:n], dtype=np.int64)


def input_size(run: Run) -> int:
    return int(run.config["config"]["image_size"])


def _weights_hash(run: Run) -> str:
    return hashlib.sha256((run.path / "best.pt").read_bytes()).hexdigest()[:16]


def run_cams(run: Run, images_u8: torch.Tensor, ids: Sequence[str], targets, methods: Sequence[str],
             device="cpu", layer: str = "dcl", force: bool = False) -> Dict[str, np.ndarray]:
    """CAMs ``{method: float32 [N, S, S]}`` of one run at its input size ``S`` (cached, see module doc)."""
    from ..training import to_device_images

    targets = np.asarray(targets, dtype=np.int64)
    base = {"run": run.key, "weights": _weights_hash(run), "layer": layer, "ids": list(ids),
            "targets": targets.tolist(), "version": CACHE_VERSION}
    out, todo = {}, []
    for m in methods:
        get_method(m)
        path = paths.inside(paths.cam_cache_dir(), artifacts.config_key({**base, "method": m}) + ".npz")
        if path.exists() and not force:
            try:
                out[m] = artifacts.read_npz(path)["cams"].astype(np.float32)
                continue
            except (artifacts.ArtifactError, KeyError):
                pass  # unreadable cache file: recompute and overwrite it
        todo.append((m, path))
    if todo:
        model = run.model(device)
        x = to_device_images(images_u8, input_size(run), torch.device(device))
        for m, path in todo:
            with CamExtractor(model, m, layer) as cam:
                cams = cam(x, targets).astype(np.float16)  # stored as float16: fresh and cached values agree
            artifacts.write_npz(path, cams=cams)
            out[m] = cams.astype(np.float32)
    return out


# ----------------------------------------------------------------------------- entries
def single_entries(runs: Sequence[Run]) -> List[Entry]:
    """One :class:`Entry` per run, named by its loss label."""
    return [Entry(r.label, "single", r.seed, [r]) for r in runs]


def ensemble_entries(runs: Sequence[Run], k: int = 3, methods: Sequence[str] = ("average", "weighted"),
                     model_level: bool = True, data=None, progress: bool = False,
                     train_overrides: Optional[dict] = None) -> List[Entry]:
    """Per seed: the top-``k`` runs (validation MCC) under each ensemble method's weights, and their model-level run.

    Methods without member weights (``vote``, ``stacking``) have no CAM
    combination and are refused. The model-level run is trained if missing
    (cached when notebook 06 trained it with the same ``train_overrides``: the profile's
    ``ensembles.model_level`` settings).
    """
    out = []
    for seed, rs in ensembles.group_by_seed(runs).items():
        kk = min(k, len(rs))
        if kk < 2:
            continue
        top = ensembles.select_top_k(rs, kk)
        for method in methods:
            ens = ensembles.fit_runs(method, top)
            if ens.weights is None:
                raise LocalizationError(f"ensemble method {method!r} has no member weights to average CAMs with; "
                                        "use methods with weights, e.g. average or weighted")
            out.append(Entry(f"{method} top-{kk}", "ensemble", seed, top, [float(w) for w in ens.weights]))
        if model_level:
            level = ensembles.train_model_level(top, progress=progress, data=data, **(train_overrides or {}))
            out.append(Entry(f"model-level top-{kk}", "model_level", seed, [level]))
    return out


# ----------------------------------------------------------------------------- evaluation
def _entry_cams(entry: Entry, cams_of: Dict[str, Dict[str, np.ndarray]], method: str, size) -> np.ndarray:
    member = [resize_cams(cams_of[r.key][method], size) for r in entry.runs]
    return member[0] if len(member) == 1 and entry.weights is None else ensemble_cam(member, entry.weights)


def evaluate(entries: Sequence[Entry], bundle, methods: Sequence[str] = ("gradcam",), n_images: int = 64,
             method_images: Optional[Dict[str, int]] = None, threshold_images: int = 32, road_images: int = 0,
             road_percentiles: Sequence[int] = (20, 40, 60, 80), road_method: Optional[str] = None,
             device="cpu", seed: int = 0, force: bool = False, progress: bool = True) -> LocalizationResult:
    """CAMs and per-image localization metrics of every entry (see the module docstring).

    ``method_images``: fewer images for expensive methods (e.g. ``{"scorecam": 8}``:
    the first 8 of the sample). ``road_images``: ROAD on the first that many
    images, for ``road_method`` (default the first method), single and
    model-level entries of the lowest seed only. Images without lesion masks are skipped with a
    note; the lung metrics need lung masks (skipped with a note otherwise).
    """
    if not entries:
        raise LocalizationError("nothing to explain: no finished runs given (train them first, notebook 04)")
    method_images = dict(method_images or {})
    for m in methods:
        get_method(m)
    test, val = bundle.splits["test"], bundle.splits["val"]
    notes = []
    t_idx, v_idx = lesion_index(test, n_images, seed), lesion_index(val, threshold_images, seed)
    if test.lesion_masks is None:
        notes.append(f"{bundle.source}: no lesion masks, so no lesion metrics (lung metrics only where lung masks exist)")
        t_idx = class_interleaved(test.labels.numpy(), n_images, seed)  # every class in the grid's first rows
    elif not len(t_idx):
        notes.append("no test image has a non-empty lesion mask: lesion metrics skipped")
    if test.lesion_masks is not None and not len(v_idx):
        notes.append("no validation image with a lesion: IoU/Dice reported at fixed thresholds only")
    if test.lung_masks is None:
        notes.append(f"{bundle.source}: no lung masks, so no lung metrics")
    if not len(t_idx):
        return LocalizationResult(pd.DataFrame(), notes, t_idx)
    road_method = road_method or methods[0]
    road_seed = min(e.seed for e in entries)  # ROAD (slow: a sparse solve per image and percentile) on one seed

    runs = {r.key: r for e in entries for r in e.runs}
    y_test, y_val = test.labels[t_idx].numpy(), val.labels[v_idx].numpy()
    test_ids, val_ids = [test.ids[i] for i in t_idx], [val.ids[i] for i in v_idx]
    cams_test, cams_val = {}, {}
    for key, run in tqdm(runs.items(), desc="CAMs", disable=not progress, unit="model"):
        cams_test[key], cams_val[key] = {}, {}
        for m in methods:  # expensive methods (method_images) see the first images of each sample only
            n, nv = (min(len(i), method_images.get(m, len(i))) for i in (t_idx, v_idx))
            cams_test[key].update(run_cams(run, test.images[t_idx[:n]], test_ids[:n], y_test[:n], [m], device, force=force))
            if nv:
                cams_val[key].update(run_cams(run, val.images[v_idx[:nv]], val_ids[:nv], y_val[:nv], [m], device,
                                              force=force))

    size = tuple(test.images.shape[-2:])
    frames, thresholds, kept = [], [], {}
    for e in entries:
        for m in methods:
            cam = _entry_cams(e, cams_test, m, size)
            n = len(cam)
            kept[(e.name, e.seed, m)] = cam
            cols = {"entry": e.name, "kind": e.kind, "seed": e.seed, "method": m, "image_id": test_ids[:n],
                    "label": y_test[:n]}
            for prefix, split_masks, val_masks in (("lesion", test.lesion_masks, val.lesion_masks),
                                                    ("lung", test.lung_masks, val.lung_masks)):
                if split_masks is None or (prefix == "lesion" and test.lesion_masks is None):
                    continue
                masks = split_masks[t_idx[:n]].numpy()
                best = None
                if m in cams_val[e.runs[0].key] and val_masks is not None:
                    vcam = _entry_cams(e, cams_val, m, size)
                    best = M.best_threshold(vcam, val_masks[v_idx[:len(vcam)]].numpy())
                    thresholds.append({"entry": e.name, "seed": e.seed, "method": m, "mask": prefix, "threshold": best})
                cols.update(M.image_metrics(cam, masks, prefix, best))
            if m == road_method and road_images and e.kind != "ensemble" and e.seed == road_seed:
                r = min(road_images, n)
                run = e.runs[0]
                model = run.model(device)
                from ..training import to_device_images

                s = input_size(run)
                x = to_device_images(test.images[t_idx[:r]], s, torch.device(device))
                road = M.road_scores(model, x, resize_cams(cam[:r], s), y_test[:r], road_percentiles, seed)
                cols["road"] = np.concatenate([road, np.full(n - r, np.nan)])
            frames.append(pd.DataFrame(cols))
    if road_images:
        notes.append(f"ROAD ({road_method}, first {road_images} images, seed {road_seed}) needs one forward model: "
                     "computed for single runs and model-level ensembles, not for CAM averages")
    return LocalizationResult(pd.concat(frames, ignore_index=True), notes, t_idx, kept, pd.DataFrame(thresholds))


# ----------------------------------------------------------------------------- tables
def metric_columns(per_image: pd.DataFrame) -> List[str]:
    return [c for c in per_image.columns if c.startswith(("lesion_", "lung_", "marker_")) or c == "road"]


def summary(per_image: pd.DataFrame, metrics: Optional[Sequence[str]] = None, n_boot: int = 1000, seed: int = 0,
            level: float = 0.95) -> pd.DataFrame:
    """Long table per (entry, kind, method, metric): ``value`` (mean over images of the seed-averaged
    per-image value), ``sd`` over seeds, ``boot_lo``/``boot_hi`` (stratified bootstrap over images), counts."""
    columns = ["entry", "kind", "method", "metric", "value", "sd", "boot_lo", "boot_hi", "n_images", "n_seeds"]
    if per_image.empty:
        return pd.DataFrame(columns=columns)
    metrics = [m for m in (metrics or metric_columns(per_image)) if m in per_image]
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    keys = ["entry", "kind", "method"]
    by_image = per_image.groupby(keys + ["image_id"], sort=False)[metrics + ["label"]].mean()
    by_seed = per_image.groupby(keys + ["seed"], sort=False)[metrics].mean()
    rows = []
    for key, g in by_image.groupby(level=[0, 1, 2], sort=False):
        V = g[metrics].to_numpy(np.float64)                     # [images, metrics], NaN = undefined
        idx = stats.resample_indices(g["label"].to_numpy(), n_boot, stratified=True, seed=seed)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # all-NaN columns (e.g. ROAD beyond its images)
            boot = np.nanmean(V[idx], axis=1)                   # [n_boot, metrics]
            lo, hi = np.nanpercentile(boot, q, axis=0)
        seeds = by_seed.loc[key]
        for j, m in enumerate(metrics):
            n = int(np.isfinite(V[:, j]).sum())
            if not n:
                continue
            sd = inference.seed_summary(seeds[m])[1]
            rows.append(dict(zip(keys, key), metric=m, value=float(np.nanmean(V[:, j])), sd=float(sd),
                             boot_lo=float(lo[j]), boot_hi=float(hi[j]), n_images=n, n_seeds=int(seeds[m].notna().sum())))
    return pd.DataFrame(rows, columns=columns)


def display_table(long: pd.DataFrame, method: str = "gradcam", metrics: Sequence[str] = DISPLAY_METRICS,
                  digits: int = 3) -> pd.DataFrame:
    """One row per model for one CAM method: '<value> [lo, hi]' per metric, best pointing game first."""
    t = long[(long["method"] == method) & long["metric"].isin(metrics)]
    if t.empty:
        raise LocalizationError(f"no rows for CAM method {method!r}; methods present: {sorted(long['method'].unique())}")
    t = t.assign(cell=interval_cells(t["value"], t["boot_lo"], t["boot_hi"], digits))
    wide = t.pivot_table(index=["entry", "kind"], columns="metric", values="cell", aggfunc="first")
    first = next(m for m in metrics if m in set(t["metric"]))  # pointing game; ROAD on films without lesion masks
    order = t[t["metric"] == first].sort_values("value", ascending=False)["entry"]
    wide = wide.reset_index().set_index("entry").loc[list(dict.fromkeys(order))].reset_index()
    n = long.drop_duplicates("entry").set_index("entry")[["n_images", "n_seeds"]]
    wide = wide.join(n, on="entry")
    return wide[["entry", "kind", "n_images", "n_seeds"] + [m for m in metrics if m in wide.columns]]


#: Report column names of the numeric table (notebook 09 reads ``pointing`` as the headline).
REPORT_NAMES = {"lesion_pointing": "pointing", "lesion_energy": "energy", "lesion_iou@best": "iou",
                "lesion_dice@best": "dice", "lung_energy": "lung_energy", "road": "road"}


def numeric_table(long: pd.DataFrame, method: str = "gradcam") -> pd.DataFrame:
    """One row per model for one CAM method: ``<name>``, ``<name>_boot_lo``, ``<name>_boot_hi`` per metric
    (names of :data:`REPORT_NAMES`), best pointing game first; the CSV behind the display table."""
    t = long[(long["method"] == method) & long["metric"].isin(list(REPORT_NAMES))]
    out = t.drop_duplicates("entry")[["entry", "kind", "n_seeds"]].set_index("entry")
    for metric, name in REPORT_NAMES.items():
        part = t[t["metric"] == metric].set_index("entry")
        if part.empty:  # a measure this source cannot have (e.g. no lesion masks): no empty columns
            continue
        for col, suffix in (("value", ""), ("boot_lo", "_boot_lo"), ("boot_hi", "_boot_hi")):
            out[name + suffix] = part[col]
        out[f"{name}_n_images"] = part["n_images"]
    return out.sort_values("pointing", ascending=False).reset_index() if "pointing" in out else out.reset_index()


#: What 07 shows per kind of mask: the metrics of its bar charts and its CAM-method heatmap.
MASK_METRICS = {"lesion": ("lesion_pointing", "lesion_energy"), "lung": ("lung_pointing", "lung_energy")}


def shown_metrics(long: pd.DataFrame) -> Tuple[List[str], Optional[str]]:
    """``(bar metrics, heatmap metric)`` that ``long`` has: the lesion measures when the source has lesion
    masks, else the lung measures when it has lung masks, else ROAD alone (mask-free; no heatmap, ROAD is
    computed for one CAM method). Notebook 07 plots these instead of assuming lesion masks."""
    present = set(long["metric"])
    for kind in ("lesion", "lung"):
        bars = [m for m in MASK_METRICS[kind] if m in present]
        if bars:
            return bars, (f"{kind}_energy" if f"{kind}_energy" in present else None)
    return (["road"] if "road" in present else []), None


def skipped_note(bundle) -> str:
    """One sentence for notebook 07 and the report: which mask-based measures this source cannot have, or ""."""
    test = bundle.splits["test"]
    lesion = test.lesion_masks is not None and bool(test.lesion_masks.flatten(1).any(1).any())
    lung = test.lung_masks is not None
    if lesion and lung:
        return ""
    missing = [w for w, has in (("lesion", lesion), ("lung", lung)) if not has]
    skipped = (["pointing game, energy inside the lesion, IoU/Dice"] if not lesion else []) + \
              (["energy inside the lungs"] if not lung else [])
    return (f"{bundle.source} has no {' or '.join(missing)} masks, so the mask-based measures "
            f"({'; '.join(skipped)}) are skipped; the CAM grids and the mask-free ROAD faithfulness score "
            f"are computed{' (pass boxes= an RSNA-style box CSV to score lesions)' if not lesion else ''}.")


def chance_level(long: pd.DataFrame, prefix: str = "lesion") -> float:
    """Mean mask area fraction: the pointing/energy score of a CAM without information."""
    area = long[long["metric"] == f"{prefix}_area"]["value"]
    return float(area.mean()) if len(area) else float("nan")


def warn_notes(result: LocalizationResult) -> None:
    for note in result.notes:
        warnings.warn(note, stacklevel=2)


def conclusions(long: pd.DataFrame, method: str = "gradcam", shortcut=None, top: int = 3) -> str:
    """A short Markdown summary: the best localisers by pointing game and energy, and the shortcut result."""
    f = "{:.3f}".format
    lines = []
    t = long[long["method"] == method]
    chance = chance_level(t)
    for metric, what in (("lesion_pointing", "pointing game"), ("lesion_energy", "CAM energy inside the lesion")):
        part = t[t["metric"] == metric].sort_values("value", ascending=False)
        if part.empty:
            continue
        best = part.iloc[0]
        tied = part[part["boot_hi"] >= best["boot_lo"]]["entry"].tolist()
        shown = "; ".join(f"**{r.entry}** {f(r.value)} [{f(r.boot_lo)}, {f(r.boot_hi)}]" for r in part.head(top).itertuples())
        lines.append(f"- {what} ({method}, {int(best['n_images'])} test images with lesions, 95 % bootstrap CI): {shown}. "
                     f"No information would score {f(chance)} (mean lesion area). {len(tied)} of {len(part)} models "
                     f"have intervals overlapping the best one's, so the ranking beyond them is not resolved.")
    road = t[t["metric"] == "road"].sort_values("value", ascending=False)
    if not lines and len(road):
        shown = "; ".join(f"**{r.entry}** {f(r.value)} [{f(r.boot_lo)}, {f(r.boot_hi)}]"
                          for r in road.head(top).itertuples())
        lines.append(f"- no lesion masks, so no lesion measures. ROAD faithfulness ({method}, "
                     f"{int(road.iloc[0]['n_images'])} test images; higher: removing the CAM's top pixels hurts the "
                     f"model more than removing its bottom ones): {shown}.")
    if shortcut is not None:
        acc, att = shortcut.accuracy, shortcut.attention.set_index(["entry", "metric"])["value"]
        for r in acc.itertuples():
            me = [att.get((f"{r.loss} ({tag})", "marker_energy"), np.nan) for tag in ("clean", "biased")]
            le = [att.get((f"{r.loss} ({tag})", "lesion_energy"), np.nan) for tag in ("clean", "biased")]
            lines.append(f"- shortcut, **{r.loss}** (marker_bias {shortcut.marker_bias:g}): test accuracy "
                         f"{f(r.clean_test_acc)} → {f(r.biased_test_acc)} (drop {f(r.drop)} [{f(r.drop_lo)}, {f(r.drop_hi)}]; "
                         f"validation with the marker {f(r.biased_val_acc)}); CAM energy on the marker "
                         f"{f(me[0])} → {f(me[1])}, on the lesion {f(le[0])} → {f(le[1])} (clean → biased training).")
    return "\n".join(lines)
