"""Tests of mura_aug.metrics: the math against closed forms and plain NumPy/SciPy references, the alarms,
memorisation, the extractors, the training hook and the `metrics` command.

Images are tiny (32 px) and made here: smooth random blobs that look vaguely like radiographs. The
generator is a tiny stand-in with NVlabs' call interface, so these tests do not depend on networks.py.
"""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mura_aug import cli
from mura_aug import metrics as M
from mura_aug.metrics import measures
from mura_aug.gan import measure
from mura_aug.errors import UserError
from mura_aug.workspace import Workspace

from metrics_helpers import RES, TinyGenerator, blob_images, metrics_workspace, write_dataset_zip  # noqa: F401


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is as fast, and much faster when other tests load the shared 2-core machine."""
    from threadpoolctl import threadpool_limits  # comes with scikit-learn; limits NumPy's BLAS threads

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------------

def reference_frechet(mu1, s1, mu2, s2):
    """Independent route: tr((S1 S2)^(1/2)) = sum of sqrt of the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig)))


def test_fid_of_a_set_with_itself_is_zero_and_positive_against_another_set():
    extractor = M.OfflineExtractor()
    features = extractor(blob_images(120, seed=0))
    assert M.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    different = extractor(np.clip(blob_images(120, seed=1).astype(int) // 2, 0, 255).astype(np.uint8))
    assert M.fid_from_features(features, different) > 1e-3


def test_frechet_distance_equals_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)  # 1 + 6.25 + 4 + 1 = 12.25
    assert M.frechet_distance(mu1, np.diag(sd1 ** 2), mu2, np.diag(sd2 ** 2)) == pytest.approx(closed_form, rel=1e-9)
    # Estimated from samples (Gaussian "features"), FID approaches the same closed form.
    rng = np.random.default_rng(0)
    a = mu1 + sd1 * rng.standard_normal((40000, 3))
    b = mu2 + sd2 * rng.standard_normal((40000, 3))
    assert M.fid_from_features(a, b) == pytest.approx(closed_form, rel=0.02)


def test_frechet_distance_matches_an_eigenvalue_reference_on_full_and_singular_covariances():
    rng = np.random.default_rng(3)
    for dim in (2, 7, 30):
        a, b = rng.standard_normal((dim, dim)), rng.standard_normal((dim, dim))
        s1, s2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-6)
    # Fewer samples than dimensions: singular covariances; still finite, >= 0 and close to the reference.
    x, y = rng.standard_normal((6, 20)), rng.standard_normal((6, 20)) + 0.5
    value = M.fid_from_features(x, y)
    expected = reference_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(value) and value >= 0
    assert value == pytest.approx(expected, rel=1e-3)


# --------------------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------------------

