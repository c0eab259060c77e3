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
