import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import natural_image
from PIL import Image

from vaecodec.cli import main


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "photo.png"
    Image.fromarray(natural_image(70, 50)).save(p)
    return p


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_encode_decode_info_with_default_names(png, tiny_model_path):
    r = run("encode", png, "-m", tiny_model_path, "-q", "40")
    assert r.exit_code == 0, r.output
    vae = png.with_suffix(".vae")
    assert vae.exists()
    png.unlink()
    r = run("decode", vae, "-m", tiny_model_path)
    assert r.exit_code == 0, r.output
    assert Image.open(png).size == (70, 50)
    r = run("info", vae)
    assert r.exit_code == 0 and "70x50" in r.output and "quality 40" in r.output


def test_existing_output_is_not_overwritten_without_force(png, tiny_model_path, tmp_path):
    out = tmp_path / "out.vae"
    out.write_bytes(b"precious")
    r = run("encode", png, "-o", out, "-m", tiny_model_path)
    assert r.exit_code != 0 and "already exists" in r.output
    assert out.read_bytes() == b"precious"
    r = run("encode", png, "-o", out, "-m", tiny_model_path, "--force")
    assert r.exit_code == 0 and out.read_bytes()[:4] == b"\x89VAE"
    assert not list(tmp_path.glob(".*.part"))


def test_decode_refuses_to_overwrite_its_input(tmp_path, png, tiny_model_path):
    vae = tmp_path / "x.vae"
    assert run("encode", png, "-o", vae, "-m", tiny_model_path).exit_code == 0
    r = run("decode", vae, "-o", vae, "--format", "PNG", "-m", tiny_model_path, "--force")
    assert r.exit_code != 0 and vae.read_bytes()[:4] == b"\x89VAE"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"),
        (b"\x89VAE\x01\x00\x05", "truncated"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, tiny_model_path, content, message):
    bad = tmp_path / "bad.vae"
    bad.write_bytes(content)
    r = run("decode", bad, "-o", tmp_path / "o.png", "-m", tiny_model_path)
    assert r.exit_code == 1
    assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "o.png").exists()


def test_corrupted_and_truncated_real_files(tmp_path, png, tiny_model_path):
    vae = tmp_path / "x.vae"
    run("encode", png, "-o", vae, "-m", tiny_model_path)
    data = vae.read_bytes()
    for name, content in {"flip": data[:20] + bytes([data[20] ^ 4]) + data[21:], "cut": data[:-7]}.items():
        p = tmp_path / f"{name}.vae"
        p.write_bytes(content)
        r = run("decode", p, "-o", tmp_path / f"{name}.png", "-m", tiny_model_path)
        assert r.exit_code == 1 and ("damaged" in r.output or "truncated" in r.output)


def test_missing_input_and_missing_model(tmp_path, png):
    r = run("encode", tmp_path / "nope.png", "-o", tmp_path / "a.vae")
    assert r.exit_code == 1 and "no such file" in r.output
    r = run("encode", png, "-o", tmp_path / "a.vae", "-m", tmp_path / "nomodel.safetensors")
    assert r.exit_code == 1 and "model file not found" in r.output
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    r = run("encode", png, "-o", tmp_path / "a.vae", "-m", garbage)
    assert r.exit_code == 1 and "not a vaecodec model file" in r.output


def test_not_an_image_input(tmp_path, tiny_model_path):
    txt = tmp_path / "notes.png"
    txt.write_text("just text")
    r = run("encode", txt, "-m", tiny_model_path)
    assert r.exit_code == 1 and "not an image" in r.output and not (tmp_path / "notes.vae").exists()


def test_module_entry_point_and_version():
    r = subprocess.run([sys.executable, "-m", "vaecodec", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "vaecodec" in r.stdout


def test_decode_writes_format_from_extension(tmp_path, png, tiny_model_path):
    vae = tmp_path / "x.vae"
    run("encode", png, "-o", vae, "-m", tiny_model_path)
    r = run("decode", vae, "-o", tmp_path / "x.webp", "-m", tiny_model_path)
    assert r.exit_code == 0
    with Image.open(tmp_path / "x.webp") as im:
        assert im.format == "WEBP" and np.asarray(im).shape == (50, 70, 3)


def test_stdin_stdout_pipe(png, tiny_model_path):
    enc = subprocess.run([sys.executable, "-m", "vaecodec", "encode", "-", "-o", "-", "-m", str(tiny_model_path)],
                         input=png.read_bytes(), capture_output=True, timeout=120)
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout[:4] == b"\x89VAE"
    dec = subprocess.run([sys.executable, "-m", "vaecodec", "decode", "-", "-o", "-", "-m", str(tiny_model_path)],
                         input=enc.stdout, capture_output=True, timeout=120)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout[:4] == b"\x89PNG"


def test_errors_from_a_real_process_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "x.vae"
    bad.write_bytes(b"GIF89a" + b"\0" * 30)
    r = subprocess.run([sys.executable, "-m", "vaecodec", "decode", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "GIF" in r.stderr and "Traceback" not in r.stderr


def test_shipped_model_is_found_from_any_directory(tmp_path):
    code = "from vaecodec.model_io import default_model_path as d; p = d(); print(p.exists(), p.stat().st_size)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("True")


def test_usage_errors_are_one_line_with_exit_status_2():
    for args in (["--bogus"], ["encode", "x.png", "-q", "101"], ["nosuch"], ["decode"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vaecodec: error:") and "--help" in lines[0], r.output
