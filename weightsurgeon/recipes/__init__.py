"""Freeze-SFT and evaluation recipes (installed as weightsurgeon.recipes); heavy optional deps."""
