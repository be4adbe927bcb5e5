"""RADMM: the FCResNet trainer (fcresnet.py, block updates in blocks.py) and the general trainer
for other residual networks (general.py, engine.py, layers.py)."""
