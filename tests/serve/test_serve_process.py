"""`python -m ldseg_rt serve` as a real process, driven from outside as a hospital would: the
Open Inference Protocol client (tritonclient), a pynetdicom scanner and destination, a flood
past the queue limit, SIGTERM with work in flight, and kill -9 with series in flight."""
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage, ParametricMapStorage, SegmentationStorage
from pynetdicom import AE, evt

from dicom_factory import write_series
from ldseg_rt import Segmenter

START_TIMEOUT = 120  # seconds for a server to load its model and listen (2 shared cores)
SCANNER, NODE, DESTINATION = "SCANNER", "LDSEG_RT", "PACS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The service in a child process, its log in a file (a full pipe would block it)."""

    def __init__(self, tmp_path: Path, *args: str, name: str = "server"):
        self.log_path = tmp_path / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "ldseg_rt", "serve", *args],
                                            stdout=log, stderr=subprocess.STDOUT)
        self.wait_for_log("serving ")

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.process.poll() is None, f"the server exited ({self.process.returncode}):\n{self.log}"
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the log after {timeout} s:\n{self.log}")
            time.sleep(0.1)

    def terminate(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(*args, name="server"):
        started.append(Server(tmp_path, *args, name=name))
        return started[-1]

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("builtin:phantom")


def phantom_image(rng, shape=(48, 56)) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (min(shape) / 3) ** 2
    return (disc * 200 + rng.normal(0, 10, shape)).astype(np.float32)


def raw_infer(port: int, image: np.ndarray, parameters: dict, headers=None, timeout=120):
    """A JSON infer request with the standard library alone: (status, headers, body)."""
    body = json.dumps({"inputs": [{"name": "IMAGE", "shape": list(image.shape), "datatype": "FP32",
                                   "data": image.ravel().tolist()}], "parameters": parameters}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v2/models/phantom/infer", body,
                           {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class Destination:
    """A pynetdicom storage SCP collecting what the node sends, keyed by the source series."""

    def __init__(self):
        self.received: dict[str, list] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title=DESTINATION)
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(ParametricMapStorage)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        source = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        with self.lock:
            self.received.setdefault(source, []).append(ds)
        return 0x0000

    def wait_for(self, series_uids, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(len(self.received.get(uid, [])) >= count for uid in series_uids):
            if time.monotonic() > deadline:
                pytest.fail(f"received only {self.counts()}")
            time.sleep(0.1)

    def counts(self) -> dict:
        with self.lock:
            return {uid: sorted(ds.SOPClassUID.name for ds in objects) for uid, objects in self.received.items()}

    def stop(self):
        self.server.shutdown()


def write_scan(folder: Path, seed: int) -> tuple[str, list[Path]]:
    rng = np.random.default_rng(seed)
    stored = np.stack([phantom_image(rng, (40, 44)) for _ in range(5)]).astype(np.int16)
    files = write_series(folder, stored, seed=seed)
    return dcmread(files[0]).SeriesInstanceUID, files


def send_series(port: int, files, calling=SCANNER) -> list[int]:
    """The scanner: one association, every file by C-STORE; the statuses, or [] if refused."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE)
    if not assoc.is_established:
        return []
    try:
        return [assoc.send_c_store(dcmread(f)).Status for f in files]
    finally:
        assoc.release()


def test_secure_server_as_the_readme_starts_it(servers, segmenter, tmp_path):
    """Token, TLS, a request size limit and the DICOM node's caller check, set in a config file."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    (tmp_path / "token").write_text("let-me-in\n")
    http_port, dicom_port = free_port(), free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f'model = "builtin:phantom"\nhttp = "127.0.0.1:{http_port}"\ndicom = "127.0.0.1:{dicom_port}"\n'
                      f'allow_ae = ["{SCANNER}"]\noutput_dir = "{tmp_path / "out"}"\nspool = "{tmp_path / "spool"}"\n'
                      f'token_file = "{tmp_path / "token"}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                      f'max_request_mb = 0.25\nn = 2\n')
    servers("--config", str(config))

    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException
    client = triton.InferenceServerClient(f"127.0.0.1:{http_port}", ssl=True, ssl_options={"ca_certs": str(cert)})
    image = phantom_image(np.random.default_rng(1))
    request = triton.InferInput("IMAGE", list(image.shape), "FP32")
    request.set_data_from_numpy(image)
    authorised = {"Authorization": "Bearer let-me-in"}
    with pytest.raises(InferenceServerException) as refused:
        client.infer("phantom", [request], parameters={"seed": 5, "steps": 3})
    assert refused.value.status() == "401"
    answer = client.infer("phantom", [request], parameters={"seed": 5, "steps": 3}, headers=authorised)
    expected = segmenter.sample(image, n=2, steps=3, seed=5)
    np.testing.assert_array_equal(answer.as_numpy("MASK"), expected.mask)
    np.testing.assert_allclose(answer.as_numpy("PROBS"), expected.probs, atol=1e-6)
    np.testing.assert_allclose(answer.as_numpy("UNCERTAINTY"), expected.uncertainty, atol=1e-6)

    big = np.zeros((300, 300), np.float32)  # 360 kB > 0.25 MB
    request = triton.InferInput("IMAGE", list(big.shape), "FP32")
    request.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as too_large:
        client.infer("phantom", [request], headers=authorised)
    assert too_large.value.status() == "413"

    _, files = write_scan(tmp_path / "scan", seed=3)
    assert send_series(dicom_port, files[:1], calling="INTRUDER") == []  # rejected at association
    assert not list((tmp_path / "spool").rglob("*.dcm"))


def test_flood_past_the_queue_and_sigterm_with_work_in_flight(servers, tmp_path):
    port = free_port()
    server = servers("-m", "builtin:phantom", "--http", f"127.0.0.1:{port}", "-n", "8", "--queue", "2")
    image = phantom_image(np.random.default_rng(2), (96, 96))
    answers = [None] * 10

    def client(k):
        answers[k] = raw_infer(port, image, {"seed": k, "steps": 4})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 3, statuses
    for status, headers, body in answers:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and "queue is full" in json.loads(body)["error"]
        else:
            assert {o["name"] for o in json.loads(body)["outputs"]} == {"MASK", "PROBS", "UNCERTAINTY"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    metrics = connection.getresponse().read().decode()
    assert f'ldseg_requests_total{{door="http",outcome="ok"}} {statuses.count(200)}.0' in metrics
    assert f'ldseg_requests_total{{door="http",outcome="busy"}} {statuses.count(503)}.0' in metrics

    # SIGTERM while one request runs and one waits: both are answered, then the process exits cleanly.
    in_flight = [None, None]
    threads = [threading.Thread(target=lambda k=k: in_flight.__setitem__(k, raw_infer(port, image, {"seed": k})))
               for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert server.terminate() == 0, server.log
    for t in threads:
        t.join(60)
    assert [a[0] for a in in_flight] == [200, 200], in_flight
    assert "stopped" in server.log and "Traceback" not in server.log


def test_kill_9_with_series_in_flight_loses_nothing_and_sends_once(servers, tmp_path):
    destination = Destination()
    try:
        dicom_port = free_port()
        args = ("-m", "builtin:phantom", "--http", "off", "--dicom", f"127.0.0.1:{dicom_port}", "--allow-ae", SCANNER,
                "--destination", f"{DESTINATION}@127.0.0.1:{destination.port}", "--spool", str(tmp_path / "spool"),
                "--quiet", "0.5", "-n", "8", "--steps", "5")  # a series takes about 1 s: long enough to kill it
        first = servers(*args, name="first")
        scans = [write_scan(tmp_path / f"scan{k}", seed=10 + k) for k in range(3)]
        assert send_series(dicom_port, scans[0][1]) == [0] * 5
        destination.wait_for([scans[0][0]], 2, timeout=120)
        for uid, files in scans[1:]:
            assert send_series(dicom_port, files) == [0] * 5  # acknowledged: from now on it must not be lost
        first.wait_for_log(f"series {scans[1][0]}: complete, segmenting", timeout=60)
        first.process.kill()  # series 1 is being segmented, series 2 waits in the spool
        first.process.wait(30)

        second = servers(*args, name="second")
        destination.wait_for([uid for uid, _ in scans], 3, timeout=180)
        time.sleep(2)  # longer than a series takes: a duplicate would have arrived by now
        objects = ["Parametric Map Storage", "Segmentation Storage", "Segmentation Storage"]  # map, SEG, fractional SEG
        assert destination.counts() == {uid: objects for uid, _ in scans}
        assert second.terminate() == 0, second.log
        assert not list((tmp_path / "spool").rglob("*.dcm"))  # every series delivered and cleaned up
        assert len(list((tmp_path / "spool" / "done").glob("*.json"))) == 3
        assert f"job {scans[1][0]}: recovered from the spool" in second.log
    finally:
        destination.stop()


def test_a_second_node_on_the_same_spool_and_a_taken_port_are_refused_in_one_line(servers, tmp_path):
    http_port = free_port()
    node = ("--dicom", "127.0.0.1:0", "--allow-ae", SCANNER, "--output-dir", str(tmp_path / "out"),
            "--spool", str(tmp_path / "spool"))
    servers("-m", "builtin:phantom", "--http", f"127.0.0.1:{http_port}", *node)
    for args, message in [(("--http", "127.0.0.1:0", *node), "is in use by another DICOM node"),
                          (("--http", f"127.0.0.1:{http_port}"), f"cannot listen for HTTP on 127.0.0.1:{http_port}")]:
        done = subprocess.run([sys.executable, "-m", "ldseg_rt", "serve", "-m", "builtin:phantom", *args],
                              capture_output=True, text=True, timeout=START_TIMEOUT)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and "Traceback" not in done.stderr
