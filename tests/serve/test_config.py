"""The service's settings: a TOML file, flags on top, and refusals that name the setting."""
import subprocess
import sys

import pytest

from ldseg_rt.cli import main
from ldseg_rt.cli.serve import settings
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.serve.config import ServeConfig, load_config, parse_address
from ldseg_rt.serve.oip.limits import DEFAULT_MAX_N, DEFAULT_MAX_REQUEST_BYTES


def _args(argv):
    """The parsed `serve` arguments without running anything."""
    import argparse

    from ldseg_rt.cli import serve
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_flags_override_the_file_and_lists_split(tmp_path):
    file = tmp_path / "serve.toml"
    file.write_text('model = "builtin:phantom"\nn = 4\nqueue = 3\nallow_ae = ["SCANNER", "PACS"]\n'
                    'dicom = "127.0.0.1:11112"\nspool = "s"\noutput_dir = "o"\n')
    config = settings(_args(["--config", str(file), "-n", "2", "--allow-ae", "CT1, MR2"]))
    assert (config.model, config.n, config.queue, config.allow_ae) == ("builtin:phantom", 2, 3, ["CT1", "MR2"])
    assert config.http_address == ("127.0.0.1", 8000) and config.dicom_address == ("127.0.0.1", 11112)
    assert settings(_args(["--config", str(file)])).allow_ae == ["SCANNER", "PACS"]


@pytest.mark.parametrize("text, message", [
    ('model = "m"\nport = 3\n', "unknown setting.*port"),
    ('model = "m"\nn = "4"\n', "n = '4' should be an integer"),
    ('model = "m"\nqueue = 0\n', "queue must be a positive integer"),
    ('model = "m"\nhttp = "off"\n', "both doors are off"),
    ('model = "m"\ndicom = "127.0.0.1:104"\nspool = "s"\noutput_dir = "o"\n', "--allow-ae"),
    ('model = "m"\ndicom = "127.0.0.1:104"\nallow_ae = ["A"]\nspool = "s"\n', "exactly one of --destination"),
    ('model = "m"\ndicom = "127.0.0.1:104"\nallow_ae = ["A"]\noutput_dir = "o"\n', "--spool"),
    ('model = "m"\ntls_cert = "c.pem"\n', "both --tls-cert and --tls-key"),
    ('model = "m"\nhttp = "8000"\n', "expected HOST:PORT"),
    ("model = \n", "not valid TOML"),
    ('model = "m"\nallow_ae = [1]\n', "allow_ae should be a list of AE titles"),
])
def test_bad_settings_are_refused_by_name(tmp_path, text, message):
    file = tmp_path / "serve.toml"
    file.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message):
        settings(_args(["--config", str(file)]))


def test_addresses():
    assert parse_address("[::1]:9000", "--http") == ("::1", 9000)
    assert parse_address("localhost:0", "--http") == ("localhost", 0)
    for bad in ("127.0.0.1", "127.0.0.1:70000", ":80", "host:port"):
        with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
            parse_address(bad, "--http")


def test_defaults_are_safe():
    config = ServeConfig(model="builtin:phantom").check()
    assert config.http_address == ("127.0.0.1", 8000) and config.dicom_address is None
    assert config.token() is None


def test_the_http_limits_are_the_endpoints_own():
    """Said once, by the endpoint; and the settings read them without loading the web stack
    (every command of the command line imports the settings)."""
    config = ServeConfig()
    assert config.max_n == DEFAULT_MAX_N and int(config.max_request_mb * 2 ** 20) == DEFAULT_MAX_REQUEST_BYTES
    probe = ("import sys, ldseg_rt.serve.config\n"
             "print([m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')])")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_token_file(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    assert ServeConfig(model="m", token_file=str(tmp_path / "token")).token() == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        ServeConfig(model="m", token_file=str(tmp_path / "empty")).token()


def test_cli_reports_a_bad_setting_in_one_line(tmp_path, capsys):
    file = tmp_path / "serve.toml"
    file.write_text('model = "builtin:phantom"\nqueue = -1\n')
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--config", str(file)])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == "error: queue must be a positive integer, got -1"


def test_load_config_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.toml")
