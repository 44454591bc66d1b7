"""What a create-job payload asks the platform to fetch. Pure, and apart from attachments.py so that
reading a ledger's URLs (signed-URL expiry, plans) imports no HTTP library."""

from __future__ import annotations

from typing import Any

__all__ = ["attachment_urls"]


def attachment_urls(payload: Any) -> list[str]:
    """The attachment URLs a create-job payload asks the platform to fetch: `data.image_url` and every video
    frame's `src` (docs/api.md, "data by task type"), in order, without repeats. Sensor data is passed
    through unchanged and its files are not checked."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        return []
    urls: list[str] = []
    image = data.get("image_url")
    if isinstance(image, str):
        urls.append(image)
    video = data.get("video_data")
    frames = video.get("frames") if isinstance(video, dict) else None
    if isinstance(frames, list):
        urls += [f["src"] for f in frames if isinstance(f, dict) and isinstance(f.get("src"), str)]
    return list(dict.fromkeys(urls))
