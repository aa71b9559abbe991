"""The loss study in the regimes where losses are said to matter: label noise and acquisition shift.

A regime is a change of the data (:data:`REGIMES`, knobs of :mod:`support.data.phantom_knobs`):

* ``clean``        notebook 04's runs as they are;
* ``label_noise``  new runs trained (fused, ``training.train_many``, as the pipeline's training stages) on
                   data whose train and val labels are noisy: 20 % of the pneumonia labels swapped
                   bacterial <-> viral, mostly in mild cases; their test films and labels are the clean ones;
* ``shift``        no new training: the clean runs scored on a test draw from "another hospital" (the same
                   patients filmed by another acquisition chain, ``shift="hospital_b"``).

Seeds: a regime that trains (label noise) uses the profile's ``regimes.seeds``; clean and shift re-score
notebook 04's runs and use all of its seeds (no training cost). Runs are keyed by their data parameters, so the
regimes never mix; the shifted predictions are cached
under ``runs/regimes/<run key>-<test data key>.npz``. Every regime is scored on the same test patients
with true labels, so one image bootstrap serves every loss, seed and regime: intervals and tests are
paired across losses and across regimes (:mod:`support.inference`: seed and image noise, Holm).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import artifacts, compare, inference, paths, profiles, stats, sweep, training
from .runs import Run


@dataclass(frozen=True)
class Regime:
    """A data regime: ``train`` data parameters of its runs, ``test`` data parameters it is scored on."""

    title: str
    train: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)


#: The regimes (one registry): data knobs on top of the profile's data.
REGIMES = {
    "clean": Regime("clean (the profile's data)"),
    "label_noise": Regime("label noise (20 % bacterial <-> viral, mostly mild cases; train/val only)",
                          train={"label_noise": 0.2, "noise_structure": "pneumonia_mild"}),
    "shift": Regime("acquisition shift (test films from hospital_b: exposure, contrast, grain, blur, device stamp)",
                    test={"shift": "hospital_b"}),
}
#: The table's metrics: headline, calibration, and the class a model serves worst.
REGIME_METRICS = ("mcc", "ece", "worst_class_recall")


def regime_of(data: dict) -> str:
    """The regime a run's (resolved) training data belongs to: the regime whose training knobs it carries,
    ``clean`` when it carries none of the regime knobs, else ``other`` (e.g. another noise rate)."""
    knobs = {k for r in REGIMES.values() for k in r.train}
    for name, r in REGIMES.items():
        if r.train and all(data.get(k) == v for k, v in r.train.items()):
            return name
    return "clean" if not knobs & set(data) else "other"


def check_regime(regime: str) -> str:
    """``regime`` if it is a known regime name, else a ValueError naming the valid ones."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; valid: {', '.join(REGIMES)}")
    return regime


def settings(profile: str) -> dict:
    """The profile's ``regimes`` section, checked: regimes, losses (with the reference), seeds, bootstrap."""
    spec = profiles.get(profile)["regimes"]
    unknown = [r for r in spec["regimes"] if r not in REGIMES]
    if unknown:
        raise ValueError(f"profile {profile!r}: unknown regime(s) {unknown}; valid: {', '.join(REGIMES)}")
    if spec["reference"] not in spec["losses"]:
        raise ValueError(f"profile {profile!r}: the reference loss {spec['reference']!r} must be among the regime "
                         f"losses {list(spec['losses'])}")
    return spec


def seeds_of(profile: str, regime: str) -> List[int]:
    """The seeds of ``regime``: the regime section's seeds where it trains new runs; notebook 04's seeds (the
    profile's, already trained) where it only re-scores them -- clean and shift cost no training."""
    return list(settings(profile)["seeds"] if REGIMES[regime].train else profiles.get(profile)["seeds"])


def configs(profile: str, data: str, regime: str, losses: Sequence[str], seeds: Sequence[int]):
    """The TrainConfigs of ``regime``'s runs: notebook 04's configs with the regime's training data."""
    extra = REGIMES[regime].train
    return [dataclasses.replace(c, data={**c.data, **extra}) if extra else c
            for c in sweep.notebook_configs(profile, data, losses, seeds)]


