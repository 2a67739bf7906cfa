"""Fixtures shared by several test files."""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def no_host_slurm_controller(tmp_path_factory) -> Iterator[None]:
    """Local Snakemake runs without the host's Slurm controller. Snakemake's Slurm plugin, on import, asks
    ``scontrol show config`` for MinJobAge; on a machine with Slurm's client but no running controller
    (this one after ``make test-slurm``) that call retries for ~9 s in every ``snakemake`` the tests start.
    A ``scontrol`` that fails at once stands first on PATH; the fake-SLURM tests put their own stubs before
    it, and ``make test-slurm`` (ENDOFM_REAL_SLURM=1) keeps the real one."""
    if os.environ.get("ENDOFM_REAL_SLURM") == "1":
        yield
        return
    shims = tmp_path_factory.mktemp("no_slurm_controller")
    (shims / "scontrol").write_text("#!/bin/sh\necho 'scontrol: no Slurm controller in local tests' >&2\nexit 1\n")
    (shims / "scontrol").chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@dataclass
class Behaviour:
    """What the server does; tests mutate it and read the request log."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_first: int = 0  # answer this many requests with 503
    drop_once_at: int | None = None  # on the next full-body answer, close after this many bytes
    ignore_range: bool = False
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour
        rng = self.headers.get("Range")
        b.log.append((self.path, rng))
        if b.fail_first > 0:
            b.fail_first -= 1
            self.send_error(503, "Service Unavailable")
            return
        data = b.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and not b.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
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
        if b.drop_once_at is not None:
            cut, b.drop_once_at = b.drop_once_at, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@dataclass
class LoopbackServer:
    url: str
    behaviour: Behaviour

    def url_for(self, path: Path) -> str:
        """Serve the bytes of ``path`` and return its URL."""
        self.behaviour.files[f"/{path.name}"] = Path(path).read_bytes()
        return f"{self.url}/{path.name}"


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """An HTTP server on 127.0.0.1 with Range support and scriptable failures (see Behaviour)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.behaviour)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Micro models are too small to gain from threads; one avoids oversubscription on shared CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class TinyBenchmark:
    """A synthesized benchmark in its official layout (``raw``) and its index (``manifest``)."""

    name: str
    raw: Path
    manifest: Path


@pytest.fixture(scope="session")
def tiny_benchmarks(tmp_path_factory) -> dict[str, TinyBenchmark]:
    """The three benchmarks of the built-in corpus at test size (48×64 frames), synthesized and indexed once."""
    from endofm.data.synthetic import SynthConfig, synthesize
    from endofm.tasks.benchmarks import get_benchmark

    cfg = SynthConfig(
        height=48,
        width=64,
        polypdiag_videos={"train": 8, "val": 4},
        polypdiag_frames=(16, 24),
        cvc_sequences={"train": 4, "test": 2},
        cvc_sequence_frames=(3, 5),
        kumc_videos={"train": 2, "val": 2, "test": 2},
        kumc_frames=(8, 12),
    )
    root = tmp_path_factory.mktemp("tiny_benchmarks")
    out = {}
    for name in ("polypdiag", "cvc12k", "kumc"):
        raw = synthesize(name, root / "raw" / name, cfg, progress=False)
        get_benchmark(name).index(raw, root / "index" / name)
        out[name] = TinyBenchmark(name, raw, root / "index" / name / "manifest.csv")
    return out
