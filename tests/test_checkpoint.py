import pickle

import pytest
import torch

from cnnlab.engine.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.errors import CnnlabError


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_round_trip_and_no_temp_files(tmp_path):
    save_checkpoint(tmp_path / "c.pt", model={"w": torch.ones(2)}, epoch=3)
    c = load_checkpoint(tmp_path / "c.pt")
    assert c["epoch"] == 3 and torch.equal(c["model"]["w"], torch.ones(2)) and "torch" in c["rng"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"format": "cnnlab-checkpoint", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CnnlabError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_garbage_is_refused(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CnnlabError):
        load_checkpoint(tmp_path / "x.pt")


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="not a cnnlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_file(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    save_checkpoint(tmp_path / "c.pt", epoch=1)

    class Boom:
        def __reduce__(self):
            raise pickle.PicklingError("boom")

    with pytest.raises(pickle.PicklingError, match="boom"):
        save_checkpoint(tmp_path / "c.pt", epoch=2, bad=Boom())
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
