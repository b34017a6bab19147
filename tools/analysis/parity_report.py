"""How close our losses are to the released code's golden outputs.

Prints, for the golden batches of Co-Deformable-DETR (1 and 2 images) and
Co-DINO (1 and 3 images), in float32 and in float64 (against the released
code run in float32 and in float64), how many deterministic loss entries
are identical and the largest relative difference: the figures the parity
tests (``tests/test_parity.py``, ``tests/test_codino_parity.py``) bound,
reported so a change that moves them is visible. CPU, a few minutes::

    python tools/analysis/parity_report.py
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path[:0] = [REPO_ROOT, osp.join(REPO_ROOT, 'tests')]


def report(name: str, ours: dict, gold: dict, keys) -> None:
    rel = {
        k: abs(ours[k] - gold[k]) / max(abs(gold[k]), 1e-12)
        for k in keys
    }
    worst = max(rel, key=rel.get)
    same = sum(v == 0 for v in rel.values())
    print(f'{name}: {len(keys)} deterministic entries, {same} identical, '
          f'worst relative difference {rel[worst]:.1e} ({worst})')


def main() -> None:
    import test_codino_parity as codino
    import test_parity as deform
    import torch
    from codino_parity_data import filled_model as codino_model
    from codino_parity_data import golden as codino_golden
    from parity_data import deterministic_keys, filled_model, golden

    for dtype in (torch.float32, torch.float64):
        suffix = '' if dtype == torch.float32 else ', float64'
        model, names = filled_model(dtype)
        parity = (model, names, golden(dtype))
        for num_images, tag in [(1, 'one'), (2, 'two')]:
            ours, gold = deform.run_golden(parity, num_images, tag, 'losses')
            report(f'Co-Deformable-DETR, {num_images} image(s){suffix}',
                   {k: codino.total(v) for k, v in ours.items()}, gold,
                   deterministic_keys(num_images))
        model, names = codino_model(dtype)
        parity = (model, names, codino_golden(dtype))
        for tag in codino.TAGS:
            gold = parity[2][tag]
            report(f'Co-DINO, {tag}{suffix}',
                   codino.losses_of(parity, tag, seed=0), gold['losses'],
                   gold['deterministic'])


if __name__ == '__main__':
    main()
