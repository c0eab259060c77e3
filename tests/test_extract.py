"""The extract command end to end on image folders, the feature cache, errors, and import hygiene."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from image_folders import write_random_folder

from evojax_prune.cli import main as cli
from evojax_prune.data import extract, images
from evojax_prune.data.featureset import FeatureSet

SIZE = 32
needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="the features extra is not installed"
)


def write_folder(root: Path, layout: dict[str, dict[str, int]], seed: int) -> Path:
    return write_random_folder(root, layout, seed, size=36)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {
        "ind": write_folder(base / "ind", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 3}}, seed=0),
        "o1": write_folder(base / "o1", {"train": {"p": 6, "q": 6}}, seed=1),
        "o2": write_folder(base / "o2", {"train": {"r": 6}, "test": {"r": 2}}, seed=2),
    }


class Counts:
    """What an extraction computed, from its callbacks: backbone builds asked for and images run."""

    def __init__(self):
        self.builds = self.images = 0

    def on_progress(self, what, done, total):
        if done == 0:  # once per split, with the number of images not in the cache
            self.images += total

    def on_message(self, text):
        self.builds += text.startswith("building ResNet-50")


def extract_counted(folders, cache, counts, source=None, ood=("o1", "o2"), **options):
    """``extract_featureset`` as ``extract_args`` runs it, counted."""
    return extract.extract_featureset(
        source or folders["ind"], [folders[name] for name in ood], image_size=SIZE, weights=None,
        batch_size=4, cache_dir=cache, on_progress=counts.on_progress, on_message=counts.on_message,
        **options,
    )


def extract_args(folders, out, cache, *extra):
    return ["extract", "--folder", str(folders["ind"]), "--ood", str(folders["o1"]), str(folders["o2"]),
            "--image-size", str(SIZE), "--weights", "none", "--batch-size", "4", "--cache-dir", str(cache),
            "--out", str(out), "--quiet", *extra]


@needs_keras
def test_extract_end_to_end_then_from_the_cache(folders, tmp_path):
    from evojax_prune.data import backbone

    out, cache, counts = tmp_path / "features.npz", tmp_path / "cache", Counts()
    features = extract_counted(folders, cache, counts)
    assert counts.builds == 1

    # 12 train images: 3 held out for validation (stratified), 5 test, 5 + 5 OoD.
    assert features.x_train.shape == (9, 2048) and features.x_val.shape == (3, 2048)
    assert features.x_test.shape == (5, 2048) and features.y_test.tolist() == [0, 0, 1, 1, 1]
    assert features.ood_val.shape == features.ood_test.shape == (5, 2048)
    assert features.class_names == ("a", "b")
    assert sorted(np.bincount(features.y_train).tolist()) == [4, 5]
    # Every image computed once: 12 train + 5 test + 10 OoD.
    assert counts.images == 27

    # The rows are the features of the right images.
    dataset = images.load_folder(folders["ind"])
    direct_test = backbone.load_backbone(SIZE, None, batch_size=4)(dataset.splits["test"].images(SIZE))
    np.testing.assert_allclose(features.x_test, direct_test, rtol=1e-6, atol=1e-6)
    assert len({row.tobytes() for row in np.concatenate([features.x_train, features.x_val])}) == 12

    meta = features.metadata
    assert meta["random_weights"] is True and meta["name"] == "ind-random-weights"
    assert "RANDOM WEIGHTS" in meta["feature_extractor"] and meta["backbone"]["weights"] == "random"
    assert meta["image_size"] == SIZE and meta["source"] == f"folder:{folders['ind'].resolve()}"
    assert meta["splits"]["val"]["size"] == 3 and meta["splits"]["seed"] == 0
    assert meta["ood"]["per_split"] == 5 and [s["per_split"] for s in meta["ood"]["sources"]] == [3, 2]
    json.dumps(meta)

    # Again: everything from the cache, the backbone is not even asked for, the same features;
    # the command writes the same file.
    again = Counts()
    second = extract_counted(folders, cache, again)
    assert (again.builds, again.images) == (0, 0)
    assert cli.main(extract_args(folders, out, cache)) == 0
    for loaded in (second, FeatureSet.load(out)):
        for name, array in features.arrays().items():
            np.testing.assert_array_equal(getattr(loaded, name), array)

    # Another seed: only the OoD images not seen yet are computed.
    seed1 = Counts()
    extract_counted(folders, cache, seed1, seed=1)
    assert 0 < seed1.images <= 10 and seed1.builds == 1


@needs_keras
def test_damaged_cache_file_is_recomputed(folders, tmp_path):
    cache = tmp_path / "cache"
    extract_counted(folders, cache, Counts(), ood=("o1",))
    files = sorted(cache.glob("*.npz"))
    assert [f.name.split("-")[:3] for f in files] == [
        ["ind", "test", "32px"], ["ind", "train", "32px"], ["o1", "train", "32px"]
    ]
    files[0].write_bytes(b"damaged")
    counts = Counts()
    with pytest.warns(UserWarning, match="unreadable feature cache file"):
        extract_counted(folders, cache, counts, ood=("o1",))
    assert counts.images == 5  # the test split again, nothing else
    counts = Counts()
    extract_counted(folders, cache, counts, ood=("o1",), use_cache=False)
    assert counts.images == 12 + 5 + 10


@needs_keras
def test_an_unreadable_image_is_named(tmp_path, folders, capsys):
    ind = write_folder(tmp_path / "bad", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}, seed=3)
    (ind / "train" / "b" / "img01.png").write_bytes(b"not a png")
    args = extract_args(folders, tmp_path / "out.npz", tmp_path / "cache")
    args[args.index("--folder") + 1] = str(ind)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{ind.resolve() / 'train' / 'b' / 'img01.png'}: cannot read this image" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out.npz").exists()


@needs_keras
@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None, reason="no tensorflow-datasets")
def test_extract_from_tfds_with_mock_data(tmp_path, folders):
    tfds = images.import_tfds()
    big_ood = write_folder(tmp_path / "big", {"train": {"u": 30, "v": 30}}, seed=4)
    out = tmp_path / "rps.npz"
    args = extract_args(folders, out, tmp_path / "cache")
    args[args.index("--folder"):args.index("--folder") + 2] = ["--tfds", "rock_paper_scissors"]
    args[args.index("--ood") + 1:args.index("--ood") + 3] = [str(big_ood)]
    counts = Counts()
    with tfds.testing.mock_data(num_examples=20):
        assert cli.main(args) == 0
        extract_counted({"big": big_ood}, tmp_path / "cache", counts, source=images.TFDS_PREFIX
                        + "rock_paper_scissors", ood=("big",))
    assert counts.images == 0  # the command computed and cached every image once
    features = FeatureSet.load(out)
    assert features.class_names == ("rock", "paper", "scissors")
    assert features.x_train.shape[0] + features.x_val.shape[0] == 20 and features.x_test.shape[0] == 20
    assert features.ood_val.shape[0] == features.ood_test.shape[0] == 20
    meta = features.metadata
    assert meta["source"] == "tfds:rock_paper_scissors" and meta["image_size"] == SIZE
    assert meta["ood"]["sources"] == [
        {"source": f"folder:{big_ood.resolve()}", "per_split": 20, "per_class": {"u": 10, "v": 10}}
    ]
    uncached = Counts()
    with tfds.testing.mock_data(num_examples=20):
        extract_counted({"big": big_ood}, tmp_path / "cache", uncached, source=images.TFDS_PREFIX
                        + "rock_paper_scissors", ood=("big",), use_cache=False)
    assert uncached.images == 20 + 20 + 40


def test_existing_output_is_refused_without_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "features.npz"
    out.write_bytes(b"precious")
    assert cli.main(extract_args(folders, out, tmp_path / "cache")) == 2
    assert "features.npz: already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--folder": "{tmp}/missing"}, "missing: no such folder"),
        ({"--weights": "{tmp}/r50.h5"}, "r50.h5: no such file; pass the path of a ResNet-50 weights file"),
        ({"--ood": "{ind}"}, "is the in-distribution data set; it cannot also be OoD"),
        ({"--out": "{tmp}/no/dir/f.npz"}, "directory {tmp}/no/dir does not exist"),
        ({"--image-size": "16"}, "image size must be at least 32"),
    ],
)
def test_input_errors_exit_2_with_one_line(folders, tmp_path, capsys, change, message):
    args = extract_args(folders, tmp_path / "out.npz", tmp_path / "cache")
    for flag, value in change.items():
        value = value.format(tmp=tmp_path, ind=folders["ind"])
        position = args.index(flag) + 1
        if flag == "--ood":
            args[position:position + 2] = [value]
        else:
            args[position] = value
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1


def test_ood_is_required():
    with pytest.raises(ValueError, match="at least one OoD data set"):
        extract.extract_featureset("whatever", [])


def test_weights_argument():
    assert extract.parse_weights("imagenet") == "imagenet" and extract.parse_weights("ImageNet") == "imagenet"
    assert extract.parse_weights("none") is None and extract.parse_weights("random") is None
    assert extract.parse_weights("w/r50.h5") == "w/r50.h5"


def test_core_package_and_register_work_without_keras_or_tensorflow(tmp_path, folders):
    code = textwrap.dedent(
        f"""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("keras", "tensorflow", "tensorflow_datasets", "tf_keras"):
                    raise ImportError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Blocked())
        import evojax_prune
        from evojax_prune.cli import main as cli
        from evojax_prune.data import extract, images

        args = cli.build_parser().parse_args(
            ["extract", "--folder", "x", "--ood", "y", "z", "--out", "f.npz", "--weights", "none"]
        )
        assert args.handler is extract.run_extract and args.ood == ["y", "z"], args
        dataset = images.load_folder({str(folders["ind"])!r})
        assert dataset.splits["test"].images(32)[0:2].shape == (2, 32, 32, 3)
        try:
            import keras
        except ImportError:
            pass
        else:
            raise AssertionError("the blocker does not block")
        heavy = [m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "tensorflow_datasets")]
        assert not heavy, heavy
        print("ok")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


