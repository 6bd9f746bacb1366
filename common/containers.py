"""One image per tool: build it, prove it (its test suite inside it), run it on an Ascend host.

Stdlib only (runs under the host's python3, like common.envs). The engine is docker when a daemon
answers, else buildah (which builds the same Dockerfile without a daemon, `--isolation chroot`).

    python3 -m common.containers base-image             # local Python 3.9 base (mmdebstrap + import)
    python3 -m common.containers build efficientdet     # the tool's image, tagged with its pins hash
    python3 -m common.containers test efficientdet      # tests/efficientdet inside that image
    python3 -m common.containers images [--test]        # every ready tool: name:tag, size, build time
    python3 -m common.containers images --push REGISTRY # ... and push each as REGISTRY/name:tag (make images PUSH=1)
    python3 -m common.containers run efficientdet --device 0,1 --out out -- python -m tools.efficientdet ...
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import envs

REPO_ROOT = envs.REPO_ROOT
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
BASE_DOCKERFILE = REPO_ROOT / "docker" / "base.Dockerfile"
#: where the image's code lives (the Dockerfile's WORKDIR); the checkout's tests are mounted under it
IMAGE_ROOT = "/opt/ascend-vision"
#: the image's weights cache (ASCEND_VISION_CACHE=/cache in the Dockerfile)
IMAGE_WEIGHTS = "/cache/weights"
LOCAL_BASE = "localhost/ascend-vision/base:py3.9-bullseye"
#: Debian 11: its python3 is 3.9, the tools' Python (bookworm's is 3.11)
BASE_SUITE = "bullseye"
BASE_PACKAGES = ["ca-certificates", "python3", "python3-pip", "python3-venv", "python-is-python3", "libglib2.0-0"]
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: the NPU device nodes every Ascend container needs besides /dev/davinciN
NPU_CONTROL_DEVICES = ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
#: host driver files, read-only; the toolkit is the host's because it must match the driver
NPU_HOST_MOUNTS = ["/usr/local/dcmi", "/usr/local/bin/npu-smi", "/usr/local/Ascend/driver/lib64",
                   "/usr/local/Ascend/driver/version.info", "/etc/ascend_install.info",
                   "/usr/local/Ascend/ascend-toolkit"]
#: where a CA bundle for pip is found when CA_BUNDLE is not given (a TLS-intercepting proxy's CA is there)
CA_CANDIDATES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]


class ContainerError(Exception):
    pass


def engine() -> str:
    """docker when its daemon answers, else buildah; neither is a clear error."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise ContainerError("no container engine: start the Docker daemon, or install buildah "
                         "(apt-get install buildah), or use RUNNER=venv")


def image_name(tool: str, eng: str = "docker") -> str:
    """``ascend-vision/<tool>:<pins hash>``: new pins, new tag. buildah keeps local images under localhost/."""
    name = f"ascend-vision/{tool}:{envs.pins_hash(tool)}"
    return f"localhost/{name}" if eng == "buildah" else name


#: host[:port][/path] in lowercase, as image references spell a registry (no scheme, no tag)
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def check_registry(registry: str) -> str:
    """REGISTRY as an image reference's prefix (``registry.example.com:5000/team``), or a one-line error."""
    if not registry:
        raise ContainerError("REGISTRY is empty: give REGISTRY=<host[:port]/path> (the registry your cluster "
                             "pulls from, e.g. registry.example.com:5000/team)")
    if not _REGISTRY.match(registry):
        raise ContainerError(f"REGISTRY='{registry}' is not a registry reference: write host[:port][/path] in "
                             "lowercase, without https:// or a tag (e.g. registry.example.com:5000/team)")
    return registry


def push_commands(tool: str, eng: str, registry: str) -> list[list[str]]:
    """Tag the local ``name:tag`` as ``REGISTRY/name:tag`` and push it (docker), or push it there (buildah)."""
    remote = f"{check_registry(registry)}/{image_name(tool)}"
    if eng == "docker":
        return [["docker", "tag", image_name(tool, eng), remote], ["docker", "push", remote]]
    return [["buildah", "push", image_name(tool, eng), f"docker://{remote}"]]


