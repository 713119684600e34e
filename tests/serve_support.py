"""Run the REAL ``xraytriage serve`` as a subprocess on a free loopback port, for API and browser tests.

with running_server(tmp_path) as server:           # bundled default model, temp data folder
    httpx.get(server.url + "/healthz")
    server.kill()                                  # SIGKILL, for crash/recovery tests
log_text = server.log()

The server's output goes to a file (never a pipe that could fill and block it); ``log()``
reads it at any time, and a server that dies while starting raises with its log in the message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from waiting import wait_until

START_TIMEOUT_S = float(os.environ.get("XRAYTRIAGE_TEST_START_TIMEOUT", "90"))  # longer on a busy machine
STOP_TIMEOUT_S = 20.0


_HANDED_OUT: set[int] = set()
PORT_IN_USE = "already in use"
"""What the server, Orthanc and PostgreSQL logs say when another process took the port first."""
PORT_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it), never one this process handed out
    before (two calls in a row could otherwise get the same released port).

    It is released before the server binds it, so another process can still take it in between:
    the starters (``start_server``, ``pacs.orthanc``, ``postgres_server``) retry on a new port when
    the log says ``already in use``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port held bound (not listening) for the ``with`` block: a connection there is
    refused, and no other process can start listening on it meanwhile (unlike a released
    ``free_port()``), so "nobody answers there" holds for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    token: str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        """The bearer header when the server has a token (else empty)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client bound to this server (and its token)."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, headers=self.headers, **kwargs)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> str:
        """SIGKILL: no shutdown hooks run (a crash). Returns the log so far."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
        return self.log()

    def stop(self) -> str:
        """SIGTERM (uvicorn shuts down cleanly, workers stop), SIGKILL if it hangs. Returns the log."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        return self.log()


