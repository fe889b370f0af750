"""droneseg: train, evaluate and run U-Net-family models on aerial drone photos."""

__version__ = "0.1.0"