def ready_tools() -> list[str]:
    """Tools whose model.toml says status = "ready" (the Makefile's READY_MODELS, same rule)."""
    return sorted(p.parent.name for p in (REPO_ROOT / "tools").glob("*/model.toml")
                  if re.search(r'^status\s*=\s*"ready"', p.read_text(), flags=re.M))


def image_pin_files(tool: str) -> list[Path]:
    """The pin files the Dockerfile copies into the builder stage (its COPY lines), resolved for ``tool``.

    Read from the Dockerfile itself, so a test can check they are exactly the files the venv is built from.
    """
    files: list[Path] = []
    for line in DOCKERFILE.read_text().split("FROM ")[1].splitlines():  # the builder stage
        m = re.match(r"COPY\s+(?!--)(.+)\s+\S+$", line)
        if not m:
            continue
        for src in m.group(1).split():
            files.extend(sorted(REPO_ROOT.glob(src.replace("${TOOL}", tool))))
    return [f for f in files if f.name.startswith("requirements")]


def ca_bundle(explicit: str | None) -> Path | None:
    """The CA bundle given to pip inside the build as a secret: CA_BUNDLE, else $PIP_CERT, else the system's."""
    if explicit is not None:
        if not explicit:
            return None  # CA_BUNDLE= (empty): pip's own bundle
        path = Path(explicit)
        if not path.is_file():
            raise ContainerError(f"CA bundle {path} not found: give CA_BUNDLE=<PEM file>, or CA_BUNDLE= for none")
        return path
    for cand in [os.environ.get("PIP_CERT", "")] + CA_CANDIDATES:
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def build_command(tool: str, eng: str, base_image: str | None, cert: Path | None,
                  pip_conf: Path | None = None) -> list[str]:
    """One Dockerfile for both engines; secrets are mounted for one RUN step, never stored in a layer."""
    head = ["docker", "build"] if eng == "docker" else ["buildah", "bud", "--isolation", "chroot", "--layers",
                                                             "--format", "docker"]  # keeps SHELL (OCI drops it)
    cmd = head + ["-f", str(DOCKERFILE), "--build-arg", f"TOOL={tool}", "-t", image_name(tool, eng)]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if cert:
        cmd += ["--secret", f"id=pip_cert,src={cert}"]
    if pip_conf:
        cmd += ["--secret", f"id=pip_conf,src={pip_conf}"]
    return cmd + [str(REPO_ROOT)]


def _devices(device: str) -> list[str]:
    ids = [d.strip() for d in str(device).split(",")]
    if not ids or not all(d.isdigit() for d in ids):
        raise ContainerError(f"DEVICE={device!r} is not an NPU id list: use e.g. DEVICE=0 or DEVICE=0,1")
    return [f"/dev/davinci{d}" for d in ids]


def run_command(tool: str, argv: list[str], *, device: str = "0", out: str | None = None,
                data: str | None = None, weights: str | None = None, npu: bool = True,
                uid: int | None = None, gid: int | None = None, cwd: str | None = None,
                cache: Path | None = None) -> list[str]:
    """The ``docker run`` command for ``argv`` in ``tool``'s image on an Ascend host.

    Paths are mounted at the same absolute path and the working directory is the caller's, so relative
    OUT/DATA/WEIGHTS mean what they mean on the host; the code is the image's (PYTHONPATH), not the checkout.
    """
    cwd = cwd or os.getcwd()
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    cmd = ["docker", "run", "--rm", "--user", f"{uid}:{gid}"]
    if npu:
        cmd += [f"--device={d}" for d in _devices(device) + NPU_CONTROL_DEVICES]
        cmd += [f"--volume={m}:{m}:ro" for m in NPU_HOST_MOUNTS]
    if out:
        o = os.path.join(cwd, out)
        cmd.append(f"--volume={o}:{o}")
    if data:
        d = os.path.join(cwd, data)
        cmd.append(f"--volume={d}:{d}:ro")
    if weights:
        w = os.path.dirname(os.path.join(cwd, weights))
        cmd.append(f"--volume={w}:{w}:ro")
    weights_cache = (cache or envs.cache_root()) / "weights"
    cmd += [f"--volume={weights_cache}:{IMAGE_WEIGHTS}", f"--workdir={cwd}", image_name(tool)]
    return cmd + list(argv)


