"""The detector: backbone -> neck -> query head, plus the auxiliary heads
trained on the encoder output (one-to-many) whose positives become extra
query sets of the query head."""
from .co_detr import CoDETR

__all__ = ['CoDETR']
