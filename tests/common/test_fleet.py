"""`make fleet`: the Kubernetes manifests, read back from the files a user applies.

Every rendered file validates against the API schema of the pinned Kubernetes version (and of the oldest one
the manifests need); the tests check what a cluster would do with them: the device plugin's resource for each
chip, the Indexed Job's shard arguments and per-index retries, the claims and their modes, the names. The
pods' commands themselves run as local processes in tests/efficientdet/test_fleet_local.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common import fleet
from common.cann import KNOWN_CHIPS
from common.containers import ContainerError, image_name, push_commands, ready_tools
from common.errors import ToolError
from common.spec import REPO_ROOT, load_spec

READY = ready_tools()
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: what the Ascend Device Plugin reports for each chip family (its GetDeviceRunMode): written out, not derived
RESOURCE = {"310": "huawei.com/Ascend310", "310B1": "huawei.com/Ascend310", "310B4": "huawei.com/Ascend310",
            "310P1": "huawei.com/Ascend310P", "310P3": "huawei.com/Ascend310P",
            "910A": "huawei.com/Ascend910", "910B": "huawei.com/Ascend910", "910ProA": "huawei.com/Ascend910",
            "910ProB": "huawei.com/Ascend910", "910PremiumA": "huawei.com/Ascend910",
            "910B1": "huawei.com/Ascend910", "910B2": "huawei.com/Ascend910", "910B3": "huawei.com/Ascend910",
            "910B4": "huawei.com/Ascend910"}
BASE_ARGS = ["--registry", "registry.example.com:5000/team", "--data-pvc", "coco-val", "--results-pvc", "fleet-results"]


def _render(tmp_path, *extra, models="fcos pspnet", chip="310P3", batch="1 4", shards="8", check=True):
    out = tmp_path / "fleet"
    done = subprocess.run([sys.executable, "-m", "common.fleet", "render", "--models", models, "--chip", chip,
                           "--batch", batch, "--shards", shards, *BASE_ARGS, "--out", str(out), *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return out, done


def _load(folder: Path) -> dict[str, dict]:
    docs = {}
    for path in sorted(folder.glob("*.yaml")):
        (doc,) = list(yaml.safe_load_all(path.read_text()))  # one object per file
        docs[path.name] = doc
    return docs


def _pod(doc):
    return doc["spec"]["template"]["spec"]


def _container(doc):
    (c,) = _pod(doc)["containers"]
    return c


def test_the_issue_example_renders_numbered_folders_and_names_the_skipped_batch(tmp_path):
    out, done = _render(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["fcos-310p3-bs1", "fcos-310p3-bs4", "pspnet-310p3-bs1"]
    for folder in out.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["00-prepare.yaml", "01-shards.yaml", "02-merge.yaml"]
    # PSPNet's data file lists batch 1 and 16: no bs4 job, said on one line (not skipped silently)
    assert "no job for pspnet bs4" in done.stderr and "pspnet-310p3-bs4" not in done.stdout
    # the apply order is printed per job, the prepare Job waited for before the shards
    lines = done.stdout.splitlines()
    assert lines.index(f"kubectl apply -f {out}/fcos-310p3-bs4/00-prepare.yaml") < lines.index(
        "kubectl wait -n default --for=condition=complete --timeout=2h job/fcos-310p3-bs4-prepare") < lines.index(
        f"kubectl apply -f {out}/fcos-310p3-bs4/01-shards.yaml")


@pytest.mark.parametrize("backend", ["ais_bench", "onnxruntime"])
def test_every_manifest_validates_against_the_pinned_kubernetes_schema(tmp_path, backend):
    kv = pytest.importorskip("kubernetes_validate", reason="in the common-py312 environment (its pins)")
    chips = "310 310B1 310P3 910B3"
    out, _ = _render(tmp_path, "--backend", backend, "--weights-pvc", "weights", "--no-verify",
                     "--parallelism", "3", models=" ".join(READY), chip=chips, batch="1")
    files = sorted(out.glob("*/*.yaml"))
    assert len(files) == 3 * len(READY) * 4
    for path in files:
        doc = yaml.safe_load(path.read_text())
        for version in (fleet.KUBERNETES_VERSION, fleet.MIN_KUBERNETES_VERSION):
            kv.validate(doc, version, strict=True)  # raises on any unknown or missing field
    # the validator is strict for real: a misspelt retry field and an older Kubernetes are refused
    shards = yaml.safe_load((out / "fcos-310p3-bs1" / "01-shards.yaml").read_text())
    with pytest.raises(kv.ValidationError):
        kv.validate({**shards, "spec": {**shards["spec"], "backofLimitPerIndex": 1}}, fleet.KUBERNETES_VERSION,
                    strict=True)
    with pytest.raises(kv.ValidationError):
        kv.validate(shards, "1.28.0", strict=True)


@pytest.mark.parametrize("chip", KNOWN_CHIPS)
def test_each_chip_gets_one_of_the_device_plugins_resources(chip):
    assert fleet.device_resource(chip) == RESOURCE[chip]
    assert fleet.device_resource("ascend" + chip.lower()) == RESOURCE[chip]  # any spelling of the chip


@pytest.mark.parametrize("chip", ["310", "310P3", "910B3"])
def test_npu_pods_request_one_chip_and_tolerate_its_taint(tmp_path, chip):
    out, _ = _render(tmp_path, chip=chip, models="fcos", batch="1", shards="4")
    docs = _load(out / f"fcos-{chip.lower()}-bs1")
    resource = RESOURCE[chip]
    for name in ("00-prepare.yaml", "01-shards.yaml"):  # ATC needs the node's toolkit, the shards the chip
        c = _container(docs[name])
        assert c["resources"] == {"requests": {resource: "1"}, "limits": {resource: "1"}}
        assert _pod(docs[name])["tolerations"] == [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
        assert {"name": "ascend-toolkit", "mountPath": "/usr/local/Ascend/ascend-toolkit", "readOnly": True} \
            in c["volumeMounts"]
        assert not [e for e in c.get("env", []) if e["name"] == "ASCEND_VISIBLE_DEVICES"]  # the plugin sets it
    merge = docs["02-merge.yaml"]
    assert "resources" not in _container(merge) and "tolerations" not in _pod(merge)  # evaluation is CPU work


def test_the_indexed_job_runs_the_interface_command_with_per_index_retries(tmp_path):
    out, _ = _render(tmp_path, "--parallelism", "3", "--retries", "2", models="fcos", batch="4", shards="8")
    shards = _load(out / "fcos-310p3-bs4")["01-shards.yaml"]
    spec = shards["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 3)
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 8  # one failed index stops no other
    assert "backoffLimit" not in spec  # per index, not for the Job as a whole
    assert {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [2]}} in spec["podFailurePolicy"][
        "rules"]  # a tool's one-line error is not retried
    assert _pod(shards)["restartPolicy"] == "Never"
    c = _container(shards)
    assert "command" not in c  # the image's entrypoint (CANN's set_env.sh) runs first
    out = "/results/fcos-310p3-bs4/shards/$(JOB_COMPLETION_INDEX)"
    stream = ["python", "-m", "tools.fcos", "stream", "--model",
              "/results/fcos-310p3-bs4/model/fcos_ascend_bs4_Ascend310P3.om", "--data", "/data", "--out", out,
              "--backend", "ais_bench", "--batch", "4", "--device", "0", "--target", "ascend", "--shard", "auto/8"]
    assert c["args"][:2] == ["sh", "-c"]
    done, run = c["args"][2].strip().split(" || exec ")
    assert shlex.split(run) == stream  # the interface's shard command, as the pod's main process
    assert shlex.split(done) == ["python", "-m", "common.fleet", "shard-done", "--out", out, "--shard", "auto/8"]
    # $(JOB_COMPLETION_INDEX) is expanded by Kubernetes only for a variable the container declares
    assert c["env"] == [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    assert c["image"] == f"registry.example.com:5000/team/{image_name('fcos')}"


def test_parallelism_defaults_to_every_shard(tmp_path):
    out, _ = _render(tmp_path, models="pspnet", batch="16", shards="5")
    assert _load(out / "pspnet-310p3-bs16")["01-shards.yaml"]["spec"]["parallelism"] == 5


def test_claims_mount_the_dataset_read_only_and_the_results_writable(tmp_path):
    out, _ = _render(tmp_path, "--weights-pvc", "ckpts", "--data-dir", "coco2017", models="fcos", batch="1",
                     shards="2")
    docs = _load(out / "fcos-310p3-bs1")
    claims = {name: {v["name"]: v.get("persistentVolumeClaim") for v in _pod(doc)["volumes"]}
              for name, doc in docs.items()}
    data = {"claimName": "coco-val", "readOnly": True}
    results = {"claimName": "fleet-results"}
    assert claims["00-prepare.yaml"] == {"results": results, "weights": {"claimName": "ckpts", "readOnly": True},
                                         "ascend-toolkit": None}
    assert claims["01-shards.yaml"] == {"data": data, "results": results, "ascend-toolkit": None}
    assert claims["02-merge.yaml"] == {"data": data, "results": results}
    for doc in docs.values():
        mounts = {m["name"]: m for m in _container(doc)["volumeMounts"]}
        assert mounts["results"] == {"name": "results", "mountPath": "/results"}
        if "data" in mounts:
            assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    toolkit = [v for v in _pod(docs["01-shards.yaml"])["volumes"] if v["name"] == "ascend-toolkit"]
    assert toolkit == [{"name": "ascend-toolkit", "hostPath": {"path": "/usr/local/Ascend/ascend-toolkit",
                                                               "type": "Directory"}}]
    assert "--data /data/coco2017 " in _container(docs["02-merge.yaml"])["args"][2]
    assert " --data /data/coco2017 " in _container(docs["01-shards.yaml"])["args"][2]


def test_the_prepare_job_verifies_the_weights_and_compiles_once(tmp_path):
    out, _ = _render(tmp_path, "--weights-pvc", "ckpts", models="fcos", batch="1", shards="2")
    script = _container(_load(out / "fcos-310p3-bs1")["00-prepare.yaml"])["args"]
    assert script[:2] == ["sh", "-c"]
    filename = load_spec("fcos").weights.filename
    onnx = "/results/fcos-310p3-bs1/model/fcos_ascend_bs1.onnx"
    om = "/results/fcos-310p3-bs1/model/fcos_ascend_bs1_Ascend310P3.om"
    assert script[2].splitlines() == [
        "set -e",
        f'if [ -e {onnx} ]; then echo "keeping {onnx}"; else python -m tools.fcos export '
        f"--out /results/fcos-310p3-bs1/model --batch 1 --target ascend --weights /weights/{filename}; fi",
        f'if [ -e {om} ]; then echo "keeping {om}"; else python -m common.atc --model fcos --onnx {onnx} '
        "--out /results/fcos-310p3-bs1/model --chip 310P3 --batch 1 --target ascend; fi"]
    assert "--no-verify" not in script[2]  # the export checks model.toml's checksum in the pod


def test_onnxruntime_fleets_skip_atc_and_request_no_chip(tmp_path):
    out, _ = _render(tmp_path, "--backend", "onnxruntime", models="efficientdet", batch="1", shards="2")
    docs = _load(out / "efficientdet-310p3-bs1")
    assert "common.atc" not in _container(docs["00-prepare.yaml"])["args"][2]
    c = _container(docs["01-shards.yaml"])
    assert "resources" not in c and "--model /results/efficientdet-310p3-bs1/model/efficientdet_ascend_bs1.onnx " \
        in c["args"][2]


def test_the_merge_job_merges_then_records_the_job(tmp_path):
    out, _ = _render(tmp_path, "--namespace", "vision", models="fcos", batch="4", shards="8")
    args = _container(_load(out / "fcos-310p3-bs4")["02-merge.yaml"])["args"]
    om = "/results/fcos-310p3-bs4/model/fcos_ascend_bs4_Ascend310P3.om"
    assert args[2].splitlines() == [
        "set -e",
        "python -m tools.fcos merge --shards /results/fcos-310p3-bs4/shards --count 8 --data /data "
        f"--out /results/fcos-310p3-bs4 --force --backend ais_bench --batch 4 --model {om}",
        "python -m common.fleet record-job --out /results/fcos-310p3-bs4 --job fcos-310p3-bs4 --model fcos "
        f"--chip 310P3 --batch 4 --shards 8 --backend ais_bench --image registry.example.com:5000/team/"
        f"{image_name('fcos')} --namespace vision"]


def test_every_name_is_a_dns_label_and_long_ones_are_refused(tmp_path):
    out, _ = _render(tmp_path, "--weights-pvc", "w", "--no-verify", models=" ".join(READY),
                     chip="Ascend310P3 910PremiumA", batch="1", shards="100")
    for path in out.glob("*/*.yaml"):
        doc = yaml.safe_load(path.read_text())
        name = doc["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        if doc["spec"].get("completionMode") == "Indexed":  # pod hostnames are <job>-<index>
            assert len(f"{name}-{doc['spec']['completions'] - 1}") <= 63
    assert (out / "efficientdet-910premiuma-bs1").is_dir()  # lowercased chip
    settings = fleet.FleetSettings("r.io/x", "d", "r", shards=8)
    with pytest.raises(ToolError, match="not a valid Kubernetes name"):
        fleet.FleetJob("m" * 50, "310P3", 1, settings).check_names()


def _one_line_error(done) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("change, message", [
    ({"--registry": ""}, "REGISTRY is empty"),
    ({"--registry": "https://registry.example.com"}, "is not a registry reference"),
    ({"--data-pvc": ""}, "DATA_PVC is empty"),
    ({"--results-pvc": "Results_Claim"}, "is not a PersistentVolumeClaim name"),
    ({"--chip": "320X"}, "unknown CHIP '320X'"),
    ({"--chip": ""}, "CHIP is empty"),
    ({"--shards": "0"}, "SHARDS='0' is not a whole number >= 1"),
    ({"--shards": ""}, "SHARDS='' is not a whole number"),
    ({"--parallelism": "9"}, "PARALLELISM=9 must be between 1 and SHARDS=8"),
    ({"--batch": "3"}, "BATCH=3 is not supported by fcos"),
    ({"--models": "yolo"}, "unknown model 'yolo'"),
    ({"--models": "maskrcnn", "--batch": "1", "--weights-pvc": "w"}, "no checksum is published"),
    ({"--models": "retinamask", "--batch": "1"}, "must be downloaded by hand"),
    ({"--namespace": "Vision"}, "NAMESPACE 'Vision' is not a valid Kubernetes name"),
    ({"--backend": "tensorrt"}, "unknown BACKEND 'tensorrt'"),
    ({"--data-dir": "../coco"}, "must be a path inside the data claim"),
])
def test_bad_settings_are_one_line_errors(tmp_path, change, message):
    argv = {"--models": "fcos", "--chip": "310P3", "--batch": "1 4", "--shards": "8",
            "--registry": "registry.example.com/team", "--data-pvc": "coco", "--results-pvc": "results"}
    argv.update(change)
    flat = [x for kv in argv.items() for x in kv]
    done = subprocess.run([sys.executable, "-m", "common.fleet", "render", *flat, "--out", str(tmp_path / "f")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert message in _one_line_error(done)
    assert not (tmp_path / "f").exists()  # nothing half-rendered


def test_rendered_folders_are_kept_unless_forced(tmp_path):
    out, _ = _render(tmp_path, models="fcos", batch="1")
    target = out / "fcos-310p3-bs1" / "01-shards.yaml"
    target.write_text("edited by hand\n")
    _, again = _render(tmp_path, models="fcos", batch="1", check=False)
    assert "already exists: pass --force" in _one_line_error(again)
    assert target.read_text() == "edited by hand\n"
    _render(tmp_path, "--force", models="fcos", batch="1")
    assert yaml.safe_load(target.read_text())["kind"] == "Job"


def test_record_job_writes_the_interface_fields(tmp_path):
    done = subprocess.run([sys.executable, "-m", "common.fleet", "record-job", "--out", str(tmp_path), "--job",
                           "fcos-310p3-bs4", "--model", "fcos", "--chip", "ascend310p3", "--batch", "4", "--shards",
                           "8", "--backend", "ais_bench", "--image", "r.io/t/ascend-vision/fcos:abc", "--namespace",
                           "default"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "job.json").read_text()) == {
        "job": "fcos-310p3-bs4", "model": "fcos", "chip": "310P3", "batch": 4, "shards": 8, "backend": "ais_bench",
        "image": "r.io/t/ascend-vision/fcos:abc", "namespace": "default"}
    missing = subprocess.run([sys.executable, "-m", "common.fleet", "record-job", "--out", str(tmp_path / "no"),
                              "--job", "j", "--model", "fcos", "--chip", "310P3", "--batch", "4", "--shards", "8",
                              "--backend", "ais_bench", "--image", "i", "--namespace", "default"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert "is not a folder: run the merge first" in _one_line_error(missing)


def test_push_tags_the_local_image_into_the_registry_the_manifests_name():
    local = image_name("fcos")
    remote = f"registry.example.com:5000/team/{local}"
    assert push_commands("fcos", "docker", "registry.example.com:5000/team") == [
        ["docker", "tag", local, remote], ["docker", "push", remote]]
    assert push_commands("fcos", "buildah", "registry.example.com:5000/team") == [
        ["buildah", "push", f"localhost/{local}", f"docker://{remote}"]]
    job = fleet.FleetJob("fcos", "310P3", 1, fleet.FleetSettings("registry.example.com:5000/team", "d", "r", 2))
    assert job.image == remote  # what the pods pull is what was pushed
    with pytest.raises(ContainerError, match="REGISTRY is empty"):
        push_commands("fcos", "docker", "")


def test_make_images_push_without_registry_is_a_one_line_error_before_any_build():
    done = subprocess.run(["make", "--no-print-directory", "images", "PUSH=1", "HOSTPY=" + sys.executable],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "REGISTRY is empty" in errors[0], done.stderr
    assert done.returncode != 0 and "docker build" not in done.stderr and "buildah" not in done.stderr


def test_make_fleet_passes_every_variable_and_defaults_to_the_npu_backend():
    argv = ["make", "-n", "--no-print-directory", "fleet", "MODELS=fcos pspnet", "CHIP=310P3", "BATCH=1 4",
            "SHARDS=8", "PARALLELISM=4", "REGISTRY=r.io/t", "DATA_PVC=coco", "RESULTS_PVC=res", "WEIGHTS_PVC=w",
            "NAMESPACE=vision", "DATA_DIR=val", "OUT=o"]
    dry = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    for flag in ("--models 'fcos pspnet'", "--chip '310P3'", "--batch '1 4'", "--shards '8'", "--parallelism '4'",
                 "--registry 'r.io/t'", "--data-pvc 'coco'", "--results-pvc 'res'", "--weights-pvc 'w'",
                 "--namespace 'vision'", "--data-dir 'val'", "--backend 'ais_bench'", "--out 'o/fleet'"):
        assert flag in dry.stdout, flag
    chosen = subprocess.run(argv + ["BACKEND=onnxruntime"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert "--backend 'onnxruntime'" in chosen.stdout


def _shard_done(out, shard, index):
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.run([sys.executable, "-m", "common.fleet", "shard-done", "--out", str(out), "--shard", shard],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_shard_done_keeps_only_a_finished_shard_of_this_index_and_count(tmp_path):
    assert _shard_done(tmp_path / "none", "auto/4", 1).returncode == fleet.SHARD_TO_RUN  # nothing yet: run it
    (tmp_path / "shard.json").write_text(json.dumps({"index": 1, "count": 4, "images": 2, "complete": True,
                                                     "stems": ["a", "b"]}))
    kept = _shard_done(tmp_path, "auto/4", 1)
    assert kept.returncode == 0 and "keeping finished shard 1/4" in kept.stdout
    assert _shard_done(tmp_path, "auto/4", 2).returncode == fleet.SHARD_TO_RUN  # another index: not this shard
    assert _shard_done(tmp_path, "auto/8", 1).returncode == fleet.SHARD_TO_RUN  # nor a shard of another split
    (tmp_path / "shard.json").write_text(json.dumps({"index": 1, "count": 4, "complete": False}))
    assert _shard_done(tmp_path, "auto/4", 1).returncode == fleet.SHARD_TO_RUN
    assert "JOB_COMPLETION_INDEX" in _one_line_error(_shard_done(tmp_path, "auto/4", "x"))


def test_make_clean_accepts_an_out_holding_the_fleet_manifests(tmp_path):
    out = tmp_path / "out"
    _render(out, models="fcos", batch="1")  # OUT/fleet, as make fleet writes it
    done = subprocess.run([sys.executable, "-m", "common.fsutil", "clean", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not out.exists(), done.stderr
