"""Resumable downloader and extractor, against a local HTTP server on 127.0.0.1."""
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from cat_seg.data import download as dl
from cat_seg.data.datasets import DownloadError
from cat_seg.data.prepare import ade20k


class Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support. Per path, ``cut`` makes the
    next N full (non-Range) transfers stop after half the body, ``ignore_range`` answers
    Range requests with the whole file (200)."""

    def __init__(self):
        self.files, self.cut, self.ignore_range, self.requests = {}, {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                range_header = self.headers.get("Range")
                server.requests.append((path, range_header))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and path not in server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if start == 0 and server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def payload(n=300_000, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_interrupted_transfer_resumes_with_range(tmp_path, server):
    data = payload()
    server.files["/a.bin"] = data
    server.cut["/a.bin"] = 1
    dest = tmp_path / "a.bin"
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(DownloadError, match="interrupted after 150000 bytes.*rerun to resume"):
        dl.download(server.url + "/a.bin", dest, md5=md5, retries=0, progress=False)
    assert not dest.exists()
    assert (tmp_path / "a.bin.part").stat().st_size == len(data) // 2
    dl.download(server.url + "/a.bin", dest, md5=md5, retries=0, progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("/a.bin", None), ("/a.bin", f"bytes={len(data) // 2}-")]
    dl.download(server.url + "/a.bin", dest, md5=md5, progress=False)  # present: no request
    assert len(server.requests) == 2


def test_a_host_that_cannot_be_reached_is_not_called_an_interrupted_download(tmp_path):
    """Without a network the message said the download was 'interrupted after 0 bytes' and to
    'rerun to resume'; nothing was started."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError, match=rf"^cannot download http://127.0.0.1:{port}/a.zip \(.*; 2 tries\): "
                                            rf"check the network connection, or download it by hand as {dest}$"):
        dl.download(f"http://127.0.0.1:{port}/a.zip", dest, retries=1, backoff=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # no file, no empty .part


def test_a_full_disk_during_a_download_is_not_retried_or_blamed_on_the_network(tmp_path, server, monkeypatch):
    """A write to the .part file that fails (full disk) was an OSError like a network error:
    retried with back-off, then reported as 'check the network connection'."""
    import errno

    server.files["/c.bin"] = payload(seed=2)
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_transfer", full_disk)
    dest = tmp_path / "c.bin"
    with pytest.raises(DownloadError, match=rf"^cannot write {dest}.part: No space left on device; make room"):
        dl.download(server.url + "/c.bin", dest, retries=3, backoff=0, progress=False)
    assert len(calls) == 1


def test_retries_resume_within_one_call(tmp_path, server):
    data = payload(seed=1)
    server.files["/b.bin"] = data
    server.cut["/b.bin"] = 1
    dl.download(server.url + "/b.bin", tmp_path / "b.bin", size=len(data), retries=2,
                backoff=0, progress=False, chunk_size=4096)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]


def test_complete_part_file_and_server_without_range(tmp_path, server):
    data = payload(1000, seed=2)
    server.files["/c.bin"] = data
    (tmp_path / "c.bin.part").write_bytes(data)  # complete but not renamed: 416 -> done
    dl.download(server.url + "/c.bin", tmp_path / "c.bin", progress=False)
    assert (tmp_path / "c.bin").read_bytes() == data
    server.ignore_range.add("/c.bin")
    (tmp_path / "d.bin.part").write_bytes(b"x" * 10)  # server ignores Range: start over
    dl.download(server.url + "/c.bin", tmp_path / "d.bin", progress=False)
    assert (tmp_path / "d.bin").read_bytes() == data


