"""The images `make images` built (tools/images.sh): their index, `$PANTAU_CACHE/images/images.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pantau_dev.procs import StackError
from pantau_dev.settings import DevSettings

PRODUCT = "product"
TRITON = "triton"


@dataclass(frozen=True)
class BuiltImage:
    role: str
    ref: str  # localhost/NAME:TAG, as the node's containerd knows it
    archive: Path

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def built_images(settings: DevSettings) -> dict[str, BuiltImage]:
    """The product and Triton images whose archives exist (none before `make images`)."""
    index = settings.cache_dir / "images" / "images.json"
    try:
        entries = json.loads(index.read_text())["images"]
    except (OSError, ValueError, KeyError):
        return {}
    images = {}
    for role in (PRODUCT, TRITON):
        entry = entries.get(role)
        if entry and Path(entry["archive"]).is_file():
            images[role] = BuiltImage(role, str(entry["ref"]), Path(entry["archive"]))
    return images


def built_image(settings: DevSettings, role: str) -> BuiltImage:
    image = built_images(settings).get(role)
    if image is None:
        raise StackError(f"no {role} image in {settings.cache_dir / 'images'}: run `make images` first")
    return image
