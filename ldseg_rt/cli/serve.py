"""`python -m ldseg_rt serve -m MODEL`: one process that loads the model once and serves it
through an Open Inference Protocol HTTP endpoint (tritonclient works unchanged) and, with
--dicom, a DICOM node that segments the series it receives and sends back a DICOM
Segmentation and an uncertainty Parametric Map. Runs until SIGTERM or Ctrl-C, then finishes
what it accepted."""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading

from ..options import NodeOptions
from ..serve.config import ServeConfig, load_config, split_list
from .options import add_engine_arguments, add_sample_arguments, default


def settings(args) -> ServeConfig:
    """The config file's settings, with the flags given on the command line on top."""
    config = load_config(args.config) if args.config else ServeConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)
             if getattr(args, f.name, None) is not None}
    if "allow_ae" in given:
        given["allow_ae"] = split_list(given["allow_ae"])
    return dataclasses.replace(config, **given).check()


def run(args) -> None:
    from ..serve.service import Service

    config = settings(args)
    for handler in logging.getLogger().handlers:  # a service's log lines need their time and source
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for chatty in ("pynetdicom", "highdicom"):  # a line per DIMSE message or copied module: the node logs its own
        logging.getLogger(chatty).setLevel(logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service = Service(config).start()
    try:
        stop.wait()
    finally:
        service.stop()


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve a model over HTTP (Open Inference Protocol) and as a DICOM node",
                           description=__doc__.split("\n\n")[0])
    serve.add_argument("--config", help="TOML file of settings, keys named as the flags (allow_ae = [...])")
    serve.add_argument("-m", "--model", help="bundle (NAME.ldseg), checkpoint or builtin:NAME; its name is the "
                                             "model name in the HTTP paths (builtin:phantom serves as phantom)")
    add_engine_arguments(serve)
    add_sample_arguments(serve, what="image or slice, unless a request says otherwise")
    serve.add_argument("--seed", type=int, help="seed of every DICOM series (default: derived from its UID)")
    serve.add_argument("--http", help="HOST:PORT of the HTTP endpoint (default 127.0.0.1:8000; off: none)")
    serve.add_argument("--dicom", help="HOST:PORT of the DICOM node (default: no node)")
    serve.add_argument("--ae-title", dest="ae_title",
                       help=f"the node's AE title (default {default(NodeOptions, 'ae_title')})")
    serve.add_argument("--allow-ae", dest="allow_ae", help="calling AE titles accepted, comma-separated")
    serve.add_argument("--destination", help="where results are sent by C-STORE: AE@HOST:PORT")
    serve.add_argument("--output-dir", dest="output_dir", help="write results to DIR/<SeriesInstanceUID>/ instead")
    serve.add_argument("--spool", help="folder where received instances wait (survives restarts)")
    serve.add_argument("--select", help="series rule: modality=MR,description=REGEX,largest (others are skipped)")
    add_node_arguments(serve)
    serve.add_argument("--queue", type=int, help=f"jobs that may wait for the model; more are refused "
                                                 f"(default {default(ServeConfig, 'queue')})")
    serve.add_argument("--token-file", dest="token_file", help="file holding the bearer token HTTP clients must send")
    serve.add_argument("--tls-cert", dest="tls_cert", help="TLS certificate (PEM) for HTTPS")
    serve.add_argument("--tls-key", dest="tls_key", help="its private key (PEM)")
    serve.add_argument("--max-request-mb", dest="max_request_mb", type=float,
                       help=f"largest HTTP request body in MiB (default {default(ServeConfig, 'max_request_mb')})")
    serve.add_argument("--max-n", dest="max_n", type=int,
                       help=f"most samples one HTTP request may ask for (default {default(ServeConfig, 'max_n')})")
    serve.set_defaults(run=run)


def add_node_arguments(serve) -> None:
    """How the DICOM node meets the network; the defaults are NodeOptions'."""
    def number(flag, kind, text):
        name = flag[2:].replace("-", "_")
        serve.add_argument(flag, dest=name, type=kind, help=f"{text} (default {default(NodeOptions, name):g})")

    number("--quiet", float, "seconds without instances after which a series whose associations were all released "
                             "is complete")
    number("--incomplete-after", float, "seconds a series left incomplete by an aborted, timed-out or refused "
                                        "association waits for the rest before it is failed")
    number("--idle-timeout", float, "seconds of silence after which an association is released")
    number("--max-associations", int, "open associations at once; more are rejected")
    number("--send-retries", int, "failed deliveries retried that often, then kept under SPOOL/undelivered/")
    number("--send-backoff", float, "seconds before the first retry of a delivery, doubling (capped at 15 min)")
    serve.add_argument("--keep-received", dest="keep_received", action="store_true", default=None,
                       help="keep a done series' received instances (under SPOOL/received/)")
