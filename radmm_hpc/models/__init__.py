from radmm_hpc.models.fcresnet import FCResNet, activation_fn, init_weights, split_layers

__all__ = ["FCResNet", "activation_fn", "init_weights", "split_layers"]
