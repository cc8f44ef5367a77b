"""Calibrated quantization: settings in `spec` (no torch, importable by the web process), the per-layer
algorithms in `gptq` and `awq`, and the version-to-version pipeline in `run`."""
