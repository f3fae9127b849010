"""Each Lambda setting in template.yaml does what it says: held against the code that reads it.

- every variable a function's code reads at cold start is set for that function in the template
  (or is one Lambda itself sets), and every variable the template sets is read by someone;
- ``LogLevel`` reaches Lambda's log filter (``ApplicationLogLevel``) and Powertools Logger;
- AWS calls retry in standard mode with the ``FunctionAwsMaxAttempts`` budget;
- ``Tracing: Active`` comes with Powertools Tracer on every handler;
- every function writes to a log group of its own that the template declares, with a retention.
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import logging
import os
import sys
import tomllib
import uuid
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger
from moto import mock_aws

from dead_letter.callbacks import TEST_MODE_ENV
from devstack.cfn import REPO_ROOT, Stack, Unresolved, load_template, provision
from devstack.lambdas import FUNCTIONS_DIR, function_scope
from spotline.tracing import TRACED_MODULES

TEMPLATE = load_template()
FUNCTION_TYPE = "AWS::Serverless::Function"
FUNCTIONS = sorted(
    logical_id
    for logical_id, resource in TEMPLATE["Resources"].items()
    if resource["Type"] == FUNCTION_TYPE
)
GLOBALS = TEMPLATE["Globals"]["Function"]
# Lambda's ApplicationLogLevel values, and the Python level each one means to Powertools.
LAMBDA_LOG_LEVELS = {
    "TRACE": logging.NOTSET,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
}
# Read by the functions' code but set by Lambda itself, never by the template.
LAMBDA_RUNTIME_VARIABLES = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME"}
# Read by the functions' code and deliberately absent from the template: local overrides only.
LOCAL_ONLY_VARIABLES = {
    TEST_MODE_ENV: "callbacks to a 127.0.0.1 sink over http (tests, devstack)",
    "STANDBY_COOLDOWN_S": "the standby drill's cooldown in seconds instead of minutes",
    "ANALYZER_CATALOG_FILE": "another analyzer catalog than the bundled one (devstack, tests)",
}
# Set by the template and read when a boto3 client is made (lazily, on first use): their own test.
BOTOCORE_VARIABLES = {"AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"}


def function_properties(logical_id: str) -> dict[str, Any]:
    """A function's properties with Globals merged in, as SAM merges them (maps merge, the
    function's own keys win)."""

    def merge(outer: Any, inner: Any) -> Any:
        if isinstance(outer, dict) and isinstance(inner, dict):
            return {**outer, **{k: merge(outer.get(k), v) for k, v in inner.items()}}
        return inner

    return dict(merge(GLOBALS, TEMPLATE["Resources"][logical_id]["Properties"]))


def function_variables(logical_id: str) -> dict[str, Any]:
    return dict(function_properties(logical_id)["Environment"]["Variables"])


@pytest.fixture(scope="module")
def fleet_stack() -> Iterator[Stack]:
    """The whole template with the fleet (the spot events function's references resolve),
    its tiers and lane (their variables too), and every alert channel listed (each channel's
    secret variable is read only when it is)."""
    with mock_aws():
        yield provision(
            boto3.Session(region_name="us-east-1"),
            stack_name="settings",
            parameters={
                "DeployWorkers": "true",
                "WorkerTiers": "default,large",
                "OnDemandLane": "true",
                "SpotAlertChannels": "slack,discord,webhook",
                "AlarmChannels": "slack,discord,webhook",
                "DeadLetterAlertChannels": "slack,discord",
            },
        )


def resolved_environment(stack: Stack, logical_id: str) -> dict[str, str]:
    out = {}
    for name, value in function_variables(logical_id).items():
        try:
            out[name] = str(stack.resolve(value))
        except Unresolved:
            out[name] = f"unresolved-{name.lower()}"  # a resource devstack never creates
    return out


