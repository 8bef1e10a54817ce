"""Downloads that fail fast and say what to do, and archive extraction that stays inside
its folder.

    fetch(url, path, md5="...")          # atomic; skipped when `path` is already there
    extract_archive(archive, target)     # .zip, .tar[.gz|.bz2|.xz], .tgz, single-file .bz2

A download that cannot connect within `connect_timeout` seconds, or whose server stops
sending for `read_timeout` seconds, raises DownloadError at once (no retries): the message
names the URL, the reason (for a time-out: the limit that ran out and the seconds waited),
and the path where a file fetched by other means should be put.
A file already at that path is used as it is (after the checksum, when one is known), so
placing the files by hand and running the step again completes it offline.
"""

import bz2
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import requests

from utils import Progress, atomic_path, logger

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message says what to do."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder."""


# ----------------------------------------------------------------------------- download

def fetch(url, path, md5=None, connect_timeout=10.0, read_timeout=60.0, progress=True):
    """Downloads `url` to `path` (temporary file, then rename) unless `path` exists.

    md5: expected hex digest, checked on the new or the existing file (None: not checked).
    Returns `path`; raises DownloadError with a message for people.
    """
    path = Path(path)
    if path.exists():
        check_md5(path, md5, url)
        logger.info("%s is already present, not fetched again", path)
        return path
    logger.info("fetching %s -> %s", url, path)
    start = time.monotonic()
    try:
        with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as response:
            response.raise_for_status()
            with atomic_path(path) as temporary:
                digest = _stream_to_file(response, temporary, path.name, progress)
                if md5 is not None and digest != md5:
                    raise DownloadError(
                        f"{url} was fetched but its md5 is {digest}, expected {md5}; nothing "
                        f"was written to {path}. If the file changed upstream, check it by "
                        f"hand, put it at {path} and run again with --skip_checksums.")
    except requests.RequestException as error:
        raise DownloadError(failure_message(
            url, error, connect_timeout, read_timeout, time.monotonic() - start,
            f"Without network access, download it elsewhere and put it at {path}, then run "
            f"this step again (files already present are not fetched again).")) from None
    return path


def failure_message(url, error, connect_timeout, read_timeout, elapsed, remedy):
    """`elapsed`: seconds from the request to the failure, stated beside a time-out."""
    reason = _reason(error, connect_timeout, read_timeout, elapsed, _proxy_for(url))
    return f"could not fetch {url}: {reason}.\n{remedy}"


def _stream_to_file(response, temporary, name, progress):
    """Writes the body to `temporary`; returns its md5 hex digest."""
    digest = hashlib.md5()
    total = int(response.headers.get("content-length", 0)) or None
    with open(temporary, "wb") as out, Progress(total, name, unit="B",
                                                 disable=not progress) as bar:
        for chunk in response.iter_content(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _reason(error, connect_timeout, read_timeout, elapsed, proxy):
    """The useful part of a requests exception, in a few words. A time-out states the limit
    that ran out as urllib3 reports it: through a proxy, an HTTPS tunnel waits for the proxy
    with the connect time-out although urllib3 calls it a read time-out."""
    via = f" through the proxy {proxy}" if proxy else ""
    if isinstance(error, requests.ConnectTimeout):
        limit = _reported_timeout(error, "connect", connect_timeout)
        return (f"no connection{via} within {limit:g} s (gave up after {elapsed:.1f} s; "
                f"offline, or a firewall?)")
    if isinstance(error, requests.ReadTimeout) or "Read timed out" in str(error):
        limit = _reported_timeout(error, "read", read_timeout)
        sender = f"the proxy {proxy} or the server" if proxy else "the server"
        return f"{sender} sent nothing for {limit:g} s (gave up after {elapsed:.1f} s)"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"the server answered HTTP {error.response.status_code} {error.response.reason}"
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Failed to resolve '[^']+'[^)]*",
                    r"Connection refused", r"Name or service not known"):
        found = re.search(pattern, text)
        if found:
            return f"{found.group(0).strip()} (no network, or the host is down?)"
    return f"{type(error).__name__}: {text[:200]}"


def _reported_timeout(error, kind, default):
    """The time-out urllib3 names in its message ("read timeout=10"), else `default`."""
    found = re.search(rf"{kind} timeout=([0-9.]+)", str(error))
    return float(found.group(1)) if found else default


