import pytest

from engine.core.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    config_hash,
    load_config_file,
    parse_set,
)
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
    # A near miss names the preset meant; a catalogue too long for one line points to the list.
    with pytest.raises(ConfigError, match=r"'backdoor-dem' \(did you mean 'backdoor-demo'\?\)"
                                          r".*in all: `fedsct presets` lists them\)$"):
        build_config("backdoor-dem")


def test_config_file(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("federation:\n  rounds: 3\n  aggregator: fedmedian\n")
    cfg = build_config("smoke", file=f, sets=["federation.rounds=4"])
    assert cfg.federation.rounds == 4 and cfg.federation.aggregator == "fedmedian"
    (tmp_path / "bad.yaml").write_text("federation: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(file=tmp_path / "bad.yaml")


def test_config_hash_ignores_the_label_and_default_values():

    a = build_config("smoke")
    b = build_config("smoke", sets=["name=other", "federation.optimizer=adam"])  # the default
    c = build_config("smoke", sets=["federation.optimizer=sgd"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


# --------------------------------------------------------------------------- input hardening


def _patient(folder, mr="mr.nii.gz", ct="ct.nii.gz"):
    folder.mkdir(parents=True)
    for name in (mr, ct):
        if name:
            (folder / name).write_bytes(b"")  # names only: validation reads no image
    return folder


def test_legitimate_inputs_keep_their_types(tmp_path):
    patient = _patient(tmp_path / "1BA900")
    cfg = build_config("whatif", sets=[
        "model.channels=[8,16,32]", "federation.lr=3e-3", "attacks.inversion.target_round=first",
        "federation.rounds=12", "federation.server_view_rounds=[11,12]",
        f"data.whatif_patient={patient}", "defenses.dp.clip_norm=5", "data.image_size=32"])
    assert cfg.model.channels == [8, 16, 32]
    assert cfg.federation.lr == 0.003 and isinstance(cfg.federation.lr, float)
    assert cfg.defenses.dp.clip_norm == 5.0 and isinstance(cfg.defenses.dp.clip_norm, float)
    assert cfg.attacks.inversion.target_round == "first"
    assert cfg.federation.server_view_rounds == [11, 12]
    assert cfg.data.whatif_patient == str(patient)


@pytest.mark.parametrize(("raw", "value"), [
    ("3e-3", 0.003), ("1e5", 100000.0), ("1.5", 1.5), (".5", 0.5), ("-2", -2), ("0", 0),
    ("true", True), ("False", False), ("null", None), ("~", None), ("'5'", "5"),
    # YAML 1.1 would read these as 16, 8, 90, 1000, true and false: they stay text here.
    ("0x10", "0x10"), ("010", "010"), ("1:30", "1:30"), ("1_000", "1_000"), ("yes", "yes"),
    ("off", "off"), ("2024-01-01", "2024-01-01"), ("last:3", "last:3"), ("/a/b", "/a/b"),
])
def test_set_values_are_read_as_yaml_1_2(raw, value):
    assert parse_set(f"x={raw}") == {"x": value}


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"federation": {"rounds": True}}, r"federation\.rounds = true .* not a number"),
    ({"federation": {"rounds": "5"}}, r"federation\.rounds = '5' .*text is not a number"),
    ({"federation": {"rounds": 5.0}}, r"federation\.rounds = 5\.0 .* whole number"),
    ({"federation": {"lr": False}}, r"federation\.lr = false"),
    ({"defenses": {"secure_aggregation": 1}}, r"secure_aggregation = 1 .* true or false"),
    ({"federation": {"lr": float("nan")}}, r"finite number"),
    ({"name": "a\x1b[2Jb"}, r"control character"),
])
def test_types_are_strict_for_every_source(overrides, pattern):
    """Presets and dashboard overrides are Python values: the same strict rules apply."""
    with pytest.raises(ConfigError, match=pattern):
        build_config("smoke", overrides=overrides)


def test_errors_are_one_short_line_naming_each_key():
    with pytest.raises(ConfigError) as err:
        build_config(sets=["federation.rounds=0", "data.centers=x", "name=" + "y" * 10_000,
                           "model.norm=z", "federation.lr=-1"])
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= 500
    # In the schema's order: name, data, model, then federation (cut off, counted).
    assert "name = 'yyy" in msg and "data.centers = 'x'" in msg and "model.norm = 'z'" in msg
    assert msg.endswith("(and 2 more)")


@pytest.mark.parametrize(("content", "pattern"), [
    ("a: &x 1\nb: *x\n", "anchors and aliases"),
    ("federation:\n  rounds: 3\n  rounds: 4\n", r"duplicate key federation\.rounds"),
    ("a: " + "[" * 30 + "]" * 30, "nested more than 20"),
    ("federation: {rounds: !!int '3'}", "tags"),
    ("", "is empty"),
    ("- a\n", "not a list"),
])
def test_config_file_refusals(tmp_path, content, pattern):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=pattern):
        load_config_file(f)


def test_config_file_size_is_capped(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("name: x\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        load_config_file(f)
    f.write_text("federation:\n  rounds: 3\n# padding\n")
    assert load_config_file(f) == {"federation": {"rounds": 3}}


def test_data_root_must_hold_a_patient_folder(tmp_path):
    root = tmp_path / "brain"
    _patient(root / "1BA001")
    _patient(root / "1BB001", mr="mr.nii", ct="ct.nii")
    (root / "overview").mkdir()
    cfg = build_config(sets=["data.source=synthrad", f"data.path={root}", "data.centers=2"])
    assert cfg.data.path == str(root)
    with pytest.raises(ConfigError, match="did you mean its brain subfolder"):
        build_config(sets=["data.source=nifti", f"data.path={tmp_path}"])
    lonely = tmp_path / "lonely"
    _patient(lonely / "9ZZ777", ct=None)  # no CT: not a patient folder
    with pytest.raises(ConfigError, match="holds no patient folder") as err:
        build_config(sets=["data.source=nifti", f"data.path={lonely}"])
    assert "9ZZ777" not in str(err.value)  # the folder's contents are not listed
    with pytest.raises(ConfigError, match=r"data\.whatif_patient = .* lacks ct\.nii\.gz"):
        build_config(sets=[f"data.whatif_patient={lonely / '9ZZ777'}"])


def test_allowed_values_outside_the_config_are_the_configs_own() -> None:
    """The U-Net factory and the inversion attack take the config's values from its types:
    a value the config allows is accepted there, one it refuses is refused there too."""
    from typing import get_args

    from engine.attacks.inversion import GradientInversion
    from engine.core.config import (
        AdamMode,
        InversionDistance,
        InversionInit,
        InversionPrior,
        ModelConfig,
        Norm,
    )
    from engine.learning.model import NORMS, build_unet

    assert NORMS == get_args(Norm) and ModelConfig.model_fields["norm"].annotation == Norm
    for kind, name in ((InversionDistance, "distance"), (InversionInit, "init"),
                       (InversionPrior, "prior"), (AdamMode, "adam")):
        for value in get_args(kind):
            GradientInversion(**{name: value})
        with pytest.raises(ValueError, match=f"GradientInversion {name} = 'other'"):
            GradientInversion(**{name: "other"})
    with pytest.raises(ValueError, match="model.norm = 'layer' is not allowed"):
        build_unet((4, 8), "layer")
