"""A request is linked to its context (a reference cycle: the context holds the request) only when the audit
journal will take the link back at the answer. Without a journal (`sink: log`, `audit.journal: false`) every
request with its body used to wait for the cyclic GC, whose gen-0 threshold the gateway raises to 50,000."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.audit.answers import take_context
from gateway.clientip import ClientIpResolver
from gateway.transports.common import ContextFactory

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("journal", [True, False])
def test_requests_are_linked_to_their_context_only_for_the_journal(journal: bool) -> None:
    request = make_mocked_request("POST", "/mcp/example")
    new_context = ContextFactory(ClientIpResolver([]), link_answers=journal)
    ctx = new_context(request, None, "example", None, "streamable-http")  # type: ignore[arg-type]
    linked = take_context(request)
    assert (linked is ctx) if journal else (linked is None)
