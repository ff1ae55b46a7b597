"""First-stage models: autoencoders (AE), VAEs, the hierarchical NVAE and the KL autoencoder."""
