"""``make demo``: the whole pipeline on a machine with no weights, no dataset and no NPU.

Without WEIGHTS/DATA it uses a random-weight checkpoint (upstream format) and a generated mini
COCO set, and labels every output as a pipeline demonstration — its mAP says nothing about
the model. With both given, the same steps are a real evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import atc
from common.contract import Tool
from common.errors import ToolError
from common.fsutil import ensure_fresh_output

DEMO_NOTE = ("PIPELINE DEMONSTRATION: random weights and/or synthetic images - "
             "the accuracy below says nothing about the model")


def _step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


def run_demo(tool: Tool, out: str | Path, *, weights: Path | None, data: Path | None,
             n_images: int = 4, chip: str = "310P3", target: str = "ascend", force: bool = False):
    from common.demococo import make_mini_coco
    from common.demovoc import make_mini_voc
    from common.exportrecord import export_checked
    from common.pipeline import evaluate, preprocess_dataset, run_inference
    from common.report import parity_summary, provenance, report_location
    from common.weights import describe_weights, fetch

    spec = tool.SPEC
    out = ensure_fresh_output(Path(out), force=force, what="demo directory")
    demo = weights is None or data is None
    if demo:
        print(DEMO_NOTE, file=sys.stderr)

    _step("weights")
    verified = weights is not None  # a given checkpoint passes fetch's checksum check; random ones are not
    if weights is None:
        weights = tool.random_checkpoint(out / "random_checkpoint.pth")
        print(f"random-weight checkpoint (upstream format): {weights}", file=sys.stderr)
    else:
        weights = fetch(spec.weights, weights)
    if data is None and spec.dataset.startswith("voc"):
        data = make_mini_voc(out / "mini_voc", n_images=n_images)
        print(f"synthetic VOC2012-layout set ({n_images} images): {data}", file=sys.stderr)
    elif data is None:
        data = make_mini_coco(out / "mini_coco", n_images=n_images)
        print(f"synthetic COCO-format set ({n_images} images): {data}", file=sys.stderr)

    _step(f"export (target {target}, batch 1)")
    onnx_path = out / "onnx" / f"{spec.name}_{target}_bs1.onnx"
    parity = export_checked(tool, weights, onnx_path, verified=verified, batch=1, target=target)
    print(onnx_path, file=sys.stderr)

    _step(f"atc (CHIP={chip})")
    input_name, out_nodes = atc.graph_io(spec, onnx_path, target=target, batch=1)
    job = atc.build_atc(spec, onnx_path, out / "om", chip=chip, batch=1, target=target, out_nodes=out_nodes,
                        input_name=input_name)
    try:
        atc.run(job, out / "om" / "atc.log", force=True)
    except ToolError as err:
        print(f"skipped: {err}\n  {job.command}", file=sys.stderr)

    _step("preprocess")
    prep = out / "data"
    preprocess_dataset(tool, data, prep, force=True)

    _step("inference (onnxruntime, CPU)")
    results = run_inference(spec, onnx_path, prep, out / "infer", backend="onnxruntime", batch=1, force=True)

    _step("postprocess + evaluation")
    prov = provenance("onnxruntime", 1, "cpu", onnx_path)
    prov.weights = describe_weights(parity["weights"])
    prov.parity = parity_summary(parity)
    report = evaluate(tool, prep, results, out / "eval", target=target, provenance=prov,
                      notes=(DEMO_NOTE,) if demo else (), force=True)
    print((out / "eval" / "report.md").read_text())
    print(report_location(out / "eval"), flush=True)  # last, after every step's stderr lines
    return report