def train(profile: str, data: str = "phantom", force: bool = False, progress: bool = True) -> list:
    """Train every regime's runs that are not finished (``train_many``: the runs of one seed and regime train
    fused). ``force`` retrains the regimes' own runs (label noise); the runs they re-score are notebook 04's and
    are only trained when missing (``./run_all.sh --force`` already retrained them once). Returns the run
    folders; a failed run raises ``training.TrainingError`` naming it."""
    spec = settings(profile)
    own, borrowed = [], []
    for r in spec["regimes"]:
        (own if REGIMES[r].train else borrowed).extend(configs(profile, data, r, spec["losses"], seeds_of(profile, r)))
    return (training.train_many(borrowed, runs_dir=paths.runs_dir(), progress=progress)
            + training.train_many(own, runs_dir=paths.runs_dir(), force=force, progress=progress))


def runs(profile: str, data: str, regime: str) -> List[Run]:
    """The finished runs behind ``regime`` (its training data); raises naming the missing ones."""
    spec = settings(profile)
    out, missing = [], []
    for c in configs(profile, data, regime, spec["losses"], seeds_of(profile, regime)):
        d = training.run_dir_for(c, paths.runs_dir())
        if training.is_finished(d):
            out.append(Run(d))
        else:
            missing.append(f"{c.loss}/seed {c.seed}")
    if missing:
        raise ValueError(f"regime {regime!r}: runs not trained yet: {', '.join(missing)}; run "
                         f"support.regimes.train({profile!r}) (notebook 10) first")
    return out


def _cache_path(run: Run, test: dict):
    """Keyed by the run folder, its metrics.json (a retrained run writes a new one) and the test data."""
    import hashlib

    trained = hashlib.sha1((run.path / "metrics.json").read_bytes()).hexdigest()[:12]
    key = artifacts.config_key({"run": run.key, "trained": trained, "test": test})
    return paths.inside(paths.runs_dir() / "regimes", f"{run.key}-{key}.npz")


def _rescored(rs: Sequence[Run], test: dict, bundle) -> Dict[str, np.ndarray]:
    """``{run key: probs[N, K]}``: each run's predictions on the test split of ``bundle``, cached per run and
    test data; the runs not cached yet are predicted together (one fused module, ``training.predict_many``)."""
    out = {r.key: artifacts.read_npz(_cache_path(r, test))["probs"] for r in rs if _cache_path(r, test).exists()}
    todo = [r for r in rs if r.key not in out]
    by_size: Dict[int, List[Run]] = {}
    for r in todo:
        by_size.setdefault(int(r.config["config"]["image_size"]), []).append(r)
    ids = np.array(bundle.splits["test"].ids, dtype=str)
    for size, group in by_size.items():
        x = training.to_device_images(bundle.splits["test"].images, size, training.resolve_device("cpu"))
        nets = [r.model() for r in tqdm(group, desc="loading runs", leave=False)]
        for r, p in zip(group, training.predict_many(nets, x)):
            out[r.key] = p.numpy().astype(np.float32)
            artifacts.write_npz(_cache_path(r, test), probs=out[r.key], ids=ids)
    return out


def regime_probs(profile: str, data: str, regime: str) -> Tuple[np.ndarray, Dict[str, np.ndarray], List[int], str]:
    """``(y, {loss: probs[S, N, K]}, seeds, source)`` of ``regime`` on its test films (true labels)."""
    rs = runs(profile, data, regime)
    test = REGIMES[regime].test
    if not test:
        y, probs, seeds, _ = compare.seed_stack(rs)
        return y, probs, seeds, rs[0].metrics["data_source"]
    from .data import data_config, load

    bundle = load(**{**data_config(profile, data), **test}, verbose=False)
    groups = compare.group_by_loss(rs)
    y = bundle.splits["test"].labels.numpy()
    if not np.array_equal(np.asarray(bundle.splits["test"].ids), next(iter(groups.values()))[0].ids("test")):
        raise ValueError(f"regime {regime!r}: its test films are not the clean runs' test patients; "
                         "a test-side regime must keep the profile's test draw (n_test, seed)")
    scored = _rescored(rs, test, bundle)
    probs = {loss: np.stack([scored[r.key] for r in group]) for loss, group in groups.items()}
    return y, probs, sorted({r.seed for r in rs}), bundle.source


