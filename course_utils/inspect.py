"""Score every image of a folder with a saved detector: `python -m course_utils.inspect MODEL_FILE IMAGES_DIR --out DIR`.

Writes DIR/scores.csv (one row per image: file, score, flagged) and DIR/overlays/<name>.png
(the image with its anomaly map on top, red = the detector's threshold) and shows a progress
bar. Images are found recursively (PNG, JPG, BMP, TIFF); grayscale, RGBA and 16-bit files are
read as RGB by `cu.data.read_image`; any size or aspect ratio works: each image is brought to
the detector's size by the detector's own `resize` mode ("pad", "crop" or "stretch",
`cu.data.fit_to_size`), and its map is brought back to the image's own size. A file that
cannot be read is reported on stderr, listed in DIR/skipped.txt and skipped; the run never
stops for it. In Python: `inspect_folder(detector, folder, out)` or `main([...])`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from course_utils.data.images import RESIZE_MODES


class Inspection(NamedTuple):
    """What `inspect_folder` did: `rows` (file, score, flagged) written to the CSV, `skipped` [(file, reason)]."""

    rows: list[tuple[str, float, bool | None]]
    skipped: list[tuple[str, str]]
    csv_path: Path
    overlay_dir: Path


def image_files(folder: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Every image file under `folder`, recursively (extensions: `cu.data.IMAGE_EXTENSIONS`), sorted; none under `exclude`."""
    from course_utils.data import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give the folder that holds the images to inspect.")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return sorted(p for p in found if skip is None or skip not in p.resolve().parents)


def model_size(detector, image_size: Sequence[int] | None = None) -> tuple[int, int]:
    """The (H, W) the model sees: `image_size`, else the detector's own `image_size`, else its training size `fit_size`."""
    own = getattr(detector, "model_size", None)
    if own is not None and image_size is not None and tuple(image_size) != tuple(own):
        raise ValueError(f"This detector was built with image_size={tuple(own)} and sees images at that size: "
                         "leave out --image-size (image_size=) or give the same size.")
    size = tuple(int(v) for v in (image_size or own or detector.fit_size.tolist()))
    if len(size) != 2 or min(size) <= 0:
        raise ValueError("The detector records no training image size: pass image_size=(H, W) (--image-size).")
    return size


