"""config.yaml -> Settings: defaults, environment overrides, precise errors, secrets only by reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ENV_OVERRIDES, Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_repository_config_loads_with_embedded_defaults() -> None:
    s = load_settings(ROOT / "config.yaml", env={})
    assert s.redis.url is None and s.postgres.dsn is None  # `make run` needs neither
    assert s.public_url == f"http://{s.listen.host}:{s.listen.port}"
    assert s.base_dir == str(ROOT)
    assert s.path(s.policies_dir) == ROOT / "policies"


def test_no_file_gives_documented_defaults() -> None:
    s = load_settings(None, env={})
    assert s == Settings(base_dir=s.base_dir)
    assert (s.listen.host, s.listen.port, s.http.max_body_bytes) == ("127.0.0.1", 8080, 4 * 1024 * 1024)
    assert s.api_keys.hmac_secret.env == "MGW_APIKEY_SECRET"


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "listen: {host: 0.0.0.0, port: 9000}\nredis: {url: null}\nlogging: {level: info}\n")
    env = {
        "MGW_PORT": "9123",
        "MGW_REDIS_URL": "redis://cache:6379/2",
        "MGW_POSTGRES_DSN": "postgresql://u@db/x",
        "MGW_LOG_LEVEL": "debug",
        "MGW_PUBLIC_URL": "https://gw.example/",
        "UNRELATED": "1",
    }
    s = load_settings(cfg, env=env)
    assert s.listen.port == 9123 and s.listen.host == "0.0.0.0"  # untouched values stay
    assert s.redis.url == "redis://cache:6379/2"
    assert s.postgres.dsn == "postgresql://u@db/x"
    assert s.logging.level == "debug"
    assert s.public_url == "https://gw.example"  # trailing slash dropped


def test_empty_env_value_means_unset(tmp_path: Path) -> None:
    cfg = write(tmp_path, "redis: {url: 'redis://x:1/0'}\n")
    assert load_settings(cfg, env={"MGW_REDIS_URL": ""}).redis.url is None


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MGW_WORKERS", "3")
    assert load_settings(None).workers == 3


def test_every_override_points_at_a_real_setting() -> None:
    defaults = Settings().model_dump()
    for var, dotted in ENV_OVERRIDES.items():
        cur = defaults
        for part in dotted.split("."):
            assert isinstance(cur, dict) and part in cur, f"{var} -> {dotted} names no setting"
            cur = cur[part]


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path, "listen: {port: 8080}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(cfg, env={"MGW_PORT": "eighty"})
    msg = str(info.value)
    assert f"{cfg}: listen.port (from environment variable MGW_PORT):" in msg
    assert "valid integer" in msg


def test_bad_value_without_a_file() -> None:
    with pytest.raises(SettingsError, match=r"^settings: logging\.level \(from environment variable MGW_LOG_LEVEL\)"):
        load_settings(None, env={"MGW_LOG_LEVEL": "loud"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: {port: 70000}\n", "listen.port: Input should be less than or equal to 65535"),
        ("listne: {port: 1}\n", "listne: Extra inputs are not permitted"),
        ("http: {max_body_bytes: 0}\n", "http.max_body_bytes: Input should be greater than 0"),
        ("api_keys: {hmac_secret: 'inline-secret'}\n", "api_keys.hmac_secret"),
        ("api_keys: {hmac_secret: {env: A, file: b}}\n", "give exactly one of 'env' or 'file'"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("listen: [\n", "invalid YAML"),
    ],
)
def test_file_errors_name_the_file_and_path(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(cfg, env={})
    assert str(info.value).startswith(str(cfg)) and expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    cfg = sub / "config.yaml"
    cfg.write_text("policies_dir: pol\n")
    s = load_settings(cfg, env={})
    assert s.path(s.policies_dir) == sub / "pol"
    assert s.path("/abs/x") == Path("/abs/x")


def test_secret_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    cfg = write(tmp_path, "api_keys: {hmac_secret: {file: secret}}\n")
    s = load_settings(cfg, env={})
    assert s.api_keys.hmac_secret.resolve(Path(s.base_dir)) == "s3cret"
    monkeypatch.delenv("MGW_NOT_SET", raising=False)
    s2 = load_settings(write(tmp_path, "api_keys: {hmac_secret: {env: MGW_NOT_SET}}\n"), env={})
    with pytest.raises(LookupError, match="MGW_NOT_SET is not set"):
        s2.api_keys.hmac_secret.resolve()


def test_settings_are_frozen() -> None:
    s = load_settings(None, env={})
    with pytest.raises(ValueError, match="frozen"):
        s.workers = 2  # type: ignore[misc]


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, "listen:\n  port: 8080\n  port: 9090\n")
    with pytest.raises(SettingsError) as info:
        load_settings(cfg, env={})
    assert str(info.value) == f"{cfg}: line 3, column 3: invalid YAML: duplicate key 'port'"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(b"listen: {host: \xff}\n")
    with pytest.raises(SettingsError, match="not UTF-8 text"):
        load_settings(cfg, env={})
