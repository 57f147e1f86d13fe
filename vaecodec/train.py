"""Rate-distortion training of the variable-rate model, resumable at any step and DDP-ready.

Loss per sample: bpp + lambda * 255^2 * MSE, with the lambda index drawn per sample from the trained set
(optionally each level's loss divided by its running mean: LevelBalance).
Checkpoints (model + optimizer + RNG + step) go to a run folder outside git; `vaecodec export` turns one
into the shipped artefacts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import CropSampler, StackedCropSampler, list_images, load_images, split_images
from .metrics import bd_rate
from .network import DEFAULT_LAMBDAS, DEFAULT_LOWEST_POSITION, GainedHyperprior, ModelConfig


@dataclass
class TrainConfig:
    data_dir: str
    run_dir: str
    steps: int = 100_000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-4
    warmup: int = 200
    lr_drop_step: int = 0  # multiply lr by 0.1 from this step on (0: never)
    clip_grad: float = 1.0
    ema: float = 0.999  # decay of the exponential moving average of the weights that export ships (0: off)
    seed: int = 0
    workers: int = 2
    val_percent: float = 2.0
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 200
    compile: bool = True
    bf16: bool | None = None  # None: bf16 autocast on CUDA and where the CPU computes bf16 natively
    device: str = "cpu"
    N: int = 128
    M: int = 192
    lambdas: tuple[float, ...] = field(default=DEFAULT_LAMBDAS)
    context: str = "none"  # see ModelConfig.context
    channel_groups: tuple[int, ...] = ()  # see ModelConfig.channel_groups
    lowest_position: float = DEFAULT_LOWEST_POSITION  # see ModelConfig; a fine-tune inherits its init's scale
    init: str | None = None  # weights to start from (checkpoint or shipped model)
    prior_steps: int = 0  # training the --init weights had already had (counted in exported cards)
    prior_seconds: float = 0.0
    prior_gpu_seconds: float | None = None  # of prior_seconds, those on a GPU; None: not recorded (older runs)
    balance_levels: bool = False  # weight each lambda level's loss by 1/(its running mean): see LevelBalance
    level_weights: tuple[float, ...] = ()  # how often each lambda level is drawn, relative; (): uniform


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX; elsewhere bf16 is emulated and ~10x slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def lr_at(cfg: TrainConfig, step: int) -> float:
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_drop_step and step >= cfg.lr_drop_step:
        lr *= 0.1
    return lr


def rd_loss(out: dict, x: torch.Tensor, lam: torch.Tensor) -> dict:
    """Rate-distortion loss: its batch mean (`loss`, what the log reports) and each sample's (`per_sample`)."""
    num_px = x.shape[2] * x.shape[3]
    bits_y = -torch.log2(out["y_lik"]).flatten(1).sum(1)
    bits_z = -torch.log2(out["z_lik"]).flatten(1).sum(1)
    bpp = (bits_y + bits_z) / num_px
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    per_sample = bpp + lam * 255.0**2 * mse
    return {"loss": per_sample.mean(), "per_sample": per_sample, "bpp": bpp.mean(), "mse": mse.mean()}


def check_level_weights(weights: tuple[float, ...], levels: int) -> None:
    """ValueError unless `weights` is empty (uniform) or one non-negative number per level, not all zero."""
    if not weights:
        return
    if len(weights) != levels:
        raise ValueError(f"--level-weights gives {len(weights)} weights for {levels} lambda levels")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise ValueError("--level-weights must be non-negative numbers, not all zero")


def level_sampler(weights: tuple[float, ...], levels: int, gen: torch.Generator):
    """Draws each sample's lambda level: uniformly, or in proportion to `weights` (one per level), e.g. to give
    the extreme levels, whose curve trails most, more steps. Uniform keeps the sampler's old random stream."""
    check_level_weights(weights, levels)
    if not weights:
        return lambda n: torch.randint(0, levels, (n,), generator=gen)
    probs = torch.tensor(weights, dtype=torch.float64)
    return lambda n: torch.multinomial(probs, n, replacement=True, generator=gen)


