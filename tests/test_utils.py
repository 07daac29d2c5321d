"""utils.py: overrides, device choice, seeding, atomic files and checkpoints."""
import os
import random

import numpy as np
import pytest
import torch

import utils

CONFIG = dict(batch_size=32, lr=1e-3, dataset="moving_mnist", bf16=True, sizes=(1, 2))


def test_overrides_apply_with_types():
    cfg = utils.parse_overrides(CONFIG, ["--batch_size=8", "--lr=3", "--bf16=false", "--dataset=pendulum",
                                         "--sizes=3,4"])
    assert cfg == dict(batch_size=8, lr=3.0, dataset="pendulum", bf16=False, sizes=(3, 4))
    assert isinstance(cfg["lr"], float)
    assert CONFIG["batch_size"] == 32  # the defaults are not mutated


def test_bare_flag_sets_bool():
    assert utils.parse_overrides(CONFIG, ["--bf16"])["bf16"] is True


@pytest.mark.parametrize("argv, fragment", [
    (["--batch_sise=8"], "did you mean --batch_size"),
    (["--batch_size=eight"], "expects an integer"),
    (["--lr=fast"], "expects a number"),
    (["--bf16=maybe"], "expects true or false"),
    (["--batch_size"], "needs a value"),
    (["batch_size=3"], "--key=value"),
])
def test_bad_overrides_are_one_line_errors(argv, fragment):
    with pytest.raises(SystemExit) as exc:
        utils.parse_overrides(CONFIG, argv)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.delenv("VPWM_DEVICE", raising=False)
    assert utils.pick_device(None, verbose=False).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.pick_device("auto", verbose=False).type == "cuda"
    monkeypatch.setenv("VPWM_DEVICE", "cpu")
    assert utils.pick_device(None, verbose=False).type == "cpu"  # env var overrides auto
    assert utils.pick_device("auto", verbose=False).type == "cpu"  # a script's default is auto
    monkeypatch.setenv("VPWM_DEVICE", "cuda")
    assert utils.pick_device("cpu", verbose=False).type == "cpu"  # an explicit --device wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        utils.pick_device("cuda", verbose=False)
    with pytest.raises(SystemExit, match="unknown device"):
        utils.pick_device("tpu", verbose=False)


def test_seeding_repeats_draws():
    utils.seed_everything(3)
    a = (torch.rand(3), np.random.rand(), random.random())
    utils.seed_everything(3)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == np.random.rand() and a[2] == random.random()


def test_checkpoint_roundtrip_and_errors(tmp_path):
    path = tmp_path / "ck.pt"
    utils.save_checkpoint({"config": {"a": 1}, "w": torch.ones(2)}, path)
    ck = utils.load_checkpoint(path)
    assert ck["config"] == {"a": 1} and torch.equal(ck["w"], torch.ones(2))
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp.pt")] == []
    with pytest.raises(SystemExit, match="not found"):
        utils.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="truncated or not a checkpoint .*; pass another --checkpoint or retrain$"):
        utils.load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(SystemExit, match="; use another --run$"):
        utils.load_checkpoint(tmp_path / "bad.pt", fix="use another --run")
    utils.save_checkpoint({"w": 1}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a checkpoint of this project"):
        utils.load_checkpoint(tmp_path / "other.pt")


class _Payload:
    """Unpickling this would create a file: a checkpoint carrying code."""
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_payload_in_a_checkpoint_is_refused(tmp_path):
    path, target = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"config": {}, "x": _Payload(target)}, path)     # plain torch.save pickles anything
    with pytest.raises(SystemExit, match=r"refused \(weights_only=True\)"):
        utils.load_checkpoint(path)
    assert not target.exists()                                   # weights_only=True: nothing ran
    # every script loads its checkpoints through utils.load_checkpoint: tests/test_bad_inputs.py
    # gives this payload to each of their loaders


def test_stale_temporary_files_of_a_killed_write_are_removed(tmp_path):
    utils.save_checkpoint({"config": {}}, tmp_path / "latest.pt")
    (tmp_path / ".latest.pt.abc123.tmp.pt").write_bytes(b"half")        # a write killed half-way
    (tmp_path / "codes_x.npy").write_bytes(b"kept")
    assert [p.name for p in utils.remove_stale_temps(tmp_path)] == [".latest.pt.abc123.tmp.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes_x.npy", "latest.pt"]


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    utils.save_json({"v": 1}, path)
    with pytest.raises(RuntimeError):
        with utils.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text().strip().startswith("{") and '"v": 1' in path.read_text()
    assert len(list(tmp_path.iterdir())) == 1
