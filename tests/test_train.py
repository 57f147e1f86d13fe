import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vaecodec.cli import main
from vaecodec.codec import Codec
from vaecodec.data import StackedCropSampler
from vaecodec.train import cpu_has_native_bf16, validation_bd_rate


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        base = rng.integers(0, 255, (1, 1, 3))
        ramp = np.linspace(0, 60, 96)[None, :, None]
        img = np.clip(base + ramp + rng.normal(0, 8, (80, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
    return d


TINY = ["--N", "16", "--M", "24", "--lambdas", "0.005,0.05", "--crop", "64", "--batch-size", "2",
        "--no-compile", "--no-bf16", "--log-every", "2", "--val-every", "4", "--ckpt-every", "2"]


def test_train_resume_export_and_use(image_dir, tmp_path):
    run_dir = tmp_path / "run"
    out = tmp_path / "m"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "4", *TINY])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert ckpt["step"] == 4 and "optimizer" in ckpt and ckpt["optimizer"]["state"]
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "6",
                                  "--resume", "--out", str(out)])
    assert r.exit_code == 0, r.output
    resumed = torch.load(run_dir / "last.pt", weights_only=False)
    assert resumed["step"] == 6
    assert ckpt["ema_steps"] == 4 and resumed["ema_steps"] == 6  # the average carried on, not restarted
    w4, a4, a6 = (t["g_a.0.weight"] for t in (ckpt["model"], ckpt["ema"], resumed["ema"]))
    assert not torch.allclose(a6, a4) and not torch.allclose(a6, w4)
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [2, 4, 6] and all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    assert any("val" in x for x in lines)
    starts = [x for x in lines if "start" in x]  # each (re)start logs the precision it resolved
    assert [x["start"] for x in starts] == [0, 4] and starts[0]["precision"] == "fp32"  # as told by --no-bf16
    # the resumed run was not told: precision belongs to the machine it runs on, not to the run
    assert starts[1]["precision"] == ("bf16 autocast" if cpu_has_native_bf16() else "fp32")
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 6 and card["parameters"] > 0
    assert "moving average" in card["weights"]
    assert any("val_ema" in x for x in lines)
    codec = Codec(out.with_suffix(".safetensors"))
    img = Image.open(next(image_dir.iterdir()))
    assert codec.decode(codec.encode(img, 50)).size == img.size


def test_fine_tuning_from_a_shipped_model_counts_its_training(image_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    # a context-free model starts a checkerboard one (the default): how the shipped model gained its context
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "r1"), "--steps", "4",
                                  "--out", str(first), "--context", "none", *TINY])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "r2"), "--steps", "2",
                                  "--init", str(first.with_suffix(".safetensors")), "--out", str(second), *TINY])
    assert r.exit_code == 0, r.output
    card = json.loads(second.with_suffix(".json").read_text())
    assert card["steps"] == 6 and card["train_config"]["prior_steps"] == 4
    assert json.loads(first.with_suffix(".json").read_text())["architecture"]["context"] == "none"
    assert card["architecture"]["context"] == "checkerboard"
    codec = Codec(second.with_suffix(".safetensors"))
    assert codec.model.context_int is not None
    img = Image.open(next(image_dir.iterdir()))
    assert codec.decode(codec.encode(img, 50)).size == img.size
    assert torch.load(tmp_path / "r2" / "last.pt", weights_only=False)["step"] == 2


def test_export_ships_the_weight_average_unless_told_not_to(image_dir, tmp_path):
    from vaecodec.model_io import load_float_state

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "3", "--ema", "0.5",
                                  *TINY])
    assert r.exit_code == 0, r.output
    state = torch.load(run / "last.pt", weights_only=False)
    for flag, expect in (("--ema", state["ema"]), ("--no-ema", state["model"])):
        out = tmp_path / f"m{flag}.safetensors"
        r = CliRunner().invoke(main, ["export", str(run), "-o", str(out), flag])
        assert r.exit_code == 0, r.output
        got = load_float_state(out)["g_a.0.weight"]
        assert torch.allclose(got, expect["g_a.0.weight"].float().half().float())
    assert not torch.allclose(state["ema"]["g_a.0.weight"], state["model"]["g_a.0.weight"])