def npu_present() -> bool:
    return Path(NPU_CONTROL_DEVICES[0]).exists()


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # --secret and RUN --mount need BuildKit
    proc = subprocess.run(cmd, env=env)
    if check and proc.returncode != 0:
        raise ContainerError(f"command failed with exit code {proc.returncode}: {shlex.join(cmd[:4])} ...")
    return proc


def image_id(ref: str, eng: str) -> str | None:
    query = {"docker": ["docker", "image", "inspect", "--format", "{{.Id}}"],
             "buildah": ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}"]}[eng]
    proc = subprocess.run(query + [ref], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def image_size(ref: str, eng: str) -> str:
    """The image's size as the engine reports it (docker: bytes, shown in GB/MB; buildah: its own text)."""
    if eng == "docker":
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", ref],
                             capture_output=True, text=True, check=True).stdout
        n = int(out.strip())
        return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
    return subprocess.run(["buildah", "images", "--format", "{{.Size}}", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def build(tool: str, base_image: str | None, cert: Path | None,
          pip_conf: Path | None = None) -> tuple[str, float, bool]:
    """Build ``tool``'s image; returns (name, seconds, cached): cached when every layer came from the cache."""
    if tool not in ready_tools():
        raise ContainerError(f"no image for '{tool}': it is not a ready tool (ready: {', '.join(ready_tools())})")
    eng = engine()
    ref = image_name(tool, eng)
    before = image_id(ref, eng)
    if base_image is None and image_id(LOCAL_BASE, eng):
        print(f"FROM {LOCAL_BASE} (made by `make base-image`; BASE_IMAGE= for the public python:3.9 image)",
              file=sys.stderr)
        base_image = LOCAL_BASE
    start = time.monotonic()
    _run(build_command(tool, eng, base_image, cert, pip_conf))
    return ref, time.monotonic() - start, before is not None and before == image_id(ref, eng)


def test_command(tool: str, eng: str, container: str | None = None) -> list[str]:
    """pytest on tests/<tool> inside the image, as the image's non-root user, the checkout's tests mounted read-only."""
    tests = REPO_ROOT / "tests"
    # the fast tier, as `make test` runs it (the slow tier's full-size exports: `make test-slow`, in the venvs)
    pytest = ["python", "-m", "pytest", f"tests/{tool}", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    mount = f"{tests}:{IMAGE_ROOT}/tests:ro"
    if eng == "docker":
        return ["docker", "run", "--rm", "--volume", mount, image_name(tool, eng), *pytest]
    return ["buildah", "run", "--isolation", "chroot", "--volume", mount, "--workingdir", IMAGE_ROOT,
            container or "CONTAINER", "--", *pytest]


def test(tool: str) -> None:
    """The tool's test suite inside its image: the image is proven, not assumed."""
    eng = engine()
    ref = image_name(tool, eng)
    if not image_id(ref, eng):
        raise ContainerError(f"image {ref} not found: build it first with `make {tool}-image`")
    if eng == "docker":
        _run(test_command(tool, eng))
        return
    # buildah runs commands in a working container made from the image (podman run fails without cgroups v2)
    container = subprocess.run(["buildah", "from", "--pull-never", ref], capture_output=True, text=True,
                               check=True).stdout.strip()
    try:
        _run(test_command(tool, eng, container))
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)


def base_image(force: bool = False) -> str:
    """``localhost/ascend-vision/base:py3.9-bullseye`` from Debian's packages, for hosts with no registry."""
    eng = engine()
    if image_id(LOCAL_BASE, eng) and not force:
        print(f"{LOCAL_BASE}: exists (FORCE=1 rebuilds it)", file=sys.stderr)
        return LOCAL_BASE
    if not shutil.which("mmdebstrap"):
        raise ContainerError("mmdebstrap not found: apt-get install mmdebstrap (or use a public BASE_IMAGE)")
    with tempfile.TemporaryDirectory(prefix="ascend-vision-base-") as tmp:
        shutil.copy(BASE_DOCKERFILE, Path(tmp) / "Dockerfile")
        _run(["mmdebstrap", "--variant=apt", "--include=" + ",".join(BASE_PACKAGES), BASE_SUITE,
              str(Path(tmp) / "rootfs.tar"), DEBIAN_MIRROR])
        head = ["docker", "build"] if eng == "docker" else ["buildah", "bud", "--isolation", "chroot"]
        _run(head + ["-t", LOCAL_BASE, tmp])
    return LOCAL_BASE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m common.containers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("build", "test"):
        p = sub.add_parser(name)
        p.add_argument("tool")
    imgs = sub.add_parser("images", help="build every ready tool's image; one line each: name:tag, size, time")
    imgs.add_argument("--test", action="store_true", help="also run each tool's tests inside its image")
    imgs.add_argument("--push", metavar="REGISTRY", default=None,
                      help="then push each image as REGISTRY/name:tag (make images PUSH=1 REGISTRY=...)")
    for p in (sub.choices["build"], imgs):
        p.add_argument("--base-image", default=None, help="FROM image (default: the Dockerfile's, a public one)")
        p.add_argument("--ca-bundle", default=None, help="CA bundle for pip in the build (default: the system's)")
        p.add_argument("--pip-conf", default=None, help="pip.conf for the build (a secret)")
    sub.add_parser("base-image").add_argument("--force", action="store_true")
    run = sub.add_parser("run", help="docker run a command in the tool's image (prints the command first)")
    run.add_argument("tool")
    run.add_argument("--device", default="0")
    for flag in ("--out", "--data", "--weights"):
        run.add_argument(flag, default="")
    run.add_argument("--npu", choices=["auto", "yes", "no"], default="auto")
    run.add_argument("--print-only", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []  # run: the command after --
    args = parser.parse_args(argv[:len(argv) - len(command) - (1 if command else 0)])
    args.command = command
    try:
        return _dispatch(args)
    except (ContainerError, envs.EnvError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "base-image":
        print(base_image(args.force))
    elif args.action == "test":
        test(args.tool)
    elif args.action == "run":
        if not args.command:
            raise ContainerError("no command to run: put it after --, e.g. -- python -m tools.fcos --help")
        npu = {"yes": True, "no": False}.get(args.npu, npu_present())
        for folder in (args.out, envs.cache_root() / "weights"):  # the user's, not made by the daemon as root
            if folder:
                os.makedirs(folder, exist_ok=True)
        cmd = run_command(args.tool, args.command, device=args.device, out=args.out or None, data=args.data or None,
                          weights=args.weights or None, npu=npu)
        print(shlex.join(cmd), file=sys.stdout if args.print_only else sys.stderr, flush=True)
        if not args.print_only:
            os.execvp(cmd[0], cmd)
    else:
        if getattr(args, "push", None) is not None:
            check_registry(args.push)  # before any build: a bad REGISTRY is known now
        tools = [args.tool] if args.action == "build" else ready_tools()
        cert = ca_bundle(args.ca_bundle)
        conf = Path(args.pip_conf) if args.pip_conf else None
        for tool in tools:
            ref, secs, cached = build(tool, args.base_image, cert, conf)
            if getattr(args, "test", False):
                test(tool)
            took = "cached" if cached else f"built in {secs:.0f} s"
            print(f"{ref}  {image_size(ref, engine())}  {took}", flush=True)  # one line per image, as it is done
            if getattr(args, "push", None) is not None:
                for cmd in push_commands(tool, engine(), args.push):
                    _run(cmd)
                print(f"pushed {args.push}/{image_name(tool)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
