"""Kubernetes manifests that evaluate the models on many Ascend hosts: ``make fleet``.

For each model x chip x batch, ``render`` writes a folder ``<out>/<job>/`` (``<job>`` = ``fcos-310p3-bs4``)
of three plain YAML files the user applies in order with ``kubectl apply -f``:

  00-prepare.yaml  Job ``<job>-prepare``: export with the checksum-verified weights, then ATC for the chip,
                   into ``/results/<job>/model`` on the results claim (a step whose file exists is kept, so
                   the Job runs once; its retries continue where it stopped).
  01-shards.yaml   Indexed Job ``<job>``: ``completions`` = shards, one pod per index running
                   ``python -m tools.<m> stream ... --shard auto/<N>`` (the index comes from
                   JOB_COMPLETION_INDEX), each retried on its own (``backoffLimitPerIndex``); a shard found
                   finished is kept (``shard-done``), so applying the Job again reruns only the others.
  02-merge.yaml    Job ``<job>-merge``: ``python -m tools.<m> merge`` (checks every shard, evaluates once),
                   then ``python -m common.fleet record-job`` writes ``/results/<job>/job.json``, which
                   ``make fleet-report`` reads beside the report.

Nothing here schedules: the cluster does, with Huawei's Ascend Device Plugin (MindCluster) and the Ascend
Docker Runtime. What the manifests follow, and where it was read (Ascend/mind-cluster on GitHub):
  * the resource name per chip: the device plugin reports ``huawei.com/`` + its run mode, which is Ascend310
    for 310 and 310B chips, Ascend310P for 310P and Ascend910 for every 910 (910A/B/...)
    (component/ascend-device-plugin/pkg/common/common.go GetDeviceRunMode, proto.go's resource names);
    requests equal limits, one chip per pod (Ascend/mindxdl-deploy samples/inference/infer.yaml, a Job
    without Volcano);
  * ASCEND_VISIBLE_DEVICES is NOT set in the pod: the device plugin's Allocate answer sets it (with
    ASCEND_RUNTIME_OPTIONS) for the Ascend Docker Runtime (common.go SetAscendRuntimeEnv); the samples set
    it themselves only for Volcano's whole-card scheduling (samples/inference/volcano/infer-deploy.yaml);
  * the runtime mounts the chip's /dev nodes and the driver (component/ascend-docker-runtime/build/scripts/
    base.list: /usr/local/Ascend/driver/lib64, driver/include, /usr/local/dcmi, /usr/local/bin/npu-smi), not
    the CANN toolkit: the toolkit is the host's, mounted read-only (hostPath, as our docker runner does;
    TOOLKIT= for images that carry CANN);
  * nodes with the chips may carry the taint ``huawei.com/Ascend310P:NoSchedule`` (the device plugin's
    DaemonSet tolerates it: component/ascend-device-plugin/build/ascendplugin-310P.yaml): pods that request
    a chip tolerate their chip's taint too.
Inside the container the one chip a pod gets is device 0 (``--device 0``).

The images are the tools' own (common/containers.py, ``make images PUSH=1 REGISTRY=...``); the container
sets ``args`` only, so the image's entrypoint (which sources CANN's set_env.sh) still runs.

Kubernetes: backoffLimitPerIndex and podFailurePolicy's FailIndex are on by default from 1.29 (beta; GA in
1.33). The tests validate every rendered file against the API schema of KUBERNETES_VERSION and of
MIN_KUBERNETES_VERSION (kubernetes-validate, strict).

    python -m common.fleet render --models "fcos pspnet" --chip 310P3 --batch "1 4" --shards 8 \\
        --registry registry.example.com/team --data-pvc coco --results-pvc results --out out/fleet
    python -m common.fleet record-job --out /results/<job> --job <job> --model fcos ...   (the merge Job runs it)
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from common.cann import soc_version
from common.errors import ToolError
from common.fsutil import run_main, write_json_atomic, write_text_atomic

#: the API schema the tests validate every rendered manifest against (JobBackoffLimitPerIndex is GA here)
KUBERNETES_VERSION = "1.33.0"
#: the oldest Kubernetes whose defaults run these manifests (backoffLimitPerIndex, FailIndex: beta, on)
MIN_KUBERNETES_VERSION = "1.29.0"
RESOURCE_PREFIX = "huawei.com/"
DATA_MOUNT = PurePosixPath("/data")
RESULTS_MOUNT = PurePosixPath("/results")
WEIGHTS_MOUNT = PurePosixPath("/weights")
DEFAULT_TOOLKIT = "/usr/local/Ascend/ascend-toolkit"
#: the images' user (docker/Dockerfile USER 1000:1000): the claims are made writable for its group
IMAGE_GID = 1000
TARGET = "ascend"
BACKENDS = ("ais_bench", "onnxruntime")
PREPARE_FILE, SHARDS_FILE, MERGE_FILE = "00-prepare.yaml", "01-shards.yaml", "02-merge.yaml"
#: the tools' exit status for a bad input or setup: retrying such a pod cannot help
USER_ERROR_EXIT = 2
#: ``shard-done``'s answer for a shard still to run (not 1, which a crashed interpreter gives)
SHARD_TO_RUN = 3
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def device_resource(chip: str) -> str:
    """The device plugin's extended resource for ``chip`` (any spelling): ``310P3`` -> ``huawei.com/Ascend310P``."""
    name = chip_name(chip)
    for prefix, family in (("310P", "Ascend310P"), ("310", "Ascend310"), ("910", "Ascend910")):
        if name.startswith(prefix):
            return RESOURCE_PREFIX + family
    raise ToolError(f"no Ascend Device Plugin resource is known for CHIP '{chip}' (known: 310*, 310P*, 910*)")


