"""One process, one loaded model, two doors: the Open Inference Protocol endpoint and the
DICOM node, both in front of one bounded work queue.

Shutdown (SIGTERM) runs in this order, so that nothing admitted is dropped: the HTTP server
stops listening and answers the requests in flight (their jobs still run); the DICOM node stops
listening, finishes the series already submitted and delivers what is ready; the queue then
drains and stops. Series still being received stay in the spool for the next start.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import Segmenter
from .config import ServeConfig
from .prometheus import Metrics
from .work import WorkQueue

log = logging.getLogger(__name__)


class Service:
    """`Service(config).start()`, then `stop()`; `http_port` and `dicom_port` once started."""

    def __init__(self, config: ServeConfig):
        self.config = config.check()
        token = config.token()
        start = time.perf_counter()
        self.segmenter = Segmenter(config.model, options=config.engine_options())
        log.info("model %s (%s, sha256 %s) on %s %s, loaded in %.1f s", self.segmenter.model_name, config.model,
                 (self.segmenter.model_sha256 or "-")[:12], self.segmenter.backend_name, self.segmenter.precision,
                 time.perf_counter() - start)
        self.metrics = Metrics()
        self.work = WorkQueue(config.queue, on_depth=self.metrics.queue_depth.set)
        self.http = self.dicom = None
        self.http_port = self.dicom_port = None
        if config.http_address is not None:
            from .oip.routes import create_app
            from .oip.server import HttpServer
            app = create_app(self.segmenter, self.work, self.metrics, options=config.segment_options(), token=token,
                             max_request_bytes=int(config.max_request_mb * 2 ** 20), max_n=config.max_n)
            self.http = HttpServer(app, *config.http_address, certfile=config.tls_cert, keyfile=config.tls_key)
        if config.dicom_address is not None:
            from .delivery import Destination
            from .dicom_node import DicomNode
            from .spool import Spool
            self.dicom = DicomNode(
                self.segmenter, self.work, self.metrics, Spool(Path(config.spool)), options=config.segment_options(),
                node=config.node_options(),
                destination=Destination.parse(config.destination) if config.destination else None,
                output_dir=Path(config.output_dir) if config.output_dir else None)

    def start(self) -> "Service":
        try:
            if self.dicom is not None:
                self.dicom_port = self.dicom.start(*self.config.dicom_address)
            if self.http is not None:
                self.http_port = self.http.start()
        except BaseException:
            self.stop()
            raise
        log.info("serving %s: http %s, dicom %s, queue %d", self.segmenter.model_name,
                 self.http.url if self.http_port else "off",
                 f"{self.dicom.node.ae_title}@{self.config.dicom_address[0]}:{self.dicom_port}" if self.dicom_port
                 else "off", self.config.queue)
        return self

    def stop(self) -> None:
        """Stop both doors, finish what was admitted, stop the worker."""
        log.info("shutting down: %d job(s) waiting", self.work.depth)
        if self.http is not None:
            self.http.stop()
        if self.dicom is not None:
            self.dicom.stop()
        self.work.close()
        log.info("stopped")
