"""Preparing a folder of images (`vqlatent.data.image_folder`) into array_record shards.

Runs once, on first use (or ahead of time with `python -m vqlatent.data.prepare
--dataset=image_folder --folder=DIR --image_size=S`): `scan` lists the folder and
splits it, every image is decoded with PIL, converted to `data.channels` (None: all
images must agree), centre-cropped and resized to `data.image_size` (None: all images
must have one size) with `preprocess.center_crop_resize`, and stored losslessly as
PNG in array_record shards under `<data_dir>/image_folder/<folder name>-<hash>/`
(`prepared_dir`). Every header is checked before anything is written, so a folder
that cannot work (empty, mixed channel counts or sizes, images smaller than the
target) fails at once with what to change. Files PIL cannot read are skipped: each
is logged with PIL's reason and listed in `manifest.json`. Each shard is written
under a temporary name and renamed when complete, the manifest last; a killed
preparation resumes at its first missing shard (with a progress bar).

The prepared data is keyed by content: the plan records each file's size, modification time
and SHA-256, and a folder whose files changed since (same names, other bytes: an image fixed or
replaced) is prepared again on its next use; a folder with other files is refused with what
to do. Symbolic links are followed once per real directory and file (no cycles, no image
twice), and a file in both train/ and test/ is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from vqlatent.data import preprocess
from vqlatent.data.sources import DataError, cfg_value
from vqlatent.data.tfds_sources import file_lock
from vqlatent.utils.hashing import sha256_file

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS = ("train", "test")
FORMAT_VERSION = 2  # 2: the plan records each file's size, mtime and SHA-256.
EXAMPLES_PER_SHARD = 1000
MANIFEST = "manifest.json"
PLAN = "plan.json"
TEMP_PREFIX = ".tmp-"
CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
RECORD_HEADER = struct.Struct("<i")  # Each record: int32 label, then the PNG bytes.


def _native_mode(image: Image.Image) -> str:
    """The 8-bit mode an image is read as (its channel count), or DataError for unsupported pixels."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return mode
    if mode == "1":
        return "L"
    if mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    if mode == "PA":
        return "RGBA"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return "RGB"
    raise DataError(f"pixel mode {mode!r} (16-bit or float) is not supported: convert it to 8-bit")


def _list_images(root: str) -> tuple[list[str], list[str]]:
    """(image paths relative to root, sorted; other files), skipping hidden names.

    Symbolic links are followed, but every real directory is entered once and every real file
    taken once: a link back up the tree (`ln -s .. loop`) or a second link to the same images
    adds nothing. A file inside `root` is named by its real place there (so a link from one
    class folder into another does not relabel it); one reached only through a link to outside
    `root`, by its first path in sorted order.
    """
    real_root = os.path.realpath(root)
    found: dict[str, str] = {}  # Real path -> path relative to root.
    seen_dirs: set[str] = set()
    for directory, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(directory, d)) not in seen_dirs
        )
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            target = os.path.realpath(path)
            inside = os.path.relpath(target, real_root)
            if not inside.startswith(os.pardir + os.sep) and not any(
                part.startswith(".") for part in inside.split(os.sep)
            ):
                found[target] = inside
            elif target not in found:
                found[target] = os.path.relpath(path, root)
    images, others = [], []
    for rel in found.values():
        (images if rel.lower().endswith(EXTENSIONS) else others).append(rel)
    return sorted(images), sorted(others)


def _labelled(root: str, what: str, labelled: bool) -> tuple[list[str], list[str] | None]:
    """Images under `root` and their class names (None without labels, or when all are directly in `root`)."""
    images, others = _list_images(root)
    if not images:
        hint = f" (found {len(others)} other files, e.g. {others[0]})" if others else ""
        raise DataError(
            f"No images in {what} {root}{hint}: put {', '.join(EXTENSIONS)} files there, directly "
            "or in one subfolder per class."
        )
    if not labelled:
        return images, None
    flat = [p for p in images if os.sep not in p]
    if flat and len(flat) < len(images):
        nested = next(p for p in images if os.sep in p)
        raise DataError(
            f"{what} {root} mixes images at its top level ({len(flat)}, e.g. {flat[0]}) with images in "
            f"subfolders ({len(images) - len(flat)}, e.g. {nested}): put all of them in one subfolder per "
            "class (labels), or none in subfolders (no labels), or set --config.data.label_key=None to "
            "take every image under it without labels."
        )
    return images, (None if flat else sorted({p.split(os.sep)[0] for p in images}))


