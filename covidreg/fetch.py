"""Getting the HW01 files of an edition: download or copy them into a data directory, checked
by sha256.

Three sources: the course's public Google Drive copies (through gdown, which knows Drive's
confirmation pages), any HTTP mirror serving the two files, or a local folder such as an unzipped
Kaggle download. Each file is written under a temporary name beside its destination and renamed
onto it only once its checksum matched, so a failed or interrupted fetch leaves nothing
half-written or unverified in the data directory.

A file is accepted when its bytes are one of the published copies': its sha256 is one of those
listed for it. The 2023 training file is public in two number formats with the same values
(``0`` and ``0.0``), so both sums are listed; a copy saved again in any other format is refused
(``--no-verify`` accepts it), since a checksum of the bytes is what every user can check with
``sha256sum``.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import inspect
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, ClassVar

from covidreg.artifacts import atomic_path
from covidreg.datadir import AUTO, FILE_NAMES
from covidreg.errors import CovidRegError

#: The ways to get the data, for every message about missing or unreachable HW01 files.
DATA_HELP = (
    "pass the files with --train-csv and --test-csv, or get them in one of three ways: "
    "'covidreg fetch [--edition 2021|2022|2023]' (the course's Google Drive copies), "
    "'covidreg fetch --url-base URL' (a mirror serving the two files) or 'covidreg fetch "
    "--from DIR' (a folder holding the unzipped Kaggle download)"
)


@dataclass(frozen=True)
class HW01File:
    name: str  # file name in the data directory and on every mirror
    drive_id: str  # id of the course's public Google Drive copy
    sha256: tuple[str, ...]  # checksums of the published copies of the file

    @property
    def published(self) -> str:
        return " or ".join(self.sha256)


#: Each edition's training and test file, named as its Kaggle download names them.
EDITION_FILES: dict[str, tuple[HW01File, HW01File]] = {
    "2021": (
        HW01File(
            FILE_NAMES["2021"][0],
            "19CCyCgJrUxtvgZF53vnctJiOJ23T5mqF",
            ("7b70cccab9712a6f6c780eddbdde2484a43c98e1b63b765d64692b8f2ed9225a",),
        ),
        HW01File(
            FILE_NAMES["2021"][1],
            "1CE240jLm2npU-tdz81-oVKEF3T2yfT1O",
            ("6b5ba63b3d025889ebe7ee222b23b39d1a0c45761cfb3babfaa20a5ec0dbc051",),
        ),
    ),
    "2022": (
        HW01File(
            FILE_NAMES["2022"][0],
            "1kLSW_-cW2Huj7bh84YTdimGBOJaODiOS",
            ("298378b3db6a233e6cba686533c55844072b7c84e5e2eecf830a9e86a8dce475",),
        ),
        HW01File(
            FILE_NAMES["2022"][1],
            "1iiI5qROrAhZn-o4FPqsE97bMzDEFvIdg",
            ("d7bc0afb67a741638d745efa53dd4f967ca65f1e774957e701ff7822af6a37c3",),
        ),
    ),
    "2023": (
        HW01File(
            FILE_NAMES["2023"][0],
            "1BjXalPZxq9mybPKNjF3h5L3NcF7XKTS-",
            (
                "c1e1ba605d251a820511a55a1422c53390efcb6b487b8e826542f7dd761ce8f6",
                "94376206ce5d32e5fdfb6e89e01ad740814d06baff6108b1988599926b9069de",
            ),
        ),
        HW01File(
            FILE_NAMES["2023"][1],
            "1B55t74Jg2E5FCsKCsUEkPKIuqaY7UIi1",
            ("f5626c9f6bd95abd2d535068c7e54d7e2ea6b931687c0d6530e3ec54c1cc5954",),
        ),
    ),
}
#: The edition fetched when neither ``--edition`` nor the files at hand name one.
DEFAULT_EDITION = "2021"
#: Each edition's Kaggle competition, for the messages that name where to submit.
COMPETITIONS = {edition: f"ml{edition}spring-hw1" for edition in EDITION_FILES}

#: ``on_progress(file_name, bytes_so_far, bytes_total_or_None)`` after each chunk.
ProgressCallback = Callable[[str, int, "int | None"], None]
#: The same for one file: ``report(bytes_so_far, bytes_total_or_None)``.
FileProgress = Callable[[int, "int | None"], None]

CHUNK_BYTES = 64 * 1024
TIMEOUT_S = 30.0  # seconds without a byte from the server before giving up


@dataclass(frozen=True)
class FetchedFile:
    """One HW01 file in the data directory after a fetch."""

    path: Path
    action: str  # "downloaded", "copied" or "present" (already there, left alone)
    origin: str  # where it came from: "Google Drive", a URL or a folder; "" if present
    sha256: str
    size: int  # bytes
    verified: bool  # the sha256 is the published one
    edition: str = DEFAULT_EDITION

    def summary(self) -> str:
        action = (
            "already present" if self.action == "present" else f"{self.action} from {self.origin}"
        )
        check = (
            "verified" if self.verified else "sha256 differs from the published file, kept as it is"
        )
        return f"{self.path} ({self.edition}): {action}, {check}"


def _one_line(text: object, limit: int = 200) -> str:
    """A third-party error message squeezed onto one line (gdown's run over several)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _unavailable(file: HW01File, origin: str, reason: str) -> CovidRegError:
    return CovidRegError(f"cannot download {file.name} from {origin}: {reason}; {DATA_HELP}")


def _copy_stream(
    src: BinaryIO, out: BinaryIO, total: int | None, report: FileProgress | None
) -> int:
    done = 0
    while chunk := src.read(CHUNK_BYTES):
        try:
            out.write(chunk)
        except OSError as exc:
            raise CovidRegError(f"cannot write the download: {exc.strerror}") from None
        done += len(chunk)
        if report is not None:
            report(done, total)
    return done


# --- sources -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriveSource:
    """The course's public Google Drive copies, through gdown."""

    action: ClassVar[str] = "downloaded"

    def __str__(self) -> str:
        return "Google Drive"

    def retrieve(self, file: HW01File, out: BinaryIO, report: FileProgress | None) -> None:
        try:
            import gdown
            import requests
        except ImportError:
            raise CovidRegError(
                f"downloading from Google Drive needs gdown (pip install 'gdown>=5'); {DATA_HELP}"
            ) from None
        options: dict[str, object] = {"quiet": report is None}
        # Recent gdown versions report progress through a callback; older ones draw their own bar.
        if report is not None and "progress" in inspect.signature(gdown.download).parameters:
            options = {"quiet": True, "progress": report}
        errors = (
            getattr(gdown.exceptions, "DownloadError", gdown.exceptions.FileURLRetrievalError),
            gdown.exceptions.FileURLRetrievalError,
            requests.RequestException,
            OSError,
        )
        try:
            gdown.download(id=file.drive_id, output=out, **options)
        except requests.ConnectionError:
            # requests' own message is a nested repr of the socket error, unreadable on one line
            reason = "cannot connect (offline, or drive.google.com is blocked here)"
            raise _unavailable(file, str(self), reason) from None
        except errors as exc:
            raise _unavailable(file, str(self), _one_line(exc) or type(exc).__name__) from None


@dataclass(frozen=True)
class MirrorSource:
    """Any HTTP(S) server with the two files at ``url_base/covid.train.csv`` and so on."""

    url_base: str
    action: ClassVar[str] = "downloaded"

    def __post_init__(self) -> None:
        if not self.url_base.startswith(("http://", "https://")):
            raise CovidRegError(
                f"--url-base {self.url_base!r} is not an http:// or https:// URL; "
                "for a folder on this machine use --from DIR"
            )

    def __str__(self) -> str:
        return self.url_base

    def url(self, file: HW01File) -> str:
        return f"{self.url_base.rstrip('/')}/{file.name}"

    def retrieve(self, file: HW01File, out: BinaryIO, report: FileProgress | None) -> None:
        url = self.url(file)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = _copy_stream(response, out, total, report)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise _unavailable(
                file, url, f"the server answered HTTP {exc.code} {exc.reason}"
            ) from None
        except urllib.error.URLError as exc:
            raise _unavailable(file, url, f"cannot connect ({_one_line(exc.reason)})") from None
        except (http.client.HTTPException, OSError) as exc:  # reset, timeout, bad response
            reason = _one_line(exc) or type(exc).__name__
            raise _unavailable(file, url, f"the transfer broke off ({reason})") from None
        # http.client returns a short body without complaint when the connection closes early.
        if total is not None and done != total:
            raise _unavailable(file, url, f"the transfer broke off after {done} of {total} bytes")


@dataclass(frozen=True)
class FolderSource:
    """A folder on this machine holding the two files, e.g. an unzipped Kaggle download."""

    folder: Path
    action: ClassVar[str] = "copied"

    def __str__(self) -> str:
        return str(self.folder)

    def retrieve(self, file: HW01File, out: BinaryIO, report: FileProgress | None) -> None:
        path = self.folder / file.name
        if self.folder.is_file():
            raise CovidRegError(
                f"--from {self.folder} is a file; unzip the Kaggle download and pass the folder"
            )
        if not self.folder.is_dir():
            raise CovidRegError(f"--from {self.folder} does not exist; {DATA_HELP}")
        if not path.is_file():
            found = editions_in(self.folder)
            hint = (
                f"it holds the {' and '.join(found)} files: pass --edition {found[0]}"
                if found
                else "pass the folder holding the edition's training and test files (--edition "
                "names the edition)"
            )
            raise CovidRegError(f"--from {self.folder} has no {file.name}; {hint}")
        try:
            with path.open("rb") as src:
                _copy_stream(src, out, path.stat().st_size, report)
        except OSError as exc:
            raise CovidRegError(f"cannot read {path}: {exc.strerror}") from None


Source = DriveSource | MirrorSource | FolderSource


def source_from(url_base: str | None = None, folder: Path | None = None) -> Source:
    """The source the options name: a mirror, a folder, or by default Google Drive."""
    if url_base is not None and folder is not None:
        raise CovidRegError("pass either --url-base or --from, not both")
    if url_base is not None:
        return MirrorSource(url_base)
    if folder is not None:
        return FolderSource(Path(folder))
    return DriveSource()


# --- fetching ------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def edition_of(path: Path) -> str | None:
    """The edition an HW01 file is from: the one whose published copy it is, else the one its
    header's layout is (a copy saved again); None for any other file."""
    from covidreg.layout import parse_header

    digest = file_sha256(path)
    for edition, files in EDITION_FILES.items():
        if any(f.name == path.name and digest in f.sha256 for f in files):
            return edition
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip().split(",")
        edition = parse_header(header, has_target="train" in path.name)[0].edition
    except (OSError, CovidRegError):
        return None
    return edition if edition in EDITION_FILES else None


def editions_in(folder: Path) -> list[str]:
    """The editions whose training file ``folder`` holds (by name, then sha256 or header)."""
    names = sorted({files[0].name for files in EDITION_FILES.values()})
    found = [edition_of(folder / name) for name in names if (folder / name).is_file()]
    return sorted({edition for edition in found if edition is not None})


def resolve_edition(edition: str, dest: Path, source: Source) -> str:
    """``edition``, or for ``auto`` the one the data directory already holds, else the one a
    ``--from`` folder holds, else 2021."""
    if edition != AUTO:
        if edition not in EDITION_FILES:
            raise CovidRegError(
                f"unknown edition {edition!r}; use auto, {', '.join(EDITION_FILES)} (the Kaggle "
                f"competitions {', '.join(COMPETITIONS.values())})"
            )
        return edition
    for folder, what in ((dest, "the data directory"), (_folder_of(source), "--from")):
        found = editions_in(folder) if folder is not None and folder.is_dir() else []
        if len(found) > 1:
            raise CovidRegError(
                f"{what} {folder} holds the files of {' and '.join(found)}; pass --edition to "
                "name the one to fetch"
            )
        if found:
            return found[0]
    return DEFAULT_EDITION


def _folder_of(source: Source) -> Path | None:
    return source.folder if isinstance(source, FolderSource) else None


def _check_not_other_edition(file: HW01File, path: Path, edition: str) -> None:
    """A student's file of another edition is never fetched over, not even with --force."""
    if not path.is_file():
        return
    other = edition_of(path)
    if other is not None and other != edition:
        raise CovidRegError(
            f"{path} is the {other} {file.name}, not the {edition} one; pass --edition {other} "
            f"to use it, or fetch the {edition} files into another folder with --dest (a file "
            "of another edition is never replaced)"
        )


def _present(file: HW01File, path: Path, verify: bool, force: bool) -> FetchedFile | None:
    """The file already in the data directory, or None if it must be fetched."""
    if path.is_dir():
        raise CovidRegError(f"{path} is a directory; remove it or choose another --dest")
    if force or not path.exists():
        return None
    digest = file_sha256(path)
    verified = digest in file.sha256
    if verify and not verified:
        raise CovidRegError(
            f"{path} is already there but is not the published {file.name} of this edition "
            f"(expected sha256 {file.published}, got {digest}); pass --force to download it "
            "again, --no-verify to keep it, or another --edition or --dest"
        )
    return FetchedFile(path, "present", "", digest, path.stat().st_size, verified)


def _check_data_dir(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise CovidRegError(f"data directory {dest} is a file; choose another with --dest")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CovidRegError(
            f"cannot create data directory {dest}: {exc.strerror}; choose another with --dest"
        ) from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise CovidRegError(f"data directory {dest} is not writable; choose another with --dest")


def _check_verified(tmp: Path, file: HW01File, source: Source, verify: bool) -> str:
    digest = file_sha256(tmp)
    if verify and digest not in file.sha256:
        raise CovidRegError(
            f"{file.name} from {source} is not the published file (expected sha256 "
            f"{file.published}, got {digest}); it is damaged or modified: use another source, "
            "or pass --no-verify to accept it"
        )
    # Even unverified, an HTML error page served with status 200 must not become the CSV.
    with tmp.open("rb") as handle:
        start = handle.read(3)
    if start != b"id,":
        raise CovidRegError(
            f"{file.name} from {source} is not an HW01 CSV file (it does not start with the "
            f"header 'id,...' but with {start!r}); use another source"
        )
    return digest


def _fetch_one(
    file: HW01File, path: Path, source: Source, verify: bool, on_progress: ProgressCallback | None
) -> FetchedFile:
    report = None if on_progress is None else functools.partial(on_progress, file.name)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as out:
            source.retrieve(file, out, report)
        digest = _check_verified(tmp, file, source, verify)
        size = tmp.stat().st_size
    return FetchedFile(path, source.action, str(source), digest, size, digest in file.sha256)


def fetch_files(
    dest: str | Path = "data",
    source: Source | None = None,
    verify: bool = True,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
    edition: str = AUTO,
    if_missing: bool = False,
) -> list[FetchedFile]:
    """Put ``edition``'s training and test files into ``dest``, each checked against its
    sha256.

    ``edition`` ``auto``: the edition whose files ``dest`` already holds, else the one a folder
    ``source`` holds, else 2021. Files already there are kept when they verify (or always with
    ``verify=False``); ``force`` fetches them again, but a file of another edition is never
    replaced. ``if_missing``: nothing is fetched or checked when the edition's training file is
    there already. ``source`` defaults to the course's Google Drive copies. A file replaces its
    destination only once complete and verified; on any failure a CovidRegError says why.
    """
    dest = Path(dest)
    source = DriveSource() if source is None else source
    edition = resolve_edition(edition, dest, source)
    files = EDITION_FILES[edition]
    for file in files:
        _check_not_other_edition(file, dest / file.name, edition)
    if if_missing and (dest / files[0].name).is_file():
        verify, force = False, False
        files = tuple(file for file in files if (dest / file.name).is_file())
    # Check every file already there first, so a refused one stops the fetch before any download.
    present = {file.name: _present(file, dest / file.name, verify, force) for file in files}
    if any(found is None for found in present.values()):
        _check_data_dir(dest)
    fetched = [
        present[file.name] or _fetch_one(file, dest / file.name, source, verify, on_progress)
        for file in files
    ]
    return [replace(file, edition=edition) for file in fetched]