def chip_name(chip: str) -> str:
    """``ascend310p3`` -> ``310P3``: the Name column of ``npu-smi info``, as job.json and the Job labels carry it."""
    return soc_version(chip)[len("Ascend"):]


def check_dns_label(value: str, what: str, *, limit: int = 63) -> str:
    """A Kubernetes object name part: lowercase letters, digits and '-', at most ``limit`` characters."""
    if not _DNS_LABEL.match(value) or len(value) > limit:
        raise ToolError(f"{what} '{value}' is not a valid Kubernetes name (lowercase letters, digits and '-', "
                        f"starting and ending with a letter or digit, at most {limit} characters)")
    return value


def _check_claim(value: str, var: str) -> str:
    if not value:
        raise ToolError(f"{var} is empty: give {var}=<PersistentVolumeClaim name> (README, Kubernetes fleet)")
    if not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
        raise ToolError(f"{var}='{value}' is not a PersistentVolumeClaim name (lowercase letters, digits, '-', '.')")
    return value


def _words(value: str | list[str], var: str) -> list[str]:
    """``"fcos pspnet"`` / ``"1,4"`` (as make passes them) or a list -> words; empty is refused."""
    text = value if isinstance(value, str) else " ".join(value)
    words = text.replace(",", " ").split()
    if not words:
        raise ToolError(f"{var} is empty: give {var}=<value> (README, Kubernetes fleet)")
    return words


