"""A federated study on NVIDIA FLARE: each site (hospital, scanner) keeps its images and rows; see docs/federated.md."""
