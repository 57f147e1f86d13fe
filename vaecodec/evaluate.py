"""`vaecodec eval`: rate-distortion and speed of vaecodec beside the classical codecs, on real bytes."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .effort import DEFAULT_EFFORT
from .metrics import bd_rate, ms_ssim, ms_ssim_db, psnr

DEFAULT_QUALITIES = (5, 20, 35, 50, 65, 80, 92, 100)


@dataclass(frozen=True)
class Classical:
    name: str
    fmt: str
    qualities: tuple[int, ...]
    settings: str

    def params(self, q: int) -> dict:
        return {
            "jpeg": {"quality": q, "subsampling": "4:2:0", "optimize": True},
            "webp": {"quality": q, "method": 6},
            "avif": {"quality": q, "speed": 4, "subsampling": "4:4:4"},
            "jxl": {"quality": q, "effort": 7},
            "heic": {"quality": q},
        }[self.name]


CLASSICAL = {
    "jpeg": Classical("jpeg", "JPEG", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95), "Pillow libjpeg, 4:2:0, optimize"),
    "webp": Classical("webp", "WEBP", (1, 5, 15, 30, 45, 60, 75, 85, 95), "Pillow libwebp, method 6"),
    "avif": Classical("avif", "AVIF", (10, 20, 30, 40, 50, 60, 70, 80), "Pillow AVIF (libavif), speed 4, 4:4:4"),
    "jxl": Classical("jxl", "JXL", (5, 20, 35, 50, 65, 75, 85, 92), "pillow-jxl-plugin (libjxl), effort 7"),
    "heic": Classical("heic", "HEIF", (5, 12, 20, 28, 36, 44, 52, 60), "pillow-heif (x265), default chroma"),
}


def missing_extras(codecs: list[str], plot: bool) -> list[str]:
    need = []
    for mod, pkg in (("scipy", "scipy"),) + ((("matplotlib", "matplotlib"),) if plot else ()):
        try:
            __import__(mod)
        except ImportError:
            need.append(pkg)
    for name, mod, pkg in (("jxl", "pillow_jxl", "pillow-jxl-plugin"), ("heic", "pillow_heif", "pillow-heif")):
        if name in codecs:
            try:
                __import__(mod)
            except ImportError:
                need.append(pkg)
    return need


def _register_plugins(codecs: list[str]) -> None:
    if "jxl" in codecs:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
    if "heic" in codecs:
        import pillow_heif

        pillow_heif.register_heif_opener()


def _row(ref: np.ndarray, out: np.ndarray, nbytes: int, enc: float, dec: float, q) -> dict:
    h, w = ref.shape[:2]
    m = ms_ssim(ref, out)
    return {"quality": q, "bytes": nbytes, "bpp": 8 * nbytes / (w * h), "psnr": psnr(ref, out), "ms_ssim": m,
            "ms_ssim_db": ms_ssim_db(m), "enc_s": enc, "dec_s": dec}


def eval_classical(codec: Classical, images: list[tuple[str, np.ndarray]], progress) -> list[dict]:
    rows = []
    for name, rgb in images:
        img = Image.fromarray(rgb)
        for q in codec.qualities:
            buf = io.BytesIO()
            t0 = time.perf_counter()
            img.save(buf, format=codec.fmt, **codec.params(q))
            t1 = time.perf_counter()
            with Image.open(io.BytesIO(buf.getvalue())) as im:
                out = np.asarray(im.convert("RGB"))
            t2 = time.perf_counter()
            rows.append({"image": name, **_row(rgb, out, len(buf.getvalue()), t1 - t0, t2 - t1, q)})
            progress.update(1)
    return rows


def eval_vaecodec(codec, images: list[tuple[str, np.ndarray]], qualities, progress,
                  effort: int = DEFAULT_EFFORT) -> list[dict]:
    from .imageio import Planes

    rows = []
    for name, rgb in images:
        for q in qualities:
            t0 = time.perf_counter()
            data = codec.encode_planes(Planes(rgb, "RGB"), q, effort=effort)
            t1 = time.perf_counter()
            out = np.asarray(codec.decode(data))
            t2 = time.perf_counter()
            rows.append({"image": name, **_row(rgb, out, len(data), t1 - t0, t2 - t1, q)})
            progress.update(1)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over images at each quality; speed also as megapixels per second."""
    points = []
    for q in sorted({r["quality"] for r in rows}):
        sel = [r for r in rows if r["quality"] == q]
        p = {k: float(np.mean([r[k] for r in sel])) for k in ("bpp", "psnr", "ms_ssim", "enc_s", "dec_s")}
        p["ms_ssim_db"] = ms_ssim_db(p["ms_ssim"])
        p["quality"] = q
        points.append(p)
    return points


