"""detectron2 model-zoo checkpoints (``model_final_*.pkl``): reading them safely, writing stand-ins.

The model zoo publishes a plain pickle ``{"model": {name: numpy array}, "__author__": "Detectron2
Model Zoo"}`` (what ``DetectionCheckpointer`` recognises as a model-zoo file), with detectron2's own
state_dict names. Such a pickle could carry code, so :func:`read_pkl` rebuilds only numpy arrays,
containers and plain values and refuses any other global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.errors import ToolError
from common.fsutil import atomic_path

MODEL_ZOO_AUTHOR = "Detectron2 Model Zoo"
#: the globals a pickle of numpy arrays needs (numpy 1.x and 2.x module paths)
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}
#: buffers detectron2 computes from the config; older model-zoo files saved them (persistent
#: buffers then), detectron2 0.5 does not have them in its state_dict: checked, then dropped
CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_pkl(path: Path) -> dict[str, np.ndarray]:
    """The ``model`` dict of a model-zoo .pkl, without executing code from the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise ToolError(f"{p} contains objects other than arrays and plain values ({err}); "
                        "refusing to unpickle it") from None
    except (EOFError, OSError, ValueError, TypeError) as err:
        raise ToolError(f"cannot read checkpoint {p} ({err}): the file is corrupt or not a detectron2 .pkl") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ToolError(f"{p} is not a detectron2 model-zoo checkpoint (no 'model' dict): "
                        "use the published model_final_*.pkl")
    return data["model"]


def check_config_buffers(state: Mapping[str, Any], mean, std, path: Path) -> dict[str, Any]:
    """``state`` without :data:`CONFIG_BUFFERS`, after checking they equal the config's values."""
    out = dict(state)
    for key, want in zip(CONFIG_BUFFERS, (mean, std)):
        if key in out:
            got = np.asarray(out.pop(key), np.float64).reshape(-1)
            if got.shape != (len(want),) or not np.allclose(got, want):
                raise ToolError(f"checkpoint {path} has {key} {got.tolist()}, the config {list(want)}: "
                                "it was trained with another input normalisation")
    return out


def write_pkl(state: Mapping[str, Any], path: Path) -> Path:
    """Write ``state`` (tensors or arrays) in the model-zoo .pkl format, atomically."""
    model = {k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
             for k, v in state.items()}
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        pickle.dump({"model": model, "__author__": MODEL_ZOO_AUTHOR}, f, protocol=2)  # as the zoo's files
    return out
