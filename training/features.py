"""Log-magnitude feature cache: one pass over a dataset, then memory-mapped training reads.

Files in ``out_dir`` (numpy ``.npy``, opened as memmaps):
``logmag (N, T, F) float16`` every ``frame_stride``-th centred frame of ``synth.stft.log_magnitude``,
``pitch (N,) float32``, ``velocity (N,) float32``, ``family (N,) int16`` (index into
``families``), ``instrument (N,) int32`` (index into ``instruments``), ``hold (N,) float32``
(seconds the key was held: examples.json ``hold_seconds``, 3.0 when absent), and ``meta.json``
(params, frame_stride, families, instruments, note_strs). Stored frame j is at
``params.frame_time(j * frame_stride)``.

CLI::

    python -m training.features --data data/fluidr3 --out data/fluidr3_features [--jobs N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from numpy.typing import NDArray

from synth.contract import SpectrogramParams
from synth.errors import report
from synth.stft import encoder_frames
from training.data import DatasetError, ErrorPolicy, NoteRecord, OnError, load_dataset, read_audio

FORMAT_VERSION = 2  # 2 added ``hold``
ARRAYS = ("logmag", "pitch", "velocity", "family", "instrument", "hold")


def frames_stored(params: SpectrogramParams, frame_stride: int) -> int:
    """T = ceil(frames_per_note / frame_stride) (376 for the defaults)."""
    return -(-params.frames_per_note // frame_stride)


def note_features(record: NoteRecord, params: SpectrogramParams, frame_stride: int) -> NDArray[np.float16]:
    """One note -> ``(T, F)`` float16 log-magnitude, padded/truncated to ``params.note_seconds``."""
    return encoder_frames(read_audio(record, params.sample_rate), params, frame_stride).astype(np.float16)


_WORKER: dict = {}


def _init_worker(params: SpectrogramParams, frame_stride: int) -> None:
    _WORKER.update(params=params, stride=frame_stride)


def _feature_job(record: NoteRecord) -> NDArray[np.float16] | DatasetError:
    try:
        return note_features(record, _WORKER["params"], _WORKER["stride"])
    except DatasetError as err:  # returned, not raised, so the parent applies on_error
        return err


@dataclass
class FeatureCache:
    """An opened feature cache; arrays are read-only memmaps / numpy arrays."""

    root: Path
    params: SpectrogramParams
    frame_stride: int
    families: list[str]
    instruments: list[str]
    note_strs: list[str]
    logmag: np.ndarray  # (N, T, F) float16 memmap
    pitch: NDArray[np.float32]  # (N,)
    velocity: NDArray[np.float32]  # (N,)
    family: NDArray[np.int16]  # (N,)
    instrument: NDArray[np.int32]  # (N,)
    hold: NDArray[np.float32]  # (N,) seconds the key was held

    def __len__(self) -> int:
        return len(self.pitch)

    @classmethod
    def open(cls, out_dir: str | Path) -> "FeatureCache":
        """Open a finished cache; raises DatasetError naming what is missing or inconsistent."""
        root = Path(out_dir)
        try:
            meta = json.loads((root / "meta.json").read_text())
            arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{root}: not a finished feature cache ({exc})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{root / 'meta.json'}: format_version {meta.get('format_version')} "
                               f"is not {FORMAT_VERSION} (rebuild the cache: delete the folder)")
        cache = cls(root, SpectrogramParams.from_dict(meta["params"]), int(meta["frame_stride"]),
                    list(meta["families"]), list(meta["instruments"]), list(meta["note_strs"]),
                    arrays["logmag"], *(np.asarray(arrays[k]) for k in ARRAYS[1:]))
        n = len(cache.note_strs)
        expected = (n, frames_stored(cache.params, cache.frame_stride), cache.params.n_bins)
        if cache.logmag.shape != expected or any(len(arrays[k]) != n for k in ARRAYS[1:]):
            raise DatasetError(f"{root}: array shapes do not match meta.json (logmag "
                               f"{cache.logmag.shape}, expected {expected})")
        return cache

    def instrument_indices(self, names: Sequence[str]) -> NDArray[np.int64]:
        """Indices of all notes of the named instruments; unknown names raise ValueError."""
        unknown = set(names) - set(self.instruments)
        if unknown:
            raise ValueError(f"unknown instrument(s): {', '.join(sorted(unknown))}")
        ids = [self.instruments.index(n) for n in names]
        return np.nonzero(np.isin(self.instrument, ids))[0]

    def program_indices(self, programs: Sequence[int]) -> NDArray[np.int64]:
        """Indices of all notes of rendered instruments (``..._TAG_PPP``) whose GM program is in
        ``programs``, from every soundfont; other instrument names never match."""
        from training.data import parse_instrument

        wanted = set(int(p) for p in programs)
        ids = [i for i, name in enumerate(self.instruments)
               if (parsed := parse_instrument(name)) is not None and parsed[1] in wanted]
        return np.nonzero(np.isin(self.instrument, ids))[0]

    def split(self, val_fraction: float, seed: int,
              holdout_instruments: Sequence[str] = (),
              holdout_programs: Sequence[int] = ()) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(train, val) note indices.

        Per instrument, a random ``val_fraction`` of its (pitch, velocity) notes go to val, so
        val holds unseen pitch/velocity combinations of instruments seen in training. Notes of
        ``holdout_instruments`` and of the GM ``holdout_programs`` (every soundfont) are in neither
        set (get them with :meth:`instrument_indices` / :meth:`program_indices`).
        """
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        held = set(self.instrument_indices(holdout_instruments).tolist())
        held |= set(self.program_indices(holdout_programs).tolist())
        train, val = [], []
        for inst in np.unique(self.instrument):
            idx = np.array([i for i in np.nonzero(self.instrument == inst)[0] if i not in held])
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            n_val = int(round(val_fraction * idx.size))
            n_val = min(n_val, idx.size - 1)  # keep every instrument seen in training
            val.extend(idx[:n_val])
            train.extend(idx[n_val:])
        return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def _write_features(records: list[NoteRecord], params: SpectrogramParams, frame_stride: int,
                    out: Path, policy: ErrorPolicy, jobs: int, progress: bool) -> list[NoteRecord]:
    """Write ``logmag.npy`` with the notes that read cleanly; returns those records in order.

    The array is written sequentially through a file, not a memory map: a full or failing disk
    then raises OSError with its reason, where a memory map's page fault kills the process
    with SIGBUS and no message."""
    from tqdm import tqdm

    frame_shape = (frames_stored(params, frame_stride), params.n_bins)
    path = out / "logmag.npy"
    kept: list[NoteRecord] = []
    ctx = mp.get_context("spawn")  # fork deadlocks once onnxruntime/numba/torch threads exist
    with open(path, "wb") as f, ctx.Pool(jobs, _init_worker, (params, frame_stride)) as pool:
        header_len = _write_npy_header(f, (len(records),) + frame_shape)
        results = pool.imap(_feature_job, records, chunksize=4)
        for rec, feat in tqdm(zip(records, results), total=len(records), disable=not progress,
                              desc="features", unit="note"):
            if isinstance(feat, DatasetError):
                policy.handle(feat)
                continue
            f.write(np.ascontiguousarray(feat, dtype="<f2").tobytes())
            kept.append(rec)
        if len(kept) < len(records):  # skipped notes: the header states the notes written
            f.seek(0)
            if _write_npy_header(f, (len(kept),) + frame_shape) != header_len:
                raise DatasetError(f"{path}: header size changed")  # numpy pads headers to 64 bytes
    return kept


