"""What ran on what: for each study, the data it used and what it skipped (issue 21).

``./run_all.sh --data kermany:/x`` runs every study, but not every study can use the user's films:
the U-Nets need lung masks (the phantom's unless ``--lung-masks`` names a mask set), the mask-based
localization measures need lesion masks, the shortcut experiment needs the phantom's marker knob,
and the nodule study always uses its own generator. :func:`what_ran_on_what` says so, one line per
study, at the end of the pipeline's summary (and is testable without running anything)::

    lines = what_ran_on_what("smoke", "kermany:/data/chest_xray", lung_masks="", studies={"01", ..., "09"})
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .data import data_config, load, parse_data_spec

PHANTOM = "generated phantom"
NODULES = "generated nodules"


def describe_source(spec: str, profile: str = "smoke") -> str:
    """``your films (kermany: /x)`` for a user's source, ``generated phantom`` for the phantom."""
    name, params = parse_data_spec(spec)
    if name == "phantom":
        return PHANTOM
    where = params.get("root") or params.get("path") or ""
    return f"your films ({name}: {where})" if where else f"your films ({name})"


def mask_note(profile: str, data: str) -> Optional[str]:
    """Which of lesion / lung masks the profile's data for ``data`` lacks (``None`` if it cannot be loaded)."""
    try:
        test = load(**data_config(profile, data), verbose=False).splits["test"]
    except Exception:  # noqa: BLE001 - the summary must not fail; the notebooks report the load error
        return None
    lesion = test.lesion_masks is not None and bool(test.lesion_masks.flatten(1).any(1).any())
    lung = test.lung_masks is not None
    return ", ".join(w for w, has in (("lesion", lesion), ("lung", lung)) if not has)


def what_ran_on_what(profile: str, data: str, lung_masks: str = "", studies: Optional[Iterable[str]] = None,
                     missing_masks: Optional[str] = "") -> List[str]:
    """One line per study (numbers in ``studies``; default all): its data and what it skipped, and why.

    ``missing_masks``: the masks the data lacks ("lesion, lung"; :func:`mask_note`); ``None`` = unknown.
    """
    studies = set(studies) if studies is not None else {f"{i:02d}" for i in range(1, 11)}
    films = describe_source(data, profile)
    real = films != PHANTOM
    masks = describe_source(lung_masks, profile).replace("your films", "your lung masks") if lung_masks else ""
    lines = []

    def add(study: str, text: str) -> None:
        if study in studies:
            lines.append(f"  {study} {text}")

    add("01", f"data exploration: {films}")
    if lung_masks:
        add("02", f"lung U-Nets: trained on {masks}; lung crop shown on {films}")
    elif real:
        add("02", f"lung U-Nets: trained and shown on the {PHANTOM} (its lung masks); your films are not cropped "
                  f"(no --lung-masks)")
    else:
        add("02", f"lung U-Nets and lung crop: {PHANTOM}")
    add("03", "loss definitions: analytic curves and a toy batch (no data)")
    add("04", f"training, one run per loss and seed: {films}")
    if lung_masks or not real:
        crop = f"U-Nets from {masks}" if lung_masks else f"U-Nets from the {PHANTOM}'s lung masks"
        add("05", f"loss comparison: {films}; lung-crop comparison: {films} cropped by {crop}")
    else:
        add("05", f"loss comparison: {films}; lung-crop comparison skipped (no lung masks for your films: "
                  f"pass --lung-masks lungmasks:/path)")
    add("06", f"ensembles: {films}")
    if missing_masks is None:
        skipped = "mask-based measures: see the notebook (the data could not be read here)"
    elif missing_masks:
        kinds = missing_masks.replace(", ", " or ")
        skipped = (f"no {kinds} masks, so the measures against them (pointing game, energy, IoU/Dice) are "
                   f"skipped; CAM grids and ROAD computed")
    else:
        skipped = "all measures (lesion and lung masks present)"
    shortcut = "" if not real else "; shortcut experiment skipped (it needs the phantom's marker)"
    add("07", f"localization: {films}; {skipped}{shortcut}")
    add("08", f"synthetic nodules: {NODULES} (always; the study needs known nodule factors)")
    if real:
        add("10", "loss regimes: skipped (label noise and acquisition shift are knobs of the phantom)")
    else:
        add("10", f"loss regimes: {films} clean, with noisy train/val labels (new runs), and a shifted test draw")
    add("09", "report: collects the tables above, each captioned with its data source")
    return lines
