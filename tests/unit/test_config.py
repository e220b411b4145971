"""batchpool.toml loading: errors read `file:line: field: message`, like spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpool.config import find_config, load_config, parse_config_text
from batchpool.errors import ConfigError


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No dev-cluster file, no $BATCHPOOL_CONFIG, no ./batchpool.toml from the caller."""
    monkeypatch.setenv("BATCHPOOL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BATCHPOOL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "bp.toml")
    return caught.value


def load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bp.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_command_provider_is_refused_at_load_with_file_and_line() -> None:
    error = error_of('[pools.lab]\nhosts = ["a"]\n\n[pools.burst]\nprovider = "command"\n'
                     'names = "vm[01-16]"\n')
    assert (error.file, error.line, error.field) == ("bp.toml", 5, "pools.burst.provider")
    assert "not implemented yet" in error.message
    assert str(error).startswith("bp.toml:5: pools.burst.provider: provider \"command\"")


def test_default_pool_must_name_a_pool(tmp_path: Path) -> None:
    message = load_error(tmp_path, '# lab pools\ndefault_pool = "gpu"\n[pools.lab]\n'
                                   'hosts = ["a"]\n')
    assert message == (f"{tmp_path / 'bp.toml'}:2: default_pool: no pool named 'gpu' "
                       "(known pools: lab, local)")


def test_default_pool_naming_a_defined_pool_loads(tmp_path: Path) -> None:
    path = tmp_path / "bp.toml"
    path.write_text('default_pool = "lab"\n[pools.lab]\nhosts = ["a"]\n')
    config = load_config(path)
    assert config.pool(None).name == "lab"
    assert config.source == str(path) and config.pools["lab"].source == str(path)
    assert config.pools["local"].source is None


@pytest.mark.parametrize(("text", "expected"), [
    ('[pools.lab]\nhosts = ["a"]\nslots_per_node = 0\n',
     'bp.toml:3: pools.lab.slots_per_node: must be an integer >= 1 or "auto", got 0'),
    ('[pools.lab]\nslots_per_node = "many"\n',
     "bp.toml:2: pools.lab.slots_per_node: must be an integer >= 1 or \"auto\", got 'many'"),
    ('[pools.lab]\nhosts = ["a"]\nhost_key_policy = "yes"\n',
     "bp.toml:3: pools.lab.host_key_policy: expected 'strict' or 'accept-new', got 'yes'"),
    ('[pools.lab]\nhostz = ["a"]\n',
     "bp.toml:2: pools.lab.hostz: unknown setting (did you mean 'hosts'?)"),
    ('[pools.lab]\nmin_nodes = -1\n',
     "bp.toml:2: pools.lab.min_nodes: must be at least 0, got -1"),
    ('[pools.lab]\nhosts = "node1"\n',
     "bp.toml:2: pools.lab.hosts: expected a list, got 'node1'"),
    ('[pools.lab]\nidle_timeout = "5x"\n',
     "bp.toml:2: pools.lab.idle_timeout: bad duration '5x': use a number of seconds or "
     "units ms/s/m/h/d, e.g. '90s', '10m', '1h30m'"),
    ('[pools.lab]\nidle_timeout = [1]\n',
     "bp.toml:2: pools.lab.idle_timeout: expected a duration like '90s' or '5m', or "
     "seconds, got list"),
    ('source = "x.toml"\n', "bp.toml:1: source: unknown setting"),
    ('default_pool = 3\n', "bp.toml:1: default_pool: expected a string, got 3"),
    ('[pools.lab]\nname = "other"\n',
     "bp.toml:2: pools.lab.name: unknown setting: a pool is named by its table, [pools.NAME]"),
    ('pools = 3\n', "bp.toml:1: pools: expected a table of pools ([pools.NAME]), got int"),
])
def test_validation_errors_are_located_and_worded_like_spec_errors(text: str,
                                                                   expected: str) -> None:
    message = str(error_of(text))
    assert message == expected
    assert "Value error" not in message and "Input should be" not in message


def test_the_problem_nearest_the_top_is_reported() -> None:
    error = error_of('[pools.b]\nhosts = ["a"]\nslots_per_node = 0\n'
                     '[pools.a]\nhost_key_policy = "no"\n')
    assert (error.line, error.field) == (3, "pools.b.slots_per_node")


def test_toml_syntax_error_has_the_line() -> None:
    error = error_of('[pools.lab]\nhosts = ["a"\n')
    assert error.file == "bp.toml" and error.line == 2
    assert error.message.startswith("TOML syntax error:")


def test_missing_batchpool_config_file_says_it_is_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHPOOL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"^\$BATCHPOOL_CONFIG names .*nope.toml, which "
                                          r"does not exist$"):
        find_config()
    with pytest.raises(ConfigError, match=r"^config file .*other.toml does not exist$"):
        find_config(tmp_path / "other.toml")
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        find_config(tmp_path)


def test_no_config_means_the_local_pool(tmp_path: Path) -> None:
    config = load_config()
    assert config.source is None and list(config.pools) == ["local"]
    assert config.pool(None).provider == "local"
