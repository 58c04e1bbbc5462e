"""mamba-bench: how well does a vision model hold up when its inputs shift?"""

__version__ = "0.1.0"
