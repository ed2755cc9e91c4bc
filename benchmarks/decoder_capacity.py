"""How far can this decoder go? Held-out spectral convergence against what the decoder reaches on
notes it only has to memorise, and against the best its output head can draw at all.

    python -m benchmarks.decoder_capacity [--data data/gm4] [--run runs/default] [--notes 32]
        [--passes 85,500,2000] [--sc-weight 0,1] [--oracle-notes 8] [--sections memorise,oracle]

- memorise: a fresh decoder of the run's size and a free latent per note (no encoder, no KL: an
  upper bound on what any encoder could give it) trained on ``--notes`` notes, one from each of as
  many training instruments, with the run's loss (``training.model.vae_loss``: L1 log-magnitude,
  its frequency gradient, the pooled term, and the spectral-convergence term at ``--sc-weight``),
  16 notes x 32 frames a step, cosine learning rate. Each entry of ``--passes`` (times each note
  is drawn) is a run of its own. Printed: the median spectral convergence over every frame of the
  memorised notes, the median gap of their 4-12 kHz energy share to the real notes, and the same
  for the preset's own encoder and decoder on those notes.
- budget: the passes per training note the run's config gives (steps x batch notes / training
  notes), and what 90 minutes give at the notes per second its log measured.
- oracle: each frame fitted on its own by the decoder's output family (partials at k f0
  sqrt(1 + B k^2) for the best B of a grid, Hann main lobes, plus the mel noise bands;
  non-negative least squares on linear magnitudes): the ceiling of the head itself.

Slow by design (about 6 minutes per sc weight for the default arguments on one core); it trains
torch models, so it needs the ``train`` extra.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import (DEFAULT_PRESET, BenchmarkError, PresetModels, chosen_sections, log,
                               magnitude_convergence_db, markdown_table, open_preset, run_main)
from benchmarks.timbre_space import GOALS, band_share_db, open_data
from synth.stft import magnitude_from_log

SECTIONS = ("memorise", "oracle")
FRAMES_PER_DRAW = 32
NOTES_PER_STEP = 16
BUDGET_SECONDS = 90 * 60  # the limit for reproducing the default preset on this machine
ORACLE_B = (0.0, 3e-5, 1e-4, 3e-4, 1e-3)


def pick_notes(cache, train: NDArray[np.int64], n: int, seed: int = 1) -> NDArray[np.int64]:
    """One training note from each of ``n`` training instruments (seeded)."""
    rng = np.random.default_rng(seed)
    instruments = np.unique(cache.instrument[train])
    if len(instruments) < n:
        raise BenchmarkError(f"only {len(instruments)} training instruments, asked for {n} notes")
    chosen = rng.choice(instruments, n, replace=False)
    return np.sort([rng.choice(train[cache.instrument[train] == i]) for i in chosen])


def note_times(run, cache, idx: NDArray[np.int64]):
    """Every stored frame's framewise-v1 times for notes ``idx`` -> ``time_on, time_off (N, T)``."""
    import torch

    from training.model import frame_times
    from training.train import note_holds

    frames = torch.arange(cache.logmag.shape[1])[None].expand(len(idx), -1)
    return frame_times(run.audio, frames, run.train.frame_stride, run.model.time_on_max, note_holds(cache, idx)[:, None])


def memorise(run, cache, idx: NDArray[np.int64], passes: int, sc_weight: float, seed: int = 0):
    """Train a fresh decoder and one latent per note on notes ``idx`` -> ``(decoder, z (N, L))``."""
    import torch

    from training.model import FrameDecoder, vae_loss
    from training.train import load_notes

    torch.manual_seed(seed)
    log_mag = load_notes(cache, idx)  # (N, T, F)
    n, t, f = log_mag.shape
    pitch = torch.as_tensor(cache.pitch[idx], dtype=torch.float32)
    velocity = torch.as_tensor(cache.velocity[idx], dtype=torch.float32)
    time_on, time_off = note_times(run, cache, idx)
    decoder = FrameDecoder(run.model, run.audio)
    z = torch.nn.Parameter(0.5 * torch.randn(n, run.model.latent_size))
    params = list(decoder.parameters()) + [z]
    opt = torch.optim.Adam(params, lr=run.train.lr)
    steps = max(1, round(passes * n / NOTES_PER_STEP))
    zeros = torch.zeros(NOTES_PER_STEP, run.model.latent_size)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = run.train.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / steps)))
        b = torch.randint(n, (NOTES_PER_STEP,))
        fr = torch.randint(t, (NOTES_PER_STEP, FRAMES_PER_DRAW))
        target = torch.gather(log_mag[b], 1, fr[..., None].expand(-1, -1, f))
        rep = lambda x: x[b][:, None].expand(-1, FRAMES_PER_DRAW).reshape(-1)  # noqa: E731
        pred = decoder(z[b].repeat_interleave(FRAMES_PER_DRAW, 0), rep(pitch), rep(velocity),
                       time_on[b[:, None], fr].reshape(-1), time_off[b[:, None], fr].reshape(-1))
        m = run.model
        loss = vae_loss(pred.view(NOTES_PER_STEP, FRAMES_PER_DRAW, f), target, z[b], zeros, 0.0, m.grad_weight,
                        0.0, m.pool_weight, m.pool_bins, sc_weight)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, run.train.grad_clip)
        opt.step()
    return decoder.eval(), z.detach()


