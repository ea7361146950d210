"""From notebook to production line: save a fitted detector to one file, load it back, and choose its threshold.

    detector.calibrate(held_out_good, false_alarm_rate=0.01)   # threshold from good images only
    detector.save("bottle.pt")                                  # one file
    detector = cu.detectors.load("bottle.pt")                   # or PatchCore.load("bottle.pt")
    flagged = detector.flag(detector.predict(images))           # [N] bool

Every detector of `cu.detectors` inherits `Deployable`. It remembers the arguments it was built
with (whatever they are: a new constructor argument is saved without changing this file), and
its `threshold` and `fit_size` are buffers, so they travel with `state_dict()` too. A saved
file is one `torch.save` of a plain dict (class, constructor arguments, state_dict, threshold,
preprocessing, versions) that `torch.load(weights_only=True)` reads, so loading a file runs no
code from it. Frozen weights that the constructor rebuilds by itself (the bundled ImageNet
backbone) are left out of the file, which keeps it small. `python -m course_utils.inspect`
scores a folder of images with a saved detector; `cu.export.to_onnx` exports one to ONNX.
"""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "course_utils.detector"
FORMAT_VERSION = 1


class Deployable:
    """What makes a detector saveable and calibratable: mixed into `cu.detectors.Detector`.

    Adds the buffers `threshold` (+inf, i.e. none flagged, until `calibrate`) and `fit_size` ([H, W]
    of the training images, set by `Detector.fit` when they come as one tensor; [0, 0] before fit),
    the methods `calibrate`, `flag`, `config` and `save`, and the class method `load`. It records the
    constructor's arguments when the object is created, so `type(det)(**det.config())` builds an
    unfitted twin of `det`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "Deployable":
        self = super().__new__(cls)
        object.__setattr__(self, "_init_args", (args, dict(kwargs)))  # before nn.Module.__init__: no hooks yet
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("threshold", torch.tensor(float("inf")))  # flag a score >= threshold; inf: not calibrated
        self.register_buffer("fit_size", torch.zeros(2, dtype=torch.long))  # [H, W] of the training images
        self.calibration: dict[str, float] = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments this detector was built with, defaults filled in: {name: value}."""
        args, kwargs = self._init_args
        signature = inspect.signature(type(self).__init__)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {}
        for name, value in list(bound.arguments.items())[1:]:  # skip self
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{type(self).__name__} takes *{name}: save() needs named constructor arguments.")
            config.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        return config

    # ---- threshold from good images ----------------------------------------------------------

    @torch.no_grad()
    def calibrate(self, good_images: torch.Tensor, false_alarm_rate: float = 0.01,
                  confidence: float = 0.95) -> "Deployable":
        """Choose `threshold` on held-out good images [N, 3, H, W] so that at most a `false_alarm_rate` of them is flagged.

        A false alarm is a good part flagged as defective; the false-alarm budget is the fraction
        of good parts the line can afford to re-inspect or throw away. The threshold sits just
        above the (k+1)-th highest of the N good scores, k = floor(rate x N), so the calibration
        images themselves see at most k false alarms (`cu.metrics.false_alarm_threshold`). How
        many images does that need? The rate measured on N images is only an estimate: with 0
        false alarms among N good images, the one-sided 95 % (Clopper-Pearson) upper bound on the
        true rate is about 3 / N, so a 1 % budget needs about 300 good images with no alarm
        (`cu.metrics.good_images_needed`), and those must be OTHER good images: the calibration
        images pass by construction, so they check nothing. On new good parts such a threshold
        flags about (k+1)/(N+1) on average (above the budget when N is small). The images must not
        be the training images (their scores are too low). Stores `threshold` (a buffer, saved with
        the detector) and `calibration` (rate, N, alarms, that expected rate on new good parts);
        returns the detector.
        """
        from course_utils.metrics import false_alarm_threshold

        prediction = self.predict(good_images)
        scores = prediction.scores  # [N]
        threshold = false_alarm_threshold(scores, false_alarm_rate)
        self.threshold.fill_(threshold)
        alarms = int((scores >= threshold).sum())
        self.calibration = {"false_alarm_rate": float(false_alarm_rate), "n_good": len(scores),
                            "false_alarms": alarms, "confidence": float(confidence),
                            "expected_new_rate": (alarms + 1) / (len(scores) + 1),  # on new good parts, on average
                            "map_median": float(prediction.maps.median())}
        return self

    def flag(self, prediction: Any) -> torch.Tensor:
        """Which images are defective: `scores >= threshold`, [N] bool, for a `Prediction` or scores [N]."""
        if math.isinf(float(self.threshold)):
            raise RuntimeError(f"{type(self).__name__} has no threshold yet: call "
                               "calibrate(held_out_good_images, false_alarm_rate=0.01) first.")
        scores = prediction.scores if hasattr(prediction, "scores") else torch.as_tensor(prediction)
        return scores >= self.threshold.to(scores.device)

    # ---- one file --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to one file at `path` (parent folders are created); returns the path.

        The file is a dict: `class`, `module`, `config` (constructor arguments), `state_dict`
        (all buffers and weights except frozen ones the constructor rebuilds, listed in
        `omitted`), `threshold`, `calibration`, `preprocessing` (training image size, input
        range) and the `course_utils` and torch versions. Load it with `cu.detectors.load(path)`.
        """
        self._require_fit()
        config = {name: _encode(name, value, type(self).__name__) for name, value in self.config().items()}
        state = {key: value.detach().cpu() for key, value in self.state_dict().items()}
        omitted = _rebuilt_by_constructor(self, config, state)
        from course_utils import __version__

        record = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "class": type(self).__name__, "module": type(self).__module__,
            "config": config, "state_dict": {k: v for k, v in state.items() if k not in omitted},
            "omitted": sorted(omitted), "threshold": float(self.threshold),
            "calibration": dict(self.calibration), "preprocessing": self.preprocessing(),
            "course_utils_version": __version__, "torch_version": str(torch.__version__),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        return path

    def preprocessing(self) -> dict[str, Any]:
        """How images must look before `predict`: float RGB [N, 3, H, W] in [0, 1], at the training size."""
        return {"input": "float RGB [N, 3, H, W] in [0, 1] (cu.data.read_image)",
                "fit_size": [int(v) for v in self.fit_size.tolist()], "resize": self.resize}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> Any:
        """A detector saved with `save`, ready to predict (on `device`; default: the CPU).

        `PatchCore.load(path)` insists that the file holds a PatchCore (or a subclass);
        `cu.detectors.load(path)` takes any detector. The saved device is not reused, so a
        detector fitted on a GPU loads on a laptop.
        """
        record = read_record(path)
        saved = _saved_class(record, path)
        if not issubclass(saved, cls):
            raise TypeError(f"{path} holds a {record['class']}, not a {cls.__name__}: load it with "
                            f"{record['class']}.load(path) or cu.detectors.load(path).")
        config = {name: _decode(value) for name, value in record["config"].items()}
        if "device" in inspect.signature(saved.__init__).parameters:
            config["device"] = device
        try:
            detector = saved(**config)
        except TypeError as error:
            raise TypeError(f"{path} was saved by course_utils {record['course_utils_version']} with arguments "
                            f"this version's {saved.__name__} does not take ({error}). Install that version "
                            "or fit and save the detector again.") from None
        missing, unexpected = detector.load_state_dict(record["state_dict"], strict=False)
        if set(missing) - set(record["omitted"]) or unexpected:  # omitted keys are rebuilt by the constructor
            lost = sorted(set(missing) - set(record["omitted"]))[:5]
            raise ValueError(f"{path} does not fit this {saved.__name__}: missing {lost}, "
                             f"unexpected {unexpected[:5]}. Was it saved by another course_utils version "
                             f"({record['course_utils_version']})? Fit and save it again.")
        detector.calibration = dict(record["calibration"])
        return detector


def load(path: str | Path, device: torch.device | str | None = None) -> Any:
    """Any detector saved with `det.save(path)` (PatchCore, PaDiM, ...), ready to predict on `device` (default CPU)."""
    return Deployable.load.__func__(Deployable, path, device)


def read_record(path: str | Path) -> dict[str, Any]:
    """The dict inside a saved detector file, with clear errors for a missing file or a file of another kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No detector file at {path}: save one with detector.save(path) first.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean: not one of our files
        raise ValueError(f"{path} is not a detector file saved by detector.save() ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}).") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is a torch file but not a detector saved by detector.save() "
                         "(a bare state_dict? load it with load_state_dict into a detector built "
                         "with the same arguments).")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was saved by a newer course_utils ({record.get('course_utils_version')}): "
                         "upgrade course_utils to load it.")
    return record


