"""A Hugging Face Hub file server on loopback, for the released-weights tests.

It serves the hub's file API as ``huggingface_hub.hf_hub_download`` uses it
(``huggingface_hub/file_download.py``: ``get_hf_file_metadata`` and ``http_get``):

* ``HEAD /{spaces/|datasets/|}{repo_id}/resolve/{revision}/{filename}``: ``X-Repo-Commit``
  (required: the commit the revision resolves to), ``ETag`` (required; for LFS files the
  hub's etag is the sha256 of the content), ``Content-Length``, ``Accept-Ranges``;
* ``GET`` of the same path: the bytes, honouring ``Range: bytes=N-`` with ``206`` and
  ``Content-Range`` (resumed downloads); ``cut_next_get_after`` simulates a dropped connection;
* unknown files: ``404`` with ``X-Error-Code: EntryNotFound``;
* ``refuse``: every request answered with that status and ``X-Error-Message`` (401, 403).

Every request is recorded, so tests can tell whether the network was used.
"""
import hashlib
import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def _official_reference():
    """tests/reference/official_reference.py, loaded by path (it is not a package)."""
    path = Path(__file__).resolve().parents[1] / "reference" / "official_reference.py"
    spec = importlib.util.spec_from_file_location("official_reference_for_hub_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LoopbackHub:
    """``files[(repo_type, repo_id, filename)] = bytes``; ``requests`` lists ``(method, path, range)``."""

    def __init__(self):
        self.files = {}
        self.requests = []
        self.cut_next_get_after = None  # bytes: the next GET sends this much, then drops the connection
        self.refuse = None  # (status, X-Error-Message): every request is answered with it (401, 403)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _lookup(self):
                for repo_type, prefix in _PREFIXES.items():
                    for (rtype, repo_id, filename), data in hub.files.items():
                        if rtype != repo_type:
                            continue
                        for revision in ("main", COMMIT):
                            if self.path == f"/{prefix}{repo_id}/resolve/{revision}/{filename}":
                                return data
                return None

            def _answer(self, with_body: bool):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if hub.refuse is not None:
                    status, message = hub.refuse
                    self.send_response(status)
                    self.send_header("X-Error-Message", message)
                    self.send_header("X-Request-Id", "Root=1-loopback")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = self._lookup()
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                requested = self.headers.get("Range")
                if with_body and requested and requested.startswith("bytes="):
                    start = int(requested[len("bytes="):].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if with_body and hub.cut_next_get_after is not None:
                    cut, hub.cut_next_get_after = hub.cut_next_get_after, None
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True  # the client sees a body shorter than Content-Length
                elif with_body:
                    self.wfile.write(data[start:])

            def do_HEAD(self):
                self._answer(with_body=False)

            def do_GET(self):
                self._answer(with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_type: str, repo_id: str, filename: str, data: bytes):
        self.files[(repo_type, repo_id, filename)] = data

    def downloads(self, filename: str):
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith("/" + filename)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_hub(monkeypatch, tmp_path):
    """A running :class:`LoopbackHub`, ``HF_ENDPOINT`` pointing at it and an empty hub cache."""
    hub = LoopbackHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield hub
    hub.close()


@pytest.fixture(scope="session")
def official_tiny_bytes(tmp_path_factory):
    """An official-layout checkpoint of the tiny B-like model (with the official training
    extras), as the bytes of a ``torch.save`` file, and its state dict."""
    state = _official_reference().make_official_state_dict("tiny-b", seed=0)
    path = tmp_path_factory.mktemp("official-hub") / "model_tiny.pth"
    torch.save({"model": state, "iteration": 79999, "scheduler": {"last_epoch": 79999}}, path)
    return path.read_bytes(), state