def bd_table(results: dict, anchor: str = "vaecodec") -> dict:
    a = results[anchor]["points"]
    table = {}
    for name, res in results.items():
        if name == anchor:
            continue
        b = res["points"]
        table[name] = {
            "psnr": bd_rate([p["bpp"] for p in b], [p["psnr"] for p in b],
                            [p["bpp"] for p in a], [p["psnr"] for p in a]),
            "ms_ssim": bd_rate([p["bpp"] for p in b], [p["ms_ssim_db"] for p in b],
                               [p["bpp"] for p in a], [p["ms_ssim_db"] for p in a]),
        }
    return table


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for name, res in results.items():
        pts = res["points"]
        style = dict(marker="o", lw=2.5 if name == "vaecodec" else 1.2, ms=4)
        axes[0].plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], label=name, **style)
        axes[1].plot([p["bpp"] for p in pts], [p["ms_ssim_db"] for p in pts], label=name, **style)
    for ax, ylabel in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM (dB)"), strict=True):
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 2.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_images(directory: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    from .imageio import IMAGE_SUFFIXES

    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        paths = paths[:limit]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append((p.name, np.asarray(im.convert("RGB")).copy()))
    return out


def format_table(results: dict, bd: dict) -> str:
    lines = [f"{'codec':<9} {'q':>5} {'bpp':>7} {'PSNR':>7} {'MS-SSIM dB':>10} {'enc s':>7} {'dec s':>7}"]
    for name, res in results.items():
        for p in res["points"]:
            lines.append(f"{name:<9} {p['quality']:>5g} {p['bpp']:>7.4f} {p['psnr']:>7.2f} {p['ms_ssim_db']:>10.2f} "
                         f"{p['enc_s']:>7.3f} {p['dec_s']:>7.3f}")
    lines.append("")
    lines.append("BD-rate of vaecodec vs each codec (negative: vaecodec needs fewer bits)")
    for name, v in bd.items():
        lines.append(f"  vs {name:<6} PSNR {v['psnr']:+7.1f}%   MS-SSIM {v['ms_ssim']:+7.1f}%")
    return "\n".join(lines)


def run_eval(directory: Path, codec, qualities, compare: list[str], limit: int | None,
             baseline: dict | None = None, effort: int = DEFAULT_EFFORT) -> dict:
    from tqdm import tqdm

    images = load_images(directory, limit)
    if not images:
        raise FileNotFoundError(f"no images in {directory}")
    _register_plugins([c for c in compare if not (baseline and c in baseline)])
    todo = len(images) * len(qualities) + sum(
        len(images) * len(CLASSICAL[c].qualities) for c in compare if not (baseline and c in baseline))
    results = {}
    with tqdm(total=todo, desc="eval", unit="enc") as bar:
        rows = eval_vaecodec(codec, images, qualities, bar, effort)
        results["vaecodec"] = {"settings": f"model {codec.model.name} ({codec.model.fingerprint[:16]}), "
                                           f"effort {effort}",
                               "points": summarize(rows), "images": rows}
        for name in compare:
            if baseline and name in baseline:
                results[name] = baseline[name]
                continue
            rows = eval_classical(CLASSICAL[name], images, bar)
            results[name] = {"settings": CLASSICAL[name].settings, "points": summarize(rows), "images": rows}
    return {"dataset": str(directory), "images": len(images), "codecs": results, "bd_rate": bd_table(results)}


def save_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")