def scores(refs: list[NDArray], ests: list[NDArray], params) -> tuple[float, float]:
    """Median SC and median 4-12 kHz share gap (estimate - reference) over notes, in dB."""
    sc = [magnitude_convergence_db(r, e) for r, e in zip(refs, ests)]
    gap = [band_share_db(e, params) - band_share_db(r, params) for r, e in zip(refs, ests)]
    return float(np.median(sc)), float(np.median(gap))


def memorised_frames(run, cache, idx, decoder, z) -> list[NDArray]:
    import torch

    time_on, time_off = note_times(run, cache, idx)
    out = []
    with torch.no_grad():
        for k, i in enumerate(idx):
            t = time_on.shape[1]
            log_mag = decoder(z[k][None].expand(t, -1), torch.full((t,), float(cache.pitch[i])),
                              torch.full((t,), float(cache.velocity[i])), time_on[k], time_off[k])
            out.append(magnitude_from_log(log_mag.numpy(), run.audio))
    return out


def preset_frames(models: PresetModels, run, cache, idx) -> list[NDArray]:
    time_on, time_off = note_times(run, cache, idx)
    out = []
    for k, i in enumerate(idx):
        z = models.encode(np.asarray(cache.logmag[i], np.float32), float(cache.pitch[i]))
        out.append(magnitude_from_log(models.decode(z, float(cache.pitch[i]), float(cache.velocity[i]),
                                                    time_on[k].numpy(), time_off[k].numpy()), models.params))
    return out


