"""`vaecodec train` and `vaecodec export`: training runs that resume exactly, and the shipped artefacts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
from click.core import ParameterSource

from .devices import check_device
from .errors import StoppedBySignal, VaecodecError


class Duration(click.ParamType):
    """A time span: seconds (3600, 3600s), minutes (90m), hours (2h, 1.5h), combinations (1h30m) or H:MM:SS."""

    name = "duration"

    UNIT_FORM = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
    CLOCK_FORM = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)")

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        seconds = None
        if re.fullmatch(r"\d+(?:\.\d*)?", text):
            seconds = float(text)
        elif (m := self.CLOCK_FORM.fullmatch(text)) and float(m[2]) < 60 and float(m[3]) < 60:
            seconds = float(m[1] or 0) * 3600 + float(m[2]) * 60 + float(m[3])
        elif text and (m := self.UNIT_FORM.fullmatch(text)):
            seconds = sum(float(v) * f for v, f in zip(m.groups(), (3600, 60, 1), strict=True) if v)
        if seconds is None:
            self.fail(f"{value!r} is not a duration (e.g. 90m, 2h, 1h30m, 3600s, 01:30:00)", param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r}: the duration must be positive", param, ctx)
        return seconds


DURATION = Duration()

TRAIN_OPTIONS = ("steps", "batch_size", "crop", "lr", "warmup", "lr_drop_step", "seed", "workers",
                 "val_every", "ckpt_every", "log_every", "device", "compile", "ema", "balance_levels",
                 "level_weights")


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Export the final weights here (models/NAME).")
@click.option("--run-dir", type=click.Path(path_type=Path), help="Checkpoints and logs (default: runs/NAME).")
@click.option("--steps", type=click.IntRange(1), default=100_000, show_default=True, help="Total steps.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--crop", type=click.IntRange(64), default=256, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=200, show_default=True)
@click.option("--lr-drop-step", type=click.IntRange(0), default=0, show_default=True,
              help="Multiply the learning rate by 0.1 from this step on (0: never).")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.999, show_default=True,
              help="Decay of the weight average that export ships (0: ship the raw weights).")
@click.option("--balance-levels/--no-balance-levels", default=False, show_default=True,
              help="Weight each lambda level's loss by the inverse of its running mean, so that the low-rate "
                   "levels pull the shared weights as much as the high-rate ones (relative gains count equally, "
                   "as in BD-rate).")
@click.option("--level-weights", callback=lambda ctx, param, value: _level_weights(value), default="",
              help="How often each λ level is drawn, relative, one number per level (e.g. 2,2,1,1,1,1,1,1,2,2 "
                   "for twice the steps at both ends; default: uniform).")
@click.option("--lambdas", help="Comma-separated trade-offs (default: those of --init, else 8 values from 0.0018 "
                                "to 0.18).")
@click.option("--N", "n_ch", type=click.IntRange(8), default=128, show_default=True, help="Transform width.")
@click.option("--M", "m_ch", type=click.IntRange(8), default=192, show_default=True, help="Latent channels.")
@click.option("--context", type=click.Choice(["none", "checkerboard"]), default="checkerboard", show_default=True,
              help="Spatial context model of the latents (checkerboard: two-pass coding, smaller files).")
@click.option("--channel-groups", "channel_groups", default="auto", show_default=True,
              help="With the checkerboard: comma-separated latent channel groups coded one after another, each "
                   "predicted from those before (e.g. 16,16,32,64,64); auto: 16,16,32,64,M-128 when M > 128, "
                   "else none; none: no groups.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Image decoding threads.")
@click.option("--val-every", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(1), default=200, show_default=True)
@click.option("--log-every", type=click.IntRange(1), default=50, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--compile/--no-compile", default=True, show_default=True, help="torch.compile the model.")
@click.option("--bf16/--no-bf16", default=None,
              help="bfloat16 autocast (default: on CUDA, and on CPUs with native bf16; else fp32).")
@click.option("--init", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Start from these weights (.safetensors model, or a .pt checkpoint's raw weights), e.g. to "
                   "fine-tune.")
@click.option("--resume", is_flag=True, help="Continue from the run's latest checkpoint.")
@click.option("--max-time", type=DURATION, help="Stop after this much training (e.g. 90m, 2h, 1h30m, 3600s, "
              "01:30:00) with a checkpoint to --resume from; --out still exports. SIGTERM and Ctrl-C also stop "
              "at the end of the current step with a checkpoint (a second Ctrl-C kills).")
@click.option("--force", is_flag=True, help="Let --out replace an existing model file.")
@click.pass_context
def train(ctx, data_dir, out, run_dir, lambdas, n_ch, m_ch, context, channel_groups, init, resume, max_time, force,
          **opts):
    """Train (or fine-tune) a model on a folder of images."""
    import torch

    from .network import DEFAULT_LAMBDAS, ModelConfig
    from .train import TrainConfig, check_level_weights, checkpoint_path
    from .train import train as run_training

    name = out.stem if out else "model"
    if out:
        out = _model_path(out)
        if out.exists() and not force:
            raise VaecodecError(f"{out} already exists (use --force to replace it after training)")
    run_dir = run_dir or Path("runs") / name
    if resume:
        ckpt = checkpoint_path(run_dir)
        if not ckpt.exists():
            raise VaecodecError(f"nothing to resume in {run_dir} (no last.pt)")
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)["train_config"]
        cfg = TrainConfig(**{**saved, "lambdas": tuple(saved["lambdas"]),
                             "channel_groups": tuple(saved.get("channel_groups", ()))})
        for key in TRAIN_OPTIONS:  # options given explicitly on this command line win
            if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE:
                setattr(cfg, key, opts[key])
        cfg.bf16 = opts["bf16"]  # precision follows the machine the run resumes on (None: automatic)
        if ctx.get_parameter_source("context") == ParameterSource.COMMANDLINE and context != cfg.context:
            raise VaecodecError(f"--context cannot change when resuming (the run uses {cfg.context!r}); start a "
                                "new run with --init")
        if (ctx.get_parameter_source("channel_groups") == ParameterSource.COMMANDLINE
                and _groups(channel_groups, cfg.M, cfg.context) != tuple(cfg.channel_groups)):
            raise VaecodecError("--channel-groups cannot change when resuming; start a new run with --init")
        cfg.data_dir, cfg.run_dir = str(data_dir), str(run_dir)
    else:
        if (run_dir / "last.pt").exists():
            raise VaecodecError(f"{run_dir} already holds a run; pass --resume or another --run-dir")
        from .train import inherited_lowest_position, init_model_config, lambda_offset, lambdas_of

        try:
            init_config = init_model_config(str(init)) if init else {}
        except Exception as exc:  # torch, safetensors and json each raise their own kinds for a foreign file
            raise VaecodecError(f"--init {init}: not a vaecodec model or training checkpoint "
                                f"({type(exc).__name__})") from None
        old = lambdas_of(init_config)
        # a fine-tune keeps the λ set of the weights it starts from, or extends it at either end, and keeps
        # their quality scale
        lam = tuple(float(x) for x in lambdas.split(",")) if lambdas else tuple(old or DEFAULT_LAMBDAS)
        offset = 0
        if old and len(old) != len(lam):
            try:
                offset = lambda_offset(old, lam)
            except ValueError as exc:
                raise VaecodecError(f"{exc} (give them all, or only new ones below or above)") from None
        lowest = inherited_lowest_position(init_config, offset)  # without --init: a fresh run's default
        groups = _groups(channel_groups, m_ch, context)
        try:
            ModelConfig(N=n_ch, M=m_ch, lambdas=lam, context=context, channel_groups=groups, lowest_position=lowest)
        except ValueError as exc:
            raise VaecodecError(str(exc)) from None
        cfg = TrainConfig(data_dir=str(data_dir), run_dir=str(run_dir), N=n_ch, M=m_ch, lambdas=lam,
                          context=context, channel_groups=groups, lowest_position=lowest,
                          init=str(init) if init else None, **opts)
    try:
        check_level_weights(tuple(cfg.level_weights), len(cfg.lambdas))
    except ValueError as exc:
        raise VaecodecError(str(exc)) from None
    if not Path(cfg.data_dir).is_dir():
        raise VaecodecError(f"{cfg.data_dir}: training folder not found")
    try:
        check_device(cfg.device)
    except VaecodecError:
        if not resume or ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE:
            raise
        # a resumed run keeps the device it was saved with unless --device says otherwise
        raise VaecodecError(f"the run in {run_dir} trained on {cfg.device}, which this machine does not have: "
                            "resume it with --device cpu") from None
    ckpt, stopped = run_training(cfg, resume=resume, max_seconds=max_time)
    rank = int(os.environ.get("RANK", "0"))
    if stopped not in (None, "max-time") and rank == 0:  # interrupted: leave quickly, the checkpoint is written
        raise StoppedBySignal(f"training stopped by {stopped} at a saved checkpoint; continue with --resume "
                              f"--run-dir {run_dir}")
    if out and rank == 0:  # one process writes the model
        _export([ckpt], out, out.stem, half=True)


def _groups(text: str, m: int, context: str) -> tuple[int, ...]:
    from .network import default_channel_groups

    text = text.strip().lower()
    if text == "auto":
        return default_channel_groups(m, context)
    if text in ("", "none"):
        return ()
    try:
        return tuple(int(g) for g in text.split(","))
    except ValueError:
        raise VaecodecError(f"--channel-groups: expected comma-separated channel counts, got {text!r}") from None


def _level_weights(text: str) -> tuple[float, ...]:
    """`--level-weights` as numbers (empty or "uniform": uniform sampling); train.check_level_weights checks them
    against the run's λ count."""
    text = (text or "").strip().lower()
    if text in ("", "uniform"):
        return ()
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _model_path(path: Path) -> Path:
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def _chosen_weights(ckpt: Path, state: dict, model, use_ema: bool) -> bool:
    """Load a checkpoint's weights into model: its moving average when asked and kept, else the last step's.
    Returns whether the average was used."""
    model.load_state_dict(state["model"])
    if not (use_ema and "ema" in state):
        return False
    # parameters from the moving average; buffers (none persistent today) stay the model's
    missing, unexpected = model.load_state_dict(state["ema"], strict=False)
    params = {n for n, _ in model.named_parameters()}
    if unexpected or params.intersection(missing):
        raise VaecodecError(f"{ckpt}: its weight average does not match the model (pass --no-ema)")
    return True


