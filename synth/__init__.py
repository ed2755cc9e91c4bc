"""vaesynth engine: MIDI in, ONNX decoding, streaming phase reconstruction, audio out.

This package never imports torch.
"""