def test_export_averages_several_checkpoints_of_one_run(image_dir, tmp_path):
    import shutil

    from vaecodec.model_io import load_float_state

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "2", *TINY])
    assert r.exit_code == 0, r.output
    shutil.copy(run / "last.pt", tmp_path / "snap2.pt")
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "4", "--resume"])
    assert r.exit_code == 0, r.output
    a, b = (torch.load(p, weights_only=False) for p in (tmp_path / "snap2.pt", run / "last.pt"))
    for flag, key in (("--ema", "ema"), ("--no-ema", "model")):
        out = tmp_path / f"avg{flag}.safetensors"
        r = CliRunner().invoke(main, ["export", str(tmp_path / "snap2.pt"), str(run), "-o", str(out), flag])
        assert r.exit_code == 0, r.output
        mean = (a[key]["g_s.0.weight"].double() + b[key]["g_s.0.weight"].double()) / 2
        got = load_float_state(out)["g_s.0.weight"].double()
        assert torch.allclose(got, mean.float().half().double())
        assert not torch.allclose(got, b[key]["g_s.0.weight"].float().half().double())
        card = json.loads(out.with_suffix(".json").read_text())
        assert card["steps"] == 4 and "uniform average of 2" in card["weights"] and "2, 4" in card["weights"]
    # another network cannot be averaged in, and a file that is no checkpoint is a one-line error
    other = tmp_path / "other"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(other), "--steps", "1", *TINY,
                                  "--N", "8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(run), str(other), "-o", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 1 and "different network" in r.output and not (tmp_path / "x.safetensors").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(main, ["export", str(run), str(junk), "-o", str(tmp_path / "y.safetensors")])
    assert r.exit_code == 1 and "not a vaecodec training checkpoint" in r.output


def test_context_cannot_change_on_resume(image_dir, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "1", *TINY])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "2", "--resume",
                                  "--context", "none"])
    assert r.exit_code == 1 and "cannot change" in r.output


def test_resume_without_checkpoint_is_a_clear_error(image_dir, tmp_path):
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 1 and "nothing to resume" in r.output


def test_ddp_two_processes_gloo(image_dir, tmp_path):
    env = {**os.environ, "VAECODEC_DDP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaecodec", "train", str(image_dir), "--run-dir", str(tmp_path / "ddp"), "--steps", "3", *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)["step"] == 3
    # Out of time: both ranks stop at the same step (else the all-reduce would hang), checkpoint included.
    r = subprocess.run([*cmd[:-len(TINY) - 2], "--steps", "1000", "--resume", "--max-time", "0.01s"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)["step"] == 4


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("1h30m", 5400), ("01:30:00", 5400), ("3600", 3600),
                                           ("2.5s", 2.5), ("1h", 3600), ("10:00", 600)])
def test_durations(text, seconds):
    from vaecodec.cli_train import DURATION

    assert DURATION.convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["soon", "0", "1x", "1:2:3:4", "-5m", "1h30", "1h-30m", "30m1h", "1:90", "inf"])
def test_bad_durations_are_one_line_usage_errors(image_dir, tmp_path, text):
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "r"), "--max-time", text])
    assert r.exit_code == 2 and "--max-time" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_max_time_stops_with_a_checkpoint_and_still_exports(image_dir, tmp_path):
    import signal

    run, out = tmp_path / "run", tmp_path / "m"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "1000",
                                  "--max-time", "0.01s", "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    assert signal.getsignal(signal.SIGINT) is handlers[0]  # training leaves Ctrl-C as it found it
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 1  # not a multiple of --ckpt-every 2
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert lines[-1] == {"step": 1, "stopped": "max-time"}
    assert json.loads(out.with_suffix(".json").read_text())["steps"] == 1
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "3", "--resume"])
    assert r.exit_code == 0, r.output
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3


