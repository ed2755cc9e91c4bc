"""Held-out reconstruction of training runs' checkpoints, in PyTorch: no finish step, no export.

    python -m benchmarks.checkpoint_recon RUN [RUN ...] [--data data/gm4] [--split-run RUN]
        [--max-notes 64] [--breakdown] [--fit-latent STEPS]

For comparing training runs part-way, or short trial runs, on the figure the issue sets for the
decoder (held-out spectral convergence). It scores exactly as ``timbre_space --sections recon``
does (``timbre_space.note_scores``: each note encoded whole, every stored frame decoded at its own
hold length, SC and LSD on magnitudes; the release region is the frames after note-off), on the
same notes: the split (val_fraction, seed, held-out programs) comes from ``--split-run``'s
config.toml, by default the first RUN's, so runs with one split are scored on one set of notes.
The models run float32 on the CPU (one thread); an exported preset of the same checkpoint scores
within a few hundredths of a dB through onnxruntime.

Prints one row per run: the checkpoint's step and the median SC and LSD per group, beside the goals.

``--breakdown`` adds, per run and group, where the SC is lost (medians over the notes):
- partials off their frequency: SC with both spectra max-pooled over ±2 bins (a partial up to 2
  bins, about 47 Hz, from the real one then counts as on it);
- level over time: SC with each decoded frame scaled to the real frame's energy;
- attack (the first 0.1 s) and body (from 0.1 s to note-off) on their own;
- per instrument family.

``--fit-latent STEPS`` adds, per run and group, the SC when each note's latent is not the encoder's
but fitted to the note itself, through the decoder (Adam from the encoder's point, ``STEPS`` steps on
the training loss's L1 and SC terms over every stored frame): what the decoder can draw, and so how
much of the figure the encoder (inference) leaves, and how far from the training notes' latents
(in their spread, per dim) the fitted ones lie.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import BenchmarkError, log, magnitude_convergence_db, markdown_table, run_main
from benchmarks.timbre_space import GOALS, decode_frames, encode_batch, note_scores, open_data, subset
from synth.contract import DECODER_INPUTS
from synth.stft import frame_times, magnitude_from_log


class _TorchSession:
    """An onnxruntime-like ``run(output_names, feeds)`` over a torch module (the interface
    ``timbre_space``'s scoring calls), so both score through one code path."""

    def __init__(self, module: Any, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.module, self.inputs, self.outputs = module, tuple(inputs), tuple(outputs)

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self.inputs]

    def run(self, names: Sequence[str], feeds: dict[str, NDArray]) -> list[NDArray]:
        import torch

        with torch.no_grad():
            got = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.inputs))
        got = dict(zip(self.outputs, got if isinstance(got, tuple) else (got,)))
        return [got[n].numpy() for n in names]


def checkpoint_models(run_dir: Path) -> tuple[SimpleNamespace, int, float]:
    """A run folder's checkpoint as ``timbre_space``'s models -> ``(models, step, time_on_max)``."""
    import torch

    from training.model import TimbreVAE
    from training.train import TrainError, encoder_at, load_config

    try:
        run = load_config(run_dir / "config.toml")
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        model = TimbreVAE(run.model, run.audio, encoder_at(run, int(state.get("step", -1))))
        model.load_state_dict(state["model"])
    except (OSError, KeyError, RuntimeError, TrainError) as exc:
        raise BenchmarkError(f"{run_dir}: not a readable training run ({str(exc).splitlines()[0]})") from None
    model.eval()
    models = SimpleNamespace(params=run.audio,
                             _enc=_TorchSession(model.encoder, model.encoder.inputs, ["mu", "logvar"]),
                             _dec=_TorchSession(model.decoder, DECODER_INPUTS, ["log_mag"]))
    return models, int(state.get("step", -1)), run.model.time_on_max


def run_row(run_dir: Path, models, step: int, time_on_max: float, data, n: int) -> list[object]:
    seen = note_scores(models, data.cache, subset(data.val, n), time_on_max)
    unseen = note_scores(models, data.cache, subset(data.unseen, n), time_on_max)

    def median(scores: list[tuple[float, ...]], col: int) -> str:
        return f"{float(np.median([s[col] for s in scores])):.1f}" if scores else "-"

    return [str(run_dir), step, median(seen, 0), median(unseen, 0), median(seen, 2), median(unseen, 2),
            median(seen, 1), median(unseen, 1)]


