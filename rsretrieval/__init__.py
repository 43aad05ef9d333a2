"""rsretrieval: resource-efficient remote-sensing text-image retrieval with CLIP."""

__version__ = "0.1.0"
