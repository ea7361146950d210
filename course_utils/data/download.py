"""Downloading one MVTec AD category: official archives, resumable, checksummed."""

from __future__ import annotations

import hashlib
import http.client
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from course_utils.data.mvtec import check_mvtec_layout
from course_utils.data.paths import DATA_DIR

_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
MVTEC_URLS = {
    "bottle": _MYDRIVE + "420937370-1629951468/bottle.tar.xz",
    "cable": _MYDRIVE + "420937413-1629951498/cable.tar.xz",
    "capsule": _MYDRIVE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _MYDRIVE + "420937484-1629951672/carpet.tar.xz",
    "grid": _MYDRIVE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _MYDRIVE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _MYDRIVE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _MYDRIVE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
            "420938129-1629953099/pill.tar.xz",
    "screw": _MYDRIVE + "420938130-1629953152/screw.tar.xz",
    "tile": _MYDRIVE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _MYDRIVE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _MYDRIVE + "420938166-1629953277/transistor.tar.xz",
    "wood": _MYDRIVE + "420938383-1629953354/wood.tar.xz",
    "zipper": _MYDRIVE + "420938385-1629953449/zipper.tar.xz",
}
"""The official per-category archives linked from mvtec.com (CC BY-NC-SA 4.0, Bergmann et al.).
MVTec publishes no per-category checksums (anomalib's MVTecAD datamodule verifies only the 4.9 GB
full archive), so `download_mvtec` checks the SHA-256 you pass, else prints the archive's own
checksum; xz's built-in CRC still catches a corrupt archive when it is unpacked."""

def download_mvtec(category: str, root: str | Path | None = None, *, url: str | None = None,
                   sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download and unpack one MVTec AD category into `root/<category>`; return that folder.

    `root` defaults to `DATA_DIR/mvtec`. The archive is streamed into `<category>.tar.xz.part`
    (an interrupted download resumes where it stopped, with an HTTP Range request), checked
    against `sha256` when you give one, unpacked and deleted. A category that is already
    there is not downloaded again. `url` overrides the official address (e.g. a mirror). Offline,
    it raises a `ConnectionError` that gives the URL and the folder to unpack into by hand.
    """
    if url is None and category not in MVTEC_URLS:
        raise ValueError(f"Unknown MVTec AD category {category!r}; choose one of "
                         f"{sorted(MVTEC_URLS)}.")
    root = Path(root or DATA_DIR / "mvtec")
    target = root / category
    if (target / "train" / "good").is_dir():
        print(f"MVTec AD '{category}' is already in {target}.")
        return target
    url = url or MVTEC_URLS[category]
    archive = root / f"{category}.tar.xz"
    try:
        download_file(url, archive, timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        raise ConnectionError(
            f"Could not download MVTec AD '{category}' from {url} ({err}); download it by hand "
            f"and unpack it into {root} (so that {target / 'train' / 'good'} exists), or use the "
            "offline data set from cu.data.make_defect_dataset.") from None
    _verify_checksum(archive, sha256)
    _extract(archive, root)
    archive.unlink()
    return check_mvtec_layout(target)


def download_file(url: str, dest: str | Path, timeout: float = 30.0,
                  chunk_size: int = 1 << 20) -> Path:
    """Stream `url` to `dest`, resuming a partial `dest.part` with an HTTP Range request.

    Bytes land in `<dest>.part` first and the file is renamed to `dest` only when complete, so
    an interrupted download never looks finished. `timeout` (seconds) bounds each network wait.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416 = "range not satisfiable": the .part file is already complete
            raise
        return part.rename(dest)
    resumed = start > 0 and response.status == 206  # 200 = the server sent the whole file again
    expected = (start if resumed else 0) + int(response.headers.get("Content-Length") or 0)
    print(f"Downloading {url} -> {dest}" + (f" (resuming at {start:,} bytes)" if resumed else ""))
    with response, open(part, "ab" if resumed else "wb") as f:
        while chunk := response.read(chunk_size):
            f.write(chunk)
        if f.tell() < expected:
            raise OSError(f"download stopped at {f.tell():,} of {expected:,} bytes; run again "
                          "to resume")
    return part.rename(dest)


def _verify_checksum(archive: Path, expected: str | None) -> None:
    """Compare the archive's SHA-256 with `expected`; on a mismatch delete it and raise."""
    digest = sha256_of(archive)
    if expected is None:
        print(f"{archive.name}: sha256 {digest} (no published checksum; xz checks its own CRC).")
    elif digest != expected.lower():
        archive.unlink()
        raise ValueError(f"Checksum mismatch for {archive}: got sha256 {digest}, expected "
                         f"{expected}. The corrupt file was deleted; run the download again.")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks (works for files larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, root: Path) -> None:
    """Unpack a .tar(.xz/.gz) archive into `root`, refusing paths that leave `root`."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        archive.unlink()
        raise ValueError(f"Cannot unpack {archive} ({err}); the file was deleted, download "
                         "it again.") from None