def _saved_class(record: dict[str, Any], path: str | Path) -> type:
    """The detector class named in a file; only classes of `course_utils` are looked up."""
    module = record.get("module", "")
    if module.split(".")[0] != "course_utils":
        raise ValueError(f"{path} names the class {module}.{record.get('class')}; only course_utils detectors load.")
    saved = getattr(importlib.import_module(module), record["class"], None)
    if not (isinstance(saved, type) and issubclass(saved, Deployable)):
        raise ValueError(f"{path} names {module}.{record['class']}, which is not a detector of this course_utils.")
    return saved


def _encode(name: str, value: Any, owner: str) -> Any:
    """A constructor argument as plain data that `torch.load(weights_only=True)` reads back."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(name, v, owner) for v in value)
    if isinstance(value, dict):
        return {k: _encode(name, v, owner) for k, v in value.items()}
    if isinstance(value, nn.Module) and isinstance(getattr(value, "pretrained_name", None), str):
        return {"pretrained_backbone": value.pretrained_name}  # rebuilt by cu.backbones.pretrained_backbone
    raise TypeError(f"Cannot save {owner}({name}={type(value).__name__} ...): a saved detector records its "
                    "constructor arguments by value, so a function or a network built by hand cannot go in the "
                    f"file. Build it with named options instead (e.g. {name}=None or a string), or save "
                    "state_dict() yourself.")


def _decode(value: Any) -> Any:
    """The inverse of `_encode`: a pretrained backbone is built afresh from its name."""
    if isinstance(value, dict) and set(value) == {"pretrained_backbone"}:
        from course_utils.backbones import pretrained_backbone

        return pretrained_backbone(value["pretrained_backbone"])
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


def _rebuilt_by_constructor(detector: nn.Module, config: dict[str, Any], state: dict[str, torch.Tensor]) -> set[str]:
    """Keys of `state` that an unfitted twin built from `config` already holds exactly: frozen pretrained weights."""
    frozen = {name for name, p in detector.named_parameters() if not p.requires_grad}
    frozen |= {name for name, _ in detector.named_buffers() if name.rpartition(".")[0]}  # BatchNorm statistics
    with torch.random.fork_rng(devices=[]):
        twin = type(detector)(**{name: _decode(value) for name, value in config.items()})
    twin_state = twin.state_dict()
    return {key for key in frozen & set(state)
            if key in twin_state and twin_state[key].shape == state[key].shape and torch.equal(twin_state[key].cpu(), state[key])}
