"""The shared training loop and the sampling helpers it and the methods use."""
