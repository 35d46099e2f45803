"""Photon-level decoy-state BB84: simulation, post-processing and analytic rates.

Sans-IO and deterministic: every function takes its randomness as a
``numpy.random.Generator``.  ``run_block`` runs one block end to end; the
stages are public too, for study and tests.  Key bits never leave a
``BlockResult`` except through its ``key`` field.
"""

from ._analytic import (
    gllp_rate,
    h2,
    infinite_decoy_rate,
    max_distance,
    optimal_mu,
    optimised_rate,
    plob_bound,
    plob_bound_at,
    vacuum_weak_decoy_bounds,
    vacuum_weak_decoy_rate,
)
from ._cascade import CascadeResult, block_sizes, cascade
from ._estimation import (
    AsymptoticEstimate,
    DecoyCounts,
    QberSample,
    asymptotic_estimate,
    count,
    count_classes,
    sample_qber,
)
from ._finite_key import FiniteKeyBound, finite_key_length
from ._params import (
    GYS,
    LIM2014,
    PARAM_SETS,
    Bb84Params,
    Bb84ParamsError,
    load_params,
    load_params_mapping,
)
from ._pipeline import BlockResult, analytic_rate, run_block
from ._privacy import privacy_amplification, toeplitz_hash, toeplitz_hash_direct
from ._sifting import SiftedKey, sift
from ._simulate import (
    NO_EVE,
    DetectionRecord,
    Eve,
    class_probabilities,
    event_counts,
    outcome_probabilities,
    parse_eve,
    pns_strategy,
    simulate,
    simulate_events,
    simulate_pulses,
)
from ._stream import PA_SEGMENT, run_stream, toeplitz_hash_segmented
from ._verify import Verification, tag_length, verify

__all__ = [
    "GYS",
    "LIM2014",
    "NO_EVE",
    "PA_SEGMENT",
    "PARAM_SETS",
    "AsymptoticEstimate",
    "Bb84Params",
    "Bb84ParamsError",
    "BlockResult",
    "CascadeResult",
    "DecoyCounts",
    "DetectionRecord",
    "Eve",
    "FiniteKeyBound",
    "QberSample",
    "SiftedKey",
    "Verification",
    "analytic_rate",
    "asymptotic_estimate",
    "block_sizes",
    "cascade",
    "class_probabilities",
    "event_counts",
    "count",
    "count_classes",
    "finite_key_length",
    "gllp_rate",
    "h2",
    "infinite_decoy_rate",
    "load_params",
    "load_params_mapping",
    "max_distance",
    "optimal_mu",
    "optimised_rate",
    "outcome_probabilities",
    "parse_eve",
    "plob_bound",
    "plob_bound_at",
    "pns_strategy",
    "privacy_amplification",
    "run_block",
    "run_stream",
    "sample_qber",
    "sift",
    "simulate",
    "simulate_events",
    "simulate_pulses",
    "tag_length",
    "toeplitz_hash",
    "toeplitz_hash_direct",
    "toeplitz_hash_segmented",
    "vacuum_weak_decoy_bounds",
    "vacuum_weak_decoy_rate",
    "verify",
]
