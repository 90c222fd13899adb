"""The installed package's version, read once (`mcp-gateway --version`, /healthz, mcp_gateway_build_info)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def _installed() -> str:
    try:
        return version("mcp-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = _installed()
PYTHON_VERSION = platform.python_version()
