"""Download GC10-DET from Kaggle, failing fast offline.

GC10-DET is a public dataset (CC BY 4.0), so ``kagglehub`` fetches it without a login. Where
``kagglehub`` is missing or fails, the official ``kaggle`` package is tried with an API token.
Without a route to Kaggle the error says so at once, names the manual steps, and writes nothing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gc10lib.errors import SetupError

KAGGLE_DATASET = "zhangyunsheng/defects-class-and-location"
MANUAL_STEPS = (
    "Alternatively download the zip by hand from "
    f"https://www.kaggle.com/datasets/{KAGGLE_DATASET} and unpack it so that the folder holds "
    "images/images/<class>/*.jpg and label/label/*.xml; then pass that folder as data_dir."
)


class DownloadError(SetupError):
    """The download cannot start; the message says what to do."""


def _has_token() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config / "kaggle.json").is_file() or (config / "access_token").is_file()


def _reachable(host: str = "www.kaggle.com", port: int = 443, timeout: float = 5.0) -> str | None:
    """``None`` if a TCP connection opens, else the reason it did not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _with_kagglehub(dataset: str, out: Path) -> str | None:
    """Download with ``kagglehub`` (no login for public datasets); ``None`` on success, else why not."""
    try:
        # lazy: optional dependency ([kaggle] extra)
        import kagglehub
    except ImportError:
        return "kagglehub is not installed (pip install 'gc10lib[kaggle]')"
    try:
        kagglehub.dataset_download(dataset, output_dir=str(out))
    except Exception as exc:  # network, HTTP or API errors: fall back to the kaggle package
        return f"kagglehub failed ({type(exc).__name__}: {exc})"
    return None


def download_gc10(out: str | Path, dataset: str = KAGGLE_DATASET) -> Path:
    """Download and unpack the Kaggle GC10-DET dataset into ``out`` (must be empty or absent)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DownloadError(f"{out}: folder is not empty; choose an empty folder for the download.")
    reason = _reachable()
    if reason is not None:
        raise DownloadError(f"Kaggle is not reachable from this machine ({reason}). " + MANUAL_STEPS)
    hub_failure = _with_kagglehub(dataset, out)
    if hub_failure is None:
        return out
    if not _has_token():
        raise DownloadError(
            "No Kaggle API token found. Create one at https://www.kaggle.com/settings (API > "
            "Create New Token) and save it as ~/.kaggle/kaggle.json (chmod 600), or set "
            f"KAGGLE_USERNAME and KAGGLE_KEY ({hub_failure}). " + MANUAL_STEPS
        )
    try:
        # lazy: optional dependency ([kaggle] extra)
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:  # pragma: no cover - kaggle is in the [kaggle] and [dev] extras
        raise DownloadError("The kaggle package is not installed: pip install 'gc10lib[kaggle]'.") from exc
    api = KaggleApi()
    api.authenticate()
    out.mkdir(parents=True, exist_ok=True)
    api.dataset_download_files(dataset, path=str(out), unzip=True, quiet=False)
    return out
