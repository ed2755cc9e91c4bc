"""Faults survived, timed under a private jackd: the audio server dying under a playing synth,
and a MIDI source that goes away and comes back.

    python -m benchmarks.faults [--preset DIR] [--repeats 5]

Prints one table: seconds from the server's death to the synth's exit (status 3, the reason on
one line), and seconds from a source's return to its reconnection (JACK connection made by the
synth's watcher, which looks every ``synth.live.SOURCE_POLL_S``). Wall-clock figures: run it on
an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BenchmarkError, markdown_table, run_main
from tests.conftest import _start_jackd, _stop
from tests.fake_preset import make_fake_preset
from tests.jack_probe import MIDI_PORT, JackProbe, SynthProcess, kill_server_under_synth

SERVER = "vaesynth-faults"
KEYBOARD = "bench-keyboard"


def server_loss_seconds(preset: Path, home: Path) -> float:
    """Seconds from SIGTERM of a playing synth's jackd to the synth's exit (status 3)."""
    took, status, err = kill_server_under_synth(preset, SERVER, home, wait=10.0)
    if status != 3:
        raise BenchmarkError(f"the synth exited {status} after the server died: {err.strip()[-200:]}")
    return took


def reconnect_seconds(preset: Path, home: Path, repeats: int) -> list[float]:
    """Seconds from a keyboard client's return to its MIDI port being connected to the synth."""
    jackd = _start_jackd(SERVER)
    kbd = JackProbe(SERVER, KEYBOARD)
    kbd.midi_out = kbd.client.midi_outports.register("midi_out")
    synth = SynthProcess(["--preset", str(preset), "--quiet"], SERVER, env={"VAESYNTH_CONFIG_DIR": str(home)})
    times = []
    try:
        synth.wait_for_ports(kbd.client)
        for _ in range(repeats):
            kbd.close()
            time.sleep(1.0)
            kbd = JackProbe(SERVER, KEYBOARD)
            back = time.monotonic()
            kbd.midi_out = kbd.client.midi_outports.register("midi_out")
            while MIDI_PORT not in {p.name for p in kbd.client.get_all_connections(kbd.midi_out)}:
                if time.monotonic() - back > 10:
                    raise BenchmarkError("a returning MIDI source was not reconnected within 10 s")
                time.sleep(0.005)
            times.append(time.monotonic() - back)
    finally:
        kbd.close()
        synth.stop()
        _stop(jackd)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=None, help="preset folder (default: a small fake preset)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        preset = args.preset or make_fake_preset(home / "fake")
        loss = [server_loss_seconds(preset, home) for _ in range(args.repeats)]
        back = reconnect_seconds(preset, home, args.repeats)
    rows = [["audio server dies -> synth exits (status 3)", *(f"{f(loss):.3f} s" for f in (np.min, np.median, np.max)),
             "≤ 1 s"],
            ["MIDI source returns -> reconnected", *(f"{f(back):.3f} s" for f in (np.min, np.median, np.max)),
             "no restart"]]
    print(markdown_table(["fault", "min", "median", "max", "goal"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
