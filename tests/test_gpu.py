"""Decoder device selection: CPU fallback everywhere, CUDA checks where a GPU exists."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from synth.decoder import DecoderError, FrameDecoder
from synth.preset import load_preset
from tests.fake_preset import make_fake_preset

HAS_CUDA_ORT = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory):
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("gpu") / "p"))


def _inputs(latent: int, batch: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((batch, latent)).astype(np.float32),
            np.linspace(40, 90, batch, dtype=np.float32), np.full(batch, 100, np.float32),
            np.full(batch, 0.3, np.float32), np.full(batch, -1.0, np.float32))


def test_cpu_is_used_when_asked(preset) -> None:
    dec = FrameDecoder(preset, device="cpu")
    assert dec.providers == ["CPUExecutionProvider"]


def test_gpu_request_without_cuda_falls_back_with_one_line(preset, monkeypatch, capsys) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    dec = FrameDecoder(preset, device="gpu")
    err = capsys.readouterr().err.strip()
    assert dec.providers == ["CPUExecutionProvider"]
    assert err.startswith("notice:") and "CPU" in err and "\n" not in err


def test_cuda_start_failure_falls_back(preset, monkeypatch, capsys) -> None:
    """A CUDA provider that is listed but cannot start (no driver, wrong CUDA) ends on the CPU."""
    real = ort.InferenceSession

    def session(path, opts=None, providers=None):
        if providers and "CUDAExecutionProvider" in providers:
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient\nmore detail")
        return real(path, opts, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    dec = FrameDecoder(preset, device="auto")
    assert dec.providers == ["CPUExecutionProvider"]
    err = capsys.readouterr().err.strip()
    assert "CUDA failed" in err and "\n" not in err


def test_auto_without_cuda_is_quiet(preset, monkeypatch, capsys) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    FrameDecoder(preset, device="auto")
    assert capsys.readouterr().err == ""


def test_bad_device_name(preset) -> None:
    with pytest.raises(DecoderError, match="auto, cpu or gpu"):
        FrameDecoder(preset, device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_ORT, reason="needs onnxruntime-gpu with a CUDA device (pip install '.[gpu]')")
def test_cuda_decoder_matches_cpu(preset) -> None:
    gpu = FrameDecoder(preset, device="gpu")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = FrameDecoder(preset, device="cpu")
    args = _inputs(preset.latent_size, 32)
    out_gpu = np.zeros((32, preset.params.n_bins), np.float32)
    out_cpu = np.zeros_like(out_gpu)
    gpu.decode(*args, out=out_gpu)
    cpu.decode(*args, out=out_cpu)
    assert np.max(np.abs(out_gpu - out_cpu)) < 1e-3


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs a CUDA build of torch and a GPU")
def test_training_step_on_cuda(tmp_path: Path) -> None:
    from training.data import make_synthetic_dataset
    from training.train import main

    data = tmp_path / "d"
    make_synthetic_dataset(data)
    root = Path(__file__).resolve().parents[1]
    rc = main(["--config", str(root / "training/configs/tiny.toml"), "--data", str(data),
               "--out", str(tmp_path / "run"), "--device", "cuda", "--steps", "5", "--quiet"])
    assert rc == 0 and (tmp_path / "run" / "checkpoint.pt").exists()
