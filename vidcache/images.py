"""Conditioning images for image-to-video: checked before anything loads, fitted to the video's size.

Why here and not in the pipeline: a batch of 500 jobs must fail in a second on its 499th image, not
after the model has loaded and 498 videos rendered; and the image's bytes (sha256) belong in the job
key, so a rerun notices a changed image and redoes its video.

``fit`` turns an image of any size into the model's frame size: ``crop`` (default) scales it to cover
the frame and cuts the centre, ``pad`` scales it to fit inside and pads with black, ``stretch``
resizes it ignoring the aspect ratio.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
FITS = ("crop", "pad", "stretch")
MAX_PIXELS = 8192 * 8192  # far above any video size; refuses decompression bombs with one line


@dataclass(frozen=True)
class ImageInfo:
    path: str  # absolute
    width: int
    height: int
    format: str
    sha256: str


def check_image(path: str | Path, where: str) -> ImageInfo:
    """Open and fully decode ``path`` once: a PNG, JPEG or WebP file, or one ``UsageError`` line."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{where}: image {path} " + ("is not a file" if p.exists() else "not found"))
    try:
        data = p.read_bytes()
    except OSError as err:
        raise UsageError(f"{where}: image {path}: cannot read ({err.strerror or err})") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt not in FORMATS:
                raise UsageError(f"{where}: image {path} is {fmt or 'of an unknown format'}; "
                                 "vidcache takes PNG, JPEG or WebP")
            if img.width * img.height > MAX_PIXELS:
                raise UsageError(f"{where}: image {path} is {img.width}x{img.height}, too large")
            img.load()  # a truncated or corrupt file fails here, not in the middle of a batch
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UsageError(f"{where}: {path} is not a readable image ({err})") from None
    return ImageInfo(str(p.resolve()), width, height, FORMATS[fmt], hashlib.sha256(data).hexdigest())


def image_report(path: str, sha256: str, fit: str) -> dict[str, Any]:
    """The report's ``image`` entry: where the image was, its size and format, its bytes' hash."""
    from PIL import Image

    with Image.open(path) as img:
        width, height, fmt = img.width, img.height, FORMATS.get(img.format, img.format)
    return {"path": path, "width": width, "height": height, "format": fmt, "sha256": sha256, "fit": fit}


def check_fit(fit: str) -> str:
    if fit not in FITS:
        raise UsageError(f"--fit {fit}: expected one of {', '.join(FITS)}")
    return fit


def load_fitted(path: str, width: int, height: int, fit: str) -> Any:
    """The image as an RGB ``PIL.Image`` of exactly ``width`` x ``height``."""
    from PIL import Image

    with Image.open(path) as img:
        return fit_image(img.convert("RGB"), width, height, fit)


def fit_image(img: Any, width: int, height: int, fit: str) -> Any:
    from PIL import Image

    if img.size == (width, height):
        return img.copy()
    if fit == "stretch":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    w, h = img.size
    if fit == "crop":
        scale = max(width / w, height / h)
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        scaled = img.resize((sw, sh), Image.Resampling.LANCZOS)
        left, top = (sw - width) // 2, (sh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    scale = min(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(img.resize((sw, sh), Image.Resampling.LANCZOS), ((width - sw) // 2, (height - sh) // 2))
    return canvas