def study(profile: str, data: str = "phantom", n_boot: Optional[int] = None, seed: int = 0) -> dict:
    """Every regime's probabilities and the shared image resamples: the input of the tables below."""
    spec = settings(profile)
    out = {r: regime_probs(profile, data, r) for r in spec["regimes"]}
    ys = [v[0] for v in out.values()]
    if any(not np.array_equal(ys[0], y) for y in ys[1:]):
        raise ValueError("the regimes were scored on different test labels; they must share the test patients")
    n_boot = n_boot or spec["bootstrap"]
    return {"y": ys[0], "regimes": out, "idx": stats.resample_indices(ys[0], n_boot, True, seed), "spec": spec,
            "n_boot": n_boot}


def regime_table(s: dict, level: float = 0.95) -> pd.DataFrame:
    """Long table: per regime, loss and metric the seed-mean with its seed x image interval."""
    rows = []
    for regime, (y, probs, seeds, source) in s["regimes"].items():
        for metric in REGIME_METRICS:
            t = inference.model_intervals(y, probs, metric, idx=s["idx"], level=level)
            rows.append(t.rename(columns={"model": "loss"}).assign(regime=regime, source=source))
    return pd.concat(rows, ignore_index=True)


def tests_vs_reference(s: dict, metric: str = "mcc") -> pd.DataFrame:
    """Per regime, each loss vs the reference (``cce``) on ``metric``: paired tests, Holm within the regime."""
    spec, out = s["spec"], []
    for regime, (y, probs, _, _) in s["regimes"].items():
        pairs = [(loss, spec["reference"]) for loss in probs if loss != spec["reference"]]
        t = inference.paired_tests(y, probs, pairs, metric, alpha=spec["alpha"], idx=s["idx"])
        out.append(t.assign(regime=regime, family=f"{regime}: each loss vs {spec['reference']}"))
    return pd.concat(out, ignore_index=True)


def changes_from_clean(s: dict, metric: str = "mcc") -> pd.DataFrame:
    """Per regime and loss, metric(regime) - metric(clean): paired over seeds and test patients, Holm over
    the losses of a regime. Needs the ``clean`` regime."""
    if "clean" not in s["regimes"]:
        raise ValueError("changes from the clean regime need 'clean' among the profile's regimes")
    y, clean, clean_seeds, _ = s["regimes"]["clean"]
    out = []
    for regime, (_, probs, seeds, _) in s["regimes"].items():
        if regime == "clean":
            continue
        missing = sorted(set(seeds) - set(clean_seeds))
        if missing:
            raise ValueError(f"regime {regime!r} has seeds {missing} that the clean regime lacks; a change from "
                             "clean pairs each seed with its clean run")
        rows = [clean_seeds.index(seed) for seed in seeds]               # the clean runs of the regime's seeds
        both = {**{f"{loss} @ {regime}": p for loss, p in probs.items()},
                **{f"{loss} @ clean": p[rows] for loss, p in clean.items()}}
        pairs = [(f"{loss} @ {regime}", f"{loss} @ clean") for loss in probs]
        t = inference.paired_tests(y, both, pairs, metric, alpha=s["spec"]["alpha"], idx=s["idx"])
        out.append(t.assign(regime=regime, loss=list(probs), family=f"{regime} - clean"))
    table = pd.concat(out, ignore_index=True)
    table.attrs.update(metric=metric, alpha=s["spec"]["alpha"], n_images=len(y))
    return table


