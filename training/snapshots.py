"""Snapshot latents: for each instrument of the reference soundfont, the latents that play it best across the keyboard.

A snapshot is one point of the latent space that a program change recalls for the whole
keyboard. The mean posterior mu of the instrument's notes is a first guess, but a real
instrument's spectrum changes with the key (FluidR3's electric piano: a second harmonic 10 dB
over the fundamental at A2, 19 dB under it at C5), and the decoder turns the mean into a
compromise that suits no key: the default preset's electric piano, recalled from its mean,
played every chorale note with an octave the transcriber heard as a note of its own (onset
F1 0.76 against FluidR3's 0.89). So training fits each snapshot: starting from the mean over
``SNAPSHOT_KEYS``, ``z`` descends the training loss (reconstruction only, the decoder frozen)
of all the instrument's training notes at once, across the keyboard and through their
releases. All instruments are fitted together in one batch. Data without
soundfont tags (NSynth, WAV folders) gets one snapshot per family, fitted the same way.

Even a fitted single latent stays a compromise across the keyboard (the 24 000-step default
model with the convergence term: the electric piano's octave 4-11 dB too loud at keys 60-67), so
the fit can give each snapshot a latent at every key of ``SNAPSHOT_TRACK_KEYS`` and play a note at
the interpolation between the two around its key (``synth.key_track``, as the engine plays it;
``[train] snapshot_key_track``, on in ``default.toml``: see the README).
All start from the mean; a smoothness term (``TRACK_SMOOTHNESS``) keeps neighbouring track keys
from drifting apart where few notes pin them. Measured on that model (``benchmarks.chorale``): the
electric piano's BWV 66.6 onset F1 0.877 against 0.708 with one latent (FluidR3: 0.894).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from synth.contract import SNAPSHOT_TRACK_KEYS
from synth.key_track import track_weights

SNAPSHOT_KEYS = (48, 72)
"""The fit starts from the mean mu of the instrument's notes in this key range (C3..C5, where most
playing happens; the extreme registers pull a whole-keyboard mean toward the centre of the space)."""
REFERENCE_SOUNDFONT = "fluidr3"
"""The soundfont tag whose programs become a preset's snapshots when the data has it."""
FIT_LR = 0.05
FIT_FRAMES_PER_NOTE = 4  # random stored frames of every note per step (all of a note's frames over the fit)
FIT_CHUNK_ROWS = 1024  # decoder rows per forward/backward pass
TRACK_SMOOTHNESS = 0.1
"""Weight of the mean squared step between neighbouring track keys' latents, in the latent's
std units (0 and 0.1 fit the notes equally well; 0.1 keeps the unpinned steps small)."""


def reference_soundfont(instrument_names: Any, wanted: str | None = None) -> str | None:
    """The soundfont tag whose programs become snapshots: ``wanted`` (None if absent), else
    ``REFERENCE_SOUNDFONT``, else the tag with the most programs; None when no instrument is a
    rendered ``..._TAG_PPP`` one (NSynth, WAV folders)."""
    from training.data import parse_instrument

    counts: dict[str, int] = {}
    for name in instrument_names:
        parsed = parse_instrument(str(name))
        if parsed:
            counts[parsed[0]] = counts.get(parsed[0], 0) + 1
    if not counts:
        return None
    if wanted is not None:
        return wanted if wanted in counts else None
    if REFERENCE_SOUNDFONT in counts:
        return REFERENCE_SOUNDFONT
    return sorted(counts, key=lambda t: (-counts[t], t))[0]


