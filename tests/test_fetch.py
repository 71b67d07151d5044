"""covidreg fetch: downloads from a real HTTP server on 127.0.0.1, copies, checksums, errors.

The served files are the synthetic HW01 CSVs of conftest, and their sha256 replaces the published
one in ``fetch.EDITION_FILES``, so the checksum check is active in every test without the real data.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidreg import fetch
from covidreg.cli import app
from covidreg.datadir import FILE_NAMES
from covidreg.errors import CovidRegError
from covidreg.fetch import (
    DATA_HELP,
    DriveSource,
    FolderSource,
    MirrorSource,
    fetch_files,
    source_from,
)
from covidreg.layout import EDITIONS
from tests.conftest import synthetic_rows, write_hw01_csv

runner = CliRunner()
NAMES = ("covid.train.csv", "covid.test.csv")


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    declared_length: int | None = None  # Content-Length sent; None: the body's true length


@dataclass
class FakeMirror:
    """What the test server serves under /hw01/ and the paths it was asked for."""

    url_base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    mirror: FakeMirror

    def do_GET(self) -> None:
        self.mirror.requests.append(self.path)
        route = self.mirror.routes.get(self.path.removeprefix("/hw01/"))
        if route is None:
            self.send_error(404)
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        self.send_response(200)
        length = len(route.body) if route.declared_length is None else route.declared_length
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)  # then the connection closes (HTTP/1.0)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def contents(hw01_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The synthetic HW01 files, registered as the published ones (their sha256 is expected)."""
    data = {name: (hw01_files["dir"] / name).read_bytes() for name in NAMES}
    known = tuple(
        replace(file, sha256=(hashlib.sha256(data[file.name]).hexdigest(),))
        for file in fetch.EDITION_FILES["2021"]
    )
    monkeypatch.setitem(fetch.EDITION_FILES, "2021", known)
    return data


