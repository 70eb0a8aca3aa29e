"""Fused Triton kernels (installed as ldseg_rt.kernels): attention, GroupNorm+SiLU, Philox
noise, the diffusion step and sample aggregation, each with a plain torch reference.
Leaf math: nothing here imports the rest of ldseg_rt but the constants every sampler shares
(ldseg_rt.diffusion.constants) and the one torch renormalisation."""
