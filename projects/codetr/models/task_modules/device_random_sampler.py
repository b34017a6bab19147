"""mmdet's random RoI sampling with its random numbers drawn on the device.

``RandomSampler.random_choice`` draws ``torch.randperm(n)`` on the CPU
whatever the gallery's device, and n, the number of positive or negative
proposals, follows from their IoUs, which on a GPU carry the float noise
of atomics: the CPU generator's state after a training step then depends
on that noise. Here the same subsets are drawn from the gallery device's own
generator in one call whose advance of the generator does not depend on n.
"""
from typing import Union

import numpy as np
import torch
from mmdet.models.task_modules import AssignResult, RandomSampler
from mmdet.registry import TASK_UTILS
from torch import Tensor


@TASK_UTILS.register_module()
class DeviceRandomSampler(RandomSampler):
    """``RandomSampler`` whose random subsets come from keys drawn on the
    gallery's device.

    A subset is the ``num`` largest of n uniform float64 keys, largest
    first: uniform without replacement and in uniformly random order, the
    distribution of mmdet's ``randperm(n)[:num]`` (another random stream).
    Ties, which ``topk`` would break by position, practically never occur
    among float64 keys.

    On a CUDA gallery the CPU generator is not used, and the one
    ``torch.rand`` call advances CUDA's Philox offset by 4 for any n up to
    2 x 256 x 8 x the multiprocessors (540,672 on a 132-SM H200): torch's
    ``calc_execution_policy`` (ATen/native/cuda/DistributionTemplates.h)
    launches at most 8 blocks of 256 threads per multiprocessor (2048
    threads each), every thread draws 2 float64 keys per curand call, and
    the offset advances by 4 per round of that grid over the keys (an
    H200 with torch 2.11 advanced it by 4 for 540,672 keys, 8 for one
    more). A gallery holds at most an image's proposals and ground truths.

    mmdet draws only for a group with more candidates than wanted, so the
    number of draws would still follow the counts (positives are drawn
    only beyond ``num * pos_fraction``). :meth:`_sample_pos` and
    :meth:`_sample_neg` draw their keys whatever the count, and discard
    them when every candidate is taken (mmdet's result): two draws per
    image, always. Arguments are mmdet's.
    """

    def _sample_pos(self, assign_result: AssignResult, num_expected: int,
                    **kwargs) -> Tensor:
        """mmdet's positives (``gt_inds > 0``), drawn as :meth:`_draw`."""
        return self._draw(assign_result.gt_inds > 0, num_expected)

    def _sample_neg(self, assign_result: AssignResult, num_expected: int,
                    **kwargs) -> Tensor:
        """mmdet's negatives (``gt_inds == 0``), drawn as :meth:`_draw`."""
        return self._draw(assign_result.gt_inds == 0, num_expected)

    @staticmethod
    def _draw(candidates: Tensor, num: int) -> Tensor:
        """All candidates if at most ``num``, else ``num`` of them at random.

        Args:
            candidates (Tensor): (n_priors, ) bool.
            num (int): How many to take.

        Returns:
            Tensor: (min(num, n), ) long indices of candidates; the sampler
            sorts them (``unique``), as after mmdet's draws.
        """
        inds = torch.nonzero(candidates, as_tuple=False).view(-1)
        # one draw of at least one key whatever n: the generator advances
        # alike for every count (see the class docstring)
        keys = torch.rand(
            max(inds.numel(), 1), dtype=torch.float64,
            device=inds.device)[:inds.numel()]
        if inds.numel() <= num:
            return inds
        return inds[keys.topk(num).indices]

    def random_choice(self, gallery: Union[Tensor, np.ndarray, list],
                      num: int) -> Union[Tensor, np.ndarray]:
        """Pick ``num`` elements of ``gallery`` uniformly at random.

        Args:
            gallery (Tensor | ndarray | list): (n, ) candidate indices.
            num (int): How many to pick, at most n.

        Returns:
            Tensor | ndarray: (num, ) picked indices in random order; a
            Tensor of the gallery's dtype and device for a Tensor, an int64
            ndarray otherwise (as mmdet).
        """
        assert len(gallery) >= num
        is_tensor = isinstance(gallery, Tensor)
        if not is_tensor:
            # The result is a host array: draw on the host (mmdet moves the
            # gallery to the GPU and back).
            gallery = torch.tensor(gallery, dtype=torch.long)
        keys = torch.rand(gallery.numel(), dtype=torch.float64,
                          device=gallery.device)
        picked = gallery[keys.topk(num).indices]
        return picked if is_tensor else picked.numpy()