@pytest.fixture
def mirror(contents: dict[str, bytes]) -> Iterator[FakeMirror]:
    """A real HTTP server on 127.0.0.1 serving the synthetic files at /hw01/<name>."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    fake = FakeMirror(f"http://127.0.0.1:{server.server_address[1]}/hw01")
    fake.routes = {name: Route(body=body) for name, body in contents.items()}
    server.RequestHandlerClass = type("Handler", (_Handler,), {"mirror": fake})
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def corrupted(body: bytes) -> bytes:
    """The same CSV with one more digit in its last cell."""
    return body[:-1] + b"7\n"


# --- from a mirror -------------------------------------------------------------------------------


def test_mirror_download_is_verified_and_complete(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    seen: list[tuple[str, int, int | None]] = []
    files = fetch_files(dest, MirrorSource(mirror.url_base), on_progress=lambda *a: seen.append(a))

    assert [(f.path, f.action, f.verified) for f in files] == [
        (dest / name, "downloaded", True) for name in NAMES
    ]
    for name in NAMES:
        assert (dest / name).read_bytes() == contents[name]
    assert leftovers(dest) == sorted(NAMES), "no temporary file may remain"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((dest / NAMES[0]).stat().st_mode) == 0o666 & ~umask, "not 0600"
    assert mirror.requests == [f"/hw01/{name}" for name in NAMES]
    # the last report of each file says all of it arrived
    last = {name: (done, total) for name, done, total in seen}
    assert last == {name: (len(contents[name]),) * 2 for name in NAMES}
    assert (
        files[0]
        .summary()
        .endswith("covid.train.csv (2021): downloaded from " + mirror.url_base + ", verified")
    )


def test_corrupted_file_is_refused_and_nothing_left(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    bad = corrupted(contents["covid.train.csv"])
    mirror.routes["covid.train.csv"] = Route(body=bad)
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError) as info:
        fetch_files(dest, MirrorSource(mirror.url_base))
    message = str(info.value)
    assert "covid.train.csv" in message
    assert hashlib.sha256(contents["covid.train.csv"]).hexdigest() in message
    assert hashlib.sha256(bad).hexdigest() in message
    assert "--no-verify" in message
    assert leftovers(dest) == []


def test_corrupted_second_file_keeps_only_the_verified_first(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    mirror.routes["covid.test.csv"] = Route(body=corrupted(contents["covid.test.csv"]))
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError, match=r"covid\.test\.csv"):
        fetch_files(dest, MirrorSource(mirror.url_base))
    assert leftovers(dest) == ["covid.train.csv"]
    assert (dest / "covid.train.csv").read_bytes() == contents["covid.train.csv"]


def test_no_verify_accepts_a_modified_file(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    bad = corrupted(contents["covid.train.csv"])
    mirror.routes["covid.train.csv"] = Route(body=bad)
    dest = tmp_path / "data"
    files = fetch_files(dest, MirrorSource(mirror.url_base), verify=False)
    assert (dest / "covid.train.csv").read_bytes() == bad
    assert [f.verified for f in files] == [False, True]
    assert files[0].sha256 == hashlib.sha256(bad).hexdigest()
    assert "sha256 differs from the published file" in files[0].summary()


def test_no_verify_still_refuses_a_page_that_is_not_csv(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.routes["covid.train.csv"] = Route(body=b"<!DOCTYPE html><p>quota exceeded</p>")
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError, match="not an HW01 CSV file"):
        fetch_files(dest, MirrorSource(mirror.url_base), verify=False)
    assert leftovers(dest) == []


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_is_one_line_with_the_three_ways(
    mirror: FakeMirror, tmp_path: Path, status: int
) -> None:
    mirror.routes["covid.train.csv"] = Route(status=status)
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError) as info:
        fetch_files(dest, MirrorSource(mirror.url_base))
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert f"{mirror.url_base}/covid.train.csv" in message
    assert message.endswith(DATA_HELP)
    assert "\n" not in message
    assert leftovers(dest) == []


def test_interrupted_transfer_is_refused(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    body = contents["covid.test.csv"]
    mirror.routes["covid.test.csv"] = Route(body=body[:1000], declared_length=len(body))
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError, match=f"broke off after 1000 of {len(body)} bytes"):
        fetch_files(dest, MirrorSource(mirror.url_base))
    assert leftovers(dest) == ["covid.train.csv"]


def test_connection_refused_names_the_url(contents: dict[str, bytes], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CovidRegError, match="cannot connect") as info:
        fetch_files(tmp_path / "data", MirrorSource(f"http://127.0.0.1:{port}"))
    assert DATA_HELP in str(info.value)
    assert leftovers(tmp_path / "data") == []


def test_interrupt_during_download_leaves_nothing(mirror: FakeMirror, tmp_path: Path) -> None:
    def interrupt(name: str, done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    dest = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        fetch_files(dest, MirrorSource(mirror.url_base), on_progress=interrupt)
    assert leftovers(dest) == []


# --- files already there -------------------------------------------------------------------------


def test_verified_files_already_present_are_not_fetched_again(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    for name in NAMES:
        (dest / name).write_bytes(contents[name])
    files = fetch_files(dest, MirrorSource(mirror.url_base))
    assert [(f.action, f.verified) for f in files] == [("present", True)] * 2
    assert files[0].summary() == f"{dest / 'covid.train.csv'} (2021): already present, verified"
    assert mirror.requests == []

    fetch_files(dest, MirrorSource(mirror.url_base), force=True)
    assert len(mirror.requests) == 2


def test_modified_file_present_is_kept_and_reported(
    mirror: FakeMirror, contents: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    own = corrupted(contents["covid.train.csv"])
    (dest / "covid.train.csv").write_bytes(own)
    with pytest.raises(CovidRegError, match="--force"):
        fetch_files(dest, MirrorSource(mirror.url_base))
    assert mirror.requests == [], "a refused file stops the fetch before any download"
    assert (dest / "covid.train.csv").read_bytes() == own

    files = fetch_files(dest, MirrorSource(mirror.url_base), verify=False)
    assert [(f.action, f.verified) for f in files] == [("present", False), ("downloaded", True)]
    assert (dest / "covid.train.csv").read_bytes() == own


# --- from a folder -------------------------------------------------------------------------------


def test_from_folder_copies_and_verifies(
    hw01_files: dict[str, Path], contents: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    files = fetch_files(dest, FolderSource(hw01_files["dir"]))
    assert [(f.action, f.verified, f.origin) for f in files] == [
        ("copied", True, str(hw01_files["dir"]))
    ] * 2
    assert {name: (dest / name).read_bytes() for name in NAMES} == contents


def test_from_folder_missing_file(contents: dict[str, bytes], tmp_path: Path) -> None:
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "covid.train.csv").write_bytes(contents["covid.train.csv"])
    dest = tmp_path / "data"
    with pytest.raises(CovidRegError, match=r"has no covid\.test\.csv"):
        fetch_files(dest, FolderSource(kaggle))
    assert leftovers(dest) == ["covid.train.csv"]

    with pytest.raises(CovidRegError, match="does not exist"):
        fetch_files(tmp_path / "other", FolderSource(tmp_path / "nowhere"))
    assert leftovers(tmp_path / "other") == []


def test_source_from_options() -> None:
    assert source_from() == DriveSource()
    assert source_from(url_base="https://example.org/hw1") == MirrorSource(
        "https://example.org/hw1"
    )
    assert source_from(folder=Path("dl")) == FolderSource(Path("dl"))
    with pytest.raises(CovidRegError, match="not both"):
        source_from("https://example.org", Path("dl"))
    with pytest.raises(CovidRegError, match="use --from"):
        source_from(url_base="/home/me/hw1")


@pytest.mark.realdata
def test_published_sums_match_the_real_files(real_data_dir: Path, tmp_path: Path) -> None:
    files = fetch_files(tmp_path / "data", FolderSource(real_data_dir))
    assert all(f.verified for f in files)


# --- which edition ------------------------------------------------------------------------------


@pytest.fixture
def editions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A Kaggle-like folder of synthetic files for each edition, under that edition's names and
    registered as its published files."""
    folders = {}
    for i, (edition, files) in enumerate(fetch.EDITION_FILES.items()):
        layout = EDITIONS[edition]
        folder = tmp_path / f"kaggle-{edition}"
        folder.mkdir()
        train, test = (folder / file.name for file in files)
        write_hw01_csv(train, synthetic_rows(3, 12, seed=i, layout=layout), layout=layout)
        rows = synthetic_rows(3, 4, seed=10 + i, layout=layout)
        write_hw01_csv(test, rows, with_target=False, layout=layout)
        known = tuple(
            replace(file, sha256=(hashlib.sha256(path.read_bytes()).hexdigest(),))
            for file, path in zip(files, (train, test), strict=True)
        )
        monkeypatch.setitem(fetch.EDITION_FILES, edition, known)
        folders[edition] = folder
    return folders