def _export(ckpts: list[Path], out: Path, name: str, half: bool, lowest_position: float | None = None,
            use_ema: bool = True) -> None:
    """Write a shipped model from one checkpoint (file or run folder) or, given several of the same network,
    from the uniform average of their weights (SWA-like, on top of each one's moving average)."""
    import dataclasses
    import pickle

    import torch

    from .model_io import export_model
    from .network import GainedHyperprior, ModelConfig
    from .train import training_history

    paths = [c / "last.pt" if c.is_dir() else c for c in ckpts]
    for c in paths:
        if not c.is_file():
            raise VaecodecError(f"{c}: no checkpoint there")
    model, total, latest, kinds, steps_seen = None, None, None, set(), []
    for c in paths:
        try:
            state = torch.load(c, map_location="cpu", weights_only=False)
            config = ModelConfig.from_dict(state["model_config"])
            if lowest_position is not None:  # else the run's own quality scale
                config = dataclasses.replace(config, lowest_position=lowest_position)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as e:
            raise VaecodecError(f"{c}: not a vaecodec training checkpoint ({type(e).__name__})") from None
        if model is None:
            model, first_config = GainedHyperprior(config), config
        elif config != first_config:
            raise VaecodecError(f"{c}: a different network from {paths[0]}; only checkpoints of one run average")
        averaged = _chosen_weights(c, state, model, use_ema)
        kinds.add(averaged)
        sd = {k: v.detach().double() for k, v in model.state_dict().items()}
        total = sd if total is None else {k: total[k] + v for k, v in sd.items()}
        steps_seen.append(state["step"])
        if latest is None or state["step"] > latest["step"]:
            latest = state
    if len(paths) > 1:
        model.load_state_dict({k: (v / len(paths)).float() for k, v in total.items()})
    state = latest
    averaged = kinds == {True}
    history = training_history(state)  # a run started from earlier weights counts their training too
    weights = (f"moving average (decay {state['train_config'].get('ema')}, over {state.get('ema_steps')} steps)"
               if averaged else "last step")
    if len(paths) > 1:
        weights = (f"uniform average of {len(paths)} checkpoints' {'moving averages' if averaged else 'weights'} "
                   f"(run steps {', '.join(str(s) for s in sorted(steps_seen))})")
    info = {
        "steps": history.steps,
        "weights": weights,
        "train_seconds": round(history.seconds),
        "gpu_seconds": round(history.gpu_seconds),
        "train_config": state["train_config"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    fp = export_model(model, out, name, half=half, extra_meta={"training": info})
    card = out.with_name(out.stem + ".json")
    card.write_text(json.dumps({"name": name, "fingerprint": fp, "architecture": model.config.to_dict(),
                                **info}, indent=1) + "\n")
    click.echo(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, fingerprint {fp[:16]}) and {card}")


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Model file to write (NAME.safetensors; a NAME.json card goes beside it).")
@click.option("--name", help="Model name stored in .vae files (default: the output's stem).")
@click.option("--fp32", is_flag=True, help="Keep transform weights in float32 instead of float16.")
@click.option("--lowest-position", type=click.FloatRange(-4, 0),
              help="Position among the trained lambdas that quality 1 maps to; below 0 extrapolates the gains "
                   "to lower rates than were trained. [default: the run's own: that of its --init weights, "
                   "moved up by the levels added below them, else -2]")
@click.option("--ema/--no-ema", "use_ema", default=True, show_default=True,
              help="Ship the run's moving average of the weights (if it kept one) rather than the last step's.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing model file.")
def export(checkpoints, output, name, fp32, lowest_position, use_ema, force):
    """Export a training checkpoint (or run folder) into a shipped model file plus its card.

    Several checkpoints of one run are averaged uniformly (e.g. snapshots of last.pt taken during a session)."""
    output = _model_path(output)
    if output.exists() and not force:
        raise VaecodecError(f"{output} already exists (use --force to replace it)")
    _export(list(checkpoints), output, name or output.stem, half=not fp32, lowest_position=lowest_position,
            use_ema=use_ema)


@click.command()
@click.argument("model_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--eval", "eval_json", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="Report from `vaecodec eval --json` made with this model on Kodak.")
@click.option("--data", default="shared/data/train (2047 natural photos, 256x256; sources in shared/data/SOURCES.md)",
              show_default=True, help="Training data description for the card.")
def card(model_file, eval_json, data):
    """Write MODEL.md, the model card: architecture, training, and the measured rate-distortion numbers."""
    from .model_card import write_card

    path = write_card(model_file, json.loads(eval_json.read_text()), data, eval_json)
    click.echo(f"wrote {path}")
