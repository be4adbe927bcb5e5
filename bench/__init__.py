"""Measurements, run as modules from the repository root on the installed package, through the
launcher the tests use (tests/support/launch.py):

    perf/      speed, memory and bytes: python -m bench.perf.scaling, .checkpoint, .mac_speedup,
               .radmm_conv_cpu, .radmm_conv_gpu, .async_modes, .trgl
    studies/   what the methods reach and how the defaults were chosen: python -m
               bench.studies.radmm_settings, .depth_sweep, .digits_curves, .mac_compare,
               .radmm_wine_variants, .wine_ceiling, .wine_references
    soak/      long stress runs: python -m bench.soak.ps_protocol

Scripts that draw figures write them to --out (default runs/bench/<name>); docs/ keeps the
figures it shows.
"""