def test_mmd2_unbiased_matches_a_double_loop_reference():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 4)), rng.standard_normal((9, 4)) + 0.3
    kernel = lambda u, v: (u @ v / 4 + 1) ** 3  # noqa: E731
    xx = sum(kernel(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(kernel(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(kernel(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert M.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_on_a_case_with_an_analytic_value():
    # 1-D features, kernel (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1, so
    # MMD^2 = (E x^3 - E y^3)^2 + 3 (E x^2 - E y^2)^2 + 3 (E x - E y)^2.
    # x ~ N(0, 1): moments 0, 1, 0.  y ~ N(0.5, 1): moments 0.5, 1.25, 1.625.  MMD^2 = 3.578125.
    truth = 1.625 ** 2 + 3 * 0.25 ** 2 + 3 * 0.5 ** 2
    rng = np.random.default_rng(0)
    draws, size = 3000, 8  # small sets: a biased estimator would be far off
    unbiased, biased = [], []
    for _ in range(draws):
        x, y = rng.standard_normal((size, 1)), rng.standard_normal((size, 1)) + 0.5
        unbiased.append(M.kid_from_features(x, y, num_subsets=1, subset_size=size, seed=0)[0])
        k = lambda u, v: (u @ v.T + 1) ** 3  # noqa: E731
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    standard_error = np.std(unbiased) / np.sqrt(draws)
    assert abs(np.mean(unbiased) - truth) < 4 * standard_error
    assert abs(np.mean(biased) - truth) > 4 * standard_error  # the test can tell a biased estimator apart


def test_kid_with_precomputed_kernels_equals_kid_per_subset(monkeypatch):
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((50, 6)), rng.standard_normal((40, 6)) + 0.2
    fast = M.kid_from_features(a, b, num_subsets=7, subset_size=30, seed=3)
    monkeypatch.setattr(measures, "KID_PRECOMPUTE_MAX", 0)
    assert M.kid_from_features(a, b, num_subsets=7, subset_size=30, seed=3) == pytest.approx(fast, rel=1e-10)


def test_kid_of_identical_distributions_averages_to_zero():
    rng = np.random.default_rng(5)
    values = [M.kid_from_features(rng.standard_normal((20, 5)), rng.standard_normal((20, 5)),
                                  num_subsets=1, subset_size=20)[0] for _ in range(1500)]
    assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(len(values))
    # Different distributions: clearly positive.
    assert M.kid_from_features(rng.standard_normal((200, 5)), rng.standard_normal((200, 5)) + 1,
                               num_subsets=10, subset_size=100)[0] > 0.1


# --------------------------------------------------------------------------------------------------------
# Precision / recall, diversity, collapse
# --------------------------------------------------------------------------------------------------------

def reference_precision_recall(real, fake, k):
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)
    precision = np.mean([any(d[i, j] <= real_radii[j] for j in range(len(real))) for i in range(len(fake))])
    recall = np.mean([any(d[i, j] <= fake_radii[i] for i in range(len(fake))) for j in range(len(real))])
    return precision, recall


def test_precision_recall_match_a_reference_and_see_a_missing_mode():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.standard_normal((60, 3)), rng.standard_normal((60, 3)) + 8])  # two modes
    fake_one_mode = rng.standard_normal((60, 3))
    precision, recall = M.precision_recall(real, fake_one_mode, k=3)
    assert (precision, recall) == pytest.approx(reference_precision_recall(real, fake_one_mode, 3))
    assert precision > 0.8 and recall < 0.6  # realistic, but half the real variety is missing
    far_away = rng.standard_normal((40, 3)) + 100
    assert M.precision_recall(real, far_away, k=3) == (0.0, 0.0)
    assert M.precision_recall(real, real, k=3) == (1.0, 1.0)


def test_mean_pairwise_distance_matches_scipy():
    points = np.random.default_rng(4).standard_normal((50, 6))
    from scipy.spatial.distance import pdist

    assert M.mean_pairwise_distance(points) == pytest.approx(pdist(points).mean(), rel=1e-9)


def test_collapse_alarm_fires_on_a_collapsed_set_and_not_on_reals():
    extractor = M.OfflineExtractor()
    reals = blob_images(150, seed=0)
    real_features = extractor(reals)
    rng = np.random.default_rng(9)
    collapsed = np.repeat(reals[:1], 100, axis=0).astype(int) + rng.integers(-3, 4, size=(100, 3, RES, RES))
    collapsed_features = extractor(np.clip(collapsed, 0, 255).astype(np.uint8))
    assert M.diversity(real_features, collapsed_features)["collapse_alarm"] == 1.0
    other_reals = extractor(blob_images(100, seed=1))  # same distribution, other images
    healthy = M.diversity(real_features, other_reals)
    assert healthy["collapse_alarm"] == 0.0 and healthy["diversity_ratio"] == pytest.approx(1.0, abs=0.2)
    assert M.diversity(real_features, real_features)["collapse_alarm"] == 0.0


# --------------------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------------------

def test_memorisation_flags_an_exact_and_a_near_copy_only(tmp_path):
    reals = blob_images(80, seed=0)
    fakes = blob_images(20, seed=7)
    fakes[3] = reals[11]  # exact copy
    noisy = reals[42].astype(int) + np.random.default_rng(0).integers(-2, 3, size=reals[42].shape)
    fakes[15] = np.clip(noisy, 0, 255).astype(np.uint8)  # a copy saved with slight noise
    report = M.memorisation(fakes, reals)
    assert list(np.flatnonzero(report.flagged)) == [3, 15]
    assert report.nearest_real[3] == 11 and report.nearest_real[15] == 42
    assert report.distance[3] < 1e-6
    assert set(report.closest(2)) == {3, 15}

    from PIL import Image

    paths = []
    for index, image in enumerate(fakes):
        paths.append(tmp_path / f"fake_{index:02d}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(paths[-1])
    before = {p: p.read_bytes() for p in paths}
    assert M.memorised_fake_paths(paths, reals) == [paths[3], paths[15]]
    from_files = M.memorisation_of_files(paths, reals)  # what stage 05's filter reads: the same as from arrays
    assert np.flatnonzero(from_files.flagged).tolist() == [3, 15]
    assert from_files.nearest_real[3] == 11 and from_files.nearest_real[15] == 42
    assert from_files.threshold == pytest.approx(report.threshold)
    assert all(p.read_bytes() == data for p, data in before.items())  # inputs only read
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        M.memorised_fake_paths([tmp_path / "broken.png"], reals)


# --------------------------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------------------------

def test_offline_extractor_is_deterministic_and_accepts_grey_and_torch_input():
    images = blob_images(10, seed=3)
    first, second = M.OfflineExtractor(seed=0)(images), M.OfflineExtractor(seed=0)(torch.from_numpy(images))
    assert first.shape == (10, 512)
    assert first.dtype == np.float64 and np.array_equal(first, second)
    assert np.allclose(M.OfflineExtractor(seed=0)(images[:, :1]), first)  # grey = RGB with equal channels
    assert not np.allclose(M.OfflineExtractor(seed=1)(images), first)
    with pytest.raises(UserError, match="uint8"):
        M.OfflineExtractor()(images.astype(np.float32))
    with pytest.raises(UserError, match="Unknown feature extractor"):
        M.get_extractor("vgg")


def test_inception_without_network_says_to_use_the_offline_extractor(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError) as caught:
        M.get_extractor("inception", workspace=tmp_path)
    assert "--extractor offline" in str(caught.value) and str(Workspace(tmp_path).weights_cache) in str(caught.value)


def test_inception_extractor_preprocesses_and_returns_2048_features(tmp_path, monkeypatch):
    from torchvision.models import inception_v3

    seen = {}

    def fake_download(url, model_dir, **kwargs):
        seen["model_dir"] = model_dir
        torch.manual_seed(0)
        return inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()

    def nvidia_unreachable(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", nvidia_unreachable)
    with pytest.warns(UserWarning, match="not comparable with published"):
        extractor = M.get_extractor("inception", workspace=tmp_path)
    assert seen["model_dir"].startswith(str(Workspace(tmp_path).weights_cache))
    features = extractor(blob_images(2, seed=0))
    assert features.shape == (2, 2048) and features.dtype == np.float64 and np.isfinite(features).all()
    assert not extractor.comparable_with_published


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_inception_extractor_uses_a_local_torchscript_file(tmp_path, monkeypatch):
    class FakeFidNetwork(torch.nn.Module):  # NVIDIA's file: uint8-valued input, return_features=True
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.dtype == torch.uint8
            return x.to(torch.float32).mean(dim=(2, 3)).repeat(1, 683)[:, :2048] / 255.0

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(FakeFidNetwork()).save(str(path))
    extractor = M.get_extractor("inception", inception_file=path)
    images = blob_images(3, seed=0)
    features = extractor(images)
    assert features.shape == (3, 2048) and extractor.comparable_with_published
    assert features[:, 0] == pytest.approx(images[:, 0].mean(axis=(1, 2)) / 255.0, rel=1e-5)
    # downloaded once into the workspace's weights folder, then used from there without network
    downloads = []

    def fake_nvidia_download(url, dst, progress=True):
        downloads.append(url)
        Path(dst).write_bytes(path.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_nvidia_download)
    first = M.get_extractor("inception", workspace=tmp_path / "ws")
    second = M.get_extractor("inception", workspace=tmp_path / "ws")
    assert downloads == [M.NVIDIA_INCEPTION_URL] and first.comparable_with_published
    assert np.allclose(second(images), features)
    assert (Workspace(tmp_path / "ws").weights_cache / M.NVIDIA_INCEPTION_FILE).is_file()
    with pytest.raises(UserError, match="No Inception TorchScript file"):
        M.get_extractor("inception", inception_file=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a TorchScript model"):
        M.get_extractor("inception", inception_file=tmp_path / "junk.pt")


# --------------------------------------------------------------------------------------------------------
# Generating, the training hook
# --------------------------------------------------------------------------------------------------------

def test_generate_fakes_gives_image_i_from_seed_plus_i():
    G = TinyGenerator()
    batch = measure.generate_fakes(G, 5, seed=10, batch_size=2)
    assert batch.shape == (5, 3, RES, RES) and batch.dtype == np.uint8
    assert np.array_equal(measure.generate_fakes(G, 1, seed=13)[0], batch[3])


def test_training_metrics_returns_flat_floats_and_sees_collapse():
    G = TinyGenerator().train()
    reals = measure.generate_fakes(G, 60, seed=1000)  # "reals" from the same distribution as a healthy G's fakes
    result = measure.training_metrics(G, reals, num_fakes=40, device="cpu")
    expected = {"fid_offline", "kid_offline", "precision_offline", "recall_offline", "diversity_ratio",
                "collapse_alarm", "num_fakes", "num_reals"}
    assert expected <= set(result) and all(type(v) is float for v in result.values())
    assert G.training  # the loop's mode is restored
    calls = []

    class CountingExtractor(M.OfflineExtractor):
        def __call__(self, images):
            calls.append(len(images))
            return super().__call__(images)

    counting = CountingExtractor()
    first = measure.training_metrics(G, reals, num_fakes=40, extractor=counting)
    again = measure.training_metrics(G, reals.view(), num_fakes=40, extractor=counting)  # same memory, new object
    assert calls == [60, 40, 40] and first["fid_offline"] == again["fid_offline"]  # real features reused
    measure.clear_training_metrics_cache()
    measure.training_metrics(G, reals, num_fakes=40, extractor=counting)
    assert calls[3:] == [60, 40]
    assert result["num_fakes"] == 40.0 and result["collapse_alarm"] == 0.0
    collapsed = measure.training_metrics(TinyGenerator(collapse=True), reals, num_fakes=40, device="cpu")
    assert collapsed["collapse_alarm"] == 1.0 and collapsed["diversity_ratio"] < 0.05
    conditional = measure.training_metrics(TinyGenerator(c_dim=2), reals, num_fakes=20, device="cpu",
                                     real_labels=np.ones(60, dtype=np.int64))
    assert np.isfinite(conditional["fid_offline"])


# --------------------------------------------------------------------------------------------------------
# The `metrics` command
# --------------------------------------------------------------------------------------------------------

def test_metrics_command_writes_results_and_reuses_them(metrics_workspace, capsys):
    workspace, run = metrics_workspace
    args = ["metrics", "--workspace", str(workspace.root), "--run", run, "--num-fakes", "24", "--no-progress"]
    zip_path = workspace.datasets / f"XR_SHOULDER_positive_{RES}.zip"
    zip_bytes = zip_path.read_bytes()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "offline" in out and "network-000001.000kimg" in out  # newest snapshot by default
    result_file = workspace.results / "metrics" / run / "network-000001.000kimg.json"
    result = json.loads(result_file.read_text())
    positive = result["metrics"]["positive"]
    assert result["kimg"] == 1.0 and positive["num_fakes"] == 24 and positive["num_reals"] == 40
    assert positive["fid_offline"] > 0 and 0 <= positive["precision_offline"] <= 1
    nearest = (result_file.parent / "network-000001.000kimg_positive_nearest.csv").read_text().splitlines()
    assert nearest[0] == "seed,nearest_real,distance,flagged" and len(nearest) == 25
    assert nearest[1].split(",")[1].startswith("00000/img")  # the real's member name in the dataset zip
    assert (result_file.parent / "network-000001.000kimg_positive_closest_pairs.png").stat().st_size > 0
    assert zip_path.read_bytes() == zip_bytes  # the dataset is only read

    mtime = result_file.stat().st_mtime_ns
    assert cli.main(args) == 0
    assert "reused" in capsys.readouterr().out and result_file.stat().st_mtime_ns == mtime

    assert cli.main(args[:-1] + ["--snapshot", "network-000000.500kimg.pt", "--no-progress"]) == 0
    assert (workspace.results / "metrics" / run / "network-000000.500kimg.json").is_file()

    from mura_aug.gan.plots import plot_snapshot_metrics

    figure = plot_snapshot_metrics(workspace, run)
    assert len(figure.axes[0].lines) == 1 and len(figure.axes[0].lines[0].get_xdata()) == 2


def test_metrics_command_measures_both_classes_of_a_conditional_run(metrics_workspace):
    from mura_aug.gan.network_file import save_network_file

    workspace, _ = metrics_workspace
    write_dataset_zip(workspace.datasets / f"XR_SHOULDER_negative_{RES}.zip", blob_images(30, seed=5))
    run = f"XR_SHOULDER-both-tiny-{RES}"
    save_network_file(workspace.experiments / run / "network-000002.000kimg.pt", TinyGenerator(c_dim=2), kimg=2.0,
                      run=run, label="both")
    result = measure.measure_snapshot(workspace, run, num_fakes=16, progress=False)
    assert set(result["metrics"]) == {"positive", "negative"}
    assert result["metrics"]["negative"]["num_reals"] == 30 and result["metrics"]["positive"]["num_reals"] == 40
    # A conditional G's fakes follow the one-hot label (column 1 = positive), so the classes' fakes differ.
    conditional = TinyGenerator(c_dim=2)
    assert not np.array_equal(measure.generate_fakes(conditional, 4, classes=1),
                              measure.generate_fakes(conditional, 4, classes=0))


def test_metrics_command_errors_name_the_fix(metrics_workspace, capsys):
    workspace, run = metrics_workspace
    base = ["metrics", "--workspace", str(workspace.root), "--num-fakes", "24", "--no-progress"]
    assert cli.main(base + ["--run", "XR_SHOULDER-positive-tiny-999"]) == 2
    assert "No run folder" in capsys.readouterr().err
    assert cli.main(base + ["--run", run, "--snapshot", "network-9.pt"]) == 2
    assert "No snapshot file network-9.pt" in capsys.readouterr().err
    assert cli.main(base[:-3] + ["--num-fakes", "3", "--no-progress", "--run", run]) == 2
    assert "--num-fakes 3 is too few" in capsys.readouterr().err
    (workspace.datasets / f"XR_SHOULDER_positive_{RES}.zip").unlink()
    assert cli.main(base + ["--run", run]) == 2
    assert "python -m mura_aug prepare" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------

def test_training_metric_plot_reads_measured_ticks_from_stats_jsonl(tmp_path):
    from mura_aug.gan.plots import plot_closest_pairs, plot_training_metrics, read_metric_history

    lines = [{"kimg": 1.0, "loss_G": 1.2}, {"kimg": 2.0, "fid_offline": 30.0, "kid_offline": 0.02,
                                              "diversity_ratio": 0.9, "collapse_alarm": 0.0},
             {"Progress/kimg": {"num": 1, "mean": 4.0}, "fid_offline": 20.0, "diversity_ratio": 0.3}]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"kimg": 5.0, "fid_off'  # cut-off last line
    (tmp_path / "stats.jsonl").write_text(text)
    history = read_metric_history(tmp_path)
    assert history["fid_offline"] == [(2.0, 30.0), (4.0, 20.0)]
    figure = plot_training_metrics(tmp_path)
    fid_line = figure.axes[0].lines[0]
    assert list(fid_line.get_ydata()) == [30.0, 20.0]
    with pytest.raises(UserError, match="No stats.jsonl"):
        read_metric_history(tmp_path / "nowhere")

    reals, fakes = blob_images(10, seed=0), blob_images(5, seed=1)
    fakes[2] = reals[4]
    report = M.memorisation(fakes, reals)
    pairs = plot_closest_pairs(report, fakes, reals, count=3)
    assert "COPY?" in pairs.axes[0].get_title()

    # Fakes with a red tint are shown grey by the luma rule (what stage 05 saves), not by a channel mean.
    from mura_aug.imaging import grey_image

    tinted = fakes.copy()
    tinted[:, 0] = 255
    tinted_report = M.memorisation(tinted, reals)
    figure = plot_closest_pairs(tinted_report, tinted, reals, count=len(tinted))
    for column, index in enumerate(tinted_report.closest(len(tinted))):  # the top row holds the fakes
        shown = np.asarray(figure.axes[column].images[0].get_array())
        assert np.array_equal(shown, np.asarray(grey_image(tinted[index].transpose(1, 2, 0))))
        assert not np.allclose(shown, tinted[index].mean(axis=0))
