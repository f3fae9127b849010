"""The doctor's inputs: each unusable one ends with one line on stderr and exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from devstack.cfn import REPO_ROOT, TEMPLATE_PATH
from devstack.motoserver import free_port
from spotline_ops import doctor


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("doctor: ")
    return lines[0]


def test_a_missing_template_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main([str(tmp_path / "nope.yaml")]) == 2
    assert one_error_line(capsys) == f"doctor: {tmp_path / 'nope.yaml'}: no such file"


def test_bad_yaml_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("Resources:\n  Queue: [unclosed\n")
    assert doctor.main([str(template)]) == 2
    line = one_error_line(capsys)
    assert "not valid YAML (line 3, column 1:" in line


def test_yaml_that_is_no_template_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("just: text\n")
    assert doctor.main([str(template)]) == 2
    assert "not a CloudFormation template (no Resources)" in one_error_line(capsys)


def test_a_directory_is_not_a_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main([str(tmp_path)]) == 2
    assert "a directory, not a template" in one_error_line(capsys)


def test_an_unknown_parameter_name_is_refused_with_the_closest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert doctor.main([str(TEMPLATE_PATH), "--parameter", "MaxReceiveCont=3"]) == 2
    assert one_error_line(capsys) == (
        "doctor: --parameter MaxReceiveCont: the template has no such parameter "
        "(did you mean MaxReceiveCount?)"
    )


def test_a_parameter_without_a_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main([str(TEMPLATE_PATH), "--parameter", "MaxReceiveCount"]) == 2
    assert "expected NAME=VALUE" in one_error_line(capsys)


def test_unreachable_aws_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries against a port nobody serves
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    endpoint = f"http://127.0.0.1:{free_port()}"
    argv = ["--stack-name", "spotline-dev", "--endpoint-url", endpoint]
    assert doctor.main(argv, session=session) == 2
    line = one_error_line(capsys)
    assert line.startswith("doctor: stack spotline-dev: cannot read it from AWS (")
    assert "EndpointConnectionError" in line


def test_a_stack_aws_does_not_know_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        assert doctor.main(["--stack-name", "no-such-stack"], session=session) == 2
    line = one_error_line(capsys)
    assert "cannot read it from AWS (ValidationError:" in line and "no-such-stack" in line


def test_the_command_line_prints_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "spotline_ops.doctor", str(tmp_path / "missing.yaml")],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": f"{REPO_ROOT / 'tools'}:{REPO_ROOT / 'functions'}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"doctor: {tmp_path / 'missing.yaml'}: no such file\n"
