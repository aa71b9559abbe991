"""The phantom's normal chest: patient parameters and the attenuation map of body, lungs, vessels and bones.

:func:`_anatomy` draws the class-independent patient (first, so a label change keeps the same patient);
:func:`_draw_body`, :func:`_draw_lungs` and :func:`_draw_bones` paint the attenuation map ``A`` in patient
coordinates (:class:`support.data.phantom_geometry._Pose`); :mod:`support.data.phantom_render` calls them in order.
"""
from __future__ import annotations

import numpy as np

from .phantom_geometry import _F, _bump, _field, _smoothstep, _upsampler


def _anatomy(rng) -> dict:
    """Class-independent patient parameters (drawn first: a label change keeps the same patient)."""
    dome = rng.uniform(0.30, 0.45)                                # diaphragm level (depth of inspiration)
    up = rng.random() < 0.6                                       # arms raised (common in infants) or down
    p = dict(arm=((0.74, -0.62), (rng.uniform(0.8, 1.0), -1.6)) if up else ((0.94, -0.6), (rng.uniform(1.0, 1.1), 1.6)),
             W=rng.uniform(0.86, 1.0) - (0.0 if up else 0.08), Wn=rng.uniform(0.17, 0.24), v_sh=rng.uniform(-1.15, -1.0),
             dome=dome)
    p["lungs"] = [dict(side=sd, cx=rng.uniform(0.36, 0.40), a=rng.uniform(0.31, 0.35),
                       apex=rng.uniform(-0.76, -0.64), h=rng.uniform(0.09, 0.16), taper=rng.uniform(0.15, 0.3),
                       yd=dome - (rng.uniform(0.02, 0.07) if sd == -1 else 0.0))   # right dome higher
                  for sd in (-1, 1)]                               # -1: patient right = image left
    p["heart"] = dict(x=rng.uniform(0.1, 0.16), y=dome - rng.uniform(0.14, 0.2), a=rng.uniform(0.31, 0.36),
                      b=rng.uniform(0.21, 0.25), ang=rng.uniform(0.45, 0.7))
    p["rib"] = dict(k1=rng.uniform(0.25, 0.4), k2=rng.uniform(0.75, 1.0), n=rng.uniform(9.0, 10.5),
                    amp=rng.uniform(0.03, 0.055), w=rng.uniform(0.3, 0.42), ant=rng.uniform(0.3, 0.5))
    p.update(clav_y=rng.uniform(-0.64, -0.54), clav_amp=rng.uniform(0.12, 0.2), spine_amp=rng.uniform(0.05, 0.1),
             spine_w=rng.uniform(0.05, 0.065), carina=rng.uniform(-0.36, -0.26), air=rng.uniform(0.26, 0.42),
             vessels=rng.uniform(0.2, 0.35), hilum=rng.uniform(0.15, 0.35), bubble=rng.random() < 0.6)
    p["film"] = dict(k=rng.uniform(1.6, 2.6), blur=rng.uniform(0.0, 0.12), contrast=rng.uniform(0.8, 1.05),
                     bright=rng.uniform(-0.06, 0.08), gamma=rng.uniform(0.75, 1.3), grain=rng.uniform(0.01, 0.035),
                     heel=rng.normal(0.0, 0.04))
    p["noise"] = dict(shape=rng.standard_normal((6, 6), dtype=_F),
                      vessel=rng.standard_normal((8, 48), dtype=_F))
    return p


def _vessel_texture(noise: np.ndarray) -> np.ndarray:
    """A smooth texture over (radius bin, angle bin): slow along the radius, so its ridges radiate."""
    return _upsampler(noise.shape[0], 64) @ noise @ _upsampler(noise.shape[1], 512).T


