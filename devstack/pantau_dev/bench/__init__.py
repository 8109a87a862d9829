"""Benchmarks run by `pantau bench ...`: each measures its baseline in the same run and reports ratios."""
