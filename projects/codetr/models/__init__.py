"""Co-DETR model components (registered in ``mmdet.registry.MODELS``)."""
__all__ = []
