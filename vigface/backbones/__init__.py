"""Face-recognition backbones."""

from vigface.backbones.iresnet import DEPTHS, AlignedCropEmbedder, IResNet

__all__ = ["DEPTHS", "AlignedCropEmbedder", "IResNet", "build_backbone"]


def build_backbone(cfg) -> IResNet:
    """Build a backbone from a :class:`vigface.config.BackboneConfig`."""
    layers = tuple(cfg.layers) if cfg.layers else DEPTHS[cfg.depth]
    return IResNet(
        layers=layers,
        widths=tuple(cfg.widths),
        input_size=cfg.input_size,
        num_features=cfg.embedding_dim,
        dropout=cfg.dropout,
    )
