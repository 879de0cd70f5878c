import pytest

from curation.core.config import ConfigError, ConfigModel, load_config


class Inner(ConfigModel):
    batch_size: int = 8
    device: str = "cpu"


class Outer(ConfigModel):
    name: str = "x"
    score: Inner = Inner()


def test_unknown_key_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("score:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"score\.batch_sise: unknown key"):
        load_config(Outer, p)


def test_wrong_type_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("score:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"score\.batch_size"):
        load_config(Outer, p)


def test_overrides_apply_and_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\n")
    cfg = load_config(Outer, p, ["score.batch_size=256", "name=b"])
    assert cfg.score.batch_size == 256 and cfg.name == "b"
    with pytest.raises(ConfigError, match=r"score\.nope"):
        load_config(Outer, p, ["score.nope=1"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(Outer, p, ["no_equals_sign"])


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)
