"""Image folders that tests write: root/split/label/imgNN.png."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_random_folder(root: Path, layout: dict[str, dict[str, int]], seed: int, size: int) -> Path:
    """``layout[split][label]`` images of size x size random RGB pixels (every image different)."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for label, count in classes.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"img{k:02d}.png")
    return root


def write_image(path: Path, color, size=(40, 30), mode="RGB"):
    """One image file of a single ``color`` (``mode`` ``"RGB"`` or ``"L"``), its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_folder(root: Path, layout: dict[str, dict[str, int]], size=(40, 30)) -> Path:
    """root/split/label/imgNN.png, each image one solid colour that encodes (split, label, number)."""
    for s, (split, classes) in enumerate(sorted(layout.items())):
        for c, (label, count) in enumerate(sorted(classes.items())):
            for k in range(count):
                write_image(root / split / label / f"img{k:02d}.png", (10 * s, 10 * c, k), size)
    return root
