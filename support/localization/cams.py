"""CAM methods (registry :data:`CAM_METHODS`) on ``model.dcl``, and ensemble CAMs.

Every method is pytorch-grad-cam's (``grad-cam`` package): ``gradcam``
(Selvaraju et al. 2017), ``gradcam++`` (Chattopadhay et al. 2018),
``scorecam`` (Wang et al. 2020), ``eigencam`` (Muhammad & Yeasin 2020) and
``layercam`` (Jiang et al. 2021). A :class:`CamExtractor` builds the
library's CAM object ONCE per (model, method) and is used as a context
manager, because every construction registers forward/backward hooks that
are only released by ``__exit__`` (building one per batch leaks memory)::

    with CamExtractor(model, "gradcam") as cam:
        maps = cam(images_u8, targets)          # float32 [N, H, W] in [0, 1]

Input: uint8 images ``[N, H, W]`` (as :func:`support.data.load` gives them),
already at the model's input size, on the model's device; they are scaled to
[0, 1] by :func:`support.training.prepare_batch` exactly as in training.
Targets: one class index per image (the *true* class by default in
:mod:`.evaluate`: we ask where the model sees evidence of the disease the
image has). Each CAM is min-max normalised per image by the library.

Ensemble CAMs (:func:`ensemble_cam`) average the members' CAMs with the
ensemble's member weights; a model-level ensemble is an ordinary model whose
``dcl`` is its 1x1 merge conv, so it goes through :class:`CamExtractor` as is.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch

from ..registry import Registry

CAM_METHODS: Registry = Registry("CAM method")
"""name -> pytorch-grad-cam CAM class (constructor ``(model, target_layers)``)."""


class LocalizationError(ValueError):
    """Bad input to a CAM or localization metric (wrong layer, device, shapes, missing masks)."""


def _register():
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
    from pytorch_grad_cam import score_cam as score_cam_module

    class QuietScoreCAM(ScoreCAM):
        """ScoreCAM with one masked batch per channel block and without the library's per-image tqdm bars.

        The library draws a ``tqdm.tqdm`` bar for every image and target
        (hundreds of bars in a notebook); we swap in a disabled bar while it runs.
        """

        batch_size = 256

        def get_cam_weights(self, *args, **kwargs):
            import tqdm as tqdm_module

            quiet = type("quiet_tqdm", (), {"tqdm": partial(tqdm_module.tqdm, disable=True)})
            saved = score_cam_module.tqdm
            score_cam_module.tqdm = quiet
            try:
                return super().get_cam_weights(*args, **kwargs)
            finally:
                score_cam_module.tqdm = saved

    for name, cls in (("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus), ("scorecam", QuietScoreCAM),
                      ("eigencam", EigenCAM), ("layercam", LayerCAM)):
        if name not in CAM_METHODS:
            CAM_METHODS.add(name, cls)


def names():
    """The registered CAM methods."""
    if not CAM_METHODS.names():
        _register()
    return CAM_METHODS.names()


def get_method(name: str):
    """The pytorch-grad-cam class of CAM method ``name`` (ValueError listing the valid names)."""
    names()
    return CAM_METHODS.get(name)


def target_layer(model: torch.nn.Module, layer: str = "dcl") -> torch.nn.Module:
    """The module ``layer`` (dotted path, default ``dcl``) of ``model``; clear errors otherwise."""
    if layer == "dcl" and not hasattr(model, "dcl"):
        raise LocalizationError(
            f"{type(model).__name__} has no .dcl (deepest conv layer); build models with support.models.build, "
            "or pass layer='<dotted name of a conv layer>'")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        raise LocalizationError(
            f"{type(model).__name__} has no layer {layer!r}; conv layers are e.g. {', '.join(convs[-4:]) or 'none'} "
            "(use 'dcl' for the deepest conv layer)") from None
    if not isinstance(module, torch.nn.Module):
        raise LocalizationError(f"{layer!r} of {type(model).__name__} is a {type(module).__name__}, not a layer")
    return module


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise LocalizationError(f"{type(model).__name__} has no parameters; it cannot be a trained classifier") from None


class CamExtractor:
    """One pytorch-grad-cam object for ``model`` and ``method``, used as a context manager.

    ``__call__(images_u8, targets)`` -> float32 CAMs ``[N, H, W]`` at the
    input size, in [0, 1]. ``batch_size`` bounds memory per forward pass.
    """

    def __init__(self, model: torch.nn.Module, method: str = "gradcam", layer: str = "dcl", batch_size: int = 64):
        cls = get_method(method)
        self.model, self.method, self.batch_size = model, method, int(batch_size)
        self.layer = target_layer(model, layer)
        self.device = model_device(model)
        self._cam = cls(model=model, target_layers=[self.layer])

    def __enter__(self) -> "CamExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # never swallow exceptions (the library's __exit__ hides IndexError)

    def close(self) -> None:
        """Release the hooks (also done by ``with``)."""
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam = None

    def __call__(self, images_u8: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from ..training import prepare_batch

        if self._cam is None:
            raise LocalizationError("this CamExtractor was closed; build a new one (inside a `with` block)")
        x = check_images(images_u8, self.device)
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if len(targets) != len(x):
            raise LocalizationError(f"{len(targets)} targets for {len(x)} images; give one class index per image")
        out = []
        for s in range(0, len(x), self.batch_size):
            batch = prepare_batch(x[s:s + self.batch_size], channels_last=False)
            tg = [ClassifierOutputTarget(int(t)) for t in targets[s:s + self.batch_size]]
            with torch.enable_grad():
                out.append(self._cam(input_tensor=batch, targets=tg))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *x.shape[1:]), np.float32)


def check_images(images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, H, W]`` images on ``device``, or a LocalizationError saying what to change."""
    if not isinstance(images_u8, torch.Tensor) or images_u8.dtype != torch.uint8 or images_u8.ndim != 3:
        got = f"{images_u8.dtype} {tuple(images_u8.shape)}" if isinstance(images_u8, torch.Tensor) else type(images_u8).__name__
        raise LocalizationError(f"images must be a uint8 tensor [N, H, W] (as support.data.load gives), got {got}")
    if images_u8.device != device:
        raise LocalizationError(
            f"images are on {images_u8.device} but the model is on {device}; move them with images.to({str(device)!r}) "
            "(or the model with model.to(...))")
    return images_u8


