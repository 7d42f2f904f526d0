"""Pruning and recovery: channel pruning with Torch-Pruning and 2:4 sparsity (`channels`), inner channels or whole
blocks removed and re-fitted to the FP32 activations (`allocate`, `lstsq`, `stream`, `refine`, `reconstruct`,
`drop`, tuned by `config.ReconstructConfig`), and distillation (`distill`)."""
