import pickle

import pytest
import torch

from manifold_defense.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, train_epochs
from manifold_defense.models import load_model, save_model
from manifold_defense.classifiers import DigitsCNN
from manifold_defense.generators import VAE, train_vae


def test_smoke_save_load_model(tmp_path):
    model = DigitsCNN(width=8)
    save_model(tmp_path / "m.pt", model, {"note": "hello"})
    loaded = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, DigitsCNN) and loaded.config == model.config
    assert loaded.metadata["note"] == "hello" and loaded.metadata["library_version"]
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_exception_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_exception_corrupted(tmp_path):
    save_model(tmp_path / "m.pt", DigitsCNN(width=8))
    blob = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(tmp_path / "m.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_exception_unsafe_pickle_is_refused(tmp_path):
    torch.save({"format": "manifold-defense/1", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")


def test_exception_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a manifold-defense checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_exception_weights_do_not_match(tmp_path):
    save_model(tmp_path / "m.pt", DigitsCNN(width=8))
    ckpt = load_checkpoint(tmp_path / "m.pt")
    ckpt["modules"]["model"]["config"]["width"] = 16
    save_checkpoint(tmp_path / "m.pt", ckpt)
    with pytest.raises(CheckpointError, match="do not match architecture"):
        load_model(tmp_path / "m.pt")


def _digits(n=256):
    from manifold_defense import data

    return data.load("digits", "train", limit=n).images


class _Killed(Exception):
    pass


def test_resume_after_kill_mid_epoch_matches_uninterrupted_run(tmp_path, monkeypatch):
    x = _digits()
    torch.manual_seed(0)
    ref = VAE((1, 8, 8), 4, [32])
    train_vae(ref, x, epochs=4, batch_size=32, path=tmp_path / "ref.pt", progress=False)

    torch.manual_seed(0)
    model = VAE((1, 8, 8), 4, [32])  # same initial weights as ref
    calls = {"n": 0}
    real_loss = VAE.loss

    def dying_loss(self, xb, generator=None):
        calls["n"] += 1
        if calls["n"] == 2 * 8 + 3:  # during the third epoch (8 batches per epoch)
            raise _Killed
        return real_loss(self, xb, generator)

    monkeypatch.setattr(VAE, "loss", dying_loss)
    with pytest.raises(_Killed):
        train_vae(model, x, epochs=4, batch_size=32, path=tmp_path / "run.pt", progress=False)
    partial = load_checkpoint(tmp_path / "run.pt")
    assert not partial["complete"] and partial["state"]["epoch"] == 2  # two finished epochs survived
    monkeypatch.setattr(VAE, "loss", real_loss)

    resumed = VAE((1, 8, 8), 4, [32])
    hist = train_vae(resumed, x, epochs=4, batch_size=32, path=tmp_path / "run.pt", progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_exception_resume_with_other_config(tmp_path):
    x = _digits(64)
    train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=1, batch_size=32, path=tmp_path / "r.pt", progress=False)
    with pytest.raises(CheckpointError, match="another configuration.*lr"):
        train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=2, batch_size=32, lr=0.1, path=tmp_path / "r.pt",
                  progress=False)


def test_finished_run_is_extended(tmp_path):
    x = _digits(64)
    train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=1, batch_size=32, path=tmp_path / "r.pt", progress=False)
    hist = train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=3, batch_size=32, path=tmp_path / "r.pt", progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "r.pt")["metadata"]["epochs_done"] == 3


def test_exception_epochs():
    with pytest.raises(ValueError, match="epochs"):
        train_epochs(path=None, modules={}, optimizers={}, epochs=0, epoch_fn=lambda e: {}, config={})
