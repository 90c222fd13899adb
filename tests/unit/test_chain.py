"""The fixed chain: stage order (and build_chain refusing another), short-circuit, observers and releases."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from gateway import chain as chain_module
from gateway.chain import CONNECT_STAGES, MESSAGE_STAGES, STAGES, Chain, Filter
from gateway.compose import Gateway, build_chain, build_gateway
from gateway.context import RequestContext
from gateway.errors import Forbidden, GatewayError, ParseError, RateLimited, Unauthenticated
from gateway.filters import authz
from gateway.policy.model import PolicySet
from gateway.policy.snapshot import Snapshot
from gateway.settings import Settings

pytestmark = pytest.mark.unit


def snapshot() -> Snapshot:
    return Snapshot.build(PolicySet(), "test", Path("."), 0.0)


def context(snap: Snapshot) -> RequestContext:
    return RequestContext(
        request_id="rid",
        snapshot=snap,
        server_name="example",
        server=None,
        client_ip="127.0.0.1",
        transport="streamable-http",
        http_method="POST",
    )


@dataclass
class Journal:
    events: list[str] = field(default_factory=list)


@dataclass
class Stage:
    stage: str
    journal: Journal
    refuse: GatewayError | None = None

    async def __call__(self, ctx: RequestContext) -> None:
        self.journal.events.append(self.stage)
        ctx.releases.append(lambda: self.journal.events.append(f"release:{self.stage}"))
        if self.refuse is not None:
            raise self.refuse


@dataclass
class Recorder:
    journal: Journal
    seen: list[tuple[str | None, str | None, int | None]] = field(default_factory=list)

    def observe(self, ctx: RequestContext) -> None:
        self.journal.events.append("observe")
        self.seen.append((ctx.refused_stage, ctx.refused_reason, ctx.http_status))


def make_chain(refuse_at: str | None = None, err: GatewayError | None = None) -> tuple[Chain, Journal, Recorder]:
    journal = Journal()
    filters: tuple[Filter, ...] = tuple(
        Stage(name, journal, (err or Forbidden("no", reason="denied")) if name == refuse_at else None)
        for name in STAGES
    )
    rec = Recorder(journal)
    return Chain(snapshot(), filters, (rec,)), journal, rec


def test_stage_order_is_the_design_order() -> None:
    assert STAGES == ("client_guard", "authn", "authz", "ratelimit", "breaker")
    # a WebSocket upgrade runs authz too (may the tenant reach the server, before the upstream socket is opened);
    # every message runs it again, with the stages after it
    assert CONNECT_STAGES == ("client_guard", "authn", "authz")
    assert MESSAGE_STAGES == ("authz", "ratelimit", "breaker")


async def test_all_stages_run_in_order_then_forward() -> None:
    chain, journal, rec = make_chain()

    async def forward(ctx: RequestContext) -> str:
        journal.events.append("forward")
        ctx.http_status = 200
        return "answer"

    assert await chain.run(context(chain.snapshot), forward) == "answer"
    releases = [f"release:{s}" for s in reversed(STAGES)]
    assert journal.events == [*STAGES, "forward", *releases, "observe"]
    assert rec.seen == [(None, None, 200)]


@pytest.mark.parametrize("refuse_at", STAGES)
async def test_a_refusal_stops_later_stages_but_releases_and_observers_run(refuse_at: str) -> None:
    chain, journal, rec = make_chain(refuse_at)

    async def forward(ctx: RequestContext) -> None:
        journal.events.append("forward")

    ctx = context(chain.snapshot)
    with pytest.raises(Forbidden) as info:
        await chain.run(ctx, forward)
    ran = list(STAGES[: STAGES.index(refuse_at) + 1])
    assert journal.events == [*ran, *(f"release:{s}" for s in reversed(ran)), "observe"]
    assert info.value.stage == refuse_at  # the chain names the stage that refused
    assert rec.seen == [(refuse_at, "denied", 403)]
    assert ctx.rpc_error_code == Forbidden.code


async def test_prepare_runs_after_client_guard_and_before_authn() -> None:
    chain, journal, _ = make_chain()

    async def prepare(ctx: RequestContext) -> None:
        journal.events.append("prepare")

    async def forward(ctx: RequestContext) -> None:
        journal.events.append("forward")

    await chain.run(context(chain.snapshot), forward, prepare=prepare)
    assert journal.events[: len(STAGES) + 2] == ["client_guard", "prepare", *STAGES[1:], "forward"]


async def test_prepare_runs_after_authn_when_asked() -> None:
    """Issue #14: a caller is authenticated from its head before a large body is waited for."""
    chain, journal, _ = make_chain()

    async def prepare(ctx: RequestContext) -> None:
        journal.events.append("prepare")

    async def forward(ctx: RequestContext) -> None:
        journal.events.append("forward")

    await chain.run(context(chain.snapshot), forward, prepare=prepare, authn_first=True)
    assert journal.events[: len(STAGES) + 2] == ["client_guard", "authn", "prepare", *STAGES[2:], "forward"]


