"""Train the timbre VAE on a feature cache.

    python -m training.train --config training/configs/default.toml --data DIR --out runs/NAME \
        [--resume] [--features DIR] [--steps N] [--device cpu|cuda]

Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on CPU,
nccl on CUDA); each rank samples its own ``batch_notes`` notes, rank 0 writes every file.
Run folder: ``checkpoint.pt`` (weights_only-loadable), ``config.toml`` (fully resolved),
``log.csv``, ``report.png``, ``latent_stats.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tomli_w
import torch
import torch.distributed as dist
from tqdm import tqdm

from synth.contract import (DEFAULT_KNOB_TRAVEL, LATENT_MAP_FILE, LATENT_MAP_POINTS, SNAPSHOT_HOME_KEY, SNAPSHOT_TRACK_KEYS,
                            SpectrogramParams)
from synth.errors import VaesynthError, run_command
from synth.key_track import latent_at
from synth.latent_map import LatentMap
from training.model import (
    ENCODERS,
    TimbreVAE,
    VAEConfig,
    beta_at,
    frame_times,
    rank_latents,
    vae_loss,
)
from training.inharmonicity import inharmonicity_loss, measured_inharmonicity
from training.snapshots import SNAPSHOT_KEYS, fit_snapshot_latents, fit_snapshot_tones, reference_soundfont

LOG_FIELDS = ("step", "loss", "recon", "grad", "pool", "sc", "inharm", "kl", "beta", "val_loss", "lr", "notes_per_s")


class TrainError(VaesynthError):
    """A bad config, data folder or run folder; the message says which."""


@dataclass
class TrainConfig:
    """The ``[train]`` table of a config."""

    steps: int = 3000
    batch_notes: int = 16
    frames_per_note: int = 32
    lr: float = 1e-3
    lr_warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    val_every: int = 250
    val_notes: int = 64
    ckpt_every: int = 500
    log_every: int = 25
    seed: int = 0
    frame_stride: int = 2
    report_notes: int = 6
    holdout_programs: list[int] = field(default_factory=list)
    """GM programs never trained on (every soundfont): the unseen-program benchmark group."""
    snapshot_fit_steps: int = 80
    """Steps of the snapshot fit after training (``training.snapshots``); 0 keeps the mean mu."""
    snapshot_key_track: bool = False
    """Fit each snapshot's latent at every key of ``SNAPSHOT_TRACK_KEYS`` (``synth.key_track``)
    instead of one latent for the whole keyboard (see the README for what it gains and costs)."""
    snapshot_sc_weight: float = 0.0
    """Weight of the spectral-convergence term in the snapshot fit, apart from ``[model] sc_weight``:
    the fit places a few latents on one instrument's notes, and a heavy SC term there trades the
    chorale's onsets of one instrument for another's (README, Training); 0 = off."""
    snapshot_tone: bool = False
    """Fit each snapshot's tone curve (``training.snapshots.fit_snapshot_tones``, ``synth.tone``) after its
    latent: the graphic EQ that gives it its instrument's band balance, which export writes as ``tone_db``."""
    joint_encoder: str = ""
    """The encoder kind (``training.model.ENCODERS``) trained with the decoder for ``steps`` when
    ``encoder_refit_steps`` replaces it afterwards; empty: ``[model] encoder`` throughout."""
    encoder_refit_steps: int = 0
    """After ``steps``, a fresh ``[model] encoder`` is trained alone against the frozen decoder for
    this many steps (``Trainer.begin_refit``): it learns the finished decoder's latents, and it
    generalises to held-out notes better than the encoder trained beside the decoder (README,
    Training: the encoder); 0 = off."""
    snapshot_band_weight: float = 0.0
    """Weight of the snapshot fit's brightness term (``training.snapshots.band_share_gap_grad``): the
    gap in dB between a snapshot's 4-12 kHz energy share and its notes', per register; 0 = off."""


