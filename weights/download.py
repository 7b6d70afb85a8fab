"""Fetch registry files from the Hugging Face hub with ``huggingface_hub`` (no HTTP client of our own).

:func:`fetch` puts one file under its final name in a models folder, or nothing at all:

1. a file already there is checked (never replaced): size and sha256 where known, and its keys;
2. offline (``HF_HUB_OFFLINE=1``) fails at once, before any request;
3. the hub states the file's size and LFS sha256 (one HEAD request; a moved or deleted repository
   fails here with its own message); a disk without room for it fails here too;
4. ``hf_hub_download`` fetches into a staging folder next to the target (same disk, so the final
   move is a rename), with progress, and itself resumes after a cut connection (``Range`` request);
5. the staged file is renamed away from any model extension, its size and sha256 checked against
   the registry and the hub, and only then renamed to its final name.

Whatever happens, the staging folder is removed; a killed process leaves at most an ``.incomplete``
or ``.unverified`` file in ``.instructav2av-download`` (never under a model name, never listed by
ComfyUI as a model) that a later fetch into that folder removes once it is an hour old.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .registry import CorruptModelFile, ModelFile, check_known, key_check, verify

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "INSTRUCTAV2AV_MODELS_DIR"
STAGING = ".instructav2av-download"
METADATA_TIMEOUT = 10.0  # seconds for the hub's HEAD answer: a dead network fails in seconds, never hangs
_SHA256 = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says why and what to do instead."""


def default_models_dir() -> Path:
    """Root of the model folders outside ComfyUI: ``$INSTRUCTAV2AV_MODELS_DIR``, else ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.cwd() / "models")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, read now rather than when the hub client was imported."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint(endpoint: str | None) -> str | None:
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def _by_hand(entry: ModelFile, dest: Path) -> str:
    return f"get it by hand: {entry.url}  ->  {dest / entry.name}"


def _tqdm_class(progress: Progress | None):
    """A tqdm class for ``hf_hub_download`` that also reports to ``progress`` (e.g. ComfyUI's bar)."""
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class _Reporting(tqdm):
        def update(self, n=1):
            out = super().update(n)
            progress(int(self.n), int(self.total) if self.total else None)
            return out

    return _Reporting


STALE_AFTER_S = 3600  # a staging folder untouched this long belongs to a fetch that was killed


def _clean_staging(dest: Path) -> None:
    """Remove what earlier, killed fetches left in ``dest``'s staging folder (not a running fetch's folder)."""
    stage_root = dest / STAGING
    if not stage_root.is_dir():
        return
    now = time.time()
    for d in stage_root.iterdir():
        try:
            newest = max((p.stat().st_mtime for p in d.rglob("*")), default=d.stat().st_mtime)
        except OSError:
            continue
        if now - newest > STALE_AFTER_S:
            shutil.rmtree(d, ignore_errors=True)


def _check_writable(dest: Path, entry: ModelFile) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / f".instructav2av-write-test-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise DownloadError(f"cannot write to the models folder {dest} ({exc.strerror}: read-only?). Choose a "
                                f"writable one (--models-dir DIR, or ComfyUI's extra_model_paths.yaml), or "
                                f"{_by_hand(entry, dest)}") from None
        raise DownloadError(f"cannot use the models folder {dest}: {exc}") from None


