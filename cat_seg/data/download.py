"""A resumable downloader / extractor for the public downloads of the catalog.

* :data:`cat_seg.data.catalog.ARCHIVES` lists each public file: URL, where it is extracted
  (relative to the dataset root), what it provides there, and its MD5 where known.
* :func:`download` fetches a URL into a file, resuming an interrupted transfer with an HTTP
  ``Range`` request (``<file>.part`` holds the bytes so far), shows a progress bar and checks
  the size (and MD5 when known) before renaming the ``.part`` file into place.
* :func:`extract` unpacks a zip / tar(.gz) archive member by member through temporary names;
  an interrupted extraction resumes and skips the members already in place.
* :func:`fetch` does both for a table entry, and is what the prepare scripts' ``--download``
  option calls.
"""
import errno
import http.client
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

from tqdm import tqdm

from .catalog import ARCHIVES, Archive, get_archive  # noqa: F401  (the download table)
from ..utils import file_digest
from .datasets.errors import DownloadError, PrepareError


_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
              TimeoutError, OSError)


# errno values of a failed write to the .part file (full disk, read-only or forbidden folder)
_LOCAL_FILE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EACCES", "EPERM", "EROFS", "EISDIR", "ENOTDIR", "EFBIG", "ENAMETOOLONG") if hasattr(errno, name))


def _local_file_error(exc: BaseException) -> bool:
    """Whether an ``OSError`` of a transfer is about the local file rather than the network
    (both are ``OSError``: a ``URLError``, a reset connection and a full disk alike)."""
    if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout)):
        return False
    return isinstance(exc, OSError) and exc.errno in _LOCAL_FILE_ERRNOS


def how_to_get(key: str, root) -> str:
    """One sentence telling where ``ARCHIVES[key]`` comes from and where it goes."""
    archive = get_archive(key)
    dest = Path(root) / archive.extract_to if archive.extract_to else Path(root)
    is_archive = archive.filename.endswith(_ARCHIVE_SUFFIXES)
    action = "extract it into" if is_archive else "put it into"
    if archive.manual:
        return (f"get {archive.filename} from {archive.url} ({archive.note}) and {action} "
                f"{dest}/")
    note = f" ({archive.note})" if archive.note else ""
    return (f"download {archive.url}{note} and {action} {dest}/, or rerun with --download")


# ----------------------------------------------------------------------------- downloading


class _Restart(Exception):
    """The server cannot resume: start the transfer again from byte 0."""


def _total_from_content_range(value: Optional[str]) -> Optional[int]:
    match = re.match(r"bytes\s+(\d+|\*)-?(\d*)/(\d+|\*)", value or "")
    if not match or match.group(3) == "*":
        return None
    return int(match.group(3))


