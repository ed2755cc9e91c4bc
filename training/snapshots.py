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

from synth.contract import BRIGHT_BAND_HZ, SNAPSHOT_TRACK_KEYS, TONE_HZ
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
BAND_EPS = 1e-12  # energies are squared linear magnitudes; keeps an empty band's log finite
BAND_SHARE_FLOOR = 1e-4
"""Shares are compared above -40 dB only: a band 60 dB under the note's energy is inaudible, and the
drawbar organ's real notes (band shares of -89 to -44 dB at keys 36-72) pulled the fit toward a
brighter organ that sounded further from them (LSD at key 60: 7.3 -> 11.6 dB) without the floor."""
BAND_FROM_SECONDS = 0.1
"""The term weighs the notes' bodies, not their first 0.1 s: brightening the attacks of the electric
piano's snapshot toward its tines' bark gave the chorale's transcriber ghost notes (BWV 66.6 onset F1
0.900 -> 0.741)."""
BAND_KEYS = (36, 84)
"""Only notes of these keys (inclusive) count: the range the brightness figure measures, where the
decoder was trained on most notes; the extreme registers' highs are the decoder's least reliable."""
BAND_MARGIN_DB = 2.0
"""Gaps within this many dB cost nothing: the term moves only the registers that are clearly too dark
or too bright, and leaves the rest to the spectral loss (a register already close lost spectral
match when pulled to 0 dB: the drawbar organ's LSD to its real notes 7.3 -> 10.5 dB without a margin)."""