def _hub_error(exc: BaseException, entry: ModelFile, dest: Path, endpoint: str | None) -> DownloadError:
    """Translate what huggingface_hub and its HTTP client raise into one clear message."""
    from huggingface_hub import errors

    where = f"{entry.repo}/{entry.path}"
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return DownloadError(f"offline mode (HF_HUB_OFFLINE) is on: cannot fetch {entry.name}; {_by_hand(entry, dest)}")
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(f"{entry.repo} is gated: accept its terms at {entry.page} and log in (`hf auth login`), "
                             f"then retry; or {_by_hand(entry, dest)}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(f"the hub repository {entry.repo} was not found (moved, renamed, made private or "
                             f"deleted?) while fetching {entry.name}. Look for it at {entry.page} or its author's new "
                             f"home, put the file in {dest}, and update instructav2av (its registry names this repo)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError(f"revision {entry.revision!r} of {entry.repo} was not found while fetching {entry.name}; "
                             f"the repository was rewritten? {_by_hand(entry, dest)}")
    if isinstance(exc, errors.EntryNotFoundError):
        return DownloadError(f"{entry.repo} no longer holds {entry.path} (the file was moved or removed) while "
                             f"fetching {entry.name}. Look at {entry.page}; update instructav2av")
    if isinstance(exc, errors.HfHubHTTPError):
        return DownloadError(f"the hub refused {where}: {str(exc).splitlines()[0]}; {_by_hand(entry, dest)}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(f"the disk holding {dest} filled up while fetching {entry.name} "
                             f"(~{entry.approx_gb or '?'} GB needed); nothing was kept. Free space or choose another "
                             "folder (--models-dir), then retry")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DownloadError(f"cannot write in {dest} ({exc.strerror}); choose a writable models folder")
    # the hub client's HTTP errors (connection refused, DNS, timeouts) share no base class we can name
    host = _endpoint(endpoint) or "https://huggingface.co"
    return DownloadError(f"could not reach {host} to fetch {entry.name} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no details'}). Check the network (or set "
                         f"HF_HUB_OFFLINE=1 to fail at once), or {_by_hand(entry, dest)}")


def _hub_metadata(entry: ModelFile, endpoint: str | None) -> tuple[int | None, str | None]:
    """(size, sha256) as the hub states them; sha256 only for LFS files (their ETag is the content's sha256)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(entry.repo, entry.path, revision=entry.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT, endpoint=endpoint)
    etag = (meta.etag or "").strip('"').lower()
    return meta.size, (etag if _SHA256.fullmatch(etag) else None)


def fetch(entry: ModelFile, dest: str | os.PathLike, *, endpoint: str | None = None,
          progress: Progress | None = None) -> Path:
    """Put ``entry`` at ``dest/entry.name``, verified, or raise :class:`DownloadError` leaving nothing there."""
    dest = Path(dest).expanduser()
    final = dest / entry.name
    if final.exists():
        try:
            check_known(final)  # size / sha256 where known, remembered once passed
            key_check(final, entry)
        except CorruptModelFile as exc:
            raise DownloadError(f"{final} exists but is not the published file ({exc}); it was left as it is. "
                                "Move it away and fetch again") from None
        return final
    if offline():
        raise DownloadError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {entry.name}; {_by_hand(entry, dest)}")
    _check_writable(dest, entry)
    _clean_staging(dest)
    endpoint = _endpoint(endpoint)
    stage = dest / STAGING / uuid.uuid4().hex[:12]
    try:
        from huggingface_hub import hf_hub_download

        try:
            size, sha = _hub_metadata(entry, endpoint)
            if size is not None and shutil.disk_usage(dest).free < size:
                free = shutil.disk_usage(dest).free
                raise DownloadError(f"not enough room in {dest} for {entry.name}: it has {size:,} bytes, the disk "
                                    f"has {free:,} free. Free space or choose another folder (--models-dir)")
            stage.mkdir(parents=True)
            logger.info("fetching %s (%s) into %s", entry.name, entry.url, dest)
            got = Path(hf_hub_download(entry.repo, entry.path, revision=entry.revision, local_dir=stage,
                                       endpoint=endpoint, etag_timeout=METADATA_TIMEOUT,
                                       tqdm_class=_tqdm_class(progress)))
        except DownloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the hub client becomes one message
            raise _hub_error(exc, entry, dest, endpoint) from None
        # off any model extension before checking, so a killed check never leaves a listable file
        pending = stage / "file.unverified"
        os.replace(got, pending)
        try:
            checked = verify(pending, entry, size=size, sha256=sha)
        except CorruptModelFile as exc:
            raise DownloadError(f"the fetched {entry.name} failed its check and was deleted: {exc}") from None
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # appeared while we fetched (another process): keep theirs
            raise DownloadError(f"{final} appeared while fetching; left it as it is")
        os.replace(pending, final)
        logger.info("%s: verified (%s)", final, checked or "nothing published to check against")
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        try:
            (dest / STAGING).rmdir()
        except OSError:
            pass


__all__ = ["MODELS_DIR_ENV", "STAGING", "DownloadError", "default_models_dir", "fetch", "offline"]