def budget_rows(run, run_dir: Path, n_train: int) -> list[list[object]]:
    per_run = run.train.steps * run.train.batch_notes / n_train
    rows = [["the run's config", f"{run.train.steps} steps x {run.train.batch_notes} notes", f"{per_run:.0f}"]]
    try:
        with open(run_dir / "log.csv", newline="") as fh:
            rates = [float(r["notes_per_s"]) for r in csv.DictReader(fh) if r.get("notes_per_s")]
    except (OSError, KeyError, ValueError):
        rates = []
    if rates:
        rate = float(np.median(rates[len(rates) // 2:]))  # the second half: past warm-up and the first checks
        rows.append([f"{BUDGET_SECONDS // 60} min at {rate:.0f} notes/s (the run's log, median of its second half)",
                     f"{rate * BUDGET_SECONDS:.0f} notes", f"{rate * BUDGET_SECONDS / n_train:.0f}"])
    return rows


# ---------------------------------------------------------------------------- oracle

def head_columns(head, pitch: float, inharm: float) -> NDArray[np.float64]:
    """The output head's columns for one frame: ``head`` (a ``training.model.FrameDecoder``) places
    each of its K partials alone (``place_harmonics``, unit amplitude), then its noise bands ->
    ``(F, K + bands)`` (partials above Nyquist: zero columns)."""
    import torch

    k = head.cfg.n_harmonics
    with torch.no_grad():
        partials = head.place_harmonics(torch.eye(k, dtype=torch.float64), torch.full((k,), float(pitch)),
                                        torch.full((k,), float(inharm)))
    return np.hstack([partials.numpy().T, head.band_matrix.double().numpy().T])


def oracle_frames(ref: NDArray, pitch: float, head) -> NDArray:
    """Each frame of ``ref (T, F)`` (linear magnitudes) fitted alone by ``head``'s output family -> ``(T, F)``."""
    from scipy.optimize import nnls

    mats = [head_columns(head, pitch, b) for b in ORACLE_B]
    energy = (ref.astype(np.float64) ** 2).sum(1)
    out = np.zeros_like(ref, dtype=np.float64)
    for t in np.nonzero(energy >= 1e-7 * energy.max())[0]:  # quieter frames add nothing to SC
        best = min((nnls(m, ref[t].astype(np.float64), maxiter=4000) + (m,) for m in mats), key=lambda r: r[1])
        out[t] = best[2] @ best[0]
    return out


# ---------------------------------------------------------------------------- CLI

def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decoder_capacity", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET), help="compared on the same notes")
    ap.add_argument("--data", default="data/gm4", help="the NSynth-layout folder training used")
    ap.add_argument("--features", default=None, help="its feature cache (default: DATA_features)")
    ap.add_argument("--run", default="runs/default", help="run folder: config.toml (sizes, loss, split) and log.csv")
    ap.add_argument("--notes", type=int, default=32, help="notes memorised, one per training instrument")
    ap.add_argument("--passes", default="85,500,2000", help="comma list: times each note is drawn, one run each")
    ap.add_argument("--sc-weight", default="0,1", help="comma list of spectral-convergence loss weights")
    ap.add_argument("--oracle-notes", type=int, default=8, help="of the memorised notes, fitted frame by frame")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def body() -> int:
        sections = chosen_sections(args.sections, SECTIONS)
        try:
            passes = [int(p) for p in args.passes.split(",") if p]
            weights = [float(w) for w in args.sc_weight.split(",") if w]
        except ValueError:
            raise BenchmarkError("--passes takes whole numbers and --sc-weight numbers, comma-separated") from None
        if not passes or min(passes) < 1 or not weights or min(weights) < 0 or args.notes < 1:
            raise BenchmarkError("--passes, --sc-weight and --notes need positive values")
        try:
            import torch

            from training.train import load_config
        except ImportError as exc:
            raise BenchmarkError(f"this benchmark trains torch models: install the train extra ({exc})") from None
        torch.set_num_threads(1)
        run_dir = Path(args.run)
        if not (run_dir / "config.toml").is_file():
            raise BenchmarkError(f"{run_dir}: no config.toml (a finished training run folder)")
        run = load_config(run_dir / "config.toml")
        d = Path(args.data)
        data = open_data(Path(args.features) if args.features else d.parent / f"{d.name}_features",
                         run_dir / "config.toml", None)
        cache, params = data.cache, run.audio
        idx = pick_notes(cache, data.train, args.notes)
        refs = [magnitude_from_log(np.asarray(cache.logmag[i], np.float32), params) for i in idx]
        print(f"{len(idx)} training notes of {len(idx)} instruments, decoder {run.model.dec_hidden} x "
              f"{run.model.dec_layers}, latent {run.model.latent_size}; goal: held-out SC <= {GOALS['sc_seen']:g} dB "
              f"(seen instruments), <= {GOALS['sc_unseen']:g} dB (unseen programs)\n")
        if "memorise" in sections:
            print(markdown_table(["passes per training note", "what gives them", "passes"],
                                 budget_rows(run, run_dir, len(data.train))) + "\n")
            sc, gap = scores(refs, preset_frames(PresetModels(open_preset(args.preset)), run, cache, idx), params)
            rows = [[f"the preset's encoder + decoder ({args.preset})", "-", "-", f"{sc:.1f}", f"{gap:+.1f}"]]
            for w in weights:
                for p in passes:
                    log(f"memorise: {len(idx)} notes, {p} passes, sc weight {w:g}")
                    decoder, z = memorise(run, cache, idx, p, w)
                    sc, gap = scores(refs, memorised_frames(run, cache, idx, decoder, z), params)
                    rows.append(["fresh decoder + free latent per note", f"{w:g}", p, f"{sc:.1f}", f"{gap:+.1f}"])
            print(markdown_table(["fit to the same training notes", "sc weight", "passes per note",
                                  "median SC (dB)", "4-12 kHz share - real (dB, median)"], rows) + "\n")
        if "oracle" in sections:
            from training.model import FrameDecoder

            head = FrameDecoder(run.model, params)
            some = list(range(min(args.oracle_notes, len(idx))))
            log(f"oracle: {len(some)} notes frame by frame")
            ests = [oracle_frames(refs[k], float(cache.pitch[idx[k]]), head) for k in some]
            sc, gap = scores([refs[k] for k in some], ests, params)
            print(markdown_table(["the output head's own ceiling", "notes", "median SC (dB)",
                                  "4-12 kHz share - real (dB, median)"],
                                 [["each frame fitted alone (NNLS, best B of 5)", len(some), f"{sc:.1f}", f"{gap:+.1f}"]]) + "\n")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
