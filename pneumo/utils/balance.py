"""What each `--balance` choice does to the classes a fold trains on: the training sampler draws
from this table (pneumo.data.loader), and calibration and the decision read the prior it
induces from it (pneumo.metrics.calibration)."""

from __future__ import annotations

# --balance choices that draw batches with a WeightedRandomSampler, and the power of the class
# count each sample's weight is divided by: 1 draws every class equally often; 0.5 (square-root
# sampling, Mahajan et al. 2018) draws a class in proportion to the square root of its count.
SAMPLER_POWER = {"sampler": 1.0, "sqrt": 0.5}
# Every choice as such a power: the class-weighted loss has the minimiser of a 50/50 sample (1),
# `none` keeps the pool's prevalence (0).
CLASS_POWER = {"loss": 1.0, "none": 0.0, **SAMPLER_POWER}
