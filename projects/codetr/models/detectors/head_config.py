"""Turn the heads of a ``CoDETR`` config into one explicit list per kind.

Two layouts are accepted:

- **per-head** (shipped configs): each head dict carries its own
  ``train_cfg``/``test_cfg``; ``roi_head`` and ``bbox_head`` are a head dict,
  a list of them, or a dict ``name -> head dict`` (``None`` disables a head),
  so adding, removing or replacing an auxiliary head is one edit;
- **released** (mmdet 2.x Co-DETR configs): ``train_cfg``/``test_cfg`` are
  lists indexed by position: 0 = query head, 1 + i = RPN + ``roi_head[i]``,
  1 + len(roi_head) + j = ``bbox_head[j]`` (docs/design.md, loss weights).

Values the detector owns (``num_classes``) are injected into every head and
must not disagree.
"""
import copy
from typing import Any, Dict, List, Optional, Tuple, Union

HeadCfgs = Union[None, dict, List[Optional[dict]]]


def heads_as_list(heads: HeadCfgs, kind: str) -> List[dict]:
    """Normalise ``roi_head``/``bbox_head`` to a list of head configs.

    Args:
        heads: None, one head dict (has ``type``), a list of head dicts
            (``None`` entries skipped) or a dict of named head dicts.
        kind (str): ``'roi_head'`` or ``'bbox_head'``, for messages.

    Returns:
        list[dict]: Deep copies, in order.
    """
    if heads is None:
        return []
    if isinstance(heads, dict):
        if 'type' in heads:
            heads = [heads]
        else:  # named heads: {'atss': dict(type=...), 'fcos': None}
            heads = list(heads.values())
    if not isinstance(heads, (list, tuple)):
        raise TypeError(f'model.{kind} must be a head config, a list of head '
                        f'configs or a dict of named head configs; got '
                        f'{type(heads).__name__}')
    result = []
    for i, head in enumerate(heads):
        if head is None:
            continue
        if not isinstance(head, dict) or 'type' not in head:
            raise TypeError(f'model.{kind} entry {i} must be a dict with a '
                            f"'type' key, got {head!r}")
        result.append(copy.deepcopy(dict(head)))
    return result


def _set_default(cfg: dict, key: str, value: Any, where: str) -> None:
    """Set ``cfg[key] = value`` unless it already holds a different value."""
    if value is None:
        return
    current = cfg.get(key)
    if current is not None and current != value:
        raise ValueError(
            f'{where}.{key} = {current!r} conflicts with {value!r} given '
            f'elsewhere; set it in one place only.')
    cfg[key] = value


def distribute_released_cfgs(train_cfg: Any, test_cfg: Any, query_head: dict,
                             rpn_head: Optional[dict], roi_heads: List[dict],
                             bbox_heads: List[dict]) -> None:
    """Move list-style ``train_cfg``/``test_cfg`` into the head configs.

    Args:
        train_cfg, test_cfg: Lists as in the released configs, or None /
            dicts (then nothing is done: the per-head layout is in use).
        query_head, rpn_head, roi_heads, bbox_heads: Head configs, updated
            in place.
    """
    for cfgs, phase in ((train_cfg, 'train_cfg'), (test_cfg, 'test_cfg')):
        if cfgs is None:
            continue
        if not isinstance(cfgs, (list, tuple)):
            raise TypeError(
                f'model.{phase} must be a list (released layout) or unset '
                f"(each head carries its own {phase}); got {cfgs!r}")
        expected = 1 + max(1, len(roi_heads)) + len(bbox_heads)
        if len(cfgs) != expected:
            raise ValueError(
                f'model.{phase} has {len(cfgs)} entries but the heads need '
                f'{expected}: [query_head, rpn+roi_head[i] ..., bbox_head[j] '
                f'...]. Easier: put {phase} inside each head config.')
        _set_default(query_head, phase, cfgs[0], 'query_head')
        two_stage = cfgs[1] or {}
        if rpn_head is not None:
            _set_default(rpn_head, phase, two_stage.get('rpn'), 'rpn_head')
            if phase == 'train_cfg':
                _set_default(rpn_head, 'proposal_cfg',
                             two_stage.get('rpn_proposal'), 'rpn_head')
        for i, head in enumerate(roi_heads):
            _set_default(head, phase, (cfgs[1 + i] or {}).get('rcnn'),
                         f'roi_head[{i}]')
        offset = 1 + max(1, len(roi_heads))
        for j, head in enumerate(bbox_heads):
            _set_default(head, phase, cfgs[offset + j], f'bbox_head[{j}]')


def resolve_num_classes(num_classes: Optional[int], query_head: dict,
                        roi_heads: List[dict], bbox_heads: List[dict]) -> int:
    """Set one ``num_classes`` in every classifying head.

    Args:
        num_classes (int, optional): ``model.num_classes``. When None, the
            heads' own values are used and must agree (released layout).
        query_head, roi_heads, bbox_heads: Head configs, updated in place.

    Returns:
        int: The number of classes.
    """
    slots: List[Tuple[dict, str]] = [(query_head, 'query_head')]
    for i, head in enumerate(roi_heads):
        if head.get('bbox_head') is not None:
            slots.append((head['bbox_head'], f'roi_head[{i}].bbox_head'))
    slots += [(h, f'bbox_head[{j}]') for j, h in enumerate(bbox_heads)]
    given: Dict[str, int] = {
        where: cfg['num_classes']
        for cfg, where in slots if cfg.get('num_classes') is not None
    }
    if num_classes is None:
        values = set(given.values())
        if len(values) != 1:
            raise ValueError(
                'Set model.num_classes once (it is copied into every head); '
                f'the heads give {given or "none"}.')
        num_classes = values.pop()
    for cfg, where in slots:
        if cfg.get('num_classes', num_classes) != num_classes:
            raise ValueError(
                f'model.num_classes = {num_classes} but {where}.num_classes '
                f'= {cfg["num_classes"]}. Remove num_classes from the head: '
                'model.num_classes is the single setting for all heads.')
        cfg['num_classes'] = num_classes
    return num_classes


def inject_num_co_heads(query_head: dict, num_co_heads: int) -> None:
    """Give the transformer the number of positive-coordinate sources."""
    transformer = dict(query_head['transformer'])
    given = transformer.get('num_co_heads')
    if given is not None and given != num_co_heads:
        raise ValueError(
            f'query_head.transformer.num_co_heads = {given} but the config '
            f'has {num_co_heads} auxiliary heads that supply positive '
            'coordinates. Remove num_co_heads: it is derived from the heads.')
    transformer['num_co_heads'] = num_co_heads
    query_head['transformer'] = transformer
