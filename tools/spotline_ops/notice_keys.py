"""``python -m spotline_ops.notice_keys``: the key pair that signs user notices.

    python -m spotline_ops.notice_keys                # make a pair, store the secret key, print
                                                      # NoticePublicKey=whpk_... for sam deploy
    python -m spotline_ops.notice_keys --show         # the public key of the stored secret key
    python -m spotline_ops.notice_keys --replace      # rotate: a new pair over the stored one

The secret key goes where ``--reference`` points (the template's default
``secretsmanager:spotline/dead-letters/notice-signing-key``, or ``ssm:/spotline/dead-letters/NAME``
as a SecureString) and is never printed; only the public key is, for the ``NoticePublicKey``
parameter (a stack output your users verify with).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from spotline.standard_webhooks import NoticeKeyError, NoticeSigner, generate_key_pair

DEFAULT_REFERENCE = "secretsmanager:spotline/dead-letters/notice-signing-key"
PREFIXES = ("secretsmanager:spotline/dead-letters/", "ssm:/spotline/dead-letters/")


class KeyStoreError(RuntimeError):
    """Something the operator can fix; printed as one line, exit 2."""


def store(client_for: Callable[[str], Any], reference: str, secret: str, *, replace: bool) -> None:
    source, _, name = reference.partition(":")
    if source == "ssm":
        try:
            client_for("ssm").put_parameter(
                Name=name, Value=secret, Type="SecureString", Overwrite=replace
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ParameterAlreadyExists":
                raise KeyStoreError(f"{reference} exists: --show it, or --replace it") from exc
            raise
        return
    secrets = client_for("secretsmanager")
    try:
        secrets.create_secret(Name=name, SecretString=secret)
    except secrets.exceptions.ResourceExistsException as exc:
        if not replace:
            raise KeyStoreError(f"{reference} exists: --show it, or --replace it") from exc
        secrets.put_secret_value(SecretId=name, SecretString=secret)


def stored_public_key(client_for: Callable[[str], Any], reference: str) -> str:
    source, _, name = reference.partition(":")
    try:
        if source == "ssm":
            value = client_for("ssm").get_parameter(Name=name, WithDecryption=True)
            secret = value["Parameter"]["Value"]
        else:
            secret = client_for("secretsmanager").get_secret_value(SecretId=name)["SecretString"]
    except ClientError as exc:
        raise KeyStoreError(f"{reference} cannot be read: {exc}") from exc
    try:
        return NoticeSigner.from_secret(secret).public_key
    except NoticeKeyError as exc:
        raise KeyStoreError(f"{reference} holds no notice signing key: {exc}") from exc


def main(argv: Sequence[str] | None = None, client_for: Callable[[str], Any] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spotline_ops.notice_keys",
        description="make and store the Ed25519 key pair that signs user notices",
    )
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="the NoticeSigningKeySecret")
    parser.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--show", action="store_true", help="the stored key's public key")
    action.add_argument("--replace", action="store_true", help="a new pair over the stored one")
    args = parser.parse_args(argv)
    if not args.reference.startswith(PREFIXES):
        print(f"notice_keys: --reference must start with {' or '.join(PREFIXES)}", file=sys.stderr)
        return 2
    if client_for is None:
        session = boto3.Session(region_name=args.region)
        client_for = session.client
    try:
        if args.show:
            public = stored_public_key(client_for, args.reference)
        else:
            secret, public = generate_key_pair()
            store(client_for, args.reference, secret, replace=args.replace)
    except KeyStoreError as exc:
        print(f"notice_keys: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"notice_keys: AWS call failed: {exc}", file=sys.stderr)
        return 1
    print(f"NoticePublicKey={public}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
