"""The pipeline's job plan: which notebooks run, with which parameters, and what each waits for.

:func:`plan` turns a profile and a ``--data`` spec into :class:`Job` s (a training stage per seed, notebook 04 once
per loss, the others once); :func:`dependencies` says which jobs each waits for (:data:`NEEDS`). Executing them:
:mod:`support.pipeline_exec`; the command line: :mod:`support.pipeline`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from . import paths, profiles

NOTEBOOKS_DIR = paths.PROJECT_ROOT / "notebooks"
PER_LOSS = "04"
#: What each notebook reads from others (by number); "*" = every other notebook of the plan. A notebook
#: not listed reads only the data. 05 crops with 02's segmentation models; 06, 07, 09 and 10 read 04's runs;
#: 06 and 07 may train the same model-level ensemble at once: the second waits for the first (run_lock).
NEEDS = {"05": {"02", "04"}, "06": {"04"}, "07": {"04"}, "09": {"*"}, "10": {"04"}}


@dataclass
class Job:
    notebook: Path
    output: Path
    parameters: dict = field(default_factory=dict)
    error: Optional[str] = None
    seconds: float = 0.0
    log: Optional[Path] = None  # the kernel's stdout/stderr and the pre-training output
    train: bool = False  # a training stage (notebook 04's runs of one seed, fused), not a notebook


def notebooks(only: Optional[List[str]] = None, folder: Optional[Path] = None) -> List[Path]:
    """The numbered notebooks of ``folder`` (default :data:`NOTEBOOKS_DIR`), optionally restricted to numbers in
    ``only`` (e.g. ["01", "04"])."""
    found = sorted(Path(folder or NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb"))
    if only:
        numbers = {p.name[:2] for p in found}
        unknown = sorted(set(only) - numbers)
        if unknown:
            raise SystemExit(f"--only: no notebook numbered {', '.join(unknown)}; "
                             f"available: {', '.join(sorted(numbers))}")
        found = [p for p in found if p.name[:2] in only]
    return found


def declared(notebook: Path) -> set:
    """The names a notebook's ``parameters`` cell defines (papermill's own parser); empty without one."""
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


def plan(profile: str, data_spec: str, force: bool, only=None, losses=None, seeds=None, lung_masks: str = "",
         folder: Optional[Path] = None) -> List[Job]:
    """The papermill jobs for a profile, in order; each notebook gets only the parameters it declares.

    ``lung_masks`` (``--lung-masks``, e.g. ``lungmasks:/data/Montgomery``): the mask set the lung U-Nets
    learn from, passed as ``seg_data`` to the notebooks that declare it (02 and 05, which then crop the films).
    ``data_spec``: the ``--data`` string, passed to the notebooks as ``data``; ``folder``: where the notebooks are
    (default :data:`NOTEBOOKS_DIR`).
    """
    p = profiles.get(profile)
    out_dir = paths.executed_notebooks_dir()
    common = {"profile": profile, "data": data_spec, "force": force, **({"seg_data": lung_masks} if lung_masks else {})}
    jobs = []
    for nb in notebooks(only, folder):
        names = declared(nb)
        mine = {k: v for k, v in common.items() if k in names}
        if nb.name.startswith(PER_LOSS):
            all_seeds = list(seeds or p["seeds"])
            for seed in all_seeds:
                names = list(losses or p["losses"])
                stage = paths.inside(out_dir, f"{nb.stem}__train__seed{seed}")  # writes run folders only
                jobs.append(Job(nb, stage, {**common, "losses": names, "seed": int(seed)}, train=True))
                if seed != all_seeds[0]:  # 04 shows one run per loss (the first seed); 05-09 read every seed's
                    continue
                for loss in names:  # force is spent by the training stage; the notebook reads its run
                    out = paths.inside(out_dir, f"{nb.stem}__{loss}__seed{seed}.ipynb")  # a loss is no path
                    spent = {"force": False} if "force" in mine else {}
                    jobs.append(Job(nb, out, {**mine, **spent, "loss": loss, "seed": int(seed)}))
        else:
            jobs.append(Job(nb, out_dir / nb.name, mine))
    # The training stages first: they are the longest work and 05, 06, 07 and 09 wait for them. A notebook that
    # reads every other one (09, the report) last, whatever its number (10 runs before it).
    last = [j for j in jobs if not j.train and "*" in NEEDS.get(j.notebook.name[:2], set())]
    return [j for j in jobs if j.train] + [j for j in jobs if not j.train and j not in last] + last


def dependencies(jobs: List[Job]) -> List[set]:
    """For each job, the indices of the jobs it waits for (see :data:`NEEDS`).

    A per-loss notebook waits for its seed's training stage (which trains every loss of that seed fused).
    """
    numbers = [j.notebook.name[:2] for j in jobs]
    out = []
    for i, n in enumerate(numbers):
        need = NEEDS.get(n, set())
        deps = {k for k, m in enumerate(numbers) if k != i and m != n and ("*" in need or m in need)}
        if n == PER_LOSS and not jobs[i].train:
            deps |= {k for k, j in enumerate(jobs) if j.train and j.parameters["seed"] == jobs[i].parameters["seed"]}
        out.append(deps)
    return out
