"""Safe output files: written to a temporary name beside the target and renamed into place, never
overwriting without permission and never touching an input."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from .errors import VaecodecError


class OutputExistsError(VaecodecError):
    pass


def check_output(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    for inp in inputs:
        try:
            if path.exists() and inp.exists() and path.samefile(inp):
                raise VaecodecError(f"{path}: output would overwrite an input")
        except OSError:
            pass
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise VaecodecError(f"{path}: is a directory")


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write data to path via a temporary file in the same directory and an atomic rename."""
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise VaecodecError(f"{path}: directory {directory} does not exist")
    # The temporary name is chosen before the file exists, so a Ctrl-C or SIGTERM (raised as KeyboardInterrupt)
    # arriving at any point after os.open, even before it returns, still finds the file to remove.
    for _ in range(100):
        tmp = directory / f".{path.name}.{secrets.token_hex(4)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise VaecodecError(f"{path}: cannot write ({exc.strerror})") from None
        except BaseException:
            _remove(tmp)
            raise
    else:
        raise VaecodecError(f"{path}: cannot write (no free temporary name)")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise VaecodecError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

def read_input(path: Path | str, limit: int | None = None) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    path = Path(path)
    try:
        if path.is_dir():
            raise VaecodecError(f"{path}: is a directory")
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise VaecodecError(f"{path}: no such file") from None
    except PermissionError:
        raise VaecodecError(f"{path}: permission denied") from None
    except OSError as exc:
        raise VaecodecError(f"{path}: cannot read ({exc.strerror or exc})") from None
