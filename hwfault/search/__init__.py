"""The search layer: random, one-step and multi-step corruption and the bit search, over any constraint set."""