@dataclass
class RunConfig:
    """Everything a run needs; written to ``config.toml`` beside the checkpoint."""

    model: VAEConfig
    train: TrainConfig
    audio: SpectrogramParams
    data: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "train": asdict(self.train),
                "audio": self.audio.to_dict(), "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        unknown = set(d) - {"model", "train", "audio", "data"}
        if unknown:
            raise TrainError(f"unknown config table(s): {', '.join(sorted(unknown))}")
        train_keys = {f.name for f in fields(TrainConfig)}
        bad = set(d.get("train", {})) - train_keys
        if bad:
            raise TrainError(f"unknown [train] option(s): {', '.join(sorted(bad))}")
        try:
            audio = SpectrogramParams.from_dict(d.get("audio", {}))
            audio.validate()
            model = VAEConfig.from_dict(d.get("model", {}))
        except (TypeError, ValueError) as exc:
            raise TrainError(f"bad config: {exc}") from None
        train = TrainConfig(**d.get("train", {}))
        if train.joint_encoder and train.joint_encoder not in ENCODERS:
            raise TrainError(f"bad config: [train] joint_encoder = {train.joint_encoder!r}: one of {', '.join(ENCODERS)}")
        return cls(model, train, audio, dict(d.get("data", {})))


def total_steps(tc: TrainConfig) -> int:
    """Steps of a whole run: the decoder's ``steps`` and the encoder refit after them."""
    return tc.steps + max(0, tc.encoder_refit_steps)


def is_refit_step(tc: TrainConfig, index: int) -> bool:
    """Whether step ``index`` (0-based) trains the encoder refit (past the decoder's ``steps``)."""
    return tc.encoder_refit_steps > 0 and index >= tc.steps


def encoder_at(run: RunConfig, step: int) -> str:
    """The encoder kind a checkpoint at ``step`` holds: the joint phase's until the refit has run a
    step (a checkpoint at exactly ``steps`` is the joint phase's last)."""
    if run.train.encoder_refit_steps > 0 and step <= run.train.steps:
        return run.train.joint_encoder or run.model.encoder
    return run.model.encoder