def predict_images(detector, images: Sequence[torch.Tensor], size: Sequence[int] | None = None,
                   resize: str | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scores [b] and one anomaly map [H_i, W_i] per image [3, H_i, W_i], each map at its image's own size.

    Images are brought to `size` (default: `model_size(detector)`) by `resize` ("pad", "crop" or
    "stretch"; default: the detector's own mode). A detector with its own `image_size` and mode
    takes the list as it is (`Detector.predict` fits each image and maps back); otherwise
    `cu.data.fit_to_size` brings each image to `size` and `cu.data.map_to_image` undoes it.
    """
    from course_utils.data.images import fit_to_size, map_to_image

    own_resize = detector.preprocessing()["resize"]
    size, resize = model_size(detector, size), resize or own_resize
    if getattr(detector, "model_size", None) is not None and resize == own_resize:
        prediction = detector.predict(list(images))  # scores [b], maps [b, H, W] or b x [H_i, W_i]
        return prediction.scores, list(prediction.maps)
    batch = torch.stack([fit_to_size(image, size, resize) for image in images])  # [b, 3, h, w]
    prediction = detector.predict(batch)  # scores [b], maps [b, h, w]
    maps = [map_to_image(m[None], image.shape[-2:], resize)[0]  # [H_i, W_i]
            for m, image in zip(prediction.maps, images)]
    return prediction.scores, maps


def overlay(image: torch.Tensor, anomaly_map: torch.Tensor, low: float, high: float) -> np.ndarray:
    """The image [3, H, W] with its map [H, W] on top, uint8 [H, W, 3]: jet colours, `low` = clear, `high` = opaque red."""
    from matplotlib import colormaps

    level = ((anomaly_map - low) / max(high - low, 1e-12)).clamp(0, 1).numpy()  # [H, W] in [0, 1]
    colour = colormaps["jet"](level)[..., :3]  # [H, W, 3]
    alpha = 0.6 * level[..., None]  # [H, W, 1]: normal regions show the image
    mixed = (1 - alpha) * image.permute(1, 2, 0).numpy() + alpha * colour  # [H, W, 3]
    return (mixed * 255).round().clip(0, 255).astype(np.uint8)


def _overlay_name(relative: Path, taken: set[str]) -> str:
    """A unique PNG path under overlays/ for the image at `relative` (its suffix replaced by .png)."""
    name = relative.with_suffix(".png").as_posix()
    if name in taken:
        name = relative.as_posix() + ".png"  # a.jpg and a.png in one folder
    taken.add(name)
    return name


def _read_batch(paths: Sequence[Path], report) -> tuple[list[Path], list[torch.Tensor]]:
    """Read `paths` with `cu.data.read_image`; unreadable ones go to `report(path, reason)` and are left out."""
    from course_utils.data import read_image

    good, images = [], []
    for path in paths:
        try:
            images.append(read_image(path))  # [3, H, W] float in [0, 1]
            good.append(path)
        except (OSError, ValueError, RuntimeError) as error:
            report(path, str(error).splitlines()[0].replace(f"Cannot read image file {path}: it is ", ""))
    return good, images


def inspect_folder(detector, folder: str | Path, out: str | Path, batch_size: int = 16,
                   image_size: tuple[int, int] | None = None, overlays: bool = True,
                   progress: bool = True, resize: str | None = None) -> Inspection:
    """Score every image under `folder` with a fitted `detector`; write out/scores.csv and out/overlays/.

    Images go through the model in batches of `batch_size` (`predict_images`), brought to
    `image_size` (default: the detector's own `image_size`, else its training size `fit_size`) by
    `resize` (default: the detector's mode); each map returns to its image's size. The CSV
    has one row per readable image: file (relative to `folder`), score, flagged (`score >=
    detector.threshold`; empty when the detector was never calibrated). Overlay colours run from
    the median calibration pixel (clear) to the threshold (red); without a threshold, from each
    map's minimum to its maximum. Unreadable files are reported on stderr, listed in
    out/skipped.txt and skipped.
    """
    from PIL import Image
    from tqdm import tqdm

    folder, out = Path(folder), Path(out)
    size = model_size(detector, image_size)  # (H, W) the model sees
    if resize is not None and resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}.")
    threshold = float(detector.threshold)
    calibrated = math.isfinite(threshold)  # inf: never calibrated
    low = detector.calibration.get("map_median", 0.0) if calibrated else None
    overlay_dir = out / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    files = image_files(folder, exclude=out)
    if not files:
        from course_utils.data import IMAGE_EXTENSIONS

        raise FileNotFoundError(f"{folder} holds no image files (looked recursively for {', '.join(IMAGE_EXTENSIONS)}).")
    rows, skipped, taken = [], [], set()

    def report(path: Path, reason: str) -> None:
        skipped.append((path.relative_to(folder).as_posix(), reason))
        tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)  # now, while the bar runs; main() sums up at the end

    with tqdm(total=len(files), desc="inspecting", unit="image", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            paths, images = _read_batch(files[start:start + batch_size], report)
            if images:
                scores, maps = predict_images(detector, images, size, resize)  # [b], b x [H_i, W_i]
                flags = detector.flag(scores).tolist() if calibrated else [None] * len(images)
                for path, image, score, flag, full in zip(paths, images, scores.tolist(), flags, maps):
                    relative = path.relative_to(folder)
                    rows.append((relative.as_posix(), score, flag))
                    if overlays:
                        lo, hi = (low, threshold) if calibrated else (float(full.min()), float(full.max()))
                        target = overlay_dir / _overlay_name(relative, taken)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(overlay(image, full, lo, hi)).save(target)
            bar.update(min(batch_size, len(files) - start))
    csv_path = _write_results(out, rows, skipped)
    return Inspection(rows, skipped, csv_path, overlay_dir)


def _write_results(out: Path, rows: list[tuple[str, float, bool | None]], skipped: list[tuple[str, str]]) -> Path:
    """Write out/scores.csv (file, score, flagged) and out/skipped.txt (file: reason); returns the CSV's path."""
    csv_path = out / "scores.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score", "flagged"])
        for file, score, flag in rows:
            writer.writerow([file, f"{score:.6g}", "" if flag is None else int(flag)])
    (out / "skipped.txt").write_text("".join(f"{file}: {reason}\n" for file, reason in skipped))
    return csv_path


def _parser() -> argparse.ArgumentParser:
    """The command line of `python -m course_utils.inspect`."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils.inspect",
        description="Score every image in a folder (recursively) with a detector saved by detector.save(path). "
                    "Writes OUT/scores.csv (file, score, flagged), OUT/overlays/<name>.png (heat map over the image; "
                    "red = the detector's threshold) and OUT/skipped.txt (files that could not be read).",
        epilog="Example: python -m course_utils.inspect bottle.pt photos/ --out results/. A file that cannot be read "
               "is reported and skipped. Exit status: 0 when every image was scored, 1 when some were skipped, "
               "2 on a usage error. 'flagged' is empty for a detector never calibrated (detector.calibrate(...)).")
    parser.add_argument("model_file", help="a detector file written by detector.save(path)")
    parser.add_argument("images_dir", help="the folder of images to score (PNG, JPG, BMP, TIFF; searched recursively)")
    parser.add_argument("--out", default="inspection", help="folder for scores.csv, overlays/ and skipped.txt "
                                                              "(default: ./inspection)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="the size the model sees (default: the detector's image_size, else the size it was "
                             "fitted at); images are brought to it by the detector's resize mode")
    parser.add_argument("--resize", choices=RESIZE_MODES, default=None,
                        help="how an image of another aspect ratio reaches that size: pad (black borders), crop "
                             "(centre) or stretch (default: the detector's own mode, see detector.preprocessing())")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: cpu)")
    parser.add_argument("--no-overlays", action="store_true", help="write scores.csv only")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit status (0 all scored, 1 some skipped)."""
    from course_utils.deploy import load

    args = _parser().parse_args(argv)
    try:
        detector = load(args.model_file, device=args.device)
        result = inspect_folder(detector, args.images_dir, args.out, args.batch_size, args.image_size,
                                overlays=not args.no_overlays, progress=not args.no_progress, resize=args.resize)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    flagged = sum(bool(flag) for _, _, flag in result.rows)
    flag_text = f", {flagged} flagged" if result.rows and result.rows[0][2] is not None else ""
    print(f"scored {len(result.rows)} images{flag_text}; wrote {result.csv_path}"
          + ("" if args.no_overlays else f" and {len(result.rows)} overlays in {result.overlay_dir}"))
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable file(s) (listed in {result.csv_path.parent / 'skipped.txt'}):",
              file=sys.stderr)
        for file, reason in result.skipped:
            print(f"  {file}: {reason}", file=sys.stderr)
    return 1 if result.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
