"""The `MGW_SECTION__FIELD` prefix rule, the documented short names, and the warning about unknown `MGW_*` names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import metrics
from gateway.envcheck import unknown_variables
from gateway.net import workers
from gateway.policy.base import Model, SecretRef
from gateway.settings import ENV_OVERRIDES, Settings, SettingsError, load_settings
from gateway.settings_env import INTERNAL, leaf_settings, prefix_name, secret_references, unknown_env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_prefix_rule_sets_any_nested_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("http: {max_body_bytes: 100, sse_keepalive_seconds: 5}\n")
    s = load_settings(
        cfg,
        env={
            "MGW_HTTP__MAX_BODY_BYTES": "2048",
            "MGW_AUDIT__RISK__DEFAULT": "high",
            "MGW_POLICY_POLL_SECONDS": "0",
            "MGW_LOGGING__ACCESS_LOG": "true",
            "MGW_REDIS__KEY_PREFIX": "gw1:",
        },
    )
    assert s.http.max_body_bytes == 2048 and s.http.sse_keepalive_seconds == 5  # the rest of the file stays
    assert s.audit.risk.default == "high"
    assert s.policy_poll_seconds == 0
    assert s.logging.access_log is True
    assert s.redis.key_prefix == "gw1:"


def test_prefix_rule_lists_mappings_and_secret_references(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("api_keys: {hmac_secret: {env: OTHER}}\n")
    s = load_settings(
        cfg,
        env={
            "MGW_HTTP__TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
            "MGW_HTTP__ALLOWED_ORIGINS": '["https://a.example", "https://b.example"]',
            "MGW_AUDIT__RISK__TOOLS": '{"delete_*": "critical"}',
            "MGW_API_KEYS__HMAC_SECRET__ENV": "MY_SECRET",
        },
    )
    assert s.http.trusted_proxies == ["10.0.0.0/8", "192.168.0.0/16"]
    assert s.http.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.audit.risk.tools == {"delete_*": "critical"}
    assert s.api_keys.hmac_secret == SecretRef(env="MY_SECRET")


def test_empty_value_unsets_a_scalar_and_empties_a_list() -> None:
    s = load_settings(None, env={"MGW_ADMIN_LISTEN__PORT": "", "MGW_HTTP__TRUSTED_PROXIES": ""})
    assert s.admin_listen.port is None and s.http.trusted_proxies == []


def test_short_names_are_their_long_form() -> None:
    for var, dotted in ENV_OVERRIDES.items():
        assert dotted in leaf_settings(Settings), f"{var} -> {dotted} names no setting"
        # no short name shadows the long name of another setting
        assert var not in {prefix_name(d) for d in leaf_settings(Settings) if d != dotted}
    assert load_settings(None, env={"MGW_LISTEN__PORT": "9001"}).listen.port == 9001
    same = load_settings(None, env={"MGW_PORT": "9002", "MGW_LISTEN__PORT": "9002"})
    assert same.listen.port == 9002


def test_two_variables_disagreeing_is_an_error() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={"MGW_PORT": "9001", "MGW_LISTEN__PORT": "9002"})
    assert str(info.value) == (
        "settings: listen.port is set by both MGW_LISTEN__PORT and MGW_PORT with different values; unset one of them"
    )


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"http\.max_body_bytes \(from environment variable MGW_HTTP__MAX_BODY"):
        load_settings(None, env={"MGW_HTTP__MAX_BODY_BYTES": "lots"})
    with pytest.raises(SettingsError, match=r"audit\.risk\.tools \(from environment variable MGW_AUDIT__RISK__TOOLS"):
        load_settings(None, env={"MGW_AUDIT__RISK__TOOLS": "delete_*=critical"})
    # an item of a list given by a variable names the variable too
    with pytest.raises(SettingsError, match=r"http\.allowed_hosts.*\(from environment variable MGW_ALLOWED_HOSTS\)"):
        load_settings(None, env={"MGW_ALLOWED_HOSTS": "ok.example,bad host"})


def test_every_setting_has_a_prefix_name_and_base_dir_has_none() -> None:
    names = {prefix_name(d) for d in leaf_settings(Settings)}
    assert {"MGW_LISTEN__PORT", "MGW_HTTP__KEEPALIVE_IDLE_SECONDS", "MGW_AUDIT__RISK__METHODS"} <= names
    assert "MGW_BASE_DIR" not in names
    assert all(re.fullmatch(r"MGW_[A-Z0-9_]+", n) for n in names)


@pytest.mark.parametrize(
    ("var", "closest"),
    [
        ("MGW_PROT", "MGW_PORT"),
        ("MGW_REDIS_ULR", "MGW_REDIS_URL"),
        ("MGW_HTTP_MAX_BODY_BYTES", "MGW_HTTP__MAX_BODY_BYTES"),  # one underscore where the rule has two
        ("MGW_POSTGRES__DNS", "MGW_POSTGRES__DSN"),
        ("MGW_COMPLETELY_DIFFERENT_THING", None),
    ],
)
def test_unknown_names_are_found_with_the_closest_known_one(var: str, closest: str | None) -> None:
    env = {var: "x", "MGW_PORT": "1", "MGW_HTTP__MAX_BODY_BYTES": "1", "PATH": "/bin"}
    assert unknown_env(env, ENV_OVERRIDES, Settings) == [(var, closest)]


def test_known_names_are_not_warned_about() -> None:
    env = {
        "MGW_PORT": "1",
        "MGW_LOGGING__LEVEL": "info",
        "MGW_WORKER_INDEX": "0",
        "MGW_TEST_REDIS_URL": "redis://x",
        "MGW_BENCH_POSTGRES_DSN": "postgresql://x",
        "MGW_JWT_HS": "secret",  # a secret reference names it
        "OTHER_PROGRAM_VAR": "1",
    }
    assert unknown_env(env, ENV_OVERRIDES, Settings, references={"MGW_JWT_HS"}) == []
    assert [name for name, _ in unknown_env(env, ENV_OVERRIDES, Settings)] == ["MGW_JWT_HS"]


def test_internal_names_match_the_modules_that_set_them() -> None:
    assert {workers.SETTINGS_ENV, workers.SUPERVISOR_PID_ENV, metrics.WORKER_INDEX_ENV} == INTERNAL


class _Inner(Model):
    secret: SecretRef
    more: list[SecretRef] = []
    by_name: dict[str, SecretRef] = {}


def test_secret_references_found_at_any_depth() -> None:
    inner = _Inner(
        secret=SecretRef(env="MGW_A"),
        more=[SecretRef(file="x"), SecretRef(env="MGW_B")],
        by_name={"n": SecretRef(env="MGW_C")},
    )
    assert secret_references(inner, None, Settings()) == {"MGW_A", "MGW_B", "MGW_C", "MGW_APIKEY_SECRET"}


def test_warning_sentence_names_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MGW_PROT", "9000")
    found = [f for f in unknown_variables() if f[0] == "MGW_PROT"]
    assert found == [
        (
            "MGW_PROT",
            "MGW_PORT",
            "unknown environment variable MGW_PROT is ignored (did you mean MGW_PORT? a setting is "
            "MGW_SECTION__FIELD or a name in docs/foundation.md)",
        )
    ]