def load_config(path: str | Path) -> RunConfig:
    try:
        with open(path, "rb") as f:
            return RunConfig.from_dict(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TrainError(f"{path}: cannot read config ({exc})") from None


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``; the encoder refit after ``steps``
    (``encoder_refit_steps``) has a schedule of its own, the same shape."""
    length = cfg.steps
    if is_refit_step(cfg, step):
        step, length = step - cfg.steps, cfg.encoder_refit_steps
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    frac = (step - cfg.lr_warmup_steps) / max(1, length - cfg.lr_warmup_steps)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


# ---------------------------------------------------------------------------- data

def load_notes(cache: Any, idx: np.ndarray) -> torch.Tensor:
    """Whole notes ``(B, T, F)`` float32 from the float16 memmap (sorted reads are faster)."""
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx),) + tuple(cache.logmag.shape[1:]), dtype=np.float32)
    out[order] = cache.logmag[idx[order]]
    return torch.from_numpy(out)


def note_pitches(cache: Any, idx: np.ndarray) -> torch.Tensor:
    """MIDI pitches of notes ``idx`` -> ``(B,)`` float32."""
    return torch.from_numpy(np.asarray(cache.pitch[idx], dtype=np.float32))


def note_holds(cache: Any, idx: np.ndarray) -> torch.Tensor:
    """Key-down seconds of notes ``idx`` -> ``(B,)`` float32."""
    return torch.from_numpy(np.asarray(cache.hold[idx], dtype=np.float32))


def make_batch(cache: Any, notes: np.ndarray, run: RunConfig, gen: torch.Generator,
               n_notes: int, sample_notes: bool = True) -> dict[str, torch.Tensor]:
    """Sample ``n_notes`` notes and ``frames_per_note`` frames each (all randomness from ``gen``).

    Returns ``log_mag (B, T, F)``, ``target (B, S, F)``, ``pitch, velocity (B,)``,
    ``time_on, time_off (B, S)``, ``noise (B, L)``.
    """
    tc = run.train
    pick = notes[torch.randint(len(notes), (n_notes,), generator=gen).numpy()] if sample_notes else notes[:n_notes]
    log_mag = load_notes(cache, pick)
    b, t, f = log_mag.shape
    frames = torch.randint(t, (b, tc.frames_per_note), generator=gen)
    time_on, time_off = frame_times(run.audio, frames, tc.frame_stride, run.model.time_on_max,
                                    note_holds(cache, pick)[:, None])
    target = torch.gather(log_mag, 1, frames[..., None].expand(-1, -1, f))
    return {"log_mag": log_mag, "target": target, "time_on": time_on, "time_off": time_off,
            "pitch": note_pitches(cache, pick),
            "velocity": torch.from_numpy(np.asarray(cache.velocity[pick], dtype=np.float32)),
            "noise": torch.randn(b, run.model.latent_size, generator=gen)}


def open_cache(data: str | None, features: str | None, params: SpectrogramParams, frame_stride: int) -> tuple[Any, str]:
    """Open the feature cache, building it from the NSynth folder ``data`` when missing."""
    from training.features import FeatureCache, build_feature_cache

    if features is None:
        if data is None:
            raise TrainError("give --data (an NSynth-layout folder) or --features (a feature cache)")
        root = Path(data).resolve()
        features = str(root.parent / f"{root.name}_features")
    if (Path(features) / "meta.json").is_file():
        cache = FeatureCache.open(features)
        if cache.params != params or cache.frame_stride != frame_stride:
            raise TrainError(f"{features}: feature cache was built with other audio params or frame_stride")
        return cache, features
    if data is None or not Path(data).is_dir():
        raise TrainError(f"no feature cache in {features} and no data folder {data!r} to build it from")
    build_feature_cache(data, params, features, frame_stride=frame_stride)
    return FeatureCache.open(features), features


# ---------------------------------------------------------------------------- distributed

def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Init the process group when launched by torchrun; returns ``(rank, world, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda but CUDA is not available")
    dev = torch.device(device)
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, dev


def gather_rng(gen: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's sampler state (rank 0 saves them all so a resume continues each rank)."""
    state = gen.get_state()
    if world == 1:
        return [state]
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    return states


# ---------------------------------------------------------------------------- the loop

class Trainer:
    """Model, optimiser, sampler and run folder of one training run."""

    def __init__(self, run: RunConfig, cache: Any, out: Path, device: torch.device,
                 rank: int = 0, world: int = 1) -> None:
        self.run, self.cache, self.out = run, cache, out
        self.device, self.rank, self.world = device, rank, world
        torch.manual_seed(run.train.seed)  # identical initial weights on every rank
        self.model = TimbreVAE(run.model, run.audio, encoder_at(run, 0)).to(device)
        self._optimise(self.model.parameters())
        self.gen = torch.Generator().manual_seed(run.train.seed * 1000 + rank)
        self.train_idx, self.val_idx = (np.asarray(a, dtype=np.int64) for a in
                                        cache.split(run.train.val_fraction, seed=run.train.seed,
                                                    holdout_programs=run.train.holdout_programs))
        if len(self.train_idx) == 0:
            raise TrainError("the training split is empty (too few notes)")
        self.step = 0
        self.in_refit = False
        self.rows: list[dict[str, float]] = []
        self.val_batch = self._fixed_val_batch()

    def _optimise(self, params: Any) -> None:
        """(Re)wrap the model for DDP and build the optimiser over ``params``."""
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.model)
        self.opt = torch.optim.AdamW(params, lr=self.run.train.lr, weight_decay=0.0)

    @property
    def refitting(self) -> bool:
        """Past ``steps`` with an encoder refit: only a fresh encoder trains (``begin_refit``)."""
        return is_refit_step(self.run.train, self.step)

    def begin_refit(self) -> None:
        """Replace the encoder with a fresh ``[model] encoder`` and train only it from here on: the
        decoder is frozen, so the new encoder learns the finished decoder's latents."""
        torch.manual_seed(self.run.train.seed + 1)  # identical initial weights on every rank
        self.model.encoder = ENCODERS[self.run.model.encoder](self.run.model, self.run.audio).to(self.device)
        self.model.decoder.requires_grad_(False)
        self._optimise(self.model.encoder.parameters())
        self.in_refit = True

    def _fixed_val_batch(self) -> dict[str, torch.Tensor] | None:
        notes = self.val_idx[: self.run.train.val_notes]
        if len(notes) == 0:
            return None
        gen = torch.Generator().manual_seed(12345)  # same frames every validation
        return make_batch(self.cache, notes, self.run, gen, len(notes), sample_notes=False)

    def _forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], sample: bool) -> dict[str, torch.Tensor]:
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            pred, mu, logvar, inharm = model(b["log_mag"], b["pitch"], b["velocity"], b["time_on"],
                                             b["time_off"], b["noise"] if sample else None)
        m = self.run.model
        parts = vae_loss(pred.float(), b["target"], mu.float(), logvar.float(), beta_at(self.step, m),
                         m.grad_weight, m.free_bits, m.pool_weight, m.pool_bins, m.sc_weight)
        if m.inharm_weight > 0 and m.max_inharmonicity > 0:
            # B is a property of the string, not of the frame: measure it once per note, on the
            # peak over its sampled frames (32x cheaper than per frame). Not the mean: most
            # sampled frames of a short note are release or silence, and in the mean its
            # partials no longer stand out (every piano note read unvoiced).
            audio, frames = self.run.audio, inharm.shape[1]
            measured, voiced = measured_inharmonicity(b["target"].amax(1), b["pitch"], m.max_inharmonicity,
                                                      m.n_harmonics, audio.sample_rate, audio.n_fft)
            per_frame = lambda x: x[:, None].expand(-1, frames).reshape(-1)  # noqa: E731
            parts["inharm"] = inharmonicity_loss(inharm.float().reshape(-1), per_frame(measured), per_frame(voiced),
                                                 m.max_inharmonicity)
            parts["loss"] = parts["loss"] + m.inharm_weight * parts["inharm"]
        return parts

    def train_step(self) -> dict[str, float]:
        if self.refitting and not self.in_refit:
            self.begin_refit()
        lr = lr_at(self.step, self.run.train)
        for group in self.opt.param_groups:
            group["lr"] = lr
        batch = make_batch(self.cache, self.train_idx, self.run, self.gen, self.run.train.batch_notes)
        self.model.train()
        parts = self._forward(self.ddp, batch, sample=True)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], self.run.train.grad_clip)
        self.opt.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in parts.items()} | {"lr": lr}

    @torch.no_grad()
    def validate(self) -> float:
        if self.val_batch is None:
            return float("nan")
        self.model.eval()
        return float(self._forward(self.model, self.val_batch, sample=False)["loss"])

    def state(self) -> dict[str, Any]:
        """Checkpoint content: tensors, dicts, lists and numbers only (weights_only-loadable)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                "rng": gather_rng(self.gen, self.world), "torch_rng": torch.get_rng_state(), "log": self.rows}

    def load(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.step = int(ckpt["step"])
        if is_refit_step(self.run.train, self.step - 1):
            self.begin_refit()  # the checkpoint holds the refit's encoder and its optimiser
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if len(ckpt["rng"]) != self.world:
            raise TrainError(f"{path}: saved by {len(ckpt['rng'])} process(es), resumed with {self.world}")
        self.gen.set_state(ckpt["rng"][self.rank])
        torch.set_rng_state(ckpt["torch_rng"])
        self.rows = [dict(r) for r in ckpt["log"]]

    def save(self) -> None:
        state = self.state()  # collective (all ranks gather RNG states)
        if self.rank == 0:
            write_text_atomic(tomli_w.dumps(self.run.to_dict()), self.out / "config.toml")
            save_atomic(state, self.out / "checkpoint.pt")
            write_log(self.rows, self.out / "log.csv")


def write_log(rows: list[dict[str, float]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in rows)
    os.replace(tmp, path)


def fit(trainer: Trainer, progress: bool = True, until: int | None = None) -> None:
    """Run from ``trainer.step`` to the run's end (``total_steps``: the decoder's steps, then any
    encoder refit) or stop early at ``until``: log, validate, checkpoint."""
    tc = trainer.run.train
    last = total_steps(tc)
    end = last if until is None else min(until, last)
    bar = tqdm(total=last, initial=trainer.step, disable=not progress or trainer.rank != 0,
               dynamic_ncols=True, desc="train")
    acc: dict[str, float] = {}
    n_acc, t0 = 0, time.perf_counter()
    while trainer.step < end:
        parts = trainer.train_step()
        acc = {k: acc.get(k, 0.0) + v for k, v in parts.items()}
        n_acc += 1
        bar.update(1)
        step = trainer.step
        phase_end = step in (tc.steps, last)
        if step % tc.log_every == 0 or phase_end or step % tc.val_every == 0:
            dt = time.perf_counter() - t0
            row = {k: v / n_acc for k, v in acc.items()} | {
                "step": step, "beta": beta_at(step, trainer.run.model),
                "notes_per_s": n_acc * tc.batch_notes * trainer.world / max(dt, 1e-9), "val_loss": ""}
            if step % tc.val_every == 0 or phase_end:
                row["val_loss"] = trainer.validate()
            trainer.rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{row['val_loss']:.3f}" if row["val_loss"] != "" else "-")
            acc, n_acc, t0 = {}, 0, time.perf_counter()
        if step % tc.ckpt_every == 0 or phase_end:
            trainer.save()
    bar.close()


# ---------------------------------------------------------------------------- results

@torch.no_grad()
def encode_notes(model: TimbreVAE, cache: Any, idx: np.ndarray, device: torch.device,
                 batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu, logvar (N, L)`` for notes ``idx`` (float32, on CPU)."""
    model.eval()
    mus, logvars = [], []
    for i in range(0, len(idx), batch):
        mu, logvar = model.encoder(load_notes(cache, idx[i:i + batch]).to(device), note_pitches(cache, idx[i:i + batch]).to(device))
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


