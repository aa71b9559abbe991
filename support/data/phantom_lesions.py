"""The phantom's pneumonia signs: lobar consolidation (bacterial) and perihilar interstitial streaks (viral).

They remove air from the lungs drawn by :mod:`support.data.phantom_anatomy` and mark the lesion field where
the opacity is substantial; :func:`_pathology` picks the class-typical and atypical signs (module doc of
:mod:`support.data.phantom`).
"""
from __future__ import annotations

import numpy as np

from .phantom_anatomy import _polar, _vessel_texture
from .phantom_geometry import _bump, _field, _smoothstep


def _consolidation(rng, L, noise, R, px, size: float):
    """Soft lumpy blob field (0..1) of one consolidation in lung L, ~``size`` in patient units."""
    x, y = L["x"], L["y"]
    yc = rng.uniform(L["apex"] + 0.3, L["yd"] - 0.3)  # clear of the apex and the dome
    xc = L["cx"] + rng.uniform(-0.35, 0.4) * L["a"]
    ry = size * rng.uniform(0.8, 1.2)
    rx = ry * rng.uniform(0.7, 1.3)
    wobble = 0.6 * _field(noise["lo"], L["box"], R) + 0.3 * _field(noise["mid"], L["box"], R)
    rr = ((x - xc) / rx) ** 2 + ((y - yc) / ry) ** 2 + 0.35 * wobble
    blob = _smoothstep((1.0 - rr) / 0.9)
    if rng.random() < 0.5:                                          # a fissure: one sharp straight edge
        yf = yc + (1.0 if rng.random() < 0.5 else -1.0) * ry * rng.uniform(0.2, 0.7)
        blob *= _smoothstep(((yf - y) if yf > yc else (y - yf)) / (2 * px))
    return blob


def _dense(L, blob, opacity, noise, R, k):
    """Remove air under ``blob`` (patchy, with air bronchograms: dark branching lines)."""
    tex, _ = _polar(L["x"], L["y"], *L["hilum"], _vessel_texture(noise["vessel"]), k)
    L["air"] *= 1.0 - opacity * blob * (0.8 + 0.2 * _field(noise["mid"], L["box"], R)) * (1.0 - 0.5 * _bump(tex / 0.3))


def _interstitial(L, amp, difficulty, noise, R, k):
    """Perihilar streaks and haze in lung L with strength ``amp`` (0..1); returns the envelope."""
    tex, rho = _polar(L["x"], L["y"], *L["hilum"], _vessel_texture(noise["vessel"][::-1]), k)
    env = (1.0 - _smoothstep((rho - 0.05) / (0.25 + 0.3 * amp))) * (1.0 + 0.3 * _field(noise["lo"], L["box"], R))
    env = np.clip(env, 0.0, 1.0)
    opacity = min(0.9, (0.18 + 0.42 * amp) / difficulty)
    L["air"] *= 1.0 - opacity * env * (0.45 + 0.55 * _bump(tex / 0.5))
    return env


def _pathology(rng, label, P, sev, difficulty, noise, R, px, les_f) -> dict:
    """Bacterial: dense lobar consolidation in one lung (sometimes two foci), now and then with faint
    bilateral streaks. Viral: bilateral perihilar streaks and haze, now and then with a small patch.
    The class-typical sign grows with severity; the atypical one fades with it, so mild cases are
    ambiguous between the two pneumonias rather than with normal."""
    lungs = P["lungs"]
    if label == 1:
        k = 0 if rng.random() < 0.55 else 1                         # the right lung a little more often
        n_les = 1 if rng.random() < 0.8 else 2
        L = lungs[k]
        blob = np.maximum.reduce([_consolidation(rng, L, noise, R, px, 0.22 + 0.12 * sev) for _ in range(n_les)]
                                 + [np.zeros_like(L["x"])])
        _dense(L, blob, min(0.95, (0.75 + 0.2 * sev) / difficulty), noise, R, k)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], blob - 0.45)
        if rng.random() < 0.6:                                      # atypical: faint bilateral streaks
            amp = rng.uniform(0.4, 0.9) * (1.0 - 0.5 * sev)
            for j, Lj in enumerate(lungs):
                _interstitial(Lj, amp, difficulty, noise, R, j)
        return {"n_lesions": n_les, "side": ("right", "left")[k]}
    weak = rng.integers(0, 2)
    for j, L in enumerate(lungs):
        amp = (0.65 + 0.35 * sev) * (rng.uniform(0.6, 1.0) if j == weak else 1.0)
        env = _interstitial(L, amp, difficulty, noise, R, j)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], env - 0.55)
    n_les = 2
    if rng.random() < 0.6:                                          # atypical: a small patch of atelectasis
        k = int(rng.integers(0, 2))
        L = lungs[k]
        blob = _consolidation(rng, L, noise, R, px, 0.12 + 0.08 * rng.random())
        _dense(L, blob, min(0.9, (0.45 + 0.35 * (1.0 - sev)) / difficulty), noise, R, k)
        les_f[L["box"]] = np.maximum(les_f[L["box"]], blob - 0.45)
        n_les = 3
    return {"n_lesions": n_les, "side": "both"}
