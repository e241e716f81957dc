"""Process runners: uvicorn for the REST API, ``streamlit run`` for the web app."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from medclf.errors import MedclfError

__all__ = ["APP_SCRIPT", "BackgroundServer", "app_command", "app_env", "run_app", "run_server"]

APP_SCRIPT = Path(__file__).with_name("app.py")
"""The Streamlit script; the run folder reaches it through ``$MEDCLF_RUN_DIR``."""


def _uvicorn_config(predictor: Any, host: str, port: int, config: Any, log_level: str = "info") -> Any:
    import uvicorn

    from medclf.serve.api import create_app

    return uvicorn.Config(
        create_app(predictor, config),
        host=host,
        port=port,
        log_level=log_level,
        # the access log has method, path and status only: never a file name or any upload content
        access_log=True,
        timeout_keep_alive=5,
        limit_concurrency=64,
        h11_max_incomplete_event_size=64 * 1024,
    )


def run_server(predictor: Any, *, host: str = "127.0.0.1", port: int = 8000, config: Any = None) -> None:
    import uvicorn

    from medclf import DISCLAIMER

    print(f"medclf serve: http://{host}:{port}  (OpenAPI: /docs)  {DISCLAIMER}", file=sys.stderr)
    uvicorn.Server(_uvicorn_config(predictor, host, port, config)).run()


class BackgroundServer:
    """uvicorn in a thread on 127.0.0.1 (tests, benchmarks): ``with BackgroundServer(p) as url: ...``."""

    def __init__(self, predictor: Any, config: Any = None, port: int = 0, log_level: str = "warning") -> None:
        import socket

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
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise MedclfError("the web app needs streamlit: pip install 'medclf[app]'") from None
    print(f"medclf app: http://{host}:{port}", file=sys.stderr)
    return subprocess.call(app_command(run_dir, host=host, port=port), env=app_env(run_dir))
