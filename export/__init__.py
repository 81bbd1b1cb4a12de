"""Exporters: lower the OmniCoder network to ONNX, Core ML and ExecuTorch bundles."""
