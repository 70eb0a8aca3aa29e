"""Runs an ASGI app with uvicorn on a thread of its own, on a socket bound before start so
that the port is known (port 0 picks a free one) and a busy port fails at once."""
from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from ...errors import InvalidArgumentError

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 30.0  # seconds for uvicorn to start serving on a bound socket


class HttpServer:
    """start() binds and serves; stop() stops listening, lets requests in flight finish (at
    most `grace` seconds), and returns."""

    def __init__(self, app, host: str, port: int, certfile: str | None = None, keyfile: str | None = None,
                 grace: float = 600.0):
        self.host, self.requested_port = host, port
        self.tls = certfile is not None
        self._config = uvicorn.Config(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                                      log_config=None, access_log=False, lifespan="off",
                                      timeout_graceful_shutdown=int(grace), server_header=False)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> int:
        """Bind, serve on a thread, return the port once uvicorn accepts connections."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as e:
            sock.close()
            raise InvalidArgumentError(f"cannot listen for HTTP on {self.host}:{self.requested_port}: "
                                       f"{e.strerror or e}") from e
        self.port = sock.getsockname()[1]
        self._config.load()  # the TLS certificate is read here: a bad one fails in this thread
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="ldseg-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        log.info("HTTP: Open Inference Protocol on %s", self.url)
        return self.port

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
            self._thread = None