def scan(folder: str, eval_fraction: float, labelled: bool = True) -> dict[str, Any]:
    """The split plan of `folder`: {'classes': names or None, 'splits': {split: [[path, label], ...]}}.

    With `labelled=False` (`data.label_key=None`), subfolders are not classes: every
    image under the folder (or under train/ and test/) is taken, with label 0.
    """
    if not folder or not os.path.isdir(folder):
        raise DataError(f"config.data.folder={folder!r} is not a directory (set --config.data.folder=DIR).")
    top = {d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))}
    if set(SPLITS) <= top:
        listed = {s: _labelled(os.path.join(folder, s), "split folder", labelled) for s in SPLITS}
        real_test = {os.path.realpath(os.path.join(folder, "test", p)): p for p in listed["test"][0]}
        shared = [
            (p, real_test[os.path.realpath(os.path.join(folder, "train", p))])
            for p in listed["train"][0]
            if os.path.realpath(os.path.join(folder, "train", p)) in real_test
        ]
        if shared:
            (train_path, test_path), n = shared[0], len(shared)
            raise DataError(
                f"{n} file(s) of {folder} are in both splits (through symbolic links), e.g. "
                f"train/{train_path} and test/{test_path} are the same file: a test image trained on "
                "makes the test scores meaningless. Keep each image in one of train/ and test/."
            )
        classes = listed["train"][1]
        if (classes is None) != (listed["test"][1] is None) or not set(listed["test"][1] or []) <= set(
            classes or []
        ):
            raise DataError(
                f"{folder}/test has classes {listed['test'][1]}, {folder}/train has {classes}: the test "
                "classes must be train classes (or neither split uses class subfolders)."
            )
        plan = {s: [os.path.join(s, p) for p in listed[s][0]] for s in SPLITS}
    else:
        if not 0.0 <= eval_fraction < 1.0:
            raise DataError(f"config.data.eval_fraction={eval_fraction}: must be in [0, 1).")
        images, classes = _labelled(folder, "folder", labelled)
        order = np.random.default_rng(0).permutation(len(images))
        num_test = int(round(len(images) * eval_fraction))
        plan = {
            "test": [images[i] for i in order[:num_test]],
            "train": [images[i] for i in order[num_test:]],
        }
    index = {c: i for i, c in enumerate(classes or [])}

    def label(path: str) -> int:
        parts = path.split(os.sep)
        parts = parts[1:] if parts[0] in SPLITS and set(SPLITS) <= top else parts
        return index[parts[0]] if classes else 0

    return {"classes": classes, "splits": {s: [[p, label(p)] for p in plan[s]] for s in SPLITS}}


