import json

import numpy as np
from click.testing import CliRunner
from conftest import natural_image
from PIL import Image, ImageCms

from vaecodec.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def make_tree(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(natural_image(40, 30)).save(root / "a.png")
    Image.fromarray(natural_image(33, 20)).save(root / "sub" / "b.jpg")
    Image.fromarray(natural_image(20, 44)).save(root / "sub" / "deeper" / "c.webp")
    (root / "notes.txt").write_text("not an image, and not picked up")


def test_recursive_tree_is_mirrored_and_decoded_back(tmp_path, tiny_model_path):
    src, enc, dec = tmp_path / "src", tmp_path / "enc", tmp_path / "dec"
    make_tree(src)
    r = run("encode", src, "-r", "-o", enc, "-m", tiny_model_path, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(x["status"] == "ok" and x["bpp"] > 0 for x in rows)
    assert {p.relative_to(enc).as_posix() for p in enc.rglob("*.vae")} == {"a.vae", "sub/b.vae", "sub/deeper/c.vae"}
    r = run("decode", enc, "-r", "-o", dec, "-m", tiny_model_path, "--format", "png")
    assert r.exit_code == 0, r.output
    assert Image.open(dec / "sub" / "deeper" / "c.png").size == (20, 44)


def test_one_bad_file_does_not_stop_the_batch(tmp_path, tiny_model_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(natural_image(30 + i, 30)).save(src / f"ok{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = run("encode", src, "-o", tmp_path / "out", "-m", tiny_model_path)
    assert r.exit_code == 1
    assert "broken.png" in r.output and "3 file(s)" in r.output and "1 failed" in r.output
    assert len(list((tmp_path / "out").glob("*.vae"))) == 3


def test_skip_existing_resumes_and_force_overwrites(tmp_path, tiny_model_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(natural_image(30, 30 + i)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "im1.vae").write_bytes(b"earlier run")
    r = run("encode", src, "-o", out, "-m", tiny_model_path)
    assert r.exit_code == 1 and "already exists" in r.output and (out / "im1.vae").read_bytes() == b"earlier run"
    (out / "im2.vae").unlink()  # as if the run had been interrupted before it
    r = run("encode", src, "-o", out, "-m", tiny_model_path, "--skip-existing")
    assert r.exit_code == 0 and "encoded 1 file(s), 2 skipped" in r.output
    assert (out / "im2.vae").read_bytes()[:4] == b"\x89VAE" and (out / "im1.vae").read_bytes() == b"earlier run"
    r = run("encode", src, "-o", out, "-m", tiny_model_path, "--force")
    assert r.exit_code == 0 and (out / "im1.vae").read_bytes()[:4] == b"\x89VAE"


def test_parallel_workers_give_the_same_files(tmp_path, tiny_model_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        Image.fromarray(natural_image(40 + i, 32)).save(src / f"im{i}.png")
    assert run("encode", src, "-o", tmp_path / "one", "-m", tiny_model_path).exit_code == 0
    r = run("encode", src, "-o", tmp_path / "two", "-m", tiny_model_path, "-j", "2", "--threads", "1")
    assert r.exit_code == 0, r.output
    for f in (tmp_path / "one").iterdir():
        assert (tmp_path / "two" / f.name).read_bytes() == f.read_bytes()


def test_target_size_lands_at_or_just_under(tmp_path, tiny_model_path):
    png = tmp_path / "a.png"
    Image.fromarray(natural_image(128, 96)).save(png)
    sizes = []
    for q in (10, 100):
        run("encode", png, "-o", tmp_path / f"q{q}.vae", "-q", q, "-m", tiny_model_path)
        sizes.append((tmp_path / f"q{q}.vae").stat().st_size)
    target = (sizes[0] + sizes[1]) // 2
    r = run("encode", png, "-o", tmp_path / "t.vae", "--target-size", target, "-m", tiny_model_path, "--json")
    assert r.exit_code == 0, r.output
    got = (tmp_path / "t.vae").stat().st_size
    assert got <= target and got >= 0.9 * target


def test_icc_profile_and_exif_survive_and_strip_drops_them(tmp_path, tiny_model_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    png = tmp_path / "a.png"
    Image.fromarray(natural_image(30, 20)).save(png, icc_profile=icc, exif=exif)
    run("encode", png, "-o", tmp_path / "a.vae", "-m", tiny_model_path)
    run("decode", tmp_path / "a.vae", "-o", tmp_path / "b.png", "-m", tiny_model_path)
    with Image.open(tmp_path / "b.png") as im:
        assert im.info.get("icc_profile") == icc and im.getexif().get(0x010F) == "TestCam"
    run("encode", png, "-o", tmp_path / "s.vae", "-m", tiny_model_path, "--strip")
    run("decode", tmp_path / "s.vae", "-o", tmp_path / "s.png", "-m", tiny_model_path)
    with Image.open(tmp_path / "s.png") as im:
        assert "icc_profile" not in im.info


def test_cmyk_and_la_inputs(tmp_path, tiny_model_path):
    Image.fromarray(natural_image(24, 24)).convert("CMYK").save(tmp_path / "c.jpg")
    la = Image.fromarray(natural_image(24, 24)[:, :, 0]).convert("LA")
    la.putalpha(Image.fromarray(np.tile(np.arange(24, dtype=np.uint8) * 10, (24, 1))))
    la.save(tmp_path / "l.png")
    r = run("encode", tmp_path / "c.jpg", tmp_path / "l.png", "-o", tmp_path / "o", "-m", tiny_model_path)
    assert r.exit_code == 0 and "CMYK" in r.output
    run("decode", tmp_path / "o", "-o", tmp_path / "d", "-m", tiny_model_path)
    with Image.open(tmp_path / "d" / "l.png") as im:
        assert im.mode == "LA" and np.array_equal(np.asarray(im)[:, :, 1], np.asarray(la)[:, :, 1])
    with Image.open(tmp_path / "d" / "c.png") as im:
        assert im.mode == "RGB"


def test_tiled_transforms_match_whole_image(tiny_model_path):
    from vaecodec.codec import Codec

    rgb = natural_image(300, 200)
    whole, tiled = Codec(tiny_model_path, tile=1000), Codec(tiny_model_path, tile=4)
    a, b = whole.analyse(rgb, 70), tiled.analyse(rgb, 70)
    assert np.array_equal(a.z, b.z) and np.abs(a.y - b.y).max() <= 1 and (a.y != b.y).mean() < 1e-3
    x1, x2 = whole.synthesize(a, 70, (300, 200)), tiled.synthesize(a, 70, (300, 200))
    assert np.abs(x1.astype(int) - x2.astype(int)).max() <= 1


def test_max_memory_option_runs(tmp_path, tiny_model_path):
    png = tmp_path / "a.png"
    Image.fromarray(natural_image(200, 150)).save(png)
    r = run("encode", png, "-m", tiny_model_path, "--max-memory", "50")
    assert r.exit_code == 0, r.output


def test_sigterm_leaves_no_partial_outputs_and_skip_existing_finishes(tmp_path, tiny_model_path):
    import signal
    import subprocess
    import sys
    import time

    from vaecodec.container import unpack

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        Image.fromarray(natural_image(300, 200 + i)).save(src / f"im{i:02d}.png")
    cmd = [sys.executable, "-m", "vaecodec", "encode", str(src), "-o", str(out), "-m", str(tiny_model_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.vae"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err
    assert not list(out.glob(".*.part"))
    done = list(out.glob("*.vae"))
    assert 3 <= len(done) < 40
    for f in done:
        unpack(f.read_bytes())  # every output present is complete
    assert sorted(p.name for p in src.iterdir()) == [f"im{i:02d}.png" for i in range(40)]
    r = run("encode", src, "-o", out, "-m", tiny_model_path, "--skip-existing")
    assert r.exit_code == 0 and len(list(out.glob("*.vae"))) == 40


def test_unwritable_output_location_is_a_clear_error(tmp_path, tiny_model_path):
    png = tmp_path / "a.png"
    Image.fromarray(natural_image(30, 20)).save(png)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory is expected")
    r = run("encode", png, "-o", blocker / "sub" / "a.vae", "-m", tiny_model_path)
    assert r.exit_code == 1 and "cannot create its directory" in r.output and "internal" not in r.output


def test_two_inputs_with_one_output_name_are_refused(tmp_path, tiny_model_path):
    Image.fromarray(natural_image(20, 20)).save(tmp_path / "a.png")
    Image.fromarray(natural_image(20, 20)).save(tmp_path / "a.jpg")
    r = run("encode", tmp_path / "a.png", tmp_path / "a.jpg", "-o", tmp_path / "out", "-m", tiny_model_path)
    assert r.exit_code == 1 and "would both be written" in r.output
    assert not (tmp_path / "out").exists()


def test_format_names_like_jpg_and_tif(tmp_path, tiny_model_path):
    Image.fromarray(natural_image(20, 20)).save(tmp_path / "a.png")
    run("encode", tmp_path / "a.png", "-m", tiny_model_path)
    for fmt, pil in (("jpg", "JPEG"), ("tif", "TIFF")):
        r = run("decode", tmp_path / "a.vae", "-o", tmp_path / f"o.{fmt}", "--format", fmt, "-m", tiny_model_path)
        assert r.exit_code == 0, r.output
        with Image.open(tmp_path / f"o.{fmt}") as im:
            assert im.format == pil
    r = run("decode", tmp_path / "a.vae", "--format", "nonsense", "-o", tmp_path / "x.png", "-m", tiny_model_path)
    assert r.exit_code == 1 and "cannot write images as" in r.output