def test_checksum_and_size_mismatch(tmp_path, server):
    server.files["/e.bin"] = payload(5000, seed=3)
    with pytest.raises(DownloadError, match="MD5 .* differs from the expected 0+; the corrupt "
                                            "file was deleted"):
        dl.download(server.url + "/e.bin", tmp_path / "e.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="server reports 5000 bytes, expected 4999"):
        dl.download(server.url + "/e.bin", tmp_path / "e.bin", size=4999, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download(server.url + "/missing.bin", tmp_path / "f.bin", progress=False)


def make_zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tar(files, mode="w"):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_tgz(files):
    return make_tar(files, mode="w:gz")


@pytest.mark.parametrize("make,suffix", [(make_zip, ".zip"), (make_tgz, ".tar.gz")])
def test_extraction_resumes(tmp_path, make, suffix):
    files = {"top/a.txt": b"alpha", "top/sub/b.bin": payload(2000), "top/c.txt": b"gamma"}
    archive = tmp_path / f"archive{suffix}"
    archive.write_bytes(make(files))
    dest = tmp_path / "out"
    # an earlier extraction got as far as a.txt and left a temporary file behind
    (dest / "top").mkdir(parents=True)
    (dest / "top/a.txt").write_bytes(b"alpha")
    (dest / "top/sub").mkdir()
    (dest / "top/sub/.b.bin.extracting").write_bytes(b"partial")
    before = (dest / "top/a.txt").stat().st_mtime_ns
    assert dl.extract(archive, dest, progress=False) == 2
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "top/a.txt").stat().st_mtime_ns == before  # kept, not rewritten
    assert sorted(p.name for p in (dest / "top/sub").iterdir()) == ["b.bin"]
    assert dl.extraction_marker(archive, dest).exists()
    assert dl.extract(archive, dest, progress=False) == 0


TAR_FILES = {f"top/{i:02d}.bin": payload(1500 + 100 * i, seed=i) for i in range(8)}


def _header_offset(tar_bytes, index):
    """Byte offset of the ``index``-th member's header in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return tf.getmembers()[index].offset


def _damaged_header(tar_bytes):
    data = bytearray(tar_bytes)
    data[_header_offset(tar_bytes, 3) + 148] ^= 0xFF  # the checksum field of the 4th header
    return bytes(data)


def _gzip(data):
    import gzip

    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("damage", ["header", "header_gz", "cut_between_members", "gzip_crc", "gzip_cut"])
def test_damaged_tar_is_an_error_and_not_marked_extracted(tmp_path, damage):
    """tarfile lists a damaged archive's members up to the damage without an error: the
    extraction reads the archive to its end and refuses it, leaving no completion marker."""
    tar = make_tar(TAR_FILES)
    if damage == "header":
        archive, data = "a.tar", _damaged_header(tar)
    elif damage == "header_gz":
        archive, data = "a.tar.gz", _gzip(_damaged_header(tar))
    elif damage == "cut_between_members":
        archive, data = "a.tar", tar[:_header_offset(tar, 5)]
    elif damage == "gzip_crc":
        compressed = bytearray(_gzip(tar))
        compressed[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
        archive, data = "a.tar.gz", bytes(compressed)
    else:
        compressed = _gzip(tar)
        archive, data = "a.tar.gz", compressed[: len(compressed) - 40]
    (tmp_path / archive).write_bytes(data)
    with pytest.raises(DownloadError, match=f"{archive}.*(damaged|cut off|CRC|ended|cannot extract).*"
                                            "delete it and rerun"):
        dl.extract(tmp_path / archive, tmp_path / "out", progress=False)
    assert not dl.extraction_marker(tmp_path / archive, tmp_path / "out").exists()


def test_intact_tar_passes_the_end_check(tmp_path):
    for archive, data in (("a.tar", make_tar(TAR_FILES)), ("a.tar.gz", _gzip(make_tar(TAR_FILES)))):
        (tmp_path / archive).write_bytes(data)
        assert dl.extract(tmp_path / archive, tmp_path / archive.replace(".", "_"), progress=False) == len(TAR_FILES)


def test_corrupt_deflate_stream_is_one_error(tmp_path):
    compressed = bytearray(_gzip(make_tar(TAR_FILES)))
    compressed[len(compressed) // 2] ^= 0xFF
    (tmp_path / "a.tar.gz").write_bytes(bytes(compressed))
    with pytest.raises(DownloadError, match="a.tar.gz.*delete it and rerun"):
        dl.extract(tmp_path / "a.tar.gz", tmp_path / "out", progress=False)


def test_zip_cut_short_is_called_incomplete(tmp_path):
    data = make_zip({f"f{i}.txt": bytes(500) for i in range(4)})
    (tmp_path / "a.zip").write_bytes(data[:len(data) // 2])
    with pytest.raises(DownloadError, match=r"a.zip is an incomplete or damaged zip archive \(a download that did "
                                            r"not finish\?\): delete it and download it again"):
        dl.extract(tmp_path / "a.zip", tmp_path / "out", progress=False)


def test_full_disk_while_extracting_blames_the_destination_not_the_archive(tmp_path, monkeypatch):
    import errno

    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"top/a.txt": b"alpha"}))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.shutil, "copyfileobj", full)
    with pytest.raises(DownloadError, match=r"cannot write .*out while extracting .*a.zip: No space left on "
                                            r"device; make room .*the archive is kept") as info:
        dl.extract(archive, tmp_path / "out", progress=False)
    assert "delete it" not in str(info.value)


def test_extraction_deleted_after_completion_is_extracted_again(tmp_path, server, monkeypatch, capsys):
    """The completion marker does not stop a new extraction once what it provided is gone;
    the archive already downloaded is used (and checked) without a transfer."""
    files = {"Prov/a.txt": b"alpha"}
    data = make_zip(files)
    server.files["/p.zip"] = data
    monkeypatch.setitem(dl.ARCHIVES, "test_archive", dl.Archive(
        server.url + "/p.zip", "p.zip", "", "Prov", md5=hashlib.md5(data).hexdigest()))
    root = tmp_path / "root"
    assert dl.fetch("test_archive", root, progress=False) == root / "Prov"
    import shutil

    shutil.rmtree(root / "Prov")
    assert dl.fetch("test_archive", root, progress=False) == root / "Prov"
    assert (root / "Prov/a.txt").read_bytes() == b"alpha"
    assert len(server.requests) == 1
    assert "using " in capsys.readouterr().out
    # a damaged archive already there is refused by its MD5, not extracted
    shutil.rmtree(root / "Prov")
    (root / "downloads/p.zip").write_bytes(data[:-1] + b"X")
    with pytest.raises(DownloadError, match="p.zip: MD5 .* differs .* delete it and rerun"):
        dl.fetch("test_archive", root, progress=False)


def test_extraction_refuses_unsafe_paths(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="unsafe path"):
        dl.extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_prepare_script_download_option(tmp_path, server, raw, monkeypatch, capsys):
    """``prepare_ade20k.py --download`` fetches (resuming a cut transfer), extracts and prepares."""
    label = np.array([[0, 1], [150, 2]], np.uint8)
    src = tmp_path / "src"
    raw.make_ade150(src, {"ADE_val_00000001": label})
    files = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    server.files["/ADEChallengeData2016.zip"] = make_zip(files)
    server.cut["/ADEChallengeData2016.zip"] = 1
    monkeypatch.setitem(dl.ARCHIVES, "ade20k_challenge", dl.Archive(
        server.url + "/ADEChallengeData2016.zip", "ADEChallengeData2016.zip", "",
        "ADEChallengeData2016"))
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    root = tmp_path / "root"
    assert ade20k.main(["--root", str(root), "--benchmark", "150", "--download", "--workers",
                        "1", "--no-progress"]) == 0
    out = root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png"
    np.testing.assert_array_equal(raw.read(out), [[255, 0], [149, 1]])
    assert (root / "downloads/ADEChallengeData2016.zip").is_file()
    assert len(server.requests) == 2 and server.requests[1][1] is not None
    # a second run downloads nothing
    assert ade20k.main(["--root", str(root), "--benchmark", "150", "--download",
                        "--no-progress"]) == 0
    assert len(server.requests) == 2


def test_manual_archive_is_explained(tmp_path):
    with pytest.raises(Exception, match="ADE20K_2021_17_01.zip from https://groups.csail.mit.edu"
                                        ".*registration"):
        ade20k.main(["--root", str(tmp_path), "--benchmark", "847", "--download", "--no-progress"])


def test_table_has_https_or_http_urls_and_known_md5s():
    for key, archive in dl.ARCHIVES.items():
        assert archive.url.startswith(("http://", "https://")), key
        assert archive.md5 is None or len(archive.md5) == 32
        assert dl.how_to_get(key, "datasets").count(archive.url) == 1