def _transfer(url: str, part: Path, expected_size: Optional[int], timeout: float,
              progress: bool, chunk_size: int) -> None:
    """One HTTP request that appends to ``part`` (resuming from its size). Raises a
    retryable error if the connection ends early, :class:`_Restart` if the server refuses to
    resume."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cat-seg-downloader/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return  # the .part file is already complete
            raise _Restart() from None
        if 400 <= exc.code < 500:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise
    with response:
        mode = "wb"
        if offset and response.status == 206:
            start = re.match(r"bytes\s+(\d+)", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                raise _Restart()
            mode = "ab"
            total = _total_from_content_range(response.headers.get("Content-Range"))
        else:
            offset = 0  # the server ignored the Range header: start again
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"{url}: server reports {total} bytes, expected {expected_size}; the file changed "
                f"upstream or the URL is wrong"
            )
        total = total if total is not None else expected_size
        with open(part, mode) as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=not progress, dynamic_ncols=True,
        ) as bar:
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def download(url: str, dest, *, md5: Optional[str] = None, size: Optional[int] = None,
             retries: int = 5, timeout: float = 60.0, progress: bool = True,
             chunk_size: int = 1 << 20, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` (resumable). Returns ``dest``.

    Bytes accumulate in ``dest + ".part"``; a broken transfer is resumed with a ``Range``
    request, ``retries`` times within this call and across calls (rerun to resume). When
    complete, the size (``size``, or the server's length) and ``md5`` are checked and the file
    is renamed to ``dest``. An existing ``dest`` is used without downloading, after the same
    size and MD5 checks."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{dest} has {dest.stat().st_size} bytes, expected {size}; "
                                f"delete it and rerun")
        actual = file_digest(dest, "md5") if md5 is not None else None
        if actual is not None and actual != md5.lower():
            raise DownloadError(f"{dest}: MD5 {actual} differs from the expected {md5}; delete it and "
                                f"rerun to download it again")
        return dest
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        try:
            _transfer(url, part, size, timeout, progress, chunk_size)
            break
        except _Restart:
            part.unlink(missing_ok=True)
            failures += 1
            if failures > retries:
                raise DownloadError(f"{url}: the server does not resume transfers") from None
        except DownloadError:
            raise
        except _RETRYABLE as exc:
            if _local_file_error(exc):  # the disk, not the network: retrying cannot help
                raise DownloadError(
                    f"cannot write {part}: {exc.strerror or exc}; make room (or fix the folder's permissions) and "
                    "rerun to resume"
                ) from None
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries and not have:  # nothing came: no network, or no such host
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"cannot download {url} ({exc}; {failures} tries): check the network connection, or "
                    f"download it by hand as {dest}"
                ) from None
            if failures > retries:
                raise DownloadError(
                    f"download of {url} interrupted after {have} bytes ({exc}); rerun to resume"
                ) from None
            time.sleep(backoff * min(2 ** (failures - 1), 30))
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink()
        raise DownloadError(f"{url}: got {have} bytes, expected {size}; rerun to download again")
    if md5 is not None:
        actual = file_digest(part, "md5")
        if actual != md5.lower():
            part.unlink()
            raise DownloadError(f"{url}: MD5 {actual} differs from the expected {md5}; the "
                                f"corrupt file was deleted, rerun to download again")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------- extraction


def _member_target(dest: Path, name: str) -> Optional[Path]:
    """Where an archive member goes; None for entries to skip; error for unsafe paths."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store":
        return None
    if name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"unsafe path {name!r} in archive; refusing to extract")
    return dest.joinpath(*parts)


