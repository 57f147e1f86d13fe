"""Many files at once: input expansion (files, directories, -r, globs), output mapping, parallel workers
that each load the model once, per-file results, and a summary. One bad file never stops the batch."""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .devices import check_device
from .effort import DEFAULT_EFFORT
from .errors import VaecodecError
from .imageio import IMAGE_SUFFIXES  # noqa: F401  (re-exported for the CLI)


@dataclass
class Job:
    src: str  # path, or "-" for stdin
    dst: str  # path, or "-" for stdout


@dataclass
class Options:
    mode: str  # "encode" or "decode"
    model: str | None = None
    device: str = "cpu"
    threads: int | None = None
    quality: float = 75.0
    effort: int = DEFAULT_EFFORT  # encoder search effort (effort.EFFORT_ITERATIONS)
    target_bytes: int | None = None
    target_bpp: float | None = None
    keep_metadata: bool = True
    fmt: str | None = None
    max_pixels: int | None = None
    force: bool = False
    skip_existing: bool = False
    max_memory: int | None = None  # bytes for the transforms' working memory (sets the tile size)


@dataclass
class Result:
    input: str
    output: str
    status: str  # "ok", "skipped" or "failed"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    bpp: float | None = None
    quality: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def expand_inputs(inputs: list[str], recursive: bool, suffixes: set[str]) -> list[tuple[str, Path | None]]:
    """(path, relative path under a directory argument or None) for every input file, in a stable order."""
    out: list[tuple[str, Path | None]] = []
    for arg in inputs:
        if arg == "-":
            out.append(("-", None))
            continue
        p = Path(arg)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.glob("*")
            files = sorted(f for f in walker if f.is_file() and f.suffix.lower() in suffixes)
            out.extend((str(f), f.relative_to(p)) for f in files)
        elif not p.exists() and any(ch in arg for ch in "*?["):
            matches = sorted(glob.glob(arg, recursive=recursive))
            if not matches:
                out.append((arg, None))  # reported as missing
            out.extend((m, None) for m in matches if Path(m).is_file())
        else:
            out.append((arg, None))
    return out