def fit_snapshot_latents(model: Any, cache: Any, idx: np.ndarray, labels: np.ndarray, run: Any,
                         device: torch.device, start: dict[int, torch.Tensor], steps: int,
                         seed: int = 0, scale: torch.Tensor | None = None,
                         track_keys: tuple[int, ...] = SNAPSHOT_TRACK_KEYS) -> dict[int, torch.Tensor]:
    """Fit the latents at ``track_keys (A,)`` of each label (an instrument, or a family for data
    without soundfont tags; ``labels (len(idx),)``, ``start``: label -> initial ``z (L,)``, at
    every track key) to the label's notes among ``idx`` -> label -> fitted ``track_z (A, L)``
    (CPU float32). No ``track_keys``: one latent for every key (``A = 1``).
    ``scale (L,)``: the latent's std, the smoothness term's unit (None: 1).

    Loss: ``training.model.vae_loss`` without KL (L1 log-mag, its gradient, pooled and convergence terms, as
    training weighs them) over ``FIT_FRAMES_PER_NOTE`` random frames of every note per step; Adam,
    ``steps`` steps, seeded. The model's weights are not touched.
    """
    from training.model import frame_times, vae_loss
    from training.train import note_holds

    ids = sorted(start)
    anchors = max(1, len(track_keys))
    if steps <= 0 or not ids:
        return {i: start[i].detach().float().cpu()[None].repeat(anchors, 1) for i in ids}
    idx, labels = np.asarray(idx), np.asarray(labels)
    keep = np.isin(labels, ids)
    order = np.argsort(idx[keep], kind="stable")  # sorted note ids: the memmap reads in order
    notes, row = idx[keep][order], np.searchsorted(ids, labels[keep][order])
    row = torch.from_numpy(row).to(device)
    n, t, f = len(notes), cache.logmag.shape[1], cache.logmag.shape[2]
    pitch = torch.from_numpy(np.asarray(cache.pitch[notes], np.float32)).to(device)
    velocity = torch.from_numpy(np.asarray(cache.velocity[notes], np.float32)).to(device)
    holds = note_holds(cache, notes)[:, None]
    # (n, A): each note's latent is its label's track latents interpolated at its key
    # (no track keys: one key, weight 1 for every note, so one latent plays the whole keyboard)
    weights = torch.from_numpy(track_weights(track_keys or (0,), cache.pitch[notes])).float().to(device)
    m = run.model
    z = torch.stack([start[i].detach().float()[None].repeat(anchors, 1) for i in ids]).to(device).requires_grad_(True)
    unit = (torch.ones(z.shape[-1]) if scale is None else scale.detach().float()).to(device)
    opt = torch.optim.Adam([z], lr=FIT_LR)
    gen = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(1, z.shape[-1], device=device)  # vae_loss's mu/logvar: no KL in the fit
    chunk = max(1, FIT_CHUNK_ROWS // FIT_FRAMES_PER_NOTE)  # notes per decoder call
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            frames = torch.randint(t, (n, FIT_FRAMES_PER_NOTE), generator=gen)
            time_on, time_off = frame_times(run.audio, frames, run.train.frame_stride, m.time_on_max, holds)
            opt.zero_grad(set_to_none=True)
            # Chunks of notes keep the decoder's (rows, harmonics, bins) lobe tensors in cache-sized
            # pieces; each chunk's loss is weighted by its share, so the gradient is the whole batch's.
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                rep = lambda v: v[a:b, None].expand(b - a, FIT_FRAMES_PER_NOTE).reshape(-1)  # noqa: E731,B023
                note_z = torch.einsum("na,nal->nl", weights[a:b], z[row[a:b]])
                pred = model.decoder(note_z.repeat_interleave(FIT_FRAMES_PER_NOTE, dim=0), rep(pitch),
                                     rep(velocity), time_on[a:b].reshape(-1).to(device),
                                     time_off[a:b].reshape(-1).to(device))
                # Only the frames this step uses are read from the float16 memmap (all notes would be GBs).
                target = torch.from_numpy(np.asarray(cache.logmag[notes[a:b, None], frames[a:b].numpy()], np.float32))
                shape = (b - a, FIT_FRAMES_PER_NOTE, f)  # (notes, frames, bins): convergence is taken per note
                loss = vae_loss(pred.view(shape), target.to(device).view(shape), zeros, zeros, 0.0, m.grad_weight,
                                0.0, m.pool_weight, m.pool_bins, m.sc_weight)["loss"]
                (loss * ((b - a) / n)).backward()
            if anchors > 1:
                (TRACK_SMOOTHNESS * (torch.diff(z, dim=1) / unit).pow(2).mean()).backward()
            opt.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    fitted = z.detach().float().cpu()
    return {i: fitted[k] for k, i in enumerate(ids)}