def _copy_member(stream, target: Path, size: int) -> None:
    """Write one member through a fixed temporary name (a rerun overwrites what a killed
    extraction left there) and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.extracting")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        if tmp.stat().st_size != size:
            raise DownloadError(f"archive member {target.name}: wrote {tmp.stat().st_size} bytes, "
                                f"expected {size}; the archive is corrupt")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_tar_end(tf: tarfile.TarFile, archive_path: Path) -> None:
    """Raise unless the members ``tf`` listed end the archive.

    ``tarfile`` stops without an error at a damaged member header that is not the first one
    (and at the end of a tar cut off between members), and never reads a gzip stream to its
    end, where the checksum is. The end of a tar archive is its end-of-archive marker: zero
    blocks up to the end of the stream (at least one after the block where the listing
    stopped). This reads what follows the listing forward to the end (no rewinding of a
    compressed stream), which also makes gzip check the stream's CRC and length. A damaged
    archive raises :class:`DownloadError`."""
    fileobj = tf.fileobj
    position = max(fileobj.tell(), tf.offset + tarfile.BLOCKSIZE)
    fileobj.seek(position)
    trailing = 0
    while True:
        chunk = fileobj.read(1 << 20)
        if not chunk:
            break
        if chunk.strip(b"\0"):
            raise DownloadError(f"{archive_path} is damaged after {tf.offset} bytes (a member header "
                                f"cannot be read); delete it and rerun to download it again")
        trailing += len(chunk)
    if trailing < tarfile.BLOCKSIZE:  # POSIX: two zero blocks; the listing stopped at the first
        raise DownloadError(f"{archive_path} ends after {tf.offset} bytes without the end-of-archive "
                            f"marker (cut off); delete it and rerun to download it again")


_DESTINATION_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def extraction_marker(archive_path, dest) -> Path:
    """File created in ``dest`` once ``archive_path`` is fully extracted there."""
    return Path(dest) / f".{Path(archive_path).name}.extracted"


def extract(archive_path, dest, *, progress: bool = True) -> int:
    """Extract a zip or tar(.gz) archive into ``dest``; returns the number of files written.

    Each member is written through a temporary name; members already present with the right
    size are skipped, so an interrupted extraction resumes. A marker file records completion.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    marker = extraction_marker(archive_path, dest)
    if marker.exists():
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                for info in tqdm(members, desc=f"extract {archive_path.name}", unit="file",
                                 disable=not progress, dynamic_ncols=True):
                    target = _member_target(dest, info.filename)
                    if target is None or (target.is_file()
                                          and target.stat().st_size == info.file_size):
                        continue
                    with zf.open(info) as stream:
                        _copy_member(stream, target, info.file_size)
                    written += 1
        elif tarfile.is_tarfile(archive_path):
            with tarfile.open(archive_path, "r:*") as tf, tqdm(
                desc=f"extract {archive_path.name}", unit="file", disable=not progress,
                dynamic_ncols=True,
            ) as bar:
                for member in tf:
                    bar.update(1)
                    if not member.isfile():
                        continue  # folders are created as needed; links are not extracted
                    target = _member_target(dest, member.name)
                    if target is None or (target.is_file() and target.stat().st_size == member.size):
                        continue
                    _copy_member(tf.extractfile(member), target, member.size)
                    written += 1
                _check_tar_end(tf, archive_path)
        else:
            with open(archive_path, "rb") as f:
                zip_start = f.read(4) == b"PK\x03\x04"
            if zip_start:  # a zip whose end (its table of contents) is missing
                raise DownloadError(f"{archive_path} is an incomplete or damaged zip archive (a download that did "
                                    "not finish?): delete it and download it again")
            raise DownloadError(f"{archive_path} is neither a zip nor a tar archive")
    except OSError as exc:
        if exc.errno in _DESTINATION_ERRNOS and exc.filename != str(archive_path):
            where = exc.filename or dest
            raise DownloadError(f"cannot write {where} while extracting {archive_path}: {exc.strerror}; "
                                f"make room or fix the permissions of {dest} and rerun (the archive is "
                                f"kept, the extraction resumes)") from None
        raise DownloadError(f"cannot extract {archive_path}: {exc}; delete it and rerun "
                            f"to download it again") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise DownloadError(f"cannot extract {archive_path}: {exc}; delete it and rerun "
                            f"to download it again") from None
    marker.touch()
    return written


def fetch(key: str, root, download_dir=None, *, progress: bool = True, retries: int = 5) -> Path:
    """Make ``ARCHIVES[key]`` available under ``root``: download (resumable) into
    ``download_dir`` (default ``<root>/downloads``) and extract. Returns the provided path.

    Nothing is downloaded when the provided path is there and no unfinished download or
    extraction of this archive is pending."""
    archive = get_archive(key)
    root = Path(root)
    dest = root / archive.extract_to if archive.extract_to else root
    provided = root / archive.provides
    is_archive = archive.filename.endswith(_ARCHIVE_SUFFIXES)
    download_dir = Path(download_dir) if download_dir is not None else root / "downloads"
    saved = (download_dir if is_archive else dest) / archive.filename
    pending = saved.with_name(saved.name + ".part").exists() or (
        is_archive and saved.exists() and not extraction_marker(saved, dest).exists())
    if provided.exists() and not pending:
        return provided
    if archive.manual:
        raise PrepareError(f"missing {provided}: {how_to_get(key, root)}")
    print(f"using {saved}" if saved.exists() else f"downloading {archive.url}", flush=True)
    download(archive.url, saved, md5=archive.md5, size=archive.size, progress=progress,
             retries=retries)
    if is_archive:
        if not provided.exists():  # extracted once, then (partly) deleted: extract again
            extraction_marker(saved, dest).unlink(missing_ok=True)
        extract(saved, dest, progress=progress)
    if not provided.exists():
        raise DownloadError(f"{archive.filename} did not provide {provided}; the archive layout "
                            f"changed upstream, extract it by hand")
    return provided


def fetch_all(keys: Iterable[str], root, download_dir=None, *, progress: bool = True) -> None:
    """:func:`fetch` each key in turn."""
    for key in keys:
        fetch(key, root, download_dir, progress=progress)