def display_regimes(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Wide view: one row per (regime, loss), 'estimate [lo, hi]' per metric, seeds."""
    f = f"{{:.{digits}f}}".format
    cell = table.assign(cell=table["estimate"].map(f) + " [" + table["lo"].map(f) + ", " + table["hi"].map(f) + "]")
    wide = cell.pivot_table(index=["regime", "loss"], columns="metric", values="cell", aggfunc="first", sort=False)
    seeds = table.groupby(["regime", "loss"], sort=False)["n_seeds"].first()
    return wide[list(REGIME_METRICS)].assign(seeds=seeds).reset_index()


def display_tests(tests: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A test table (vs reference or vs clean) for reading, with the regime first."""
    metrics = tests["metric"].unique()
    tests = tests.copy()
    tests.attrs["metric"] = metrics[0] if len(metrics) == 1 else "metric"   # the Δ column names its metric
    shown = compare.display_tests(tests, digits)
    shown.insert(0, "regime", tests["regime"].to_numpy())
    return shown


def change_figure(changes: pd.DataFrame, source: str):
    """Each loss's change from the clean regime (``changes_from_clean`` of one or more metrics, concatenated):
    one panel per (metric, regime), the paired interval over seeds x test patients over a grey band of ±MDE;
    red filled markers are Holm-significant within the regime."""
    import matplotlib.pyplot as plt

    from .plots import titled

    metrics = list(dict.fromkeys(changes["metric"]))
    regimes_ = list(dict.fromkeys(changes["regime"]))
    losses = list(dict.fromkeys(changes["loss"]))
    fig, axes = plt.subplots(len(metrics), len(regimes_), figsize=(4.2 * len(regimes_), 0.32 * len(losses) * len(metrics) + 2.2),
                             squeeze=False, sharey=True)
    y = np.arange(len(losses))[::-1]
    for i, metric in enumerate(metrics):
        rows = changes[changes["metric"] == metric]
        reach = float(np.nanmax(np.abs(rows[["delta_lo", "delta_hi"]].to_numpy(float))))
        limit = 1.2 * max(reach, 1e-6)
        for j, regime in enumerate(regimes_):
            ax = axes[i, j]
            r = rows[rows["regime"] == regime].set_index("loss").reindex(losses)
            ax.barh(y, 2 * r["mde"].to_numpy(float), left=-r["mde"].to_numpy(float), height=0.6, color="0.88", zorder=0)
            ax.axvline(0, color="0.3", lw=0.8)
            for yi, t in zip(y, r.itertuples()):
                ax.plot([t.delta_lo, t.delta_hi], [yi, yi], color="0.25", lw=1.4)
                sig = bool(t.significant)
                ax.plot(t.delta, yi, "o", mec="C3" if sig else "0.25", mfc="C3" if sig else "white", ms=6)
            ax.set_xlim(-limit, limit)
            ax.set_yticks(y, losses)
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlabel(f"Δ{metric} ({regime} − clean)", fontsize=9)
            if i == 0:
                ax.set_title(f"{regime} ({int(r['n_seeds'].max())} seeds)", fontsize=10)
    fig.suptitle(titled(f"Change of each loss from the clean regime: 95 % interval over seeds x "
                        f"{changes.attrs.get('n_images', '?')} test patients; grey: ±MDE (80 % power); red: Holm p < "
                        f"{changes.attrs.get('alpha', 0.05)} within a regime", "\n" + source), fontsize=9)
    fig.tight_layout()
    return fig


def findings(changes: pd.DataFrame, tests: pd.DataFrame, digits: int = 3) -> str:
    """What the tables show, in Markdown sentences derived from their numbers (nothing hard-coded)."""
    f = f"{{:.{digits}f}}".format
    out = []
    for regime, t in tests.groupby("regime", sort=False):
        sig = t[t["significant"] & ~t["identical"]]
        metric = t["metric"].iloc[0]
        line = (f"- **{regime}**, each loss vs {t['model_b'].iloc[0]} on {metric} (Holm over {len(t)}, "
                f"{int(t['n_seeds'].iloc[0])} seeds): ")
        line += ("; ".join(f"{r.model_a} Δ{f(r.delta)} [{f(r.delta_lo)}, {f(r.delta_hi)}], Holm p = {r.p_holm:.2g}"
                           for r in sig.itertuples()) if len(sig) else "no loss differs")
        line += f"; MDE {f(t['mde'].min())}–{f(t['mde'].max())}."
        out.append(line)
    for (regime, metric), c in changes.groupby(["regime", "metric"], sort=False):
        sig = c[c["significant"]]
        out.append(f"- {regime} − clean on {metric}: Δ from {f(c['delta'].min())} to {f(c['delta'].max())} "
                   f"({len(sig)} of {len(c)} losses changed significantly; MDE {f(c['mde'].min())}–{f(c['mde'].max())}).")
    return "\n".join(out)
