"""The sample input: OpenCV's ``vtest.avi`` (pedestrians, 795 frames, 768x576).

Taken from Debian's ``opencv-doc`` package where apt is available (the
package is downloaded and the one file extracted; nothing is installed),
and from OpenCV's public sample data over the network elsewhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from pipeline.config import default_state_dir
from pipeline.errors import FramestreamError

log = logging.getLogger(__name__)

SAMPLE_NAME = "vtest.avi"
_DEB_PACKAGE = "opencv-doc"
_DEB_MEMBER = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"
_SAMPLE_URL = (
    "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/data/vtest.avi"
)
# The file is about 8 MB; anything much smaller is an error page.
_MIN_BYTES = 1_000_000


def sample_video(state_dir: Path | None = None) -> Path:
    """Path of the sample video, fetched on first use."""
    target = (state_dir or default_state_dir()) / "samples" / SAMPLE_NAME
    if target.exists() and target.stat().st_size >= _MIN_BYTES:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    errors = []
    for fetch in (_from_debian_package, _from_network):
        partial = target.with_suffix(".partial")
        try:
            fetch(partial)
        except (OSError, subprocess.SubprocessError, FramestreamError) as err:
            errors.append(f"{fetch.__doc__}: {err}")
            partial.unlink(missing_ok=True)
            continue
        if partial.stat().st_size >= _MIN_BYTES:
            partial.rename(target)
            log.info("sample video ready at %s", target)
            return target
        errors.append(f"{fetch.__doc__}: got only {partial.stat().st_size} bytes")
        partial.unlink()
    raise FramestreamError(
        f"cannot get the sample video {SAMPLE_NAME}:\n  "
        + "\n  ".join(errors)
        + "\npass --video PATH to use a video of your own"
    )


def _from_debian_package(target: Path) -> None:
    """from Debian's opencv-doc package"""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FramestreamError("apt-get or dpkg-deb not found")
    with tempfile.TemporaryDirectory() as folder:
        download = ["apt-get", "download", "-q", _DEB_PACKAGE]
        result = subprocess.run(download, cwd=folder, capture_output=True, text=True)
        if result.returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            result = subprocess.run(
                download, cwd=folder, capture_output=True, text=True
            )
        if result.returncode != 0:
            raise FramestreamError(f"apt-get download failed: {result.stderr.strip()}")
        deb = next(Path(folder).glob("*.deb"))
        tar_stream = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            # It complains of a broken pipe once the one file is read.
            stderr=subprocess.DEVNULL,
        )
        with tarfile.open(fileobj=tar_stream.stdout, mode="r|") as archive:
            for member in archive:
                if member.name == _DEB_MEMBER:
                    with archive.extractfile(member) as data, open(target, "wb") as out:
                        shutil.copyfileobj(data, out)
                    break
            else:
                raise FramestreamError(f"{deb.name} holds no {_DEB_MEMBER}")
        tar_stream.stdout.close()
        tar_stream.wait()


def _from_network(target: Path) -> None:
    """from OpenCV's public sample data"""
    with urllib.request.urlopen(_SAMPLE_URL, timeout=30) as response:
        with open(target, "wb") as out:
            shutil.copyfileobj(response, out)