async def test_authn_refusal_comes_before_the_body_when_asked() -> None:
    chain, journal, rec = make_chain("authn", Unauthenticated("no", reason="missing_credentials"))

    async def prepare(ctx: RequestContext) -> None:
        journal.events.append("prepare")

    async def forward(ctx: RequestContext) -> None:
        journal.events.append("forward")

    with pytest.raises(Unauthenticated):
        await chain.run(context(chain.snapshot), forward, prepare=prepare, authn_first=True)
    assert "prepare" not in journal.events
    assert rec.seen == [("authn", "missing_credentials", 401)]


async def test_guard_refusal_happens_before_any_parsing() -> None:
    chain, journal, rec = make_chain("client_guard", RateLimited("blocked", retry_after=1))

    async def prepare(ctx: RequestContext) -> None:
        journal.events.append("prepare")

    async def forward(ctx: RequestContext) -> None:
        raise AssertionError("forward must not run")

    with pytest.raises(RateLimited):
        await chain.run(context(chain.snapshot), forward, prepare=prepare)
    assert "prepare" not in journal.events
    assert rec.seen == [("client_guard", "rate_limited", 429)]


async def test_parse_failure_is_recorded_as_stage_parse() -> None:
    chain, journal, rec = make_chain()

    async def prepare(ctx: RequestContext) -> None:
        raise ParseError("bad", reason="invalid_json")

    async def forward(ctx: RequestContext) -> None:
        raise AssertionError("forward must not run")

    with pytest.raises(ParseError):
        await chain.run(context(chain.snapshot), forward, prepare=prepare)
    assert journal.events == ["client_guard", "release:client_guard", "observe"]
    assert rec.seen == [("parse", "invalid_json", 400)]


async def test_message_stages_only() -> None:
    chain, journal, _ = make_chain()

    async def forward(ctx: RequestContext) -> None:
        journal.events.append("forward")

    await chain.run(context(chain.snapshot), forward, stages=MESSAGE_STAGES)
    assert journal.events[:4] == [*MESSAGE_STAGES, "forward"]


async def test_forward_refusal_is_attributed_to_forward() -> None:
    chain, _, rec = make_chain()

    async def forward(ctx: RequestContext) -> None:
        raise GatewayError("boom", reason="upstream_x", status=502)

    with pytest.raises(GatewayError):
        await chain.run(context(chain.snapshot), forward)
    assert rec.seen == [("forward", "upstream_x", 502)]


async def test_unexpected_exception_is_a_500_and_still_observed() -> None:
    chain, journal, rec = make_chain()

    async def forward(ctx: RequestContext) -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await chain.run(context(chain.snapshot), forward)
    assert rec.seen == [("forward", "internal_error", 500)]
    assert journal.events[-1] == "observe"


async def test_client_disconnect_is_499_and_releases_run() -> None:
    chain, journal, rec = make_chain()
    started = asyncio.Event()

    async def forward(ctx: RequestContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(chain.run(context(chain.snapshot), forward))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.seen == [(None, "client_disconnected", 499)]
    assert [e for e in journal.events if e.startswith("release:")] == [f"release:{s}" for s in reversed(STAGES)]


async def test_failing_release_and_observer_do_not_hide_the_outcome() -> None:
    chain, _, rec = make_chain()

    class Broken:
        def observe(self, ctx: RequestContext) -> None:
            raise RuntimeError("observer bug")

    chain = Chain(chain.snapshot, chain.filters, (Broken(), rec))

    async def forward(ctx: RequestContext) -> str:
        ctx.releases.append(lambda: 1 / 0)
        ctx.http_status = 200
        return "ok"

    assert await chain.run(context(chain.snapshot), forward) == "ok"
    assert rec.seen == [(None, None, 200)]  # the observer after the broken one still ran


async def test_request_id_is_bound_into_log_context() -> None:
    chain, _, _ = make_chain()
    seen: dict[str, object] = {}

    async def forward(ctx: RequestContext) -> None:
        seen.update(structlog.contextvars.get_contextvars())

    async def one() -> None:
        await chain.run(context(chain.snapshot), forward)

    await asyncio.create_task(one())
    assert seen["request_id"] == "rid"


def real_gateway() -> Gateway:
    return build_gateway(Settings(policies_dir=str(Path(__file__).parent)))


def test_build_chain_uses_the_fixed_order() -> None:
    chain = build_chain(snapshot(), real_gateway())
    assert tuple(f.stage for f in chain.filters) == STAGES


def test_build_chain_refuses_a_misplaced_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    class Impostor:
        stage = "ratelimit"

        async def __call__(self, ctx: RequestContext) -> None:
            return None

    monkeypatch.setattr(authz, "build", lambda snap, state: Impostor())
    with pytest.raises(RuntimeError, match="chain order broken: ratelimit where authz belongs"):
        build_chain(snapshot(), real_gateway())
    assert chain_module.STAGES[2] == "authz"