def _wait_until_healthy(server: Server, timeout: float) -> None:
    def healthy() -> bool:
        if not server.running:
            raise RuntimeError(
                f"xraytriage serve exited with code {server.process.returncode} while starting:\n"
                + server.log()[-4000:]
            )
        try:
            return httpx.get(server.url + "/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout, interval=0.1, what="/healthz")
    except AssertionError:
        server.stop()
        raise RuntimeError(
            f"xraytriage serve did not answer /healthz within {timeout:.0f} s:\n" + server.log()[-4000:]
        ) from None


def start_server(
    tmp_path: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    token: str | None = None,
    data_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    module: str = "xraytriage.cli.main",
) -> Server:
    """Start ``xraytriage serve`` and wait for /healthz. The caller stops it (or use running_server).

    ``module`` is what ``python -m`` runs (a test launcher in tests/ that wraps the CLI)."""
    tmp_path = Path(tmp_path)
    data_dir = Path(data_dir) if data_dir is not None else tmp_path / "data"
    logs = tmp_path / "server-logs"
    logs.mkdir(parents=True, exist_ok=True)
    child_env = {
        **os.environ,
        "XRAYTRIAGE_CACHE": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    child_env.pop("XRAYTRIAGE_TOKEN", None)
    child_env.update(env or {})
    if module != "xraytriage.cli.main":
        tests = str(Path(__file__).resolve().parent)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, child_env.get("PYTHONPATH", "")) if p)
    token_args: list[str] = []
    if token is not None:
        token_file = tmp_path / "token.txt"
        token_file.write_text(token + "\n", encoding="utf-8")
        token_args = ["--token-file", str(token_file)]
    for attempt in range(PORT_ATTEMPTS):  # another process may take the free port before the server binds it
        port = free_port()
        log_path = logs / f"serve-{port}.log"
        args = [
            sys.executable,
            "-m",
            module,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *token_args,
            *extra_args,
        ]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
            )
        server = Server(f"http://127.0.0.1:{port}", process, data_dir, log_path, token, args)
        try:
            _wait_until_healthy(server, timeout)
            return server
        except RuntimeError:
            if attempt < PORT_ATTEMPTS - 1 and PORT_IN_USE in server.log().lower():
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def running_server(
    tmp_path: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    token: str | None = None,
    data_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[Server]:
    """The real server for the ``with`` block; stopped (SIGTERM, then SIGKILL) when it ends."""
    server = start_server(tmp_path, *extra_args, env=env, token=token, data_dir=data_dir, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """``waiting.wait_until`` with the interval these HTTP polls use (kept: many tests import it)."""
    return wait_until(predicate, timeout, interval=interval, what=what)


# --- the same app in this process: for API behaviour, where a real server process adds nothing ---


@dataclass
class InProcessServer:
    """``xraytriage serve``'s app (built from the same command-line arguments) run in this process
    by Starlette's TestClient: the service starts and stops with the app's lifespan, as under
    uvicorn; requests go through every middleware, no socket and no process start. The same
    ``url`` / ``data_dir`` / ``token`` / ``client()`` / ``log()`` as :class:`Server`."""

    app: object
    data_dir: Path
    log_path: Path
    token: str | None = None
    url: str = "http://127.0.0.1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @contextmanager
    def client(self, token: bool = True, **kwargs) -> Iterator[httpx.Client]:
        """A client of the running app (with the bearer token unless ``token=False``). Like httpx
        and a real server: redirects are not followed, a server error is an answer (500)."""
        from fastapi.testclient import TestClient

        kwargs.setdefault("follow_redirects", False)
        kwargs.pop("timeout", None)
        headers = {**(self.headers if token else {}), **kwargs.pop("headers", {})}
        http = TestClient(
            self.app, base_url=self.url, headers=headers, raise_server_exceptions=False, **kwargs
        )
        try:
            yield http  # not entered: the app's lifespan belongs to in_process_server
        finally:
            http.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@contextmanager
def in_process_server(
    tmp_path: Path, *extra_args: str, token: str | None = None, data_dir: Path | None = None
) -> Iterator[InProcessServer]:
    """The app of ``xraytriage serve --data-dir ... *extra_args`` for the ``with`` block, its
    service started (workers, recovery) and stopped at the end; its log lines (the ``xraytriage``
    loggers at INFO) go to a file, as a real server's output does."""
    import logging

    from fastapi.testclient import TestClient

    from xraytriage.cli.main import build_parser
    from xraytriage.cli.serve import build_config
    from xraytriage.serving import create_app

    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir is not None else tmp_path / "data"
    token_args: list[str] = []
    if token is not None:
        token_file = tmp_path / "token.txt"
        token_file.write_text(token + "\n", encoding="utf-8")
        token_args = ["--token-file", str(token_file)]
    args = build_parser().parse_args(
        ["serve", "--host", "127.0.0.1", "--data-dir", str(data_dir), *token_args, *extra_args]
    )
    log_path = tmp_path / "server.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("xraytriage")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    cache = os.environ.get("XRAYTRIAGE_CACHE")
    os.environ["XRAYTRIAGE_CACHE"] = str(tmp_path / "cache")
    try:
        app = create_app(build_config(args))
        url = f"http://127.0.0.1:{args.port}"  # the port a real server would have (Host checks see it)
        with TestClient(app, base_url=url):  # runs the lifespan: service start ... stop
            yield InProcessServer(app, data_dir, log_path, token, url)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
        if cache is None:
            os.environ.pop("XRAYTRIAGE_CACHE", None)
        else:
            os.environ["XRAYTRIAGE_CACHE"] = cache


def service_client(service):
    """An in-process TestClient on a ``TriageService`` the test built itself (no server, no port)."""
    from fastapi.testclient import TestClient

    from xraytriage.serving.app import create_app

    return TestClient(create_app(service.config, service), base_url="http://127.0.0.1")


def drain_worker(service, steps: int = 100) -> None:
    """Run the service's worker by hand until it has nothing left to do (``workers=0`` services)."""
    for _ in range(steps):
        if not service.workers.step():
            break
