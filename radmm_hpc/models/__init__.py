"""Models. `build_model` is the one place that turns `model.arch` into an nn.Module; methods that
train a whole network by gradients (backprop, A-SGD) build it here."""

import torch

from radmm_hpc.models.fcresnet import FCResNet, activation_fn, init_weights, split_layers

FC_ARCHS = ("fcresnet", "mlp")   # weight-list networks (modelio's FCResNet layout); others are ResNets


def build_model(cfg, ds, generator: torch.Generator, dtype=torch.float32, device="cpu") -> torch.nn.Module:
    """The network named by cfg.model.arch for data set `ds`, seeded by `generator` (the same
    seed gives the same parameters on every rank)."""
    m = cfg.model
    if m.arch in FC_ARCHS:   # mlp: the same layers without the skip connections
        weights = init_weights(ds.d_in, m.width, m.depth, ds.d_out, m.input_bias, m.init_scale,
                               generator, dtype, device)
        return FCResNet(weights, m.activation, m.input_bias, residual=m.arch == "fcresnet")
    if m.arch.startswith("resnet"):
        from radmm_hpc.models.resnet import build_resnet
        return build_resnet(m, ds, generator, dtype, device)
    raise KeyError(m.arch)


def layer_count(m) -> int:
    """L of the configured network: hidden layers and the output layer (FCResNet, MLP:
    depth + 1), or the stem, the residual blocks and the head (ResNets: 3n + 2)."""
    from radmm_hpc.models.resnet import parse_arch
    spec = parse_arch(m.arch) if m.arch not in FC_ARCHS else None
    return m.depth + 1 if spec is None else 3 * spec[1] + 2


__all__ = ["FC_ARCHS", "FCResNet", "activation_fn", "build_model", "init_weights", "layer_count",
           "split_layers"]
