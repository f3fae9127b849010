"""``python -m gpu_worker``: run one worker until SIGTERM/SIGINT (``--help`` lists its settings)."""

from __future__ import annotations

import sys

import boto3
from botocore.config import Config

from gpu_worker import list_analyzers
from gpu_worker.config import WorkerConfig
from gpu_worker.consumer import Worker, load_plugins, logger
from gpu_worker.registry import PluginError
from gpu_worker.variables import ANALYZER_VARIABLES, describe
from spotline.settings import MissingSetting

USAGE = """usage: python -m gpu_worker [--help | --list-analyzers | --catalog [...]]

Run one spotline worker until SIGTERM or SIGINT: receive -> claim -> supervise -> decide ->
settle. It takes its settings from the environment only:
"""
MODES = """
other modes (each with its own --help):
  --list-analyzers   print the installed analyzers as a table, and exit
  --catalog          print the analyzer catalog JSON the API validates against, and exit
"""


def usage() -> str:
    """The help text: the modes and every environment variable with its default."""
    rows = describe(WorkerConfig.defaults())
    width = max(len(name) for name, _, _ in rows)
    lines = [f"  {name:<{width}}  {about} [{default}]" for name, default, about in rows]
    lines.append("read by the text_embed analyzer when it loads:")
    lines += [f"  {name:<{width}}  {about}" for name, about in ANALYZER_VARIABLES]
    return USAGE + "\n".join(lines) + "\n" + MODES


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]) and not {"--list-analyzers", "--catalog"} & set(
        sys.argv[1:]
    ):
        print(usage(), end="")
        return 0
    if {"--list-analyzers", "--catalog"} & set(sys.argv[1:]):
        return list_analyzers.main(sys.argv[1:])
    try:
        config = WorkerConfig.from_env()
    except MissingSetting as exc:
        print(f"gpu_worker: {exc}", file=sys.stderr)
        return 2
    # The long poll waits up to 20 s; the read timeout must outlast it. Connections are reused.
    client_config = Config(
        connect_timeout=5,
        read_timeout=config.wait_s + 10,
        # Standard mode: adaptive's client-side rate limiter would make a throttled call
        # stall the supervisor's loop (checkpoints, heartbeats) for seconds.
        retries={"total_max_attempts": config.aws_max_attempts, "mode": "standard"},
        max_pool_connections=10,
    )
    try:
        catalog = load_plugins(config)
    except (PluginError, MissingSetting) as exc:
        print(f"gpu_worker: {exc}", file=sys.stderr)  # a plug-in that cannot run: no start
        return 2
    worker = Worker(
        config,
        sqs=boto3.client("sqs", config=client_config),
        dynamodb=boto3.client("dynamodb", config=client_config),
        s3=boto3.client("s3", config=client_config),
        cloudwatch=boto3.client("cloudwatch", config=client_config)
        if config.metrics_sink == "cloudwatch"
        else None,
        autoscaling=boto3.client("autoscaling", config=client_config),
        catalog=catalog,
    )
    worker.install_signal_handlers()
    try:
        worker.run()
    except Exception:  # noqa: BLE001 - log it structured, exit non-zero for the init to see
        logger.exception("worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