def plan_jobs(items: list[tuple[str, Path | None]], output: str | None, suffix: str, many: bool) -> list[Job]:
    """Map inputs to outputs: beside the input by default, -o a file for one input, else a directory."""
    jobs = []
    if not many:
        src = items[0][0]
        if output is None:
            if src == "-":
                raise VaecodecError("reading stdin needs -o (a file, or '-' for stdout)")
            output = str(Path(src).with_suffix(suffix))
        elif output != "-" and (Path(output).is_dir() or output.endswith(os.sep)):
            output = str(Path(output) / Path(src).with_suffix(suffix).name)
        return [Job(src, output)]
    if output == "-":
        raise VaecodecError("'-o -' (stdout) takes a single input")
    if any(src == "-" for src, _ in items):
        raise VaecodecError("'-' (stdin) takes a single input")
    seen: dict[str, str] = {}
    for src, rel in items:
        name = rel if rel is not None else Path(Path(src).name)
        dst = str(((Path(output) / name) if output else Path(src).parent / name.name).with_suffix(suffix))
        if dst in seen:
            raise VaecodecError(f"{seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
        jobs.append(Job(src, dst))
    return jobs


# --- workers ---------------------------------------------------------------------------------------------

_codec = None


def _init_worker(opts: Options, in_pool: bool = False) -> None:
    global _codec
    import torch

    if in_pool:  # the parent handles Ctrl-C/SIGTERM; a worker finishes (atomically) the file it is on
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .codec import Codec

    if opts.threads:
        torch.set_num_threads(opts.threads)
    check_device(opts.device)
    from .model_io import load_model
    from .refine import refine_tile_for_memory
    from .tiling import tile_for_memory

    model = load_model(opts.model)
    kwargs = {}
    if opts.max_memory:
        kwargs = {"tile": tile_for_memory(opts.max_memory, model.config.N),
                  "refine_tile": refine_tile_for_memory(opts.max_memory, model.config.N)}
    _codec = Codec(model, device=opts.device, **kwargs)


def run_job(job: Job, opts: Options) -> Result:
    from .fileio import check_output, read_input, write_atomic

    t0 = time.perf_counter()
    res = Result(job.src, job.dst, "ok")
    try:
        if job.dst != "-":
            if opts.skip_existing and Path(job.dst).exists():
                res.status = "skipped"
                return res
            inputs = (Path(job.src),) if job.src != "-" else ()
            check_output(Path(job.dst), opts.force, inputs)
        if opts.mode == "encode":
            data = _encode_one(job, opts, res)
        else:
            data = _decode_one(job, opts, res, read_input(job.src))
        if job.dst != "-":
            try:
                Path(job.dst).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VaecodecError(f"{job.dst}: cannot create its directory ({exc.strerror or exc})") from None
        write_atomic(job.dst, data)
        res.bytes = len(data) if opts.mode == "encode" else res.bytes
    except VaecodecError as exc:
        res.status, res.error = "failed", str(exc)
    except MemoryError:
        res.status, res.error = "failed", "out of memory"
    except Exception as exc:  # a bug must not stop the batch either
        if os.environ.get("VAECODEC_DEBUG"):
            raise
        res.status, res.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
    res.seconds = time.perf_counter() - t0
    return res


def _encode_one(job: Job, opts: Options, res: Result) -> bytes:
    from .container import quantize_quality, unpack
    from .fileio import read_input
    from .imageio import open_image, to_planes

    src = io.BytesIO(read_input(job.src)) if job.src == "-" else job.src
    planes = to_planes(open_image(src, max_pixels=opts.max_pixels))
    res.notes = planes.notices
    w, h = planes.size
    res.width, res.height = w, h
    target = opts.target_bytes
    if opts.target_bpp is not None:
        target = int(opts.target_bpp * w * h / 8)
    if target is not None:
        data, fits = _codec.encode_to_size(planes, target, opts.keep_metadata, effort=opts.effort)
        if not fits:
            res.notes.append(f"even quality 1 needs {len(data)} bytes, over the target of {target}")
        res.quality = unpack(data).quality
    else:
        data = _codec.encode_planes(planes, opts.quality, opts.keep_metadata, opts.effort)
        res.quality = quantize_quality(opts.quality)
    res.bytes = len(data)
    res.bpp = 8 * len(data) / (w * h)
    return data


def _decode_one(job: Job, opts: Options, res: Result, data: bytes) -> bytes:

    img = _codec.decode(data, max_pixels=opts.max_pixels)
    res.width, res.height = img.size
    res.bytes = len(data)
    res.bpp = 8 * len(data) / (img.size[0] * img.size[1])
    fmt = output_format(opts.fmt, job.dst)
    if fmt.upper() in ("JPEG", "JPG") and img.mode in ("RGBA", "LA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    extra = {}
    if opts.keep_metadata:
        extra = {k: img.info[k] for k in ("icc_profile", "exif", "xmp") if img.info.get(k)}
    buf = io.BytesIO()
    try:
        try:
            img.save(buf, format=fmt, **extra)
        except (SyntaxError, TypeError, ValueError):
            if not extra:
                raise
            buf = io.BytesIO()  # metadata this format cannot carry: write the pixels without it
            img.save(buf, format=fmt)
            res.notes.append(f"metadata could not be written as {fmt} and was dropped")
    except (KeyError, ValueError, OSError, SyntaxError, TypeError) as exc:
        raise VaecodecError(f"{job.dst}: cannot write as {fmt}: {exc}") from None
    return buf.getvalue()


def output_format(fmt: str | None, dst: str) -> str:
    """Pillow's format name from --format (png, jpg, tif...) or from the output's extension."""
    from PIL import Image

    exts = Image.registered_extensions()
    if fmt:
        name = exts.get("." + fmt.lower().lstrip("."), fmt.upper())
        if name not in Image.SAVE:
            raise VaecodecError(f"cannot write images as {fmt!r}")
        return name
    if dst == "-":
        return "PNG"
    ext = Path(dst).suffix.lower()
    if ext not in exts or exts[ext] not in Image.SAVE:
        raise VaecodecError(f"{dst}: unknown image extension {ext!r} (use --format)")
    return exts[ext]


def _run_in_worker(job: Job, opts: Options) -> Result:
    return run_job(job, opts)


def run_batch(jobs: list[Job], opts: Options, workers: int, progress: bool, on_result) -> list[Result]:
    """Run every job; on_result(result) is called as each one finishes (in completion order)."""
    from tqdm import tqdm

    results: list[Result] = []
    bar = tqdm(total=len(jobs), unit="file", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(opts)
            for job in jobs:
                r = run_job(job, opts)
                results.append(r)
                on_result(r)
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(opts, True))
            futures = [pool.submit(_run_in_worker, job, opts) for job in jobs]
            try:
                for fut in as_completed(futures):
                    r = fut.result()
                    results.append(r)
                    on_result(r)
                    bar.update(1)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results


def result_json(r: Result) -> str:
    d = {k: v for k, v in asdict(r).items() if v is not None and v != []}
    if d.get("bpp") is not None:
        d["bpp"] = round(d["bpp"], 5)
    d["seconds"] = round(d["seconds"], 4)
    return json.dumps(d)
