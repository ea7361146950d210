"""Tests of course_utils.data: every reader on data the tests write themselves (no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

import course_utils.data as cd
from course_utils import device
from course_utils.data import cifar, paths
from course_utils.data import defects as defect_painting

# ---------------------------------------------------------------------------------------------
# Helpers that write tiny data sets
# ---------------------------------------------------------------------------------------------

def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Save a uint8/uint16 array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def class_colour(c: int) -> np.ndarray:
    """A distinct RGB colour per class, so that a test can check images and labels stay paired."""
    return np.array([20 * c + 10, 200 - 15 * c, (37 * c) % 256], dtype=np.uint8)


def noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 pixels."""
    return rng.integers(0, 255, shape, dtype=np.uint8)


def write_mvtec(root: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """A tiny MVTec-layout category: 3 train, 2 good + 2 'dent' test images with masks."""
    h, w = size
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            save(root / split / "good" / f"{i:03d}.png", noise(rng, (h, w, 3)))
    for i in range(2):
        save(root / "test" / "dent" / f"{i:03d}.png", noise(rng, (h, w, 3)))
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5:20] = 255
        save(root / "ground_truth" / "dent" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def defects(tmp_path_factory) -> Path:
    """A small defect data set (shared by several tests)."""
    return cd.make_defect_dataset(tmp_path_factory.mktemp("d") / "brick", n_train=6, n_test=12,
                                  image_size=64, seed=3)


# ---------------------------------------------------------------------------------------------
# DATA_DIR and images
# ---------------------------------------------------------------------------------------------

def test_data_dir_env_and_repo(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "elsewhere"))
    assert paths._default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("COURSE_DATA")
    assert paths._default_data_dir() == REPO / "data"  # this checkout has pyproject.toml


def test_build_dir_is_in_the_checkout_whatever_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # e.g. a notebook running in build/student/
    assert cd.build_dir() == REPO / "build"
    assert not (tmp_path / "build").exists()
    monkeypatch.setattr(paths, "_checkout_root", lambda: tmp_path / "course")
    folder = cd.build_dir("lab9", "runs")
    assert folder == tmp_path / "course" / "build" / "lab9" / "runs" and folder.is_dir()
    assert cd.build_dir("lab9", "runs") == folder  # again: no error, same folder


def test_build_dir_without_a_checkout_is_under_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "_checkout_root", lambda: None)  # installed from PyPI/git, as on Colab
    monkeypatch.chdir(tmp_path)  # Colab runs notebooks in /content
    folder = cd.build_dir("lab4")
    assert folder.resolve() == (tmp_path / "build" / "lab4").resolve() and folder.is_dir()
    monkeypatch.delenv("COURSE_DATA", raising=False)
    assert paths._default_data_dir().resolve() == (tmp_path / "data").resolve()


def test_read_image_modes_and_sizes(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    img = cd.read_image(save(tmp_path / "rgb.png", rgb))
    assert img.shape == (3, 20, 30) and img.dtype == torch.float32
    assert torch.allclose(img[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))

    gray = cd.read_image(save(tmp_path / "gray.png", np.full((8, 8), 51, np.uint8)))
    assert gray.shape == (3, 8, 8) and torch.allclose(gray, torch.full_like(gray, 0.2))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    out = cd.read_image(save(tmp_path / "rgba.png", rgba))
    assert out.shape == (3, 4, 4)
    assert torch.allclose(out[:, :2], torch.full((3, 2, 4), 200 / 255)) and out[:, 2:].max() == 0

    deep = np.array([[0, 32768], [65535, 65535]], np.uint16)  # 16-bit grayscale PNG
    out16 = cd.read_image(save(tmp_path / "deep.png", deep))
    assert out16.shape == (3, 2, 2) and out16.max() == 1.0
    assert abs(out16[0, 0, 1].item() - 0.5) < 1e-3

    wide = save(tmp_path / "photo.jpg", np.full((30, 50, 3), 128, np.uint8))  # non-square JPG
    jpg = cd.read_image(wide, image_size=16)
    assert jpg.shape == (3, 16, 16) and abs(jpg.mean().item() - 128 / 255) < 0.02


def test_read_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ValueError, match=r"broken\.png.*corrupt.*(Delete|replace)"):
        cd.read_image(bad)
    truncated = save(tmp_path / "ok.png", noise(np.random.default_rng(0), (64, 64, 3)))
    (tmp_path / "cut.png").write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.png"):
        cd.read_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        cd.read_image(tmp_path / "nothere.png")