POOL_BINS = 2  # --breakdown: +-bins a partial may be off and still count as on the real one
ATTACK_SECONDS = 0.1


def breakdown_scores(models, cache, idx: NDArray[np.int64], time_on_max: float) -> NDArray[np.float64]:
    """Per note ``(SC, SC pooled, SC level-matched, SC attack, SC body)`` in dB -> ``(N, 5)``."""
    from scipy.ndimage import maximum_filter1d

    params, out = models.params, []
    if len(idx) == 0:
        return np.zeros((0, 5))
    mu, _ = encode_batch(models, cache, idx)
    for z, i in zip(mu, idx):
        ref = magnitude_from_log(np.asarray(cache.logmag[i], np.float32), params).astype(np.float64)
        on, off = frame_times(params, len(ref), cache.frame_stride, time_on_max, float(cache.hold[i]))
        est = magnitude_from_log(decode_frames(models, z, float(cache.pitch[i]), float(cache.velocity[i]), on, off),
                                 params).astype(np.float64)
        width = 2 * POOL_BINS + 1
        pooled = magnitude_convergence_db(maximum_filter1d(ref, width, axis=1), maximum_filter1d(est, width, axis=1))
        gain = np.sqrt((ref ** 2).sum(1, keepdims=True) / np.maximum((est ** 2).sum(1, keepdims=True), 1e-30))
        attack, body = on < ATTACK_SECONDS, (on >= ATTACK_SECONDS) & (off < 0)
        part = lambda m: magnitude_convergence_db(ref[m], est[m]) if m.any() else np.nan  # noqa: E731
        out.append((magnitude_convergence_db(ref, est), pooled, magnitude_convergence_db(ref, est * gain),
                    part(attack), part(body)))
    return np.array(out)


def breakdown_rows(run_dir: Path, models, time_on_max: float, data, n: int) -> list[list[object]]:
    rows = []
    for label, idx in (("seen", subset(data.val, n)), ("unseen programs", subset(data.unseen, n))):
        scores = breakdown_scores(models, data.cache, idx, time_on_max)
        if not len(scores):
            continue
        fams = data.cache.family[idx]
        groups = [("all", np.ones(len(idx), bool))] + [(data.cache.families[f], fams == f) for f in np.unique(fams)]
        for name, m in groups:
            med = np.nanmedian(scores[m], 0)
            rows.append([str(run_dir), label, name, int(m.sum())] + [f"{v:.1f}" for v in med])
    return rows


FIT_RATE = 0.05  # --fit-latent: Adam's step, in latent units
FIT_SC_WEIGHT = 3.0  # ... and the SC term's weight beside the L1 on log-magnitudes (the default config's)