@needs_keras
def test_paper_protocol_end_to_end_and_resize_in_the_cache_key(folders, tmp_path):
    from evojax_prune.data import backbone

    cache, counts = tmp_path / "cache", Counts()
    paper = extract_counted(folders, cache, counts, protocol="paper")
    assert counts.images == 12 + 5 + 10
    # The InD test split has 5 images: o1 gets 3 (p 2, q 1), o2 gets 2 (r 2), the first of each class
    # of each train folder in file-name order; OoD validation the next ones. All resized nearest.
    net = backbone.load_backbone(SIZE, None, batch_size=4)

    def direct(name, split, positions):
        return net(images.load_folder(folders[name]).splits[split].images(SIZE, positions, resize="nearest"))

    np.testing.assert_allclose(
        paper.ood_test, np.concatenate([direct("o1", "train", [0, 1, 6]), direct("o2", "train", [0, 1])]),
        rtol=1e-6, atol=1e-6,
    )
    np.testing.assert_allclose(
        paper.ood_val, np.concatenate([direct("o1", "train", [2, 3, 7]), direct("o2", "train", [2, 3])]),
        rtol=1e-6, atol=1e-6,
    )
    np.testing.assert_allclose(paper.x_test, direct("ind", "test", None), rtol=1e-6, atol=1e-6)
    meta = paper.metadata
    assert (meta["protocol"], meta["ood_order"], meta["resize"]) == ("paper", "folder", "nearest")
    assert meta["protocol_overrides"] == ["image_size"]  # 32 px, and 'ind' is not an authors' data set
    assert meta["image_size"] == SIZE and meta["image_size_from"] == "given"
    assert meta["resize_method"] == images.RESIZE_METHODS["nearest"] and meta["ood"]["order"] == "folder"
    assert [s["test_per_class"] for s in meta["ood"]["sources"]] == [{"p": 2, "q": 1}, {"r": 2}]

    # The default protocol in the same cache: bilinear features are never served from nearest ones.
    default = Counts()
    features = extract_counted(folders, cache, default)
    assert default.images == 12 + 5 + 10
    assert not np.allclose(features.x_test, paper.x_test)
    meta = features.metadata
    assert (meta["protocol"], meta["ood_order"], meta["resize"], meta["protocol_overrides"]) == (
        "default", "random", "bilinear", []
    )
    assert len(list(cache.glob("ind-test-32px-*.npz"))) == 2

    # The command, from the cache; one choice overridden is recorded as such.
    out = tmp_path / "paper.npz"
    assert cli.main(extract_args(folders, out, cache, "--protocol", "paper", "--resize", "bilinear")) == 0
    meta = FeatureSet.load(out).metadata
    assert (meta["protocol"], meta["ood_order"], meta["resize"]) == ("paper", "folder", "bilinear")
    assert meta["protocol_overrides"] == ["resize", "image_size"]