def _proxy_for(url):
    """The proxy requests takes from the environment for `url`, or None; without the
    user name and password it may carry, which do not belong in an error message."""
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    return re.sub(r"//[^/@]*@", "//", proxy) if proxy else None


def md5_of(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path, md5, url):
    """Raises DownloadError when `path` does not have the expected md5 (None: no check)."""
    if md5 is None:
        return
    found = md5_of(path)
    if found != md5:
        raise DownloadError(
            f"{path} (from {url}) has md5 {found}, expected {md5}: delete it to fetch it "
            f"again, or, if the file changed upstream, run again with --skip_checksums.")


# ----------------------------------------------------------------------------- extraction

def extract_archive(archive, target):
    """Extracts `archive` into the folder `target` and returns `target`.

    Refuses, before writing anything, members with an absolute path or a `..` component,
    links that point outside `target` (or anywhere by an absolute path), and devices.
    A single-file `.bz2` is decompressed to `target/<name without .bz2>`.
    The members are extracted into a staging folder inside `target` first, and each
    top-level file or folder is moved into place when all are out: a run killed half-way
    leaves no partial folder that looks extracted to the next run (which checks one file).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".extracting-"))
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target, staging)
        elif name.endswith(".bz2") and not name.endswith(".tar.bz2") and \
                not tarfile.is_tarfile(archive):
            _decompress_bz2(archive, staging / archive.name[:-len(".bz2")])
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target, staging)
        else:
            raise ValueError(f"{archive} is not a zip, tar or bz2 archive")
        for entry in sorted(staging.iterdir()):
            _move_into(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into(source, destination):
    """Moves `source` to `destination`; a folder onto an existing folder member by member,
    so that files beside its members stay."""
    if _is_real_dir(source) and _is_real_dir(destination):
        for child in sorted(source.iterdir()):
            _move_into(child, destination / child.name)
        return
    if _is_real_dir(destination):
        shutil.rmtree(destination)
    os.replace(source, destination)


def _is_real_dir(path):
    return path.is_dir() and not path.is_symlink()


def _refuse(archive, member, why):
    raise UnsafeArchiveError(f"refusing to extract {archive}: member {member!r} {why}; the "
                             f"archive is corrupt or malicious, nothing was extracted")


def _check_member_name(archive, name):
    """`name` relative, without `..`: where it lands is then inside the target."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name):
        _refuse(archive, name, "has an absolute path")
    if ".." in posix.parts:
        _refuse(archive, name, "climbs out with '..'")


def _check_link(archive, name, link, hard=False):
    """A link's target must stay inside: relative to the link's folder (symlink) or to the
    archive root (hard link)."""
    if PurePosixPath(link).is_absolute():
        _refuse(archive, name, f"links to the absolute path {link!r}")
    base = PurePosixPath() if hard else PurePosixPath(name).parent
    depth = 0
    for part in (base / link).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            _refuse(archive, name, f"links outside the target folder ({link!r})")


def _check_destinations(archive, name, target, staging):
    """A member is extracted into `staging`, then moved into `target`: neither way may lead
    through a link (one already in the target, or one an earlier member made) to outside."""
    for folder in (target, staging):
        root = os.path.realpath(folder)
        real = os.path.realpath(folder / name)
        if real != root and not real.startswith(root + os.sep):
            _refuse(archive, name, "would be written through a link to outside the target "
                                   "folder")


def _extract_tar(archive, target, staging):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(archive, member.name)
            if member.issym() or member.islnk():
                _check_link(archive, member.name, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                _refuse(archive, member.name, "is a device or fifo")
        for member in members:
            _check_destinations(archive, member.name, target, staging)
            # The "data" filter (Python >= 3.11.4) repeats these checks inside tarfile.
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, staging, filter="data")
            else:
                tar.extract(member, staging)


def _extract_zip(archive, target, staging):
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile writes a symlink entry as a small file holding the link target.
                _check_link(archive, info.filename, zf.read(info).decode("utf-8", "replace"))
        for info in infos:
            _check_destinations(archive, info.filename, target, staging)
            zf.extract(info, staging)


def _decompress_bz2(archive, destination):
    with bz2.open(archive, "rb") as source, atomic_path(destination) as temporary, \
            open(temporary, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK_BYTES)
