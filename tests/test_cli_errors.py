"""What a user can get wrong: one line on stderr, a non-zero exit, no traceback."""

import pytest
from conftest import QUICK, run_cli, run_main


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_path():
    r = run_main("train", "--data", "/nonexistent")
    assert_one_line_error(r, "/nonexistent", "does not exist", "--data")


def test_folder_without_the_files(tmp_path):
    assert_one_line_error(
        run_main("train", "--data", str(tmp_path)), "no dataset found in", str(tmp_path), "cnnlab data list"
    )


def test_corrupt_data_file(tmp_path, fashion_dir):
    import shutil

    shutil.copytree(fashion_dir, tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert_one_line_error(run_main("train", "--data", str(tmp_path / "d")), "train-images-idx3-ubyte.gz")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--epochs", "abc"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--optimizer", "lbfgs"], "--optimizer"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--set", "train.epochs"], "key=value"),
        (["--set", "train.nope=1"], "train.nope"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--device", "tpu"], "--device tpu"),
        (["no-such-recipe"], "unknown recipe"),
        (["missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_flags(args, needle, fashion_dir):
    assert_one_line_error(run_main("train", "--data", str(fashion_dir), *QUICK, *args), needle)


def test_out_is_a_file(tmp_path, fashion_dir):
    (tmp_path / "f").write_text("mine")
    assert_one_line_error(
        run_main("train", "--data", str(fashion_dir), "--out", str(tmp_path / "f"), *QUICK), "is a file"
    )
    assert (tmp_path / "f").read_text() == "mine"


def test_out_holds_an_earlier_run(tmp_path, fashion_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    assert_one_line_error(
        run_main("train", "--data", str(fashion_dir), "--out", str(tmp_path / "run"), *QUICK), "already holds files"
    )
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"


def test_help_has_an_example():
    r = run_main("train", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "cnnlab train" in r.stdout


def test_the_fast_exit_keeps_output_exit_codes_and_profilers(tmp_path):
    """`cnnlab` skips the interpreter's teardown after a command: what it printed is all there (the
    exit codes are checked by every test here), and a profiler still writes its figures at the end."""
    import subprocess
    import sys

    r = run_cli("data", "list")
    assert r.returncode == 0 and "fashion-mnist" in r.stdout and r.stdout.endswith("\n")
    stats = tmp_path / "profile.out"
    r = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "cnnlab", "data", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "fashion-mnist" in r.stdout
    assert stats.is_file() and stats.stat().st_size > 0
