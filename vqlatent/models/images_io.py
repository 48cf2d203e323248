"""Reading a folder (or glob) of images for `--mode=encode` / `--mode=reconstruct`, writing PNGs.

Files are found recursively (following each symlinked directory at most once per real path), sorted
by their path relative to the input, decoded with PIL, converted to the model's channels ('L' or
'RGB') and centre-cropped and resized to the model's training size exactly as training data is
(`vqlatent.data.preprocess.center_crop_resize`: the largest centred crop of the target aspect, PIL
bicubic). Files PIL cannot read are skipped and listed.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
from PIL import Image

from vqlatent.data.preprocess import center_crop_resize
from vqlatent.utils import errors

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageSourceError(errors.UserError, ValueError):
    """An input that names no images."""


@dataclasses.dataclass
class ImageFile:
    path: str  # As found.
    relpath: str  # Relative to the input folder (the file name for a glob).


def list_images(source: str) -> list[ImageFile]:
    """The image files of a folder (recursive) or a glob pattern, sorted by relative path."""
    if not source:
        raise ImageSourceError("No input given: set the mode's `input` to a folder of images or a glob.")
    if os.path.isdir(source):
        root = os.path.abspath(source)
        found, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # A symlink cycle or a second link to the same folder.
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(EXTENSIONS):
                    path = os.path.join(dirpath, name)
                    found.append(ImageFile(path, os.path.relpath(path, root)))
        files = sorted(found, key=lambda f: f.relpath)
    else:
        paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        files = [ImageFile(p, os.path.basename(p)) for p in paths]
        names = [f.relpath for f in files]
        if len(set(names)) != len(names):  # Same names in several folders: keep the full path.
            files = [ImageFile(p, os.path.relpath(p)) for p in paths]
    if not files:
        raise ImageSourceError(
            f"No image files ({', '.join(EXTENSIONS)}) in {source!r}: give a folder of images "
            f"(searched recursively) or a glob such as 'photos/*.jpg'."
        )
    return files


def read_image(path: str, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [H, W, channels], centre-cropped and resized to `size` (None: the file's own size)."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.asarray(image, np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return center_crop_resize(array, size) if size is not None else array


def read_images(
    files: list[ImageFile], channels: int, size: tuple[int, int] | None
) -> tuple[list[np.ndarray], list[ImageFile], list[dict[str, str]]]:
    """(arrays, the files they came from, [{'path', 'error'}] of the files skipped)."""
    arrays, kept, skipped = [], [], []
    for f in files:
        try:
            arrays.append(read_image(f.path, channels, size))
            kept.append(f)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append({"path": f.relpath, "error": f"{type(e).__name__}: {e}"})
    return arrays, kept, skipped


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an image [H, W, C] in [0, 1] (float) or uint8 as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
