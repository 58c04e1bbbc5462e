"""Analyses of a model's insides: Vision Mamba Mender's state correlations (``mender``, ``explain``)."""
