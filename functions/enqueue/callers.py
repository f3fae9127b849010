"""Who is calling the jobs API, and which jobs they may see.

API Gateway's authorizer writes the caller into the event's ``requestContext.authorizer``: under
``ApiAuth=JWT`` the verified token's claims (``jwt.claims``, ``jwt.scopes``), under IAM the
SigV4 signer (``iam.userArn``). A caller's ``Idempotency-Key`` is theirs alone (two users'
"order-42" are two jobs), and every job keeps its submitter.

Reading a job: under JWT only its submitter, or an operator (a token carrying the scope or group
``ApiOperatorScope`` names), sees it; anyone else gets the same 404 as for a job that does not
exist, so job ids reveal nothing. Under IAM the account's policy decides who may call the API
at all, and every caller with ``execute-api:Invoke`` sees every job (account-wide, as before).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spotline.jobstore import JobRecord

# Where an identity provider puts scopes (OAuth "scope", Entra/Okta "scp") and groups or roles
# (Cognito "cognito:groups", others "groups", "roles"). API Gateway passes every claim as text;
# a list claim arrives as "[a b]".
SCOPE_CLAIMS = ("scope", "scp")
GROUP_CLAIMS = ("cognito:groups", "groups", "roles")
# An assumed role's ARN ends in its session name; the role is the principal, so a key survives
# a new session of the same role.
_ASSUMED_ROLE = re.compile(r"^(arn:[^:]+:sts::\d+:assumed-role/[^/]+)/.+$")


class AuthMode(StrEnum):
    IAM = "IAM"
    JWT = "JWT"


class Unidentified(PermissionError):
    """The event names no caller (never behind API Gateway's authorizer): HTTP 401."""


@dataclass(frozen=True)
class Caller:
    principal: str  # "jwt:SUB" or "iam:ARN": what jobs and idempotency keys are scoped to
    operator: bool = False


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _members(value: Any) -> set[str]:
    """A claim's members: a list, a space-separated string, or API Gateway's "[a b]" rendering."""
    if isinstance(value, list):
        return {str(v) for v in value}
    text = _text(value)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].replace(",", " ")
    return set(text.split())


@dataclass(frozen=True)
class AccessPolicy:
    mode: AuthMode
    operator_scope: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AccessPolicy:
        env = os.environ if environ is None else environ
        raw = env.get("API_AUTH", "IAM").strip().upper() or "IAM"
        try:
            mode = AuthMode(raw)
        except ValueError as exc:
            raise ValueError(f"API_AUTH must be IAM or JWT, not {raw!r}") from exc
        return cls(mode, env.get("API_OPERATOR_SCOPE", "").strip())

    def caller(self, request_context: Any) -> Caller:
        """The caller the authorizer vouched for; Unidentified when the event names none."""
        context = request_context if isinstance(request_context, dict) else {}
        authorizer = context.get("authorizer")
        authorizer = authorizer if isinstance(authorizer, dict) else {}
        if self.mode is AuthMode.JWT:
            return self._jwt_caller(authorizer.get("jwt"))
        iam = authorizer.get("iam")
        arn = _text(iam.get("userArn")) if isinstance(iam, dict) else ""
        if not arn:
            raise Unidentified("no IAM caller in the request")
        role = _ASSUMED_ROLE.match(arn)
        return Caller(f"iam:{role.group(1) if role else arn}")

    def _jwt_caller(self, jwt: Any) -> Caller:
        jwt = jwt if isinstance(jwt, dict) else {}
        claims = jwt.get("claims")
        claims = claims if isinstance(claims, dict) else {}
        subject = _text(claims.get("sub"))
        if not subject:
            raise Unidentified("no token subject (sub) in the request")
        granted = _members(jwt.get("scopes") or [])
        for name in (*SCOPE_CLAIMS, *GROUP_CLAIMS):
            granted |= _members(claims.get(name))
        return Caller(
            f"jwt:{subject}", operator=bool(self.operator_scope) and self.operator_scope in granted
        )

    def may_read(self, caller: Caller, record: JobRecord) -> bool:
        if self.mode is AuthMode.IAM:
            return True  # account-wide: IAM policy decides who may call the API at all
        return caller.operator or record.submitter == caller.principal