def test_cache_key_names_the_resize_method(folders):
    split = images.load_folder(folders["ind"]).splits["train"]
    bilinear = extract.FeatureCache.key(split, SIZE, "random")
    nearest = extract.FeatureCache.key(split, SIZE, "random", "nearest")
    assert bilinear == extract.FeatureCache.key(split, SIZE, "random", "bilinear")
    # Unchanged from before the option existed, so earlier cache files stay valid.
    assert bilinear["resize"] == "Pillow bilinear resize to S x S (aspect ratio not kept), RGB"
    assert {k for k in bilinear if bilinear[k] != nearest[k]} == {"resize"}
    cache = extract.FeatureCache("unused")
    assert cache.path(bilinear) != cache.path(nearest)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--protocol", "keras"], "argument --protocol: invalid choice: 'keras'"),
        (["--ood-order", "sideways"], "argument --ood-order: invalid choice: 'sideways'"),
        (["--resize", "cubic"], "argument --resize: invalid choice: 'cubic'"),
        (["--protocol", "paper", "--image-size", None],
         "--protocol paper: 'ind' is not a data set the authors used, so their image size is unknown"),
    ],
)
def test_bad_protocol_flags_exit_2_with_one_line(folders, tmp_path, capsys, flags, message):
    args = extract_args(folders, tmp_path / "out.npz", tmp_path / "cache")
    if flags[-1] is None:  # drop the option instead
        position = args.index(flags[-2])
        del args[position:position + 2]
        flags = flags[:-2]
    try:
        code = cli.main([*args, *flags])
    except SystemExit as exit_:  # argparse's own refusal of a bad choice
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.npz").exists()
