import math

import numpy as np
import pytest
from conftest import SAMPLE, natural_image
from PIL import Image

from vaecodec.metrics import bd_rate, ms_ssim, ms_ssim_db, psnr


def test_psnr_of_a_known_error():
    a = np.full((8, 8, 3), 100, dtype=np.uint8)
    b = a + 5  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(a, a) == math.inf


def test_ms_ssim_identical_is_one_and_matches_the_reference_library():
    a = np.asarray(Image.open(SAMPLE).convert("RGB"))[:400, :500]
    assert ms_ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    b = np.clip(a.astype(int) + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    # pytorch_msssim 1.0 ms_ssim(data_range=255) of the same pair (float32 window there): 0.8847918584839811
    assert ms_ssim(a, b) == pytest.approx(0.8847918585, abs=1e-4)
    assert ms_ssim_db(0.9) == pytest.approx(10.0)


def test_ms_ssim_works_on_small_images():
    a = natural_image(40, 30)
    assert 0 < ms_ssim(a, np.clip(a.astype(int) + 9, 0, 255).astype(np.uint8)) < 1


def test_bd_rate_against_itself_is_zero_and_halved_rates_are_minus_fifty():
    rates = [0.2, 0.4, 0.8, 1.6]
    dists = [28.0, 31.0, 34.5, 38.0]
    assert bd_rate(rates, dists, rates, dists) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rates, dists, [r / 2 for r in rates], dists) == pytest.approx(-50.0, abs=1e-9)
    assert math.isnan(bd_rate(rates, dists, rates, [50, 51, 52, 53]))


def test_eval_end_to_end_writes_json_and_plot(tmp_path, tiny_model_path):
    import json

    from click.testing import CliRunner

    from vaecodec.cli import main

    for i in range(2):
        Image.fromarray(natural_image(64 + 16 * i, 48)).save(tmp_path / f"im{i}.png")
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--qualities", "10,60,100", "--compare", "jpeg,webp",
                                  "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"),
                                  "-m", str(tiny_model_path)])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["codecs"]) == {"vaecodec", "jpeg", "webp"} and report["images"] == 2
    assert len(report["codecs"]["vaecodec"]["images"]) == 6
    assert set(report["bd_rate"]) == {"jpeg", "webp"}
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_eval_baseline_reuses_classical_results_and_compares_the_models(tmp_path):
    """--baseline: the classical codecs are not run again, and the BD-rate against the baseline's own vaecodec curve
    (the previous model, when shipping a new one) is reported. The shipped model gives a curve with distinct points."""
    import json

    from click.testing import CliRunner

    from vaecodec.cli import main

    for i in range(2):
        Image.fromarray(natural_image(64 + 16 * i, 48)).save(tmp_path / f"im{i}.png")
    args = ["eval", str(tmp_path), "--qualities", "10,50,90"]
    r = CliRunner().invoke(main, args + ["--compare", "jpeg", "--json", str(tmp_path / "prev.json")])
    assert r.exit_code == 0, r.output
    prev = json.loads((tmp_path / "prev.json").read_text())
    prev["codecs"]["jpeg"]["points"][0]["psnr"] += 1.0  # a marker: reused results keep it, a new run would not
    for p in prev["codecs"]["vaecodec"]["points"]:
        p["bpp"] *= 2  # a baseline model that needs twice the bits for the same quality
    (tmp_path / "prev.json").write_text(json.dumps(prev))
    r = CliRunner().invoke(main, args + ["--compare", "jpeg", "--baseline", str(tmp_path / "prev.json"),
                                         "--json", str(tmp_path / "new.json")])
    assert r.exit_code == 0, r.output
    new = json.loads((tmp_path / "new.json").read_text())
    assert new["codecs"]["jpeg"] == prev["codecs"]["jpeg"]
    assert new["bd_rate_vs_baseline"]["psnr"] == pytest.approx(-50.0, abs=1e-6)
    assert new["bd_rate_vs_baseline"]["ms_ssim"] == pytest.approx(-50.0, abs=1e-6)
    assert "vs the baseline's vaecodec" in r.output
