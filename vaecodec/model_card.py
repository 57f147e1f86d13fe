"""Model cards: what a shipped model is, how it was trained, and what it measures on Kodak."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import VaecodecError

CPU_PRECISION = "torch.compile; bf16 autocast where the CPU has native bf16, else fp32"


def training_time_text(training: dict) -> str:
    """Where the training time was spent: GPU time is named apart, since its minutes are worth CPU hours."""
    from .train import model_history

    history = model_history(training)
    if history.gpu_seconds <= 0:
        return f"{history.seconds / 3600:.2f} h wall-clock on 2 CPU cores ({CPU_PRECISION})"
    device = str(training.get("train_config", {}).get("device", "cpu"))
    which = f"the last run, on {device}" if device != "cpu" else "before the last run"
    return (f"{history.seconds / 3600:.2f} h wall-clock in all: {history.gpu_seconds / 60:.1f} min of it on one GPU "
            f"({which}; torch.compile, bf16 autocast), the rest on 2 CPU cores ({CPU_PRECISION})")


def write_card(model_file: Path, report: dict, data: str, report_path: Path) -> Path:
    from .model_io import load_model

    model = load_model(model_file)
    vae = report["codecs"].get("vaecodec", {})
    if model.fingerprint[:16] not in vae.get("settings", ""):
        raise VaecodecError(f"{report_path} was not made with {model_file} (fingerprint differs)")
    training = json.loads(model.meta.get("training", "{}"))
    cfg = model.config
    tc = training.get("train_config", {})
    lines = [
        f"# Model card: `{model.name}`",
        "",
        f"- File: `{model_file.name}` ({model_file.stat().st_size / 1e6:.1f} MB), "
        f"fingerprint `{model.fingerprint[:16]}`",
        f"- Architecture: {cfg.arch} (Minnen et al. 2018 mean-scale hyperprior, Cui et al. 2021 gain units"
        + (", He et al. 2021 checkerboard context model" if cfg.context == "checkerboard" else "")
        + (f" with channel groups {'/'.join(map(str, cfg.channel_groups))} (He et al. 2022)"
           if cfg.channel_groups else "")
        + f"), N={cfg.N}, M={cfg.M}, {training.get('parameters', 0) / 1e6:.2f} M parameters; "
        f"{len(cfg.lambdas)} trade-offs λ = {', '.join(f'{x:g}' for x in cfg.lambdas)}",
        "- Weights: analysis/synthesis transforms in float16; hyper-synthesis"
        + (" and context model" if cfg.context != "none" else "")
        + " as exact integer networks (int16 weights, 8 fractional activation bits); 64 Gaussian and per-channel "
        "hyper-latent tables (16-bit)",
        f"- Quality: 1..100 maps linearly onto positions {cfg.lowest_position:g}..{len(cfg.lambdas) - 1} among the "
        "λ (log-domain interpolation of the gains"
        + ("; below 0 extrapolated to lower rates than trained)" if cfg.lowest_position < 0 else ")"),
        f"- Data: {data}; Kodak was never used for training or model selection",
        f"- Training: {training.get('steps', '?')} steps in all (including those of the weights it was started "
        f"from); the last run: batch {tc.get('batch_size', '?')} × {tc.get('crop', '?')}² crops, Adam lr "
        f"{tc.get('lr', '?')}; loss bpp + λ·255²·MSE with λ drawn per sample"
        + (", each level's loss divided by its running mean (--balance-levels)" if tc.get("balance_levels") else "")
        + (f", levels drawn with relative weights {', '.join(f'{w:g}' for w in tc['level_weights'])} "
           "(--level-weights)" if tc.get("level_weights") else "")
        + "; "
        + training_time_text(training)
        + (f"; shipped weights: {training['weights']}" if training.get("weights") else ""),
        "",
        f"## Kodak ({report['images']} images), measured with `vaecodec eval` ({vae.get('settings', '')})",
        "",
        "| quality | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode s | decode s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in vae.get("points", []):
        lines.append(f"| {p['quality']:g} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | "
                     f"{p['ms_ssim_db']:.2f} | {p['enc_s']:.2f} | {p['dec_s']:.2f} |")
    lines += ["", "BD-rate of this model against each codec (negative: fewer bits for the same quality; nan: the",
              "curves do not overlap):", "", "| vs | PSNR | MS-SSIM | settings |", "|---|---:|---:|---|"]
    for name, v in report.get("bd_rate", {}).items():
        settings = report["codecs"][name].get("settings", "")
        lines.append(f"| {name} | {v['psnr']:+.1f}% | {v['ms_ssim']:+.1f}% | {settings} |")
    lines += ["", f"Full report: `{report_path}`.", ""]
    out = model_file.with_suffix(".md")
    out.write_text("\n".join(lines))
    return out
