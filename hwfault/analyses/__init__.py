"""The analyses: each is one call that the CLI makes (sweep, probe, estimate, bits, campaign, harden).

They are re-exported by :mod:`hwfault`; this package exports nothing itself, so no public name shadows
one of its modules.
"""
