"""The `vaecodec` command line: encode, decode, info, train, export, eval. A thin layer over the API."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import VaecodecError

DEVICE = click.Choice(["cpu", "cuda"])


def _fail(msg: str, code: int = 1):
    click.echo(f"vaecodec: error: {msg}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaecodecError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory (try a smaller image or --max-pixels)", 1)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # an unexpected bug: still one line unless debugging
            if os.environ.get("VAECODEC_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set VAECODEC_DEBUG=1 for details)", 70)


def _make_codec(model: str | None, device: str):
    import torch

    from .codec import Codec

    if device == "cuda" and not torch.cuda.is_available():
        raise VaecodecError("--device cuda was asked for, but no CUDA device is available")
    return Codec(model, device=device)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vaecodec")
def main():
    """vaecodec: a learned image codec. Encode images to .vae files and back."""


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True),
              help="Output .vae file (default: INPUT with .vae suffix; '-' for stdout).")
@click.option("-q", "--quality", type=click.FloatRange(1, 100), default=75.0, show_default=True,
              help="Quality 1..100, higher is better (fractional values allowed).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-m", "--model", type=click.Path(path_type=Path), help="Model file (default: shipped model).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
@click.option("--max-pixels", type=click.IntRange(1), default=64 * 1024 * 1024, show_default=True,
              help="Refuse larger images.")
@click.option("-v", "--verbose", is_flag=True, help="Print size, bpp and time.")
def encode(input, output, quality, force, model, device, max_pixels, verbose):
    """Encode an image (any format Pillow reads) into a .vae file."""
    from .fileio import check_output, read_input, write_atomic
    from .imageio import open_image, to_planes

    t0 = time.perf_counter()
    if output is None:
        if str(input) == "-":
            raise VaecodecError("reading stdin needs -o (a file, or '-' for stdout)")
        output = input.with_suffix(".vae")
    if str(output) != "-":
        check_output(output, force, (input,) if str(input) != "-" else ())
    src = io.BytesIO(read_input(input)) if str(input) == "-" else input
    planes = to_planes(open_image(src, max_pixels=max_pixels))
    for notice in planes.notices:
        click.echo(f"vaecodec: note: {input}: {notice}", err=True)
    codec = _make_codec(model, device)
    data = codec.encode_planes(planes, quality)
    write_atomic(output, data)
    if verbose:
        w, h = planes.size
        click.echo(f"{input} -> {output}: {w}x{h}, {len(data)} bytes, {8 * len(data) / (w * h):.4f} bpp, "
                   f"q={quality:g}, {time.perf_counter() - t0:.2f}s", err=True)


@main.command()
@click.argument("input", type=click.Path(path_type=Path, allow_dash=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True),
              help="Output image (default: INPUT with .png suffix; '-' for stdout as PNG).")
@click.option("--format", "fmt", help="Output format (PNG, WEBP, TIFF, BMP, JPEG...; default from the extension).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-m", "--model", type=click.Path(path_type=Path), help="Model file (default: shipped model).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
@click.option("--max-pixels", type=click.IntRange(1), default=64 * 1024 * 1024, show_default=True,
              help="Refuse files declaring larger images.")
@click.option("-v", "--verbose", is_flag=True, help="Print size and time.")
def decode(input, output, fmt, force, model, device, max_pixels, verbose):
    """Decode a .vae file into an image."""
    from .fileio import check_output, read_input, write_atomic

    t0 = time.perf_counter()
    if output is None:
        if str(input) == "-":
            raise VaecodecError("reading stdin needs -o (a file, or '-' for stdout)")
        output = input.with_suffix(".png")
    if str(output) != "-":
        check_output(output, force, (input,) if str(input) != "-" else ())
    data = read_input(input)
    codec = _make_codec(model, device)
    img = codec.decode(data, max_pixels=max_pixels)
    fmt = fmt or ("PNG" if str(output) == "-" else None)
    buf = io.BytesIO()
    try:
        if fmt is None:
            from PIL import Image

            ext = output.suffix.lower()
            fmt = Image.registered_extensions().get(ext)
            if fmt is None:
                raise VaecodecError(f"{output}: unknown image extension {ext!r} (use --format)")
        if fmt.upper() in ("JPEG", "JPG") and img.mode in ("RGBA", "LA"):
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        img.save(buf, format=fmt)
    except (KeyError, ValueError, OSError) as exc:
        raise VaecodecError(f"{output}: cannot write as {fmt}: {exc}") from None
    write_atomic(output, buf.getvalue())
    if verbose:
        click.echo(f"{input} -> {output}: {img.size[0]}x{img.size[1]} {img.mode}, "
                   f"{time.perf_counter() - t0:.2f}s", err=True)


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
              help="Reuse the classical codecs' results from an earlier report on the same images.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N images.")
@click.option("-m", "--model", type=click.Path(path_type=Path), help="Model file (default: shipped model).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def eval_cmd(directory, qualities, compare, json_out, plot_out, baseline, limit, model, device):
    """Rate-distortion (bpp, PSNR, MS-SSIM), speed and BD-rates of vaecodec and classical codecs."""
    from .evaluate import CLASSICAL, format_table, missing_extras, plot, run_eval, save_json

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
    report = run_eval(directory, codec, qs, names, limit, base)
    click.echo(format_table(report["codecs"], report["bd_rate"]))
    if json_out:
        save_json(report, json_out)
    if plot_out:
        plot(report["codecs"], plot_out, f"{directory.name}: {report['images']} images")


from .cli_train import export, train  # noqa: E402  (registered below)

main.add_command(train)
main.add_command(export)

if __name__ == "__main__":
    main()
