"""The README's walk "from zero to your model on spot", held to the project: the outputs,
parameters and make targets it cites exist, and its signed requests (steps 8 and 9) run as
written, with a fake aws, against a local API that checks each SigV4 signature the way AWS
computes it (botocore's signer)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from devstack.cfn import REPO_ROOT, load_template
from tests.unit.cli_fakes import FakeTools

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
WALK = README.split("## Bring your own analyzer: from zero to your model on spot\n", 1)[1].split(
    "\n## ", 1
)[0]
TEMPLATE = load_template()
KEY_ID, SECRET, TOKEN = (
    "AKIDEXAMPLE",
    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "IQoJb3JpZ2luX2Vj",
)
RESULT_URI = "s3://spotline-dev-databucket-1a2b/results/7c9e/result-5f.json"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def step(number: int) -> str:
    """The first bash block of the walk's step ``number``."""
    text = WALK.split(f"**{number}. ", 1)[1]
    return text.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_walk_cites_only_outputs_the_template_has() -> None:
    cited = set(re.findall(r"OutputKey=='(\w+)'", WALK))
    cited |= set(re.findall(r"output\s+`(\w+)`", WALK))
    script = (REPO_ROOT / "tools" / "worker_image.sh").read_text(encoding="utf-8")
    cited |= set(re.findall(r"OutputKey=='(\w+)'", script))
    assert {"ApiUrl", "WorkerRepositoryUri", "WorkerImageUri", "DataBucketName"} <= cited
    assert cited <= set(TEMPLATE["Outputs"])


def test_the_walk_deploys_with_parameters_the_template_has() -> None:
    overrides = re.findall(r"--parameter-overrides ((?:[^\n]|\\\n)+)", WALK)
    assert overrides
    names = {pair.split("=", 1)[0] for line in overrides for pair in line.split() if "=" in pair}
    assert {"DeployWorkers", "WorkerImageTag"} <= names
    assert names <= set(TEMPLATE["Parameters"])
    cited = set(re.findall(r"`(Worker\w+)`", WALK)) - set(TEMPLATE["Outputs"])
    assert cited <= set(TEMPLATE["Parameters"]) | {"WorkerRepository"}


def test_the_walks_make_targets_exist() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.MULTILINE))
    used = set(re.findall(r"\bmake ([a-z][\w-]*)", WALK))
    assert {"image", "push", "build", "doctor"} <= used <= targets


@dataclass
class SignedApi:
    """The jobs API as far as a signature goes: every request must carry a valid SigV4
    signature for execute-api; POST /jobs queues, GET /jobs/{id} has succeeded."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        valid, scope = _verify(handler.command, handler.path, headers, body)
        self.requests.append(
            {"method": handler.command, "path": handler.path, "headers": headers, "body": body}
        )
        if not valid:
            status, answer = 403, {"message": f"signature does not match ({scope})"}
        elif handler.command == "POST":
            status, answer = 202, {"job_id": "7c9e", "status": "QUEUED"}
        else:
            status, answer = (
                200,
                {"job_id": "7c9e", "status": "SUCCEEDED", "result_uri": RESULT_URI},
            )
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _verify(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
    found = AUTHORIZATION.fullmatch(headers.get("authorization", ""))
    if not found:
        return False, "no SigV4 authorization"
    scope = f"{found['region']}/{found['service']}"
    signed = found["signed"].split(";")
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{path}",
        data=body,
        headers={name: headers[name] for name in signed},
    )
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(
        Credentials(found["key"], SECRET, headers.get("x-amz-security-token")),
        found["service"],
        found["region"],
    )
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    return expected == found["signature"] and found["key"] == KEY_ID, scope


@pytest.fixture
def api() -> Iterator[SignedApi]:
    state = SignedApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.handle(self)

        def do_GET(self) -> None:
            state.handle(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("session_token", [True, False], ids=["role", "user-keys"])
def test_the_signed_submit_status_and_result_commands_run_as_written(
    api: SignedApi, tmp_path: Path, session_token: bool
) -> None:
    aws = FakeTools(tmp_path, names=("aws",))
    aws.answer("aws", "cloudformation", "describe-stacks", stdout=api.url + "\n")
    credentials = f"export AWS_ACCESS_KEY_ID={KEY_ID}\nexport AWS_SECRET_ACCESS_KEY={SECRET}\n"
    if session_token:
        credentials += f"export AWS_SESSION_TOKEN={TOKEN}\n"
    aws.answer("aws", "configure", "export-credentials", stdout=credentials)
    aws.answer("aws", "s3", "cp", stdout='{"embeddings": [[0.1]]}\n')
    script = "set -euo pipefail\nunset AWS_SESSION_TOKEN\n" + step(8) + step(9)

    done = aws.run(["bash", "-c", script], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    submit, status = api.requests
    assert (submit["method"], submit["path"]) == ("POST", "/jobs")
    assert json.loads(submit["body"])["analyzer"] == "kmeans"
    assert submit["headers"]["idempotency-key"] == "first-try"
    assert (status["method"], status["path"]) == ("GET", "/jobs/7c9e")  # the id step 8 got
    for request in api.requests:
        found = AUTHORIZATION.fullmatch(request["headers"]["authorization"])
        assert found and (found["region"], found["service"]) == ("us-east-1", "execute-api")
        assert (request["headers"].get("x-amz-security-token") == TOKEN) is session_token
        if session_token:  # a token sent unsigned would be refused by AWS
            assert "x-amz-security-token" in found["signed"].split(";")
    argvs = aws.argvs()
    assert argvs[0][:3] == ["aws", "cloudformation", "describe-stacks"]
    assert "Stacks[0].Outputs[?OutputKey=='ApiUrl'].OutputValue" in argvs[0]
    assert argvs[-1] == ["aws", "s3", "cp", RESULT_URI, "-"]
    assert '"embeddings"' in done.stdout


def test_a_wrong_signature_is_refused_by_the_local_api(api: SignedApi, tmp_path: Path) -> None:
    """The check above has teeth: a request signed with another secret does not pass, and
    the walk shows the API's answer."""
    aws = FakeTools(tmp_path, names=("aws",))
    aws.answer("aws", "cloudformation", "describe-stacks", stdout=api.url + "\n")
    aws.answer(
        "aws",
        "configure",
        "export-credentials",
        stdout=f"export AWS_ACCESS_KEY_ID={KEY_ID}\nexport AWS_SECRET_ACCESS_KEY=not-the-secret\n",
    )

    done = aws.run(["bash", "-c", step(8)], cwd=tmp_path)  # as typed: no set -e

    assert done.returncode != 0
    # The API's answer is shown (as a 400's failing paths would be), then the walk stops there.
    assert '{"message": "signature does not match (us-east-1/execute-api)"}' in done.stdout
    assert [request["method"] for request in api.requests] == ["POST"]
