from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest
import yaml

from xvl.configlib import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)

VALIDATE_CALLS: list[str] = []


@dataclass
class VisionCfg:
    name: str = "vit_base_patch16_224"
    pretrained: bool = True
    image_size: int = 224


@dataclass
class TextCfg:
    name: str = "xlm-roberta-base"
    max_length: int = 64
    pool: Literal["cls", "mean"] = "cls"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self):
        VALIDATE_CALLS.append("text")
        if self.max_length <= 0:
            raise ConfigError("model.text.max_length must be positive")


@dataclass
class ModelCfg:
    vision: VisionCfg = field(default_factory=VisionCfg)
    text: TextCfg = field(default_factory=TextCfg)
    embed_dim: int = 512
    projection: Optional[str] = None
    temperature: float = 0.07


@dataclass
class TrainCfg:
    lr: float = 1e-3
    steps: int = 1000
    betas: tuple[float, ...] = (0.9, 0.999)
    warmup: Optional[int] = None
    seed: int = 0


@dataclass
class DataCfg:
    languages: list[str] = field(default_factory=lambda: ["en"])
    weights: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32


@dataclass
class Cfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    data: DataCfg = field(default_factory=DataCfg)
    run_name: str = "run"
    notes: Any = None

    def validate(self):
        VALIDATE_CALLS.append("root")
        if self.train.steps < 0:
            raise ConfigError("train.steps must be >= 0")


def _custom():
    return Cfg(
        model=ModelCfg(
            vision=VisionCfg(name="vit_tiny_patch16_224", pretrained=False, image_size=96),
            text=TextCfg(max_length=32, pool="mean", extra={"hidden_size": 64, "layers": [1, 2]}),
            projection="linear",
            temperature=0.05,
        ),
        train=TrainCfg(lr=3e-4, steps=10, betas=(0.8, 0.9), warmup=5),
        data=DataCfg(languages=["en", "de"], weights={"en": 1.0, "de": 0.5}),
        run_name="demo",
        notes={"k": [1, "a"]},
    )


# ------------------------------------------------------------------ from_dict / to_dict


def test_round_trip():
    cfg = _custom()
    d = to_dict(cfg)
    assert d["train"]["betas"] == [0.8, 0.9]  # tuples become lists
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    back = from_dict(Cfg, d)
    assert back == cfg
    assert isinstance(back.train.betas, tuple)
    assert from_dict(Cfg, to_dict(Cfg())) == Cfg()


def test_defaults_for_missing_keys():
    cfg = from_dict(Cfg, {"model": {"text": {"max_length": 16}}, "train": {}})
    assert cfg.model.text.max_length == 16
    assert cfg.model.text.name == "xlm-roberta-base"
    assert cfg.model.vision == VisionCfg()
    assert cfg.train == TrainCfg()
    assert from_dict(Cfg, {}) == Cfg()
    assert from_dict(Cfg, None) == Cfg()


def test_unknown_top_level_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' — did you mean 'train'\?"):
        from_dict(Cfg, {"trian": {"lr": 0.1}})


def test_unknown_nested_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.txt' — did you mean 'model\.text'\?"):
        from_dict(Cfg, {"model": {"txt": {}}})
    with pytest.raises(ConfigError, match=r"'model\.text\.max_lenght' — did you mean 'model\.text\.max_length'"):
        from_dict(Cfg, {"model": {"text": {"max_lenght": 3}}})


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as ei:
        from_dict(Cfg, {"train": {"zzzzzz": 1}})
    msg = str(ei.value)
    assert "'train.zzzzzz'" in msg
    for k in ("lr", "steps", "betas", "warmup", "seed"):
        assert f"'{k}'" in msg


@pytest.mark.parametrize(
    "data, key, expected",
    [
        ({"train": {"steps": "ten"}}, "train.steps", "int"),
        ({"train": {"steps": True}}, "train.steps", "int"),
        ({"train": {"lr": False}}, "train.lr", "float"),
        ({"train": {"steps": 1.5}}, "train.steps", "int"),
        ({"model": {"embed_dim": None}}, "model.embed_dim", "int"),
        ({"run_name": None}, "run_name", "str"),
        ({"run_name": 5}, "run_name", "str"),
        ({"model": {"vision": {"pretrained": "yes"}}}, "model.vision.pretrained", "bool"),
        ({"data": {"languages": ["en", 3]}}, "data.languages[1]", "str"),
        ({"data": {"languages": "en"}}, "data.languages", "list[str]"),
        ({"data": {"weights": {"en": "heavy"}}}, "data.weights.en", "float"),
        ({"train": {"betas": [0.9, "x"]}}, "train.betas[1]", "float"),
        ({"model": {"vision": 3}}, "model.vision", "VisionCfg"),
    ],
)
def test_type_errors(data, key, expected):
    with pytest.raises(ConfigError) as ei:
        from_dict(Cfg, data)
    msg = str(ei.value)
    assert f"'{key}'" in msg
    assert expected in msg


