"""Lambda cold start: import time of each handler module and its first invocation, with moto.

For every function in template.yaml (``Handler: <module>.handler``), in fresh processes:

- import time from ``python -X importtime -c "import <module>"``: the cumulative time of the
  module and everything it pulls in (Python's own start-up excluded), median of 5 processes;
- first invocation: import, then the handler called once with its sample event from events/
  (``SAMPLE_EVENTS``) against a moto server, then a second (warm) call. No alert channels, so
  no traffic leaves the machine.

Every import runs in the environment Lambda's runtime gives a function (``LAMBDA_TASK_ROOT``,
``AWS_LAMBDA_FUNCTION_NAME``, the X-Ray daemon address and trace header: ``LAMBDA_RUNTIME``):
outside Lambda the X-Ray SDK builds a sampler with its own botocore client at import (about
70 ms) that inside Lambda it never builds, and Powertools' Tracer stays off.

The baseline is ``import boto3`` alone, measured the same way, since every handler needs it.
Modules are measured round-robin, and the CPU time of each import is printed beside its wall
time: on a busy machine wall times swell, CPU times much less. Goal: each handler imports in
at most 300 ms.

    .venv/bin/python benchmarks/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "functions"), str(REPO)]

from devstack.cfn import function_environment, load_template  # noqa: E402
from devstack.drills.standby import with_fleet  # noqa: E402
from devstack.lambdas import FUNCTIONS_DIR  # noqa: E402
from devstack.motoserver import MotoServer  # noqa: E402
from devstack.stack import Devstack  # noqa: E402

GOAL_MS = 300.0

INVOKE = """
import json, sys, time
started = time.perf_counter()
import importlib
module = importlib.import_module(sys.argv[1])
imported = time.perf_counter()
from devstack.lambdas import LambdaContext, load_event
event = load_event(sys.argv[2])
error = None
try:
    module.handler(event, LambdaContext(function_name=sys.argv[3]))
except Exception as exc:  # reported, not hidden
    error = f"{type(exc).__name__}: {exc}"
first = time.perf_counter()
try:
    module.handler(event, LambdaContext(function_name=sys.argv[3]))
except Exception:
    pass
second = time.perf_counter()
print(json.dumps({"import_ms": (imported - started) * 1000, "first_ms": (first - imported) * 1000,
                  "warm_ms": (second - first) * 1000, "error": error}))
"""


def handlers() -> list[tuple[str, str]]:
    """(logical id, module) of every function whose code is in functions/."""
    out = []
    for logical_id, resource in load_template()["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        handler = str(resource.get("Properties", {}).get("Handler", ""))
        module = handler.rsplit(".", 1)[0]
        if module and (FUNCTIONS_DIR / (module.replace(".", "/") + ".py")).exists():
            out.append((logical_id, module))
    return sorted(out, key=lambda item: item[1])


def import_cpu_ms(module: str, env: dict[str, str]) -> float:
    """CPU time the import costs its process: unlike wall time, barely moved by other load."""
    code = f"import time; t = time.process_time(); import {module}; print(time.process_time() - t)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip()) * 1000


def importtime_ms(module: str, env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """Cumulative import time of ``module`` (and its parents), and its heaviest imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    top = module.split(".")[0]
    total_us, children = 0, []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part for part in line.split("|"))
        if not cumulative.strip().isdigit():
            continue  # the header line
        depth = len(name) - len(name.lstrip()) - 1
        stripped = name.strip()
        if depth == 0 and (stripped == top or stripped.startswith(top + ".")):
            total_us += int(cumulative)
        elif depth == 2:
            children.append((stripped, int(cumulative) / 1000))
    heaviest = sorted(children, key=lambda item: -item[1])[:3]
    return total_us / 1000, heaviest


def lambda_runtime(logical_id: str) -> dict[str, str]:
    """The reserved variables Lambda's runtime sets in a function's process (AWS's list of
    "defined runtime environment variables"), with the invocation's trace header as Lambda sets
    it under active tracing. The daemon address is a local port nothing listens on: segments
    are UDP datagrams sent and forgotten."""
    return {
        "LAMBDA_TASK_ROOT": str(FUNCTIONS_DIR),
        "LAMBDA_RUNTIME_DIR": str(FUNCTIONS_DIR),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_NAME": logical_id,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "_X_AMZN_TRACE_ID": (
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        ),
    }