def compute_cams(model: torch.nn.Module, images_u8: torch.Tensor, targets: Sequence[int], method: str = "gradcam",
                 layer: str = "dcl", batch_size: int = 64) -> np.ndarray:
    """CAMs of one method for a batch of images (builds and releases one :class:`CamExtractor`)."""
    with CamExtractor(model, method, layer, batch_size) as cam:
        return cam(images_u8, targets)


def resize_cams(cams: np.ndarray, size) -> np.ndarray:
    """CAMs ``[N, h, w]`` resized bilinearly to ``size`` (int or (H, W)), e.g. to the masks' resolution.

    Metrics are computed at the masks' resolution rather than shrinking the
    masks to the model's input (small lesions would vanish).
    """
    import torch.nn.functional as F

    size = (size, size) if isinstance(size, int) else tuple(size)
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape[-2:] == size:
        return cams
    t = torch.from_numpy(np.ascontiguousarray(cams))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min_(0).numpy()


def ensemble_cam(member_cams: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Weighted average of the members' CAMs ``[N, H, W]`` (weights normalised to sum 1; default equal).

    The members' CAMs must come from the same images and targets; the result
    of identical members equals the member CAM.
    """
    cams = [np.asarray(c, dtype=np.float32) for c in member_cams]
    if not cams:
        raise LocalizationError("no member CAMs given; an ensemble CAM needs at least one member")
    shapes = {c.shape for c in cams}
    if len(shapes) > 1:
        raise LocalizationError(f"member CAMs differ in shape {sorted(shapes)}; compute them on the same images")
    w = np.full(len(cams), 1.0 / len(cams)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(cams),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise LocalizationError(f"weights must be {len(cams)} non-negative numbers with a positive sum, got {weights!r}")
    w = w / w.sum()
    return np.tensordot(w, np.stack(cams), axes=1).astype(np.float32)
