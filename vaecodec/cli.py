"""The `vaecodec` command line: encode, decode, info, train, export, eval. A thin layer over the API."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .container import DEFAULT_MAX_PIXELS
from .devices import check_device
from .effort import DEFAULT_EFFORT, EFFORT_ITERATIONS, MAX_EFFORT, MIN_EFFORT
from .errors import VaecodecError

DEVICE = click.Choice(["cpu", "cuda"])


def _fail(msg: str, code: int = 1):
    click.echo(f"vaecodec: error: {msg}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and a non-zero exit."""

    def parse_args(self, ctx, args):  # `vaecodec --bogus`: one line too (a bare `vaecodec` still shows help)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            _fail(f"{exc.format_message()} (see 'vaecodec --help')", 2)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaecodecError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory (try a smaller image or --max-pixels)", 1)
        except click.UsageError as exc:  # a bad option value: one line, like every other error
            where = exc.ctx.command_path if exc.ctx is not None else "vaecodec"
            _fail(f"{exc.format_message()} (see '{where} --help')", 2)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # an unexpected bug: still one line unless debugging
            if os.environ.get("VAECODEC_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set VAECODEC_DEBUG=1 for details)", 70)


def _make_codec(model: str | None, device: str):
    from .codec import Codec

    check_device(device)
    return Codec(model, device=device)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C, so temporary outputs are removed on the way out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vaecodec")
def main():
    """vaecodec: a learned image codec. Encode images to .vae files and back."""
    import signal

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)