def test_normalize_uint8_scales_and_standardises_per_channel():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).repeat(2, 1, 2, 2)  # [2, 3, 2, 2]
    assert torch.equal(cd.normalize_uint8(images)[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    standardised = cd.normalize_uint8(images, mean=(0.5, 0.2, 0.0), std=(0.5, 0.1, 2.0))
    assert torch.allclose(standardised[1, :, 1, 1], torch.tensor([-1.0, 0.0, 0.5]))
    assert torch.equal(cd.normalize_uint8(images[0], (0.5, 0.2, 0.0), (0.5, 0.1, 2.0)), standardised[0])  # one image
    with pytest.raises(TypeError, match="uint8"):
        cd.normalize_uint8(images.float())
    with pytest.raises(ValueError, match="one value per channel"):
        cd.normalize_uint8(images, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="both"):
        cd.normalize_uint8(images, mean=(0.5, 0.5, 0.5))


def test_read_mask_binary_and_resized(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :10] = 255
    out = cd.read_mask(save(tmp_path / "m.png", mask), image_size=8)
    assert out.shape == (8, 8) and set(out.unique().tolist()) == {0.0, 1.0}
    assert out[:, :4].min() == 1 and out[:, 4:].max() == 0



def components(mask: torch.Tensor) -> int:
    """How many 8-connected pieces a binary mask [H, W] has."""
    from scipy import ndimage

    return ndimage.label(mask.numpy() > 0.5, structure=np.ones((3, 3)))[1]


@pytest.mark.parametrize("size", [64, 50, 32])
def test_resize_mask_keeps_thin_defects_connected(tmp_path, size):
    t = np.linspace(0, 1, 400)
    rows, cols = (10 + 100 * t).round().astype(int), (20 + 90 * t + 12 * np.sin(8 * t)).round().astype(int)
    crack = np.zeros((128, 128), np.uint8)
    crack[rows, cols] = 255  # a 1-pixel-wide bent crack
    big = torch.from_numpy(crack > 0).float()
    assert components(big) == 1
    nearest = torch.nn.functional.interpolate(big[None, None], size=(size, size), mode="nearest")[0, 0]
    assert components(nearest) > 1  # what nearest neighbour did: dots
    small = cd.read_mask(save(tmp_path / "crack.png", crack), image_size=size)
    assert small.shape == (size, size) and components(small) == 1
    assert torch.equal(small, cd.resize_mask(big, size))


def test_resize_mask_grows_regions_by_at_most_a_pixel():
    square = torch.zeros(128, 128)
    square[32:96, 40:72] = 1  # 64 x 32 pixels
    small = cd.resize_mask(square, 50)
    exact = 64 * 32 * (50 / 128) ** 2
    assert exact <= small.sum() <= (64 * 50 / 128 + 2) * (32 * 50 / 128 + 2)
    assert torch.equal(cd.resize_mask(square, 128), square)
    up = cd.resize_mask(square[::4, ::4], 64)  # enlarging: nearest neighbour, still binary
    assert set(up.unique().tolist()) == {0.0, 1.0} and up.sum() == 4 * square[::4, ::4].sum()
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        cd.resize_mask(square[None], 64)


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------

def write_cifar_batches(folder: Path, n_per_batch: int = 10) -> None:
    """A fake torchvision cifar-10-batches-py folder: 2 train batches + test_batch + meta."""
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        labels = [i % 10 for i in range(n_per_batch)]
        hwc = np.stack([np.broadcast_to(class_colour(c), (32, 32, 3)) for c in labels])
        data = hwc.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)  # R plane, G plane, B plane
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": cd.CIFAR10_CLASSES}, f)


def assert_paired(data: cd.ImageData) -> None:
    """Every image has its class's colour: images and labels were not shuffled apart."""
    for x, y in ((data.train_x, data.train_y), (data.valid_x, data.valid_y)):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        for image, label in zip(x, y):
            assert torch.equal(image[:, 0, 0], torch.from_numpy(class_colour(int(label))))


def test_cifar_batches_folder(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    data = cd.load_cifar10(tmp_path / "cifar-10-batches-py")
    # validation is split off the 20 training images (10%); test_batch is the test set, kept apart
    assert (len(data.train_y), len(data.valid_y), len(data.test_y)) == (18, 2, 10)
    assert_paired(cd.ImageData(data.test_x, data.test_y, data.test_x, data.test_y, data.classes, "test"))
    assert len(cd.make_test_loader(data, batch_size=4).dataset) == 10
    five = cd.load_cifar10(tmp_path / "cifar-10-batches-py", n_valid=5, n_test=4)
    assert (len(five.train_y), len(five.valid_y), len(five.test_y)) == (15, 5, 4)
    assert data.classes == cd.CIFAR10_CLASSES and not data.stand_in
    assert_paired(data)
    cached = cd.load_cifar10(root=tmp_path, download=False)  # source=None finds the cached copy
    assert torch.equal(cached.train_x, data.train_x)


def test_cifar_image_folder_tree_and_class_folders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in range(3):
            for i in range(n):
                save(tmp_path / "tree" / split / f"class{c}" / f"{i}.png",
                     np.broadcast_to(class_colour(c), (32, 32, 3)).copy())
    data = cd.load_cifar10(tmp_path / "tree", n_valid=3)
    assert (len(data.train_y), len(data.valid_y), len(data.test_y)) == (6, 3, 6)  # valid from train/
    assert data.classes == ["class0", "class1", "class2"]
    assert_paired(data)
    flat = cd.load_cifar10(tmp_path / "tree" / "train", n_valid=3, seed=1)  # class folders only
    assert (len(flat.train_y), len(flat.valid_y)) == (6, 3)
    assert sorted(flat.valid_y.tolist()) == [0, 1, 2]  # stratified
    assert_paired(flat)


def test_cifar_npz_split_is_seeded_and_stratified(tmp_path):
    y = np.repeat(np.arange(10), 20)
    x = np.stack([np.broadcast_to(class_colour(c), (32, 32, 3)) for c in y]).copy()
    x[:, 5, 5, 0] = np.arange(200)  # a unique id per image
    np.savez(tmp_path / "c.npz", x=x, y=y)
    a = cd.load_cifar10(tmp_path / "c.npz", n_train=100, n_valid=50, seed=0)
    b = cd.load_cifar10(tmp_path / "c.npz", n_train=100, n_valid=50, seed=0)
    c = cd.load_cifar10(tmp_path / "c.npz", n_train=100, n_valid=50, seed=1)
    assert (len(a.train_y), len(a.valid_y)) == (100, 50)
    assert torch.equal(a.valid_x, b.valid_x) and not torch.equal(a.valid_x, c.valid_x)
    assert torch.bincount(a.valid_y).tolist() == [5] * 10  # stratified
    assert torch.bincount(a.train_y).tolist() == [10] * 10
    assert_paired(a)
    full = cd.load_cifar10(tmp_path / "c.npz")  # default: 20% validation, no test set
    assert (len(full.train_y), len(full.valid_y)) == (160, 40) and full.test_x is None
    with pytest.raises(ValueError, match="no test set"):
        cd.make_test_loader(full)


def test_cifar_bad_sources_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*cifar-10-batches-py"):
        cd.load_cifar10(tmp_path / "missing")
    np.savez(tmp_path / "chw.npz", x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"uint8 \[N, 32, 32, 3\].*\(4, 3, 32, 32\)"):
        cd.load_cifar10(tmp_path / "chw.npz")
    np.savez(tmp_path / "keys.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(KeyError, match="'x'.*'y'"):
        cd.load_cifar10(tmp_path / "keys.npz")


def no_network(root, timeout):
    raise OSError("Name or service not known")


def test_cifar_offline_fast_mode_uses_loud_stand_in(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cifar, "_torchvision_download", no_network)
    monkeypatch.setattr(device, "FAST", True)
    data = cd.load_cifar10(root=tmp_path, n_train=500, n_valid=100)
    assert data.stand_in and data.classes == [str(d) for d in range(10)]
    assert data.train_x.shape == (500, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.valid_x.shape == (100, 3, 32, 32) and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 2])  # gray copied to 3 channels
    assert data.train_x.float().std() > 30  # real images, not blank
    out = capsys.readouterr().out
    assert "STAND-IN" in out and "####" in out and cd.CIFAR10_URL in out


def test_cifar_offline_full_mode_raises_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(cifar, "_torchvision_download", no_network)
    monkeypatch.setattr(device, "FAST", False)
    with pytest.raises(RuntimeError, match=r"cifar-10-python\.tar\.gz.*source="):
        cd.load_cifar10(root=tmp_path)


def test_make_loaders_normalise_and_augment():
    data = cd.digits_stand_in(seed=0)
    train, valid = cd.make_loaders(data, batch_size=32, augment=True)
    x, y = next(iter(valid))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    mean = torch.tensor(cd.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(cd.CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(x[0], (data.valid_x[0].float() / 255 - mean) / std)  # valid: no augment
    xt, _ = next(iter(train))
    assert xt.shape == (32, 3, 32, 32)
    assert sum(len(b[1]) for b in train) == len(data.train_y)


def test_random_crop_flip_is_a_shift_or_flip():
    torch.manual_seed(0)
    x = torch.rand(3, 32, 32)
    outs = [cd.random_crop_flip(x) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(torch.equal(o, x.flip(-1)) or not torch.equal(o, x) for o in outs)
    for o in outs:  # every output is x (or its mirror) shifted by at most 4 pixels
        found = False
        for candidate in (x, x.flip(-1)):
            padded = torch.nn.functional.pad(candidate, (4, 4, 4, 4))
            windows = (padded[:, t:t + 32, s:s + 32] for t in range(9) for s in range(9))
            found |= any(torch.equal(w, o) for w in windows)
        assert found


# ---------------------------------------------------------------------------------------------
# MVTec layout
# ---------------------------------------------------------------------------------------------

def test_mvtec_dataset_items(tmp_path):
    root = write_mvtec(tmp_path / "toy")
    train = cd.MVTecDataset(root, "train", image_size=32)
    test = cd.MVTecDataset(root, "test", image_size=32)
    assert len(train) == 3 and len(test) == 4
    item = test[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["label"] == 1 and item["defect"] == "dent" and item["path"].endswith("001.png")
    assert test[0]["label"] == 0 and test[0]["mask"].sum() == 0 and test[0]["defect"] == "good"


def test_load_anomaly_data_mixed_formats(tmp_path):
    root = write_mvtec(tmp_path / "toy")
    save(root / "train" / "good" / "gray.jpg", np.full((50, 20), 90, np.uint8))
    rgba = np.full((25, 25, 4), 255, np.uint8)
    save(root / "test" / "good" / "alpha.png", rgba)
    data = cd.load_anomaly_data(root, image_size=24)
    assert data.train_images.shape == (4, 3, 24, 24) and data.test_images.shape == (5, 3, 24, 24)
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1] and data.test_labels.dtype == torch.int64
    assert data.test_masks.shape == (5, 24, 24) and data.test_masks[:3].sum() == 0
    assert (data.test_masks[3:].flatten(1).sum(1) > 0).all()
    assert data.test_defects == ["good"] * 3 + ["dent"] * 2
    assert data.name == "toy" and data.has_masks
    assert cd.load_anomaly_data(root, image_size=24, n_train=2).train_images.shape[0] == 2


def test_mvtec_layout_errors_are_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="not exist.*download_mvtec.*make_defect_dataset"):
        cd.MVTecDataset(tmp_path / "nope")
    write_mvtec(tmp_path / "all" / "bottle")
    with pytest.raises(FileNotFoundError, match=r"train.good.*\['bottle'\]: pass one of those"):
        cd.MVTecDataset(tmp_path / "all")
    root = write_mvtec(tmp_path / "toy")
    shutil.rmtree(root / "test")
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        cd.MVTecDataset(root, "test")


def test_missing_mask_named_or_allowed(tmp_path):
    root = write_mvtec(tmp_path / "toy")
    (root / "ground_truth" / "dent" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"001_mask\.png.*allow_missing_masks=True"):
        cd.load_anomaly_data(root, image_size=16)
    data = cd.load_anomaly_data(root, image_size=16, allow_missing_masks=True)
    assert data.test_labels.tolist() == [0, 0, 1, 1] and not data.has_masks
    assert data.test_masks[3].sum() == 0 and data.test_masks[2].sum() > 0


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        save(tmp_path / "good" / f"g{i}.jpg", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    for i in range(3):
        save(tmp_path / "bad" / f"b{i}.png", rng.integers(0, 255, (30, 40), dtype=np.uint8))
    save(tmp_path / "masks" / "b0_mask.png", np.full((30, 40), 255, np.uint8))
    data = cd.load_image_folder(tmp_path / "good", tmp_path / "bad", image_size=16)
    assert data.train_images.shape == (8, 3, 16, 16) and data.test_images.shape == (5, 3, 16, 16)
    assert data.test_labels.tolist() == [0, 0, 1, 1, 1] and not data.has_masks
    assert data.test_masks.shape == (5, 16, 16)
    only_good = cd.load_image_folder(tmp_path / "good", image_size=16, seed=1)
    assert only_good.test_labels.tolist() == [0, 0]
    masked = cd.load_image_folder(tmp_path / "good", tmp_path / "bad", 16,
                                  mask_dir=tmp_path / "masks")
    assert masked.test_masks[2].sum() == 256 and masked.test_masks[3].sum() == 0
    with pytest.raises(FileNotFoundError, match="good_dir .*does not exist"):
        cd.load_image_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        cd.load_image_folder(tmp_path / "masks" / "..", image_size=16)


# ---------------------------------------------------------------------------------------------
# Download: a local HTTP server with Range support (no real network)
# ---------------------------------------------------------------------------------------------

class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payload` at any path, honouring 'Range: bytes=N-' like a real file server."""

    payload = b""
    ranges: list = []
    honour_range = True

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        if header and self.honour_range:
            start = int(header.split("=")[1].rstrip("-"))
            if start >= len(self.payload):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            end = len(self.payload) - 1
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges, RangeHandler.honour_range = [], True
    yield f"http://127.0.0.1:{httpd.server_port}/toy.tar.xz"
    httpd.shutdown()
    httpd.server_close()


def toy_archive(tmp_path: Path) -> bytes:
    """A .tar.xz holding toy/train/good, toy/test/... like an MVTec category archive."""
    write_mvtec(tmp_path / "src" / "toy")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        tar.add(tmp_path / "src" / "toy", arcname="toy")
    return buffer.getvalue()


def test_download_resumes_and_verifies(tmp_path, server):
    payload = toy_archive(tmp_path)
    RangeHandler.payload = payload
    root = tmp_path / "mvtec"
    root.mkdir()
    half = len(payload) // 2
    (root / "toy.tar.xz.part").write_bytes(payload[:half])  # an interrupted download
    out = cd.download_mvtec("toy", root, url=server, sha256=hashlib.sha256(payload).hexdigest())
    assert RangeHandler.ranges == [f"bytes={half}-"]  # only the missing bytes were asked for
    assert out == root / "toy" and len(cd.list_samples(out, "test")) == 4
    assert not list(root.glob("toy.tar.xz*"))  # archive and .part cleaned up
    assert cd.download_mvtec("toy", root, url=server) == out  # already there: no request
    assert len(RangeHandler.ranges) == 1


def test_download_restarts_when_server_ignores_range(tmp_path, server):
    RangeHandler.payload, RangeHandler.honour_range = toy_archive(tmp_path), False
    dest = tmp_path / "toy.tar.xz"
    dest.with_name("toy.tar.xz.part").write_bytes(RangeHandler.payload[:50])
    cd.download_file(server, dest)  # got the whole file (200), so it must not append to the part
    assert dest.read_bytes() == RangeHandler.payload
    assert cd.sha256_of(dest) == hashlib.sha256(RangeHandler.payload).hexdigest()


def test_download_checksum_mismatch_deletes_file(tmp_path, server):
    payload = toy_archive(tmp_path)
    RangeHandler.payload = payload
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / "toy.tar.xz.part").write_bytes(b"garbage!" + payload[8:100])  # a corrupt partial file
    with pytest.raises(ValueError, match="Checksum mismatch.*deleted.*run the download again"):
        cd.download_mvtec("toy", root, url=server, sha256=hashlib.sha256(payload).hexdigest())
    assert not list(root.glob("toy.tar.xz*"))
    cd.download_mvtec("toy", root, url=server, sha256=hashlib.sha256(payload).hexdigest())  # retry
    assert (root / "toy" / "train" / "good" / "000.png").exists()


def test_download_offline_error_gives_url_and_folder(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/bottle.tar.xz"
    with pytest.raises(ConnectionError) as err:
        cd.download_mvtec("bottle", tmp_path / "mvtec", url=url, timeout=2)
    message = str(err.value)
    assert url in message and str(tmp_path / "mvtec") in message and "by hand" in message
    with pytest.raises(ValueError, match="Unknown MVTec AD category 'bottel'.*'bottle'"):
        cd.download_mvtec("bottel", tmp_path)
    assert len(cd.MVTEC_URLS) == 15
    assert all(u.startswith("https://www.mydrive.ch/shares/") and u.endswith(f"/{c}.tar.xz")
               for c, u in cd.MVTEC_URLS.items())


# ---------------------------------------------------------------------------------------------
# The offline defect data set
# ---------------------------------------------------------------------------------------------

def test_defect_dataset_layout_and_masks(defects):
    assert len(list((defects / "train" / "good").glob("*.png"))) == 6
    assert len(list((defects / "test" / "good").glob("*.png"))) == 3
    for kind in cd.DEFECT_KINDS:
        images = sorted((defects / "test" / kind).glob("*.png"))
        masks = sorted((defects / "ground_truth" / kind).glob("*_mask.png"))
        assert [p.stem + "_mask" for p in images] == [m.stem for m in masks] and len(images) >= 2
    data = cd.load_anomaly_data(defects, image_size=64)
    assert data.train_images.shape == (6, 3, 64, 64) and data.test_images.shape == (12, 3, 64, 64)
    defective = data.test_labels == 1
    areas = data.test_masks.flatten(1).mean(1)
    assert (areas[~defective] == 0).all() and (areas[defective] > 0).all() and (areas < 0.25).all()
    assert set(data.test_masks.unique().tolist()) == {0.0, 1.0}
    raw = np.asarray(Image.open(defects / "ground_truth" / "stain" / "000_mask.png"))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}


def test_defect_dataset_is_deterministic_and_reused(defects, tmp_path):
    again = cd.make_defect_dataset(tmp_path / "again", n_train=6, n_test=12, image_size=64, seed=3)
    files = sorted(p.relative_to(defects) for p in defects.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((defects / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = cd.make_defect_dataset(tmp_path / "other", n_train=6, n_test=12, image_size=64, seed=4)
    assert (other / files[0]).read_bytes() != (defects / files[0]).read_bytes()
    stamp = (again / files[0]).stat().st_mtime_ns
    cd.make_defect_dataset(tmp_path / "again", n_train=6, n_test=12, image_size=64, seed=3)
    assert (again / files[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    cd.make_defect_dataset(tmp_path / "again", n_train=4, n_test=8, image_size=64, seed=3)
    assert len(list((again / "train" / "good").glob("*.png"))) == 4  # new settings: rewritten


def test_defect_dataset_refuses_bad_input(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty.*choose an empty or new folder"):
        cd.make_defect_dataset(tmp_path / "mine", n_train=2, n_test=4, image_size=32)
    with pytest.raises(ValueError, match="texture must be one of"):
        cd.make_defect_dataset(tmp_path / "x", texture="marble")


@pytest.mark.parametrize("kind", cd.DEFECT_KINDS)
def test_add_defect_changes_exactly_the_mask(kind):
    photos = {t: defect_painting._texture_photo(t) for t in cd.TEXTURES}
    areas = []
    for severity in (0.0, 1.0):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            clean = defect_painting._texture_crop(photos["brick"], "brick", 64, rng)
            image, mask = cd.add_defect(clean, kind, severity, rng, photos, "brick")
            assert image.shape == (64, 64, 3) and image.dtype == np.float32 and mask.dtype == bool
            assert mask.any() and np.array_equal(image[~mask], clean[~mask])  # nothing else touched
            assert np.abs(image[mask] - clean[mask]).mean() > 0.01  # the defect is there
            areas.append(mask.mean())
    assert np.mean(areas[3:]) > 1.5 * np.mean(areas[:3])  # obvious defects are larger than subtle


def test_default_anomaly_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(device, "FAST", True)
    path = cd.default_anomaly_root(image_size=32, root=tmp_path)  # small images keep this fast
    assert path == tmp_path / "defects_brick" and (path / "dataset.json").exists()
    assert "offline defect data set" in capsys.readouterr().out
    write_mvtec(tmp_path / "mvtec" / "bottle")
    assert cd.default_anomaly_root(root=tmp_path) == tmp_path / "mvtec" / "bottle"
    assert "MVTec AD category 'bottle'" in capsys.readouterr().out


def test_default_anomaly_root_other_sizes_get_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "FAST", True)
    default = cd.default_anomaly_root(image_size=32, root=tmp_path)
    bigger = cd.default_anomaly_root(image_size=32, root=tmp_path, n_train=8, n_test=12)
    assert bigger == tmp_path / "defects_brick_8_12" and default == tmp_path / "defects_brick"
    assert len(list((bigger / "train" / "good").glob("*.png"))) == 8
    assert sum(1 for _ in (bigger / "test").rglob("*.png")) == 12
    assert (default / "dataset.json").exists()  # the default set was not rewritten


def test_default_anomaly_root_n_test_gets_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(device, "FAST", True)
    path = cd.default_anomaly_root(image_size=32, root=tmp_path, n_test=8)
    assert path == tmp_path / "defects_brick_80_8"
    assert len(list((path / "test" / "good").glob("*.png"))) == 2  # a quarter good
    assert sum(1 for _ in (path / "test").rglob("*.png")) == 8
    assert cd.default_anomaly_root(image_size=32, root=tmp_path, n_test=48) == tmp_path / "defects_brick"
    with pytest.raises(ValueError, match="n_test"):
        cd.default_anomaly_root(image_size=32, root=tmp_path, n_test=1)


def test_batch_augmenter_yields_normalised_shifted_batches() -> None:
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    loader = cd.BatchAugmenter(images, torch.arange(10), batch_size=4, mean=(0.5,) * 3,
                                   std=(0.25,) * 3, shift=0, flip=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # drop_last
    x, y = batches[0]
    expected = (images[y].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    with pytest.raises(ValueError, match="uint8"):
        cd.BatchAugmenter(images.float(), torch.arange(10), 4, (0.5,) * 3, (0.25,) * 3)


def test_batch_augmenter_shifts_and_flips_each_image_on_its_own() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    loader = cd.BatchAugmenter(images, torch.arange(64), batch_size=64, mean=(0.0,) * 3, std=(1 / 255,) * 3,
                               shift=2, flip=True)
    x, y = next(iter(loader))  # [64, 3, 8, 8]: pixel values again, as floats
    seen = set()
    for image, label in zip(x, y):
        padded = torch.nn.functional.pad(images[label].float()[None], (2, 2, 2, 2), mode="reflect")[0]
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if torch.allclose((padded.flip(-1) if f else padded)[:, dy:dy + 8, dx:dx + 8], image, atol=1e-3)]
        assert found, "every output must be a flipped and/or shifted copy of its own image"
        seen.add(found[0])
    assert len(seen) > 10  # shifts and flips differ from image to image within one batch


def test_digits_stand_in_has_three_disjoint_stratified_splits():
    data = cd.digits_stand_in(seed=0)
    sizes = (len(data.train_y), len(data.valid_y), len(data.test_y))
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 1797 // 5
    seen = [{tuple(x.flatten()[::7].tolist()) for x in part} for part in (data.train_x, data.valid_x, data.test_x)]
    assert not (seen[0] & seen[2]) and not (seen[1] & seen[2])  # no test image elsewhere (almost no duplicates in digits)
    assert torch.bincount(data.test_y).min() >= 34  # stratified: about 36 per digit


def test_make_loaders_seed_gives_the_same_batches_whatever_runs_between():
    data = cd.digits_stand_in(seed=0)
    first = [y for _, y in cd.make_loaders(data, batch_size=64, seed=3)[0]]
    torch.rand(5)  # anything that draws from the global random state
    second = [y for _, y in cd.make_loaders(data, batch_size=64, seed=3)[0]]
    other = [y for _, y in cd.make_loaders(data, batch_size=64, seed=4)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_cut_paste_moves_a_relit_rectangle_and_marks_it():
    import torch

    from course_utils import data

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g)
    pasted, masks = data.cut_paste(images, seed=1)
    assert pasted.shape == images.shape and masks.shape == (4, 64, 64)
    changed = (pasted != images).any(dim=1)  # [4, 64, 64]
    assert bool((changed <= (masks > 0)).all())  # nothing changes outside the mask
    assert all((64 // 8) ** 2 <= int(m.sum()) < (64 // 3) ** 2 for m in masks)  # sides S/8 to S/3
    again, _ = data.cut_paste(images, seed=1)
    assert torch.equal(again, pasted)  # seeded
    with pytest.raises(ValueError, match="cut_paste"):
        data.cut_paste(images[0])