def fitted_latent_rows(run_dir: Path, model, data, n: int, steps: int, time_on_max: float) -> list[list[object]]:
    """Per group: median SC with the encoder's latent and with a latent fitted to each note, and the
    fitted latent's median distance from the encoder's (RMS over dims, in the training latents' std)."""
    import torch

    from training.model import spectral_convergence

    params, cache, rows = model.params, data.cache, []
    decoder = model._dec.module.requires_grad_(False)  # only the latent moves
    spread = encode_batch(model, cache, subset(data.train, 256, seed=1))[0].std(axis=0) + 1e-6
    for label, idx in (("seen", subset(data.val, n)), ("unseen programs", subset(data.unseen, n))):
        if len(idx) == 0:  # a split with no notes in this group (a small dataset)
            continue
        mu, _ = encode_batch(model, cache, idx)
        scores = []
        for z0, i in zip(mu, idx):
            target = torch.from_numpy(np.asarray(cache.logmag[i], np.float32))
            on, off = frame_times(params, len(target), cache.frame_stride, time_on_max, float(cache.hold[i]))
            t = len(on)
            inputs = [torch.full((t,), float(cache.pitch[i])), torch.full((t,), float(cache.velocity[i])),
                      torch.from_numpy(on.astype(np.float32)), torch.from_numpy(off.astype(np.float32))]
            z = torch.from_numpy(z0.copy()).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=FIT_RATE)
            for _ in range(steps):
                pred = decoder(z[None].expand(t, -1), *inputs)
                loss = (pred - target).abs().mean() + FIT_SC_WEIGHT * spectral_convergence(pred[None], target[None])
                opt.zero_grad()
                loss.backward()
                opt.step()
            ref = magnitude_from_log(target.numpy(), params)
            with torch.no_grad():
                fitted = magnitude_from_log(decoder(z[None].expand(t, -1), *inputs).numpy(), params)
                start = magnitude_from_log(decoder(torch.from_numpy(z0)[None].expand(t, -1), *inputs).numpy(), params)
            moved = float(np.sqrt(np.mean(((z.detach().numpy() - z0) / spread) ** 2)))
            scores.append((magnitude_convergence_db(ref, start), magnitude_convergence_db(ref, fitted), moved))
        med = np.median(np.array(scores), axis=0)
        rows.append([str(run_dir), label, len(scores), f"{med[0]:.1f}", f"{med[1]:.1f}", f"{med[2]:.2f}"])
    return rows


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_recon", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="training run folders (config.toml + checkpoint.pt)")
    ap.add_argument("--data", default="data/gm4", help="the NSynth-layout folder training used")
    ap.add_argument("--features", default=None, help="its feature cache (default: DATA_features)")
    ap.add_argument("--split-run", default=None, help="run folder whose config.toml gives the split (default: the first RUN)")
    ap.add_argument("--max-notes", type=int, default=64, help="notes per group")
    ap.add_argument("--breakdown", action="store_true", help="also where the SC is lost (see above)")
    ap.add_argument("--fit-latent", type=int, default=0, metavar="STEPS",
                    help="also the SC with each note's latent fitted to it in STEPS steps (see above; 100 is enough)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def body() -> int:
        try:
            import torch
        except ImportError as exc:
            raise BenchmarkError(f"this benchmark runs torch checkpoints: install the train extra ({exc})") from None
        torch.set_num_threads(1)
        if args.max_notes < 1:
            raise BenchmarkError("--max-notes needs a positive number")
        d = Path(args.data)
        split = Path(args.split_run or args.runs[0]) / "config.toml"
        if not split.is_file():
            raise BenchmarkError(f"{split.parent}: no config.toml (a training run folder)")
        data = open_data(Path(args.features) if args.features else d.parent / f"{d.name}_features", split, None)
        if args.fit_latent < 0:
            raise BenchmarkError("--fit-latent needs a number of steps (0: off)")
        rows, breakdown, fitted = [], [], []
        for r in map(Path, args.runs):
            models, step, time_on_max = checkpoint_models(r)  # loaded once for every table
            log(f"{r}: step {step}")
            rows.append(run_row(r, models, step, time_on_max, data, args.max_notes))
            if args.breakdown:
                breakdown += breakdown_rows(r, models, time_on_max, data, args.max_notes)
            if args.fit_latent:
                fitted += fitted_latent_rows(r, models, data, args.max_notes, args.fit_latent, time_on_max)
        print(markdown_table(
            ["run", "step", f"SC seen (goal ≤ {GOALS['sc_seen']:g})", f"SC unseen programs (goal ≤ {GOALS['sc_unseen']:g})",
             "release SC seen", "release SC unseen", "LSD seen", "LSD unseen"], rows))
        if args.breakdown:
            print("\n" + markdown_table(
                ["run", "notes", "family", "count", "SC", f"SC, partials ±{POOL_BINS} bins off count",
                 "SC, each frame's level matched", f"SC, first {ATTACK_SECONDS:g} s", "SC, body to note-off"], breakdown))
        if args.fit_latent:
            print("\n" + markdown_table(
                ["run", "notes", "count", "SC, the encoder's latent", f"SC, latent fitted to the note ({args.fit_latent} steps)",
                 "fitted latent's move (RMS, in training latents' std)"], fitted))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
