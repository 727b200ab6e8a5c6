"""Sensor profiles: how close the simulated sensors come to real ones.

``ideal`` (the default) is the simulator as it always was: smooth gaussian noise, values with four
decimals. ``realistic`` adds what a real sensor shows:

* pump pulsation on suction and discharge pressure: the compressor's periodic pressure ripple
  (1-3 % of the level at a per-device pulsation frequency, plus its second harmonic), sampled at
  each reading time, so at 60 s sampling it aliases into structured noise and at 1 s it is visible;
* vibration as the RMS of a short accelerometer burst (``accel_samples`` samples of the running-speed
  sinusoid plus sensor noise, in closed form), positive and right-skewed;
* quantisation: every value is rounded to its sensor type's resolution (``SENSORS[s].resolution``) in
  the canonical unit, before a device's unit conversion.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SensorProfile:
    name: str = "ideal"
    pulsation: float = 0.0          # mean relative amplitude of the pressure ripple; 0: none
    pulsation_hz: tuple[float, float] = (0.08, 0.3)    # range of the per-device ripple frequency
    accel_samples: int = 0          # samples per accelerometer burst; 0: vibration as level + noise
    accel_noise: float = 0.3        # accelerometer noise (per sample) relative to the vibration level
    quantise: bool = False          # round to SENSORS[s].resolution in the canonical unit

    @property
    def is_ideal(self) -> bool:
        return self == IDEAL


IDEAL = SensorProfile()
REALISTIC = SensorProfile("realistic", pulsation=0.02, accel_samples=64, quantise=True)
PROFILES = {p.name: p for p in (IDEAL, REALISTIC)}
