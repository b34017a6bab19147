"""Decoding the auxiliary heads' customised positive queries.

Each auxiliary head k hands the query head a set of N_k positive boxes
(docs/design.md, positive queries); the transformer turns each set into
queries (:meth:`AuxQueryDecoding.aux_query_set`, per family) and decodes
them with the decoder of the main queries, against the same encoder memory.

Sets are decoded together, concatenated along the query axis, with a
self-attention mask that keeps them apart: deformable cross-attention, the
FFNs and the box refinement act per query, so a query's result does not
depend on which other queries share the pass, and only self-attention needs
the mask. One pass instead of one per set issues each decoder kernel once
and projects the memory once per layer; :meth:`forward_with_aux` adds the
main queries to the same pass (the training step's one decoder pass).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class AuxQueryDecoding:
    """Positive-query decoding, mixed into :class:`CoTransformerBase`.

    The host provides ``forward_decoder`` (queries, reference boxes and
    memory in, hidden states and references out) and, per family,
    :meth:`aux_query_set`.
    """

    def aux_query_set(self, head_id: int, coords: Tensor,
                      feats: Tensor) -> Dict[str, Tensor]:
        """The decoder inputs of one auxiliary head's positive queries
        (implemented by subclasses; docs/design.md, positive queries).

        Args:
            head_id (int): The auxiliary head (selects its projections).
            coords (Tensor): Its positive boxes, (bs, N, 4) normalised
                (cx, cy, w, h): the queries' reference boxes.
            feats (Tensor): Their features, (bs, N, dim).

        Returns:
            dict[str, Tensor]: ``query`` (bs, N, dim) and, for decoders that
            take them, ``query_pos`` (bs, N, dim).
        """
        raise NotImplementedError

    def aux_decoder_inputs(
            self,
            aux_coords: Sequence[Tensor],
            aux_feats: Sequence[Tensor],
            head_ids: Optional[Sequence[int]] = None) -> Dict[str, Tensor]:
        """The query inputs of all sets, concatenated in set order.

        Args:
            aux_coords (Sequence[Tensor]): Per set k, normalised
                (cx, cy, w, h) boxes, (bs, N_k, 4).
            aux_feats (Sequence[Tensor]): Per set k, features (bs, N_k, dim).
            head_ids (Sequence[int], optional): The auxiliary head of each
                set; defaults to 0, 1, ...

        Returns:
            dict[str, Tensor]: The keys of :meth:`aux_query_set`, each
            (bs, sum N_k, dim), and ``reference_points`` (bs, sum N_k, 4).
        """
        head_ids = range(len(aux_coords)) if head_ids is None else head_ids
        sets = [
            self.aux_query_set(k, coords, feats)
            for k, coords, feats in zip(head_ids, aux_coords, aux_feats)
        ]
        inputs = {
            name: torch.cat([s[name] for s in sets], dim=1)
            for name in sets[0]
        }
        inputs['reference_points'] = torch.cat(list(aux_coords), dim=1)
        return inputs

    def forward_aux(self, aux_coords: Sequence[Tensor],
                    aux_feats: Sequence[Tensor], *args,
                    **kwargs) -> Tuple[Tensor, List[Tensor]]:
        """Decode the customised positive queries of every auxiliary head,
        without the main queries.

        Set k's queries come from its boxes (and features) through head k's
        projections (:meth:`aux_query_set`); its boxes are the reference
        boxes. The memory is the encoder output already computed for the
        main queries.

        Args:
            aux_coords (Sequence[Tensor]): Per set k, normalised
                (cx, cy, w, h) boxes, (bs, N_k, 4).
            aux_feats (Sequence[Tensor]): Per set k, features (bs, N_k, dim).
            *args, **kwargs: The memory, its layout, the regression branches
                and ``head_ids``, as :meth:`forward_with_aux` takes them.

        Returns:
            tuple[Tensor, list[Tensor]]: As ``forward_decoder``, with
            sum(N_k) queries in the order of the sets.
        """
        return self.forward_with_aux(None, aux_coords, aux_feats, *args,
                                     **kwargs)

    def forward_with_aux(
        self,
        decoder_inputs: Optional[Dict[str, Optional[Tensor]]],
        aux_coords: Sequence[Tensor],
        aux_feats: Sequence[Tensor],
        memory: Tensor,
        memory_mask: Optional[Tensor],
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        reg_branches: nn.ModuleList,
        head_ids: Optional[Sequence[int]] = None
    ) -> Tuple[Tensor, List[Tensor]]:
        """Decode the main queries and every positive-query set in one pass.

        The main queries come first, then the sets in order. The main
        block of the self-attention mask is the main queries' own
        (``self_attn_mask`` of ``decoder_inputs``, e.g. DINO's denoising
        groups; none: all see all), and no query sees another block. So
        each block is decoded as in a pass of its own: a masked key gets
        an attention weight of exactly 0. (With dropout, which the
        configs set to 0, the masks would be drawn once for all blocks:
        the same distribution, other draws. A non-finite value in one
        block reaches the others through 0 x inf; only a diverging fp16
        step makes one, and the loss scaler skips it.)

        Args:
            decoder_inputs (dict, optional): The main queries' inputs to
                ``forward_decoder``: ``query``, ``reference_points``,
                optionally ``query_pos`` and ``self_attn_mask``
                (num_main, num_main) bool, True where blocked. None: no
                main queries (:meth:`forward_aux`).
            aux_coords (Sequence[Tensor]): Per set k, normalised
                (cx, cy, w, h) boxes, (bs, N_k, 4).
            aux_feats (Sequence[Tensor]): Per set k, features (bs, N_k, dim).
            memory ... reg_branches: As in ``forward_decoder``.
            head_ids (Sequence[int], optional): The auxiliary head of each
                set; defaults to 0, 1, ...

        Returns:
            tuple[Tensor, list[Tensor]]: As ``forward_decoder``, with
            num_main + sum(N_k) queries: the main ones first.
        """
        if not aux_coords:
            raise ValueError('forward_with_aux needs at least one positive-'
                             'query set; decode the main queries alone with '
                             'forward_decoder')
        aux = self.aux_decoder_inputs(aux_coords, aux_feats, head_ids)
        sizes = [coords.size(1) for coords in aux_coords]
        inputs, main_mask, num_main = aux, None, 0
        if decoder_inputs is not None:
            main = dict(decoder_inputs)
            main_mask = main.pop('self_attn_mask', None)
            if set(main) != set(aux):
                raise ValueError(
                    'the main and the positive queries give the decoder '
                    f'different inputs ({sorted(main)} against '
                    f'{sorted(aux)}); decode them in separate passes '
                    '(joint_decoding=False)')
            num_main = main['query'].size(1)
            inputs = {
                name: torch.cat([main[name], aux[name]], dim=1)
                for name in main
            }
            sizes = [num_main, *sizes]
        mask = self.block_diagonal_mask(sizes, memory.device)
        if main_mask is not None:
            mask[:num_main, :num_main] = main_mask
        return self.forward_decoder(
            memory=memory,
            memory_mask=memory_mask,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reg_branches=reg_branches,
            self_attn_mask=mask,
            **inputs)

    @staticmethod
    def block_diagonal_mask(set_sizes: Sequence[int],
                            device: torch.device) -> Optional[Tensor]:
        """Self-attention mask that keeps concatenated query sets apart.

        Args:
            set_sizes (Sequence[int]): Number of queries of each set.
            device: Device of the mask.

        Returns:
            Tensor, optional: (sum, sum) bool, True where attention is
            blocked (a query of another set); None for a single set.
        """
        if len(set_sizes) < 2:
            return None
        # filled on the device: a copy of the sizes from the host would
        # wait for the GPU's queue
        set_ids = torch.cat([
            torch.full((size, ), k, device=device)
            for k, size in enumerate(set_sizes)
        ])
        return set_ids[:, None] != set_ids[None, :]
