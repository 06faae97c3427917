"""Checkpoint files: ``save_checkpoint``/``load_checkpoint`` (safe unpickling, foreign files) and resumable
``train_epochs``."""

import pickle

import pytest
import torch

from manifold_defense.checkpoint import CheckpointError, load_checkpoint, train_epochs
from manifold_defense.generators import VAE, train_vae


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def _digits(n=256):
    from manifold_defense import data

    return data.load("digits", "train", limit=n).images


class _Killed(Exception):
    pass


class TestResume:
    def test_after_kill_mid_epoch_matches_uninterrupted_run(self, tmp_path, monkeypatch):
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

    def test_finished_run_is_extended(self, tmp_path):
        x = _digits(64)
        train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=1, batch_size=32, path=tmp_path / "r.pt", progress=False)
        hist = train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=3, batch_size=32, path=tmp_path / "r.pt", progress=False)
        assert [h["epoch"] for h in hist] == [1, 2, 3]
        assert load_checkpoint(tmp_path / "r.pt")["metadata"]["epochs_done"] == 3


class TestException:
    @pytest.mark.filterwarnings("ignore:Detected pickle protocol")
    def test_unsafe_pickle_is_refused(self, tmp_path):
        torch.save({"format": "manifold-defense/1", "x": _Evil()}, tmp_path / "evil.pt")
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "evil.pt")
        (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "plain.pkl")

    def test_foreign_checkpoint(self, tmp_path):
        torch.save({"state_dict": {}}, tmp_path / "other.pt")
        with pytest.raises(CheckpointError, match="not a manifold-defense checkpoint"):
            load_checkpoint(tmp_path / "other.pt")

    def test_resume_with_other_config(self, tmp_path):
        x = _digits(64)
        train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=1, batch_size=32, path=tmp_path / "r.pt", progress=False)
        with pytest.raises(CheckpointError, match="another configuration.*lr"):
            train_vae(VAE((1, 8, 8), 4, [16]), x, epochs=2, batch_size=32, lr=0.1, path=tmp_path / "r.pt",
                      progress=False)

    def test_epochs(self):
        with pytest.raises(ValueError, match="epochs"):
            train_epochs(path=None, modules={}, optimizers={}, epochs=0, epoch_fn=lambda e: {}, config={})


class TestIntegrity:
    def test_changed_weights_are_refused_and_files_get_the_usual_mode(self, tmp_path):
        import os
        import stat

        from manifold_defense.models import load_model, save_model

        model = VAE((1, 8, 8), 4, [16])
        path = tmp_path / "vae.pt"
        save_model(path, model)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # 0644 under the usual umask, not 0600
        load_model(path)  # intact: loads
        payload = torch.load(path, weights_only=True)
        state = payload["modules"]["model"]["state_dict"]
        name = next(iter(state))
        state[name] = state[name].clone()
        state[name].view(-1)[0] += 1.0  # one weight changed, the file still a valid torch file
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match="digest"):
            load_model(path)
        os.chmod(path, 0o600)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
