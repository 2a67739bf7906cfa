"""Fetch open sources: resumable, retried, checksum-verified downloads and safe archive unpacking.

Standard library only (``urllib``); :func:`endofm.logs.progress` reports progress. Gated sources are never
fetched: asking for one raises :class:`DownloadError` with the instructions of
:func:`endofm.data.sources.missing_data_message`.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from endofm.data.sources import Download, Source, get_source, missing_data_message
from endofm.io import atomic_path
from endofm.logs import progress as progress_bar

CHUNK = 1 << 20
USER_AGENT = "endofm-downloader/0.1 (+python-urllib)"


class DownloadError(RuntimeError):
    """A download, verification or unpacking step failed; the message names the URL or file."""


class _Retryable(Exception):
    """A transient failure (connection, 5xx, short read) worth another attempt."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _content_range(value: str | None) -> tuple[int, int | None]:
    """``(start, total)`` of a ``Content-Range: bytes start-end/total`` header (total None for ``*``)."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        if unit != "bytes":
            raise ValueError
        return int(span.split("-", 1)[0]), None if total.strip() == "*" else int(total)
    except (AttributeError, ValueError):
        raise _Retryable(f"malformed Content-Range header {value!r}") from None


def _attempt(url: str, part: Path, expected: str | None, timeout: float, progress: bool) -> None:
    """One request: resume or restart ``part`` and stream the body into it; raise if incomplete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            part.unlink()  # the partial file is not a prefix the server recognises: start again
            raise _Retryable(f"HTTP 416 resuming at byte {offset}; restarting") from None
        if 500 <= err.code < 600 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason} (not retried)") from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retryable(f"server resumed at byte {start}, asked for {offset}; restarting")
            mode = "ab"
        else:  # 200: the server ignored the Range header (or there was none): start from zero
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
        hasher = None
        if expected is not None:
            hasher = hashlib.sha256()
            if mode == "ab":
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        hasher.update(chunk)
        size = offset
        with (
            open(part, mode) as out,
            progress_bar(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
                if hasher is not None:
                    hasher.update(chunk)
    if total is not None and size != total:
        raise _Retryable(f"transfer ended at byte {size} of {total}")
    if hasher is not None and hasher.hexdigest() != expected:
        actual = hasher.hexdigest()
        part.unlink()
        raise DownloadError(
            f"{url}: checksum mismatch for {part.with_name(part.name[: -len('.part')])}: "
            f"expected sha256 {expected}, got {actual}; the partial file was deleted"
        )


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; resume, retry and verify on the way.

    An existing ``dest`` is kept if it matches ``sha256`` (or none is given). An existing ``.part``
    is resumed with a ``Range`` request (appended on 206, restarted on 200). Connection errors,
    short transfers and 5xx / 408 / 429 answers are retried ``retries`` times, sleeping
    ``backoff * 2**k`` seconds; other 4xx answers fail at once. The digest is checked before ``.part`` becomes
    ``dest``; on a mismatch the ``.part`` is deleted. After exhausted retries the ``.part`` stays
    so that the next call resumes it.
    """
    dest = Path(dest)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"{url}: sha256 must be 64 hex digits, got {sha256!r}")
    expected = sha256.lower() if sha256 is not None else None
    if dest.is_file() and (expected is None or sha256_file(dest) == expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    errors: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _attempt(url, part, expected, timeout, progress)
        except _Retryable as err:
            errors.append(str(err))
            continue
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as err:
            # URLError wraps failures to connect; the others happen while reading the body. Local
            # file errors (disk full, permissions) are not retried.
            reason = getattr(err, "reason", None) or err
            errors.append(f"{type(err).__name__}: {reason}")
            continue
        os.replace(part, dest)
        return dest
    raise DownloadError(
        f"{url}: failed after {retries + 1} attempts ({'; '.join(errors)}); "
        f"{'the partial file ' + str(part) + ' is kept for resuming' if part.exists() else 'nothing was kept'}"
    )


def _check_member(archive: Path, name: str) -> None:
    """Refuse an archive member whose path is absolute or leaves the destination."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise DownloadError(f"{archive}: member {name!r} has an absolute path; refusing to unpack")
    if ".." in PurePosixPath(posix).parts:
        raise DownloadError(f"{archive}: member {name!r} escapes the destination folder; refusing to unpack")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    _check_member(archive, member.name)
    if member.issym() or member.islnk():
        base = posixpath.dirname(member.name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise DownloadError(
                f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the destination folder; "
                "refusing to unpack"
            )
    elif not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: member {member.name!r} is a device or pipe; refusing to unpack")


def _extract(archive: Path, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(archive, info.filename)
            zf.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for member in members:
                _check_tar_member(archive, member)
            tf.extractall(into, members=members, filter="data")
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive (zip, tar, tar.gz/tgz are supported)")


def unpack_archive(archive: Path, dest_dir: Path) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest_dir`` atomically.

    Members with absolute paths, ``..`` components, links leaving the folder or device entries are
    refused before anything is written. If the archive holds one top-level folder and nothing
    else, that folder's contents become ``dest_dir``. An existing ``dest_dir`` is replaced.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    with atomic_path(dest_dir, directory=True) as tmp:
        stage = Path(tempfile.mkdtemp(prefix=".unpack-", dir=tmp))
        try:
            _extract(archive, stage)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
            raise DownloadError(f"{archive}: corrupt archive ({err})") from err
        entries = list(stage.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else stage
        for child in root.iterdir():
            os.replace(child, tmp / child.name)
        shutil.rmtree(stage)
    return dest_dir


def _merge(src: Path, dest: Path, what: str) -> None:
    """Move ``src``'s entries into ``dest``; two downloads may not provide the same top-level name."""
    for child in sorted(src.iterdir()):
        target = dest / child.name
        if target.exists():
            raise DownloadError(f"{what}: {child.name!r} is provided by more than one download")
        os.replace(child, target)


def fetch_source(
    source: Source | str,
    raw_dir: Path,
    downloads_dir: Path,
    overrides: Sequence[Download] | None = None,
    progress: bool = True,
) -> Path:
    """Download an open source into ``downloads_dir/<name>/`` and unpack it into ``raw_dir``.

    ``overrides`` replaces the registry's downloads (mirrors, tests); with it even a gated source
    can be fetched from a copy the user is entitled to. Without it, gated sources and open sources
    without confirmed downloads raise :class:`DownloadError` with the manual instructions;
    built-in sources always do (they are generated). An existing ``raw_dir`` (fetched before, or
    placed by hand) is returned untouched: delete it to fetch again. Otherwise ``raw_dir`` appears
    only once every file is downloaded, verified and unpacked.
    """
    source = get_source(source) if isinstance(source, str) else source
    raw_dir, downloads_dir = Path(raw_dir), Path(downloads_dir)
    if raw_dir.exists():
        return raw_dir
    if source.access == "builtin":
        raise DownloadError(f"source {source.name!r} is built in and generated, not downloaded: {source.instructions}")
    downloads = tuple(overrides) if overrides is not None else source.downloads
    if not downloads or (overrides is None and source.gated):
        raise DownloadError(missing_data_message(source, raw_dir))
    if len({d.filename for d in downloads}) != len(downloads):
        names = [d.filename for d in downloads]
        raise DownloadError(f"source {source.name!r}: download file names must be unique: {names}")
    files = [
        download_file(d.url, downloads_dir / source.name / d.filename, d.sha256, progress=progress) for d in downloads
    ]
    with atomic_path(raw_dir, directory=True) as tmp:
        for i, (d, path) in enumerate(zip(downloads, files, strict=True)):
            if d.unpack:
                stage = unpack_archive(path, tmp / f".stage-{i}")
                _merge(stage, tmp, f"source {source.name!r}")
                stage.rmdir()
            else:
                target = tmp / d.filename
                if target.exists():
                    raise DownloadError(f"source {source.name!r}: {d.filename!r} is provided by more than one download")
                try:
                    os.link(path, target)  # the download cache and raw_dir usually share a file system
                except OSError:
                    shutil.copy2(path, target)
    return raw_dir
