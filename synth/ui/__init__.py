"""The control surface: a local web page (``synth.ui.server``) and OSC (``synth.osc``) for live mode."""
