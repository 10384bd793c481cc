"""medfake.kernels: attention dispatch and fused kernels for the PyTorch path.

- :mod:`.attention`: ``apply_attention(model, "auto"|"xformers"|"sdpa"|"math")`` and
  ``exportable_attention(model)`` for diffusers UNet/VAE attention processors.
- :mod:`.groupnorm_silu`: fused GroupNorm+SiLU (Triton, CUDA only) and ``patch_resnets(model)``.
"""
