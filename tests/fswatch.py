"""Which files a command changes, anywhere on the filesystem: traced with strace, not guessed.

A snapshot of a few folders misses writes elsewhere (HOME, /tmp, the checkout) and, on a shared
machine, sees other processes' files; tracing the command's own file system calls (every process
and thread it starts) sees exactly its writes, wherever they go.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

#: syscall -> positions of (dirfd or None, path) argument pairs that it creates, changes or removes
_PATH_ARGS: dict[str, list[tuple[int | None, int]]] = {
    "open": [(None, 0)], "creat": [(None, 0)], "openat": [(0, 1)],
    "mkdir": [(None, 0)], "mkdirat": [(0, 1)], "rmdir": [(None, 0)],
    "unlink": [(None, 0)], "unlinkat": [(0, 1)], "truncate": [(None, 0)],
    "chmod": [(None, 0)], "fchmodat": [(0, 1)], "utimensat": [(0, 1)],
    "rename": [(None, 0), (None, 1)], "renameat": [(0, 1), (2, 3)], "renameat2": [(0, 1), (2, 3)],
    "link": [(None, 1)], "linkat": [(2, 3)], "symlink": [(None, 1)], "symlinkat": [(1, 2)],
}
_OPEN_FLAGS_ARG = {"open": 1, "openat": 2}
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD = re.compile(r"^(?:AT_FDCWD|\d+)(?:<(.*)>)?$")


def available() -> bool:
    return shutil.which("strace") is not None


def _fast_flags() -> list[str]:
    """``--seccomp-bpf`` (strace >= 5.3) stops only at the traced calls: several times faster."""
    probe = subprocess.run(["strace", "--seccomp-bpf", "-f", "-qq", "-e", "trace=open", "true"],
                           capture_output=True)
    return ["--seccomp-bpf"] if probe.returncode == 0 else []


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of one strace line (quotes, braces and <paths> kept whole)."""
    args, depth, quoted, current, i = [], 0, False, [], 0
    while i < len(text):
        c = text[i]
        if quoted:
            current.append(c)
            if c == "\\":
                current.append(text[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
            current.append(c)
        elif c in "{[<":
            depth += 1
            current.append(c)
        elif c in "}]>":
            depth -= 1
            current.append(c)
        elif c == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(c)
        i += 1
    args.append("".join(current).strip())
    return args


def _unquote(arg: str) -> str | None:
    if not (arg.startswith('"') and arg.rstrip(".").endswith('"')):
        return None  # NULL
    body = arg.rstrip(".")[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode(
        "utf-8", "replace")


def _resolve(dirfd: str | None, path: str | None, cwd: Path) -> Path | None:
    base = cwd
    if dirfd is not None:
        m = _FD.match(dirfd)
        if m and m.group(1):
            base = Path(m.group(1))
    if path is None or path == "":
        return base if dirfd is not None else None
    return Path(os.path.normpath(base / path))


def changed_paths(trace_lines: list[str], cwd: Path) -> set[Path]:
    """Paths that successful calls in an ``strace -y`` log created, wrote, renamed or removed."""
    found: set[Path] = set()
    for line in trace_lines:
        m = _CALL.match(line)
        if not m or m.group(1) not in _PATH_ARGS or int(m.group(3)) < 0:
            continue
        name, args = m.group(1), _split_args(m.group(2))
        flag_pos = _OPEN_FLAGS_ARG.get(name)
        if flag_pos is not None and not any(f in args[flag_pos] for f in _WRITE_FLAGS):
            continue  # opened for reading
        for fd_pos, path_pos in _PATH_ARGS[name]:
            path = _resolve(args[fd_pos] if fd_pos is not None else None, _unquote(args[path_pos]), cwd)
            if path is not None:
                found.add(path)
    return found


def run_traced(cmd: list[str], trace_dir: Path, **kwargs) -> tuple[subprocess.CompletedProcess, set[Path]]:
    """Run ``cmd`` under strace (all its processes and threads); return its result and changed paths."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    prefix = trace_dir / "trace"
    calls = ",".join(_PATH_ARGS)
    proc = subprocess.run(["strace", *_fast_flags(), "-f", "-ff", "-qq", "-y", "-s", "4096", "-e", f"trace={calls}",
                           "-o", str(prefix), *cmd], **kwargs)
    lines = [line for f in sorted(trace_dir.glob("trace.*")) for line in f.read_text(errors="replace").splitlines()]
    for f in trace_dir.glob("trace.*"):
        f.unlink()
    return proc, changed_paths(lines, Path(kwargs.get("cwd") or os.getcwd()))
