"""The experiment config: one validated schema for the CLI, the dashboard and the presets.

A bad value fails at validation with the key's dotted name, the value given and what is
allowed (:class:`ConfigError`, one short line). Keys are a public interface: extend, never
rename.

Types are strict (true is not 1, "5" is not 5). Config files and ``--set`` values are read as
YAML 1.2 with limits checked while parsing: no anchors, aliases or tags, no duplicate keys,
bounded size, depth and number of values.

The package's parts: ``schema`` (the sections, the cross-key rules, the hash), ``attacks``
(the attacks' sections), ``section`` (the sections' strict base), ``echo`` (how input is
quoted in messages), ``data_folders`` (cheap checks of the folders a config names),
``validation`` (a dict to a config, or one line per bad key) and ``yaml_input`` (reading
files and ``--set`` values). Import from the package itself.
"""

from engine.core.config.attacks import (
    AdamMode,
    AttacksConfig,
    BackdoorConfig,
    DPAuditConfig,
    InversionConfig,
    InversionDistance,
    InversionInit,
    InversionPrior,
    MembershipConfig,
    PoisoningConfig,
)
from engine.core.config.echo import MAX_ECHO, MAX_MESSAGE
from engine.core.config.schema import (
    AGGREGATORS,
    ROBUST_AGGREGATORS,
    ConfigError,
    DataConfig,
    DefensesConfig,
    DPConfig,
    EvaluationConfig,
    ExperimentConfig,
    FederationConfig,
    ModelConfig,
    Norm,
    config_hash,
)
from engine.core.config.validation import deep_merge, validate_config
from engine.core.config.yaml_input import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_SET_CHARS,
    config_from,
    load_config_file,
    parse_set,
)

__all__ = [
    "AGGREGATORS", "AdamMode", "InversionDistance", "InversionInit", "InversionPrior", "Norm",
    "MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_ECHO", "MAX_MESSAGE", "MAX_NODES",
    "MAX_SET_CHARS", "ROBUST_AGGREGATORS", "AttacksConfig", "BackdoorConfig", "ConfigError",
    "DPAuditConfig",
    "DPConfig", "DataConfig", "DefensesConfig", "EvaluationConfig", "ExperimentConfig",
    "FederationConfig", "InversionConfig", "MembershipConfig", "ModelConfig",
    "PoisoningConfig", "config_from", "config_hash", "deep_merge", "load_config_file",
    "parse_set", "validate_config",
]
