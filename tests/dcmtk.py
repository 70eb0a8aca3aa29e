"""dcmtk's command line tools as the tests' independent DICOM peers and codecs: storescu and
echoscu play a modality, storescp a PACS, dcmcjpls / dcmcrle / dcmcjpeg compress files the way
scanners do. .ci/run installs dcmtk; tests that need it skip (needs_dcmtk) where it is absent."""
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (JPEG2000, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless, UID)
from pynetdicom import StoragePresentationContexts
from pynetdicom.sop_class import Verification

DCMTK = shutil.which("storescp") is not None
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk (storescp, storescu, ...) is not installed")

TIMEOUT = 30.0  # seconds any one dcmtk command may take on a loaded machine
HOST = "127.0.0.1"
UNCOMPRESSED = [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian]

# kind -> (dcmtk command that writes dst from src, the transfer syntax it writes)
COMPRESSORS = {
    "jpegls": (["dcmcjpls", "+el"], JPEGLSLossless),
    "rle": (["dcmcrle"], RLELossless),
    "jpeg-lossless": (["dcmcjpeg", "+e1"], JPEGLosslessSV1),  # Process 14, selection value 1
    "jpeg-lossless-p14": (["dcmcjpeg", "+el"], JPEGLossless),  # Process 14, selection value 6
}
# dcmtk 3.6.7 (Debian) has no JPEG 2000 encoder; pydicom encodes it with pylibjpeg-openjpeg.
KINDS = {**{kind: ts for kind, (_, ts) in COMPRESSORS.items()}, "j2k": JPEG2000Lossless}


def _run(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def compress(src: Path, dst: Path, kind: str) -> Path:
    """Writes src losslessly compressed as kind (a key of KINDS) to dst; returns dst."""
    if kind == "j2k":
        ds = pydicom.dcmread(src)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(dst, enforce_file_format=True)
        return dst
    command, _ = COMPRESSORS[kind]
    done = _run([*command, str(src), str(dst)])
    if done.returncode:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr}")
    return dst


def echoscu(port: int, called_ae: str, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess:
    """One C-ECHO to HOST:port; returncode 0 when the peer answered Success."""
    return _run(["echoscu", "-to", "10", "-aet", calling_ae, "-aec", called_ae, HOST, str(port)])


def _proposal(files) -> str:
    """A storescu profile ("Files") proposing, for each SOP class among files, one context per
    compressed transfer syntax its files have (that syntax alone) and one uncompressed context;
    see /etc/dcmtk/storescu.cfg."""
    syntaxes: dict[str, set[str]] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = ds.file_meta.TransferSyntaxUID
        syntaxes.setdefault(ds.SOPClassUID, set()).update([] if ts in UNCOMPRESSED else [ts])
    groups = {"Uncompressed": UNCOMPRESSED}
    contexts = []
    for sop_class, compressed in syntaxes.items():
        for ts in sorted(compressed):
            name = "TS" + ts.replace(".", "_")
            groups[name] = [ts]
            contexts.append(f"{sop_class}\\{name}")
        contexts.append(f"{sop_class}\\Uncompressed")
    lines = ["[[TransferSyntaxes]]"]
    for name, members in groups.items():
        lines += [f"[{name}]", *(f"TransferSyntax{n} = {ts}" for n, ts in enumerate(members, 1))]
    lines += ["[[PresentationContexts]]", "[Files]"]
    lines += [f"PresentationContext{n} = {cx}" for n, cx in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Files"]
    return "\n".join(lines) + "\n"


def storescu(port: int, files, called_ae: str, calling_ae: str = "STORESCU",
             extra_args=()) -> subprocess.CompletedProcess:
    """C-STOREs files to HOST:port in one association, each in its own transfer syntax.

    Left to itself, storescu proposes only uncompressed syntaxes (or one -x family for all files)
    and fails on a compressed file it cannot convert, so it is given a profile (-xf) proposing
    each compressed syntax of the files in a context of its own, beside an uncompressed one: a
    compressed file goes out as it is when the peer accepts its syntax. storescu stops at the
    first failed store; returncode is 0 only when every file was stored with status Success."""
    files = [str(f) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "storescu.cfg"
        config.write_text(_proposal(files))
        return _run(["storescu", "-xf", str(config), "Files", "-to", "10", "-aet", calling_ae, "-aec", called_ae,
                     *extra_args, HOST, str(port), *files])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited ({process.returncode}): {process.stderr.read()}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"storescp is not listening on port {port} after {timeout} s")


def _acceptance(sop_classes) -> str:
    """A dcmtk association negotiation profile ("Only") accepting just sop_classes (and
    Verification), each in any transfer syntax dcmtk knows; see /etc/dcmtk/storescp.cfg."""
    syntaxes = [JPEG2000, JPEG2000Lossless, JPEGExtended12Bit, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLossless,
                JPEGLSNearLossless, JPEGLSLossless, RLELossless, DeflatedExplicitVRLittleEndian, *UNCOMPRESSED]
    lines = ["[[TransferSyntaxes]]", "[Any]"]
    lines += [f"TransferSyntax{n} = {ts}" for n, ts in enumerate(syntaxes, 1)]
    lines += ["[[PresentationContexts]]", "[Only]"]
    lines += [f"PresentationContext{n} = {UID(sop)}\\Any" for n, sop in enumerate([Verification, *sop_classes], 1)]
    lines += ["[[Profiles]]", "[Only]", "PresentationContexts = Only"]
    return "\n".join(lines) + "\n"


@contextmanager
def storescp(folder: Path, ae_title: str = "STORESCP", sop_classes=None):
    """dcmtk's storescp on a free loopback port, writing what it receives into folder as
    received (+B: in the sender's transfer syntax, byte for byte). It accepts sop_classes (by
    default the SOP classes of pynetdicom's StoragePresentationContexts), and Verification, in
    every transfer syntax dcmtk knows. Yields (port, folder) once it listens; it is killed on
    exit, whatever happened."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if sop_classes is None:
        sop_classes = [cx.abstract_syntax for cx in StoragePresentationContexts]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "storescp.cfg"
        config.write_text(_acceptance(sop_classes))
        port = free_port()
        process = subprocess.Popen(["storescp", "-aet", ae_title, "-xf", str(config), "Only", "+B",
                                    "-od", str(folder), "-ta", "10", "-ts", "10", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_listening(port, process)
            yield port, folder
        finally:
            process.kill()
            process.wait(timeout=TIMEOUT)
            process.stderr.close()