def _positive(value: str | int, var: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ToolError(f"{var}={value!r} is not a whole number >= {minimum}")
    return number


@dataclass(frozen=True)
class FleetSettings:
    """What every Job of one ``make fleet`` shares: the cluster side (registry, claims, namespace)."""

    registry: str
    data_pvc: str
    results_pvc: str
    shards: int
    parallelism: int | None = None  # default: every index at once
    retries: int = 3  # per index (backoffLimitPerIndex); the prepare and merge Jobs' backoffLimit
    namespace: str = "default"
    backend: str = "ais_bench"
    weights_pvc: str | None = None
    data_dir: str = ""  # the dataset root inside the data claim ("" = its root)
    toolkit: str = DEFAULT_TOOLKIT  # the host's CANN toolkit, mounted read-only ("" = the image has one)
    no_verify: bool = False

    def checked(self) -> FleetSettings:
        """These settings, or a one-line error naming the variable to fix."""
        from common.containers import ContainerError, check_registry

        try:
            check_registry(self.registry)
        except ContainerError as err:
            raise ToolError(str(err)) from None
        _check_claim(self.data_pvc, "DATA_PVC")
        _check_claim(self.results_pvc, "RESULTS_PVC")
        if self.weights_pvc:
            _check_claim(self.weights_pvc, "WEIGHTS_PVC")
        check_dns_label(self.namespace, "NAMESPACE")
        if self.backend not in BACKENDS:
            raise ToolError(f"unknown BACKEND '{self.backend}' for the fleet (valid: {', '.join(BACKENDS)})")
        if self.parallelism is not None and not 1 <= self.parallelism <= self.shards:
            raise ToolError(f"PARALLELISM={self.parallelism} must be between 1 and SHARDS={self.shards}")
        parts = PurePosixPath(self.data_dir).parts
        if self.data_dir.startswith("/") or ".." in parts:
            raise ToolError(f"DATA_DIR='{self.data_dir}' must be a path inside the data claim (relative, no '..')")
        if self.toolkit and not self.toolkit.startswith("/"):
            raise ToolError(f"TOOLKIT='{self.toolkit}' must be the toolkit's absolute path on the hosts, or empty")
        return self


@dataclass(frozen=True)
class FleetJob:
    """One model x chip x batch: its names, paths inside the pods, and its three manifests."""

    model: str
    chip: str  # the npu-smi spelling, e.g. 310P3
    batch: int
    settings: FleetSettings

    @property
    def name(self) -> str:
        return f"{self.model.replace('_', '-')}-{self.chip.lower()}-bs{self.batch}"

    @property
    def image(self) -> str:
        from common.containers import image_name

        return f"{self.settings.registry}/{image_name(self.model)}"

    @property
    def job_dir(self) -> PurePosixPath:
        return RESULTS_MOUNT / self.name

    @property
    def model_dir(self) -> PurePosixPath:
        return self.job_dir / "model"

    @property
    def onnx(self) -> PurePosixPath:
        return self.model_dir / f"{self.model}_{TARGET}_bs{self.batch}.onnx"

    @property
    def om(self) -> PurePosixPath:
        from common.atc import om_stem
        from common.spec import load_spec

        return self.model_dir / f"{om_stem(load_spec(self.model), TARGET, self.batch, self.chip)}.om"

    @property
    def model_file(self) -> PurePosixPath:
        return self.om if self.settings.backend == "ais_bench" else self.onnx

    @property
    def data_root(self) -> PurePosixPath:
        return DATA_MOUNT / self.settings.data_dir if self.settings.data_dir else DATA_MOUNT

    @property
    def uses_npu(self) -> bool:
        return self.settings.backend == "ais_bench"

    def check_names(self) -> None:
        """Every object and pod hostname this job makes is a valid DNS-1123 label (<= 63 characters)."""
        longest = max(len("-prepare"), len("-merge"), len(f"-{self.settings.shards - 1}"))
        check_dns_label(self.name, "Job name", limit=63 - longest)

    # the three manifests -------------------------------------------------------------------------------

    def prepare_job(self) -> dict:
        """Export (weights verified against model.toml's checksum) and, for ais_bench, ATC for the chip."""
        s = self.settings
        export = ["python", "-m", f"tools.{self.model}", "export", "--out", str(self.model_dir),
                  "--batch", str(self.batch), "--target", TARGET]
        if s.weights_pvc:
            from common.spec import load_spec

            export += ["--weights", str(WEIGHTS_MOUNT / load_spec(self.model).weights.filename)]
        if s.no_verify:
            export.append("--no-verify")
        lines = ["set -e", _unless_exists(self.onnx, export)]
        if self.uses_npu:
            lines.append(_unless_exists(self.om, [
                "python", "-m", "common.atc", "--model", self.model, "--onnx", str(self.onnx),
                "--out", str(self.model_dir), "--chip", self.chip, "--batch", str(self.batch), "--target", TARGET]))
        mounts = [_results_mount(s)]
        if s.weights_pvc:
            mounts.append(_claim_mount("weights", s.weights_pvc, WEIGHTS_MOUNT, read_only=True))
        container = self._container("prepare", ["sh", "-c", "\n".join(lines) + "\n"], mounts, npu=self.uses_npu)
        spec = {"backoffLimit": s.retries, "podFailurePolicy": _failure_policy("FailJob"),
                "template": self._pod("prepare", container, mounts, npu=self.uses_npu)}
        return self._job(f"{self.name}-prepare", "prepare", spec)

    def shards_job(self) -> dict:
        """The Indexed Job: one pod per shard, each retried on its own; a user error fails only its index."""
        s = self.settings
        out = str(self.job_dir / "shards" / "$(JOB_COMPLETION_INDEX)")
        stream = ["python", "-m", f"tools.{self.model}", "stream", "--model", str(self.model_file),
                  "--data", str(self.data_root), "--out", out, "--backend", s.backend, "--batch", str(self.batch),
                  "--device", "0", "--target", TARGET, "--shard", f"auto/{s.shards}"]
        # a shard already finished (the Job applied again to rerun its failed indexes, or a pod lost after its
        # shard.json was written) is kept instead of refused; any other shard runs, resuming what it holds
        done = ["python", "-m", "common.fleet", "shard-done", "--out", out, "--shard", f"auto/{s.shards}"]
        script = f"{shlex.join(done)} || exec {shlex.join(stream)}\n"
        mounts = [_data_mount(s), _results_mount(s)]
        container = self._container("shard", ["sh", "-c", script], mounts, npu=self.uses_npu)
        # the Job controller adds this variable too; declared here so that $(JOB_COMPLETION_INDEX) in the
        # args is expanded from the pod's own spec (Kubernetes expands only variables the container declares)
        container["env"] = [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
        spec = {"completionMode": "Indexed", "completions": s.shards,
                "parallelism": s.parallelism or s.shards,
                "backoffLimitPerIndex": s.retries,
                # a failed index never stops the others: their finished shards stay for the rerun
                "maxFailedIndexes": s.shards,
                "podFailurePolicy": _failure_policy("FailIndex"),
                "template": self._pod("shards", container, mounts, npu=self.uses_npu)}
        return self._job(self.name, "shards", spec)

    def merge_job(self) -> dict:
        """Merge the shards and evaluate once, then record which Job made the report (job.json)."""
        s = self.settings
        merge = ["python", "-m", f"tools.{self.model}", "merge", "--shards", str(self.job_dir / "shards"),
                 "--count", str(s.shards), "--data", str(self.data_root), "--out", str(self.job_dir), "--force",
                 "--backend", s.backend, "--batch", str(self.batch), "--model", str(self.model_file)]
        record = ["python", "-m", "common.fleet", "record-job", "--out", str(self.job_dir), "--job", self.name,
                  "--model", self.model, "--chip", self.chip, "--batch", str(self.batch), "--shards", str(s.shards),
                  "--backend", s.backend, "--image", self.image, "--namespace", s.namespace]
        script = "\n".join(["set -e", shlex.join(merge), shlex.join(record)]) + "\n"
        mounts = [_data_mount(s), _results_mount(s)]
        container = self._container("merge", ["sh", "-c", script], mounts, npu=False)
        spec = {"backoffLimit": s.retries, "podFailurePolicy": _failure_policy("FailJob"),
                "template": self._pod("merge", container, mounts, npu=False)}
        return self._job(f"{self.name}-merge", "merge", spec)

    def manifests(self) -> dict[str, dict]:
        return {PREPARE_FILE: self.prepare_job(), SHARDS_FILE: self.shards_job(), MERGE_FILE: self.merge_job()}

    # building blocks ---------------------------------------------------------------------------------

    def _labels(self, component: str) -> dict:
        return {"app.kubernetes.io/part-of": "ascend-vision-tools", "app.kubernetes.io/component": component,
                "ascend-vision/job": self.name, "ascend-vision/model": self.model.replace("_", "-"),
                "ascend-vision/chip": self.chip, "ascend-vision/batch": str(self.batch)}

    def _job(self, name: str, component: str, spec: dict) -> dict:
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": self.settings.namespace, "labels": self._labels(component)},
                "spec": spec}

    def _container(self, name: str, args: list[str], mounts: list[tuple[dict, dict]], *, npu: bool) -> dict:
        container = {"name": name, "image": self.image, "imagePullPolicy": "IfNotPresent", "args": args,
                     "volumeMounts": [m for m, _ in mounts]}
        if npu:
            one_chip = {device_resource(self.chip): "1"}
            container["resources"] = {"requests": dict(one_chip), "limits": dict(one_chip)}
            if self.settings.toolkit:
                container["volumeMounts"].append({"name": "ascend-toolkit", "mountPath": self.settings.toolkit,
                                                  "readOnly": True})
        return container

    def _pod(self, component: str, container: dict, mounts: list[tuple[dict, dict]], *, npu: bool) -> dict:
        volumes = [v for _, v in mounts]
        if npu and self.settings.toolkit:
            volumes.append({"name": "ascend-toolkit", "hostPath": {"path": self.settings.toolkit, "type": "Directory"}})
        spec = {"restartPolicy": "Never",
                "securityContext": {"fsGroup": IMAGE_GID, "fsGroupChangePolicy": "OnRootMismatch"},
                "containers": [container], "volumes": volumes}
        if npu:
            spec["tolerations"] = [{"key": device_resource(self.chip), "operator": "Exists", "effect": "NoSchedule"}]
        return {"metadata": {"labels": self._labels(component)}, "spec": spec}


def _claim_mount(name: str, claim: str, path: PurePosixPath, *, read_only: bool) -> tuple[dict, dict]:
    mount = {"name": name, "mountPath": str(path)}
    source = {"claimName": claim}
    if read_only:
        mount["readOnly"] = source["readOnly"] = True
    return mount, {"name": name, "persistentVolumeClaim": source}


def _data_mount(settings: FleetSettings) -> tuple[dict, dict]:
    return _claim_mount("data", settings.data_pvc, DATA_MOUNT, read_only=True)


def _results_mount(settings: FleetSettings) -> tuple[dict, dict]:
    return _claim_mount("results", settings.results_pvc, RESULTS_MOUNT, read_only=False)


def _failure_policy(on_user_error: str) -> dict:
    """Exit status 2 is a tool's one-line error (bad data, missing model file): fail at once, no retry.
    A pod evicted by a drain or preemption (DisruptionTarget) is retried without counting."""
    return {"rules": [
        {"action": on_user_error, "onExitCodes": {"operator": "In", "values": [USER_ERROR_EXIT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def _unless_exists(path: PurePosixPath, argv: list[str]) -> str:
    """A step of the prepare script that is skipped when its (atomically written) output exists."""
    quoted = shlex.quote(str(path))
    return f"if [ -e {quoted} ]; then echo \"keeping {path}\"; else {shlex.join(argv)}; fi"


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the pods' shell scripts stay readable in the files)."""


def _str_presenter(dumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def plan(models: str | list[str], chips: str | list[str], batches: str | list[str],
         settings: FleetSettings) -> tuple[list[FleetJob], list[str]]:
    """The jobs of model x chip x batch, and a note for each batch a model does not support (no job)."""
    from common.spec import MODELS, load_spec

    settings = settings.checked()
    chip_list = [chip_name(c) for c in _words(chips, "CHIP")]
    for chip in chip_list:
        device_resource(chip)
    batch_list = [_positive(b, "BATCH") for b in _words(batches, "BATCH")]
    jobs, skipped = [], []
    for model in _words(models, "MODELS"):
        if model not in MODELS:
            raise ToolError(f"unknown model '{model}' in MODELS (valid: {', '.join(MODELS)})")
        spec = load_spec(model)
        if spec.status != "ready":
            raise ToolError(f"the {model} tool is planned, it has no image to run (README, Roadmap)")
        _check_weights(spec, settings)
        valid = [b for b in batch_list if b in spec.input.batch_sizes]
        skipped += [f"{model} bs{b}" for b in batch_list if b not in valid]
        if not valid:
            spec.check_batch(batch_list[0])  # the one-line error naming the valid sizes
        jobs += [FleetJob(model, chip, b, settings) for chip in chip_list for b in valid]
    for job in jobs:
        job.check_names()
    return jobs, skipped


def _check_weights(spec, settings: FleetSettings) -> None:
    """The prepare pod must be able to get and verify the weights; say so now, not in a failed pod."""
    w = spec.weights
    if w.manual_download and not settings.weights_pvc:
        raise ToolError(f"{spec.name}'s weights must be downloaded by hand ({w.url}): put {w.filename} on a "
                        "claim and give WEIGHTS_PVC=<claim>")
    if not (w.sha256 or w.sha256_prefix or w.md5) and not settings.no_verify:
        raise ToolError(f"no checksum is published for {spec.name}'s {w.filename}: give NO_VERIFY=1 "
                        "(its sha256 is still recorded in the report)")


def render(jobs: list[FleetJob], out: Path, *, force: bool = False) -> list[Path]:
    """Write each job's folder of numbered manifests; an existing folder is kept unless ``force``."""
    existing = [out / j.name for j in jobs if (out / j.name).exists()]
    if existing and not force:
        raise ToolError(f"{existing[0]} already exists: pass --force (FORCE=1) to render it again")
    folders = []
    for job in jobs:
        folder = out / job.name
        for file_name, doc in job.manifests().items():
            write_text_atomic(folder / file_name, to_yaml(doc))
        folders.append(folder)
    return folders


def apply_steps(job: FleetJob, folder: Path) -> list[str]:
    """The kubectl commands that run one job folder, in order (printed by ``render``, shown in the README)."""
    ns = f"-n {job.settings.namespace}"
    return [f"kubectl apply -f {folder / PREPARE_FILE}",
            f"kubectl wait {ns} --for=condition=complete --timeout=2h job/{job.name}-prepare",
            f"kubectl apply -f {folder / SHARDS_FILE}",
            f"kubectl wait {ns} --for=condition=complete --timeout=24h job/{job.name}",
            f"kubectl apply -f {folder / MERGE_FILE}",
            f"kubectl wait {ns} --for=condition=complete --timeout=2h job/{job.name}-merge"]


def record_job(out: Path, *, job: str, model: str, chip: str, batch: int, shards: int, backend: str, image: str,
               namespace: str) -> Path:
    """``<out>/job.json``: which Job, model, chip, batch and image made the report beside it (make fleet-report)."""
    if not out.is_dir():
        raise ToolError(f"{out} is not a folder: run the merge first (it writes the report there)")
    record = {"job": job, "model": model, "chip": chip_name(chip), "batch": _positive(batch, "--batch"),
              "shards": _positive(shards, "--shards"), "backend": backend, "image": image, "namespace": namespace}
    path = out / "job.json"
    write_json_atomic(path, record)
    return path


def finished_shard(out: Path, shard: str) -> str | None:
    """A line saying that ``out`` holds shard ``shard`` (``auto/N``: this pod's) finished, else None."""
    from common.shardmerge import parse_shard, read_shard_record

    part = parse_shard(shard)
    record = read_shard_record(out)
    if record and record.get("complete") is True and (record.get("index"), record.get("count")) == (
            part.index, part.count):
        return f"keeping finished shard {part} in {out} (delete that folder to run it again)"
    return None


def _shard_done_cli(args: argparse.Namespace) -> int:
    """Exit 0 (and say so) when the shard is finished, 3 when it is to run, 2 on a bad --shard or record."""
    try:
        line = finished_shard(Path(args.out), args.shard)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if line is None:
        return SHARD_TO_RUN
    print(line)
    return 0


def _render_cli(args: argparse.Namespace) -> str:
    settings = FleetSettings(
        registry=args.registry, data_pvc=args.data_pvc, results_pvc=args.results_pvc,
        shards=_positive(args.shards, "SHARDS"),
        parallelism=_positive(args.parallelism, "PARALLELISM") if args.parallelism else None,
        retries=_positive(args.retries, "RETRIES", minimum=0), namespace=args.namespace, backend=args.backend,
        weights_pvc=args.weights_pvc or None, data_dir=args.data_dir, toolkit=args.toolkit,
        no_verify=args.no_verify)
    jobs, skipped = plan(args.models, args.chip, args.batch, settings)
    if skipped:
        print(f"note: no job for {', '.join(skipped)}: batch size not in the model's data file "
              "(batch_sizes in tools/<model>/model.toml)", file=sys.stderr)
    folders = render(jobs, Path(args.out), force=args.force)
    lines = []
    for job, folder in zip(jobs, folders):
        lines += [f"# {job.name}: {job.image}"] + apply_steps(job, folder)
    return "\n".join(lines + [f"{len(jobs)} job folder(s) under {args.out}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.fleet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    r = sub.add_parser("render", help="write the manifests of model x chip x batch under --out")
    r.add_argument("--models", default="", help='"fcos pspnet" (ready tools)')
    r.add_argument("--chip", default="", help='"310P3" or several: "310P3 910B"')
    r.add_argument("--batch", default="", help='"1 4"')
    r.add_argument("--shards", default="", help="indexes of each Indexed Job")
    r.add_argument("--parallelism", default="", help="pods at once per job (default: all shards)")
    r.add_argument("--retries", default="3", help="retries per index (backoffLimitPerIndex)")
    r.add_argument("--registry", default="", help="where `make images PUSH=1` pushed the images")
    r.add_argument("--data-pvc", default="", help="claim holding the dataset (mounted read-only)")
    r.add_argument("--data-dir", default="", help="the dataset root inside that claim (default: its root)")
    r.add_argument("--results-pvc", default="", help="claim for models, shards and reports")
    r.add_argument("--weights-pvc", default="", help="claim holding the checkpoints (default: verified download)")
    r.add_argument("--namespace", default="default")
    r.add_argument("--backend", default="ais_bench", help="ais_bench (the .om on the chip) | onnxruntime")
    r.add_argument("--toolkit", default=DEFAULT_TOOLKIT, help="the hosts' CANN toolkit ('' if the image has one)")
    r.add_argument("--no-verify", action="store_true", help="weights without a published checksum")
    r.add_argument("--out", default="out/fleet")
    r.add_argument("--force", action="store_true")
    rec = sub.add_parser("record-job", help="write <out>/job.json (the merge Job runs it)")
    for flag in ("--out", "--job", "--model", "--chip", "--batch", "--shards", "--backend", "--image", "--namespace"):
        rec.add_argument(flag, required=True)
    done = sub.add_parser("shard-done", help="exit 0 when --out holds shard --shard finished (the shard pods ask)")
    done.add_argument("--out", required=True)
    done.add_argument("--shard", required=True, help="I/N or auto/N")
    args = parser.parse_args(argv)
    if args.action == "shard-done":
        return _shard_done_cli(args)
    if args.action == "render":
        return run_main(lambda: _render_cli(args), args.out)
    return run_main(lambda: record_job(Path(args.out), job=args.job, model=args.model, chip=args.chip,
                                       batch=args.batch, shards=args.shards, backend=args.backend, image=args.image,
                                       namespace=args.namespace), args.out)


if __name__ == "__main__":
    sys.exit(main())