def _polar(x, y, xh, yh, texture, half: int):
    """Sample ``texture`` at (distance, pseudo-angle) around the hilum (xh, yh); returns (field, rho)."""
    dx, dy = x - xh, y - yh
    rho = np.sqrt(dx * dx + dy * dy)
    s = dy / (np.abs(dx) + np.abs(dy) + 0.02)                      # diamond angle in [-1, 1]
    ri = np.minimum(rho * (63 / 0.9), 63).astype(np.int32)
    si = ((s + 1.0) * 127.5).astype(np.int32) + 256 * half         # each lung its own half
    return np.take(texture.ravel(), ri * 512 + si), rho


def _draw_body(P: dict, pose) -> np.ndarray:
    """The attenuation map of the body and arms (neck, sloping shoulders, humeri) on the pose's grid."""
    u, v = pose.u, pose.v
    # Body: an elliptic cross-section, narrow at the neck, widening over the shoulders.
    hw = P["Wn"] + (P["W"] - P["Wn"]) * _smoothstep((v - P["v_sh"]) / 0.45)
    t = np.sqrt(np.clip(1.0 - (u / hw) ** 2, 0.0, 1.0))
    A = _F(0.55) * t * np.sqrt(t) + _F(P["film"]["heel"]) * v
    for sd in (-1, 1):                                             # arms: raised beside the head, or down
        (x0, y0), (x1, y1) = P["arm"]
        box = pose.box(*sorted((sd * (min(x0, x1) - 0.15), sd * (max(x0, x1) + 0.15))), min(y0, y1), max(y0, y1))
        x, y = sd * u[box], v[box]
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
        tissue = 0.3 * np.sqrt(np.clip(1.0 - d2 / 0.14 ** 2, 0.0, 1.0))
        A[box] = np.maximum(A[box], tissue) + 0.12 * np.sqrt(np.clip(1.0 - d2 / 0.035 ** 2, 0.0, 1.0)) \
            + 0.1 * np.sqrt(np.clip(1.0 - ((x - x0) ** 2 + (y - y0) ** 2) / 0.075 ** 2, 0.0, 1.0))
    return A


def _draw_lungs(P: dict, pose, R: int) -> np.ndarray:
    """Shape the two lungs (air fraction with vessels and hila, stored in ``P["lungs"][k]`` with their
    box, coordinates and hilum); returns the lung field (> 0 inside a lung)."""
    u, v, px = pose.u, pose.v, pose.px
    lung_f = np.full((R, R), -1.0, _F)                             # > 0 inside a lung
    texture = _vessel_texture(P["noise"]["vessel"])
    H = P["heart"]
    ch, sh = float(np.cos(H["ang"])), float(np.sin(H["ang"]))   # Python floats keep arrays float32
    for k, L in enumerate(P["lungs"]):
        sd, cx, a, apex, yd = L["side"], L["cx"], L["a"], L["apex"], L["yd"]
        box = pose.box(*sorted((0.0, sd * (cx + a + 0.08))), apex - 0.04, yd + 0.04)
        uu, vv = u[box], v[box]
        x, y = sd * uu, vv
        cy, b = (apex + yd + 0.12) / 2, (yd + 0.12 - apex) / 2
        dyl = (y - cy) / b
        dxl = (x - cx) / (a * (1.0 + L["taper"] * dyl))            # lungs widen towards the base
        q2, d2 = dxl * dxl, dyl * dyl
        r = 0.5 * (q2 + d2) + 0.5 * np.sqrt(q2 * q2 + d2 * d2)    # between an ellipse and a box
        r += 0.05 * _field(P["noise"]["shape"], box, R)
        dome_y = yd - L["h"] * (1.0 - ((x - cx) / (1.15 * a)) ** 2)
        hx, hy = uu - H["x"], vv - H["y"]
        rh = ((ch * hx + sh * hy) / H["a"]) ** 2 + ((ch * hy - sh * hx) / H["b"]) ** 2
        air = np.sqrt(np.clip((1.0 - r) / 0.2, 0.0, 1.0)) * _smoothstep((dome_y - y) / (1.5 * px)) \
            * _smoothstep((rh - 1.0) / 0.18)
        lung_f[box] = np.maximum(lung_f[box], np.minimum(np.minimum(1.0 - r, (dome_y - y) * 3.0), rh - 1.0))
        # hilum and vessels: radiating, tapering lines that fade towards the periphery
        xh, yh = cx - a + 0.07, -0.08
        tex, rho = _polar(x, y, xh, yh, texture, k)
        fade = 1.0 - _smoothstep((rho - 0.1) / 0.5)
        width = 0.25 + 0.25 * fade
        air *= 1.0 - P["vessels"] * fade * _bump(tex / width)
        air *= 1.0 - P["hilum"] * _bump(rho / 0.09)
        L.update(box=box, x=x, y=y, air=air, hilum=(xh, yh))
    return lung_f


