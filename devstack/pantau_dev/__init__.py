"""The local stack that tests, the demo and benchmarks run on (`pantau dev`)."""
