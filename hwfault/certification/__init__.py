"""Certified bounds on a classifier's margins under weight perturbations (Weng et al., AAAI 2020).

A :class:`PerturbationSet` says how each chosen parameter tensor may change; :func:`margin_bounds`
returns, for every input and class j, a lower bound on ``f_y(x) - f_j(x)`` that holds for every
perturbation in the set; :func:`certify` turns that into certified accuracy over a grid of eps.

Layout: :mod:`.sets` (perturbation sets), :mod:`.relax` (relaxation planes), :mod:`.ops` (one module
per operator family, registered by module type and ATen op), :mod:`.graph` (tracing, IBP, CROWN
back-substitution), :mod:`.propagate` (per-input drivers), :mod:`.attack` (the falsifier),
:mod:`.bab` (branch and bound), :mod:`.api` (certify, certify_set, quantisation_safety).
"""

from .api import CertifyPoint, CertifyResult, certify, certify_set, quantisation_safety
from .propagate import METHODS, check_method, margin_bounds
from .sets import ParamBound, PerturbationSet, quantisation_set

__all__ = ["ParamBound", "PerturbationSet", "CertifyPoint", "CertifyResult", "certify", "certify_set",
           "margin_bounds", "quantisation_set", "quantisation_safety", "check_method", "METHODS"]
