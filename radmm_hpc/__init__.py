"""radmm_hpc: training residual networks across MPI ranks without end-to-end backpropagation."""

__version__ = "0.1.0"
