"""A sample of the training notes' posteriors, shipped in the preset (torch-free).

Training writes it (``runs/NAME/latent_map.npz``), export copies it into the preset and names it in
``[map] file``, the engine side reads it: random timbres are drawn from it (the aggregate
posterior, so a draw sounds like an instrument), the timbre map plots it, and a captured timbre
says how far it lies from it. Layout: ``synth.contract.LATENT_MAP_FILE``.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from synth.errors import VaesynthError

MAX_POINTS = 100_000  # a hostile file cannot make the loader allocate more than this many rows
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ARRAY_BYTES = MAX_POINTS * 256 * 8
"""Largest array a map may declare (MAX_POINTS rows of 256 float64 dims): an .npz is compressed,
so a small file can declare a huge array; its header is read before any array is."""
_ARRAYS = ("mu", "sigma", "family", "program", "pitch", "families")


class LatentMapError(VaesynthError):
    """The latent map file is missing, malformed or does not fit the preset."""


@dataclass(frozen=True)
class LatentMap:
    """``mu, sigma (N, L)``; ``family, program (N,)`` int; ``pitch (N,)``; ``families (F,)`` names."""

    mu: NDArray[np.float32]
    sigma: NDArray[np.float32]
    family: NDArray[np.int16]
    program: NDArray[np.int16]
    pitch: NDArray[np.float32]
    families: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.mu.shape[0])

    def draw(self, seed: int) -> NDArray[np.float32]:
        """One latent from the aggregate posterior: a random point's Gaussian ``mu + sigma * eps``.

        Deterministic in ``seed``; ``(L,)`` float32."""
        rng = np.random.default_rng(seed)
        i = int(rng.integers(self.size))
        eps = rng.standard_normal(self.mu.shape[1])
        return (self.mu[i] + self.sigma[i] * eps).astype(np.float32)

    def distance(self, z: NDArray[np.floating]) -> tuple[float, int]:
        """``(d, i)``: how far ``z (L,)`` lies from the data, in posterior standard deviations.

        ``d`` is the smallest over points of the RMS of ``(z - mu_i) / sigma_i`` over dims, ``i``
        that point. About 1 or less is inside the data; several is well outside it."""
        d = np.sqrt(np.mean(((np.asarray(z, np.float64) - self.mu) / self.sigma) ** 2, axis=1))
        i = int(np.argmin(d))
        return float(d[i]), i

    def save(self, path: Path) -> None:
        """Write atomically (temp file + replace): a crash never leaves half a file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mu=self.mu, sigma=self.sigma, family=self.family, program=self.program,
                                pitch=self.pitch, families=np.asarray(self.families, dtype=np.str_))
        os.replace(tmp, path)


def _check_declared_sizes(path: Path) -> None:
    """Refuse a map whose members declare more than ``MAX_ARRAY_BYTES`` (a zip or .npy-header
    bomb) before numpy allocates anything for them; raises LatentMapError, ValueError or OSError."""
    from numpy.lib import format as npy

    if not zipfile.is_zipfile(path):
        raise LatentMapError(f"{path}: not an .npz archive")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.file_size > MAX_ARRAY_BYTES:
                raise LatentMapError(f"{path}: {info.filename} unpacks to {info.file_size >> 20} MB, "
                                     f"more than a latent map may ({MAX_ARRAY_BYTES >> 20} MB)")
            with archive.open(info) as f:
                version = npy.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise LatentMapError(f"{path}: {info.filename}: unsupported .npy version {version}")
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(f)
            if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
                raise LatentMapError(f"{path}: {info.filename} declares shape {shape}, more than a latent map may hold")


def load_latent_map(path: Path, latent_size: int) -> LatentMap:
    """Read and validate ``path`` for a preset of ``latent_size`` dims (no pickles, bounded size)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise LatentMapError(f"{path}: latent map larger than {MAX_FILE_BYTES >> 20} MB")
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise LatentMapError(f"{path}: latent map lacks {', '.join(missing)}")
            arrays = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LatentMapError(f"{path}: unreadable latent map ({str(exc).splitlines()[0][:120]})") from None
    mu, sigma = arrays["mu"], arrays["sigma"]
    n = mu.shape[0] if mu.ndim == 2 else -1
    if not (1 <= n <= MAX_POINTS and mu.shape == (n, latent_size) and sigma.shape == mu.shape):
        raise LatentMapError(f"{path}: mu/sigma must be (N, {latent_size}) with 1 <= N <= {MAX_POINTS}")
    if any(arrays[k].shape != (n,) for k in ("family", "program", "pitch")):
        raise LatentMapError(f"{path}: family/program/pitch must have {n} entries")
    families = arrays["families"]
    if families.dtype.kind != "U" or families.ndim != 1:
        raise LatentMapError(f"{path}: families must be a list of names")
    try:
        mu, sigma = mu.astype(np.float32), sigma.astype(np.float32)
        family, program = arrays["family"].astype(np.int16), arrays["program"].astype(np.int16)
        pitch = arrays["pitch"].astype(np.float32)
    except (TypeError, ValueError):
        raise LatentMapError(f"{path}: arrays of the wrong type") from None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and (sigma > 0).all()):
        raise LatentMapError(f"{path}: mu/sigma must be finite, sigma positive")
    if family.min() < 0 or family.max() >= len(families) or program.min() < -1 or program.max() > 127:
        raise LatentMapError(f"{path}: family or program index out of range")
    return LatentMap(mu, sigma, family, program, pitch, tuple(str(f) for f in families))
