"""The doctor's catalog check: does the API accept what the fleet's image runs?

The Lambda bundle carries ``functions/spotline/catalog.json``, made from one worker image
(``make push`` writes it from the image it pushed). If the fleet pulls another image, ``POST
/jobs`` accepts analyzers, inputs or params the workers cannot run (each then costs a job,
dead-lettered as INVALID_INPUT) or refuses ones they can. This compares the catalog's ``image``
with the image the stack's workers pull (``WorkerImage``, else the stack's repository at
``WorkerImageTag``), and flags drill analyzers in a catalog of a stack that refuses drills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spotline.catalog import Catalog

if TYPE_CHECKING:
    from spotline_ops.doctor import Finding, View

RESOURCE = "functions/spotline/catalog.json"
FIX = (
    "regenerate it from the fleet's image (make push TAG=..., or docker run --rm IMAGE "
    "python -m gpu_worker --catalog > functions/spotline/catalog.json), then sam build and "
    "sam deploy"
)


def _tag(image: str) -> str:
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[1] if ":" in name else ""


def check_catalog(view: View, catalog: Catalog | None) -> list[Finding]:
    from spotline_ops.doctor import Finding

    if catalog is None:
        return []
    findings: list[Finding] = []
    fleet = str(view.parameters.get("DeployWorkers") or "false").lower() == "true"
    image = str(view.parameters.get("WorkerImage") or "")
    tag = str(view.parameters.get("WorkerImageTag") or "")
    if fleet and (image or tag):
        pulled = image or f"WorkerRepository:{tag}"
        same = catalog.image == image if image else bool(tag) and _tag(catalog.image) == tag
        if not same:
            findings.append(
                Finding(
                    "catalog",
                    "error",
                    RESOURCE,
                    f"the API's catalog came from {catalog.image or 'an unnamed image'!r}, the "
                    f"fleet pulls {pulled!r}: POST /jobs checks jobs against analyzers the "
                    "workers may not run",
                    FIX,
                )
            )
    drills_on = str(view.parameters.get("EnableDrillAnalyzers") or "false").lower() == "true"
    drills = sorted(set(catalog.names()) - set(catalog.names(drills=False)))
    if drills and not drills_on:
        findings.append(
            Finding(
                "catalog",
                "warning",
                RESOURCE,
                f"the catalog lists drill analyzers ({', '.join(drills)}) but the stack refuses "
                "drills: the image carries spotline-drills",
                "build the production image without plugins/spotline-drills",
            )
        )
    return findings
