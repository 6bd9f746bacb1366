"""Weights: verified download, cache, and safe checkpoint loading.

A checkpoint from the internet is a pickle, and unpickling can run arbitrary code. So:
1. the file's checksum (from the model data file) is verified *before* anything loads it;
2. loading uses the safest loader the installed torch offers: ``weights_only=True`` where
   torch has it (>= 1.13), otherwise a restricted unpickler that only rebuilds tensors,
   containers and plain values (torch 1.8, the recipes' pin, has no ``weights_only``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping

from common.errors import ToolError
from common.fsutil import atomic_path
from common.progress import BYTES, StepProgress
from common.spec import WeightsSpec

CACHE_ENV = "ASCEND_VISION_CACHE"


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ascend-vision")
    return Path(base)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, spec: WeightsSpec) -> None:
    """Refuse a weights file whose checksum differs from the data file's."""
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"weights file {p} not found: pass WEIGHTS=<path> or let the tool download {spec.url}")
    if spec.sha256:
        expected, actual = spec.sha256, file_digest(p, "sha256")
        ok = actual == expected.lower()
    elif spec.sha256_prefix:
        expected, actual = spec.sha256_prefix + "...", file_digest(p, "sha256")
        ok = actual.startswith(spec.sha256_prefix.lower())
    elif spec.md5:
        expected, actual = spec.md5, file_digest(p, "md5")
        ok = actual == expected.lower()
    else:
        raise ToolError(
            f"no checksum is published for {p.name} ({spec.url}): it cannot be verified; "
            "pass --no-verify to load it at your own risk"
        )
    if not ok:
        raise ToolError(
            f"checksum mismatch for {p}: expected {expected}, got {actual}; "
            f"the file is corrupt, truncated or not {spec.filename} — delete it and download again "
            "(your own checkpoint of this model: --no-verify, NO_VERIFY=1 with make)"
        )


def fetch(spec: WeightsSpec, weights: str | os.PathLike | None = None, *, verify_checksum: bool = True) -> Path:
    """Return a verified local weights file: ``weights`` if given, else the cached download."""
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ToolError(f"weights file {path} not found: check WEIGHTS=")
    else:
        path = cache_dir() / "weights" / spec.filename
        if not path.is_file():
            if spec.manual_download:
                raise ToolError(
                    f"{spec.filename} must be downloaded by hand from {spec.url}; then pass WEIGHTS=<path>")
            download(spec.url, path)
    if verify_checksum:
        verify(path, spec)
    return path


def weights_record(path: str | os.PathLike, *, verified: bool) -> dict:
    """What a model file was exported from: carried by the export's sidecar JSON into every report."""
    p = Path(path)
    return {"file": str(p), "sha256": file_digest(p, "sha256"), "verified": bool(verified)}


def describe_weights(record: dict | None) -> str:
    """One line for a report: which checkpoint, and whether it is the published one."""
    if not record:
        return "unknown (no export record beside the model file)"
    digest = record.get("sha256", "?")[:12]
    if record.get("verified"):
        return f"`{record['file']}` (sha256 {digest}..., matches the published checksum)"
    return (f"`{record['file']}` (sha256 {digest}...) NOT verified against the published checksum: "
            "the figures describe this file, not the published model")


def download(url: str, dest: Path) -> Path:
    """Download to a temporary name; only a complete file is renamed to ``dest``."""
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            with open(tmp, "wb") as f, StepProgress(f"download {dest.name}", total or None, BYTES) as progress:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    f.write(chunk)
                    done += len(chunk)
                    progress.advance(len(chunk))
            if total and done != total:
                raise ToolError(f"download of {url} truncated ({done} of {total} bytes): rerun to retry")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise ToolError(
            f"cannot download {url} ({err}): download it elsewhere and pass WEIGHTS=<path>") from None
    return dest


# --- safe loading -----------------------------------------------------------------------------

_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}
_SAFE_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "IntStorage",
                  "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "BFloat16Storage"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors, containers and numbers; refuses every other global (no code execution)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and name in _SAFE_STORAGES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` (torch < 1.13 has no ``weights_only``)."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "restricted_pickle"


def safe_load(path: str | os.PathLike):
    """Load a torch checkpoint without executing code from it."""
    import torch

    p = Path(path)
    try:
        if "weights_only" in torch.load.__code__.co_varnames:
            return torch.load(p, map_location="cpu", weights_only=True)
        return torch.load(p, map_location="cpu", pickle_module=_RestrictedPickleModule)
    except pickle.UnpicklingError as err:
        raise ToolError(
            f"{p} contains objects other than tensors and plain values ({err}); refusing to unpickle it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ToolError(f"cannot read checkpoint {p} ({err}): the file is corrupt or not a torch checkpoint") from None


def load_state_dict(path: str | os.PathLike) -> dict:
    """The tensor dict of a checkpoint, unwrapping the usual ``state_dict``/``model`` nesting."""
    obj = safe_load(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ToolError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def check_keys(expected: Iterable[str], got: Iterable[str], path: str | os.PathLike) -> None:
    """Refuse a partial or foreign checkpoint, listing the keys that differ."""
    expected, got = set(expected), set(got)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
        raise ToolError(f"checkpoint {path} does not fit the model ({'; '.join(parts)}): wrong file or model")


def fill_bn_counters(state_dict: Mapping[str, object], expected: Mapping[str, object]) -> dict[str, object]:
    """Add BatchNorm ``num_batches_tracked`` counters the model has but the file lacks.

    They only count training steps (eval-mode BN never reads them); files saved before torch 0.4.1
    have none. Every other missing key stays missing and is refused by the key check.
    """
    out = dict(state_dict)
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = value.clone() if hasattr(value, "clone") else value
    return out


def load_checked(model, state_dict: Mapping[str, object], path: str | os.PathLike, *, variant_hint: str):
    """Load a checkpoint's tensors into ``model`` only if keys and shapes all fit; eval mode.

    ``variant_hint`` ends the wrong-shape error, e.g. "another FCOS variant (the GN head?)".
    """
    expected = model.state_dict()
    state = fill_bn_counters(state_dict, expected)
    check_keys(expected.keys(), state.keys(), path)
    wrong = [f"{k} {list(v.shape)} (model {list(expected[k].shape)})" for k, v in state.items()
             if tuple(getattr(v, "shape", ())) != tuple(expected[k].shape)]
    if wrong:
        raise ToolError(f"checkpoint {path} has tensors of the wrong shape ({'; '.join(wrong[:4])}): "
                        f"it is {variant_hint}")
    model.load_state_dict(state, strict=True)
    return model.eval()
