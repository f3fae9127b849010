"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

import os

import pytest

from devstack.motoserver import AWS_TEST_ENV


@pytest.fixture(autouse=True, scope="session")
def _aws_test_environment() -> None:
    """Tests never reach AWS: fake credentials, a fixed region, no IMDS credential lookup."""
    for key, value in AWS_TEST_ENV.items():
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
