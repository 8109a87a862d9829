"""Decisions: desired state plus observed state in, actions and new status out (pure where possible)."""