def test_sigterm_stops_at_a_step_with_a_checkpoint(image_dir, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vaecodec", "train", str(image_dir), "--run-dir", str(run), "--steps", "100000",
           *TINY[:-2], "--ckpt-every", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and '"loss"' in log.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "continue with --resume" in err and "Traceback" not in err
    stopped = [json.loads(x) for x in log.read_text().splitlines()][-1]
    assert stopped["stopped"] == "SIGTERM"
    assert torch.load(run / "last.pt", weights_only=False)["step"] == stopped["step"] >= 2


def test_model_card_from_an_eval_report(tmp_path, tiny_model_path):
    import shutil

    model = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_model_path, model)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(imgs / "a.png")
    r = CliRunner().invoke(main, ["eval", str(imgs), "--qualities", "20,80", "--compare", "jpeg",
                                  "--json", str(tmp_path / "r.json"), "-m", str(model)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["card", str(model), "--eval", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    text = model.with_suffix(".md").read_text()
    assert "Model card: `tiny`" in text and "| 20 |" in text and "| jpeg |" in text
    assert "positions -2..2 among" in text and "effort 1" in text  # the quality mapping and encoder setting


def test_a_repeated_signal_is_one_request_until_the_grace_has_passed():
    import signal

    from vaecodec.train import StopRequest

    with StopRequest(None) as stop:
        assert not stop.due()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a forwarded copy: not a second Ctrl-C
        assert stop.due() and stop.reason == "SIGINT"
        stop._first_at -= StopRequest.REPEAT_GRACE
        with pytest.raises(KeyboardInterrupt):  # a real second Ctrl-C kills
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_after_the_time_is_up_keeps_the_reason():
    import signal

    from vaecodec.train import StopRequest

    with StopRequest(1e-9) as stop:
        time.sleep(0.01)
        assert stop.due() and stop.reason == "max-time"
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. a job scheduler while the final checkpoint is written
        assert stop.reason == "max-time"  # so the run still counts as complete and --out exports


def _stop_agreement_worker(rank: int, store: str, results: str) -> None:
    import torch.distributed as dist

    from vaecodec.train import StopRequest

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    stop = StopRequest(1e-9 if rank == 0 else None, world=2)  # only rank 0 runs out of time
    with open(f"{results}.{rank}", "w") as f:
        f.write(f"{stop.due()} {stop.reason}")
    dist.destroy_process_group()


def test_ddp_ranks_agree_to_stop_when_one_runs_out_of_time(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_stop_agreement_worker, args=(str(tmp_path / "store"), str(tmp_path / "r")), nprocs=2)
    assert (tmp_path / "r.0").read_text() == "True max-time"
    assert (tmp_path / "r.1").read_text() == "True max-time"


def test_validation_bd_rate_pairs_levels_by_number_not_by_order():
    ref = {"0": {"bpp": 0.3, "psnr": 27.0}, "4": {"bpp": 1.0, "psnr": 33.0}, "10": {"bpp": 2.5, "psnr": 38.0}}
    halved = {lv: {"bpp": ref[lv]["bpp"] / 2, "psnr": ref[lv]["psnr"]} for lv in ("10", "0", "4")}
    assert validation_bd_rate(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert validation_bd_rate(ref, halved) == pytest.approx(-50.0, abs=1e-6)
    assert validation_bd_rate(halved, ref) == pytest.approx(100.0, abs=1e-6)


def test_fine_tuning_keeps_or_extends_the_init_models_lambdas(image_dir, tmp_path):
    """Without --lambdas a run started with --init keeps the λ set of its weights (a 10-λ hp2 stays 10-λ);
    --lambdas may extend that set at either end."""
    first = tmp_path / "first"
    no_lambdas = [a for i, a in enumerate(TINY) if "--lambdas" not in TINY[max(i - 1, 0):i + 1]]
    assert "--lambdas" not in no_lambdas and "--N" in no_lambdas
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "r1"), "--steps", "2",
                                  "--out", str(first), *TINY])
    assert r.exit_code == 0, r.output
    init = str(first.with_suffix(".safetensors"))
    for run, extra, want in (("keep", [], [0.005, 0.05]),
                             ("extend", ["--lambdas", "0.001,0.005,0.05"], [0.001, 0.005, 0.05])):
        r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / run), "--steps", "1",
                                      "--init", init, *no_lambdas, *extra])
        assert r.exit_code == 0, r.output
        state = torch.load(tmp_path / run / "last.pt", weights_only=False)
        assert state["model_config"]["lambdas"] == want
        # the quality scale follows: -2 (a fresh run's) stays, one level added below moves it up to -1
        assert state["model_config"]["lowest_position"] == {"keep": -2.0, "extend": -1.0}[run]
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "bad"), "--steps", "1",
                                  "--init", init, *no_lambdas, "--lambdas", "0.001,0.003,0.05"])
    assert r.exit_code == 1 and "do not extend" in r.output