class LevelBalance:
    """Per-sample loss weights that give every lambda level the same pull on the shared weights.

    A plain sum of R + lambda*D lets the highest levels, whose losses are about 20x the lowest ones', set the
    direction of the shared transforms. Dividing each level's loss by its running mean makes the gradient that
    of the sum of log losses: a relative improvement counts the same at every level, as it does in BD-rate.
    Weight x level mean is the mean of the level means, so the weighted loss keeps the plain loss's scale."""

    def __init__(self, levels: int, decay: float = 0.99, state: torch.Tensor | None = None):
        self.decay = decay
        self.mean = torch.full((levels,), float("nan")) if state is None else state.detach().clone().float()

    @torch.no_grad()
    def weights(self, level: torch.Tensor, per_sample: torch.Tensor) -> torch.Tensor:
        """Update the running means with this batch's losses, then weigh its samples (on per_sample's device)."""
        level, losses = level.cpu(), per_sample.detach().float().cpu()
        for lv in level.unique().tolist():
            batch_mean = float(losses[level == lv].mean())
            old = float(self.mean[lv])
            self.mean[lv] = batch_mean if math.isnan(old) else self.decay * old + (1 - self.decay) * batch_mean
        w = self.mean[~self.mean.isnan()].mean() / self.mean[level].clamp_min(1e-6)
        return w.to(per_sample.device, per_sample.dtype)

    def state_dict(self) -> torch.Tensor:
        return self.mean.clone()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("VAECODEC_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if world > 1 else 0
    return rank, world


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "last.pt"


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: TrainConfig, elapsed: float, gen,
                    ema: WeightAverage | None = None, balance: LevelBalance | None = None,
                    gpu_elapsed: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            **({"ema": ema.state_dict(), "ema_steps": ema.steps} if ema else {}),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "train_config": asdict(cfg),
            "model_config": model.config.to_dict(),
            "elapsed_seconds": elapsed,
            "gpu_elapsed_seconds": gpu_elapsed,  # of elapsed_seconds; a run may resume on another device
            **({"level_balance": balance.state_dict()} if balance else {}),
            "sampler_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


class WeightAverage:
    """Exponential moving average of the parameters (decay warmed up as (1 + n) / (10 + n)).

    Averaging the last ~1/(1 - decay) steps' weights removes much of the noise a constant learning rate leaves
    in them, much like a final learning-rate decay, without slowing the run that keeps training."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None, steps: int = 0):
        self.decay, self.steps = decay, steps
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.avg = [p.detach().clone() for p in self.params]
        if state:
            for a, n in zip(self.avg, self.names, strict=True):
                a.copy_(state[n])

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: a.detach().clone() for n, a in zip(self.names, self.avg, strict=True)}

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """The model holds the averaged weights inside the block (e.g. to validate them), its own after."""
        own = [p.detach().clone() for p in self.params]
        for p, a in zip(self.params, self.avg, strict=True):
            p.copy_(a)
        try:
            yield
        finally:
            for p, o in zip(self.params, own, strict=True):
                p.copy_(o)


@dataclass(frozen=True)
class History:
    """Training behind some weights, theirs and their --init ancestors': steps, wall-clock seconds, and the part
    of those seconds spent on a GPU (a GPU minute is worth CPU hours, so model cards name it apart)."""

    steps: int = 0
    seconds: float = 0.0
    gpu_seconds: float = 0.0


def _ran_on_gpu(tc: dict) -> bool:
    return str(tc.get("device", "cpu")) != "cpu"


def prior_gpu_seconds(tc: dict) -> float:
    """GPU seconds of a run's --init weights. Runs from before the field was recorded: read from the init file
    when it is still there (a GPU run followed by a CPU continuation), else none."""
    if tc.get("prior_gpu_seconds") is not None:
        return float(tc["prior_gpu_seconds"])
    init = tc.get("init")
    if not init or not Path(init).is_file():
        return 0.0
    try:
        return file_history(init).gpu_seconds
    except (OSError, RuntimeError, ValueError, KeyError):
        return 0.0


def training_history(state: dict) -> History:
    """The training behind a checkpoint, including that of the weights it started from."""
    tc = state.get("train_config", {})
    return History(int(state.get("step", 0)) + int(tc.get("prior_steps", 0)),
                   float(state.get("elapsed_seconds", 0.0)) + float(tc.get("prior_seconds", 0.0)),
                   prior_gpu_seconds(tc) + run_gpu_seconds(state))


def run_gpu_seconds(state: dict) -> float:
    """Seconds of a checkpoint's own run spent on a GPU. Checkpoints from before they were recorded: all of
    its seconds if the run that saved it was on a GPU (no run had then changed device on resume)."""
    if "gpu_elapsed_seconds" in state:
        return float(state["gpu_elapsed_seconds"])
    return float(state.get("elapsed_seconds", 0.0)) if _ran_on_gpu(state.get("train_config", {})) else 0.0


def model_history(info: dict) -> History:
    """The training behind a shipped model, from its "training" metadata. Files exported before GPU seconds
    were recorded: a GPU last run's own seconds (every run before the first GPU one was on CPU)."""
    tc = info.get("train_config", {})
    seconds = float(info.get("train_seconds", 0.0))
    if "gpu_seconds" in info:
        gpu = float(info["gpu_seconds"])
    else:
        gpu = seconds - float(tc.get("prior_seconds", 0.0)) if _ran_on_gpu(tc) else 0.0
    return History(int(info.get("steps", 0)), seconds, gpu)


def file_history(path: str) -> History:
    """The training behind a shipped model (.safetensors) or a checkpoint (.pt), without loading its weights."""
    if path.endswith(".safetensors"):
        from .model_io import read_metadata

        return model_history(json.loads(read_metadata(Path(path)).get("training", "{}")))
    return training_history(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


def init_model_config(path: str) -> dict:
    """The network config stored with --init weights (a shipped model or a checkpoint), read without loading
    the weights, so a run started from them keeps their lambda set and quality scale unless told otherwise."""
    if path.endswith(".safetensors"):
        from .model_io import read_metadata

        return json.loads(read_metadata(Path(path)).get("config", "{}"))
    # mmap: only the small config is read, not the whole checkpoint
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("model_config", {})


def inherited_lowest_position(init_config: dict, offset: int) -> float:
    """Where quality 1 sits in a run started from init weights: at the same rate as in those weights, so that a
    fine-tune keeps the quality scale. Each level added below the old lowest moves it up one position, but
    never above 0, so that every trained level stays reachable."""
    if not init_config:
        return DEFAULT_LOWEST_POSITION
    return min(float(init_config.get("lowest_position", 0.0)) + offset, 0.0)  # no field: old files, first λ


def lambdas_of(model_config: dict) -> list[float] | None:
    lams = model_config.get("lambdas")
    return [float(x) for x in lams] if lams else None


def load_init_weights(model: GainedHyperprior, path: str) -> History:
    """Start from a checkpoint (.pt) or a shipped model (.safetensors).

    Weights of a context-free model may start a checkerboard model, and those of a checkerboard model one with
    channel groups: the new context layers keep their fresh initialisation (which leaves the predictions
    unchanged until they learn). Returns the training those weights already had, so that a continued run's
    card counts the whole history.
    """
    if path.endswith(".safetensors"):
        from .model_io import load_float_state, read_metadata

        weights = load_float_state(path)
        meta = read_metadata(Path(path))
        info = json.loads(meta.get("training", "{}"))
        history = model_history(info)
        old = lambdas_of(json.loads(meta.get("config", "{}")))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights, history = state["model"], training_history(state)
        old = lambdas_of(state.get("model_config", {}))
    if old is not None and len(old) != len(model.config.lambdas):
        weights = extend_gain_levels(weights, old, model.config.lambdas)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    fresh = [k for k in missing if not k.startswith(("ctx.", "ctx_params.", "group_anchor.", "group_other."))]
    if fresh or unexpected:
        raise ValueError(f"{path} does not fit this architecture (missing {fresh[:3]}, unexpected {unexpected[:3]})")
    return history


def lambda_offset(old: list[float], new: tuple[float, ...]) -> int:
    """Where the init weights' lambdas sit inside a longer set that extends them at either end (ValueError if
    it does not)."""
    k = next((i for i in range(len(new) - len(old) + 1)
              if all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(new[i:i + len(old)], old, strict=True))), None)
    if k is None or len(old) < 2:
        raise ValueError(f"lambdas {list(new)} do not extend the init weights' lambdas {old} at either end")
    return k


def extend_gain_levels(weights: dict[str, torch.Tensor], old: list[float], new: tuple[float, ...]) -> dict:
    """Gains for a lambda set that extends the init weights' set at either end (e.g. lower lambdas, so that the
    lowest qualities become trained instead of extrapolated). Each new level starts at the log-linear
    extrapolation that the old model used at that position, so the extended model codes exactly as before at
    every quality until training moves the new levels."""
    k = lambda_offset(old, new)
    weights = dict(weights)
    for key in ("log_gain", "log_inv_gain"):
        lg = weights[key]
        rows = []
        for i in range(len(new)):
            p = i - k  # position in the old model
            lo = min(max(p, 0), len(old) - 2)
            rows.append(lg[p] if 0 <= p < len(old) else lg[lo] + (p - lo) * (lg[lo + 1] - lg[lo]))
        weights[key] = torch.stack(rows)
    return weights


@torch.no_grad()
def estimate_image(model: GainedHyperprior, img: torch.Tensor, level: float) -> tuple[float, torch.Tensor]:
    """One uint8 CHW image through the hard-quantized pass at `level`, cropped to a multiple of 64: the network's
    own bit estimate (bpp) and the 8-bit reconstruction error (1×3×H×W), without running the range coder."""
    x = img[None].float().to(next(model.parameters()).device) / 255.0
    h, w = x.shape[2] // 64 * 64, x.shape[3] // 64 * 64
    x = x[:, :, :h, :w]
    out = model.estimate(x, level)
    bits = -torch.log2(out["y_lik"]).sum() - torch.log2(out["z_lik"]).sum()
    return float(bits) / (h * w), (out["x_hat"].clamp(0, 1) * 255).round() - x * 255


@torch.no_grad()
def validate(model: GainedHyperprior, images: list[torch.Tensor], levels: list[int]) -> dict:
    model.eval()
    result = {}
    for level in levels:
        bpps, psnrs = [], []
        for img in images:
            bpp, err = estimate_image(model, img, level)
            bpps.append(bpp)
            psnrs.append(10 * math.log10(255.0**2 / max(float(err.pow(2).mean()), 1e-10)))
        result[str(level)] = {"bpp": sum(bpps) / len(bpps), "psnr": sum(psnrs) / len(psnrs)}
    model.train()
    return result


def validation_bd_rate(reference: dict, candidate: dict) -> float:
    """BD-rate (PSNR, percent) of one `validate` result against another: the number that picks what ships."""
    levels = sorted(reference, key=int)
    return bd_rate([reference[lv]["bpp"] for lv in levels], [reference[lv]["psnr"] for lv in levels],
                   [candidate[lv]["bpp"] for lv in levels], [candidate[lv]["psnr"] for lv in levels])


class StopRequest:
    """Ends a run cleanly at a step boundary, with a checkpoint, on SIGTERM/SIGINT or after a time budget.

    Repeats of a signal within REPEAT_GRACE seconds count as the same request (torchrun forwards a signal to
    its workers' process group, which may also have received it); a later one gets the signal's previous
    behaviour, so Ctrl-C twice still kills. Under DDP every rank stops at the same step (the flags are
    all-reduced), or the others would wait forever."""

    REPEAT_GRACE = 3.0

    def __init__(self, max_seconds: float | None, world: int = 1, device: torch.device | str = "cpu"):
        self.deadline = time.monotonic() + max_seconds if max_seconds else None
        self.world, self.device, self.reason, self._previous = world, device, None, {}
        self._first_at = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(sig, self._handle)
                self._previous[sig] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        import signal

        now = time.monotonic()
        if self._first_at is None:  # a run already out of time keeps that reason (and still exports)
            self._first_at = now
            self.reason = self.reason or signal.Signals(signum).name
            return
        if now - self._first_at < self.REPEAT_GRACE:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def due(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "max-time"
        if self.world > 1:  # 0: go on, 1: out of time, 2: a signal; every rank takes the largest
            code = 0 if self.reason is None else 1 if self.reason == "max-time" else 2
            flag = torch.tensor([float(code)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            agreed = int(flag.item())
            if agreed > code:
                self.reason = "max-time" if agreed == 1 else "a signal to another rank"
        return self.reason is not None


def train(cfg: TrainConfig, resume: bool = False, max_seconds: float | None = None) -> tuple[Path, str | None]:
    """Run (or continue) training up to cfg.steps; stops early, with a checkpoint, after max_seconds of this
    call's training loop or on SIGTERM/SIGINT, so it can be resumed from exactly there.

    Returns the checkpoint and why the run stopped early (None: it reached cfg.steps)."""
    rank, world = _distributed()
    run_dir = Path(cfg.run_dir)
    ckpt_file = checkpoint_path(run_dir)
    state = None
    if resume:
        if not ckpt_file.exists():
            raise FileNotFoundError(f"nothing to resume: {ckpt_file} does not exist")
        state = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    torch.manual_seed(cfg.seed + rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = torch.device(cfg.device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)

    if state:
        model_cfg = ModelConfig.from_dict(state["model_config"])
    else:
        model_cfg = ModelConfig(N=cfg.N, M=cfg.M, lambdas=tuple(cfg.lambdas), context=cfg.context,
                                channel_groups=tuple(cfg.channel_groups), lowest_position=cfg.lowest_position)
    model = GainedHyperprior(model_cfg).to(device)
    if state is None and cfg.init:
        prior = load_init_weights(model, cfg.init)
        cfg.prior_steps, cfg.prior_seconds, cfg.prior_gpu_seconds = prior.steps, prior.seconds, prior.gpu_seconds
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, elapsed, gpu_at_start = 0, 0.0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_seconds"])
        gpu_at_start = run_gpu_seconds(state)
        if world == 1:
            gen.set_state(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"])
        else:  # per-rank streams that do not repeat the crops of earlier steps
            gen.manual_seed(cfg.seed * 1000 + rank + 7919 * step)
            torch.manual_seed(cfg.seed + rank + 7919 * step)
    elapsed_at_start = elapsed
    model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema > 0:
        saved = state.get("ema") if state else None  # runs from before the average start it here
        ema = WeightAverage(model, cfg.ema, saved, int(state.get("ema_steps", 0)) if saved else 0)
    balance = None
    if cfg.balance_levels:
        balance = LevelBalance(len(model_cfg.lambdas), state=state.get("level_balance") if state else None)
    draw_levels = level_sampler(tuple(cfg.level_weights), len(model_cfg.lambdas), gen)

    paths = list_images(cfg.data_dir)
    train_paths, val_paths = split_images(paths, cfg.val_percent)
    if not train_paths:
        raise ValueError(f"no training images in {cfg.data_dir}")
    images = load_images(train_paths, cfg.workers)
    val_images = load_images(val_paths[:64], cfg.workers)
    if StackedCropSampler.fits(images, cfg.crop):  # the usual case: one batch in a few tensor operations
        sampler = StackedCropSampler(images, cfg.crop, gen, device)
        del images
    else:
        sampler = CropSampler(images, cfg.crop, gen)

    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    if cfg.bf16 is not None:
        autocast = cfg.bf16
    else:  # GPUs compute bf16 natively; CPUs only some
        autocast = cpu_has_native_bf16() if device.type == "cpu" else device.type == "cuda"
    if device.type == "cuda":  # the fp32 parts (hyperprior, entropy model) may use TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    precision = "bf16 autocast" if autocast else "fp32"
    if rank == 0:
        tqdm.write(f"precision: {precision} on {device}")
    L = len(model_cfg.lambdas)
    lambdas = torch.tensor(model_cfg.lambdas)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "config.json", "w") as f:
            json.dump({"train": asdict(cfg), "model": model_cfg.to_dict()}, f, indent=1)
    log = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    if log:  # each (re)start says what it ran with: the precision belongs to the machine, not the run
        log.write(json.dumps({"start": step, "precision": precision, "device": str(device), "world": world,
                              "batch_size": cfg.batch_size, "lr": cfg.lr}) + "\n")
        log.flush()
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc="train")
    t_last, acc = time.time(), {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
    model.train()
    stopped = None
    with StopRequest(max_seconds, world, device) as stop:
        while step < cfg.steps:
            for g in optimizer.param_groups:
                g["lr"] = lr_at(cfg, step)
            x = sampler.sample(cfg.batch_size).to(device).contiguous(memory_format=torch.channels_last)
            level = draw_levels(cfg.batch_size)
            out = net(x, level.to(device), autocast=autocast)
            terms = rd_loss(out, x, lambdas[level].to(device))
            if balance:
                terms["loss"] = (balance.weights(level, terms["per_sample"]) * terms["per_sample"]).mean()
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema:
                ema.update()
            step += 1
            for k in ("bpp", "mse"):
                acc[k] += float(terms[k].detach())
            acc["loss"] += float(terms["per_sample"].detach().mean())  # the plain loss, balanced or not
            acc["n"] += 1
            if rank != 0:
                if step < cfg.steps and stop.due():
                    stopped = stop.reason
                    break
                continue
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.time()
                elapsed += now - t_last
                n = acc["n"]
                mse = acc["mse"] / n
                rec = {
                    "step": step, "loss": acc["loss"] / n, "bpp": acc["bpp"] / n,
                    "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)), "lr": lr_at(cfg, step - 1),
                    "sec_per_step": (now - t_last) / n, "elapsed": round(elapsed, 1),
                }
                t_last, acc = now, {"loss": 0.0, "bpp": 0.0, "mse": 0.0, "n": 0}
                bar.set_postfix(loss=f"{rec['loss']:.3f}", bpp=f"{rec['bpp']:.3f}", psnr=f"{rec['psnr']:.2f}")
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if val_images and (step % cfg.val_every == 0 or step == cfg.steps):
                rec = {"step": step, "val": validate(model, val_images, [0, L // 2, L - 1])}
                if ema:
                    with ema.swapped_in():
                        rec["val_ema"] = validate(model, val_images, [0, L // 2, L - 1])
                log.write(json.dumps(rec) + "\n")
                log.flush()
            stopping = step < cfg.steps and stop.due()  # the last step ends the run anyway
            if stopping:  # the time since the last log line counts too
                now = time.time()
                elapsed, t_last = elapsed + now - t_last, now
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                gpu_elapsed = gpu_at_start + (elapsed - elapsed_at_start if device.type != "cpu" else 0.0)
                save_checkpoint(ckpt_file, model, optimizer, step, cfg, elapsed, gen, ema, balance, gpu_elapsed)
            if stopping:
                stopped = stop.reason
                log.write(json.dumps({"step": step, "stopped": stopped}) + "\n")
                log.flush()
                tqdm.write(f"stopped at step {step} ({stop.reason}); checkpoint {ckpt_file}, continue with --resume")
                break
    bar.close()
    if log:
        log.close()
    if world > 1:
        dist.barrier()  # nobody exits (and makes torchrun end the group) before rank 0 has saved
        dist.destroy_process_group()
    return ckpt_file, stopped