# The sample event each handler's first call gets (its ordinary path, from events/).
SAMPLE_EVENTS = {
    "enqueue.app": "enqueue_submit",
    "dead_letter.app": "dead_letter_worker",
    "spot_events.app": "spot_interruption_unrelated_instance",
    "alarm_fanout.app": "alarm_sns_alarm",
}
# No traffic leaves this machine: alerts go to no channel, callbacks are not followed.
QUIET = {"ALERT_CHANNELS": "", "POWERTOOLS_LOG_LEVEL": "WARNING"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="cold starts measured per function (default: %(default)s)",
    )
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with MotoServer() as server:
        dev = Devstack(server=server)
        dev.start(stack_name="coldstart")
        try:
            stack = with_fleet(dev)
            base_env = {
                **os.environ,
                **server.env(),
                "PYTHONPATH": os.pathsep.join([str(REPO / "functions"), str(REPO)]),
                "POWERTOOLS_LOG_LEVEL": "WARNING",
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
            targets = [("(boto3 alone)", "boto3", base_env)] + [
                (
                    logical_id,
                    module,
                    {
                        **base_env,
                        **function_environment(stack, logical_id),
                        **lambda_runtime(logical_id),
                    },
                )
                for logical_id, module in handlers()
            ]
            # Round-robin, so a machine that gets busier mid-run skews every module alike.
            samples: dict[str, list[tuple[float, list[tuple[str, float]]]]] = {}
            cpu: dict[str, list[float]] = {}
            for _ in range(args.runs):
                for name, module, env in targets:
                    samples.setdefault(name, []).append(importtime_ms(module, env))
                    cpu.setdefault(name, []).append(import_cpu_ms(module, env))
            baseline = statistics.median(s[0] for s in samples["(boto3 alone)"])
            baseline_cpu = statistics.median(cpu["(boto3 alone)"])
            for logical_id, module, env in targets[1:]:
                row: dict[str, Any] = {
                    "function": logical_id,
                    "module": module,
                    "import_ms": round(statistics.median(s[0] for s in samples[logical_id]), 1),
                    "import_cpu_ms": round(statistics.median(cpu[logical_id]), 1),
                    "heaviest": ", ".join(f"{n} {ms:.0f}" for n, ms in samples[logical_id][-1][1]),
                }
                event = SAMPLE_EVENTS.get(module)
                if event is not None:
                    invoked = subprocess.run(
                        [sys.executable, "-c", INVOKE, module, event, logical_id],
                        env={**env, **QUIET},
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=str(REPO),
                    )
                    figures = json.loads(invoked.stdout.strip().splitlines()[-1])
                    row["event"] = event
                    row["first_invoke_ms"] = round(figures["first_ms"], 1)
                    row["warm_invoke_ms"] = round(figures["warm_ms"], 1)
                    if figures["error"]:
                        row["invoke_error"] = figures["error"][:120]
                rows.append(row)
        finally:
            dev.stop()

    print(
        f"{'function':<24} {'import ms':>10} {'import cpu':>10} {'first call ms':>14} "
        f"{'warm ms':>8}  heaviest imports (ms)"
    )
    print("-" * 110)
    print(f"{'(boto3 alone)':<24} {baseline:>10.1f} {baseline_cpu:>10.1f}")
    for row in rows:
        print(
            f"{row['function']:<24} {row['import_ms']:>10.1f} {row['import_cpu_ms']:>10.1f} "
            f"{row.get('first_invoke_ms', '-')!s:>14} {row.get('warm_invoke_ms', '-')!s:>8}  "
            f"{row['heaviest']}"
        )
        if "invoke_error" in row:
            print(f"{'':<24} invocation failed: {row['invoke_error']}")
    worst = max((row["import_ms"] for row in rows), default=0.0)
    worst_cpu = max((row["import_cpu_ms"] for row in rows), default=0.0)
    keys = ("import_ms", "import_cpu_ms", "first_invoke_ms", "warm_invoke_ms")
    figures_out = {
        "runs": args.runs,
        "goal_import_ms": GOAL_MS,
        "boto3_import_ms": round(baseline, 1),
        "boto3_import_cpu_ms": round(baseline_cpu, 1),
        "max_import_ms": worst,
        "max_import_cpu_ms": worst_cpu,
        "max_import_vs_goal_ratio": round(worst / GOAL_MS, 3),
        "max_import_cpu_vs_goal_ratio": round(worst_cpu / GOAL_MS, 3),
        "all_within_goal": worst <= GOAL_MS,
        # Against boto3 alone, which every handler needs: steadier than ms on a busy machine.
        "max_import_vs_boto3_ratio": round(worst / baseline, 2),
        "functions": {
            row["function"]: {
                **{k: row[k] for k in keys if k in row},
                "import_vs_boto3_ratio": round(row["import_ms"] / baseline, 2),
            }
            for row in rows
        },
    }
    figures_out["catalog"] = catalog_cost()
    cost = figures_out["catalog"]
    print(
        f"\ncatalog: load {cost['load_ms']} ms at cold start ({cost['analyzers']} analyzers); per "
        f"request {cost['lookup_us']} us (first use of an analyzer {cost['first_use_ms']} ms) "
        f"against {cost['envelope_us']} us for the job schema alone "
        f"(x{cost['lookup_vs_envelope_ratio']})"
    )
    print(json.dumps(figures_out))
    return 0


def catalog_cost(rounds: int = 2000) -> dict[str, Any]:
    """The catalog's share of a request: reading it at cold start, and per request the lookup
    and the analyzer's input/params validation, against the job schema's own validation."""
    import time

    from spotline.catalog import Catalog, bundled_catalog_path, catalog_violations
    from spotline.contract import _validator

    started = time.perf_counter()
    text = bundled_catalog_path().read_text(encoding="utf-8")
    catalog = Catalog.loads(text, check_schemas=False)  # as load_catalog() at cold start
    load_ms = (time.perf_counter() - started) * 1000
    request = {
        "analyzer": "text_embed",
        "input": {"texts": [f"sentence number {i}" for i in range(16)]},
        "params": {"task": "embed", "batch_size": 8},
    }
    started = time.perf_counter()
    catalog_violations(request, catalog, drills=False)  # compiles its validators
    first_use_ms = (time.perf_counter() - started) * 1000

    def per_call_us(call: Any) -> float:
        runs = []
        for _ in range(5):
            begin = time.perf_counter()
            for _ in range(rounds):
                call()
            runs.append((time.perf_counter() - begin) / rounds * 1e6)
        return statistics.median(runs)

    lookup = per_call_us(lambda: catalog_violations(request, catalog, drills=False))
    envelope = per_call_us(lambda: list(_validator().iter_errors(request)))
    return {
        "analyzers": len(catalog.entries),
        "load_ms": round(load_ms, 2),
        "first_use_ms": round(first_use_ms, 2),
        "lookup_us": round(lookup, 1),
        "envelope_us": round(envelope, 1),
        "lookup_vs_envelope_ratio": round(lookup / envelope, 2),
    }


if __name__ == "__main__":
    sys.exit(main())