def test_a_fine_tune_keeps_the_quality_scale_of_its_init_weights():
    from vaecodec.network import DEFAULT_LOWEST_POSITION
    from vaecodec.train import inherited_lowest_position

    ten = {"lambdas": [0.1] * 10, "lowest_position": 0.0}
    assert inherited_lowest_position(ten, 0) == 0.0  # the shipped 10-λ hp2 stays at 0, not a fresh run's -2
    assert inherited_lowest_position({**ten, "lowest_position": -2.0}, 2) == 0.0  # 8 λ at -2, two added below
    assert inherited_lowest_position({**ten, "lowest_position": -2.0}, 3) == 0.0  # never above the lowest level
    assert inherited_lowest_position({**ten, "lowest_position": -2.0}, 1) == -1.0
    assert inherited_lowest_position({"lambdas": [0.1, 0.2]}, 0) == 0.0  # files from before the field
    assert inherited_lowest_position({}, 0) == DEFAULT_LOWEST_POSITION


@pytest.mark.parametrize("name", ["junk.pt", "junk.safetensors"])
def test_a_foreign_init_file_is_a_one_line_error(image_dir, tmp_path, name):
    bad = tmp_path / name
    bad.write_bytes(b"not weights")
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "run"), "--init", str(bad)])
    assert r.exit_code == 1 and "not a vaecodec model or training checkpoint" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "run" / "last.pt").exists()


def test_level_balance_gives_every_level_the_same_pull():
    from vaecodec.train import LevelBalance

    bal = LevelBalance(3)
    level = torch.tensor([0, 0, 1, 1])
    losses = torch.tensor([0.1, 0.3, 2.0, 4.0])  # level means 0.2 and 3.0; level 2 not seen yet
    w = bal.weights(level, losses)
    assert torch.allclose(w[:2], w[:2].mean()) and torch.allclose(w[2:], w[2:].mean())  # per level, not per image
    assert torch.isclose(w[0] * 0.2, torch.tensor(1.6)) and torch.isclose(w[2] * 3.0, torch.tensor(1.6))
    # weight x level mean: the same for every level, the mean of the seen levels' means (the loss keeps its scale)
    assert torch.isnan(bal.state_dict()[2])
    w2 = bal.weights(torch.tensor([0]), torch.tensor([1.2]))  # a running mean: 0.99 * 0.2 + 0.01 * 1.2
    assert torch.isclose(bal.state_dict()[0], torch.tensor(0.21))
    assert torch.isclose(LevelBalance(3, state=bal.state_dict()).weights(torch.tensor([0]), torch.tensor([0.21]))[0],
                         w2[0], rtol=1e-3)  # restored from a checkpoint, it carries on