@pytest.mark.parametrize("edition", ["2021", "2022", "2023"])
def test_auto_edition_is_the_one_a_folder_holds(editions: dict[str, Path], edition: str) -> None:
    dest = editions[edition].parent / "data"
    files = fetch_files(dest, FolderSource(editions[edition]))
    assert [(f.path.name, f.edition, f.verified) for f in files] == [
        (name, edition, True) for name in FILE_NAMES[edition]
    ]
    # then auto keeps the data directory's edition, whatever folder is named
    again = fetch_files(dest, FolderSource(editions["2021" if edition != "2021" else "2022"]))
    assert [(f.action, f.edition) for f in again] == [("present", edition)] * 2


def test_edition_of_a_file_saved_again_is_read_from_its_header(editions: dict[str, Path]) -> None:
    path = editions["2022"] / "covid.train.csv"
    assert fetch.edition_of(path) == "2022"
    path.write_bytes(corrupted(path.read_bytes()))
    assert fetch.edition_of(path) == "2022", "the header says 2022 although the sum differs"
    other = editions["2022"] / "notes.csv"
    other.write_text("a,b\n1,2\n")
    assert fetch.edition_of(other) is None


def test_from_a_folder_of_another_edition_names_it(editions: dict[str, Path]) -> None:
    dest = editions["2023"].parent / "data"
    with pytest.raises(CovidRegError) as exc:
        fetch_files(dest, FolderSource(editions["2023"]), edition="2021")
    assert "has no covid.train.csv; it holds the 2023 files: pass --edition 2023" in str(exc.value)
    assert leftovers(dest) == []