def _write_npy_header(f: BinaryIO, shape: tuple[int, ...]) -> int:
    """Write a float16 C-order .npy header for ``shape`` at the file's position; returns its size."""
    start = f.tell()
    np.lib.format.write_array_header_2_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
    return f.tell() - start


def build_feature_cache(root: str | Path | Sequence[NoteRecord], params: SpectrogramParams,
                        out_dir: str | Path, frame_stride: int = 2, on_error: OnError = "stop",
                        jobs: int | None = None, progress: bool = False) -> FeatureCache:
    """Analyse every note of a dataset (NSynth layout or WAV folder, or given records) into a cache."""
    params.validate()
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    policy = ErrorPolicy(on_error)
    records = list(root) if not isinstance(root, (str, Path)) else load_dataset(root, on_error)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(records)))
    kept = _write_features(records, params, frame_stride, out, policy, jobs, progress)
    policy.report("notes")
    if not kept:
        raise DatasetError(f"{out}: no usable notes")
    families = sorted({r.family for r in kept})
    instruments = sorted({r.instrument for r in kept})
    columns = {
        "pitch": np.array([r.pitch for r in kept], np.float32),
        "velocity": np.array([r.velocity for r in kept], np.float32),
        "family": np.array([families.index(r.family) for r in kept], np.int16),
        "instrument": np.array([instruments.index(r.instrument) for r in kept], np.int32),
        "hold": np.array([r.hold_seconds for r in kept], np.float32),
    }
    for name, arr in columns.items():
        np.save(out / f"{name}.npy", arr)
    meta = {"format_version": FORMAT_VERSION, "params": params.to_dict(), "frame_stride": frame_stride,
            "families": families, "instruments": instruments, "note_strs": [r.note_str for r in kept],
            "skipped": policy.skipped}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return FeatureCache.open(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.features",
                                 description="build a log-magnitude feature cache from a note dataset")
    ap.add_argument("--data", required=True, help="NSynth-layout folder or a folder of WAV notes")
    ap.add_argument("--out", required=True)
    ap.add_argument("--frame-stride", type=int, default=2)
    ap.add_argument("--on-error", choices=("stop", "skip"), default="stop")
    ap.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        cache = build_feature_cache(args.data, SpectrogramParams(), args.out, args.frame_stride,
                                    args.on_error, args.jobs, progress=True)
    except (DatasetError, ValueError) as exc:
        return report(exc)
    print(f"wrote {len(cache)} notes {cache.logmag.shape[1:]} to {args.out} in "
          f"{time.perf_counter() - start:.1f} s ({len(cache.instruments)} instruments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
