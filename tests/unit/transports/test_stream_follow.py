"""ListWatch.follow (gateway/transports/listchanged.py): a session GET or legacy stream ends with its credential's
expiry, and its one release stops both the watching and the expiry timer."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.testing import api_key_principal
from gateway.transports.listchanged import ListWatch
from gateway.upstream.inbox import Inbox

pytestmark = pytest.mark.unit

# a policy whose chain has no authorization stage: nothing to watch, the expiry still applies
NO_AUTHZ: Any = SimpleNamespace(chain=SimpleNamespace(filters=()))
GUARD = 5.0


async def test_a_stream_ends_when_its_credential_expires() -> None:
    inbox = Inbox()
    principal = api_key_principal(expires_at=time.time() + 0.05)
    ListWatch().follow(NO_AUTHZ, "example", principal, inbox)
    async with asyncio.timeout(GUARD):
        while not inbox.closing:
            await asyncio.sleep(0.01)


async def test_the_release_cancels_the_expiry() -> None:
    inbox = Inbox()
    principal = api_key_principal(expires_at=time.time() + 0.05)
    release = ListWatch().follow(NO_AUTHZ, "example", principal, inbox)
    release()
    await asyncio.sleep(0.2)  # well past the expiry: a timer left armed would have closed the stream
    assert not inbox.closing


async def test_a_credential_without_expiry_arms_nothing() -> None:
    inbox = Inbox()
    release = ListWatch().follow(NO_AUTHZ, "example", api_key_principal(), inbox)
    release()
    assert not inbox.closing
