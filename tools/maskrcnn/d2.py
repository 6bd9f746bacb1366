"""detectron2 0.5 for this tool, whichever way it was installed, and the recipe's model config.

Two routes give the same Python sources (detectron2 v0.5):

* **image** (docker/Dockerfile, a host that reaches GitHub): the official source at tag v0.5,
  compiled, so ``detectron2._C`` is a real extension;
* **venv / CI** (package registries only): the PyPI sdist ``detectron2-cdo==0.5``, unpacked by
  common.envs (tools/maskrcnn/requirements-unpack.txt), which has no C++ sources and so no ``_C``.

Mask R-CNN R101-FPN needs nothing from ``_C`` at inference: its ROIAlign and NMS are torchvision's.
``_C`` is only imported at module level by deform_conv, rotated_boxes and roi_align_rotated (and
the optional fast COCO evaluator), which ``import detectron2.layers`` pulls in. Where the compiled
module is absent, :func:`import_detectron2` registers a stand-in whose every attribute access
raises, naming the op, so nothing can silently use a missing kernel; where it exists it is used.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from common.errors import ToolError

#: the recipe's detectron2 config (model zoo name), as in its export command
CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
MISSING_EXT = "detectron2._C"


class MissingExtensionError(RuntimeError):
    """A detectron2 op that needs the compiled extension was called in the sdist route."""


def _missing_extension_module() -> types.ModuleType:
    module = types.ModuleType(MISSING_EXT, "Stand-in for detectron2's compiled extension (absent in the "
                                           "detectron2-cdo sdist route): any use raises.")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingExtensionError(
            f"detectron2._C.{name} is a compiled detectron2 op, absent in this environment (detectron2-cdo "
            "sdist: Python sources only); Mask R-CNN R101-FPN does not use it. Use the image route "
            "(official v0.5 compiled) for models that need it")

    module.__getattr__ = __getattr__  # PEP 562 module attribute hook
    return module


def route() -> str:
    """``"compiled"`` when detectron2 has its real ``_C`` (image / official build), ``"sdist"`` otherwise."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or spec.origin is None:
        raise ToolError("detectron2 is not installed in this interpreter: run the tool in its environment "
                        "(`python3 -m common.envs ensure maskrcnn`, or `make maskrcnn-env`)")
    return "compiled" if any(Path(spec.origin).parent.glob("_C*.so")) else "sdist"


def import_detectron2() -> str:
    """Make ``import detectron2.*`` work in both routes; returns :func:`route`'s answer."""
    kind = route()
    if kind == "sdist" and MISSING_EXT not in sys.modules:
        sys.modules[MISSING_EXT] = _missing_extension_module()
    return kind


def config(min_size: int = 800, max_size: int = 1333):
    """The recipe's detectron2 config on CPU: R101-FPN 3x from detectron2's own model zoo yaml."""
    import_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = int(min_size)
    cfg.INPUT.MAX_SIZE_TEST = int(max_size)
    return cfg


def build_model(cfg=None):
    """detectron2's GeneralizedRCNN for ``cfg`` (default: :func:`config`), eval mode, initial weights."""
    import_detectron2()
    from detectron2.modeling import build_model as d2_build

    return d2_build(cfg if cfg is not None else config()).eval()
