"""The key pair that signs user notices: made, stored where the template's reference points,
only the public half printed; the published key matches what the function signs with."""

from __future__ import annotations

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from devstack.cfn import load_template
from spotline.alerts import resolve_secret
from spotline.standard_webhooks import NoticeSigner
from spotline_ops import notice_keys

TEMPLATE = load_template()
PARAMETERS = TEMPLATE["Parameters"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = notice_keys.main(
        list(argv), client_for=lambda s: boto3.client(s, region_name="us-east-1")
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_default_reference_is_the_templates_default() -> None:
    assert PARAMETERS["NoticeSigningKeySecret"]["Default"] == notice_keys.DEFAULT_REFERENCE


@pytest.mark.parametrize(
    "reference",
    [
        "secretsmanager:spotline/dead-letters/notice-signing-key",
        "ssm:/spotline/dead-letters/notice",
    ],
)
def test_made_pair_is_stored_and_only_its_public_key_printed(
    aws: None, capsys: pytest.CaptureFixture[str], reference: str
) -> None:
    code, out, err = run(capsys, "--reference", reference)

    parameters.clear_caches()
    stored = resolve_secret(reference)  # as the dead-letter function reads it
    public = NoticeSigner.from_secret(stored).public_key
    assert code == 0 and err == ""
    assert out.strip() == f"NoticePublicKey={public}"
    assert stored.startswith("whsk_") and stored.removeprefix("whsk_") not in out
    assert run(capsys, "--reference", reference, "--show")[1] == out


def test_an_existing_key_is_kept_unless_replaced(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(capsys)[1]

    again = run(capsys)
    shown = run(capsys, "--show")[1]
    replaced = run(capsys, "--replace")[1]

    assert again[0] == 2 and "exists: --show it, or --replace it" in again[2]
    assert shown == first
    assert replaced != first and run(capsys, "--show")[1] == replaced


def test_ssm_key_is_kept_unless_replaced(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    reference = "ssm:/spotline/dead-letters/notice"
    run(capsys, "--reference", reference)

    code, _, err = run(capsys, "--reference", reference)

    assert code == 2 and "exists" in err
    assert run(capsys, "--reference", reference, "--replace")[0] == 0


def test_show_of_a_missing_or_foreign_secret_is_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = run(capsys, "--show")
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="spotline/dead-letters/notice-signing-key", SecretString="an-old-hmac-key"
    )
    foreign = run(capsys, "--show")

    assert missing[0] == 2 and "cannot be read" in missing[2]
    assert foreign[0] == 2 and "holds no notice signing key" in foreign[2]
    assert "an-old-hmac-key" not in foreign[2]


def test_a_reference_the_function_may_not_read_is_refused(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--reference", "secretsmanager:prod/other-key")

    assert code == 2 and out == ""
    assert "--reference must start with" in err
