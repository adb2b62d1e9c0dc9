from pathlib import Path

import pytest

from mlip.config import load_settings
from mlip.errors import ConfigError, InputError
from mlip.refs import RefKind, parse_ref


@pytest.mark.parametrize(
    "text, kind, name, alias, version",
    [
        ("mace-mp:small", RefKind.FOUNDATION, "small", None, None),
        ("mace-mp:medium-mpa-0", RefKind.FOUNDATION, "medium-mpa-0", None, None),
        ("models:/lipscl@production", RefKind.REGISTRY, "lipscl", "production", None),
        ("models:/lipscl/3", RefKind.REGISTRY, "lipscl", None, 3),
        ("bundled:lipscl-demo", RefKind.BUNDLED, "lipscl-demo", None, None),
    ],
)
def test_parse_named_refs(text, kind, name, alias, version):
    ref = parse_ref(text)
    assert (ref.kind, ref.name, ref.alias, ref.version) == (kind, name, alias, version)
    assert ref.text == text
    assert parse_ref(ref.text) == ref


def test_parse_path_ref(tmp_path):
    ref = parse_ref(str(tmp_path / "a.model"))
    assert ref.kind is RefKind.PATH and ref.path == (tmp_path / "a.model").resolve()
    assert parse_ref("relative/b.model").path == Path("relative/b.model").resolve()


@pytest.mark.parametrize("bad", ["", "models:/x", "models:/x@", "models:/x/abc", "mace-mp:", "s3://bucket/x.model", "bundled:../etc"])
def test_malformed_refs_name_the_forms(bad):
    with pytest.raises(InputError, match="mace-mp:<name>"):
        parse_ref(bad)


def test_settings_defaults_under_home(isolated_home):
    s = load_settings()
    assert s.home == isolated_home.resolve()
    assert s.db_url == f"sqlite:///{isolated_home.resolve() / 'ionscreen.db'}"
    assert s.mlflow_tracking_uri.startswith("sqlite:///") and str(isolated_home.resolve()) in s.mlflow_tracking_uri
    assert s.trust_store_path.parent == isolated_home.resolve()


def test_settings_file_then_env_precedence(isolated_home, monkeypatch):
    isolated_home.mkdir(parents=True)
    (isolated_home / "config.toml").write_text(
        'db_url = "postgresql://u@127.0.0.1/test"\ndevice = "cpu"\ntrust_registry = false\n'
    )
    s = load_settings()
    assert s.db_url == "postgresql://u@127.0.0.1/test" and s.device == "cpu" and s.trust_registry is False
    monkeypatch.setenv("IONSCREEN_DB_URL", "sqlite:////tmp/x.db")
    s = load_settings()
    assert s.db_url == "sqlite:////tmp/x.db" and s.sources["db_url"] == "env"
    assert s.sources["device"].endswith("config.toml")


def test_settings_errors_name_the_problem(isolated_home, monkeypatch):
    isolated_home.mkdir(parents=True)
    cfg = isolated_home / "config.toml"
    cfg.write_text('db_ulr = "x"\n')
    with pytest.raises(ConfigError, match="db_ulr"):
        load_settings()
    cfg.write_text("db_url = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()
    cfg.unlink()
    monkeypatch.setenv("IONSCREEN_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="IONSCREEN_DEVICE"):
        load_settings()
    monkeypatch.delenv("IONSCREEN_DEVICE")
    monkeypatch.setenv("IONSCREEN_CONFIG", str(isolated_home / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()
