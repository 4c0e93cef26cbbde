"""The seeded Pathfinder generator: determinism, labels, geometry, the files and the datamodule reading them.

Geometry checks use their own distance code (dense points along each dash), not the generator's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ssmzoo.data.lra.pathfinder import PathfinderDataModule, read_metadata
from ssmzoo.data.lra.pathfinder_generator import (
    EXTRA_CLEARANCE,
    SIZE_CONFIGS,
    generate_pathfinder,
    main,
    make_sample,
    render_mask,
    sample_label,
)


@pytest.fixture(autouse=True)
def _data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "cache"))


def read_folder(folder):
    """{relative image path: (pixels, label)} from the metadata and PNGs, read without our loader."""
    out = {}
    for meta in sorted((folder / "metadata").glob("*.npy")):
        for line in meta.read_text().splitlines():
            d, name, _, label = line.split()[:4]
            out[f"{d}/{name}"] = (np.asarray(Image.open(folder / d / name)), int(label))
    return out


# ----------------------------------------------------------------------------------------------------
# Independent geometry: points every 0.01 px along one shape, exact distance to the other's segment


def shapes_of(sample):
    """Every dash and the two markers as (segment ends (S, 2, 2), half-width, contour, is marker)."""
    cfg = SIZE_CONFIGS[sample.size]
    ends, half, contour, marker = [], [], [], []
    for c, dashes in enumerate(sample.contours):
        ends += list(dashes)
        half += [cfg.thickness / 2] * len(dashes)
        contour += [c] * len(dashes)
        marker += [False] * len(dashes)
    for centre, c in zip(sample.markers, sample.marked):
        ends.append(np.stack([centre, centre]))
        half.append(cfg.marker_radius)
        contour.append(c)
        marker.append(True)
    return np.stack(ends), np.array(half), np.array(contour), np.array(marker)


def edge_distances(sample):
    """(S, S) edge-to-edge distances between all dashes and markers, and their contours / marker flags
    (accurate to 0.005 px)."""
    ends, half, contour, marker = shapes_of(sample)
    t = np.linspace(0, 1, 501)
    pts = ends[:, None, 0] + t[None, :, None] * (ends[:, None, 1] - ends[:, None, 0])  # (S, T, 2)
    a, b = ends[None, None, :, 0], ends[None, None, :, 1]  # (1, 1, S, 2)
    ab = b - a
    p = pts[:, :, None]  # (S, T, 1, 2)
    u = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    d = np.linalg.norm(p - (a + u[..., None] * ab), axis=-1).min(axis=1)  # (S, S)
    centre = np.minimum(d, d.T)
    return centre - half[:, None] - half[None, :], contour, marker


def markers_joined(sample, link):
    """Whether the two markers are in one group of shapes linked when closer than ``link`` (edge to edge)."""
    dist, _, _ = edge_distances(sample)
    parent = list(range(len(dist)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(dist <= link)):
        parent[find(i)] = find(j)
    return find(len(dist) - 2) == find(len(dist) - 1)


SAMPLES = [(size, index) for size in (32, 64, 128) for index in range(3)]


@pytest.mark.parametrize("size,index", SAMPLES)
def test_markers_joined_exactly_when_positive_geometry(size, index):
    sample = make_sample(size, 14, seed=5, index=index)
    m = sample.margin
    # gaps inside a contour are at most 2m and between contours at least 2m + EXTRA_CLEARANCE:
    # linking at the midway distance joins exactly the contours
    assert markers_joined(sample, 2 * m + EXTRA_CLEARANCE / 2) == (sample.label == 1)
    assert (sample.marked[0] == sample.marked[1]) == (sample.label == 1)


@pytest.mark.parametrize("size,index", SAMPLES)
def test_clearances(size, index):
    sample = make_sample(size, 14, seed=7, index=index)
    dist, contour, marker = edge_distances(sample)
    other = contour[:, None] != contour[None, :]
    assert dist[other].min() >= 2 * sample.margin + EXTRA_CLEARANCE - 0.02
    # within a contour, dashes that are not neighbours keep the same clearance
    n_dashes = sum(len(c) for c in sample.contours)
    dash_index = np.concatenate([np.arange(len(c)) for c in sample.contours])
    same = ~other[:n_dashes, :n_dashes] & (np.abs(dash_index[:, None] - dash_index[None, :]) > 1)
    if same.any():
        assert dist[:n_dashes, :n_dashes][same].min() >= 2 * sample.margin + EXTRA_CLEARANCE - 0.02
    # everything inside the window
    for dashes in sample.contours:
        assert dashes.min() >= 0 and dashes.max() <= size
    r = SIZE_CONFIGS[size].marker_radius
    assert sample.markers.min() >= r - 1e-9 and sample.markers.max() <= size - r + 1e-9


def dilate(mask, radius):
    """Binary dilation by a disk, through an FFT convolution."""
    k = np.arange(-radius, radius + 1)
    disk = (k[:, None] ** 2 + k[None, :] ** 2 <= radius**2).astype(float)
    h, w = mask.shape
    shape = (h + 2 * radius, w + 2 * radius)
    conv = np.fft.irfft2(np.fft.rfft2(mask.astype(float), shape) * np.fft.rfft2(disk, shape), shape)
    return conv[radius : radius + h, radius : radius + w] > 0.5


@pytest.mark.parametrize("size,index", [(32, 0), (32, 1), (32, 2), (32, 3), (64, 0), (64, 1)])
def test_markers_connected_through_drawn_pixels_exactly_when_positive(size, index):
    """On the binary drawing at 16x before downsampling, grown by a disk that bridges the gaps in a
    contour (2m) but not those between contours (2m + 0.5), a flood fill from one marker reaches
    the other exactly for positives."""
    sample = make_sample(size, 14, seed=11, index=index)
    s, m = 16, sample.margin
    mask = render_mask(sample, supersample=s)
    grown = dilate(mask, int(round((m + EXTRA_CLEARANCE / 4) * s)))  # bridges 2m + 0.25 px
    canvas = Image.fromarray(np.where(grown, 255, 0).astype(np.uint8)).copy()  # writable
    (ax, ay), (bx, by) = (sample.markers * s).astype(int)
    ImageDraw.floodfill(canvas, (int(ax), int(ay)), 128)
    reached = np.asarray(canvas)[by, bx] == 128
    assert reached == (sample.label == 1)


# ----------------------------------------------------------------------------------------------------
# Construction


@pytest.mark.parametrize("contour_length", [6, 9, 14])
def test_contour_length_sets_the_number_and_shape_of_dashes(contour_length):
    cfg = SIZE_CONFIGS[32]
    for index in range(3):
        sample = make_sample(32, contour_length, seed=2, index=index)
        m = sample.margin
        for dashes in sample.contours[:2]:
            assert len(dashes) == contour_length
            np.testing.assert_allclose(np.linalg.norm(dashes[:, 1] - dashes[:, 0], axis=-1), cfg.paddle_length)
            gaps = np.linalg.norm(dashes[1:, 0] - dashes[:-1, 1], axis=-1)
            assert gaps.max() <= 2 * m + 1e-9 and gaps.min() > 0
            heading = np.arctan2(*(dashes[:, 1] - dashes[:, 0])[:, ::-1].T)
            turn = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
            assert turn.max() <= np.pi / (2 * cfg.continuity) + 1e-9
        distractors = sample.contours[2:]
        assert len(distractors) <= cfg.distractor_budget // (contour_length // 3)
        assert all(len(d) == contour_length // 3 for d in distractors)


def test_longer_contours_draw_longer_strokes():
    def target_ink(contour_length):
        total = 0
        for index in range(4):
            sample = make_sample(32, contour_length, seed=3, index=index)
            targets = dataclasses.replace(sample, contours=sample.contours[:2], markers=np.zeros((0, 2)))
            total += render_mask(targets, supersample=8).sum()
        return total

    ratio = target_ink(14) / target_ink(6)
    assert 14 / 6 * 0.85 < ratio < 14 / 6 * 1.15


def test_seed_distance_and_centre():
    for size in (32, 64, 128):
        cfg = SIZE_CONFIGS[size]
        sample = make_sample(size, 14, seed=4, index=0)
        first, second = sample.contours[0][0, 0], sample.contours[1][0, 0]
        assert math.isclose(np.linalg.norm(second - first), cfg.seed_distance, rel_tol=1e-9)
        assert (first >= 2 * cfg.seed_distance).all() and (first <= size - 2 * cfg.seed_distance).all()


def test_image_is_the_scaled_drawing():
    for size in (32, 64, 128):
        sample = make_sample(size, 14, seed=0, index=1)
        img = sample.image
        assert img.dtype == np.uint8 and img.shape == (size, size) and img.max() == 255
        # the markers are bright and most of the image is black
        for x, y in sample.markers.astype(int):
            assert img[y, x] > 127
        assert (img == 0).mean() > 0.4


# ----------------------------------------------------------------------------------------------------
# Labels and determinism


def test_labels_exactly_balanced():
    labels = np.array([sample_label(0, i) for i in range(1000)])
    assert labels.sum() == 500
    assert (labels[0::2] + labels[1::2] == 1).all()  # one positive in every pair
    assert 0.35 < labels[0::2].mean() < 0.65  # which one is a coin, not a pattern
    assert [sample_label(1, i) for i in range(20)] != list(labels[:20])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_pathfinder(tmp_path / "a", n=6, seed=3, batch_size=4)
    b = generate_pathfinder(tmp_path / "b", n=6, seed=3, batch_size=4)
    c = generate_pathfinder(tmp_path / "c", n=6, seed=4, batch_size=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 6 + 2
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in files if rel.suffix == ".png")


def test_sample_depends_only_on_its_index(tmp_path):
    """The batching and the number of samples do not change a sample."""
    a = read_folder(generate_pathfinder(tmp_path / "a", n=5, seed=1, batch_size=2))
    b = read_folder(generate_pathfinder(tmp_path / "b", n=3, seed=1, batch_size=3))
    for index in range(3):
        pa, la = a[f"imgs/{index // 2}/sample_{index % 2}.png"]
        pb, lb = b[f"imgs/0/sample_{index}.png"]
        np.testing.assert_array_equal(pa, pb)
        assert la == lb == sample_label(1, index)
        np.testing.assert_array_equal(pa, make_sample(32, 14, 1, index).image)


# ----------------------------------------------------------------------------------------------------
# Files


def test_official_layout_read_by_the_datamodule(tmp_path):
    folder = generate_pathfinder(tmp_path / "pathfinder32", n=20, seed=0, batch_size=8)
    assert folder == tmp_path / "pathfinder32" / "curv_contour_length_14"
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    assert sorted(p.name for p in (folder / "imgs").iterdir()) == ["0", "1", "2"]
    truth = read_folder(folder)
    assert len(truth) == 20 and sum(label for _, label in truth.values()) == 10
    assert [label for _, label in read_metadata(folder)] == [label for _, label in truth.values()]

    dm = PathfinderDataModule(data_dir=str(folder), resolution=32, batch_size=4)
    by_pixels = {pixels.tobytes(): label for pixels, label in truth.values()}
    seen = 0
    for split in ("train", "val", "test"):
        seqs, labels = dm.load_split(split)
        for seq, label in zip(seqs, labels):
            assert seq.shape == (1024, 1)
            pixels = np.rint((seq[:, 0] + 1) * 127.5).astype(np.uint8).reshape(32, 32)
            assert by_pixels[pixels.tobytes()] == label
            seen += 1
    assert seen == 20
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1024, 1) and -1 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("contour_length,name", [(6, "curv_baseline"), (9, "curv_contour_length_9")])
def test_folder_names_follow_the_release(tmp_path, contour_length, name):
    folder = generate_pathfinder(tmp_path, n=2, contour_length=contour_length)
    assert folder.name == name
    assert len(read_folder(folder)) == 2


def test_path_x_size(tmp_path):
    folder = generate_pathfinder(tmp_path, size=128, n=10)
    dm = PathfinderDataModule(data_dir=str(folder), resolution=128)
    seqs, labels = dm.load_split("train")
    assert len(seqs) == 8 and seqs[0].shape == (128 * 128, 1)


def test_refuses_to_mix_with_an_earlier_data_set(tmp_path):
    generate_pathfinder(tmp_path, n=4, batch_size=2)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_pathfinder(tmp_path, n=2, batch_size=2)
    folder = generate_pathfinder(tmp_path, n=2, batch_size=2, overwrite=True)
    assert len(read_folder(folder)) == 2 and not (folder / "imgs" / "1").exists()


def test_workers_write_the_same_files(tmp_path):
    a = generate_pathfinder(tmp_path / "a", n=6, workers=1)
    b = generate_pathfinder(tmp_path / "b", n=6, workers=2)
    for p in a.rglob("*.png"):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    assert (a / "metadata" / "0.npy").read_text() == (b / "metadata" / "0.npy").read_text()


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"size": 48}, "size"),
        ({"contour_length": 10}, "contour_length"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        generate_pathfinder(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_command_line(tmp_path, capsys):
    folder = main(["--out", str(tmp_path), "--size", "32", "--n", "4", "--seed", "2", "--contour-length", "9",
                   "--batch-size", "3"])
    assert folder == tmp_path / "curv_contour_length_9"
    out = capsys.readouterr().out
    assert "wrote 4 GENERATED 32x32 Pathfinder images" in out and "not the LRA release" in out
    assert len(read_folder(folder)) == 4
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--size", "48"])
    assert "--size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "y"), "--n", "0"])
    assert "n must be" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# `ssmzoo data pathfinder` and GeneratedPathfinderDataModule


@pytest.mark.parametrize("entry", ["registry", "ssmzoo"])
def test_ssmzoo_data_pathfinder_writes_what_the_datamodule_reads(tmp_path, capsys, entry):
    args = ["pathfinder", "--out", str(tmp_path / "out"), "--size", "32", "--n", "6", "--seed", "3",
            "--contour-length", "14"]
    if entry == "registry":
        from ssmzoo.data.commands import data_commands
        from ssmzoo.data.commands import main as data_main

        assert "pathfinder" in data_commands()
        folder = data_main(args)
    else:
        from ssmzoo.cli import main as ssmzoo_main

        ssmzoo_main(["data", *args])
        folder = tmp_path / "out" / "curv_contour_length_14"
    assert "GENERATED" in capsys.readouterr().out
    truth = read_folder(folder)
    dm = PathfinderDataModule(data_dir=str(folder), resolution=32, val_fraction=1 / 6, test_fraction=1 / 6)
    seqs, labels = dm.load_split("train")
    assert len(labels) == 4 and all(s.shape == (1024, 1) for s in seqs)
    # the same images as the generator's own samples with that seed
    assert {img.tobytes() for img, _ in truth.values()} == {make_sample(32, 14, 3, i).image.tobytes() for i in range(6)}


def test_generated_datamodule_writes_once_under_generated_and_labels_it(tmp_path, monkeypatch):
    from ssmzoo.data.lra import GeneratedPathfinderDataModule, pathfinder

    dm = GeneratedPathfinderDataModule(n=10, contour_length=6, generator_seed=2, batch_size=4)
    cache = tmp_path / "cache"
    assert dm.folder == cache / "generated" / "pathfinder32" / dm.folder.parent.name / "curv_baseline"
    assert "lra_release" not in str(dm.folder)
    assert "generated" in dm.generated and "not the LRA release" in dm.generated
    dm.prepare_data()
    # the files are the generator's, for that seed and contour length
    reference = generate_pathfinder(tmp_path / "reference", n=10, seed=2, contour_length=6)
    for png in reference.rglob("*.png"):
        assert png.read_bytes() == (dm.folder / png.relative_to(reference)).read_bytes()
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1024, 1) and len(dm.load_split("train")[1]) == 8

    # another datamodule with the same arguments reads them and generates nothing
    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    with monkeypatch.context() as patch:
        patch.setattr("ssmzoo.data.lra.pathfinder_generator.generate_pathfinder", no_generation)
        again = GeneratedPathfinderDataModule(n=10, contour_length=6, generator_seed=2)
        again.prepare_data()
        assert np.array_equal(again.load_split("test")[1], dm.load_split("test")[1])
    # other arguments are another data set, in another folder; another contour length sits beside this one
    assert GeneratedPathfinderDataModule(n=10, contour_length=6, generator_seed=3).folder != dm.folder
    assert pathfinder.generated_dir(32, 6, 10, 2) == dm.folder
    longer = GeneratedPathfinderDataModule(n=10, contour_length=9, generator_seed=2)
    longer.prepare_data()
    assert longer.folder.parent == dm.folder.parent and len(longer.load_split("train")[1]) == 8
    assert sorted(p.name for p in dm.folder.parent.iterdir()) == ["curv_baseline", "curv_contour_length_9"]


def test_generated_datamodule_refuses_a_folder_it_did_not_complete(tmp_path):
    from ssmzoo.data.lra import GeneratedPathfinderDataModule

    dm = GeneratedPathfinderDataModule(n=10, contour_length=6)
    (dm.folder / "imgs").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="params.json"):
        dm.prepare_data()


@pytest.mark.parametrize("kwargs,name", [({"n": 2}, "n"), ({"resolution": 256}, "resolution"),
                                         ({"contour_length": 7}, "contour_length"),
                                         ({"generator_seed": -1}, "generator_seed"),
                                         ({"generator_workers": 0}, "generator_workers")])
def test_generated_datamodule_bad_arguments_name_the_argument(kwargs, name):
    from ssmzoo.data.lra import GeneratedPathfinderDataModule

    with pytest.raises(ValueError, match=f"GeneratedPathfinderDataModule: {name} must"):
        GeneratedPathfinderDataModule(**kwargs)


def test_lra_package_exports():
    import ssmzoo.data.lra as lra

    for name in ("generate_pathfinder", "FashionMNISTDataModule", "read_idx", "GeneratedPathfinderDataModule"):
        assert name in lra.__all__ and getattr(lra, name) is not None
