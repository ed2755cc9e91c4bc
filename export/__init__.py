"""Export trained runs to preset folders (ONNX + preset.toml)."""