def test_balanced_levels_train_differently_and_resume_with_their_means(image_dir, tmp_path):
    runs = {}
    for flag in ("--no-balance-levels", "--balance-levels"):
        run_dir = tmp_path / flag
        r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "2", flag,
                                      *TINY])
        assert r.exit_code == 0, r.output
        runs[flag] = torch.load(run_dir / "last.pt", weights_only=False)
    plain, balanced = runs["--no-balance-levels"], runs["--balance-levels"]
    assert "level_balance" not in plain and balanced["train_config"]["balance_levels"]
    means = balanced["level_balance"]
    assert means.shape == (2,) and torch.isfinite(means[~means.isnan()]).all() and not means.isnan().all()
    assert not torch.allclose(plain["model"]["g_a.0.weight"], balanced["model"]["g_a.0.weight"])
    # resumed, the run carries on from its saved means: exactly as a run that never stopped
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "--balance-levels"),
                                  "--steps", "4", "--resume", "--no-bf16"])
    assert r.exit_code == 0, r.output
    straight = tmp_path / "straight"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(straight), "--steps", "4",
                                  "--balance-levels", *TINY])
    assert r.exit_code == 0, r.output
    resumed = torch.load(tmp_path / "--balance-levels" / "last.pt", weights_only=False)
    assert torch.allclose(resumed["level_balance"], torch.load(straight / "last.pt", weights_only=False)[
        "level_balance"], equal_nan=True)
    # a plain run can switch balancing on when it resumes
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "--no-balance-levels"),
                                  "--steps", "3", "--resume", "--balance-levels"])
    assert r.exit_code == 0, r.output
    switched = torch.load(tmp_path / "--no-balance-levels" / "last.pt", weights_only=False)
    assert switched["train_config"]["balance_levels"] and not switched["level_balance"].isnan().all()


def test_the_log_reports_the_plain_loss_when_levels_are_balanced(image_dir, tmp_path, monkeypatch):
    from vaecodec.train import LevelBalance

    monkeypatch.setattr(LevelBalance, "weights", lambda self, level, per_sample: torch.full_like(per_sample, 2.0))
    first = {}
    for flag in ("--no-balance-levels", "--balance-levels"):
        run_dir = tmp_path / flag
        r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "1", flag,
                                      *TINY, "--log-every", "1"])
        assert r.exit_code == 0, r.output
        lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
        first[flag] = next(x["loss"] for x in lines if "loss" in x)
    assert first["--balance-levels"] == pytest.approx(first["--no-balance-levels"], rel=1e-6)


def test_the_card_of_a_balanced_run_says_so(image_dir, tmp_path):
    run_dir, model = tmp_path / "run", tmp_path / "bal.safetensors"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "2",
                                  "--balance-levels", "--level-weights", "1,2.5", *TINY])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(run_dir / "last.pt"), "-o", str(model)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", str(image_dir), "--qualities", "50", "--compare", "", "--json",
                                  str(tmp_path / "r.json"), "-m", str(model)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["card", str(model), "--eval", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    card = model.with_suffix(".md").read_text()
    assert "divided by its running mean (--balance-levels)" in card
    assert "levels drawn with relative weights 1, 2.5 (--level-weights)" in card


def test_level_sampler_draws_levels_in_proportion_to_their_weights():
    from vaecodec.train import level_sampler

    draws = level_sampler((3.0, 1.0, 0.0), 3, torch.Generator().manual_seed(0))(8000)
    counts = torch.bincount(draws, minlength=3).tolist()
    assert counts[2] == 0 and abs(counts[0] / 8000 - 0.75) < 0.03 and abs(counts[1] / 8000 - 0.25) < 0.03
    # uniform keeps the exact random stream of runs from before the option
    uniform = level_sampler((), 3, torch.Generator().manual_seed(5))(16)
    assert torch.equal(uniform, torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="2 weights for 3"):
        level_sampler((1.0, 2.0), 3, torch.Generator())


def test_level_weights_steer_which_levels_train_and_can_change_on_resume(image_dir, tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "3",
                                  "--balance-levels", "--level-weights", "0,1", *TINY])
    assert r.exit_code == 0, r.output
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert tuple(state["train_config"]["level_weights"]) == (0.0, 1.0)
    means = state["level_balance"]
    assert means[0].isnan() and means[1].isfinite()  # level 0 was never drawn, so it has no running mean yet
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run_dir), "--steps", "8",
                                  "--resume", "--level-weights", "uniform"])
    assert r.exit_code == 0, r.output
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert tuple(state["train_config"]["level_weights"]) == () and state["level_balance"].isfinite().all()


@pytest.mark.parametrize("weights, message", [("1,2,3", "3 weights for 2"), ("a,b", "comma-separated numbers"),
                                              ("-1,2", "non-negative"), ("0,0", "not all zero")])
