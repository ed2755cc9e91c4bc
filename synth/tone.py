"""A timbre's tone curve: a graphic EQ fitted to the real instrument, applied to every decoded frame.

The decoder draws an instrument's partials but not always its balance: trained on two cores for
under 90 minutes it leaves the piano's and the chromatic percussion's 4-12 kHz share 8 dB under
the real notes' (README, Training), because the highs come only with many passes over each note.
A tone curve puts that balance back where the decoder cannot: one gain in dB at each of
``synth.contract.TONE_HZ`` (octaves), straight lines between them on a log-frequency axis, held
beyond the ends, scaling each frame's magnitudes after phase reconstruction (``synth.engine``;
before it, on the log-magnitudes, a boost would lift the log floor with the band). Training fits
each snapshot's curve to its instrument's real notes (``training.snapshots``), capture fits a
capture's to the recorded note (``synth.capture``); the engine glides it with the timbre.

Shapes: ``P = len(TONE_HZ)`` points, ``F`` bins of the preset's STFT.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from synth.contract import MAX_TONE_DB, TONE_HZ, SpectrogramParams

LN_PER_DB = math.log(10.0) / 20.0
"""A gain of g dB adds ``g * LN_PER_DB`` to ln(magnitude)."""
FIT_ROUNDS = 6
"""Rounds of ``fit_tone_db``: the curve's straight lines spread each point's gain over its
neighbours' bands, so one round leaves each band up to a third off; six leave under 0.1 dB on a
single note (``tests/test_tone.py``)."""
ENERGY_EPS = 1e-20  # keeps an empty band's ratio finite (it is clipped to MAX_TONE_DB anyway)
TONE_RULE = f"{len(TONE_HZ)} gains within ±{MAX_TONE_DB:g} dB"
"""What every reader of a tone curve (preset, library, saved state, engine) says it must be."""


def tone_weights(params: SpectrogramParams) -> NDArray[np.float64]:
    """``(F, P)``: bin f's ln-gain is ``weights[f] @ tone_db`` (the curve, in ln units per dB)."""
    freqs = np.arange(params.n_bins) * params.sample_rate / params.n_fft
    x = np.log2(np.maximum(freqs, 1.0))
    points = np.log2(np.asarray(TONE_HZ))
    weights = np.zeros((params.n_bins, len(TONE_HZ)))
    for p in range(len(TONE_HZ)):
        unit = np.zeros(len(TONE_HZ))
        unit[p] = 1.0
        weights[:, p] = np.interp(x, points, unit)  # held beyond the ends, as np.interp does
    return weights * LN_PER_DB


def tone_ln(tone_db: NDArray, params: SpectrogramParams) -> NDArray[np.float32]:
    """``(F,)`` the ln-gain the curve ``tone_db (P,)`` adds to each bin's log-magnitude."""
    return (tone_weights(params) @ np.asarray(tone_db, np.float64)).astype(np.float32)


def band_of_bins(params: SpectrogramParams) -> NDArray[np.int64]:
    """``(F,)`` the curve point whose band holds each bin: bands meet halfway (in log frequency)
    between neighbouring points, the first reaches down to 0 Hz and the last up to Nyquist."""
    freqs = np.arange(params.n_bins) * params.sample_rate / params.n_fft
    edges = np.sqrt(np.asarray(TONE_HZ[:-1]) * np.asarray(TONE_HZ[1:]))
    return np.searchsorted(edges, freqs, side="right").astype(np.int64)


def valid_tone(tone_db: object) -> bool:
    """True for ``P`` finite gains within +-MAX_TONE_DB (a list of numbers, not booleans, or an array)."""
    if isinstance(tone_db, (list, tuple)) and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in tone_db):
        return False
    try:
        values = np.asarray(tone_db, np.float64)
    except (TypeError, ValueError):
        return False
    return values.shape == (len(TONE_HZ),) and bool(np.all(np.abs(values) <= MAX_TONE_DB))


def fit_tone_db(real_energy: NDArray, decoded_energy: NDArray, params: SpectrogramParams,
                rounds: int = FIT_ROUNDS) -> NDArray[np.float64]:
    """The curve ``(P,)`` that gives the decoded notes the band balance of the real ones.

    ``real_energy, decoded_energy (N, F)`` (or ``(F,)``, one note): each note's energy per bin
    (squared magnitudes, summed over the frames the fit should match: ``note_energy``). A note's
    balance is each band's share of its energy (its level is the level trims' job). Each round
    shapes every decoded note by the curve so far and moves each point by the median over notes,
    in dB, of what its band's share still lacks: a median in dB, as the ear and the brightness
    figure judge notes, so a few notes whose highs the decoder misses entirely do not brighten
    all the others; and measured on each shaped note, so the curve's straight lines (a point's
    gain spreads over its neighbours' bands) and its effect on each note's total are counted.
    The curve is then shifted so the notes' pooled decoded energy stays what it was, and clipped
    to +-MAX_TONE_DB.
    """
    real = np.atleast_2d(np.asarray(real_energy, np.float64))
    decoded = np.atleast_2d(np.asarray(decoded_energy, np.float64))
    weights = tone_weights(params)
    band = band_of_bins(params)
    points = len(TONE_HZ)

    def shares_db(e: NDArray) -> NDArray[np.float64]:  # (N, F) -> (N, P): each band's share of its note, dB
        per_band = np.stack([np.bincount(band, row, minlength=points) for row in e])
        return 10.0 * np.log10(per_band / np.maximum(e.sum(1, keepdims=True), ENERGY_EPS) + ENERGY_EPS)

    real_db = shares_db(real)
    unit = decoded / np.maximum(decoded.sum(1, keepdims=True), ENERGY_EPS)  # every note alike in the level
    tone = np.zeros(points)
    for _ in range(rounds):
        tone += np.median(real_db - shares_db(decoded * np.exp(2.0 * (weights @ tone))), axis=0)
        tone -= 10.0 * np.log10(max(float((unit * np.exp(2.0 * (weights @ tone))).sum()), ENERGY_EPS) / len(unit))
        tone = np.clip(tone, -MAX_TONE_DB, MAX_TONE_DB)
    return tone


def note_energy(log_mag: NDArray, log_floor: float) -> NDArray[np.float64]:
    """The energy per bin of a note's frames ``log_mag (..., T, F)`` (ln(magnitude + floor)), summed
    over its frames -> ``(..., F)``: ``(F,)`` for one note, ``(N, F)`` for ``N`` notes."""
    mag = np.maximum(np.exp(np.asarray(log_mag, np.float64)) - log_floor, 0.0)
    return (mag * mag).sum(-2)
