import pytest

from engine.core.config import ConfigError, parse_set
from engine.orchestration.presets import PRESETS, build_config


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate(name):
    assert build_config(name).federation.rounds >= 1


@pytest.mark.parametrize(
    ("sets", "pattern"),
    [
        (["federation.rounds=0"], r"federation\.rounds = 0 is not allowed"),
        (["data.image_size=16"], r"data\.image_size = 16"),
        (["federation.aggregator=median"], r"federation\.aggregator = 'median'.*'fedmedian'"),
        (["federation.aggregator=krum"], r"needs data\.centers > 2f\+2 = 4, got 4"),
        (["federation.aggregator=bulyan"], r"data\.centers ≥ 4f\+3 = 7"),
        (["defenses.secure_aggregation=true", "federation.aggregator=fedmedian"],
         r"server only learns the sum"),
        (["federation.aggregator=fedprox"], r"fedprox_mu > 0"),
        (["data.image_size=68"], r"divisible by 8"),
        (["data.source=synthrad"], r"data\.path is required"),
        (["data.centers=1", "defenses.secure_aggregation=true"], r"needs data\.centers ≥ 2"),
        (["federation.roundz=3"], r"federation\.roundz: unknown key"),
        (["federation.server_view_rounds=[0, 99]"], r"outside 1…15"),
        (["defenses.prune_fraction=1.0"], r"defenses\.prune_fraction = 1\.0"),
        (["attacks.inversion.prior=gan"], r"attacks\.inversion\.prior = 'gan'.*'pca'"),
        (["attacks.inversion.components=0"], r"attacks\.inversion\.components = 0"),
    ],
)
def test_bad_values_name_key_value_and_rule(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config("demo", sets=sets)


def test_set_parses_yaml_values():
    assert parse_set("model.channels=[8, 16]") == {"model": {"channels": [8, 16]}}
    assert parse_set("defenses.dp.enabled=true") == {"defenses": {"dp": {"enabled": True}}}
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_set("rounds")


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="available: smoke, demo, paper"):
        build_config("nope")


def test_config_file(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("federation:\n  rounds: 3\n  aggregator: fedmedian\n")
    cfg = build_config("smoke", file=f, sets=["federation.rounds=4"])
    assert cfg.federation.rounds == 4 and cfg.federation.aggregator == "fedmedian"
    (tmp_path / "bad.yaml").write_text("federation: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(file=tmp_path / "bad.yaml")


def test_config_hash_ignores_the_label_and_default_values():
    from engine.core.config import config_hash

    a = build_config("smoke")
    b = build_config("smoke", sets=["name=other", "federation.optimizer=adam"])  # the default
    c = build_config("smoke", sets=["federation.optimizer=sgd"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