def test_bad_level_weights_are_refused_before_training(image_dir, tmp_path, weights, message):
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(tmp_path / "run"), "--steps", "1",
                                  "--level-weights", weights, *TINY])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run" / "last.pt").exists()


def _dihedral_views(patch: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(p, k, dims=(1, 2)) for p in (patch, patch.flip(2)) for k in range(4)]


def test_stacked_sampler_cuts_flipped_and_turned_crops_of_the_images():
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8, generator=gen) for _ in range(3)]
    sampler = StackedCropSampler(images, 6, torch.Generator().manual_seed(1))
    batch = sampler.sample(64)
    assert batch.shape == (64, 3, 6, 6) and batch.dtype == torch.float32
    seen_turns = set()
    for crop in (batch * 255).round().byte():
        matches = [(i, t, left, v) for i, img in enumerate(images) for t in range(7) for left in range(5)
                   for v, view in enumerate(_dihedral_views(img[:, t:t + 6, left:left + 6])) if torch.equal(view, crop)]
        assert matches, "every sample is a flipped/turned window of one image"
        seen_turns.update(m[3] for m in matches)
    assert len(seen_turns) == 8  # all eight flips and turns occur
    again = StackedCropSampler(images, 6, torch.Generator().manual_seed(1)).sample(64)
    assert torch.equal(again, batch)  # the seed decides the batch


def test_stacked_sampler_is_only_for_same_size_images_at_least_one_crop_big():
    a, b = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 9, dtype=torch.uint8)
    assert StackedCropSampler.fits([a, a], 8)
    assert not StackedCropSampler.fits([a, b], 8)
    assert not StackedCropSampler.fits([a, a], 9)
    with pytest.raises(ValueError):
        StackedCropSampler([a, b], 8, torch.Generator())


@pytest.mark.parametrize("context", ["none", "checkerboard"])
def test_the_hard_quantized_pass_runs_on_the_device_of_the_weights(context):
    # the in-run validation once mixed a CPU tensor into a GPU model; the meta device stands in for a GPU here
    from vaecodec.network import GainedHyperprior, ModelConfig

    model = GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.005, 0.05), context=context)).to("meta")
    out = model.estimate(torch.empty(1, 3, 64, 64, device="meta"), 0.5)
    assert out["x_hat"].device.type == "meta" and out["x_hat"].shape == (1, 3, 64, 64)


def test_the_card_names_gpu_time_apart_from_the_cpu_hours():
    from vaecodec.model_card import training_time_text

    cpu = {"train_seconds": 7200, "gpu_seconds": 0, "train_config": {"device": "cpu", "prior_seconds": 3600}}
    assert training_time_text(cpu).startswith("2.00 h wall-clock on 2 CPU cores")
    # a GPU last run, exported before gpu_seconds was recorded: the last run's own seconds
    gpu = {"train_seconds": 7200 + 480, "train_config": {"device": "cuda", "prior_seconds": 7200}}
    text = training_time_text(gpu)
    assert "2.13 h wall-clock in all: 8.0 min of it on one GPU (the last run, on cuda" in text
    # a CPU run continuing GPU-trained weights keeps their GPU minutes apart
    after = {"train_seconds": 7680 + 3600, "gpu_seconds": 480, "train_config": {"device": "cpu", "prior_seconds": 7680}}
    text = training_time_text(after)
    assert "3.13 h wall-clock in all: 8.0 min of it on one GPU (before the last run" in text
    assert "the rest on 2 CPU cores" in text


