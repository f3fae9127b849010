"""Built-in analyzers: ``echo`` and ``sleep`` (a checkpointing progress counter).

Registered as entry points in spotline's pyproject.toml, like any plug-in; each declares its
contract in ``spec``.
"""

from __future__ import annotations

import time
from typing import Any

from spotline.sdk import AnalysisContext, AnalyzerLimits, AnalyzerSpec, Interrupted, Job


class Echo:
    """Returns its input unchanged."""

    name = "echo"
    spec = AnalyzerSpec(description="Returns its input unchanged.")

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        return job.input


class Sleep:
    """A progress counter: ``params.seconds`` of work in steps of ``params.step_s``.

    It resumes from its last checkpoint, checkpoints every ``params.checkpoint_every_s`` and
    when asked to stop, and returns which steps this attempt ran, so tests can prove that no
    step past a checkpoint is done twice. ``params.ignore_stop`` makes it deaf to
    ``ctx.should_stop()`` (an uncooperative analyzer, killed after the checkpoint grace).
    """

    name = "sleep"
    spec = AnalyzerSpec(
        description="A checkpointing progress counter: params.seconds of work in steps.",
        params_schema={
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": 43200},
                "step_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                "checkpoint_every_s": {"type": "number", "exclusiveMinimum": 0},
                "ignore_stop": {"type": "boolean"},
            },
        },
        limits=AnalyzerLimits(checkpoints=True),
    )

    def load(self) -> None:
        return None

    def analyze(self, job: Job, ctx: AnalysisContext) -> Any:
        params = job.params or {}
        seconds = float(params.get("seconds", 1.0))
        step_s = float(params.get("step_s", 0.1))
        steps = max(1, round(seconds / step_s)) if seconds > 0 else 0
        every_s = params.get("checkpoint_every_s")
        ignore_stop = bool(params.get("ignore_stop", False))
        state = ctx.restore() or {}
        done = int(state.get("steps_done", 0)) if isinstance(state, dict) else 0
        ran: list[int] = list(state.get("ran", [])) if isinstance(state, dict) else []
        resumed_from = done
        last_checkpoint = time.monotonic()
        while done < steps:
            if not ignore_stop and ctx.should_stop():
                ctx.checkpoint({"steps_done": done, "ran": ran})
                raise Interrupted(f"stopped at step {done} of {steps}")
            time.sleep(step_s)
            ran.append(done)
            done += 1
            ctx.progress(step=done, of=steps)
            if every_s and time.monotonic() - last_checkpoint >= float(every_s):
                ctx.checkpoint({"steps_done": done, "ran": ran})
                last_checkpoint = time.monotonic()
        return {"steps": steps, "resumed_from": resumed_from, "ran": ran, "input": job.input}
