"""PortAudio / JACK plumbing for live mode: client naming, device lookup, port wiring.

Why this module exists: PortAudio names its JACK client "PortAudio" unless
``PaJack_SetClientName`` is called before ``Pa_Initialize``, and
PortAudio enumerates host APIs only at initialisation, so a JACK server started
after ``import sounddevice`` is invisible until PortAudio is re-initialised.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from synth.errors import VaesynthError

AUDIO_CLIENT_NAME = "vaesynth"
JACK_HOSTAPI_NAME = "JACK Audio Connection Kit"

# PortAudio keeps the pointer we hand to PaJack_SetClientName: the buffer must
# live as long as the process, so it is held here at module level.
_name_buffer: ctypes.Array[ctypes.c_char] | None = None


class AudioSetupError(VaesynthError, RuntimeError):
    """One-line, user-facing error about the audio output (no device, bad rate...)."""


NO_OUTPUT_MESSAGE = (
    "no audio output found — start JACK or pick one with --output; --list-devices lists them"
)


def init_portaudio(client_name: str = AUDIO_CLIENT_NAME) -> Any:
    """(Re)initialise PortAudio with its JACK client named ``client_name``; returns ``sounddevice``.

    Raises AudioSetupError when libportaudio is missing.
    """
    global _name_buffer
    try:
        import sounddevice as sd
    except OSError as exc:  # "PortAudio library not found"
        raise AudioSetupError(f"cannot load PortAudio: {exc}") from None
    sd._terminate()
    lib = ctypes.CDLL(sd._libname)
    setter = getattr(lib, "PaJack_SetClientName", None)
    if setter is not None:  # absent when libportaudio was built without JACK
        setter.argtypes = [ctypes.c_char_p]
        _name_buffer = ctypes.create_string_buffer(client_name.encode())
        setter(_name_buffer)
    sd._initialize()
    return sd


def terminate_portaudio() -> None:
    """Release PortAudio (and its JACK client); safe to call twice."""
    import sounddevice as sd

    sd._terminate()


def jack_server_running() -> bool:
    """True when PortAudio sees the JACK host API with at least one device."""
    import sounddevice as sd

    for api in sd.query_hostapis():
        if api["name"] == JACK_HOSTAPI_NAME and api["devices"]:
            return True
    return False


def resolve_output_device(spec: str | int | None) -> int:
    """Output device index for ``--output NAME|INDEX`` (None: the default output).

    Name matching is sounddevice's (case-insensitive substrings, host API name included).
    Raises AudioSetupError with a one-line message when nothing fits.
    """
    import sounddevice as sd

    if isinstance(spec, str) and spec.strip().lstrip("-").isdigit():
        spec = int(spec)
    try:
        info = sd.query_devices(spec, "output")
    except (ValueError, sd.PortAudioError) as exc:
        if spec is None:
            raise AudioSetupError(NO_OUTPUT_MESSAGE) from None
        raise AudioSetupError(f"output device {spec!r}: {exc}; --list-devices lists them") from None
    if info["max_output_channels"] < 1:
        raise AudioSetupError(f"device {info['name']!r} has no outputs; --list-devices lists them")
    return int(info["index"])


def list_output_devices() -> str:
    """``--list-devices``: what was found (a count, then the table ``sounddevice.query_devices()``
    prints), or an AudioSetupError that says what to start."""
    import sounddevice as sd

    try:
        devices = sd.query_devices()
        apis = [api["name"] for api in sd.query_hostapis()]
    except sd.PortAudioError as exc:
        raise AudioSetupError(f"cannot list audio devices: {exc}") from None
    outputs = [d for d in devices if d["max_output_channels"] > 0]
    if not outputs:
        raise AudioSetupError("no audio outputs found — start JACK (e.g. jackd -d dummy -r 48000 -p 128 &) "
                              "or connect a sound card")
    head = f"{len(outputs)} audio output(s) ({', '.join(apis)}); pick one with -o/--output NAME|INDEX"
    if JACK_HOSTAPI_NAME not in apis and os.name == "posix":
        head += "; no JACK server is running"
    return head + "\n" + str(devices)


def disconnect_client_outputs(client_name: str = AUDIO_CLIENT_NAME) -> int:
    """Remove every connection of ``client_name``'s JACK output ports; returns how many.

    PortAudio's JACK host connects the stream to the device's (system) ports when
    it starts; ``--no-connect`` undoes that with a short-lived JACK-Client client.
    """
    import jack

    helper = jack.Client(f"{client_name}-wiring", no_start_server=True)
    removed = 0
    try:
        for port in helper.get_ports(f"^{client_name}:", is_output=True, is_audio=True):
            for other in helper.get_all_connections(port):
                helper.disconnect(port, other)
                removed += 1
    finally:
        helper.close()
    return removed


def may_unregister_ports(under_jack: bool) -> bool:
    """Whether the session may close its audio stream and rtmidi ports when it ends; not under JACK.

    Both close by unregistering ports from a client that is still active (rtmidi's closePort,
    PortAudio's CloseStream). jack2 (1.9.21, Debian 12) erases the port from the client's list
    on the calling thread while its notification thread may be walking that list, unlocked, to
    recompute latencies after a graph change elsewhere (a source leaving, our own other ports
    closing): the process crashes (SIGSEGV). CI saw the synth crash on stop with its main thread
    inside rtmidi's closePort; it is rare, and a stress loop provoked it only twice in about
    1 400 closes. So under JACK the stream is only stopped and the ports stay until the process
    ends (run_synth leaves through ``os._exit``); the server drops the clients with it. Closing a
    whole client (jack_client_close) deactivates it first and is safe: JACK-Client clients are
    still closed.
    """
    return not under_jack


class JackWatch:
    """JACK's own xrun count, freewheel mode and the server's shutdown, seen by a small JACK client of ours.

    PortAudio's underflow flags miss most JACK xruns (a client that overruns its cycle in
    sync mode is logged by jackd but never flagged to PortAudio), and without this the synth
    only noticed a dead server when callbacks stopped. The client has no process callback:
    it is activated only because JACK sends notifications to active clients alone. Its
    callbacks run on JACK's notification thread, never the audio thread.
    """

    def __init__(self, name: str = f"{AUDIO_CLIENT_NAME}-watch") -> None:
        import jack

        self.xruns = 0
        self.freewheeling = False  # JACK runs cycles with no deadline (an export): render ahead waits
        self.shutdown_reason: str | None = None
        self.server_gone = threading.Event()
        self._client = jack.Client(name, no_start_server=True)
        self._client.set_xrun_callback(self._on_xrun)
        self._client.set_freewheel_callback(self._on_freewheel)
        self._client.set_shutdown_callback(self._on_shutdown)
        self._client.activate()

    def _on_xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _on_freewheel(self, starting: bool) -> None:
        self.freewheeling = bool(starting)

    def is_freewheeling(self) -> bool:
        return self.freewheeling

    def _on_shutdown(self, status: object, reason: str) -> None:
        self.shutdown_reason = reason or "the JACK server shut down"
        self.server_gone.set()

    def close(self) -> None:
        if not self.server_gone.is_set():
            self._client.deactivate()
            self._client.close()


def open_jack_watch() -> JackWatch | None:
    """A JackWatch, or None where JACK-Client or libjack is missing (the status line then
    counts PortAudio's underflow flags instead)."""
    try:
        return JackWatch()
    except Exception:  # noqa: BLE001 - ImportError, OSError (no libjack), jack.JackError alike
        return None


def jack_server_env() -> str | None:
    """The JACK server clients will talk to (``JACK_DEFAULT_SERVER``), None for the default."""
    return os.environ.get("JACK_DEFAULT_SERVER")
