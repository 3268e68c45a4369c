"""The parser's contract: every command's --help builds, each takes the shared flags it should (and no other),
and a repeated --set reaches the command in full, in order."""

import pytest

from cnnlab.cli import build_parser
from cnnlab.config import parse_set

# each leaf command with the fewest arguments it parses with
COMMANDS = {
    "train": [],
    "data list": [],
    "data check": ["fashion-mnist"],
    "models list": [],
    "summary": ["kth-default"],
    "evaluate": ["runs/a"],
    "report": ["runs/a"],
    "sweep": ["fashion-mnist-fast"],
    "lr-find": [],
    "reproduce": ["kth-cifar10"],
    "compare": ["runs/a"],
    "predict": ["runs/a", "shoe.png"],
    "export": ["runs/a", "--format", "onnx"],
    "serve": ["runs/a"],
}

# the flags several commands share, as --help shows them, and the commands that take each
SHARED = {
    "--set KEY=VALUE": {"train", "data check", "summary", "sweep", "lr-find", "reproduce"},
    "--out DIR": {"train", "sweep", "lr-find", "reproduce"},
    "--out FILE": {"evaluate", "compare", "predict", "export"},
    "--data NAME|PATH": {"train", "evaluate", "sweep", "lr-find", "reproduce", "export"},
    "--epochs N": {"train", "sweep", "reproduce"},
    "--seeds N": {"sweep", "reproduce"},
    "--batch-size N": {"train", "evaluate", "predict"},
    "--model NAME": {"train", "lr-find"},
    "--pretrained [WEIGHTS]": {"train", "lr-find"},
    "--tta, --no-tta": {"evaluate", "predict", "export", "serve"},
    "--max-pixels N": {"predict", "serve"},
}


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command.split(), "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_builds(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help(command, capsys)
    assert text.startswith(f"usage: cnnlab {command}".rstrip())
    if command:
        assert "example:" in text or "examples:" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_shared_flags(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    options = [line.strip() for line in _help(command, capsys).splitlines() if line.startswith("  -")]
    for flag, takers in SHARED.items():
        declared = any(line == flag or line.startswith(flag + " ") for line in options)
        assert declared == (command in takers), f"cnnlab {command}: {flag}"


@pytest.mark.parametrize("command", sorted(SHARED["--set KEY=VALUE"]))
def test_set_accumulates(command):
    parser = build_parser()
    args = parser.parse_args([*command.split(), *COMMANDS[command], "--set", "a.b=1", "--set", "c=x", "--set", "a.b=2"])
    assert args.set == ["a.b=1", "c=x", "a.b=2"]
    assert parse_set(args.set) == {"a.b": 2, "c": "x"}  # the later one wins
    # the default list is not the one appended to: a later parse starts empty again
    assert parser.parse_args([*command.split(), *COMMANDS[command]]).set == []


@pytest.mark.parametrize("command", sorted(SHARED["--epochs N"]))
def test_shared_flags_keep_their_type(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command.split(), *COMMANDS[command], "--epochs", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0] and err[0].endswith(f"(see cnnlab {command} --help)")


def test_shared_defaults():
    parser = build_parser()

    def parse(command, *extra):
        return parser.parse_args([*command.split(), *COMMANDS[command], *extra])

    assert [parse(c).batch_size for c in ("train", "evaluate", "predict")] == [None, 512, 256]
    assert [parse(c).seeds for c in ("sweep", "reproduce")] == [1, 1]
    assert [parse(c, "--pretrained").pretrained for c in ("train", "lr-find")] == ["imagenet", "imagenet"]
    assert all(parse(c).tta is None and parse(c, "--no-tta").tta is False for c in SHARED["--tta, --no-tta"])
