"""The fleet's pods, run here as local processes: what `kubectl apply` of `make fleet`'s files would run.

Each container's args are taken from the rendered YAML, expanded as Kubernetes expands them ($(VAR) from the
container's env, JOB_COMPLETION_INDEX from the Indexed Job's annotation) and started through the image's
entrypoint (docker/entrypoint.sh), with the claims' mount paths mapped to folders here. EfficientDet is the
cheapest tool to export at full size (about 20 s); onnxruntime stands in for ais_bench. One index is killed
mid-run with SIGKILL and run again, as the Job's per-index retry does; the merge Job's result must equal an
unsharded `stream` run's, byte for byte. What this cannot show (scheduling, the device plugin, the Ascend
Docker Runtime, the claims' access modes): README, "Kubernetes fleet".
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common import fleet
from common.demococo import make_mini_coco
from common.spec import REPO_ROOT
from tools.efficientdet import tool

SHARDS = 3
CLAIMS = {"data": "coco", "results": "fleet-results", "weights": "checkpoints"}
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, checkpoint):
    """The rendered job folder and the local folders standing in for its claims."""
    root = tmp_path_factory.mktemp("fleet")
    claims = {name: root / "claims" / name for name in CLAIMS.values()}
    make_mini_coco(claims["coco"], n_images=8, seed=21)
    claims["checkpoints"].mkdir(parents=True)
    # the random checkpoint under the published file name, as a user's weights claim holds it (no checksum
    # matches random weights: --no-verify, which the real run leaves out)
    (claims["checkpoints"] / tool.SPEC.weights.filename).symlink_to(checkpoint)
    claims["fleet-results"].mkdir()
    settings = fleet.FleetSettings(registry="registry.example.com/team", data_pvc="coco",
                                   results_pvc="fleet-results", weights_pvc="checkpoints", shards=SHARDS,
                                   backend="onnxruntime", no_verify=True)
    jobs, _ = fleet.plan("efficientdet", "310P3", "1", settings)
    (folder,) = fleet.render(jobs, root / "fleet")
    return {"job": jobs[0], "folder": folder, "claims": claims}


def _container(folder: Path, file_name: str) -> tuple[dict, dict]:
    doc = yaml.safe_load((folder / file_name).read_text())
    pod = doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container, pod


def _mounts(container: dict, pod: dict, claims: dict) -> dict[str, Path]:
    """mountPath -> the local folder of the claim mounted there."""
    by_volume = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                 if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[by_volume[m["name"]]] for m in container["volumeMounts"] if m["name"] in by_volume}


def _localize(text: str, mounts: dict[str, Path]) -> str:
    """Mount paths at the start of a word (``/data``, ``/results/...``) -> the local folders."""
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<![\w./-]){re.escape(mount)}(?=/|\s|'|$)", str(local), text)
    return text


def _pod_process(folder: Path, file_name: str, claims: dict, index: int | None = None) -> subprocess.Popen:
    """Start one pod of ``file_name`` as Kubernetes would: env from the spec, $(VAR) expanded, entrypoint first."""
    container, pod = _container(folder, file_name)
    mounts = _mounts(container, pod, claims)
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _VAR.sub(lambda m: env.get(m[1], m[0]), var["value"])
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": INDEX_FIELD}}, var  # the only field we read
            env[var["name"]] = str(index)
    args = [_localize(_VAR.sub(lambda m: env.get(m[1], m[0]), a), mounts) for a in container["args"]]
    assert "command" not in container  # the image's ENTRYPOINT runs, then the args
    process_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.Popen(["sh", str(REPO_ROOT / "docker" / "entrypoint.sh"), *args], cwd=REPO_ROOT,
                            env=process_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _kill_mid_run(process: subprocess.Popen, journal: Path) -> None:
    """SIGKILL once the shard has journalled its first image (and before it finished)."""
    deadline = time.monotonic() + 600
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the shard never journalled an image"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow  # ten processes and a real export: 1.6 min on a quiet 2-core machine, 5 loaded (CI: slow tier)
def test_the_pods_commands_give_the_unsharded_result_after_a_killed_index_is_retried(cluster):
    job, folder, claims = cluster["job"], cluster["folder"], cluster["claims"]
    results = claims["fleet-results"] / job.name

    rc, out, err = _finish(_pod_process(folder, fleet.PREPARE_FILE, claims))
    assert rc == 0, err
    onnx = results / "model" / "efficientdet_ascend_bs1.onnx"
    assert onnx.is_file()
    rc, out, err = _finish(_pod_process(folder, fleet.PREPARE_FILE, claims))  # a retry of the prepare pod
    assert rc == 0 and f"keeping {onnx}" in out, err  # the export is not redone

    killed = 1
    pods = {i: _pod_process(folder, fleet.SHARDS_FILE, claims, index=i) for i in range(SHARDS)}
    _kill_mid_run(pods[killed], results / "shards" / str(killed) / "results.jsonl")
    for i in set(pods) - {killed}:
        rc, _, err = _finish(pods[i])
        assert rc == 0, err
    assert not (results / "shards" / str(killed) / "shard.json").exists()

    # the merge Job before the retry: one line naming the index to rerun, exit 2 (its podFailurePolicy: FailJob)
    rc, _, err = _finish(_pod_process(folder, fleet.MERGE_FILE, claims))
    assert rc == 2 and f"rerun shard(s) {killed}" in err, err
    assert not (results / "report.json").exists() and not (results / "job.json").exists()

    rc, _, err = _finish(_pod_process(folder, fleet.SHARDS_FILE, claims, index=killed))  # the index's retry
    assert rc == 0, err
    record = json.loads((results / "shards" / str(killed) / "shard.json").read_text())
    assert (record["index"], record["count"], record["complete"]) == (killed, SHARDS, True)
    # the Job applied again: finished shards are kept, not refused
    rc, out, err = _finish(_pod_process(folder, fleet.SHARDS_FILE, claims, index=0))
    assert rc == 0 and "keeping finished shard 0/3" in out, err

    rc, _, err = _finish(_pod_process(folder, fleet.MERGE_FILE, claims))
    assert rc == 0, err

    whole = claims["fleet-results"] / "unsharded"
    done = subprocess.run([sys.executable, "-m", "tools.efficientdet", "stream", "--model", str(onnx),
                           "--data", str(claims["coco"]), "--out", str(whole), "--backend", "onnxruntime",
                           "--batch", "1", "--device", "0", "--target", "ascend"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (results / "detections.json").read_bytes() == (whole / "detections.json").read_bytes()
    merged, unsharded = (json.loads((d / "report.json").read_text()) for d in (results, whole))
    assert merged["metrics"] == unsharded["metrics"]
    assert merged["dataset"]["num_images"] == unsharded["dataset"]["num_images"] == 8
    assert json.loads((results / "job.json").read_text()) == {
        "job": "efficientdet-310p3-bs1", "model": "efficientdet", "chip": "310P3", "batch": 1, "shards": SHARDS,
        "backend": "onnxruntime", "image": _container(folder, fleet.MERGE_FILE)[0]["image"],
        "namespace": "default"}
