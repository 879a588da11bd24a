"""The fault models of the built-in kinds: samplers and covering sets, on torch.

Each module here implements the kinds whose ``[[faults]]`` schemas and summaries are declared (torch
free) in the module of the same name one level up (``hwfault/faults/<kind>.py``); the registry
imports it when a chip is first built for a model, not when a chip spec is read.
"""
