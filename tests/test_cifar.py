"""CIFAR-10 format: ``data.load("cifar10", ...)`` on a fake ``cifar-10-batches-py`` folder written here, and
the library end to end on its 3×32×32 images (DCGAN + encoder, a robustness-library ResNet-18, the
defense, an attack evaluation, CSGM and ILO)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from manifold_defense import data
from manifold_defense.validation import InputError

SHAPE = (3, 32, 32)
N_PER_BATCH = 40
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616])


def _write_batch(file, rng: np.random.Generator, n: int = N_PER_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """One batch in the real pickle layout: bytes keys, (N, 3072) uint8 channel-major rows, a list of labels."""
    x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    x[0, 0], x[0, 1] = 0, 255  # every batch spans the full range
    y = rng.integers(0, 10, n)
    y[:10] = np.arange(10)  # every class present
    entry = {b"batch_label": file.name.encode(), b"labels": [int(v) for v in y], b"data": x,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    with open(file, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return x, y


def write_fake_cifar10(root, seed: int = 0, files=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py/`` with 5 train batches and a test batch of ``N_PER_BATCH`` random images."""
    folder = root / data.CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return {name: _write_batch(folder / name, rng) for name in (files or TRAIN_FILES + ["test_batch"])}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # conftest asks torch for 2 threads; on a busy 2-core CPU the ResNet-18 backward passes then run ~10x
    # slower (oversubscribed OpenMP workers). Four 32x32 images gain nothing from a second thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_fake_cifar10(root)


@pytest.fixture(scope="module")
def images(cifar_root):
    root, _ = cifar_root
    return data.load("cifar10", "test", path=root, limit=4)


@pytest.fixture(scope="module")
def generator():
    from manifold_defense.generators import DCGANGenerator
    from manifold_defense.generators.encoder import EncodedGenerator

    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=16, dim=8)
    return EncodedGenerator.from_generator(g, encoder_dim=8).eval()


@pytest.fixture(scope="module")
def classifier():
    from robustness.tools.helpers import InputNormalize

    from manifold_defense.robustness_adapter import (
        RobustnessClassifier,
        robustness_architecture,
    )

    torch.manual_seed(0)
    net = robustness_architecture("resnet18", num_classes=10)
    clf = RobustnessClassifier(net, InputNormalize(CIFAR_MEAN, CIFAR_STD), input_shape=SHAPE)
    clf.num_classes = 10
    return clf.eval()


