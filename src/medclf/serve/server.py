"""Process runners: uvicorn for the REST API, ``streamlit run`` for the web app."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from medclf._lazy import require_extra
from medclf.errors import MedclfError

__all__ = ["APP_SCRIPT", "BackgroundServer", "app_command", "app_env", "run_app", "run_server"]

APP_SCRIPT = Path(__file__).with_name("app.py")
"""The Streamlit script; the run folder reaches it through ``$MEDCLF_RUN_DIR``."""


def _guarded_h11(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for every request's headers and a cap on open sockets.

    uvicorn times a connection out only between requests (``timeout_keep_alive``, armed after a response) and
    cancels that timer on any byte received, so a client that connects and sends nothing, or sends its headers
    a byte at a time, keeps its socket for ever (uvicorn issue #157); ASGI middleware cannot help, as it runs
    only once the headers are complete. Here a connection waiting for a request must deliver the request line
    and headers within ``header_timeout_s``, and past ``max_connections`` open sockets the one that has waited
    longest without a request is closed, so idle sockets can neither pile up nor lock requests out.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    text = f"the request headers took longer than {header_timeout_s:g} s to arrive\n".encode()
    timeout_reply = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        + f"content-length: {len(text)}\r\n\r\n".encode()
        + text
    )

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_since: float | None = None  # when it began waiting for a request; None while one runs
        _partial = False  # bytes of a request arrived while waiting

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            self._wait_for_request()
            if len(self.connections) > max_connections:
                waiting = [
                    c
                    for c in self.connections
                    if isinstance(c, GuardedH11Protocol)
                    and c._waiting_since is not None
                    and not c.transport.is_closing()
                ]
                min(waiting, key=lambda c: c._waiting_since or 0.0).transport.close()

        def data_received(self, data: bytes) -> None:
            if self._waiting_since is not None:
                self._partial = True
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:  # the headers are complete
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # a pipelined request already read leaves a running cycle: nothing to wait for then
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._wait_for_request()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _wait_for_request(self) -> None:
            self._stop_waiting()
            self._waiting_since = time.monotonic()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._waiting_since, self._partial = None, None, False

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                if self._partial:  # the client started a request: say why it ends
                    self.transport.write(timeout_reply)
                self.transport.close()
            self._stop_waiting()

    return GuardedH11Protocol


def _uvicorn_config(predictor: Any, host: str, port: int, config: Any, log_level: str = "info") -> Any:
    import uvicorn

    from medclf.serve.api import ServerConfig, create_app

    cfg = config or ServerConfig()
    return uvicorn.Config(
        create_app(predictor, cfg),
        host=host,
        port=port,
        log_level=log_level,
        # the access log has method, path and status only: never a file name or any upload content
        access_log=True,
        http=_guarded_h11(cfg.header_timeout_s, cfg.max_connections),
        ws="none",  # the API has no WebSocket routes
        timeout_keep_alive=5,
        # no limit_concurrency: it counts idle sockets too, so idle clients would turn every request into a
        # 503; create_app admits requests by count instead (ServerConfig.max_requests)
        h11_max_incomplete_event_size=64 * 1024,
    )


def run_server(predictor: Any, *, host: str = "127.0.0.1", port: int = 8000, config: Any = None) -> None:
    require_extra("serve", "medclf serve")
    import uvicorn

    from medclf import DISCLAIMER

    print(f"medclf serve: http://{host}:{port}  (OpenAPI: /docs)  {DISCLAIMER}", file=sys.stderr)
    uvicorn.Server(_uvicorn_config(predictor, host, port, config)).run()


class BackgroundServer:
    """uvicorn in a thread on 127.0.0.1 (tests, benchmarks): ``with BackgroundServer(p) as url: ...``."""

    def __init__(self, predictor: Any, config: Any = None, port: int = 0, log_level: str = "warning") -> None:
        import socket

        require_extra("serve", "the REST server")
        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(_uvicorn_config(predictor, "127.0.0.1", port, config, log_level))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def app_command(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # uploads live in memory; keep them small and never persist anything
        "--server.maxUploadSize",
        "20",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--run-dir",
        str(Path(run_dir).resolve()),
    ]


def app_env(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDCLF_RUN_DIR"] = str(Path(run_dir).resolve())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    return env


def run_app(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8501) -> int:
    if not (Path(run_dir) / "run.json").is_file():
        raise MedclfError(f"{run_dir} is not a run folder (no run.json); train one with `medclf train`")
    require_extra("app", "medclf app")
    print(f"medclf app: http://{host}:{port}", file=sys.stderr)
    proc = subprocess.Popen(app_command(run_dir, host=host, port=port), env=app_env(run_dir))

    # `kill <pid of medclf app>` would otherwise end this process and leave Streamlit serving, orphaned
    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {s: signal.signal(s, forward) for s in forwarded} if main_thread else {}
    try:
        return proc.wait()  # Streamlit stops on the forwarded signal; wait() resumes after each handler
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # this process is failing for another reason: do not leave the app behind
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