def _probe(path: str) -> tuple[tuple[int, int], str] | str:
    """((height, width), mode) from the header, or the reason PIL cannot read the file."""
    try:
        with Image.open(path) as image:
            return (image.height, image.width), _native_mode(image)
    except (OSError, ValueError, DataError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"


def _check(folder: str, files: Sequence[str], data_cfg: Any, workers: int):
    """Headers of every image -> (target (H, W, C), {path: reason} of unreadable files)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        probes = list(
            tqdm.tqdm(
                pool.map(_probe, [os.path.join(folder, f) for f in files]),
                total=len(files),
                desc=f"Checking {folder}",
                unit="image",
                disable=len(files) < 1000,
            )
        )
    bad = {f: p for f, p in zip(files, probes) if isinstance(p, str)}
    good = [(f, p) for f, p in zip(files, probes) if not isinstance(p, str)]
    if not good:
        first = next(iter(bad.items()))
        raise DataError(
            f"None of the {len(files)} images in {folder} can be read, e.g. {first[0]}: {first[1]}."
        )
    channels = cfg_value(data_cfg, "channels")
    if channels is None:
        by_channels: dict[int, list[str]] = {}
        for f, (_, mode) in good:
            by_channels.setdefault(len(mode), []).append(f)
        if len(by_channels) > 1:
            counts = ", ".join(
                f"{len(v)} with {c} ({CHANNEL_MODES[c]}, e.g. {v[0]})" for c, v in by_channels.items()
            )
            raise DataError(
                f"Images in {folder} have mixed channel counts: {counts}. Set --config.data.channels=3 "
                "(or 1, 4) to convert every image to that many channels."
            )
        channels = next(iter(by_channels))
    elif channels not in CHANNEL_MODES:
        raise DataError(f"config.data.channels={channels}: must be None, 1, 2, 3 or 4.")
    hw = preprocess.target_hw(cfg_value(data_cfg, "image_size"))
    if hw is None:
        sizes = {size: f for f, (size, _) in good}
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(
                f"Images in {folder} have different sizes (e.g. {f1} {s1[0]}x{s1[1]}, {f2} {s2[0]}x{s2[1]}): "
                "set --config.data.image_size=S (or (H, W)) to centre-crop and resize them."
            )
        hw = next(iter(sizes))
    small = [(f, size) for f, (size, _) in good if size[0] < hw[0] or size[1] < hw[1]]
    if small:
        f, (h, w) = small[0]
        raise DataError(
            f"{len(small)} images in {folder} are smaller than the target size {hw[0]}x{hw[1]}, e.g. {f} "
            f"({h}x{w}): remove them, or set --config.data.image_size= to at most their size."
        )
    return (hw[0], hw[1], int(channels)), bad


def _encode(path: str, shape: tuple[int, int, int]) -> bytes | str:
    """The file as PNG bytes of `shape` (its own bytes when it already is one), or why it cannot be."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = CHANNEL_MODES[shape[2]]
            native = _native_mode(image)
            if image.format == "PNG" and image.mode == mode == native and image.size == shape[1::-1]:
                with open(path, "rb") as f:
                    return f.read()
            pixels = np.asarray(image.convert(native).convert(mode)).reshape(image.height, image.width, -1)
    except (OSError, ValueError, DataError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    pixels = preprocess.center_crop_resize(pixels, shape[:2])
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels, mode).save(
        out, format="PNG", compress_level=1
    )
    return out.getvalue()


def _write_json(path: str, obj: Any) -> None:
    tmp = os.path.join(os.path.dirname(path), TEMP_PREFIX + os.path.basename(path))
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def shard_name(split: str, k: int, n: int) -> str:
    return f"{split}.array_record-{k:05d}-of-{n:05d}"


def _write_shards(folder: str, directory: str, plan: dict[str, Any], shape, workers: int) -> list[list[str]]:
    """Writes the missing shards of every split; returns [path, reason] of the files skipped."""
    jobs = []
    for split, items in plan["splits"].items():
        n = max(1, -(-len(items) // EXAMPLES_PER_SHARD))
        jobs += [
            (split, k, n, items[k * EXAMPLES_PER_SHARD : (k + 1) * EXAMPLES_PER_SHARD]) for k in range(n)
        ]
    done = [j for j in jobs if os.path.exists(os.path.join(directory, shard_name(*j[:3])))]
    skipped = []
    bar = tqdm.tqdm(
        total=sum(len(j[3]) for j in jobs),
        initial=sum(len(j[3]) for j in done),
        desc=f"Preparing {folder}",
        unit="image",
    )
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for split, k, n, items in jobs:
            name = shard_name(split, k, n)
            path = os.path.join(directory, name)
            if os.path.exists(path):
                skipped += read_json(path + ".json")["skipped"]
                continue
            tmp = os.path.join(directory, TEMP_PREFIX + name)
            writer = ArrayRecordWriter(tmp, "group_size:1")
            shard_skipped = []
            encoded = pool.map(lambda item: _encode(os.path.join(folder, item[0]), shape), items)
            for (rel, label), record in zip(items, encoded):
                if isinstance(record, str):
                    logging.warning("Skipping %s: %s", os.path.join(folder, rel), record)
                    shard_skipped.append([rel, record])
                else:
                    writer.write(RECORD_HEADER.pack(label) + record)
                bar.update(1)
            writer.close()
            _write_json(
                path + ".json", {"num_examples": len(items) - len(shard_skipped), "skipped": shard_skipped}
            )
            os.replace(tmp, path)
            skipped += shard_skipped
    bar.close()
    return skipped


def _labels(data_cfg: Any) -> bool:
    """Whether class subfolders are labels (`data.label_key` not None or '')."""
    return bool(data_cfg.get("label_key", "label"))


def _folder(data_cfg: Any) -> str:
    """The absolute path of `data.folder`, or DataError when it is not set."""
    folder = cfg_value(data_cfg, "folder", "")
    if not folder:
        raise DataError(
            "config.data.name='image_folder' needs the folder of images: set --config.data.folder=DIR "
            "(a directory of images, one subfolder per class, or train/ and test/)."
        )
    return os.path.abspath(folder)


def _stat(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def _signatures(folder: str, files: Sequence[str], workers: int) -> dict[str, list]:
    """{path: [size, mtime_ns, sha256]} of every file (what the prepared data was made from)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(lambda f: sha256_file(os.path.join(folder, f)), files))
    return {f: [*_stat(os.path.join(folder, f)), h] for f, h in zip(files, hashes)}


def _changed_files(folder: str, recorded: dict[str, list]) -> list[str]:
    """The files whose content differs from the recorded one: size or mtime differ, and then the
    SHA-256 too (a file touched or copied with the same bytes is not a change)."""
    changed = []
    for rel, (size, mtime_ns, digest) in sorted(recorded.items()):
        path = os.path.join(folder, rel)
        try:
            now = _stat(path)
        except OSError:
            changed.append(rel)
            continue
        if now != [size, mtime_ns] and (now[0] != size or sha256_file(path) != digest):
            changed.append(rel)
    return changed


def prepared_dir(data_cfg: Any) -> str:
    """Where the folder is prepared: <data_dir>/image_folder/<name>-<hash of folder, size, channels, split>."""
    folder = _folder(data_cfg)
    data_dir = cfg_value(data_cfg, "data_dir") or os.environ.get(
        "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")
    )
    key = [FORMAT_VERSION, folder, preprocess.target_hw(cfg_value(data_cfg, "image_size"))]
    key += [cfg_value(data_cfg, "channels"), float(cfg_value(data_cfg, "eval_fraction", 0.05))]
    key += [_labels(data_cfg)]
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
    return os.path.join(os.path.expanduser(data_dir), "image_folder", f"{os.path.basename(folder)}-{digest}")


def prepare(data_cfg: Any) -> str:
    """Prepares (or finishes preparing) `data_cfg.folder`; returns the prepared directory."""
    folder = _folder(data_cfg)
    directory = prepared_dir(data_cfg)
    listing = scan(folder, float(cfg_value(data_cfg, "eval_fraction", 0.05)), _labels(data_cfg))
    plan_path, manifest_path = os.path.join(directory, PLAN), os.path.join(directory, MANIFEST)

    def ready() -> bool:
        """Whether the folder is prepared (then read-only: no lock, no writes), refusing a changed
        folder; a folder with the same files whose content changed is prepared again."""
        if not os.path.exists(manifest_path):
            return False
        plan = read_json(plan_path)
        then = plan["listing"]
        if then != listing:
            raise DataError(
                f"{folder} changed since it was prepared in {directory} ({_count(listing)} images now, "
                f"{_count(then)} then): delete {directory} to prepare it again."
            )
        changed = _changed_files(folder, plan.get("files", {}))
        if changed:
            logging.warning(
                "%d image(s) of %s changed since it was prepared (e.g. %s): preparing it again.",
                len(changed),
                folder,
                changed[0],
            )
            with contextlib.suppress(FileNotFoundError):  # Another process may have removed it.
                os.remove(manifest_path)
            return False
        return True

    if ready():
        return directory
    os.makedirs(directory, exist_ok=True)
    with file_lock(os.path.join(directory, ".prepare.lock")):
        if ready():  # Another process finished it while this one waited for the lock.
            return directory
        old = read_json(plan_path) if os.path.exists(plan_path) else None
        workers = max(1, int(cfg_value(data_cfg, "num_workers", 4)))
        files = sorted(path for items in listing["splits"].values() for path, _ in items)
        shape, unreadable = _check(folder, files, data_cfg, workers)
        for rel, reason in list(unreadable.items())[:20]:
            logging.warning("Skipping %s: %s", os.path.join(folder, rel), reason)
        plan = {
            "format_version": FORMAT_VERSION,
            "folder": folder,
            "image_shape": list(shape),
            "classes": listing["classes"],
            "splits": {s: [x for x in v if x[0] not in unreadable] for s, v in listing["splits"].items()},
            "listing": listing,
            "files": _signatures(folder, files, workers),
        }
        if old is not None and old != plan:  # Shards of another plan (the folder changed): start over.
            for name in os.listdir(directory):
                if ".array_record-" in name:
                    os.remove(os.path.join(directory, name))
        _write_json(plan_path, plan)
        skipped = [[p, r] for p, r in unreadable.items()]
        skipped += _write_shards(folder, directory, plan, shape, workers)
        if skipped:
            logging.warning(
                "Skipped %d unreadable images of %s (listed in %s).", len(skipped), folder, manifest_path
            )
        counts = {
            s: sum(
                read_json(os.path.join(directory, n + ".json"))["num_examples"]
                for n in shard_files(directory, s)
            )
            for s in SPLITS
        }
        manifest = {k: plan[k] for k in ("format_version", "folder", "image_shape", "classes")}
        _write_json(manifest_path, {**manifest, "num_examples": counts, "skipped": skipped})
    return directory


def _count(listing: dict[str, Any]) -> int:
    return sum(len(v) for v in listing["splits"].values())


def shard_files(directory: str, split: str) -> list[str]:
    """The finished shards of `split`, in order."""
    prefix = f"{split}.array_record-"
    return sorted(n for n in os.listdir(directory) if n.startswith(prefix) and not n.endswith(".json"))
