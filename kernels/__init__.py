"""medfake.kernels: attention dispatch and fused kernels for the PyTorch path."""