@pytest.mark.parametrize("force", [False, True])
def test_a_file_of_another_edition_is_never_fetched_over(
    editions: dict[str, Path], force: bool
) -> None:
    dest = editions["2022"]
    own = (dest / "covid.train.csv").read_bytes()
    with pytest.raises(CovidRegError) as exc:
        fetch_files(dest, FolderSource(editions["2021"]), force=force, edition="2021")
    message = str(exc.value)
    assert "is the 2022 covid.train.csv, not the 2021 one; pass --edition 2022" in message
    assert "--dest" in message and "--force" not in message
    assert (dest / "covid.train.csv").read_bytes() == own


def test_two_editions_in_the_data_directory_ask_for_one(editions: dict[str, Path]) -> None:
    dest = editions["2023"]
    (dest / "covid.train.csv").write_bytes((editions["2021"] / "covid.train.csv").read_bytes())
    with pytest.raises(CovidRegError, match="holds the files of 2021 and 2023; pass --edition"):
        fetch_files(dest, FolderSource(editions["2021"]))
    files = fetch_files(dest, FolderSource(editions["2023"]), edition="2023")
    assert [f.action for f in files] == ["present"] * 2


def test_if_missing_keeps_a_students_own_file_unchecked(
    editions: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    own = corrupted((editions["2022"] / "covid.train.csv").read_bytes())
    (dest / "covid.train.csv").write_bytes(own)
    with pytest.raises(CovidRegError, match="not the published"):
        fetch_files(dest, FolderSource(editions["2022"]))
    files = fetch_files(dest, FolderSource(editions["2022"]), if_missing=True)
    assert [(f.path.name, f.action, f.verified, f.edition) for f in files] == [
        ("covid.train.csv", "present", False, "2022")
    ], "the test file is not fetched beside a training file that is there"
    assert leftovers(dest) == ["covid.train.csv"]
    assert (dest / "covid.train.csv").read_bytes() == own

    empty = tmp_path / "empty"
    files = fetch_files(empty, FolderSource(editions["2023"]), if_missing=True)
    assert [(f.action, f.edition) for f in files] == [("copied", "2023")] * 2


def test_cli_fetch_auto_and_if_missing(editions: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "data"
    args = ["fetch", "--from", str(editions["2023"]), "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{dest / name} (2023): copied from {editions['2023']}, verified"
        for name in FILE_NAMES["2023"]
    ]
    result = runner.invoke(app, [*args, "--if-missing", "--edition", "auto"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "", "nothing transferred: no progress bars, not even a blank line"
    assert [line.split(": ")[1] for line in result.stdout.splitlines()] == [
        "already present, verified"
    ] * 2


# --- from Google Drive (gdown replaced: no network) ----------------------------------------------


def fake_gdown(monkeypatch: pytest.MonkeyPatch, bodies: dict[str, bytes], calls: list[str]) -> None:
    import gdown

    def download(*, id: str, output, quiet: bool, progress=None) -> object:
        calls.append(id)
        output.write(bodies[id])
        if progress is not None:
            progress(len(bodies[id]), len(bodies[id]))
        return output

    monkeypatch.setattr(gdown, "download", download)


def test_drive_downloads_each_file_by_its_id(
    monkeypatch: pytest.MonkeyPatch, contents: dict[str, bytes], tmp_path: Path
) -> None:
    ids = {file.drive_id: file.name for file in fetch.EDITION_FILES["2021"]}
    calls: list[str] = []
    fake_gdown(monkeypatch, {i: contents[name] for i, name in ids.items()}, calls)
    seen: list[str] = []
    files = fetch_files(tmp_path / "data", on_progress=lambda name, *_: seen.append(name))
    assert calls == ["19CCyCgJrUxtvgZF53vnctJiOJ23T5mqF", "1CE240jLm2npU-tdz81-oVKEF3T2yfT1O"]
    assert [(f.action, f.origin, f.verified) for f in files] == [
        ("downloaded", "Google Drive", True)
    ] * 2
    assert seen == list(NAMES)
    assert (tmp_path / "data" / "covid.test.csv").read_bytes() == contents["covid.test.csv"]


def test_drive_copy_that_does_not_verify_is_refused(
    monkeypatch: pytest.MonkeyPatch, contents: dict[str, bytes], tmp_path: Path
) -> None:
    bodies = {file.drive_id: corrupted(contents[file.name]) for file in fetch.EDITION_FILES["2021"]}
    fake_gdown(monkeypatch, bodies, [])
    with pytest.raises(
        CovidRegError, match=r"covid\.train\.csv from Google Drive is not the published"
    ):
        fetch_files(tmp_path / "data")
    assert leftovers(tmp_path / "data") == []


def test_drive_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import gdown

    def refuse(**kwargs: object) -> None:
        raise gdown.exceptions.FileURLRetrievalError(
            "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this "
            "file recently.\n\nYou may still be able to access the file from the browser"
        )

    monkeypatch.setattr(gdown, "download", refuse)
    with pytest.raises(CovidRegError) as info:
        fetch_files(tmp_path / "data", DriveSource())
    message = str(info.value)
    assert message.startswith("cannot download covid.train.csv from Google Drive: Failed to")
    assert "Too many users" in message and "\n" not in message and "\t" not in message
    assert message.endswith(DATA_HELP)


# --- the command ---------------------------------------------------------------------------------


def test_cli_fetch_then_already_present(mirror: FakeMirror, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    args = ["fetch", "--url-base", mirror.url_base, "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{dest / name} (2021): downloaded from {mirror.url_base}, verified" for name in NAMES
    ]

    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{dest / name} (2021): already present, verified" for name in NAMES
    ]
    assert len(mirror.requests) == 2


def test_cli_server_error_exits_1_with_one_line(mirror: FakeMirror, tmp_path: Path) -> None:
    mirror.routes["covid.train.csv"] = Route(status=500)
    dest = tmp_path / "data"
    result = runner.invoke(app, ["fetch", "--url-base", mirror.url_base, "--dest", str(dest)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot download covid.train.csv from ")
    assert "HTTP 500" in lines[0] and "--from DIR" in lines[0] and "--url-base URL" in lines[0]
    assert "Traceback" not in result.output
    assert leftovers(dest) == []


def test_cli_from_folder_and_no_verify(
    hw01_files: dict[str, Path], contents: dict[str, bytes], tmp_path: Path
) -> None:
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "covid.train.csv").write_bytes(corrupted(contents["covid.train.csv"]))
    (kaggle / "covid.test.csv").write_bytes(contents["covid.test.csv"])
    dest = tmp_path / "data"
    result = runner.invoke(app, ["fetch", "--from", str(kaggle), "--dest", str(dest)])
    assert result.exit_code == 1
    assert "--no-verify" in result.stderr and "Traceback" not in result.output
    assert leftovers(dest) == []

    result = runner.invoke(
        app, ["fetch", "--from", str(kaggle), "--dest", str(dest), "--no-verify"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{dest / 'covid.train.csv'} (2021): copied from {kaggle}, sha256 differs from the "
        "published file, kept as it is",
        f"{dest / 'covid.test.csv'} (2021): copied from {kaggle}, verified",
    ]


def test_cli_both_sources_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fetch", "--url-base", "http://x", "--from", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: pass either --url-base or --from, not both"
