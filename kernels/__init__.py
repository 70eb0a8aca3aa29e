"""Fused Triton kernels (installed as ldseg_rt.kernels): attention, GroupNorm+SiLU, the
diffusion step and sample aggregation, each with a plain torch reference (SPEC section 7).
Leaf math: nothing here imports the rest of ldseg_rt."""