KNOBS = 8  # hardware knobs (CC 70-77): the preset's [knobs] has min(KNOBS, latent_size) rows


def principal_directions(mu: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of the aggregate posterior means ``mu (N, L)``.

    Returns ``center (L,)``, ``directions (k, L)`` (orthonormal rows, most variance first, sign
    fixed so each row's largest entry is positive), ``scale (k,)`` (std of mu projected on each
    row) and ``explained (k,)`` (fraction of the total variance).
    """
    mu = mu.double()
    center = mu.mean(0)
    x = mu - center
    cov = x.T @ x / max(1, len(mu))
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)[:k]
    dirs = evecs[:, order].T.contiguous()  # (k, L)
    flip = torch.sign(dirs.gather(1, dirs.abs().argmax(1, keepdim=True)))
    dirs = dirs * flip
    scale = (x @ dirs.T).std(0, unbiased=False)
    explained = evals[order].clamp(min=0) / evals.clamp(min=0).sum().clamp(min=1e-30)
    return center.float(), dirs.float(), scale.float(), explained.float()


def latent_stats(model: TimbreVAE, cache: Any, idx: np.ndarray, device: torch.device,
                 encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Latent statistics over the training notes ``idx`` (what export turns into a preset).

    ``knob_order``/``mean_kl`` (dims by KL), per-dim ``mean``/``std`` of mu, ``knobs``
    (PCA: center, directions, scale, explained), mean mu per family and per instrument.
    """
    mu, logvar = encoded if encoded is not None else encode_notes(model, cache, idx, device)
    order, kl = rank_latents(mu, logvar)
    center, dirs, scale, explained = principal_directions(mu, min(KNOBS, mu.shape[1]))

    pitch = np.asarray(cache.pitch[idx])
    middle = (pitch >= SNAPSHOT_KEYS[0]) & (pitch <= SNAPSHOT_KEYS[1])

    def means(labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        """Mean mu per label over its notes in SNAPSHOT_KEYS (all its notes when it has none there):
        the snapshot fit's starting point."""
        out = {}
        for f in sorted(set(int(x) for x in labels)):
            own = labels == f
            sel = torch.from_numpy(own & middle if (own & middle).any() else own)
            out[str(names[f])] = {"count": int(sel.sum()), "z": mu[sel].mean(0).tolist()}
        return out

    return {"knob_order": order, "mean_kl": kl, "mean": mu.mean(0).tolist(),
            "std": mu.std(0, unbiased=False).clamp(min=1e-3).tolist(),
            "knobs": {"center": center.tolist(), "directions": dirs.tolist(), "scale": scale.tolist(),
                      "explained": explained.tolist()},
            "families": means(np.asarray(cache.family[idx]), cache.families),
            "instruments": means(np.asarray(cache.instrument[idx]), cache.instruments),
            "pitch_min": float(pitch.min()), "pitch_max": float(pitch.max()), "n_notes": len(idx)}


def latent_map(cache: Any, idx: np.ndarray, encoded: tuple[torch.Tensor, torch.Tensor], seed: int,
               points: int = LATENT_MAP_POINTS) -> LatentMap:
    """A seeded sample of ``points`` training notes' posteriors (``encoded``: mu, logvar of ``idx``)."""
    from training.data import parse_instrument

    mu, logvar = encoded
    pick = np.sort(np.random.default_rng(seed).permutation(len(idx))[:points])
    notes = np.asarray(idx)[pick]
    programs = [parse_instrument(str(cache.instruments[i])) for i in np.asarray(cache.instrument[notes])]
    return LatentMap(mu=mu[pick].numpy().astype(np.float32),
                     sigma=torch.exp(0.5 * logvar[pick]).numpy().astype(np.float32),
                     family=np.asarray(cache.family[notes], dtype=np.int16),
                     program=np.asarray([p[1] if p else -1 for p in programs], dtype=np.int16),
                     pitch=np.asarray(cache.pitch[notes], dtype=np.float32),
                     families=tuple(str(f) for f in cache.families))


@torch.no_grad()
def reconstruct(model: TimbreVAE, cache: Any, note: int, run: RunConfig, device: torch.device) -> np.ndarray:
    """Decode every stored frame of note ``note`` from its mean latent -> ``(T, F)``."""
    x = load_notes(cache, np.array([note])).to(device)
    mu, _ = model.encoder(x, note_pitches(cache, np.array([note])).to(device))
    t = x.shape[1]
    time_on, time_off = frame_times(run.audio, torch.arange(t), run.train.frame_stride, run.model.time_on_max,
                                    float(cache.hold[note]))
    full = lambda v: torch.full((t,), float(v), device=device)  # noqa: E731
    pred = model.decoder(mu.expand(t, -1), full(cache.pitch[note]), full(cache.velocity[note]),
                         time_on.to(device), time_off.to(device))
    return pred.float().cpu().numpy()


@torch.no_grad()
def knob_sweep(model: TimbreVAE, stats: dict[str, Any], knob: int, device: torch.device, steps: int = 21,
               pitch: float = 60.0, velocity: float = 100.0, time_on: float = 0.5) -> np.ndarray:
    """Held-note frames along knob ``knob`` from -1 to +1 (center ± DEFAULT_KNOB_TRAVEL scale: export
    may widen a weak knob's travel later) -> ``(steps, F)``."""
    k = stats["knobs"]
    a = torch.linspace(-1.0, 1.0, steps)[:, None]
    z = torch.tensor(k["center"]) + a * DEFAULT_KNOB_TRAVEL * k["scale"][knob] * torch.tensor(k["directions"][knob])
    full = lambda v: torch.full((steps,), float(v), device=device)  # noqa: E731
    return model.decoder(z.to(device), full(pitch), full(velocity), full(time_on), full(-1.0)).float().cpu().numpy()


def report_notes(cache: Any, idx: np.ndarray, n: int) -> list[int]:
    """``n`` notes of ``idx`` spread over the keyboard (keys 36..96) and over families."""
    if len(idx) == 0:
        return []
    pitch, fam = np.asarray(cache.pitch[idx]), np.asarray(cache.family[idx])
    chosen: list[int] = []
    used_fams: set[int] = set()
    for target in np.linspace(36, 96, n):
        cost = np.abs(pitch - target) + 24.0 * np.isin(fam, list(used_fams)) + 1e6 * np.isin(idx, chosen)
        best = int(np.argmin(cost))
        chosen.append(int(idx[best]))
        used_fams.add(int(fam[best]))
        if len(used_fams) == len(set(fam.tolist())):
            used_fams.clear()
    return chosen


def write_report(trainer: Trainer, stats: dict[str, Any], path: Path, mu: torch.Tensor | None = None) -> None:
    """PNG: loss curves, latent map on knobs 1-2, live dims, input vs reconstruction across the
    keyboard and families (validation notes), and a sweep of every knob on a held C4."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cache, run, dev = trainer.cache, trainer.run, trainer.device
    pool = trainer.val_idx if len(trainer.val_idx) else trainer.train_idx
    notes = report_notes(cache, pool, min(6, max(1, run.train.report_notes)))
    n_knobs = len(stats["knobs"]["scale"])
    cols = max(4, len(notes))
    knob_rows = -(-n_knobs // cols)
    fig, axes = plt.subplots(3 + knob_rows, cols, figsize=(3.6 * cols, 3.0 * (3 + knob_rows)), squeeze=False)
    for a in axes.flat:
        a.set_visible(False)

    def panel(r: int, c: int) -> Any:
        axes[r, c].set_visible(True)
        return axes[r, c]

    rows = trainer.rows
    ax = panel(0, 0)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] != ""]
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set(title="loss", xlabel="step", yscale="log")
    ax.legend()
    if mu is None:
        mu, _ = encode_notes(trainer.model, cache, trainer.train_idx, dev)
    k = stats["knobs"]
    proj = ((mu - torch.tensor(k["center"])) @ torch.tensor(k["directions"]).T).numpy()
    fam = np.asarray(cache.family[trainer.train_idx])
    ax = panel(0, 1)
    for f in sorted(set(int(x) for x in fam)):
        ax.scatter(proj[fam == f, 0], proj[fam == f, min(1, proj.shape[1] - 1)], s=4, label=str(cache.families[f]))
    ax.set(title="training notes on knobs 1-2 (PCA of mu)", xlabel="knob 1", ylabel="knob 2")
    ax.legend(fontsize=6, markerscale=2, ncol=2)
    ax = panel(0, 2)
    std = np.asarray(stats["std"])
    ax.bar(np.arange(len(std)), std, color=["C2" if s > 0.1 else "C7" for s in std])
    ax.axhline(0.1, color="k", lw=0.8, ls="--")
    ax.set(title=f"aggregate std of mu per dim ({int((std > 0.1).sum())} > 0.1)", xlabel="dim")
    ax = panel(0, 3)
    ax.bar(np.arange(len(k["scale"])) + 1, k["scale"])
    ax.set(title="knob scale (std along PCA row)", xlabel="knob")
    for i, note in enumerate(notes):
        inst = cache.instruments[int(cache.instrument[note])]
        for row, img in ((1, load_notes(cache, np.array([note]))[0].numpy()),
                         (2, reconstruct(trainer.model, cache, int(note), run, dev))):
            a = panel(row, i)
            a.imshow(img.T, origin="lower", aspect="auto", vmin=-11.5, vmax=0.0, cmap="magma",
                     extent=(0, run.audio.note_seconds, 0, run.audio.sample_rate / 2000))
            a.set_title(f"{inst} key {int(cache.pitch[note])} {'recon' if row == 2 else 'input'}", fontsize=8)
            a.set(xlabel="s", ylabel="kHz")
    for i in range(n_knobs):
        a = panel(3 + i // cols, i % cols)
        a.imshow(knob_sweep(trainer.model, stats, i, dev).T, origin="lower", aspect="auto", vmin=-11.5,
                 vmax=0.0, cmap="magma", extent=(-1, 1, 0, run.audio.sample_rate / 2000))
        a.set(title=f"knob {i + 1} sweep, held C4", xlabel="knob", ylabel="kHz")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def fit_snapshots(trainer: Trainer, stats: dict[str, Any]) -> None:
    """Replace the means that export turns into snapshots by fitted latents (``training.snapshots``):
    the reference soundfont's instruments in ``stats["instruments"]``, or ``stats["families"]`` when
    no instrument carries a soundfont tag. With ``snapshot_key_track`` each gets ``track_keys``/``track_z``
    (its latent at each track key) and ``z``, its latent at ``SNAPSHOT_HOME_KEY``; the mean stays as ``mean_z``."""
    from training.data import parse_instrument

    cache, idx = trainer.cache, trainer.train_idx
    tag = reference_soundfont(stats["instruments"])
    if tag is None:
        table, names, labels = stats["families"], [str(n) for n in cache.families], np.asarray(cache.family[idx])
        wanted = [i for i, name in enumerate(names) if name in table]
    else:
        table, names, labels = stats["instruments"], [str(n) for n in cache.instruments], np.asarray(cache.instrument[idx])
        wanted = [i for i, name in enumerate(names)
                  if name in table and (parsed := parse_instrument(name)) and parsed[0] == tag]
    steps = trainer.run.train.snapshot_fit_steps
    start = {i: torch.tensor(table[names[i]]["z"]) for i in wanted}
    keys = SNAPSHOT_TRACK_KEYS if trainer.run.train.snapshot_key_track else ()
    fitted = fit_snapshot_latents(trainer.model, cache, idx, labels, trainer.run, trainer.device, start, steps,
                                  trainer.run.train.seed, torch.tensor(stats["std"]), keys,
                                  band_weight=trainer.run.train.snapshot_band_weight,
                                  sc_weight=trainer.run.train.snapshot_sc_weight)
    tones = (fit_snapshot_tones(trainer.model, cache, idx, labels, trainer.run, trainer.device, fitted, keys)
             if trainer.run.train.snapshot_tone else {})
    for i, track_z in fitted.items():
        entry = table[names[i]]
        if i in tones:
            entry["tone_db"] = [round(float(v), 2) for v in tones[i]]
        home = latent_at(keys, track_z.numpy(), [SNAPSHOT_HOME_KEY])[0] if keys else track_z[0].numpy()
        entry["mean_z"], entry["z"], entry["fit_steps"] = entry["z"], home.tolist(), steps
        if keys:
            entry["track_keys"], entry["track_z"] = list(keys), track_z.tolist()


def finish(trainer: Trainer) -> dict[str, Any]:
    """Rank 0: latent_stats.json (snapshot latents fitted) and report.png."""
    encoded = encode_notes(trainer.model, trainer.cache, trainer.train_idx, trainer.device)
    stats = latent_stats(trainer.model, trainer.cache, trainer.train_idx, trainer.device, encoded)
    fit_snapshots(trainer, stats)
    # The resolved config beside the stats it made (a finish after --resume may have defaults the
    # last checkpoint's config.toml predates, such as snapshot_fit_steps).
    write_text_atomic(tomli_w.dumps(trainer.run.to_dict()), trainer.out / "config.toml")
    write_text_atomic(json.dumps(stats, indent=1), trainer.out / "latent_stats.json")
    latent_map(trainer.cache, trainer.train_idx, encoded, trainer.run.train.seed).save(trainer.out / LATENT_MAP_FILE)
    write_report(trainer, stats, trainer.out / "report.png", encoded[0])
    return stats


# ---------------------------------------------------------------------------- CLI

def resolve_run(args: argparse.Namespace, out: Path) -> RunConfig:
    """Config from --config, or from the run folder when resuming; --steps overrides."""
    if args.resume:
        if not (out / "checkpoint.pt").is_file():
            raise TrainError(f"{out}: nothing to resume (no checkpoint.pt)")
        run = load_config(out / "config.toml")
    elif args.config is None:
        raise TrainError("give --config (or --resume an existing run)")
    else:
        run = load_config(args.config)
        run.model.time_on_max = run.audio.hold_seconds - 0.1  # the engine clamps time_on here
    if args.steps is not None:
        run.train.steps = args.steps
    data = args.data or run.data.get("data")
    features = args.features or run.data.get("features")
    run.data = {"data": str(Path(data).resolve()) if data else "", "features": features or "",
                "config": str(args.config or run.data.get("config", "")),
                "command": run.data.get("command") or shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", "training.train", *sys.argv[1:]])}
    return run


def train_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    run = resolve_run(args, out)
    rank, world, device = setup_distributed(args.device)
    cache, features = open_cache(run.data["data"] or None, run.data["features"] or None, run.audio, run.train.frame_stride)
    run.data["features"] = str(Path(features).resolve())
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, cache, out, device, rank, world)
    if args.resume:
        trainer.load(out / "checkpoint.pt")
    fit(trainer, progress=not args.quiet)
    if rank == 0:
        finish(trainer)
        print(f"done: {out} (step {trainer.step})")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="training config (TOML)")
    p.add_argument("--data", help="NSynth-layout data folder")
    p.add_argument("--features", help="feature cache folder (default: DATA/../<name>_features)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--steps", type=int, help="override [train] steps")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    return run_command(lambda: train_main(args))  # TrainError, DatasetError...: VaesynthError, one line


if __name__ == "__main__":
    sys.exit(main())
