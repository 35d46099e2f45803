"""Physical and protocol parameters of a decoy-state BB84 link.

Two named sets ship with the engine:

``gys``
    The channel of Gobby, Yuan and Shields (APL 84, 3762, 2004) as used by
    Lo, Ma and Chen (PRL 94, 230504, 2005) and Ma, Qi, Zhao and Lo (PRA 72,
    012326, 2005): 0.21 dB/km, eta_Bob 4.5 %, Y0 1.7e-6, e_d 3.3 %, f 1.22.
    Y0 is the background yield of the detector pair, so each detector's dark
    count probability is ``1 - sqrt(1 - Y0)``.
``lim2014``
    The channel of Lim, Curty, Walenta, Xu and Zbinden (PRA 89, 022307,
    2014): 0.2 dB/km, eta_Bob 10 %, dark counts 6e-7 per detector,
    misalignment 0.5 %, f 1.16, with a biased basis choice.

Intensities and class probabilities (mu 0.48 / nu 0.1 for ``gys``, as in
the papers) are chosen so that blocks of about 2^21 key bits already give a
finite key; the vacuum gets the remaining probability.

A file is a TOML table whose keys are the field names of ``Bb84Params``;
``base = "gys"`` (or ``"lim2014"``) starts from a named set.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]


class Bb84ParamsError(ValueError):
    """A parameter set is invalid or cannot be loaded.  The message names the field."""


class Bb84Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything the engine needs to simulate and post-process one link.

    Intensities are mean photon numbers per pulse.  The key basis is X and
    the test basis is Z (as in Lim et al.); ``p_x`` is the probability that
    Alice (and, independently, Bob) picks X.
    """

    name: str = "custom"
    # Channel and detectors.
    attenuation_db_per_km: Annotated[float, msgspec.Meta(ge=0.0)] = 0.21
    eta_bob: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.045
    dark_count_prob: Probability = 8.5e-7
    misalignment: Annotated[float, msgspec.Meta(ge=0.0, le=0.5)] = 0.033
    afterpulse_prob: Probability = 0.0
    dead_time_pulses: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Source.
    mu: Positive = 0.5
    nu: Positive = 0.1
    p_mu: Probability = 0.8
    p_nu: Probability = 0.1
    p_x: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.5
    # Post-processing.
    f_ec: Annotated[float, msgspec.Meta(ge=1.0)] = 1.22
    qber_sample_fraction: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.05
    qber_threshold: Annotated[float, msgspec.Meta(gt=0.0, le=0.5)] = 0.11
    cascade: Literal["original", "optimised"] = "optimised"
    tag_bits: Annotated[int, msgspec.Meta(ge=64, le=1024)] = 64
    eps_sec: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 1e-10
    eps_cor: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 1e-15

    def __post_init__(self) -> None:
        if self.nu >= self.mu:
            raise Bb84ParamsError(f"nu ({self.nu}) must be below mu ({self.mu})")
        if self.p_mu + self.p_nu > 1.0 + 1e-12:
            raise Bb84ParamsError(
                f"p_mu + p_nu = {self.p_mu + self.p_nu} exceeds 1 (the rest is vacuum)"
            )
        if self.p_mu <= 0.0 or self.p_nu <= 0.0 or self.p_vac <= 0.0:
            raise Bb84ParamsError("signal, decoy and vacuum probabilities must all be > 0")

    @property
    def p_vac(self) -> float:
        return max(0.0, 1.0 - self.p_mu - self.p_nu)

    @property
    def intensities(self) -> tuple[float, float, float]:
        """Mean photon numbers of the three classes: signal, decoy, vacuum."""
        return (self.mu, self.nu, 0.0)

    @property
    def class_probs(self) -> tuple[float, float, float]:
        return (self.p_mu, self.p_nu, self.p_vac)

    @property
    def y0(self) -> float:
        """Background yield of the detector pair (a click in either detector)."""
        return 1.0 - (1.0 - self.dark_count_prob) ** 2

    def transmittance(self, distance_km: float) -> float:
        """Overall transmittance eta = eta_Bob * 10^(-alpha L / 10)."""
        return float(self.eta_bob * 10.0 ** (-self.attenuation_db_per_km * distance_km / 10.0))

    def replace(self, **changes: Any) -> Bb84Params:
        """A copy with some fields changed, validated again."""
        return load_params_mapping({**msgspec.structs.asdict(self), **changes})


def _dark_from_y0(y0: float) -> float:
    return 1.0 - math.sqrt(1.0 - y0)


GYS = Bb84Params(
    name="gys",
    attenuation_db_per_km=0.21,
    eta_bob=0.045,
    dark_count_prob=_dark_from_y0(1.7e-6),
    misalignment=0.033,
    f_ec=1.22,
    mu=0.48,
    nu=0.1,
    p_mu=0.6,
    p_nu=0.3,
    p_x=0.5,
)

LIM2014 = Bb84Params(
    name="lim2014",
    attenuation_db_per_km=0.2,
    eta_bob=0.10,
    dark_count_prob=6e-7,
    misalignment=0.005,
    f_ec=1.16,
    mu=0.5,
    nu=0.2,
    p_mu=0.6,
    p_nu=0.3,
    p_x=0.8,
)

PARAM_SETS: dict[str, Bb84Params] = {"gys": GYS, "lim2014": LIM2014}


def load_params_mapping(raw: dict[str, Any]) -> Bb84Params:
    """Build a parameter set from a mapping.  Raises ``Bb84ParamsError``."""
    raw = dict(raw)
    base = raw.pop("base", None)
    if base is not None:
        if base not in PARAM_SETS:
            raise Bb84ParamsError(f"base {base!r} unknown (known: {', '.join(PARAM_SETS)})")
        raw = {**msgspec.structs.asdict(PARAM_SETS[base]), **raw}
    try:
        return msgspec.convert(raw, Bb84Params, strict=False)
    except msgspec.ValidationError as exc:
        raise Bb84ParamsError(f"bb84 parameters: {exc}") from None


def load_params(spec: str) -> Bb84Params:
    """A named set (``gys``, ``lim2014``) or a TOML file path.  Raises ``Bb84ParamsError``."""
    if spec in PARAM_SETS:
        return PARAM_SETS[spec]
    path = Path(spec)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Bb84ParamsError(
            f"parameters {spec!r}: not a named set ({', '.join(PARAM_SETS)}) "
            f"and not a readable file ({exc.strerror})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise Bb84ParamsError(f"parameters file {spec}: {exc}") from None
    return load_params_mapping(raw)
