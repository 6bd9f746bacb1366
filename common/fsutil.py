"""Atomic writes, file modes, OS-error messages and output-directory guards.

Long steps write every file to a temporary name in the same directory and rename it into
place, so an interrupted run never leaves a half-written file under its final name. Temporary
files are created 0600 (mkstemp), so each one gets the user's umask before its rename: outputs
must stay readable to the other users (and containers) the umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from common.errors import ToolError

#: what to do about the OS errors a user can meet while the tools write their outputs
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that filesystem (or choose another OUT) and rerun",
    errno.EDQUOT: "free space within your disk quota (or choose another OUT) and rerun",
    errno.EFBIG: "the file is too large for that filesystem: choose another OUT",
    errno.EROFS: "choose a writable OUT (or remount that filesystem read-write)",
    errno.EACCES: "you lack permission there: fix its permissions or choose another OUT",
    errno.EPERM: "you lack permission there: fix its permissions or choose another OUT",
    errno.ENOENT: "a folder on that path does not exist: check the path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder: remove it or choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter OUT",
    errno.EMFILE: "too many open files: raise `ulimit -n` and rerun",
}
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@functools.lru_cache(maxsize=1)
def process_umask() -> int:
    """The umask of this process, read once without changing it.

    ``os.umask`` can only be read by setting it, which races with writer threads; Linux shows it
    in /proc/self/status, so that is tried first.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by mkstemp/mkdtemp the mode a plain create gets."""
    os.chmod(path, (0o777 if directory else 0o666) & ~process_umask())


def make_temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = ".part") -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with the user's umask instead of 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    apply_umask(path, directory=True)
    return path


#: how numpy's ``tofile`` reports a write the filesystem cut short (it keeps no errno)
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def os_error_message(err: OSError, path: str | os.PathLike | None = None, *,
                     temp: Path | None = None) -> str:
    """One line for an OS error: ``cannot write <path>: <reason>: <fix>``.

    ``path`` stands in when the error names no file, or names ``temp`` (a temporary file's name
    would mean nothing to the user). numpy's ``tofile`` reports a full disk only as a short write
    without an errno: a regular file is cut short when its filesystem is full.
    """
    named = Path(err.filename) if err.filename else None
    if named is not None and temp is not None and named == temp:
        named = None
    where = named or (Path(path) if path is not None else None)
    code = err.errno
    reason = err.strerror or str(err)
    if code is None and _SHORT_WRITE.match(str(err)):
        code = errno.ENOSPC
        reason = f"{os.strerror(code)} ({err})"
    fix = _OS_ERROR_FIXES.get(code, "check the path and rerun")
    verb = "cannot write" if code in _WRITE_ERRNOS else "cannot access"
    return f"{verb} {where if where is not None else 'a file'}: {reason}: {fix}"


def run_main(step: Callable[[], object], path: str | os.PathLike | None = None) -> int:
    """A plain (argparse) entry point's body: what ``step`` returns is printed; a ToolError or an OS
    error (read-only or full ``path``) is one ``error:`` line (+ the error's detail), exit status 2."""
    try:
        print(step())
    except OSError as err:
        print(f"error: {os_error_message(err, path)}", file=sys.stderr)
        return 2
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        if err.detail:
            print(err.detail, file=sys.stderr)
        return 2
    return 0


def temp_path(final: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_path` writes ``final`` under: hidden, beside it, ending in ``.part``
    (what the steps' resume clean-up removes), unique to the calling thread (the kernel's thread id: no
    two live threads share one, in any process)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{threading.get_native_id()}.part")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to create; rename it onto ``path`` on success.

    On any failure the temporary file is removed, and an OS error (full disk, read-only
    filesystem, permissions) becomes a one-line ToolError naming the path. The name is made, not
    reserved (no mkstemp): the data step writes one file per image, and mkstemp plus the chmod its 0600
    mode needs cost 0.3-0.7 ms of an image's 10; the caller's plain create gets the user's umask. A
    temporary left by a killed run whose thread id comes back is overwritten.
    """
    final = Path(path)
    tmp_path = temp_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolError(os_error_message(err, final)) from err
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise ToolError(os_error_message(err, final, temp=tmp_path)) from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def ensure_fresh_output(path: str | os.PathLike, *, force: bool, what: str = "output") -> Path:
    """Refuse to reuse a non-empty output file or directory unless ``force`` is set."""
    out = Path(path)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
        raise ToolError(f"{what} {out} already exists: pass --force to overwrite it, or choose another OUT")
    return out


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> object:
    """Read JSON, turning a missing or malformed file into a one-line ToolError."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolError(f"{what} {p} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ToolError(f"{what} {p} is not valid JSON ({err}): regenerate it") from None


# --- make clean ----------------------------------------------------------------------------------

#: the Makefile's step folders under OUT/<model>; INPUT=uint8 runs write theirs beside with a _uint8 suffix
STEP_DIRS = frozenset({"onnx", "om", "perf"} | {f"{step}{suffix}" for suffix in ("", "_uint8")
                                                for step in ("data", "infer", "eval", "stream", "shards", "merge")})
DEMO_ENTRIES = STEP_DIRS | {"random_checkpoint.pth", "mini_coco", "mini_voc"}
DEMO_DIR = "demo"
#: the results page (`make report`, common.resultspage): derived from the results, made by the tools too
REPORT_DIR = "report"
#: the Kubernetes manifests (`make fleet`, common.fleet): rendered from the data files, made by the tools too
FLEET_DIR = "fleet"


def model_names(repo: Path) -> frozenset[str]:
    """The tools' names: every ``tools/<name>/model.toml`` of the checkout."""
    return frozenset(p.parent.name for p in (repo / "tools").glob("*/model.toml"))


def tool_layout(models: frozenset[str]) -> dict:
    """Names the tools create under OUT: a dict for a folder to look into, True for anything kept as is."""
    steps = dict.fromkeys(STEP_DIRS, True)
    demo = dict.fromkeys(DEMO_ENTRIES, True)
    return {**{m: steps for m in models}, DEMO_DIR: {m: demo for m in models}, REPORT_DIR: True,
            FLEET_DIR: True}


def foreign_entries(folder: Path, layout: dict) -> list[Path]:
    """Entries under ``folder`` that ``layout`` does not name (a folder it names must be a real folder)."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        sub = layout.get(entry.name)
        if sub is None:
            found.append(entry)
        elif isinstance(sub, dict):
            found += foreign_entries(entry, sub) if entry.is_dir() and not entry.is_symlink() else [entry]
    return found


def _protected(out: Path, repo: Path) -> str | None:
    """Why ``out`` must never be removed wholesale (the root, home, the checkout or a folder above them)."""
    home = Path.home().resolve()
    for name, place in (("the filesystem root", Path("/")), ("your home folder", home), ("the repository", repo)):
        if out == place:
            return f"it is {name}"
        if out in place.parents:
            return f"it holds {name} ({place})"
    return None


def clean_output(out: str | os.PathLike, repo: str | os.PathLike) -> str:
    """Remove the output folder ``out`` only when everything in it was made by the tools."""
    given = Path(out)
    target = given.expanduser().resolve()
    why = _protected(target, Path(repo).resolve())
    if why:
        raise ToolError(f"refusing to remove OUT={given}: {why}; point OUT at the tools' output folder")
    if not target.exists():
        return f"nothing to clean: {given} does not exist"
    if not target.is_dir():
        raise ToolError(f"refusing to remove OUT={given}: it is a file, not the tools' output folder")
    foreign = foreign_entries(target, tool_layout(model_names(Path(repo))))
    if foreign:
        shown = ", ".join(str(p.relative_to(target)) for p in foreign[:5])
        raise ToolError(f"refusing to remove OUT={given}: it holds {len(foreign)} thing(s) the tools did not "
                        f"make ({shown}); delete it yourself if you mean it")
    try:
        shutil.rmtree(target)
    except OSError as err:
        raise ToolError(os_error_message(err, target)) from err
    return f"removed {given}"


def main(argv: list[str] | None = None) -> int:
    """``python3 -m common.fsutil clean OUT``: the Makefile's ``clean`` target (stdlib only)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "clean":
        print("usage: python3 -m common.fsutil clean OUT", file=sys.stderr)
        return 2
    try:
        print(clean_output(args[1], Path(__file__).resolve().parent.parent))
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator:
    """Hold an exclusive ``flock`` on ``path`` (created, opened "a+"; yielded) or refuse at once.

    Two runs writing into one folder would clean up each other's temporary files; with the lock
    the second one stops with a clear line. The kernel drops the lock when its holder dies
    (kill -9), so a stale lock file is simply taken over. A holder may unlink the file before
    leaving; a run that locked the unlinked file retries on the new one.
    """
    import fcntl

    lock = Path(path)
    for _ in range(5):
        try:
            handle = open(lock, "a+")
        except OSError as err:
            raise ToolError(os_error_message(err, lock)) from err
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ToolError(f"another run is writing {what} (it holds {lock}): wait for it to finish, or choose "
                            "another OUT") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # locked a file its holder had just unlinked
    else:
        raise ToolError(f"cannot lock {lock}: it keeps being replaced; is another run writing {what}?")
    try:
        yield handle
    finally:
        handle.close()


if __name__ == "__main__":
    sys.exit(main())