def _draw_bones(A: np.ndarray, P: dict, pose) -> None:
    """Add ribs, clavicles, spine, trachea and gastric bubble to ``A`` (in place)."""
    u, v = pose.u, pose.v
    # --- bones: posterior and anterior ribs, clavicles, spine (humeri are drawn with the arms)
    rib = P["rib"]
    for L in P["lungs"]:
        sd, cx, a, apex, yd = L["side"], L["cx"], L["a"], L["apex"], L["yd"]
        box = pose.box(*sorted((0.0, sd * (cx + a + 0.12))), P["clav_y"] - 0.3, yd + 0.15)
        x, y = sd * u[box], v[box]
        y0, span = apex - 0.04, yd + 0.1 - apex
        t = np.clip((y - (rib["k2"] * x * x - rib["k1"] * x) - y0) / span, 0.0, 1.2)
        p = rib["n"] * t * (1.15 - 0.15 * t)                        # rib spacing widens downwards
        z = ((p - np.floor(p)) / rib["w"]) * 2.0 - 1.0
        edge = cx + a + 0.04
        bone = _smoothstep((1.0 - z * z) * 3.0) * (0.6 + 0.4 * z * z) * _smoothstep((rib["n"] - p) * 2) \
            * (t > 0) * _smoothstep((x - 0.04) / 0.06) * _smoothstep((edge - x) / 0.06)
        ta = (y + 0.5 * x - (apex + 0.28)) / span
        pa = (rib["n"] - 3) * np.clip(ta, 0.0, 1.0)
        za = ((pa - np.floor(pa)) / 0.4) * 2.0 - 1.0
        bone += rib["ant"] * _smoothstep((1.0 - za * za) * 3.0) * _smoothstep((x - 0.3) / 0.15) \
            * _smoothstep((edge - x) / 0.06) * (ta > 0) * (ta < 0.97)
        cl = (y - (P["clav_y"] - 0.34 * x + 0.16 * x * x)) / (0.042 - 0.015 * x)
        bone += P["clav_amp"] / rib["amp"] * _bump(cl) * _smoothstep((x - 0.05) / 0.04) \
            * _smoothstep((0.66 - x) / 0.05)
        A[box] += _F(rib["amp"]) * bone
    box = pose.box(-0.15, 0.15, -1.0, 1.0)
    uu, vv = u[box], v[box]
    spine = np.sqrt(np.clip(1.0 - (uu / P["spine_w"]) ** 2, 0.0, 1.0))
    A[box] += P["spine_amp"] * spine * (0.7 + 0.3 * np.cos(vv * (np.pi / 0.085)) ** 2)
    trachea = np.sqrt(np.clip(1.0 - ((uu + 0.01) / 0.03) ** 2, 0.0, 1.0)) * _smoothstep((P["carina"] - vv) / 0.06)
    A[box] -= 0.08 * trachea
    if P["bubble"]:                                                # gastric air under the left dome
        Ll = P["lungs"][1]
        box = pose.box(0.1, 0.7, Ll["yd"], Ll["yd"] + 0.3)
        d = ((u[box] - Ll["cx"]) / 0.1) ** 2 + ((v[box] - Ll["yd"] - 0.11) / 0.05) ** 2
        A[box] -= 0.1 * np.sqrt(np.clip(1.0 - d, 0.0, 1.0))
