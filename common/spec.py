"""Model data files: everything we know about a model, as data.

Each tool has ``tools/<model>/model.toml`` (weights URL + checksum, input, outputs, ATC flags,
published figures with their source). Generic code (ATC, preprocessing, reports) reads it
through :func:`load_spec`; no model number is written anywhere else.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ToolError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the py3.9 tool envs
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / "tools"
#: every folder of tools/ with a model.toml: adding a model is adding its folder, nothing else
MODELS = tuple(sorted(p.parent.name for p in TOOLS_DIR.glob("*/model.toml")))


@dataclass(frozen=True)
class WeightsSpec:
    url: str
    filename: str
    #: exactly one checksum is set; ``sha256_prefix`` is the 8-hex torch.hub convention
    #: carried in upstream file names (``name-<sha256[:8]>.pth``)
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None
    #: weights published only behind a manual step (e.g. a private share): no checksum known
    manual_download: bool = False


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, int, int]  # C, H, W (batch is chosen per run)
    dtype: str = "float32"
    layout: str = "NCHW"
    color: str = "BGR"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: where the resized image sits in the canvas: "top-left" or "center"
    placement: str = "top-left"
    batch_sizes: tuple[int, ...] = (1,)
    #: keep-ratio resize: "round" the scaled sides as mmcv.rescale_size (mmdet/mmseg), or "floor"
    #: them as the Ascend FCOS/PSPNet preprocessing scripts do (common.letterbox)
    resize_rounding: str = "round"
    #: precision mean/std are stored in before normalising: "float32" (mmcv Normalize), or
    #: "float16" (the PSPNet recipe's script builds them as np.float16)
    norm_dtype: str = "float32"
    #: a JPEG's EXIF orientation: "ignore" (PIL-based upstreams) or "apply" (cv2.imread/mmcv.imread)
    exif_orientation: str = "ignore"
    #: mean/std are given for pixels divided by this (timm's 0..1 convention: 255); pixel-unit
    #: mean/std (``mean * mean_std_scale``) are what uint8 inputs and AIPP use (common.aipp)
    mean_std_scale: float = 1.0

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


@dataclass(frozen=True)
class OutputSpec:
    """One model output as stored per image (batch dimension removed)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Capabilities:
    """What a tool may do beyond the contract's required hooks (model.toml ``[capabilities]``)."""

    #: ``export --dynamic-batch``: a symbolic batch axis (onnxruntime; ATC wants static shapes)
    dynamic_batch: bool = False
    #: ``data --input uint8``: the tool has a ``pixels`` hook (the canvas before normalisation),
    #: so the NPU normalises with AIPP (common.aipp)
    uint8_input: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    task: str
    dataset: str
    path: Path
    weights: WeightsSpec
    input: InputSpec
    outputs: dict[str, tuple[OutputSpec, ...]]  # per export target ("ascend", "onnx")
    atc: dict[str, Any]
    published: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    capabilities: Capabilities = Capabilities()

    @property
    def status(self) -> str:
        """"ready" for a complete tool, "planned" for a data file whose tool is not built yet."""
        return self.raw.get("status", "ready")

    @property
    def tool_dir(self) -> Path:
        return self.path.parent

    def outputs_for(self, target: str) -> tuple[OutputSpec, ...]:
        if target not in self.outputs:
            raise ToolError(
                f"{self.path}: no outputs declared for target '{target}' "
                f"(valid: {', '.join(sorted(self.outputs))})"
            )
        return self.outputs[target]

    def check_batch(self, batch: int) -> int:
        if batch not in self.input.batch_sizes:
            valid = ", ".join(map(str, self.input.batch_sizes))
            raise ToolError(f"BATCH={batch} is not supported by {self.name} (valid: {valid})")
        return batch


def spec_path(model: str | Path) -> Path:
    p = Path(model)
    if p.suffix == ".toml":
        return p
    if str(model) not in MODELS:
        raise ToolError(f"unknown model '{model}' (valid: {', '.join(MODELS)})")
    return TOOLS_DIR / str(model) / "model.toml"


def _choice(path: Path, section: dict, key: str, valid: tuple[str, ...]) -> str:
    """``section[key]`` if it is one of ``valid`` (the first is the default), else a clear error."""
    value = section.get(key, valid[0])
    if value not in valid:
        raise ToolError(f"{path}: [input] {key} = {value!r} is not one of {', '.join(valid)}: fix the data file")
    return value


def _capabilities(path: Path, section: dict) -> Capabilities:
    known = set(Capabilities.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ToolError(f"{path}: [capabilities] has unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")
    bad = [k for k, v in section.items() if not isinstance(v, bool)]
    if bad:
        raise ToolError(f"{path}: [capabilities] {bad[0]} must be true or false")
    return Capabilities(**section)


def load_spec(model: str | Path) -> ModelSpec:
    """Load ``tools/<model>/model.toml`` (or a path to a model.toml)."""
    path = spec_path(model)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolError(f"model data file {path} not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ToolError(f"model data file {path} is not valid TOML: {err}") from None
    try:
        w = raw["weights"]
        checks = [k for k in ("sha256", "sha256_prefix", "md5") if w.get(k)]
        if len(checks) > 1 or (not checks and not w.get("manual_download")):
            raise ToolError(
                f"{path}: [weights] needs exactly one of sha256, sha256_prefix, md5 "
                "(or manual_download = true when no checksum is published)"
            )
        weights = WeightsSpec(
            url=w["url"], filename=w.get("filename") or w["url"].rsplit("/", 1)[-1],
            sha256=w.get("sha256"), sha256_prefix=w.get("sha256_prefix"), md5=w.get("md5"),
            manual_download=bool(w.get("manual_download", False)),
        )
        i = raw["input"]
        inp = InputSpec(
            name=i["name"], shape=tuple(i["shape"]), dtype=i.get("dtype", "float32"),
            layout=i.get("layout", "NCHW"), color=i.get("color", "BGR"),
            mean=tuple(i.get("mean", ())), std=tuple(i.get("std", ())),
            placement=i.get("placement", "top-left"),
            batch_sizes=tuple(i.get("batch_sizes", (1,))),
            resize_rounding=_choice(path, i, "resize_rounding", ("round", "floor")),
            norm_dtype=_choice(path, i, "norm_dtype", ("float32", "float16")),
            exif_orientation=_choice(path, i, "exif_orientation", ("ignore", "apply")),
            mean_std_scale=float(i.get("mean_std_scale", 1.0)),
        )
        outputs = {
            target: tuple(OutputSpec(o["name"], o["dtype"], tuple(o["shape"])) for o in outs)
            for target, outs in raw.get("outputs", {}).items()
        }
        return ModelSpec(
            name=raw["name"], title=raw["title"], task=raw["task"], dataset=raw["dataset"],
            path=path, weights=weights, input=inp, outputs=outputs,
            atc=raw.get("atc", {}), published=raw.get("published", {}), raw=raw,
            capabilities=_capabilities(path, raw.get("capabilities", {})),
        )
    except KeyError as err:
        raise ToolError(f"model data file {path} lacks required key {err}") from None