def _batch_options(f):
    """Options shared by encode and decode."""
    opts = [
        click.option("-o", "--output", help="Output file for one input ('-' for stdout), else a directory."),
        click.option("-r", "--recursive", is_flag=True, help="Recurse into directories (the tree is mirrored)."),
        click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
        click.option("--skip-existing", is_flag=True, help="Leave existing outputs alone (resumable runs)."),
        click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
                     help="Parallel worker processes (each loads the model once)."),
        click.option("--threads", type=click.IntRange(1), help="Torch threads per worker."),
        click.option("-m", "--model", type=click.Path(path_type=Path), help="Model file (default: shipped model)."),
        click.option("--device", type=DEVICE, default="cpu", show_default=True),
        click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
                     help="Refuse larger images."),
        click.option("--max-memory", type=click.IntRange(1), metavar="MB",
                     help="Working memory for the transforms in MB (sets the tile sizes; default ~0.75 GB, "
                          "~1.5 GB at --effort 2+)."),
        click.option("--strip", is_flag=True, help="Drop ICC profile, EXIF and XMP metadata."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout."),
        click.option("-v", "--verbose", is_flag=True, help="Print size, bpp and time per file."),
        click.option("--quiet", is_flag=True, help="No progress bar, no summary."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _run(mode, inputs, output, recursive, force, skip_existing, jobs, threads, model, device, max_pixels,
         max_memory, strip, as_json, verbose, quiet, **extra):
    from .batch import IMAGE_SUFFIXES, Options, expand_inputs, plan_jobs, result_json, run_batch

    if force and skip_existing:
        raise VaecodecError("--force and --skip-existing exclude each other")
    suffixes = IMAGE_SUFFIXES if mode == "encode" else {".vae"}
    items = expand_inputs(list(inputs), recursive, suffixes)
    if not items:
        raise VaecodecError("no input files found")
    many = len(items) > 1 or any(Path(a).is_dir() for a in inputs if a != "-")
    suffix = ".vae" if mode == "encode" else "." + (extra.get("fmt") or "png")
    job_list = plan_jobs(items, output, suffix, many)
    opts = Options(mode=mode, model=str(model) if model else None, device=device, threads=threads,
                   keep_metadata=not strip, max_pixels=max_pixels, force=force, skip_existing=skip_existing,
                   max_memory=max_memory * 1024 * 1024 if max_memory else None, **extra)
    if jobs > 1 and len(job_list) > 1:  # fail once, here, rather than in every worker
        from .model_io import load_model

        load_model(opts.model)
        check_device(device)
    if mode == "decode":
        from .batch import output_format

        output_format(extra.get("fmt"), job_list[0].dst)  # an unknown format fails before any work
    progress = many and not quiet and sys.stderr.isatty()

    def report(r):
        if r.status == "failed":
            msg = r.error if r.error.startswith(r.input) else f"{r.input}: {r.error}"
            click.echo(f"vaecodec: error: {msg}", err=True)
        for note in r.notes:
            click.echo(f"vaecodec: note: {r.input}: {note}", err=True)
        if as_json:
            click.echo(result_json(r))
        elif verbose and r.status == "ok":
            size = f"{r.width}x{r.height}, {r.bytes} bytes, {r.bpp:.4f} bpp"
            q = f", q={r.quality:g}" if r.quality is not None else ""
            click.echo(f"{r.input} -> {r.output}: {size}{q}, {r.seconds:.2f}s", err=True)
        elif verbose and r.status == "skipped":
            click.echo(f"{r.input}: skipped ({r.output} exists)", err=True)

    t0 = time.perf_counter()
    results = run_batch(job_list, opts, jobs, progress, report)
    failed = sum(r.status == "failed" for r in results)
    if many and not quiet:
        done = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        click.echo(f"vaecodec: {mode}d {done} file(s), {skipped} skipped, {failed} failed "
                   f"in {time.perf_counter() - t0:.1f}s", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-q", "--quality", type=click.FloatRange(1, 100), default=75.0, show_default=True,
              help="Quality 1..100, higher is better (fractional values allowed).")
@click.option("-e", "--effort", type=click.IntRange(MIN_EFFORT, MAX_EFFORT), default=DEFAULT_EFFORT,
              show_default=True,
              help=f"Encoder effort {MIN_EFFORT}..{MAX_EFFORT}: levels above {MIN_EFFORT} refine the latents with "
                   + "/".join(str(n) for n in EFFORT_ITERATIONS.values() if n)
                   + " gradient steps for a better size/quality trade-off; much slower. Decoding is unaffected.")
@click.option("--target-size", type=click.IntRange(1), help="Highest quality whose file fits in BYTES.")
@click.option("--target-bpp", type=click.FloatRange(0, min_open=True), help="Highest quality at or under X bpp.")
@_batch_options
def encode(inputs, quality, effort, target_size, target_bpp, **kw):
    """Encode images (files, directories, globs; any format Pillow reads) into .vae files."""
    if target_size and target_bpp:
        raise VaecodecError("--target-size and --target-bpp exclude each other")
    _run("encode", inputs, quality=quality, effort=effort, target_bytes=target_size, target_bpp=target_bpp, **kw)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--format", "fmt", help="Output format (png, webp, tiff, bmp, jpeg...; default from the extension).")
@_batch_options
def decode(inputs, fmt, **kw):
    """Decode .vae files (files, directories, globs) into images."""
    _run("decode", inputs, fmt=fmt.lower() if fmt else None, **kw)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout.")
def info(inputs, as_json):
    """Show what a .vae file holds (size, quality, model, stream sizes) without decoding it."""
    from .container import unpack
    from .fileio import read_input

    failed = 0
    for path in inputs:
        try:
            data = read_input(path)
            f = unpack(data)
        except VaecodecError as exc:
            click.echo(f"vaecodec: error: {exc}" if str(exc).startswith(str(path)) else
                       f"vaecodec: error: {path}: {exc}", err=True)
            failed += 1
            continue
        rec = {
            "file": str(path), "width": f.width, "height": f.height, "layout": f.layout,
            "quality": f.quality, "model": f.model_name, "model_fingerprint": f.model_fingerprint.hex(),
            "bytes": len(data), "header_bytes": f.header_size, "stream_bytes": len(f.payload),
            "chunks": {k.decode("latin-1"): len(v) for k, v in f.chunks.items()},
            "bpp": 8 * len(data) / (f.width * f.height),
        }
        if as_json:
            click.echo(json.dumps(rec))
        else:
            chunks = ", ".join(f"{k} {v} B" for k, v in rec["chunks"].items()) or "none"
            click.echo(f"{path}: {f.width}x{f.height} {f.layout}, quality {f.quality:g}, "
                       f"{len(data)} bytes ({rec['bpp']:.4f} bpp)\n"
                       f"  model {f.model_name} ({rec['model_fingerprint']}), header {f.header_size} B, "
                       f"stream {len(f.payload)} B, chunks: {chunks}")
    if failed:
        sys.exit(1)


@main.command("eval")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--qualities", default="5,20,35,50,65,80,92,100", show_default=True, help="vaecodec qualities.")
@click.option("--compare", default="jpeg,webp,jxl,avif,heic", show_default=True,
              help="Classical codecs to run beside it ('' for none).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full report here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), help="Write a rate-distortion plot (PNG).")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Reuse the classical codecs' results from an earlier report on the same images, "
                   "and give the BD-rate against its vaecodec curve (e.g. the previous model).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N images.")
@click.option("-e", "--effort", type=click.IntRange(MIN_EFFORT, MAX_EFFORT), default=DEFAULT_EFFORT,
              show_default=True, help="vaecodec encoder effort (see encode --help).")
@click.option("-m", "--model", type=click.Path(path_type=Path), help="Model file (default: shipped model).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def eval_cmd(directory, qualities, compare, json_out, plot_out, baseline, limit, effort, model, device):
    """Rate-distortion (bpp, PSNR, MS-SSIM), speed and BD-rates of vaecodec and classical codecs."""
    from .evaluate import CLASSICAL, bd_table, format_table, missing_extras, plot, run_eval, save_json

    names = [c.strip() for c in compare.split(",") if c.strip()]
    unknown = [c for c in names if c not in CLASSICAL]
    if unknown:
        raise VaecodecError(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(CLASSICAL)}")
    need = missing_extras(names, plot_out is not None)
    if need:
        raise VaecodecError(f"eval needs {', '.join(need)}: pip install 'vaecodec[eval]'")
    try:
        qs = [float(q) for q in qualities.split(",")]
    except ValueError:
        raise VaecodecError(f"--qualities must be numbers, got {qualities!r}") from None
    base = None
    if baseline:
        base_report = json.loads(baseline.read_text())
        if base_report.get("images") != (limit or base_report.get("images")):
            raise VaecodecError(f"{baseline}: made on a different number of images")
        base = base_report["codecs"]
    codec = _make_codec(model, device)
    report = run_eval(directory, codec, qs, names, limit, base, effort)
    click.echo(format_table(report["codecs"], report["bd_rate"]))
    if base and "vaecodec" in base:  # how a new model compares with the one the baseline report measured
        vs = bd_table({"vaecodec": report["codecs"]["vaecodec"], "baseline": base["vaecodec"]})["baseline"]
        report["bd_rate_vs_baseline"] = vs
        click.echo(f"  vs the baseline's vaecodec ({base['vaecodec'].get('settings', '?')}): "
                   f"PSNR {vs['psnr']:+.2f}%   MS-SSIM {vs['ms_ssim']:+.2f}%")
    if json_out:
        save_json(report, json_out)
    if plot_out:
        plot(report["codecs"], plot_out, f"{directory.name}: {report['images']} images")


from .cli_train import card, export, train  # noqa: E402  (registered below)

main.add_command(train)
main.add_command(export)
main.add_command(card)

if __name__ == "__main__":
    main()