class TestSmoke:
    def test_image_shape(self):
        assert data.image_shape("cifar10") == SHAPE and data.DATASETS["cifar10"] == SHAPE

    def test_load_test_split(self, cifar_root):
        root, raw = cifar_root
        x, y = data.load("cifar10", "test", path=root)
        assert x.shape == (N_PER_BATCH, *SHAPE) and x.dtype == torch.float32
        assert y.shape == (N_PER_BATCH,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        rx, ry = raw["test_batch"]
        assert y.tolist() == ry.tolist()
        # rows are channel-major: 1024 red, then green, then blue values, each row by row
        i, c, h, w = 3, 2, 5, 17
        assert float(x[i, c, h, w]) == pytest.approx(rx[i, c * 1024 + h * 32 + w] / 255.0)
        assert torch.equal(x, torch.from_numpy(rx.reshape(-1, *SHAPE)).float() / 255.0)

    def test_load_train_split_concatenates_batches(self, cifar_root):
        root, raw = cifar_root
        x, y = data.load("cifar10", "train", path=root)
        assert x.shape == (5 * N_PER_BATCH, *SHAPE)
        assert y.tolist() == np.concatenate([raw[f][1] for f in TRAIN_FILES]).tolist()
        assert set(y.tolist()) == set(range(10))

    def test_path_may_be_the_batches_folder(self, cifar_root):
        root, _ = cifar_root
        a = data.load("cifar10", "test", path=root)
        b = data.load("cifar10", "test", path=root / data.CIFAR10_FOLDER)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)

    def test_limit_and_copies(self, cifar_root):
        root, _ = cifar_root
        x, y = data.load("cifar10", "test", path=root, limit=7)
        assert x.shape == (7, *SHAPE) and y.shape == (7,)
        x.zero_()
        assert float(data.load("cifar10", "test", path=root).images.max()) == 1.0

    def test_env_var(self, cifar_root, monkeypatch):
        root, raw = cifar_root
        monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(root))
        x, y = data.load("cifar10", "test")
        assert x.shape == (N_PER_BATCH, *SHAPE) and y.tolist() == raw["test_batch"][1].tolist()

    def test_cache_folder(self, tmp_path, monkeypatch):
        raw = write_fake_cifar10(tmp_path / "cache" / "data", seed=1, files=["test_batch"])
        monkeypatch.delenv("MANIFOLD_DEFENSE_DATA", raising=False)
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path / "cache"))
        assert data.load("cifar10", "test").labels.tolist() == raw["test_batch"][1].tolist()

    def test_offline_never_downloads(self, cifar_root, monkeypatch):
        import torchvision.datasets

        def refuse(*args, **kwargs):
            raise AssertionError("torchvision was asked to download")

        monkeypatch.setattr(torchvision.datasets, "CIFAR10", refuse)
        root, _ = cifar_root
        data.load("cifar10", "test", path=root)  # found: no torchvision
        with pytest.raises(data.DataNotFoundError):
            data.load("cifar10", "test", path=root / "empty")  # missing, download=False: no torchvision

    def test_download_goes_through_torchvision(self, tmp_path, monkeypatch):
        import torchvision.datasets

        calls = []

        class FakeCIFAR10:  # stands in for the network: writes the folder torchvision would extract
            def __init__(self, root, train=True, download=False):
                calls.append((root, train, download))
                write_fake_cifar10(tmp_path / "dl", seed=2)

        monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
        x, _ = data.load("cifar10", "train", path=tmp_path / "dl", download=True)
        assert calls == [(str(tmp_path / "dl"), True, True)] and x.shape == (5 * N_PER_BATCH, *SHAPE)

    def test_memoised_and_sees_edits(self, tmp_path):
        write_fake_cifar10(tmp_path, seed=3, files=["test_batch"])
        a = data.load("cifar10", "test", path=tmp_path)
        assert torch.equal(a.images, data.load("cifar10", "test", path=tmp_path).images)
        _write_batch(tmp_path / data.CIFAR10_FOLDER / "test_batch", np.random.default_rng(4), n=12)
        assert data.load("cifar10", "test", path=tmp_path).images.shape == (12, *SHAPE)

    def test_defended_model(self, images, generator, classifier):
        from manifold_defense.defended import DefendedModel, ProjectionConfig

        model = DefendedModel(classifier, generator, ProjectionConfig(steps=5, restarts=2, search_candidates=50))
        x = images.images
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
        proj = model.project(x).x
        assert proj.shape == (4, *SHAPE) and 0 <= float(proj.min()) and float(proj.max()) <= 1

    def test_evaluate_pgd(self, images, generator, classifier):
        from manifold_defense.eval import AttackBudget, build_attack, evaluate

        from manifold_defense.defended import DefendedModel, ProjectionConfig

        model = DefendedModel(classifier, generator, ProjectionConfig(steps=5, restarts=2, search_candidates=50))
        x, y = images
        ev = evaluate(model, x, y, [build_attack("pgd_linf", [0.03], budget=AttackBudget.quick())],
                      batch_size=4, progress=False)
        assert ev.accuracy()[2] == 4
        assert ev.accuracy(("pgd_linf", 0.03))[2] == 4

    def test_csgm(self, images, generator):
        from manifold_defense.inversion import csgm
        from manifold_defense.operators import GaussianMeasurements

        x = images.images
        A = GaussianMeasurements(SHAPE, m=200, seed=0)
        res = csgm(generator, A(x), A, steps=20, restarts=2)
        assert res.x.shape == (4, *SHAPE) and torch.isfinite(res.x).all()
        assert res.history.shape[1] == 4
        assert bool((res.history[-1] <= res.history[0]).all())
        assert bool((res.history[-1] < res.history[0]).any())

    def test_ilo(self, images, generator):
        from manifold_defense.inversion import ilo
        from manifold_defense.operators import GaussianMeasurements

        x = images.images
        A = GaussianMeasurements(SHAPE, m=200, seed=0)
        assert generator.num_splits == 4
        res = ilo(generator, A(x), A, steps=10, radii=[0.1] * generator.num_splits,
                  csgm_kwargs={"steps": 10, "restarts": 1})
        assert res.x.shape == (4, *SHAPE) and torch.isfinite(res.x).all()


class TestException:
    def test_missing_folder(self, tmp_path):
        with pytest.raises(data.DataNotFoundError, match="cifar-10-batches-py"):
            data.load("cifar10", "test", path=tmp_path / "nowhere")

    def test_offline_without_copy(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MANIFOLD_DEFENSE_DATA", str(tmp_path / "nowhere"))
        monkeypatch.setenv("MANIFOLD_DEFENSE_CACHE", str(tmp_path / "cache"))
        with pytest.raises(data.DataNotFoundError, match=r"Put torchvision's cifar-10-batches-py .* at .*nowhere"):
            data.load("cifar10", "train")

    def test_partial_folder(self, tmp_path):
        write_fake_cifar10(tmp_path, files=["test_batch", "data_batch_1"])
        assert data.load("cifar10", "test", path=tmp_path).images.shape[0] == N_PER_BATCH
        with pytest.raises(data.DataNotFoundError, match="cifar-10-batches-py"):
            data.load("cifar10", "train", path=tmp_path)

    def test_corrupt_batch(self, tmp_path):
        folder = tmp_path / data.CIFAR10_FOLDER
        folder.mkdir()
        (folder / "test_batch").write_bytes(b"not a pickle")
        with pytest.raises(data.DataNotFoundError, match="could not be read"):
            data.load("cifar10", "test", path=tmp_path)

    @pytest.mark.parametrize("entry, match", [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "lacks key"),
        ({b"data": np.zeros((2, 784), np.uint8), b"labels": [0, 1]}, "unexpected shapes"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside"),
    ])
    def test_bad_batch(self, tmp_path, entry, match):
        folder = tmp_path / data.CIFAR10_FOLDER
        folder.mkdir()
        with open(folder / "test_batch", "wb") as f:
            pickle.dump(entry, f)
        with pytest.raises(data.DataNotFoundError, match=match):
            data.load("cifar10", "test", path=tmp_path)

    def test_classifier_needs_three_channels(self, generator, classifier):
        from manifold_defense.defended import DefendedModel

        model = DefendedModel(classifier, generator)
        with pytest.raises(InputError):
            model(torch.rand(2, 1, 32, 32))