def test_gpu_seconds_follow_the_weights_through_init_and_export(tmp_path):
    from vaecodec.model_io import export_model
    from vaecodec.network import GainedHyperprior, ModelConfig
    from vaecodec.train import file_history, load_init_weights, training_history

    lams = (0.005, 0.05)
    gpu_info = {"steps": 500, "train_seconds": 4000, "train_config": {"device": "cuda", "prior_seconds": 3700}}
    gpu_file = tmp_path / "gpu.safetensors"
    export_model(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=lams)), gpu_file, "g",
                 extra_meta={"training": gpu_info})
    prior = load_init_weights(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=lams)), str(gpu_file))
    assert (prior.steps, prior.seconds, prior.gpu_seconds) == (500, 4000.0, 300.0)
    # a CPU run from those weights: 100 steps, 60 s
    state = {"step": 100, "elapsed_seconds": 60.0,
             "train_config": {"device": "cpu", "init": str(gpu_file), "prior_steps": 500, "prior_seconds": 4000.0,
                              "prior_gpu_seconds": 300.0}}
    h = training_history(state)
    assert (h.steps, h.seconds, h.gpu_seconds) == (600, 4060.0, 300.0)
    # a checkpoint from before prior_gpu_seconds was recorded reads it from its init file while that is there
    del state["train_config"]["prior_gpu_seconds"]
    assert training_history(state).gpu_seconds == 300.0
    gpu_file.unlink()
    assert training_history(state).gpu_seconds == 0.0
    # a run that changed device on resume counts the seconds it recorded on the GPU, whatever device it ended on
    assert training_history({**state, "gpu_elapsed_seconds": 40.0}).gpu_seconds == 40.0
    # a GPU run's own seconds count as GPU seconds; a .pt checkpoint is read the same way
    torch.save({"step": 10, "elapsed_seconds": 20.0,
                "train_config": {"device": "cuda", "prior_seconds": 100.0, "prior_gpu_seconds": 30.0}},
               tmp_path / "c.pt")
    assert file_history(str(tmp_path / "c.pt")).gpu_seconds == 50.0


@pytest.mark.parametrize("device, message", [("bogus", "unknown --device 'bogus'"),
                                             ("cuda", "no CUDA device is available")])
def test_a_device_this_machine_cannot_run_is_a_one_line_error(image_dir, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    for args in (["train", str(image_dir), "--run-dir", str(tmp_path / "run"), "--device", device, *TINY],
                 ["encode", str(next(image_dir.glob("*.png"))), "-o", str(tmp_path / "x.vae"), "--device", device]):
        r = CliRunner().invoke(main, args)  # (encode's --device is a choice of cpu and cuda)
        assert r.exit_code != 0 and (message if args[0] == "train" else device) in r.output
        assert "internal error" not in r.output and r.output.strip().count("\n") == 0
        assert not (tmp_path / "run").exists()


def test_a_gpu_run_resumed_on_a_cpu_machine_asks_for_device_cpu(image_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    run = tmp_path / "run"
    first = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "2", *TINY])
    assert first.exit_code == 0, first.output
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["train_config"]["device"] = "cuda"  # as saved by a run on a GPU machine, 120 s of it
    ckpt["elapsed_seconds"] = ckpt["gpu_elapsed_seconds"] = 120.0
    torch.save(ckpt, run / "last.pt")
    args = ["train", str(image_dir), "--run-dir", str(run), "--resume", "--steps", "4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "resume it with --device cpu" in r.output and "internal error" not in r.output
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "--no-compile", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 4
    card = json.loads((tmp_path / "m.json").read_text())  # the GPU's seconds stay GPU seconds after a CPU resume
    assert card["gpu_seconds"] == 120 and card["train_seconds"] >= 120


def test_a_run_from_gpu_weights_resumed_from_an_older_checkpoint_keeps_their_gpu_minutes(image_dir, tmp_path):
    from vaecodec.model_io import export_model
    from vaecodec.network import GainedHyperprior, ModelConfig

    gpu_file = tmp_path / "gpu.safetensors"
    info = {"steps": 500, "train_seconds": 4000, "train_config": {"device": "cuda", "prior_seconds": 3700}}
    export_model(GainedHyperprior(ModelConfig(N=16, M=24, lambdas=(0.005, 0.05))), gpu_file, "g",
                 extra_meta={"training": info})
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--steps", "2", "--init",
                                  str(gpu_file), *TINY])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["train_config"]["prior_gpu_seconds"] == 300
    del ckpt["train_config"]["prior_gpu_seconds"]  # as written before the field existed
    torch.save(ckpt, run / "last.pt")
    r = CliRunner().invoke(main, ["train", str(image_dir), "--run-dir", str(run), "--resume", "--steps", "3",
                                  "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["steps"] == 503 and card["gpu_seconds"] == 300