def test_type_error_message_shows_value():
    with pytest.raises(ConfigError, match=r"'train\.steps'.*expected int.*'ten'"):
        from_dict(Cfg, {"train": {"steps": "ten"}})


def test_literal_not_allowed_lists_values():
    with pytest.raises(ConfigError) as ei:
        from_dict(Cfg, {"model": {"text": {"pool": "max"}}})
    msg = str(ei.value)
    assert "'model.text.pool'" in msg and "'max'" in msg
    assert "'cls'" in msg and "'mean'" in msg
    assert from_dict(Cfg, {"model": {"text": {"pool": "mean"}}}).model.text.pool == "mean"


def test_optional_and_any():
    cfg = from_dict(Cfg, {"train": {"warmup": None}, "model": {"projection": "mlp"}, "notes": [1, {"a": None}]})
    assert cfg.train.warmup is None
    assert cfg.model.projection == "mlp"
    assert cfg.notes == [1, {"a": None}]
    with pytest.raises(ConfigError, match="'train.warmup'"):
        from_dict(Cfg, {"train": {"warmup": "soon"}})


def test_int_accepted_for_float():
    cfg = from_dict(Cfg, {"train": {"lr": 1, "betas": [1, 0.5]}, "data": {"weights": {"en": 2}}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (1.0, 0.5) and all(isinstance(b, float) for b in cfg.train.betas)
    assert isinstance(cfg.data.weights["en"], float)


def test_scientific_notation_string_is_float():
    # YAML 1.1 parses '3e-4' (no dot) as a string
    assert yaml.safe_load("lr: 3e-4") == {"lr": "3e-4"}
    cfg = from_dict(Cfg, yaml.safe_load("train:\n  lr: 3e-4\n"))
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)


def test_from_dict_prefix():
    with pytest.raises(ConfigError, match=r"'model\.vision\.image_size'"):
        from_dict(VisionCfg, {"image_size": "big"}, prefix="model.vision")


# ------------------------------------------------------------------ overrides


def test_overrides_nested_and_types():
    out = apply_overrides(
        {"train": {"steps": 5}},
        [
            "train.lr=3e-4",
            "train.steps=1e5",
            "model.vision.name=vit_tiny_patch16_224",
            "model.vision.pretrained=false",
            "data.languages=[en,de,no]",
            "run_name=123",
            "train.warmup=null",
            "train.betas=[0.9, 1e-2]",
        ],
        Cfg,
    )
    assert out["train"]["lr"] == pytest.approx(3e-4) and isinstance(out["train"]["lr"], float)
    assert out["train"]["steps"] == 100000 and isinstance(out["train"]["steps"], int)
    assert out["model"]["vision"] == {"name": "vit_tiny_patch16_224", "pretrained": False}
    assert out["data"]["languages"] == ["en", "de", "no"]  # 'no' stays a string for list[str]
    assert out["run_name"] == "123"
    assert out["train"]["warmup"] is None
    assert out["train"]["betas"] == [0.9, 0.01]
    cfg = from_dict(Cfg, out)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.betas == (0.9, 0.01)


def test_overrides_do_not_mutate_input():
    data = {"train": {"lr": 0.1}}
    out = apply_overrides(data, ["train.lr=0.2"], Cfg)
    assert data == {"train": {"lr": 0.1}}
    assert out == {"train": {"lr": 0.2}}


def test_override_dict_fields():
    out = apply_overrides({}, ["model.text.extra={hidden_size: 64}"], Cfg)
    assert out["model"]["text"]["extra"] == {"hidden_size": 64}
    out = apply_overrides(out, ["model.text.extra.num_layers=2", "model.text.extra.hidden_size=128"], Cfg)
    assert out["model"]["text"]["extra"] == {"hidden_size": 128, "num_layers": 2}
    # dict[str, float] values get the float fix too
    out = apply_overrides(out, ["data.weights.en=1e-1", "data.weights={de: 2e-1}"], Cfg)
    assert out["data"]["weights"] == {"de": pytest.approx(0.2)}
    out = apply_overrides(out, ["data.weights.fr=1"], Cfg)
    cfg = from_dict(Cfg, out)
    assert cfg.model.text.extra == {"hidden_size": 128, "num_layers": 2}
    assert cfg.data.weights == {"de": pytest.approx(0.2), "fr": 1.0}


def test_override_section_with_mapping_merges():
    out = apply_overrides({"model": {"vision": {"name": "a", "image_size": 96}}}, ["model.vision={pretrained: false}"], Cfg)
    assert out["model"]["vision"] == {"name": "a", "image_size": 96, "pretrained": False}


@pytest.mark.parametrize(
    "override, bad, suggestion",
    [
        ("trian.lr=0.1", "trian", "train"),
        ("train.lrr=0.1", "train.lrr", "train.lr"),
        ("model.txt.extra.a=1", "model.txt", "model.text"),
        ("model.vision.nmae=x", "model.vision.nmae", "model.vision.name"),
    ],
)
def test_override_unknown_path_suggests(override, bad, suggestion):
    with pytest.raises(ConfigError) as ei:
        apply_overrides({}, [override], Cfg)
    msg = str(ei.value)
    assert f"unknown config key '{bad}'" in msg
    assert f"did you mean '{suggestion}'?" in msg


def test_override_into_scalar_field_rejected():
    with pytest.raises(ConfigError, match=r"'train\.lr\.x'"):
        apply_overrides({}, ["train.lr.x=1"], Cfg)


@pytest.mark.parametrize("bad", ["train.lr", "train.lr 0.1", "=3", ".lr=1", "train..lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="malformed override"):
        apply_overrides({}, [bad], Cfg)


def test_override_type_errors():
    with pytest.raises(ConfigError, match=r"'train\.steps'.*override"):
        apply_overrides({}, ["train.steps=abc"], Cfg)
    with pytest.raises(ConfigError, match=r"'model\.text\.pool'.*'max'"):
        apply_overrides({}, ["model.text.pool=max"], Cfg)
    with pytest.raises(ConfigError, match=r"'train\.lr'"):
        apply_overrides({}, ["train.lr=[1"], Cfg)


# ------------------------------------------------------------------ load / save


def test_load_config_yaml_with_scientific_notation(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n  steps: 7\nmodel:\n  text:\n    pool: mean\n")
    cfg = load_config(Cfg, str(p))
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7
    assert cfg.model.text.pool == "mean"
    assert cfg.model.vision == VisionCfg()


def test_load_config_overrides_and_base(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 7\n")
    cfg = load_config(
        Cfg,
        p,
        overrides=["train.lr=2e-5", "model.text.extra={hidden_size: 64}"],
        base={"train": {"steps": 1, "seed": 3}, "run_name": "base"},
    )
    assert cfg.train.steps == 7  # file beats base
    assert cfg.train.seed == 3 and cfg.run_name == "base"  # base kept where file is silent
    assert cfg.train.lr == pytest.approx(2e-5)
    assert cfg.model.text.extra == {"hidden_size": 64}
    assert load_config(Cfg) == Cfg()


def test_load_config_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "missing.yaml"
    with pytest.raises(ConfigError, match="not found") as ei:
        load_config(Cfg, str(missing))
    assert str(missing) in str(ei.value)


def test_load_config_yaml_syntax_error_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError) as ei:
        load_config(Cfg, str(p))
    assert str(p) in str(ei.value)


def test_load_config_non_mapping_and_empty_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, str(p))
    e = tmp_path / "empty.yaml"
    e.write_text("")
    assert load_config(Cfg, str(e)) == Cfg()


def test_load_config_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  txt: {}\n")
    with pytest.raises(ConfigError, match=r"did you mean 'model\.text'"):
        load_config(Cfg, str(p))


def test_validate_hook_called_children_first():
    VALIDATE_CALLS.clear()
    load_config(Cfg)
    assert VALIDATE_CALLS == ["text", "root"]
    with pytest.raises(ConfigError, match="max_length must be positive"):
        load_config(Cfg, overrides=["model.text.max_length=0"])
    with pytest.raises(ConfigError, match="train.steps must be >= 0"):
        load_config(Cfg, overrides=["train.steps=-1"])


def test_save_load_round_trip(tmp_path):
    cfg = _custom()
    p = tmp_path / "sub" / "config.yaml"
    save_config(cfg, str(p))
    assert p.exists()
    assert [f for f in os.listdir(p.parent) if f != "config.yaml"] == []  # no tmp leftovers
    text = p.read_text()
    assert text.index("model:") < text.index("train:") < text.index("data:")  # field order kept
    assert load_config(Cfg, str(p)) == cfg
    # overwrite in place
    cfg2 = Cfg(run_name="second")
    save_config(cfg2, str(p))
    assert load_config(Cfg, str(p)) == cfg2
