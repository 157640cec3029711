import pytest

from vigface.config import ConfigError, TrainFRConfig, load_config


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("head:\n  margn: 0.4\n")
    with pytest.raises(ConfigError, match="head.margn"):
        load_config(p)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(p)


def test_bundled_config_loads_and_overrides():
    from pathlib import Path

    import vigface

    path = Path(vigface.__file__).parent / "configs" / "fr_lfw_small.yaml"
    cfg = load_config(path, overrides={"head.num_virtual": 0})
    assert isinstance(cfg, TrainFRConfig) and cfg.head.num_virtual == 0
    assert cfg.backbone.input_size == 56


def test_overrides_parse_and_validate(tmp_path):
    from vigface.config import parse_overrides

    assert parse_overrides(["head.num_virtual=0", "optim.name=adamw"]) == {
        "head.num_virtual": 0,
        "optim.name": "adamw",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="head.num_virtual"):
        load_config(p, overrides={"head.num_virtual": -4})


@pytest.mark.parametrize(
    "name",
    ["dit_lfw_demo.yaml", "dit_lfw_demo_finetune.yaml", "dit_s.yaml", "dit_b.yaml", "dit_l.yaml"],
)
def test_bundled_dit_configs_load(name):
    from pathlib import Path

    import vigface
    from vigface.config import TrainDiTConfig

    cfg = load_config(Path(vigface.__file__).parent / "configs" / name, TrainDiTConfig)
    assert cfg.model.sample_size % cfg.model.patch_size == 0
    # the virtual-prototype term is an extension: only the CPU demo's second run uses it
    assert (cfg.virtual_identity_fraction > 0) == (name == "dit_lfw_demo_finetune.yaml")


@pytest.mark.parametrize("name", ["upsampler_lfw_64.yaml", "upsampler_gpu_64_112.yaml"])
def test_bundled_upsampler_configs_load_and_build(name):
    from pathlib import Path

    import vigface
    from vigface.config import TrainUpsamplerConfig
    from vigface.generator.upsampler import FaceUpsampler

    cfg = load_config(Path(vigface.__file__).parent / "configs" / name, TrainUpsamplerConfig)
    m = FaceUpsampler(**cfg.model.model_dump())
    import torch

    with torch.no_grad():
        c = cfg.crop_size
        out = m(
            torch.zeros(1, 3, c, c), torch.tensor([3]), torch.zeros(1, 512), torch.zeros(1, 3, c, c)
        )
    assert out.shape == (1, 3, c, c)
