"""``python -m spotline_ops.local_env --stack-name spotline > events/env.local.json``: the
environment file ``sam local invoke --env-vars`` takes, filled from a deployed stack's outputs.

``events/env.json`` lists, per function, the variables the template sets from the stack's own
resources (a table's name, a queue's URL): ``sam local invoke`` cannot resolve those, and would
pass the logical id instead. Each value names the output that holds it, ``<JobsTableName>``, or
the stack's name, ``<StackName>``. An output the template declares under a condition may be
absent (the condition is false); its variable is then empty, as the template sets it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from spotline_ops.doctor import load_template

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / "events" / "env.json"
TEMPLATE = REPO_ROOT / "template.yaml"
STACK_NAME = "StackName"
PLACEHOLDER = re.compile(r"<([A-Za-z][A-Za-z0-9]*)>")


class LocalEnvError(RuntimeError):
    """Something the user can fix (no such stack, an output missing); one line, exit 2."""


def placeholders(env: dict[str, dict[str, str]]) -> set[str]:
    """Every ``<Name>`` the environment file asks for."""
    return {
        name
        for variables in env.values()
        for value in variables.values()
        for name in PLACEHOLDER.findall(value)
    }


def fill(
    env: dict[str, dict[str, str]],
    outputs: dict[str, str],
    *,
    stack_name: str,
    conditional: set[str] | frozenset[str] = frozenset(),
) -> dict[str, dict[str, str]]:
    """``env`` with each ``<Output>`` replaced by its value; raise LocalEnvError naming every
    output the stack lacks (a conditional one that is absent becomes empty)."""
    values = {**outputs, STACK_NAME: stack_name}
    missing = sorted(placeholders(env) - values.keys() - conditional)
    if missing:
        raise LocalEnvError(
            f"stack {stack_name!r} has no output {', '.join(missing)}: deploy this template's"
            " version of the stack first (sam deploy)"
        )

    def value(match: re.Match[str]) -> str:
        return values.get(match.group(1), "")

    return {
        function: {name: PLACEHOLDER.sub(value, text) for name, text in variables.items()}
        for function, variables in env.items()
    }


def conditional_outputs(template: dict[str, Any]) -> set[str]:
    return {name for name, output in template.get("Outputs", {}).items() if "Condition" in output}


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise LocalEnvError(f"stack {stack_name!r} not found: {exc}") from exc
    except BotoCoreError as exc:
        raise LocalEnvError(f"AWS unreachable: {exc}") from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def main(argv: Sequence[str] | None = None, cloudformation: Any = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spotline_ops.local_env",
        description="events/env.json filled from a deployed stack's outputs (sam local --env-vars)",
    )
    parser.add_argument("--stack-name", required=True, help="the deployed stack (spotline)")
    parser.add_argument("--region", help="its region (default: your AWS configuration's)")
    parser.add_argument("--env-file", type=Path, default=ENV_FILE, help="default events/env.json")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="default template.yaml")
    args = parser.parse_args(argv)
    try:
        env = json.loads(args.env_file.read_text(encoding="utf-8"))
        template = load_template(args.template.read_text(encoding="utf-8"))
        if cloudformation is None:
            cloudformation = boto3.client("cloudformation", region_name=args.region)
        filled = fill(
            env,
            stack_outputs(cloudformation, args.stack_name),
            stack_name=args.stack_name,
            conditional=conditional_outputs(template),
        )
    except (OSError, ValueError, LocalEnvError) as exc:
        print(f"local_env: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(filled, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