class RecordingEnviron(MutableMapping[str, str]):
    """os.environ that remembers each name read, and whether code under functions/ read it."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.read: set[str] = set()
        self.read_by_functions: set[str] = set()
        self.recording = False  # only while the module loads, not while its scope is undone

    def _caller_file(self) -> str:
        # Past this class and the mapping machinery (os and _collections_abc, frozen modules).
        frame = sys._getframe(2)
        while frame is not None and (
            frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen")
        ):
            frame = frame.f_back  # type: ignore[assignment]
        return frame.f_code.co_filename if frame is not None else ""

    def __getitem__(self, key: str) -> str:
        if self.recording:
            self.read.add(key)
            if Path(self._caller_file()).is_relative_to(FUNCTIONS_DIR):
                self.read_by_functions.add(key)
        return self.real[key]

    def __contains__(self, key: object) -> bool:
        if self.recording and isinstance(key, str):
            self.read.add(key)
        return key in self.real

    def __setitem__(self, key: str, value: str) -> None:
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        del self.real[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)

    def copy(self) -> dict[str, str]:
        return dict(self.real)


def handler_module(logical_id: str) -> str:
    return str(TEMPLATE["Resources"][logical_id]["Properties"]["Handler"]).rsplit(".", 1)[0]


def cold_start_reads(
    stack: Stack, logical_id: str, monkeypatch: pytest.MonkeyPatch
) -> RecordingEnviron:
    """Import the function's handler module afresh (its cold start) in its template
    environment, recording every variable read meanwhile."""
    if str(FUNCTIONS_DIR) not in sys.path:
        monkeypatch.syspath_prepend(str(FUNCTIONS_DIR))
    module = handler_module(logical_id)
    recorder = RecordingEnviron(os.environ)
    env = resolved_environment(stack, logical_id)
    if module not in sys.modules:
        # Load it once unrecorded: the libraries' own first imports read the environment
        # wholesale, and only the module's cold start is what the template feeds.
        with function_scope(env):
            importlib.import_module(module)
    # The local-only switches stay off, as in a deployed function.
    for name in LOCAL_ONLY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with monkeypatch.context() as patch, function_scope(env):
        patch.setattr(os, "environ", recorder)
        recorder.recording = True
        try:
            importlib.reload(sys.modules[module])
        finally:
            recorder.recording = False
    return recorder


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_variable_a_function_reads_is_set_for_it_and_none_is_set_in_vain(
    fleet_stack: Stack, logical_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = set(function_variables(logical_id))
    reads = cold_start_reads(fleet_stack, logical_id, monkeypatch)

    unset = (
        reads.read_by_functions - declared - LAMBDA_RUNTIME_VARIABLES - set(LOCAL_ONLY_VARIABLES)
    )
    assert not unset, f"{logical_id} reads {sorted(unset)}, which the template never sets for it"
    unread = declared - reads.read - BOTOCORE_VARIABLES
    assert not unread, f"the template sets {sorted(unread)} for {logical_id}, which nothing reads"
    assert not set(LOCAL_ONLY_VARIABLES) & declared, "a local-only switch is set in the template"


def test_log_level_reaches_lambdas_log_filter_and_powertools() -> None:
    assert GLOBALS["LoggingConfig"]["LogFormat"] == "JSON"
    assert GLOBALS["LoggingConfig"]["ApplicationLogLevel"] == {"Ref": "LogLevel"}
    assert GLOBALS["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    for logical_id in FUNCTIONS:
        logging_config = function_properties(logical_id)["LoggingConfig"]
        assert logging_config["ApplicationLogLevel"] == {"Ref": "LogLevel"}, logical_id
        assert (
            "POWERTOOLS_LOG_LEVEL"
            not in (TEMPLATE["Resources"][logical_id]["Properties"]["Environment"]["Variables"])
        ), f"{logical_id} overrides the stack's LogLevel"
    allowed = TEMPLATE["Parameters"]["LogLevel"]["AllowedValues"]
    assert set(allowed) <= set(LAMBDA_LOG_LEVELS), "LogLevel offers a level Lambda does not know"
    assert TEMPLATE["Parameters"]["LogLevel"]["Default"] in allowed


@pytest.mark.parametrize("level", TEMPLATE["Parameters"]["LogLevel"]["AllowedValues"])
def test_powertools_logger_runs_at_the_level_lambda_is_given(
    level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Lambda does with ApplicationLogLevel (AWS_LAMBDA_LOG_LEVEL) and the template with
    # POWERTOOLS_LOG_LEVEL; Powertools warns when the two disagree, so no warning is the check.
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", level)
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", level)
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger = Logger(
            service=f"level-{uuid.uuid4().hex}", logger_handler=logging.StreamHandler(stream)
        )
    assert logger.log_level == LAMBDA_LOG_LEVELS[level]
    logger.debug("a debug line")
    logger.error("an error line")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == (
        ["a debug line", "an error line"] if level == "DEBUG" else ["an error line"]
    )


def test_samconfig_levels_are_ones_the_template_accepts() -> None:
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    allowed = TEMPLATE["Parameters"]["LogLevel"]["AllowedValues"]
    environments = [env for env in config.values() if isinstance(env, dict)]
    levels = [
        part.split("=", 1)[1]
        for env in environments
        for part in env.get("deploy", {})
        .get("parameters", {})
        .get("parameter_overrides", "")
        .split()
        if part.startswith("LogLevel=")
    ]
    assert levels and all(level in allowed for level in levels), levels


def test_aws_calls_retry_in_standard_mode_with_the_stacks_budget(
    fleet_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = GLOBALS["Environment"]["Variables"]
    assert variables["AWS_RETRY_MODE"] == "standard"
    assert variables["AWS_MAX_ATTEMPTS"] == {"Ref": "FunctionAwsMaxAttempts"}
    budget = fleet_stack.parameters["FunctionAwsMaxAttempts"]
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no developer's profile settings
    for logical_id in FUNCTIONS:
        with function_scope(resolved_environment(fleet_stack, logical_id)):
            # How the functions make their clients: boto3.client(name), nothing more.
            retries = boto3.Session().client("sqs", region_name="us-east-1").meta.config.retries
        assert retries == {"mode": "standard", "total_max_attempts": budget}, logical_id


def _decorators(logical_id: str) -> list[str]:
    module = handler_module(logical_id)
    path = FUNCTIONS_DIR / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = str(TEMPLATE["Resources"][logical_id]["Properties"]["Handler"]).rsplit(".", 1)[1]
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return [ast.unparse(d) for d in function.decorator_list]


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_traced_function_runs_under_powertools_tracer(logical_id: str) -> None:
    assert function_properties(logical_id)["Tracing"] == "Active"
    decorators = _decorators(logical_id)
    assert "tracer.capture_lambda_handler(capture_response=False)" in decorators, decorators
    # The Lambda context first (outermost), so the trace's own log lines carry it.
    assert decorators[0].startswith("logger.inject_lambda_context"), decorators
    assert TRACED_MODULES == ("botocore",)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_function_writes_to_a_log_group_of_its_own_with_a_retention(
    logical_id: str,
) -> None:
    reference = function_properties(logical_id)["LoggingConfig"]["LogGroup"]
    assert set(reference) == {"Ref"}, reference
    group = TEMPLATE["Resources"][reference["Ref"]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "FunctionLogRetentionDays"}
    assert group.get("Condition") == TEMPLATE["Resources"][logical_id].get("Condition")
    others = [
        function_properties(other)["LoggingConfig"]["LogGroup"]
        for other in FUNCTIONS
        if other != logical_id
    ]
    assert reference not in others, "two functions share a log group"
