"""common.envs' unpack step (requirements-unpack.txt): sha256 checked, only the named package copied."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile

import pytest

from common import envs


def _sdist(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """`pip download` replaced by copying a prepared sdist into the download folder."""
    sdist = _sdist(tmp_path / "pkg-0.5.tar.gz", {
        "pkg-0.5/setup.py": b"raise SystemExit('never run')\n",
        "pkg-0.5/mypkg/__init__.py": b"VERSION = '0.5'\n",
        "pkg-0.5/mypkg/sub/mod.py": b"X = 1\n",
        "pkg-0.5/other/evil.py": b"import os\n",
        "pkg-0.5/mypkg/../../escape.py": b"import os\n",
    })

    def run(cmd, env=None, cwd=None):
        dest = cmd[cmd.index("-d") + 1]
        (envs.Path(dest) / sdist.name).write_bytes(sdist.read_bytes())

    monkeypatch.setattr(envs, "_run", run)
    return sdist


def _site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"print('{site}')\"\n")
    python.chmod(0o755)
    return python, site


def test_unpack_copies_only_the_package(fake_pip, tmp_path):
    python, site = _site(tmp_path)
    digest = hashlib.sha256(fake_pip.read_bytes()).hexdigest()
    spec = tmp_path / "requirements-unpack.txt"
    spec.write_text(f"# unpack: pkg==0.5 sha256={digest} package=mypkg\n")
    envs.unpack_sources(str(python), spec)
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*.py")) == ["mypkg/__init__.py",
                                                                                 "mypkg/sub/mod.py"]
    assert not (tmp_path / "escape.py").exists()
    out = subprocess.run([sys.executable, "-c", "import mypkg; print(mypkg.VERSION)"], cwd=site,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "0.5"


def test_unpack_refuses_another_file(fake_pip, tmp_path):
    python, site = _site(tmp_path)
    spec = tmp_path / "requirements-unpack.txt"
    spec.write_text(f"# unpack: pkg==0.5 sha256={'0' * 64} package=mypkg\n")
    with pytest.raises(envs.EnvError, match=r"checksum mismatch for pkg-0.5.tar.gz .*expected 0{64}, got [0-9a-f]{64}"):
        envs.unpack_sources(str(python), spec)
    assert not any(site.iterdir())
