from .batch_pad_to_multiple import BatchPadToMultiple

__all__ = ['BatchPadToMultiple']
