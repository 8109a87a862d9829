"""Inference: the Triton contract, the YOLOX pre/post-processing and the clients."""