def band_energies(log_mag: torch.Tensor, log_floor: float, band: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy in the band and in all bins per row: ``log_mag (R, F)`` (ln(magnitude + floor))
    -> ``band (R,), total (R,)``."""
    energy = (torch.exp(log_mag) - log_floor).clamp(min=0.0).pow(2)
    return energy[:, band].sum(-1), energy.sum(-1)


def band_share_gap_grad(pred: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
                        weight: float, margin_db: float = BAND_MARGIN_DB) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The brightness term over groups and its gradient by the groups' predicted energies.

    ``pred, target``: (band, total) energies summed per group ``(G,)``. The term is
    ``weight * mean_g max(|share_dB(pred_g) - share_dB(target_g)| - margin_db, 0)``, where
    ``share_dB = 10 log10(band / total + BAND_SHARE_FLOOR)``; returns ``(term, d term / d pred band
    (G,), d term / d pred total (G,))``. The fit computes the group sums without gradient first, then
    backpropagates these coefficients through each chunk of notes (a group's notes span chunks),
    which gives the term's exact gradient chunk by chunk.
    """
    band, total = (p.detach().double().requires_grad_(True) for p in pred)

    def share_db(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10((b + BAND_EPS) / (t + BAND_EPS) + BAND_SHARE_FLOOR)

    gap = share_db(band, total) - share_db(target[0].double(), target[1].double())
    term = weight * (gap.abs() - margin_db).clamp(min=0.0).mean()
    d_band, d_total = torch.autograd.grad(term, (band, total))
    return term.detach(), d_band, d_total


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
                         track_keys: tuple[int, ...] = SNAPSHOT_TRACK_KEYS,
                         band_weight: float = 0.0, sc_weight: float = 0.0) -> dict[int, torch.Tensor]:
    """Fit the latents at ``track_keys (A,)`` of each label (an instrument, or a family for data
    without soundfont tags; ``labels (len(idx),)``, ``start``: label -> initial ``z (L,)``, at
    every track key) to the label's notes among ``idx`` -> label -> fitted ``track_z (A, L)``
    (CPU float32). No ``track_keys``: one latent for every key (``A = 1``).
    ``scale (L,)``: the latent's std, the smoothness term's unit (None: 1). ``band_weight > 0`` adds
    the brightness term (``band_share_gap_grad``): per label and track key (each note counted at its
    nearer track key), the gap in dB between the 4-12 kHz energy share of the decoded frames and of
    the notes' own, over the step's frames from ``BAND_FROM_SECONDS`` after the onset.

    Loss: ``training.model.vae_loss`` without KL (L1 log-mag, its gradient and pooled terms, as
    training weighs them; the convergence term at ``sc_weight``, not training's weight) over
    ``FIT_FRAMES_PER_NOTE`` random frames of every note per step; Adam, ``steps`` steps, seeded.
    The model's weights are not touched.
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
    # The brightness term's groups: label x nearer track key (a register of one instrument).
    group = row * anchors + weights.argmax(1)
    n_groups = len(ids) * anchors
    band = run.audio.bins_between(*BRIGHT_BAND_HZ)
    in_band_keys = torch.from_numpy((cache.pitch[notes] >= BAND_KEYS[0]) & (cache.pitch[notes] <= BAND_KEYS[1]))
    floor = run.audio.log_floor
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            frames = torch.randint(t, (n, FIT_FRAMES_PER_NOTE), generator=gen)
            time_on, time_off = frame_times(run.audio, frames, run.train.frame_stride, m.time_on_max, holds)
            opt.zero_grad(set_to_none=True)

            def decode(a: int, b: int) -> torch.Tensor:
                rep = lambda v: v[a:b, None].expand(b - a, FIT_FRAMES_PER_NOTE).reshape(-1)  # noqa: E731
                note_z = torch.einsum("na,nal->nl", weights[a:b], z[row[a:b]])
                return model.decoder(note_z.repeat_interleave(FIT_FRAMES_PER_NOTE, dim=0), rep(pitch),
                                     rep(velocity), time_on[a:b].reshape(-1).to(device),
                                     time_off[a:b].reshape(-1).to(device))

            # Only the frames this step uses are read from the float16 memmap (all notes would be GBs),
            # once per step: the brightness term's first pass and the loss's pass share them.
            targets = [torch.from_numpy(np.asarray(cache.logmag[notes[a:a + chunk, None], frames[a:a + chunk].numpy()],
                                                   np.float32)).to(device) for a in range(0, n, chunk)]

            def body_rows(a: int, b: int) -> torch.Tensor:
                counted = (time_on[a:b] >= BAND_FROM_SECONDS) & in_band_keys[a:b, None]
                return counted.reshape(-1).float().to(device)

            coef = None
            if band_weight > 0:
                sums = torch.zeros(4, n_groups, dtype=torch.float64, device=device)  # pred band/total, target band/total
                with torch.no_grad():
                    for a in range(0, n, chunk):
                        b = min(n, a + chunk)
                        g = group[a:b].repeat_interleave(FIT_FRAMES_PER_NOTE)
                        body = body_rows(a, b)
                        for k, e in enumerate(band_energies(decode(a, b), floor, band)
                                              + band_energies(targets[a // chunk].reshape(-1, f), floor, band)):
                            sums[k].index_add_(0, g, (e * body).double())
                _, d_band, d_total = band_share_gap_grad((sums[0], sums[1]), (sums[2], sums[3]), band_weight)
                coef = (d_band.float(), d_total.float())
            # Chunks of notes keep the decoder's (rows, harmonics, bins) lobe tensors in cache-sized
            # pieces; each chunk's loss is weighted by its share, so the gradient is the whole batch's.
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                pred, target = decode(a, b), targets[a // chunk]
                shape = (b - a, FIT_FRAMES_PER_NOTE, f)  # (notes, frames, bins): convergence is taken per note
                loss = vae_loss(pred.view(shape), target.view(shape), zeros, zeros, 0.0, m.grad_weight,
                                0.0, m.pool_weight, m.pool_bins, sc_weight)["loss"] * ((b - a) / n)
                if coef is not None:  # the brightness term's exact gradient through this chunk's energies
                    g = group[a:b].repeat_interleave(FIT_FRAMES_PER_NOTE)
                    e_band, e_total = band_energies(pred, floor, band)
                    loss = loss + ((coef[0][g] * e_band + coef[1][g] * e_total) * body_rows(a, b)).sum()
                loss.backward()
            if anchors > 1:
                (TRACK_SMOOTHNESS * (torch.diff(z, dim=1) / unit).pow(2).mean()).backward()
            opt.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    fitted = z.detach().float().cpu()
    return {i: fitted[k] for k, i in enumerate(ids)}


TONE_FRAME_STEP = 4
"""The tone fit reads every 4th stored frame of a note (attack, body and release alike, as the ear
and the brightness figure take them): the curve is a sum over frames, and four times fewer
decoder rows keep it under a minute on two cores."""


@torch.no_grad()
def fit_snapshot_tones(model: Any, cache: Any, idx: np.ndarray, labels: np.ndarray, run: Any,
                       device: torch.device, fitted: dict[int, torch.Tensor],
                       track_keys: tuple[int, ...] = SNAPSHOT_TRACK_KEYS) -> dict[int, np.ndarray]:
    """Each label's tone curve (``synth.tone``): the graphic EQ that gives its fitted snapshot
    (``fitted``: label -> ``track_z (A, L)``, as ``fit_snapshot_latents`` returns) the band balance of
    its own notes among ``idx`` at keys ``BAND_KEYS`` (``synth.tone.fit_tone_db``: per band, the median over
    notes) -> label -> ``tone_db (P,)``.
    A label without notes in that range keeps a flat curve."""
    from synth.tone import fit_tone_db, note_energy
    from training.model import frame_times
    from training.train import note_holds

    floor = run.audio.log_floor
    idx, labels = np.asarray(idx), np.asarray(labels)
    frames = torch.arange(0, cache.logmag.shape[1], TONE_FRAME_STEP)
    tones: dict[int, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        for label, track_z in fitted.items():
            notes = np.sort(idx[(labels == label) & (cache.pitch[idx] >= BAND_KEYS[0]) & (cache.pitch[idx] <= BAND_KEYS[1])])
            if notes.size == 0:
                tones[label] = np.zeros(len(TONE_HZ))
                continue
            weights = torch.from_numpy(track_weights(track_keys or (0,), cache.pitch[notes])).float()
            note_z = (weights @ track_z.float()).to(device)  # (n, L)
            time_on, time_off = frame_times(run.audio, frames[None].expand(len(notes), -1), run.train.frame_stride,
                                            run.model.time_on_max, note_holds(cache, notes)[:, None])
            t = len(frames)
            rep = lambda v: torch.as_tensor(np.asarray(v, np.float32))[:, None].expand(-1, t).reshape(-1)  # noqa: E731
            inputs = (note_z.repeat_interleave(t, dim=0), rep(cache.pitch[notes]).to(device),
                      rep(cache.velocity[notes]).to(device), time_on.reshape(-1).to(device), time_off.reshape(-1).to(device))
            decoded = torch.cat([model.decoder(*(x[a:a + FIT_CHUNK_ROWS] for x in inputs)).double().cpu()
                                 for a in range(0, len(notes) * t, FIT_CHUNK_ROWS)]).view(len(notes), t, -1)
            real = np.asarray(cache.logmag[notes][:, frames.numpy()], np.float64)
            tones[label] = fit_tone_db(note_energy(real, floor), note_energy(decoded.numpy(), floor), run.audio)
    finally:
        model.train(was_training)
    return tones
