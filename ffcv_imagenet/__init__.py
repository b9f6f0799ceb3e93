"""ffcv_imagenet: convert ImageNet to FFCV, train ResNets fast, profile the throughput."""

__version__ = "0.1.0"
