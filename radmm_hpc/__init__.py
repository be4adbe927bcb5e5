"""radmm_hpc: training residual networks across MPI ranks without end-to-end backpropagation."""

__version__ = "0.1.0"


def load(path: str, preprocess: bool = True):
    """A trained model as a torch.nn.Module: `radmm_hpc.load("runs/<run>")` (a run directory or
    its model.h5). With preprocess=True it takes raw input rows and returns predictions in the
    target's units (regression) or logits (classification); see modelio.load_module."""
    from radmm_hpc.modelio import load_module
    return load_module(path, preprocess=preprocess)
